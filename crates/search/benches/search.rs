//! Search benchmark over 10,000 synthetic manifests (signed, with names, descriptions, tags,
//! authors and interfaces drawn from a small vocabulary, 2,000 of them voted on):
//!
//! - building the index from a catalogue at once (a node starting), and keeping it up with
//!   gossip: the same manifests arriving in batches of 64 (about what a node learns between two
//!   refreshes under a flood), manifests indexed a second;
//! - queries of each kind (one word, two words, a tag filter, every model by score, usage and
//!   new), p50 and p99, against a baseline measured in the same run: a linear scan that
//!   lowercases every document and matches the words as substrings (what a node without an
//!   index would do), same queries.
//!
//! `cargo bench -p search --bench search` (`BENCH_MODELS` sets the catalogue size).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::{Manifest, ModelId, SecretKey, TensorSpec};
use search::{Doc, Query, SearchIndex, Signals, Sort};

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
    "medical",
    "satellite",
    "handwriting",
    "emotion",
    "fraud",
    "anomaly",
    "ranking",
    "tabular",
];
const TAGS: &[&str] = &[
    "nlp",
    "vision",
    "audio",
    "tabular",
    "science",
    "games",
    "multimodal",
];

/// A deterministic generator (xorshift), so every run indexes the same catalogue.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

fn catalogue(n: usize) -> Vec<Doc> {
    let keys: Vec<SecretKey> = (0..50u8).map(|i| SecretKey::from_seed(&[i; 32])).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|i| {
            let (a, b) = (rng.pick(WORDS), rng.pick(WORDS));
            let manifest = Manifest {
                name: format!("{a}-{b}-{i}"),
                version: "1".into(),
                description: format!(
                    "A {a} model fine-tuned for {b}, with {} and {} heads",
                    rng.pick(WORDS),
                    rng.pick(WORDS)
                ),
                tags: vec![rng.pick(TAGS).into(), rng.pick(TAGS).into()],
                authors: vec![format!("Researcher {}", rng.next() % 500)],
                interface: protocol::Interface {
                    inputs: vec![TensorSpec {
                        name: format!("{a}_input"),
                        dtype: protocol::DType::F32,
                        shape: Vec::new(),
                    }],
                    outputs: Vec::new(),
                },
                ..Manifest::default()
            };
            let signed = keys[i % keys.len()].sign(manifest);
            let id = protocol::model_id(&signed.to_bytes());
            Doc::of(id, &signed, i as u64)
        })
        .collect()
}

/// The no-index baseline: lowercase every document and match every word as a substring.
fn scan(docs: &[Doc], query: &Query, signals: &HashMap<ModelId, Signals>) -> usize {
    let words: Vec<String> = query
        .text
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let mut hits: Vec<(f64, &Doc)> = docs
        .iter()
        .filter(|d| {
            let text = format!(
                "{} {} {} {} {}",
                d.name,
                d.description,
                d.tags.join(" "),
                d.authors.join(" "),
                d.interface.join(" ")
            )
            .to_lowercase();
            words.iter().any(|w| text.contains(w.as_str()))
                || (words.is_empty() && !query.tags.is_empty())
                || (words.is_empty() && query.tags.is_empty())
        })
        .filter(|d| {
            query
                .tags
                .iter()
                .all(|t| d.tags.iter().any(|dt| dt.eq_ignore_ascii_case(t)))
        })
        .map(|d| (signals.get(&d.id).map_or(0.0, |s| s.score), d))
        .collect();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0));
    hits.len().min(query.limit)
}

fn quantiles(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let n: usize = std::env::var("BENCH_MODELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let docs = catalogue(n);
    let mut rng = Rng(7);
    let mut signals: HashMap<ModelId, Signals> = HashMap::new();
    for d in &docs {
        if !rng.next().is_multiple_of(5) {
            continue;
        }
        let score = (rng.next() % 2000) as f64 / 1000.0 - 0.5;
        let s = Signals {
            score,
            rated: true,
            usage: rng.next() % 100_000,
            paying_voters: 1 + rng.next() % 20,
        };
        signals.insert(d.id, s);
    }

    let start = Instant::now();
    let index = SearchIndex::new().expect("index");
    index.update(docs.clone(), &[]).expect("build");
    let build = start.elapsed();
    let gossip = SearchIndex::new().expect("index");
    let start = Instant::now();
    for batch in docs.chunks(64) {
        gossip.update(batch.to_vec(), &[]).expect("batch");
    }
    let batched = start.elapsed();
    println!(
        "index {n} manifests at once: {:.0} ms ({:.0}/s); in batches of 64 (one commit each): {:.0} ms ({:.0}/s, {:.2} ms a batch)",
        ms(build),
        n as f64 / build.as_secs_f64(),
        ms(batched),
        n as f64 / batched.as_secs_f64(),
        ms(batched) / n.div_ceil(64) as f64,
    );

    let queries: Vec<(&str, Query)> = vec![
        (
            "one word",
            Query {
                text: "sentiment".into(),
                limit: 20,
                ..Query::default()
            },
        ),
        (
            "two words",
            Query {
                text: "speech translation".into(),
                limit: 20,
                ..Query::default()
            },
        ),
        (
            "word + tag",
            Query {
                text: "vision".into(),
                tags: vec!["nlp".into()],
                limit: 20,
                ..Query::default()
            },
        ),
        (
            "all by score",
            Query {
                sort: Sort::Score,
                limit: 20,
                ..Query::default()
            },
        ),
        (
            "all by usage",
            Query {
                sort: Sort::Usage,
                limit: 20,
                ..Query::default()
            },
        ),
        (
            "all by new",
            Query {
                sort: Sort::New,
                limit: 20,
                ..Query::default()
            },
        ),
        (
            "word by new",
            Query {
                text: "protein".into(),
                sort: Sort::New,
                limit: 20,
                ..Query::default()
            },
        ),
    ];
    let rounds = 200;
    let mut all = Vec::new();
    let mut all_base = Vec::new();
    println!(
        "{:<14} {:>9} {:>9} {:>11} {:>11} {:>7}",
        "query", "p50 ms", "p99 ms", "scan p50", "scan p99", "ratio"
    );
    for (what, query) in &queries {
        let mut times = Vec::with_capacity(rounds);
        let mut base = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            // Interleaved: the machine's noise falls on both alike.
            let t = Instant::now();
            let found = index
                .search(query, |id| signals.get(id).copied().unwrap_or_default())
                .expect("search");
            times.push(t.elapsed());
            std::hint::black_box(found);
            let t = Instant::now();
            std::hint::black_box(scan(&docs, query, &signals));
            base.push(t.elapsed());
        }
        all.extend(&times);
        all_base.extend(&base);
        let (p50, p99) = quantiles(times);
        let (b50, b99) = quantiles(base);
        println!(
            "{what:<14} {:>9.3} {:>9.3} {:>11.3} {:>11.3} {:>6.2}x",
            ms(p50),
            ms(p99),
            ms(b50),
            ms(b99),
            p50.as_secs_f64() / b50.as_secs_f64()
        );
    }
    let (p50, p99) = quantiles(all);
    let (b50, b99) = quantiles(all_base);
    println!(
        "all queries: p50 {:.3} ms, p99 {:.3} ms (goal p99 <= 20 ms); scan baseline p50 {:.3} ms, p99 {:.3} ms; ratio p99 {:.2}x",
        ms(p50),
        ms(p99),
        ms(b50),
        ms(b99),
        p99.as_secs_f64() / b99.as_secs_f64()
    );
}
