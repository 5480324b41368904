//! Inference latency, every figure a ratio to onnxruntime (or to native tract) measured in the
//! same run: the demo model (all-MiniLM-L6-v2 int8, batch 1, 16 tokens) in the sandboxed
//! pure-wasm runner, in the sandbox with the native host backend, in native tract, and in
//! onnxruntime (Python, one thread); then the per-call overhead on a trivial model (p50/p99)
//! and the time to load a guest whose compiled module is cached.
//!
//! ```sh
//! python3 examples/minilm/fetch.py
//! (cd guests && cargo build --release)
//! cargo bench -p sandbox --bench inference
//! ```
//! Set `MOXNET_GUESTS_DIR` when `CARGO_TARGET_DIR` is set, and `BENCH_CALLS` for more calls.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graph::Tensor;
use sandbox::{CallLimits, Model, Sandbox, SandboxConfig};

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

/// 16 tokens: [CLS] "the quick brown fox jumps over the lazy dog and runs far away today ." [SEP]
const IDS: [i64; 16] = [
    101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1998, 3216, 2521, 2185, 2651, 102,
];

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

fn onnxruntime(model: &Path, inputs: &[Tensor], calls: usize) -> Vec<f64> {
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
    let mut child = Command::new("python3")
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

fn row(what: &str, s: &Stats, baseline: f64, against: &str) {
    println!(
        "{what:<44} p50 {:>9.3} ms  p99 {:>9.3} ms  {:>6.2}x {against}",
        s.p50,
        s.p99,
        s.p50 / baseline
    );
}

fn main() {
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let cache = tempfile::tempdir().expect("cache");
    let config = |host_backend| SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        host_backend,
        ..SandboxConfig::default()
    };
    let runner = guest("moxnet_runner");

    // The demo model's raw graph (no runner.json: token ids in, token vectors out).
    let onnx = root().join("examples/minilm/model.onnx");
    assert!(
        onnx.is_file(),
        "{} is missing: run python3 examples/minilm/fetch.py",
        onnx.display()
    );
    let demo = tempfile::tempdir().expect("package");
    std::fs::copy(&onnx, demo.path().join("model.onnx")).expect("copy model");
    let inputs = demo_inputs();

    println!("demo model: all-MiniLM-L6-v2 int8, batch 1, 16 tokens, {calls} calls each");
    let ort = stats(onnxruntime(&onnx, &inputs, calls));
    row(
        "onnxruntime (Python, 1 thread)",
        &ort,
        ort.p50,
        "onnxruntime",
    );
    let graph = graph::Graph::load(&std::fs::read(&onnx).expect("read model")).expect("tract");
    let tract = stats(native(&graph, &inputs, calls));
    row("native tract", &tract, ort.p50, "onnxruntime");
    for (host_backend, what) in [
        (true, "sandbox + native host backend"),
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

    // Per-call overhead: a trivial graph, where the sandbox's own costs dominate.
    let trivial_calls = calls * 10;
    println!("\ntrivial model (tests/fixtures/mlp.onnx, batch 1), {trivial_calls} calls each");
    let mlp = root().join("crates/sandbox/tests/fixtures/mlp.onnx");
    let pkg = tempfile::tempdir().expect("package");
    std::fs::copy(&mlp, pkg.path().join("mlp.onnx")).expect("copy");
    let x = vec![Tensor::from_f32("x", vec![1, 4], &[5.1, 3.5, 1.4, 0.2])];
    let graph = graph::Graph::load(&std::fs::read(&mlp).expect("read")).expect("tract");
    let base = stats(native(&graph, &x, trivial_calls));
    row("native tract", &base, base.p50, "native tract");
    for (host_backend, what) in [
        (true, "sandbox + native host backend"),
        (false, "sandbox, pure-wasm runner"),
    ] {
        let sandbox = Sandbox::new(config(host_backend)).expect("sandbox");
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
}
