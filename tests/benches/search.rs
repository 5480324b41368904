//! Search through a node, end to end: a home whose catalogue holds 10,000 synthetic signed
//! manifests (written to its store before the node starts, as a sync would have), a node
//! started on it (it builds its index at start: timed), then `GET /api/v1/search` queries of
//! each kind over HTTP, p50 and p99, against the same node's cheapest answer
//! (`GET /api/v1/node`) in the same run: what a search adds to any API call. Then `moxnet
//! search` itself (a process each time: what a user waits for). Then the web UI's pages on the
//! same node (as a browser asks: no token, a new connection each, the whole page read), p50
//! and p99, each against the `/api/v1` answer that carries the same data, interleaved (goal:
//! every page p99 at most 100 ms with 10,000 models).
//!
//! `cargo build --release -p node && cargo bench -p tests --bench search` (`BENCH_MODELS` sets
//! the catalogue size; `MOXNET_BIN` picks another `moxnet` binary).

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{Manifest, SecretKey, Signed};
use testnet::Testnet;

const WORDS: &[&str] = &[
    "sentiment",
    "translation",
    "speech",
    "vision",
    "segmentation",
    "embedding",
    "summary",
    "detection",
    "depth",
    "pose",
    "music",
    "protein",
    "weather",
    "chess",
    "code",
    "legal",
];
const TAGS: &[&str] = &["nlp", "vision", "audio", "tabular", "science", "games"];

fn stats(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    (at(0.5), at(0.99))
}

fn manifests(n: usize) -> Vec<Signed<Manifest>> {
    let keys: Vec<SecretKey> = (0..50u8).map(|i| SecretKey::from_seed(&[i; 32])).collect();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut pick = |from: &[&'static str]| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        from[(x % from.len() as u64) as usize]
    };
    (0..n)
        .map(|i| {
            let (a, b) = (pick(WORDS), pick(WORDS));
            keys[i % keys.len()].sign(Manifest {
                name: format!("{a}-{b}-{i}"),
                version: "1".into(),
                description: format!("A {a} model fine-tuned for {b}"),
                tags: vec![pick(TAGS).into()],
                authors: vec![format!("Researcher {}", i % 500)],
                ..Manifest::default()
            })
        })
        .collect()
}

