//! Inference latency, every figure a ratio to onnxruntime (or to native tract) measured in the
//! same run: the demo model (all-MiniLM-L6-v2 int8, batch 1, 16 tokens) in onnxruntime called
//! from Python (one thread, the baseline; then with its heap on transparent huge pages, as the
//! engine workers' is, for what those are worth alone); in onnxruntime from Rust in this process and in a
//! confined engine worker, call by call alternately (the difference of each pair is the process
//! boundary); through a node's whole call path in its default configuration (OIP v2 over HTTP,
//! the runner guest in the sandbox, the graph in an onnxruntime worker); in the sandbox with
//! native tract; in native tract; in the pure-wasm runner. Then the boundary's per-call cost and the sandbox's on a trivial model
//! (p50/p99), and the time to load a guest whose compiled module is cached. The node's rows are
//! interleaved with onnxruntime (alternating calls 20 ms apart, and alternating blocks of calls
//! back to back; five times the other rows' calls), each against the baseline measured beside
//! it, with where the node's time went (the worker, the rest of the sandbox, HTTP, JSON and
//! dispatch: the answers' `host_ms` and `elapsed_ms`). Last, a busy pure-wasm model:
//! calls back to back on instances that run `init`, then on instances from its snapshot.
//!
//! ```sh
//! python3 examples/minilm/fetch.py
//! (cd guests && cargo build --release)
//! cargo build --release -p node --bin moxnet -p engine --bin moxnet-engine
//! cargo bench -p sandbox --bench inference
//! ```
//! Set `MOXNET_GUESTS_DIR` when `CARGO_TARGET_DIR` is set (or `MOXNET_BIN` for another `moxnet`),
//! and `BENCH_CALLS` for more calls.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::runtime::{Device, Onnxruntime};
use engine::worker::{EngineKind, Options};
use engine::{Isolated, WorkerCommand};

