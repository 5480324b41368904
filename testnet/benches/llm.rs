//! The language-model bench: llama.cpp itself (llama-cpp-python, the baseline) against a
//! moxnet node's full path (HTTP, `/v1/completions` streamed, the node, a confined llama.cpp
//! worker) on the same GGUF file with the same threads, in one run: prompt processing (the
//! prompt's tokens over the time to the first token) and generation (tokens a second after the
//! first), greedy, medians of the rounds after a warm-up. Then the time to the first token of
//! a short prompt through a remote provider (a second node that does not hold the model sends
//! the generation to the first over loopback libp2p) against the same request on the provider
//! itself, interleaved, medians of [`TTFT_ROUNDS`]: the cost of going through a peer.
//!
//! ```text
//! python3 examples/smollm2/fetch.py
//! # llama-cpp-python==0.3.36, built for this CPU without AMX as scripts/test.sh installs it
//! cargo build --release -p node --bin moxnet
//! cargo bench -p testnet --bench llm          # MOXNET_BENCH_THREADS=N to pin the threads
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testnet::Testnet;

const ROUNDS: usize = 5;
const GENERATE: u32 = 128;
const TTFT_ROUNDS: usize = 21;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// About 250 tokens of plain English.
fn prompt() -> String {
    "A model goes live the moment it is published: researchers share models the way they share \
     code, and peers run them for each other. "
        .repeat(8)
}

fn main() {
    let threads = std::env::var("MOXNET_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let gguf = root().join("examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "{} is missing: python3 examples/smollm2/fetch.py",
        gguf.display()
    );
    let net = Testnet::new().expect("a scratch folder");
    let prompt_file = net.path().join("prompt.txt");
    std::fs::write(&prompt_file, prompt()).expect("the prompt");

    // The baseline: llama.cpp in Python, same file, same threads.
    let out = Command::new("python3")
        .arg(root().join("tests/python/llama_bench.py"))
        .arg(&gguf)
        .arg(threads.to_string())
        .arg(&prompt_file)
        .arg(GENERATE.to_string())
        .arg(ROUNDS.to_string())
        .output()
        .expect("python3 with llama-cpp-python (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "llama-cpp-python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base: Value = serde_json::from_slice(&out.stdout).expect("the baseline's report");

    // The node: release build, the model published bare, called over HTTP.
    let home = net.home("bench");
    home.ok(&["init"]);
    std::fs::write(
        home.home.join("config.toml"),
        format!(
            "mdns = false\n[llm]\nthreads = {threads}\ncontext = 2048\n\
             [compute]\nserve = true\noffer_interval_secs = 1\n"
        ),
    )
    .expect("config");
    let id = home.ok(&["publish", gguf.to_str().expect("utf8")]);
    let node = home.start(&[]);
    let body = |max_tokens: u32| {
        json!({
            "model": id,
            "prompt": prompt(),
            "temperature": 0,
            "max_tokens": max_tokens,
            "stream": true,
            "stream_options": { "include_usage": true },
        })
    };
    let (mut pp, mut tg, mut ttft, mut inside_pp) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prompt_tokens = 0;
    for round in 0..=ROUNDS {
        let start = Instant::now();
        let events = testnet::stream_events(
            &node.api,
            &node.token,
            "/v1/completions",
            &body(GENERATE),
            Duration::from_secs(300),
        )
        .expect("a streamed completion");
        let chunks: Vec<(Instant, Value)> = events
            .iter()
            .filter(|(_, d)| d.as_str() != "[DONE]")
            .map(|(t, d)| (*t, serde_json::from_str(d).expect("a chunk")))
            .collect();
        let (first, _) = chunks.first().expect("a first chunk");
        let (done, last) = chunks.last().expect("a last chunk");
        let made = last["usage"]["completion_tokens"].as_f64().unwrap_or(0.0);
        prompt_tokens = last["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        assert_eq!(made as u32, GENERATE, "{last}");
        if round == 0 {
            continue; // warm-up: the model loads
        }
        let to_first = first.duration_since(start).as_secs_f64();
        ttft.push(to_first * 1e3);
        pp.push(prompt_tokens as f64 / to_first);
        tg.push((made - 1.0) / done.duration_since(*first).as_secs_f64());
        inside_pp.push(
            prompt_tokens as f64 / (last["moxnet"]["prompt_ms"].as_f64().unwrap_or(f64::NAN) / 1e3),
        );
    }
    let (pp, tg, ttft, inside_pp) = (median(pp), median(tg), median(ttft), median(inside_pp));
    let base_pp = base["pp_tps"].as_f64().unwrap_or(f64::NAN);
    let base_tg = base["tg_tps"].as_f64().unwrap_or(f64::NAN);
    println!(
        "SmolLM2-135M-Instruct Q4_1, {threads} threads, prompt {prompt_tokens} tokens (llama-cpp-python: {}), {GENERATE} generated, greedy; medians of {ROUNDS} rounds",
        base["prompt_tokens"]
    );
    println!(
        "{:<58} {:>12} {:>12} {:>8}",
        "", "tokens/s", "baseline", "ratio"
    );
    println!(
        "{:<58} {:>12.1} {:>12.1} {:>7.2}x",
        "prompt processing, node full path (to the first token)",
        pp,
        base_pp,
        pp / base_pp
    );
    println!(
        "{:<58} {:>12.1} {:>12.1} {:>7.2}x",
        "prompt processing, inside the worker",
        inside_pp,
        base_pp,
        inside_pp / base_pp
    );
    println!(
        "{:<58} {:>12.1} {:>12.1} {:>7.2}x",
        "generation, node full path (streamed)",
        tg,
        base_tg,
        tg / base_tg
    );
    println!(
        "time to first token: node {ttft:.1} ms, llama-cpp-python {:.1} ms",
        base["ttft_ms"].as_f64().unwrap_or(f64::NAN)
    );

    // Through a peer: a caller that does not hold the model, and the provider itself.
    let caller = net.home("caller");
    caller.ok(&["init"]);
    std::fs::write(caller.home.join("config.toml"), "mdns = false\n").expect("config");
    let caller_node = caller.start(&[node.addr()]);
    testnet::wait_for_offers(&caller_node, &[&node.peer_id]).expect("the provider's offer");
    let short = json!({
        "model": id,
        "prompt": "The sea is",
        "temperature": 0,
        "max_tokens": 4,
        "stream": true,
    });
    let first_token = |d: &testnet::Daemon| {
        let start = Instant::now();
        let events = testnet::stream_events(
            &d.api,
            &d.token,
            "/v1/completions",
            &short,
            Duration::from_secs(120),
        )
        .expect("a streamed completion");
        let (first, _) = events.first().expect("a first chunk");
        first.duration_since(start).as_secs_f64() * 1e3
    };
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for round in 0..=TTFT_ROUNDS {
        let (l, r) = (first_token(&node), first_token(&caller_node));
        if round > 0 {
            local.push(l);
            remote.push(r);
        }
    }
    let (local, remote) = (median(local), median(remote));
    println!(
        "time to first token of a 4-token prompt, medians of {TTFT_ROUNDS}: on the provider {local:.1} ms, through it from a peer {remote:.1} ms"
    );
    println!(
        "time to first token through a remote provider minus local: {:.1} ms (goal <= 5 ms on loopback)",
        remote - local
    );
}
