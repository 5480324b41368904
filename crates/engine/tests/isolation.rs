//! Native engines in confined workers, with real onnxruntime (the PyPI wheel's library, found
//! as a node finds it) and real tract: results agree with each other, and hostile graphs — a
//! memory bomb, an endless loop, malformed ONNX — cost only their own worker while other
//! graphs keep answering.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::runtime::Device;
use engine::worker::{EngineKind, Options};
use engine::{Isolated, WorkerCommand};
use graph::{Error, Limits, Tensor};

fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mlp() -> Vec<u8> {
    fixture("../sandbox/tests/fixtures", "mlp.onnx")
}

fn library() -> PathBuf {
    engine::find_onnxruntime(None)
        .expect("onnxruntime's shared library (pip install onnxruntime, as scripts/test.sh does)")
}

fn command(engine: EngineKind, memory_mib: u64, run_timeout: Duration) -> WorkerCommand {
    WorkerCommand {
        program: env!("CARGO_BIN_EXE_moxnet-engine").into(),
        prefix: vec![],
        options: Options {
            engine,
            threads: 1,
            memory_mib,
        },
        run_timeout,
        load_timeout: Duration::from_secs(60),
    }
}

fn onnxruntime(memory_mib: u64, run_timeout: Duration) -> Isolated {
    Isolated::start(command(
        EngineKind::Onnxruntime {
            library: library(),
            device: Device::Cpu,
        },
        memory_mib,
        run_timeout,
    ))
    .expect("onnxruntime worker")
}

fn x() -> Tensor {
    Tensor::from_f32("x", vec![2, 4], &[5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3])
}