use graph::Tensor;
use sandbox::{CallLimits, Model, Sandbox, SandboxConfig, SnapshotStatus};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn guest(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("MOXNET_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("guests/target/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build the guests first", path.display()))
}

/// The node rows' text, which the guest's tokenizer makes exactly [`IDS`] of
/// ([`check_sentence`]).
const SENTENCE: &str = "the quick brown fox jumps over the lazy dog and runs far away today";

/// 16 tokens: [CLS], [`SENTENCE`]'s words, [SEP].
const IDS: [i64; 16] = [
    101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1998, 3216, 2521, 2185, 2651, 102,
];

/// Panics unless [`SENTENCE`] tokenizes to [`IDS`] with the tokenizer the runner guest uses
/// (`graph::wordpiece`, the demo model's `runner.json` settings). A trailing " ." once made the
/// node's rows run 17 tokens against onnxruntime's 16.
fn check_sentence(vocab: &Path) {
    let vocab = std::fs::read_to_string(vocab).expect("vocab.txt");
    let wordpiece = graph::wordpiece::WordPiece::from_vocab(vocab, true).expect("vocabulary");
    assert_eq!(
        wordpiece.encode(SENTENCE, 256),
        IDS,
        "the sentence is not the tokens"
    );
}

fn demo_inputs() -> Vec<Tensor> {
    vec![
        Tensor::from_i64("input_ids", vec![1, 16], &IDS),
        Tensor::from_i64("attention_mask", vec![1, 16], &[1; 16]),
        Tensor::from_i64("token_type_ids", vec![1, 16], &[0; 16]),
    ]
}

struct Stats {
    p50: f64,
    p99: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Times `calls` sandboxed calls, each on a warm spare instance (the steady state of a node
/// that is not saturated): waits for the spare before each call.
fn sandboxed(sandbox: &Sandbox, model: &Model, inputs: &[Tensor], calls: usize) -> Vec<f64> {
    let limits = CallLimits::default();
    let mut times = Vec::new();
    for _ in 0..calls {
        while !model.is_warm() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        sandbox
            .predict(model, inputs.to_vec(), &limits)
            .expect("call");
        times.push(ms(started.elapsed()));
    }
    times
}

fn native(graph: &graph::Graph, inputs: &[Tensor], calls: usize) -> Vec<f64> {
    graph.run(inputs.to_vec()).expect("warm-up");
    (0..calls)
        .map(|_| {
            let started = Instant::now();
            graph.run(inputs.to_vec()).expect("native call");
            ms(started.elapsed())
        })
        .collect()
}

/// `inputs` as `ort_run.py` reads them.
fn ort_request(inputs: &[Tensor]) -> serde_json::Map<String, serde_json::Value> {
    let mut request = serde_json::Map::new();
    for t in inputs {
        let data: Vec<serde_json::Value> = match t.dtype {
            graph::DType::I64 => t.i64s().expect("i64").into_iter().map(Into::into).collect(),
            _ => t.f32s().expect("f32").into_iter().map(Into::into).collect(),
        };
        request.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": t.dtype.name(), "shape": t.shape, "data": data }),
        );
    }
    request
}

fn onnxruntime(model: &Path, inputs: &[Tensor], calls: usize, env: &[(&str, &str)]) -> Vec<f64> {
    let request = ort_request(inputs);
    let mut child = Command::new("python3")
        .envs(env.iter().copied())
        .arg(root().join("crates/sandbox/tests/fixtures/ort_run.py"))
        .arg(model)
        .arg("--bench")
        .arg(calls.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with onnxruntime");
    serde_json::to_writer(child.stdin.take().expect("stdin"), &request).expect("write");
    let out = child.wait_with_output().expect("onnxruntime");
    assert!(out.status.success(), "onnxruntime failed");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reply");
    reply["ms"]
        .as_array()
        .expect("ms")
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect()
}

/// onnxruntime from Python, kept running and called one run at a time: for rows that
/// interleave the baseline with the call they compare, so that both meet the same machine.
struct OrtServe {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl OrtServe {
    fn start(model: &Path, inputs: &[Tensor]) -> OrtServe {
        let request = ort_request(inputs);
        let mut child = Command::new("python3")
            .arg(root().join("crates/sandbox/tests/fixtures/ort_run.py"))
            .arg(model)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with onnxruntime");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        serde_json::to_writer(&mut stdin, &request).expect("write");
        stdin.write_all(b"\n").expect("write");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready", "onnxruntime did not start");
        OrtServe {
            child,
            stdin,
            stdout,
        }
    }

    /// One run; the milliseconds it took, as Python measured them.
    fn run(&mut self) -> f64 {
        self.stdin.write_all(b"\n").expect("write");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        line.trim().parse().expect("milliseconds")
    }
}

impl Drop for OrtServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn row(what: &str, s: &Stats, baseline: f64, against: &str) {
    println!(
        "{what:<44} p50 {:>9.3} ms  p99 {:>9.3} ms  {:>6.2}x {against}",
        s.p50,
        s.p99,
        s.p50 / baseline
    );
}

/// Where a node call's time went, ms: in all (at the client), in the sandbox, and of that in
/// the graph's worker.
struct Split {
    total: f64,
    sandbox: f64,
    host: f64,
}

impl Split {
    /// The medians of the parts: the worker (its run and pipe) against onnxruntime's run
    /// (`baseline`), the rest of the sandbox (instance, guest), the rest of the node (HTTP,
    /// JSON, dispatch).
    fn print(calls: &[Split], baseline: f64) {
        let p50 = |part: fn(&Split) -> f64| stats(calls.iter().map(part).collect()).p50;
        println!(
            "{:<44} worker {:.3} ms ({:+.3} ms onnxruntime), rest of the sandbox {:.3} ms, HTTP/JSON/dispatch {:.3} ms (p50 of each)",
            "",
            p50(|s| s.host),
            p50(|s| s.host) - baseline,
            p50(|s| s.sandbox - s.host),
            p50(|s| s.total - s.sandbox),
        );
    }
}

/// The pause between paced calls, ms.
const PAUSE_MS: u64 = 20;

/// The release binaries next to this bench (`target/release`), or `MOXNET_BIN`'s folder.
fn release_bin(name: &str) -> PathBuf {
    let path = match std::env::var_os("MOXNET_BIN").map(PathBuf::from) {
        Some(moxnet) if name == "moxnet" => moxnet,
        _ => std::env::current_exe()
            .expect("this bench's path")
            .parent()
            .and_then(Path::parent)
            .expect("target/release")
            .join(name),
    };
    assert!(
        path.is_file(),
        "{} is missing: cargo build --release -p node --bin moxnet -p engine --bin moxnet-engine",
        path.display()
    );
    path
}

fn worker_command(library: &Path) -> WorkerCommand {
    WorkerCommand {
        program: release_bin("moxnet-engine"),
        prefix: vec![],
        options: Options {
            engine: EngineKind::Onnxruntime {
                library: library.to_path_buf(),
                device: Device::Cpu,
            },
            threads: 1,
            memory_mib: 4096,
        },
        run_timeout: Duration::from_secs(60),
        load_timeout: Duration::from_secs(60),
    }
}

fn timed(calls: usize, mut call: impl FnMut()) -> Vec<f64> {
    call();
    (0..calls)
        .map(|_| {
            let started = Instant::now();
            call();
            ms(started.elapsed())
        })
        .collect()
}

/// `graph` in onnxruntime in this process and in a confined worker, `calls` runs of `inputs`
/// in each, alternating run by run (after one of each to warm up), so that the machine's drift
/// meets both alike: the times here, the times in the worker, and the difference of each pair
/// (the process boundary).
fn here_and_in_a_worker(
    onnxruntime: &Onnxruntime,
    worker: &Isolated,
    graph: &[u8],
    inputs: &[Tensor],
    calls: usize,
) -> (Stats, Stats, Stats) {
    let session = onnxruntime.load(graph).expect("load in onnxruntime");
    let isolated = worker.load_graph(graph).expect("load in a worker");
    let limits = graph::Limits::default();
    let here = || {
        let started = Instant::now();
        session.run(inputs.to_vec()).expect("onnxruntime call");
        ms(started.elapsed())
    };
    let there = || {
        let started = Instant::now();
        isolated.run(inputs.to_vec(), &limits).expect("worker call");
        ms(started.elapsed())
    };
    here();
    there();
    let (here, there): (Vec<f64>, Vec<f64>) = (0..calls).map(|_| (here(), there())).unzip();
    let boundary = here.iter().zip(&there).map(|(a, b)| b - a).collect();
    (stats(here), stats(there), stats(boundary))
}

/// A node in a fresh home, in its default configuration, with the demo model published.
struct Node {
    child: Child,
    api: String,
    model: String,
    _home: tempfile::TempDir,
}

impl Node {
    fn start(runner: &Path) -> Node {
        let home = tempfile::tempdir().expect("home");
        let moxnet = |args: &[&str]| {
            let out = Command::new(release_bin("moxnet"))
                .args(args)
                .env("MOXNET_HOME", home.path())
                .env("MOXNET_RUNNER", runner)
                .stderr(Stdio::inherit())
                .output()
                .expect("moxnet");
            assert!(out.status.success(), "moxnet {args:?} failed");
            String::from_utf8(out.stdout).expect("utf-8")
        };
        moxnet(&["init"]);
        let model = moxnet(&[
            "publish",
            &root().join("examples/minilm").display().to_string(),
        ])
        .trim()
        .to_string();
        let child = Command::new(release_bin("moxnet"))
            .args([
                "node",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--api",
                "127.0.0.1:0",
                "--no-mdns",
            ])
            .env("MOXNET_HOME", home.path())
            .env("MOXNET_RUNNER", runner)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("moxnet node");
        let api_file = home.path().join("api");
        let started = Instant::now();
        while !api_file.is_file()
            || std::fs::read_to_string(&api_file).map_or(true, |a| a.is_empty())
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the node did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let api = std::fs::read_to_string(&api_file)
            .expect("api")
            .trim()
            .to_string();
        Node {
            child,
            api,
            model,
            _home: home,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection, as a client library would hold.
struct Http {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Http {
    fn connect(addr: &str) -> Http {
        let stream = TcpStream::connect(addr).expect("connect to the node");
        stream.set_nodelay(true).expect("nodelay");
        Http {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        }
    }

    fn post(&mut self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        // Head and body in one write, as curl and Python's http.client send a small request:
        // one segment, one wake of the server.
        request.extend_from_slice(body);
        self.reader.get_mut().write_all(&request).expect("send");
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).expect("status");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let mut length = None;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; length.expect("a Content-Length")];
        self.reader.read_exact(&mut body).expect("body");
        (status, body)
    }
}

fn main() {
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let cache = tempfile::tempdir().expect("cache");
    let config = |host_backend| SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        host_backend,
        ..SandboxConfig::default()
    };
    let runner_path = std::env::var_os("MOXNET_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("guests/target/wasm32-wasip2/release"))
        .join("moxnet_runner.wasm");
    let runner = guest("moxnet_runner");
    let library = engine::find_onnxruntime(None)
        .expect("onnxruntime's shared library: pip install onnxruntime (or set ORT_DYLIB_PATH)");
    let worker =
        Arc::new(Isolated::start(worker_command(&library)).expect("an onnxruntime worker"));

    // The demo model's raw graph (no runner.json: token ids in, token vectors out).
    let onnx = root().join("examples/minilm/model.onnx");
    assert!(
        onnx.is_file(),
        "{} is missing: run python3 examples/minilm/fetch.py",
        onnx.display()
    );
    let onnx_bytes = std::fs::read(&onnx).expect("read model");
    let demo = tempfile::tempdir().expect("package");
    std::fs::copy(&onnx, demo.path().join("model.onnx")).expect("copy model");
    let inputs = demo_inputs();

    println!("demo model: all-MiniLM-L6-v2 int8, batch 1, 16 tokens, {calls} calls each");
    let ort = stats(onnxruntime(&onnx, &inputs, calls, &[]));
    row(
        "onnxruntime (Python, 1 thread)",
        &ort,
        ort.p50,
        "onnxruntime",
    );
    // What the engine workers' huge pages are worth by themselves (`engine::HUGE_PAGES`):
    // the same baseline with its heap on them too. The node's rows compare with the plain one.
    let huge = stats(onnxruntime(&onnx, &inputs, calls, &[engine::HUGE_PAGES]));
    row(
        "onnxruntime (Python, heap on huge pages)",
        &huge,
        ort.p50,
        "onnxruntime",
    );

    let in_process = Onnxruntime::start(&library, 1, Device::Cpu).expect("onnxruntime");
    let (ort_rust, ort_worker, boundary) =
        here_and_in_a_worker(&in_process, &worker, &onnx_bytes, &inputs, calls);
    row(
        "onnxruntime (Rust, this process, 1 thread)",
        &ort_rust,
        ort.p50,
        "onnxruntime",
    );
    row(
        "onnxruntime in a confined worker",
        &ort_worker,
        ort.p50,
        "onnxruntime",
    );
    let sandbox = Sandbox::with_backend(config(false), Some(worker.clone())).expect("sandbox");
    let model = sandbox
        .load(&runner, demo.path(), Some("model.onnx"))
        .expect("load demo model");
    let s = stats(sandboxed(&sandbox, &model, &inputs, calls));
    row("sandbox + onnxruntime worker", &s, ort.p50, "onnxruntime");
    drop((model, sandbox));

    // The node: text in (these words are exactly the 16 tokens above), OIP v2 JSON over HTTP.
    check_sentence(&root().join("examples/minilm/vocab.txt"));
    let node = Node::start(&runner_path);
    let mut http = Http::connect(&node.api);
    let infer = format!("/v2/models/{}/infer", node.model);
    let body = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [SENTENCE]}]})).expect("json");
    let mut backend = String::new();
    // A call's time at the client, and the answer's own account of it: the sandbox's
    // (`elapsed_ms`, from an instance taken to the guest's return) and, of that, the graph
    // calls' (`host_ms`, the worker's run and its pipe).
    let mut call = || {
        let started = Instant::now();
        let (status, answer) = http.post(&infer, &body);
        let total = ms(started.elapsed());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json");
        let figure = |name: &str| {
            answer["parameters"][name]
                .as_f64()
                .unwrap_or_else(|| panic!("the answer has no {name}"))
        };
        if backend.is_empty() {
            backend = answer["parameters"]["backend"]
                .as_str()
                .unwrap_or("onnxruntime worker")
                .to_string();
        }
        Split {
            total,
            sandbox: figure("elapsed_ms"),
            host: figure("host_ms"),
        }
    };
    // Like the sandbox rows (each call on a warm spare instance): calls 20 ms apart, the
    // steady state of a node that is not saturated; then back to back, where each call's
    // fresh instance is still being prepared when the next arrives.
    // Interleaved with onnxruntime (one Python process, called run by run), so that this VM's
    // drift over a run (its other tenants, its clock) meets both alike: calls 20 ms apart,
    // alternating; then blocks of calls back to back, alternating.
    // Five times the calls of the other rows (they are fast: ~16 s in all), for medians that
    // hold from run to run on a noisy machine.
    let node_calls = calls * 5;
    println!("node and onnxruntime alternating: {node_calls} calls each");
    call();
    let mut serve = OrtServe::start(&onnx, &inputs);
    let (mut paced, mut paced_ort) = (Vec::new(), Vec::new());
    for _ in 0..node_calls {
        std::thread::sleep(Duration::from_millis(PAUSE_MS));
        paced_ort.push(serve.run());
        std::thread::sleep(Duration::from_millis(PAUSE_MS));
        paced.push(call());
    }
    let (mut busy, mut busy_ort) = (Vec::new(), Vec::new());
    for _ in 0..node_calls.div_ceil(10) {
        serve.run();
        busy_ort.extend((0..10).map(|_| serve.run()));
        call();
        busy.extend((0..10).map(|_| call()));
    }
    drop(serve);
    let (paced_ort, busy_ort) = (stats(paced_ort), stats(busy_ort));
    row(
        "onnxruntime (Python), 20 ms apart, alternating",
        &paced_ort,
        paced_ort.p50,
        "itself",
    );
    row(
        "node, OIP v2 over HTTP, 20 ms apart, alt.",
        &stats(paced.iter().map(|s| s.total).collect()),
        paced_ort.p50,
        "onnxruntime alternating",
    );
    Split::print(&paced, paced_ort.p50);
    row(
        "onnxruntime (Python), back to back, blocks",
        &busy_ort,
        busy_ort.p50,
        "itself",
    );
    row(
        "node, OIP v2 over HTTP, back to back, blocks",
        &stats(busy.iter().map(|s| s.total).collect()),
        busy_ort.p50,
        "onnxruntime in blocks",
    );
    Split::print(&busy, busy_ort.p50);
    println!(
        "{:<44} (default configuration: {backend}; text in, tokenised and pooled in the guest)",
        ""
    );
    drop(node);

    let graph = graph::Graph::load(&onnx_bytes).expect("tract");
    let tract = stats(native(&graph, &inputs, calls));
    row("native tract", &tract, ort.p50, "onnxruntime");
    for (host_backend, what) in [
        (true, "sandbox + native tract (in process)"),
        (false, "sandbox, pure-wasm runner"),
    ] {
        let sandbox = Sandbox::new(config(host_backend)).expect("sandbox");
        let started = Instant::now();
        let model = sandbox
            .load(&runner, demo.path(), Some("model.onnx"))
            .expect("load demo model");
        let load = started.elapsed();
        let s = stats(sandboxed(&sandbox, &model, &inputs, calls));
        row(what, &s, ort.p50, "onnxruntime");
        println!(
            "{:<44} first load (compile or cache, init): {:.0} ms",
            "",
            ms(load)
        );
    }
    println!(
        "{:<44} p50 {:>9.3} ms  p99 {:>9.3} ms  (worker minus this process, demo model; the worker's heap on huge pages, this one's not)",
        "process boundary", boundary.p50, boundary.p99
    );

    // Per-call overhead: a trivial graph, where the sandbox's own costs dominate.
    let trivial_calls = calls * 10;
    println!("\ntrivial model (tests/fixtures/mlp.onnx, batch 1), {trivial_calls} calls each");
    let mlp = root().join("crates/sandbox/tests/fixtures/mlp.onnx");
    let mlp_bytes = std::fs::read(&mlp).expect("read");
    let pkg = tempfile::tempdir().expect("package");
    std::fs::copy(&mlp, pkg.path().join("mlp.onnx")).expect("copy");
    let x = vec![Tensor::from_f32("x", vec![1, 4], &[5.1, 3.5, 1.4, 0.2])];
    let graph = graph::Graph::load(&mlp_bytes).expect("tract");
    let base = stats(native(&graph, &x, trivial_calls));
    row("native tract", &base, base.p50, "native tract");
    let (here, there, boundary) =
        here_and_in_a_worker(&in_process, &worker, &mlp_bytes, &x, trivial_calls);
    row(
        "onnxruntime (Rust, this process)",
        &here,
        base.p50,
        "native tract",
    );
    row(
        "onnxruntime in a confined worker",
        &there,
        base.p50,
        "native tract",
    );
    println!(
        "{:<44} p50 {:>9.3} ms  p99 {:>9.3} ms  (worker minus this process)",
        "process boundary, per call", boundary.p50, boundary.p99
    );
    for (backend, what) in [
        (
            Some(worker.clone() as Arc<dyn sandbox::Backend>),
            "sandbox + onnxruntime worker",
        ),
        (
            Some(Arc::new(sandbox::NativeTract) as Arc<dyn sandbox::Backend>),
            "sandbox + native tract (in process)",
        ),
        (None, "sandbox, pure-wasm runner"),
    ] {
        let sandbox = Sandbox::with_backend(config(false), backend).expect("sandbox");
        let model = sandbox
            .load(&runner, pkg.path(), Some("mlp.onnx"))
            .expect("load");
        let s = stats(sandboxed(&sandbox, &model, &x, trivial_calls));
        row(what, &s, base.p50, "native tract");
        println!(
            "{:<44} overhead over native tract: p50 {:.3} ms, p99 {:.3} ms",
            "",
            s.p50 - base.p50,
            s.p99 - base.p99
        );
    }

    // Loading a guest whose compiled module is in the cache: a new engine each time, as after
    // a node restart (deserialising the module, instantiating it, running `init`).
    let mut times = Vec::new();
    let mut compile_only = Vec::new();
    for _ in 0..10 {
        let sandbox = Sandbox::new(config(true)).expect("sandbox");
        let started = Instant::now();
        sandbox.precompile(&runner).expect("cached module");
        compile_only.push(ms(started.elapsed()));
        let sandbox = Sandbox::new(config(true)).expect("sandbox");
        let started = Instant::now();
        drop(
            sandbox
                .load(&runner, pkg.path(), Some("mlp.onnx"))
                .expect("load"),
        );
        times.push(ms(started.elapsed()));
    }
    let cached = stats(compile_only);
    let load = stats(times);
    println!(
        "\ncached runner ({:.1} MB): module from cache p50 {:.1} ms; load (cache + instantiate + init) p50 {:.1} ms, p99 {:.1} ms",
        runner.len() as f64 / 1e6,
        cached.p50,
        load.p50,
        load.p99
    );

    // A pure-wasm call consumes its instance, and the next one is initialised in the
    // background: ONNX parse and tract's optimisation, in the guest. That CPU is part of what
    // each call costs a provider (no spares here, so nothing else runs beside it).
    let mut inits = Vec::new();
    for _ in 0..5 {
        let sandbox = Sandbox::new(SandboxConfig {
            warm_instances: 0,
            ..config(false)
        })
        .expect("sandbox");
        sandbox.precompile(&runner).expect("cached module");
        let started = Instant::now();
        drop(
            sandbox
                .load(&runner, demo.path(), Some("model.onnx"))
                .expect("load demo model"),
        );
        inits.push(ms(started.elapsed()));
    }
    let init = stats(inits);
    println!(
        "demo model, pure wasm: instantiate + init (module cached) p50 {:.1} ms, p99 {:.1} ms",
        init.p50, init.p99
    );

    // A busy model: pure-wasm calls back to back, none waiting for a spare. Without a snapshot
    // each call's instance runs `init` (above) first; from the snapshot it does not.
    println!(
        "
demo model, pure wasm, calls back to back, {calls} calls each"
    );
    let mut busy = Vec::new();
    for (after, what) in [
        (None, "instances that run init"),
        (Some(Duration::ZERO), "instances from the snapshot"),
    ] {
        let sandbox = Sandbox::new(SandboxConfig {
            snapshot_after: after,
            ..config(false)
        })
        .expect("sandbox");
        let model = sandbox
            .load(&runner, demo.path(), Some("model.onnx"))
            .expect("load demo model");
        if after.is_some() {
            let started = Instant::now();
            assert_eq!(
                model.wait_for_snapshot(Duration::from_secs(1800)),
                SnapshotStatus::Ready
            );
            println!(
                "{:<44} snapshot made in {:.1} s (instrumented compile, init, compile)",
                "",
                started.elapsed().as_secs_f64()
            );
        }
        let mut from_snapshot = 0;
        let s = stats(timed(calls, || {
            let outcome = sandbox
                .predict(&model, inputs.clone(), &CallLimits::default())
                .expect("call");
            from_snapshot += usize::from(outcome.from_snapshot);
        }));
        row(what, &s, ort.p50, "onnxruntime");
        busy.push((s.p50, from_snapshot));
    }
    println!(
        "{:<44} {:.2}x the calls that wait for init ({} of {} calls from the snapshot)",
        "snapshot",
        busy[1].0 / busy[0].0,
        busy[1].1,
        calls + 1
    );
}
