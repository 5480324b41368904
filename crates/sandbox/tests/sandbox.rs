//! The sandbox against real guests: the built-in ONNX runner (checked against onnxruntime) and a
//! hostile guest whose every misbehaviour must be contained while other calls go on.
//!
//! The guests are built by `cargo build --release --manifest-path guests/Cargo.toml`; the tests
//! find them in `$MOXNET_GUESTS_DIR`, else in `guests/target/wasm32-wasip2/release`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use graph::{DType, Dim, Tensor};
use sandbox::{CallLimits, Sandbox, SandboxConfig, SandboxError, SnapshotStatus};

fn guest(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("MOXNET_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/target/wasm32-wasip2/release")
        });
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the guests first: cargo build --release --manifest-path guests/Cargo.toml \
             (and set MOXNET_GUESTS_DIR if CARGO_TARGET_DIR is set)",
            path.display()
        )
    })
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A compile cache shared by the tests: the runner is a large component, compiled once per
/// build rather than once per test.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-wasm-cache")
}

fn sandbox(host_backend: bool, max_concurrent: usize, max_queued: usize) -> Sandbox {
    static WARM: std::sync::Once = std::sync::Once::new();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache_dir()),
        max_memory_mib: 512,
        max_concurrent,
        max_queued,
        host_backend,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    // The first test in compiles the guests; the others wait here instead of compiling too.
    WARM.call_once(|| {
        for name in ["moxnet_runner", "moxnet_hostile"] {
            sandbox.precompile(&guest(name)).expect("precompile");
        }
    });
    sandbox
}

fn limits() -> CallLimits {
    CallLimits {
        memory_mib: 256,
        fuel: 2_000_000_000,
        timeout: Duration::from_secs(30),
        ..CallLimits::default()
    }
}

/// A package directory holding one fixture graph.
fn package(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixtures().join(fixture), dir.path().join(fixture)).expect("copy fixture");
    dir
}

/// Runs `model` with onnxruntime (tests/fixtures/ort_run.py) and returns each output's values.
fn onnxruntime(model: &Path, inputs: &[Tensor]) -> Vec<(String, Vec<f64>)> {
    let mut request = serde_json::Map::new();
    for t in inputs {
        let data: Vec<serde_json::Value> = match t.dtype {
            DType::F32 => t.f32s().expect("f32").into_iter().map(Into::into).collect(),
            DType::I64 => t.i64s().expect("i64").into_iter().map(Into::into).collect(),
            other => panic!("no reference for {other:?}"),
        };
        request.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": t.dtype.name(), "shape": t.shape, "data": data }),
        );
    }
    let mut child = Command::new("python3")
        .arg(fixtures().join("ort_run.py"))
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (scripts/test.sh installs onnxruntime)");
    serde_json::to_writer(child.stdin.take().expect("stdin"), &request).expect("write request");
    let out = child.wait_with_output().expect("onnxruntime");
    assert!(out.status.success(), "onnxruntime failed");
    let reply: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("onnxruntime reply");
    reply
        .into_iter()
        .map(|(name, v)| {
            let data = v["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect();
            (name, data)
        })
        .collect()
}

fn assert_close(name: &str, ours: &[f32], reference: &[f64]) {
    assert_eq!(ours.len(), reference.len(), "{name}: lengths differ");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (f64::from(*a) - b).abs() <= 1e-4,
            "{name}[{i}]: sandbox {a}, onnxruntime {b}"
        );
    }
}