fn get(api: &str, token: &str, path: &str) -> f64 {
    let auth = format!("Bearer {token}");
    let start = Instant::now();
    let (status, v) = testnet::http_with(
        api,
        "GET",
        path,
        &[("Authorization", auth.as_str())],
        None,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{v}");
    start.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let n: usize = std::env::var("BENCH_MODELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let net = Testnet::new().expect("testnet");
    let home = net.home("searcher");
    home.ok(&["init"]);
    {
        let store = Arc::new(store::Store::open(home.home.join("store")).expect("store"));
        let catalog = catalog::Catalog::open(store).expect("catalog");
        let quota = catalog::Quota {
            max_models: n,
            max_per_author: n,
        };
        for chunk in manifests(n).chunks(1000) {
            let results = catalog
                .insert_learnt_many(chunk.to_vec(), quota)
                .expect("insert");
            assert!(results.iter().all(Result::is_ok));
        }
    }
    let start = Instant::now();
    let node = home.start(&[]);
    let started = start.elapsed();
    let (token, api) = (node.token.clone(), node.api.clone());
    // The index is built before the node answers: every model is found at once.
    let auth = format!("Bearer {token}");
    let (_, all) = testnet::http_with(
        &api,
        "GET",
        "/api/v1/search?q=&limit=1",
        &[("Authorization", auth.as_str())],
        None,
        Duration::from_secs(60),
    )
    .expect("search");
    assert_eq!(all["total"], n as u64, "{all}");
    let some = all["hits"][0]["model_id"]
        .as_str()
        .expect("a model id")
        .to_string();
    println!(
        "node with {n} models in its catalogue up (index built) in {:.0} ms",
        started.as_secs_f64() * 1e3
    );
    let queries = [
        ("one word", "q=sentiment"),
        ("two words", "q=speech%20translation"),
        ("word + tag", "q=vision&tags=nlp"),
        ("all by score", "q=&sort=score"),
        ("all by usage", "q=&sort=usage"),
        ("all by new", "q=&sort=new"),
    ];
    let rounds = 200;
    let mut base = Vec::new();
    let mut all = Vec::new();
    println!("{:<14} {:>9} {:>9}", "query", "p50 ms", "p99 ms");
    for (what, q) in queries {
        let mut times = Vec::new();
        for _ in 0..rounds {
            times.push(get(&api, &token, &format!("/api/v1/search?{q}")));
            base.push(get(&api, &token, "/api/v1/node"));
        }
        all.extend(&times);
        let (p50, p99) = stats(times);
        println!("{what:<14} {p50:>9.3} {p99:>9.3}");
    }
    let (p50, p99) = stats(all);
    let (b50, b99) = stats(base);
    println!(
        "GET /api/v1/search, all: p50 {p50:.3} ms, p99 {p99:.3} ms (goal p99 <= 20 ms); GET /api/v1/node p50 {b50:.3} ms, p99 {b99:.3} ms; search/node p50 {:.2}x, p99 {:.2}x",
        p50 / b50,
        p99 / b99
    );
    let mut cli = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        home.ok(&["search", "protein", "--sort", "score"]);
        cli.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut floor = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        home.ok(&["models"]);
        floor.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (c50, c99) = stats(cli);
    let (f50, f99) = stats(floor);
    println!(
        "`moxnet search protein --sort score` (a process each): p50 {c50:.1} ms, p99 {c99:.1} ms; `moxnet models` ({n} rows) p50 {f50:.1} ms, p99 {f99:.1} ms"
    );

    // The web UI on the same node.
    let search = |q: &str| format!("/api/v1/search?{q}&limit=50");
    let pages = [
        (
            "catalogue by score",
            "/?sort=score".to_string(),
            search("q=&sort=score"),
        ),
        (
            "catalogue, newest",
            "/?sort=new".into(),
            search("q=&sort=new"),
        ),
        (
            "catalogue, page 100",
            "/?sort=score&page=100".into(),
            format!("{}&offset=5000", search("q=&sort=score")),
        ),
        (
            "catalogue, search",
            "/?q=protein&sort=relevance".into(),
            search("q=protein"),
        ),
        (
            "catalogue, tag",
            "/?tag=nlp&sort=usage".into(),
            search("q=&tags=nlp&sort=usage"),
        ),
        (
            "model",
            format!("/m/{some}"),
            format!("/api/v1/models/{some}"),
        ),
        ("network", "/network".into(), "/api/v1/offers".into()),
        ("credits", "/credits".into(), "/api/v1/credits".into()),
        ("node", "/node".into(), "/api/v1/node".into()),
    ];
    println!(
        "{:<20} {:>9} {:>9}   {:>12} {:>12}   {:>9}",
        "page", "p50 ms", "p99 ms", "API p50 ms", "API p99 ms", "p99 ratio"
    );
    let mut worst: f64 = 0.0;
    for (what, page, api_path) in pages {
        let (mut times, mut base) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            times.push(page_ms(&api, &page));
            base.push(get(&api, &token, &api_path));
        }
        let ((p50, p99), (b50, b99)) = (stats(times), stats(base));
        worst = worst.max(p99);
        println!(
            "{what:<20} {p50:>9.3} {p99:>9.3}   {b50:>12.3} {b99:>12.3}   {:>8.2}x",
            p99 / b99
        );
    }
    println!(
        "web UI with {n} models: the slowest page's p99 is {worst:.2} ms (goal <= 100 ms): {}",
        if worst <= 100.0 { "met" } else { "NOT met" }
    );
}

/// Milliseconds to read one web UI page whole, as a browser asks for it (no token).
fn page_ms(api: &str, path: &str) -> f64 {
    let start = Instant::now();
    let (status, html) = testnet::http_text(api, "GET", path, &[], None, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{path}: {html}");
    assert!(html.starts_with("<!DOCTYPE html>"), "{path}: {html}");
    start.elapsed().as_secs_f64() * 1e3
}