#[test]
fn onnxruntime_and_tract_workers_agree_and_say_what_they_are() {
    let ort = onnxruntime(2048, Duration::from_secs(30));
    assert_eq!(ort.hello().engine, "onnxruntime");
    assert!(
        ort.hello().version.starts_with("1."),
        "{:?}",
        ort.hello().version
    );
    assert!(
        ort.hello().confinement.contains("memory 2048 MiB"),
        "{}",
        ort.hello().confinement
    );
    let tract = Isolated::start(command(EngineKind::Tract, 2048, Duration::from_secs(30)))
        .expect("tract worker");
    assert_eq!(tract.hello().engine, "tract-native");

    let a = ort.load_graph(&mlp()).expect("load in onnxruntime");
    let b = tract.load_graph(&mlp()).expect("load in tract");
    assert_eq!(a.inputs(), b.inputs());
    assert_eq!(a.outputs(), b.outputs());
    let ya = a
        .run(vec![x()], &Limits::default())
        .expect("onnxruntime run");
    let yb = b.run(vec![x()], &Limits::default()).expect("tract run");
    assert_eq!(ya[0].shape, vec![2, 3]);
    let (ya, yb) = (ya[0].f32s().expect("f32"), yb[0].f32s().expect("f32"));
    for (p, q) in ya.iter().zip(&yb) {
        assert!((p - q).abs() <= 1e-5 + 1e-4 * q.abs(), "{ya:?} vs {yb:?}");
    }
    // Softmax rows sum to one: the graph really ran.
    assert!((ya[..3].iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn inputs_are_checked_before_they_cross() {
    let ort = onnxruntime(2048, Duration::from_secs(30));
    let g = ort.load_graph(&mlp()).expect("load");
    let wrong_width = Tensor::from_f32("x", vec![1, 3], &[1.0, 2.0, 3.0]);
    assert!(matches!(
        g.run(vec![wrong_width], &Limits::default()),
        Err(Error::Invalid(_))
    ));
    let stranger = Tensor::from_f32("z", vec![1, 4], &[0.0; 4]);
    assert!(matches!(
        g.run(vec![x(), stranger], &Limits::default()),
        Err(Error::Invalid(_))
    ));
    let too_big = Limits {
        max_elements: 4,
        ..Limits::default()
    };
    assert!(matches!(g.run(vec![x()], &too_big), Err(Error::Invalid(_))));
    // The worker served none of them and still answers.
    assert!(g.run(vec![x()], &Limits::default()).is_ok());
}

#[test]
fn a_memory_bomb_costs_only_its_worker() {
    // onnxruntime: ConstantOfShape of a shape the caller gives; tract (which wants that shape
    // known at load) the outer product of the caller's vector. Both: 100,000 × 100,000
    // floats, 40 GB, against a limit of 512 MiB.
    let n = |rows: i64, cols: i64| vec![Tensor::from_i64("n", vec![2], &[rows, cols])];
    let v = |len: usize| vec![Tensor::from_f32("x", vec![len as u64], &vec![1.0; len])];
    let cases = [
        (
            EngineKind::Onnxruntime {
                library: library(),
                device: Device::Cpu,
            },
            fixture("tests/fixtures", "bomb.onnx"),
            n(100_000, 100_000),
            n(3, 3),
        ),
        (
            EngineKind::Tract,
            fixture("../sandbox/tests/fixtures", "absurd.onnx"),
            v(100_000),
            v(3),
        ),
    ];
    for (engine, model, huge, small) in cases {
        let backend =
            Isolated::start(command(engine.clone(), 512, Duration::from_secs(60))).expect("start");
        let bomb = backend
            .load_graph(&model)
            .expect("the bomb loads: it is harmless until run");
        let other = backend.load_graph(&mlp()).expect("another model");
        let err = bomb
            .run(huge, &Limits::default())
            .expect_err("the bomb must fail");
        assert!(matches!(err, Error::Run(_)), "{engine:?}: {err}");
        eprintln!("{engine:?}: {err}");
        // This process (the node's stand-in) is alive, other graphs answer, and the bomb's
        // graph answers a harmless call (in a fresh worker if its first one died).
        assert!(other.run(vec![x()], &Limits::default()).is_ok());
        let small = bomb.run(small, &Limits::default()).expect("a small call");
        assert_eq!(small[0].shape, vec![3, 3]);
        assert_eq!(small[0].f32s().expect("f32"), vec![1.0; 9]);
    }
}

#[test]
fn an_endless_loop_is_killed_at_the_deadline_and_others_keep_answering() {
    let ort = Arc::new(onnxruntime(1024, Duration::from_secs(2)));
    let spin = ort
        .load_graph(&fixture("tests/fixtures", "spin.onnx"))
        .expect("load the loop");
    let other = Arc::new(ort.load_graph(&mlp()).expect("another model"));
    // Calls on the other model go on while the loop spins.
    let answering = {
        let other = other.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut answered = 0;
            while started.elapsed() < Duration::from_millis(1500) {
                other
                    .run(vec![x()], &Limits::default())
                    .expect("the other model answers");
                answered += 1;
            }
            answered
        })
    };
    let started = Instant::now();
    let err = spin
        .run(
            vec![Tensor::from_f32("x", vec![1], &[0.0])],
            &Limits::default(),
        )
        .expect_err("the loop must be stopped");
    let took = started.elapsed();
    assert!(err.to_string().contains("time limit"), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let answered = answering.join().expect("thread");
    assert!(answered > 10, "only {answered} calls answered meanwhile");
    // Its worker is gone; the graph starts a fresh one for the next call.
    assert_eq!(spin.idle_workers(), 0);
    assert!(other.run(vec![x()], &Limits::default()).is_ok());
}

#[test]
fn malformed_onnx_is_a_load_error_and_the_engine_goes_on() {
    let ort = onnxruntime(1024, Duration::from_secs(30));
    let tract = Isolated::start(command(EngineKind::Tract, 1024, Duration::from_secs(30)))
        .expect("tract worker");
    let good = mlp();
    let mut noise = vec![0u8; 4096];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    let mut flipped = good.clone();
    for i in (0..flipped.len()).step_by(7) {
        flipped[i] ^= 0xa5;
    }
    for backend in [&ort, &tract] {
        for bad in [&b""[..], &noise[..], &good[..good.len() / 2], &flipped[..]] {
            match backend.load_graph(bad) {
                Err(Error::Load(_)) => {}
                Err(other) => panic!("{}: {other}", backend.hello().engine),
                Ok(_) => panic!("{}: a malformed model loaded", backend.hello().engine),
            }
        }
        let g = backend
            .load_graph(&good)
            .expect("a good model after the bad ones");
        assert!(g.run(vec![x()], &Limits::default()).is_ok());
    }
}

#[test]
fn a_missing_library_is_a_clear_error() {
    let err = Isolated::start(command(
        EngineKind::Onnxruntime {
            library: "/nonexistent/libonnxruntime.so".into(),
            device: Device::Cpu,
        },
        512,
        Duration::from_secs(5),
    ))
    .err()
    .expect("no library, no engine");
    assert!(
        err.to_string().contains("/nonexistent/libonnxruntime.so"),
        "{err}"
    );
}

/// This process's children that are engine workers: `(pid, environment, smaps_rollup)`.
fn workers_here() -> Vec<(u32, String, String)> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After the command name (in parentheses, which may hold spaces): state, then ppid.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if parent.as_deref() != Some(me.as_str())
            || !String::from_utf8_lossy(&command).contains("moxnet-engine")
        {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let smaps =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        found.push((
            pid,
            String::from_utf8_lossy(&environ).replace('\0', "\n"),
            smaps,
        ));
    }
    found
}

#[test]
fn a_workers_heap_is_on_huge_pages_where_the_kernel_offers_them() {
    let ort = onnxruntime(2048, Duration::from_secs(30));
    let graph = ort.load_graph(&mlp()).expect("load");
    graph.run(vec![x()], &Limits::default()).expect("run");
    let workers = workers_here();
    assert!(!workers.is_empty(), "no worker found under this process");
    let (key, value) = engine::HUGE_PAGES;
    // Where THP is `[never]` (or absent) the kernel gives none; elsewhere glibc's heap has some.
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| !mode.contains("[never]"));
    for (pid, environ, smaps) in workers {
        assert!(
            environ.lines().any(|l| l == format!("{key}={value}")),
            "worker {pid}'s environment:\n{environ}"
        );
        let huge_kib: u64 = smaps
            .lines()
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        assert!(
            !thp || huge_kib >= 2048,
            "worker {pid}: {huge_kib} KiB on huge pages\n{smaps}"
        );
    }
}