fn check_against_onnxruntime(host_backend: bool) {
    let sandbox = sandbox(host_backend, 2, 4);
    let runner = guest("moxnet_runner");
    let cases: Vec<(&str, Vec<Tensor>)> = vec![
        (
            "mlp.onnx",
            vec![Tensor::from_f32(
                "x",
                vec![3, 4],
                &[
                    5.1, 3.5, 1.4, 0.2, -1.0, 0.5, 2.25, -3.0, 0.0, 0.0, 0.0, 0.0,
                ],
            )],
        ),
        (
            "embed.onnx",
            vec![Tensor::from_i64(
                "ids",
                vec![2, 5],
                &[0, 1, 2, 3, 31, 7, 7, 7, 30, 4],
            )],
        ),
    ];
    // Odd depths (13, 19), and batches that fill no 8-wide tile or are a single row: the
    // runner's matrix kernel's remainder step, and tract's matrix-vector kernel.
    let gemm = |batch: u64| {
        let x: Vec<f32> = (0..batch * 13)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        (
            "gemm.onnx",
            vec![Tensor::from_f32("x", vec![batch, 13], &x)],
        )
    };
    let cases: Vec<(&str, Vec<Tensor>)> = cases.into_iter().chain([1, 9, 24].map(gemm)).collect();
    for (fixture, inputs) in cases {
        let dir = package(fixture);
        let model = sandbox
            .load(&runner, dir.path(), Some(fixture))
            .unwrap_or_else(|e| panic!("{fixture}: {e}"));
        let outcome = sandbox
            .predict(&model, inputs.clone(), &limits())
            .unwrap_or_else(|e| panic!("{fixture}: {e}"));
        if host_backend {
            assert_eq!(
                outcome.host.calls, 1,
                "{fixture}: the graph ran on the host"
            );
        } else {
            assert_eq!(outcome.host.calls, 0, "{fixture}: the graph ran in wasm");
        }
        let reference = onnxruntime(&fixtures().join(fixture), &inputs);
        assert_eq!(outcome.outputs.len(), reference.len());
        for (name, values) in reference {
            let ours = outcome
                .outputs
                .iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("{fixture}: no output {name}"));
            assert_close(&name, &ours.f32s().expect("f32 output"), &values);
        }
    }
}

#[test]
fn runner_in_wasm_matches_onnxruntime() {
    check_against_onnxruntime(false);
}

#[test]
fn runner_with_host_backend_matches_onnxruntime() {
    check_against_onnxruntime(true);
}

#[test]
fn interface_is_inferred_from_the_graph() {
    let sandbox = sandbox(false, 1, 1);
    let dir = package("embed.onnx");
    let model = sandbox
        .load(&guest("moxnet_runner"), dir.path(), Some("embed.onnx"))
        .expect("load");
    let input = &model.inputs()[0];
    assert_eq!(input.name, "ids");
    assert_eq!(input.dtype, DType::I64);
    assert_eq!(
        input.shape,
        vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())]
    );
    let output = &model.outputs()[0];
    assert_eq!((output.name.as_str(), output.dtype), ("out", DType::F32));

    // Inputs that do not fit the interface are refused before the guest runs.
    let wrong = [
        Tensor::from_f32("ids", vec![1, 2], &[1.0, 2.0]),
        Tensor::from_i64("ids", vec![2], &[1, 2]),
        Tensor::from_i64("nope", vec![1, 1], &[1]),
    ];
    for t in wrong {
        let err = sandbox
            .predict(&model, vec![t], &limits())
            .expect_err("must fail");
        assert!(matches!(err, SandboxError::InvalidInput(_)), "{err}");
    }
    // A malformed tensor (data length does not match its shape) is refused too.
    let mut bad = Tensor::from_i64("ids", vec![1, 3], &[1, 2, 3]);
    bad.data.pop();
    let err = sandbox
        .predict(&model, vec![bad], &limits())
        .expect_err("must fail");
    assert!(matches!(err, SandboxError::InvalidInput(_)), "{err}");
}

