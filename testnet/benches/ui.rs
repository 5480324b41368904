//! The web UI bench: a node (release build) with 10,000 models in its catalogue, each page
//! requested over HTTP as a browser would (new connection, whole answer read), p50 and p99 of
//! [`ROUNDS`] requests after a warm-up, against a baseline measured in the same run: the
//! `/api/v1` JSON answer that carries the same data (the page's cost over the API's). The goal
//! is at most 100 ms p99 for every page.
//!
//! ```text
//! cargo build --release -p node --bin moxnet
//! cargo bench -p testnet --bench ui             # BENCH_MODELS=N for another catalogue size
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use testnet::Testnet;

const ROUNDS: usize = 200;
const WORDS: [&str; 8] = [
    "sentiment",
    "translation",
    "vision",
    "speech",
    "protein",
    "weather",
    "chess",
    "fraud",
];

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Milliseconds of `ROUNDS` GETs of `path` (after one warm-up), with or without the token.
fn time(api: &str, token: Option<&str>, path: &str) -> Vec<f64> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let mut ms = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let start = Instant::now();
        let (status, body) =
            testnet::http_text(api, "GET", path, &headers, None, Duration::from_secs(30))
                .expect("an answer");
        assert_eq!(status, 200, "{path}: {body}");
        if round > 0 {
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms
}

fn main() {
    let models: usize = std::env::var("BENCH_MODELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let net = Testnet::new().expect("testnet");
    let home = net.init("ui", "mdns = false\n");
    let node = home.start(&[]);
    let auth = format!("Bearer {}", node.token);

    // The catalogue: bare ONNX models (one graph, many names) published through the API.
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/iris-linear/model.onnx");
    let dir = net.path().join("models");
    std::fs::create_dir_all(&dir).expect("dir");
    let started = Instant::now();
    let mut some = String::new();
    for i in 0..models {
        let file = dir.join(format!("{}-{i}.onnx", WORDS[i % WORDS.len()]));
        std::fs::hard_link(&graph, &file)
            .or_else(|_| std::fs::copy(&graph, &file).map(|_| ()))
            .expect("a model file");
        let body = json!({ "path": file }).to_string();
        let (status, answer) = testnet::http_with(
            &node.api,
            "POST",
            "/api/v1/publish",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(&body),
            Duration::from_secs(60),
        )
        .expect("publish");
        assert_eq!(status, 200, "{answer}");
        if i == models / 2 {
            some = answer["model_id"].as_str().unwrap_or_default().to_string();
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "ui: {models} models published through the API in {took:.1} s ({:.0} a second)",
        models as f64 / took
    );

    let api = |q: &str| format!("/api/v1/search?{q}&limit=50");
    let pages: Vec<(&str, String, String)> = vec![
        (
            "catalogue, by score",
            "/?sort=score".into(),
            api("q=&sort=score"),
        ),
        ("catalogue, newest", "/?sort=new".into(), api("q=&sort=new")),
        (
            "catalogue, page 100",
            "/?sort=score&page=100".into(),
            format!("{}&offset=5000", api("q=&sort=score")),
        ),
        (
            "catalogue, search",
            "/?q=protein&sort=relevance".into(),
            api("q=protein"),
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
        "{:<22} {:>10} {:>10}   {:>12} {:>12}   {:>9}",
        "page", "p50 ms", "p99 ms", "API p50 ms", "API p99 ms", "p99 ratio"
    );
    let mut worst: f64 = 0.0;
    for (name, page, baseline) in pages {
        let (p50, p99) = percentiles(time(&node.api, None, &page));
        let (b50, b99) = percentiles(time(&node.api, Some(&node.token), &baseline));
        worst = worst.max(p99);
        println!(
            "{name:<22} {p50:>10.2} {p99:>10.2}   {b50:>12.2} {b99:>12.2}   {:>8.2}x",
            p99 / b99
        );
    }
    println!(
        "ui: the slowest page's p99 is {worst:.1} ms with {models} models (goal ≤ 100 ms): {}",
        if worst <= 100.0 { "met" } else { "NOT met" }
    );
}