#[test]
fn the_same_call_twice_gives_the_same_bytes_and_fuel() {
    for host_backend in [false, true] {
        let sandbox = sandbox(host_backend, 1, 1);
        let dir = package("mlp.onnx");
        let model = sandbox
            .load(&guest("moxnet_runner"), dir.path(), Some("mlp.onnx"))
            .expect("load");
        let x = Tensor::from_f32("x", vec![2, 4], &[0.5, -1.5, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0]);
        // The first call runs on the instance `load` initialised, the second on a spare built
        // in the background (or a fresh one if it is not ready yet).
        let a = sandbox
            .predict(&model, vec![x.clone()], &limits())
            .expect("call 1");
        let b = sandbox
            .predict(&model, vec![x.clone()], &limits())
            .expect("call 2");
        assert_eq!(a.outputs, b.outputs);
        assert_eq!(a.fuel, b.fuel);
        assert!(a.fuel > 0);
        // A peer replaying the call, with no spare instances at all, gets the same again.
        let replay = Sandbox::new(SandboxConfig {
            cache_dir: Some(cache_dir()),
            max_memory_mib: 512,
            host_backend,
            warm_instances: 0,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        let model = replay
            .load(&guest("moxnet_runner"), dir.path(), Some("mlp.onnx"))
            .expect("load");
        for _ in 0..2 {
            let c = replay
                .predict(&model, vec![x.clone()], &limits())
                .expect("replay");
            assert_eq!(c.outputs, a.outputs);
            assert_eq!(c.fuel, a.fuel);
        }
    }
}

/// Loads the hostile guest with an empty package directory, kept alive by the returned guard.
fn hostile(sandbox: &Sandbox) -> (tempfile::TempDir, sandbox::Model) {
    let dir = tempfile::tempdir().expect("dir");
    let model = sandbox
        .load(&guest("moxnet_hostile"), dir.path(), None)
        .expect("load hostile");
    (dir, model)
}

fn mode(m: &str) -> Vec<Tensor> {
    vec![Tensor::from_bytes("mode", vec![1], &[m])]
}

fn text_output(outcome: &sandbox::Outcome) -> String {
    let t = &outcome.outputs[0];
    let items = t.byte_elements().expect("bytes");
    String::from_utf8_lossy(items[0]).into_owned()
}

#[test]
fn hostile_guests_are_contained_while_other_calls_run() {
    let sandbox = Arc::new(sandbox(false, 8, 16));
    let (_dir, hostile) = hostile(&sandbox);
    let hostile = Arc::new(hostile);
    let dir = package("mlp.onnx");
    let good = Arc::new(
        sandbox
            .load(&guest("moxnet_runner"), dir.path(), Some("mlp.onnx"))
            .expect("load runner"),
    );
    let mut hostile_calls = Vec::new();
    for (name, limits) in [
        ("loop", limits()),
        (
            "loop",
            CallLimits {
                fuel: u64::MAX / 2,
                timeout: Duration::from_millis(500),
                ..limits()
            },
        ),
        ("memory", limits()),
        ("recurse", limits()),
        ("huge-output", limits()),
        ("trap", limits()),
    ] {
        let (sandbox, hostile) = (sandbox.clone(), hostile.clone());
        hostile_calls.push((
            name,
            limits.clone(),
            std::thread::spawn(move || sandbox.predict(&hostile, mode(name), &limits)),
        ));
    }
    // Meanwhile, a well-behaved model keeps answering.
    let x = Tensor::from_f32("x", vec![1, 4], &[1.0, 2.0, 3.0, 4.0]);
    let first = sandbox
        .predict(&good, vec![x.clone()], &limits())
        .expect("good call");
    for _ in 0..5 {
        let again = sandbox
            .predict(&good, vec![x.clone()], &limits())
            .expect("good call");
        assert_eq!(again.outputs, first.outputs);
    }
    for (name, limits, call) in hostile_calls {
        let err = call.join().expect("no panic").expect_err(name);
        let expected = match (name, &err) {
            ("loop", SandboxError::OutOfFuel { limit }) => *limit == limits.fuel,
            ("loop", SandboxError::Timeout { limit }) => *limit == limits.timeout,
            ("memory" | "huge-output", SandboxError::OutOfMemory { limit_mib }) => {
                *limit_mib == limits.memory_mib
            }
            // Overflowing the wasm call stack, or the shadow stack in linear memory below it.
            ("recurse", SandboxError::Trap(m)) => {
                m.contains("stack") || m.contains("out of bounds memory access")
            }
            ("trap", SandboxError::Trap(m)) => m.contains("unreachable"),
            _ => false,
        };
        assert!(expected, "{name} gave {err:?}");
    }
    // The hostile loop with unbounded fuel hit its deadline, not its fuel.
    // (Checked above: both loop outcomes are accepted only with their own limit.)
    let after = sandbox
        .predict(&good, vec![x], &limits())
        .expect("good call after");
    assert_eq!(after.outputs, first.outputs);
}

#[test]
fn nothing_of_a_call_survives_into_the_next() {
    // Pool slots keep the pages an instance wrote (reset in place, `KEEP_RESIDENT_MEMORY`):
    // round after round through the same slots, each call's instance must start clean.
    let sandbox = sandbox(false, 1, 1);
    let (_dir, model) = hostile(&sandbox);
    for round in 0..6 {
        let secret = format!("caller {round}'s secret");
        let kept = sandbox
            .predict(&model, mode(&format!("remember:{secret}")), &limits())
            .expect("remember");
        assert_eq!(
            text_output(&kept),
            "kept",
            "the guest's scan finds what it kept"
        );
        for _ in 0..3 {
            let recalled = sandbox
                .predict(&model, mode(&format!("recall:{secret}")), &limits())
                .expect("recall");
            assert_eq!(text_output(&recalled), "gone", "round {round}");
        }
    }
}

#[test]
fn a_large_output_is_refused_not_returned() {
    let sandbox = sandbox(false, 1, 1);
    let (_dir, hostile) = hostile(&sandbox);
    // With memory to build it, the 1 GiB output still stops at the output cap.
    let limits = CallLimits {
        memory_mib: 512,
        max_output_bytes: 1 << 20,
        ..limits()
    };
    let err = sandbox
        .predict(&hostile, mode("huge-output"), &limits)
        .expect_err("must fail");
    assert!(
        matches!(
            err,
            SandboxError::OutOfMemory { .. } | SandboxError::OutputTooLarge { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn guests_have_no_ambient_authority() {
    let sandbox = sandbox(false, 1, 1);
    let dir = tempfile::tempdir().expect("dir");
    let hostile = sandbox
        .load(&guest("moxnet_hostile"), dir.path(), None)
        .expect("load hostile");
    // No host files: only the package, read-only, at /model.
    let err = sandbox
        .predict(&hostile, mode("fs"), &limits())
        .expect_err("must fail");
    assert!(
        matches!(err, SandboxError::Failed(ref m) if m.starts_with("fs:")),
        "{err:?}"
    );
    // No environment.
    let env = sandbox
        .predict(&hostile, mode("env"), &limits())
        .expect("env");
    assert_eq!(text_output(&env), "[]");
    // Fixed clock and randomness: the same answer every call.
    let a = sandbox
        .predict(&hostile, mode("clock"), &limits())
        .expect("clock");
    let b = sandbox
        .predict(&hostile, mode("clock"), &limits())
        .expect("clock");
    assert_eq!(text_output(&a), text_output(&b));
    assert!(text_output(&a).starts_with("0 "), "{}", text_output(&a));
    assert_eq!(a.fuel, b.fuel);
}

/// Where a CPU may choose a float result, the sandbox fixes it: NaNs are canonical, relaxed SIMD
/// follows wasmtime's deterministic profile. Each value below differs on x86-64 without that
/// (a negative NaN, `pmaddubsw`'s unsigned operand, `cvttps2dq`'s 0x80000000, `minps`'s second
/// operand, `blendvps`'s top bit), so the same guest gives the same bits on every provider.
#[test]
fn float_results_a_cpu_could_choose_are_the_same_on_every_host() {
    let sandbox = sandbox(false, 1, 1);
    let (_dir, hostile) = hostile(&sandbox);
    let out = sandbox
        .predict(&hostile, mode("floats"), &limits())
        .expect("floats");
    assert_eq!(
        text_output(&out),
        // 0/0; (1 + 2^-12)^2 - (1 + 2^-11) fused = 2^-24; 4 × (1 × -1) signed; NaN truncated
        // saturating = 0; min(0, -0) = -0; bit select of -1 and 0 under 0x7fffffff.
        "nan 7fc00000 madd 33800000 dot -4 trunc 0 min 80000000 select 7fffffff"
    );
}

#[test]
fn malformed_oversized_and_foreign_components_are_refused() {
    let sandbox = Sandbox::new(SandboxConfig {
        max_component_bytes: 1 << 20,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    for (what, wasm) in [
        ("garbage", b"\0asm\x0d\0\x01\0garbage".to_vec()),
        ("empty", Vec::new()),
        ("oversized", guest("moxnet_runner")),
        // A valid core module, but not a moxnet:model component.
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
    ] {
        let err = sandbox
            .load(&wasm, dir.path(), None)
            .expect_err("must fail");
        assert!(matches!(err, SandboxError::Load(_)), "{what}: {err:?}");
    }
    // The runner given a package without its graph fails to load with the reason.
    let sandbox = self::sandbox(false, 1, 1);
    let err = sandbox
        .load(&guest("moxnet_runner"), dir.path(), Some("missing.onnx"))
        .expect_err("must fail");
    assert!(
        matches!(err, SandboxError::Load(ref m) if m.contains("missing.onnx")),
        "{err:?}"
    );
}

#[test]
fn a_graph_with_absurd_shapes_is_contained() {
    let sandbox = sandbox(false, 1, 1);
    let dir = package("absurd.onnx");
    let model = sandbox
        .load(&guest("moxnet_runner"), dir.path(), Some("absurd.onnx"))
        .expect("load");
    let small = sandbox
        .predict(
            &model,
            vec![Tensor::from_f32("x", vec![3], &[1.0, 2.0, 3.0])],
            &limits(),
        )
        .expect("small shape");
    assert_eq!(small.outputs[0].shape, vec![3, 3]);
    assert_eq!(
        small.outputs[0].f32s().expect("f32"),
        vec![1.0, 2.0, 3.0, 2.0, 4.0, 6.0, 3.0, 6.0, 9.0]
    );
    // 2^20 floats in, 2^40 floats (4 TiB) asked for.
    let long = vec![1.0f32; 1 << 20];
    let err = sandbox
        .predict(
            &model,
            vec![Tensor::from_f32("x", vec![1 << 20], &long)],
            &limits(),
        )
        .expect_err("must fail");
    assert!(
        matches!(
            err,
            SandboxError::OutOfMemory { .. } | SandboxError::Failed(_) | SandboxError::Trap(_)
        ),
        "{err:?}"
    );
}

#[test]
fn a_full_queue_answers_busy() {
    let sandbox = Arc::new(sandbox(false, 1, 0));
    let (_dir, hostile) = hostile(&sandbox);
    let hostile = Arc::new(hostile);
    let spinning = {
        let (sandbox, hostile) = (sandbox.clone(), hostile.clone());
        std::thread::spawn(move || {
            let limits = CallLimits {
                fuel: u64::MAX / 2,
                timeout: Duration::from_secs(3),
                ..limits()
            };
            sandbox.predict(&hostile, mode("loop"), &limits)
        })
    };
    // Wait until the spinning call holds the only slot (nobody else calls meanwhile, so the
    // running call is the spinner), then knock: busy at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sandbox.occupancy() != (1, 0) {
        assert!(
            !spinning.is_finished(),
            "the spinning call ended before it ran"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the spinning call never ran"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    match sandbox.predict(&hostile, mode("echo"), &limits()) {
        Err(SandboxError::Busy { running, queued }) => assert_eq!((running, queued), (1, 0)),
        other => panic!("expected busy while the slot is held: {other:?}"),
    }
    let err = spinning.join().expect("no panic").expect_err("must fail");
    assert!(matches!(err, SandboxError::Timeout { .. }), "{err:?}");
    // The slot is free again.
    sandbox
        .predict(&hostile, mode("echo"), &limits())
        .expect("echo after");
}

#[test]
fn compiled_modules_are_cached_on_disk() {
    let cache = tempfile::tempdir().expect("cache");
    let config = SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let wasm = guest("moxnet_hostile");
    let dir = tempfile::tempdir().expect("dir");
    Sandbox::new(config.clone())
        .expect("sandbox")
        .load(&wasm, dir.path(), None)
        .expect("load");
    let entries = walk(cache.path());
    assert!(!entries.is_empty(), "nothing cached");
    // A second engine with the same configuration loads from the cache and still works.
    let sandbox = Sandbox::new(config).expect("sandbox");
    let model = sandbox.load(&wasm, dir.path(), None).expect("cached load");
    let out = sandbox
        .predict(&model, mode("echo"), &limits())
        .expect("echo");
    assert_eq!(text_output(&out), "echo");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The demo model's files (examples/minilm/fetch.py downloads them; scripts/test.sh runs it).
fn demo_file(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/minilm")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run python3 examples/minilm/fetch.py",
        path.display()
    );
    path
}

#[test]
fn the_demo_model_matches_onnxruntime() {
    let onnx = demo_file("model.onnx");
    // The raw graph: token ids in, token vectors out, on both engines.
    let raw = tempfile::tempdir().expect("dir");
    std::fs::copy(&onnx, raw.path().join("model.onnx")).expect("copy");
    let text = "The quick brown fox jumps over the lazy dog, and runs far away today.";
    let vocab = std::fs::read_to_string(demo_file("vocab.txt")).expect("vocab");
    let ids = graph::wordpiece::WordPiece::from_vocab(&vocab, true)
        .expect("vocab")
        .encode(text, 256);
    let n = ids.len() as u64;
    let inputs = vec![
        Tensor::from_i64("input_ids", vec![1, n], &ids),
        Tensor::from_i64("attention_mask", vec![1, n], &vec![1; ids.len()]),
        Tensor::from_i64("token_type_ids", vec![1, n], &vec![0; ids.len()]),
    ];
    let reference = onnxruntime(&onnx, &inputs);
    let (_, hidden) = reference
        .iter()
        .find(|(name, _)| name == "last_hidden_state")
        .expect("last_hidden_state");
    for host_backend in [true, false] {
        let sandbox = sandbox(host_backend, 1, 1);
        let model = sandbox
            .load(&guest("moxnet_runner"), raw.path(), Some("model.onnx"))
            .expect("load");
        let out = sandbox
            .predict(&model, inputs.clone(), &limits())
            .expect("call");
        let ours = out
            .outputs
            .iter()
            .find(|t| t.name == "last_hidden_state")
            .expect("last_hidden_state");
        assert_eq!(ours.shape, vec![1, n, 384]);
        assert_close("last_hidden_state", &ours.f32s().expect("f32"), hidden);
    }

    // The package as published: text in, tokenized in the sandbox, mean-pooled, normalised.
    let pkg = tempfile::tempdir().expect("dir");
    for f in ["model.onnx", "vocab.txt", "runner.json"] {
        std::fs::copy(demo_file(f), pkg.path().join(f)).expect("copy");
    }
    let sandbox = sandbox(true, 1, 1);
    let model = sandbox
        .load(&guest("moxnet_runner"), pkg.path(), Some("model.onnx"))
        .expect("load package");
    assert_eq!(model.inputs()[0].name, "text");
    assert_eq!(model.inputs()[0].dtype, DType::Bytes);
    let out = sandbox
        .predict(
            &model,
            vec![Tensor::from_bytes("text", vec![1], &[text])],
            &limits(),
        )
        .expect("embed");
    let embedding = &out.outputs[0];
    assert_eq!(
        (embedding.name.as_str(), &embedding.shape),
        ("embedding", &vec![1, 384])
    );
    // Mean of onnxruntime's token vectors (every token is real), then L2-normalised.
    let mut mean = vec![0f64; 384];
    for (i, v) in hidden.iter().enumerate() {
        mean[i % 384] += v / n as f64;
    }
    let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    let expected: Vec<f64> = mean.iter().map(|v| v / norm).collect();
    assert_close("embedding", &embedding.f32s().expect("f32"), &expected);
}

/// A sandbox that snapshots every model on its first load.
fn snapshotting(host_backend: bool) -> Sandbox {
    // Compiled once per build, like `sandbox`'s guests.
    let _ = sandbox(host_backend, 1, 1);
    Sandbox::new(SandboxConfig {
        cache_dir: Some(cache_dir()),
        max_memory_mib: 512,
        host_backend,
        snapshot_after: Some(Duration::ZERO),
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

/// Waits until the model's snapshot is made (or refused).
fn snapshot_of(model: &sandbox::Model) -> SnapshotStatus {
    model.wait_for_snapshot(Duration::from_secs(900))
}

/// Calls until a call runs on an instance from the snapshot (the spares `load` made before the
/// snapshot was ready come first).
fn call_from_snapshot(
    sandbox: &Sandbox,
    model: &sandbox::Model,
    inputs: &[Tensor],
) -> sandbox::Outcome {
    for _ in 0..8 {
        let outcome = sandbox
            .predict(model, inputs.to_vec(), &limits())
            .expect("call");
        if outcome.from_snapshot {
            return outcome;
        }
    }
    panic!("no call ran on an instance from the snapshot");
}

#[test]
fn a_snapshot_answers_as_init_does() {
    let x = Tensor::from_f32("x", vec![2, 4], &[0.5, -1.5, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0]);
    for host_backend in [false, true] {
        let dir = package("mlp.onnx");
        let plain = Sandbox::new(SandboxConfig {
            cache_dir: Some(cache_dir()),
            max_memory_mib: 512,
            host_backend,
            snapshot_after: None,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        let model = plain
            .load(&guest("moxnet_runner"), dir.path(), Some("mlp.onnx"))
            .expect("load");
        let expected = plain
            .predict(&model, vec![x.clone()], &limits())
            .expect("call after init");
        assert!(!expected.from_snapshot);
        assert_eq!(model.snapshot(), SnapshotStatus::Pending);

        let sandbox = snapshotting(host_backend);
        let model = sandbox
            .load(&guest("moxnet_runner"), dir.path(), Some("mlp.onnx"))
            .expect("load");
        assert_eq!(snapshot_of(&model), SnapshotStatus::Ready);
        let got = call_from_snapshot(&sandbox, &model, std::slice::from_ref(&x));
        assert_eq!(
            got.outputs, expected.outputs,
            "host backend: {host_backend}"
        );
        assert_eq!(got.fuel, expected.fuel, "host backend: {host_backend}");
        // With the host backend, the graph `init` loaded is the one the snapshot's guest calls.
        assert_eq!(got.host.calls, u64::from(host_backend));
        // Each call has an instance of its own: the next one from the snapshot answers the
        // same. (Not simply the next call: a spare whose `init` began before the snapshot was
        // ready may still come first.)
        let again = call_from_snapshot(&sandbox, &model, std::slice::from_ref(&x));
        assert_eq!((again.outputs, again.fuel), (got.outputs, got.fuel));
    }
}

#[test]
fn a_guest_using_a_handle_from_init_goes_back_to_init() {
    let sandbox = snapshotting(false);
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("a.txt"), "a").expect("write");
    let model = sandbox
        .load(&guest("moxnet_hostile"), dir.path(), Some("reads-package"))
        .expect("load");
    // `init` left the package directory's handle open: allowed, it is the guest's own package.
    assert_eq!(snapshot_of(&model), SnapshotStatus::Ready);
    let echo = call_from_snapshot(&sandbox, &model, &mode("echo"));
    assert_eq!(text_output(&echo), "echo");
    // A guest that traps on an input after `init` too keeps its snapshot.
    let err = sandbox
        .predict(&model, mode("trap"), &limits())
        .expect_err("a trap");
    assert!(matches!(err, SandboxError::Trap(_)), "{err}");
    assert_eq!(model.snapshot(), SnapshotStatus::Ready);
    call_from_snapshot(&sandbox, &model, &mode("echo"));
    // The handle does not exist in an instance from the snapshot: the guest traps there, the
    // call runs again on an instance that ran `init`, and the model gives up its snapshot.
    let listed = sandbox
        .predict(&model, mode("package"), &limits())
        .expect("the call runs again after init");
    assert_eq!(text_output(&listed), "1 entries");
    assert!(!listed.from_snapshot);
    match model.snapshot() {
        SnapshotStatus::Off(why) => assert!(why.contains("trapped"), "{why}"),
        other => panic!("the snapshot is still in use: {other:?}"),
    }
    for _ in 0..3 {
        let again = sandbox
            .predict(&model, mode("package"), &limits())
            .expect("call");
        assert!(!again.from_snapshot);
        assert_eq!(text_output(&again), "1 entries");
    }
}

#[test]
fn a_guest_that_draws_randomness_in_init_is_never_snapshotted() {
    let sandbox = snapshotting(false);
    let dir = tempfile::tempdir().expect("dir");
    let model = sandbox
        .load(
            &guest("moxnet_hostile"),
            dir.path(),
            Some("draws-randomness"),
        )
        .expect("load");
    // What `init` drew would be frozen in the snapshot, the same in every instance after it.
    match snapshot_of(&model) {
        SnapshotStatus::Off(why) => assert!(why.contains("random"), "{why}"),
        other => panic!("a guest that drew randomness was snapshotted: {other:?}"),
    }
    let echo = sandbox
        .predict(&model, mode("echo"), &limits())
        .expect("call");
    assert!(!echo.from_snapshot);
    assert_eq!(text_output(&echo), "echo");
}

#[test]
fn a_model_snapshotted_before_a_restart_is_snapshotted_at_its_first_load() {
    let dir = tempfile::tempdir().expect("dir");
    let load = |sandbox: &Sandbox| {
        sandbox
            .load(&guest("moxnet_hostile"), dir.path(), None)
            .expect("load")
    };
    let first = snapshotting(false);
    assert_eq!(snapshot_of(&load(&first)), SnapshotStatus::Ready);
    drop(first);
    // After a restart, with a threshold no test reaches: the mark from before decides.
    let restarted = |cache: PathBuf| {
        Sandbox::new(SandboxConfig {
            cache_dir: Some(cache),
            snapshot_after: Some(Duration::from_secs(3600)),
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    };
    let again = restarted(cache_dir());
    let model = load(&again);
    assert_eq!(snapshot_of(&model), SnapshotStatus::Ready);
    call_from_snapshot(&again, &model, &mode("echo"));
    // A node with another cache (no mark) waits for the threshold.
    let other = tempfile::tempdir().expect("cache");
    let fresh = restarted(other.path().to_path_buf());
    let model = load(&fresh);
    for _ in 0..3 {
        fresh
            .predict(&model, mode("echo"), &limits())
            .expect("call");
    }
    assert_eq!(model.snapshot(), SnapshotStatus::Pending);
}
