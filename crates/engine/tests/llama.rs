//! llama.cpp in confined workers, with the demo language model (SmolLM2-135M-Instruct Q4_1,
//! `python3 examples/smollm2/fetch.py`) and the real worker binary: greedy generation is
//! reproducible, sampling with a seed is too, tokens stream one frame each, a cancel stops a
//! generation and leaves the worker serving, a prompt longer than the context is refused, GPU
//! layers go to a GPU only where the build and the machine have one, and
//! hostile GGUF files handed straight to llama.cpp (past the node's own header check) cost only
//! their worker, with an error that says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::worker::{EngineKind, Options};
use engine::{LanguageModelWorkers, WorkerCommand};
use graph::Error;
use llm::gguf::write::{Tensor, Val, header};
use llm::{Finish, Message, Prompt, Sampling};

fn smollm2() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `python3 examples/smollm2/fetch.py`",
        path.display()
    );
    path
}

fn command(model: PathBuf, memory_mib: u64, context: u32) -> WorkerCommand {
    WorkerCommand {
        program: env!("CARGO_BIN_EXE_moxnet-engine").into(),
        prefix: vec![],
        options: Options {
            engine: EngineKind::Llama {
                model,
                context,
                gpu_layers: 0,
            },
            threads: 2,
            memory_mib,
        },
        run_timeout: Duration::from_secs(120),
        load_timeout: Duration::from_secs(120),
    }
}

fn greedy(max_tokens: u32) -> Sampling {
    Sampling {
        max_tokens,
        temperature: 0.0,
        ..Sampling::default()
    }
}

fn generate(
    w: &LanguageModelWorkers,
    prompt: &Prompt,
    sampling: &Sampling,
) -> Result<(String, Vec<u32>, engine::Generated), Error> {
    let mut text = String::new();
    let mut ids = Vec::new();
    let (done, tail) = w.generate(prompt, sampling, &mut |id, t| {
        ids.push(id);
        text.push_str(t);
        true
    })?;
    text.push_str(&tail);
    Ok((text, ids, done))
}

#[test]
fn generation_is_reproducible_streams_token_by_token_and_stops_where_asked() -> Result<(), Error> {
    let w = LanguageModelWorkers::start(command(smollm2(), 1024, 2048))?;
    assert_eq!(w.hello().engine, "llama.cpp");
    assert!(
        w.hello().confinement.contains("landlock") && w.hello().confinement.contains("memory"),
        "{}",
        w.hello().confinement
    );
    let info = w.info();
    assert_eq!((info.trained_context, info.context), (8192, 2048));
    // llama.cpp rounds a context up to a multiple of 256.
    let small = LanguageModelWorkers::start(command(smollm2(), 1024, 100))?;
    assert_eq!(small.info().context, 256);
    assert_eq!(info.vocab, 49152);

    let prompt = Prompt::Text("The three primary colours are".into());
    let (a, ids_a, done) = generate(&w, &prompt, &greedy(24))?;
    assert_eq!(done.finish, Finish::Length);
    assert_eq!(done.completion_tokens, 24);
    assert_eq!(ids_a.len(), 24, "one frame per token");
    assert!(a.contains("red"), "{a:?}");
    let (b, ids_b, _) = generate(&w, &prompt, &greedy(24))?;
    assert_eq!(
        (a.clone(), ids_a.clone()),
        (b, ids_b),
        "greedy is reproducible"
    );

    // Sampling: the same seed gives the same tokens, another seed (very likely) others.
    let hot = |seed| Sampling {
        max_tokens: 32,
        temperature: 1.2,
        top_p: 1.0,
        top_k: 0,
        seed,
        stop: vec![],
    };
    let (_, s1, _) = generate(&w, &prompt, &hot(7))?;
    let (_, s2, _) = generate(&w, &prompt, &hot(7))?;
    let (_, s3, _) = generate(&w, &prompt, &hot(8))?;
    assert_eq!(s1, s2);
    assert_ne!(s1, s3);

    // A stop string ends the text before it (and is not shown).
    let cut = a.find("red").map_or(0, |i| i + 3);
    let stop = a[cut..].chars().take(3).collect::<String>();
    if !stop.trim().is_empty() {
        let (c, _, done) = generate(
            &w,
            &prompt,
            &Sampling {
                stop: vec![stop.clone()],
                ..greedy(24)
            },
        )?;
        assert_eq!(done.finish, Finish::Stop);
        assert!(!c.contains(&stop), "{c:?} contains {stop:?}");
        assert!(a.starts_with(&c), "{a:?} / {c:?}");
    }

    // A chat, with the model's own template: it answers and ends its turn (what
    // llama-cpp-python answers too; tests/tests/e2e/llm.rs compares a chat with it).
    let chat = Prompt::Chat(vec![
        Message {
            role: "system".into(),
            content: "You are a helpful assistant.".into(),
        },
        Message {
            role: "user".into(),
            content: "What is the capital of France?".into(),
        },
    ]);
    let (answer, _, done) = generate(&w, &chat, &greedy(64))?;
    assert_eq!(answer, "The capital of France is Paris.");
    assert_eq!(done.finish, Finish::Stop);
    Ok(())
}

#[test]
fn gpu_layers_run_on_a_gpu_only_where_there_is_one_and_say_so() -> Result<(), Error> {
    let with_gpu_layers = |layers| {
        let mut c = command(smollm2(), 1024, 256);
        if let EngineKind::Llama { gpu_layers, .. } = &mut c.options.engine {
            *gpu_layers = layers;
        }
        LanguageModelWorkers::start(c)
    };
    let gpu = with_gpu_layers(999)?;
    let gpu_here =
        std::fs::read_dir("/proc/driver/nvidia/gpus").is_ok_and(|mut d| d.next().is_some());
    let prompt = Prompt::Text("The three primary colours are".into());
    let (text, _, done) = generate(&gpu, &prompt, &greedy(16))?;
    assert_eq!(done.completion_tokens, 16);
    if engine::llama::GPU_BUILD && gpu_here {
        // The signed results of its generations name the GPU engine.
        assert_eq!(gpu.hello().engine, engine::llama::ENGINE_GPU);
        assert!(gpu.hello().confinement.contains("RLIMIT_DATA"));
    } else {
        // Asked for, but no GPU backend or no GPU: the CPU, and it says so, with the CPU
        // worker's tokens.
        assert_eq!(gpu.hello().engine, engine::llama::ENGINE);
        let cpu = with_gpu_layers(0)?;
        assert_eq!(cpu.hello().engine, engine::llama::ENGINE);
        assert_eq!(generate(&cpu, &prompt, &greedy(16))?.0, text);
    }
    // Without a GPU to use (no backend, or a CUDA build on a machine without one) the worker is
    // confined as a CPU worker: its address space limited, no driver devices.
    if !(engine::llama::GPU_BUILD && gpu_here) {
        assert!(
            gpu.hello().confinement.contains("RLIMIT_AS"),
            "{}",
            gpu.hello().confinement
        );
    }
    Ok(())
}

#[test]
fn a_cancel_stops_the_generation_and_the_worker_serves_on() -> Result<(), Error> {
    let w = LanguageModelWorkers::start(command(smollm2(), 1024, 2048))?;
    let prompt = Prompt::Text("Once upon a time".into());
    let mut seen = 0;
    let (done, _) = w.generate(&prompt, &greedy(2000), &mut |_, _| {
        seen += 1;
        seen < 5
    })?;
    assert_eq!(done.finish, Finish::Cancelled);
    // The worker sees the cancel at its next token; tokens already on the pipe when the
    // caller said stop are counted too (a busy machine may let a few dozen pile up).
    assert!(
        done.completion_tokens < 100,
        "stopped soon after the cancel, not at max_tokens: {}",
        done.completion_tokens
    );
    assert_eq!(w.idle_workers(), 1, "the worker went back to the pool");
    let (text, _, _) = generate(&w, &prompt, &greedy(8))?;
    assert!(!text.is_empty());
    // Too long a prompt for the context is the caller's error, and the worker goes on.
    let small = LanguageModelWorkers::start(command(smollm2(), 1024, 64))?;
    let long = Prompt::Text("word ".repeat(1000));
    let e = generate(&small, &long, &greedy(8)).err();
    assert!(
        matches!(&e, Some(Error::Invalid(m)) if m.contains("context")),
        "{e:?}"
    );
    assert!(generate(&small, &prompt, &greedy(4)).is_ok());
    Ok(())
}

/// Writes a GGUF file: a header and `data` bytes of tensor data.
fn gguf(
    dir: &Path,
    name: &str,
    keys: &[(String, Val)],
    tensors: &[Tensor],
    data: usize,
) -> PathBuf {
    let mut bytes = header(3, keys, tensors);
    let padded = bytes.len().div_ceil(32) * 32;
    bytes.resize(padded + data, 0);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

#[test]
fn hostile_gguf_files_cost_only_their_worker() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let keys = |ctx: u64| {
        vec![
            ("general.architecture".to_string(), Val::Str("llama".into())),
            ("llama.context_length".to_string(), Val::U64(ctx)),
            ("llama.block_count".to_string(), Val::U32(1)),
            ("llama.embedding_length".to_string(), Val::U32(64)),
        ]
    };
    let real = std::fs::read(smollm2())?;
    let mut cases: Vec<(&str, PathBuf)> = vec![
        ("empty", {
            let p = dir.path().join("empty.gguf");
            std::fs::write(&p, b"")?;
            p
        }),
        ("noise", {
            let p = dir.path().join("noise.gguf");
            std::fs::write(&p, b"GGUF\x03\x00\x00\x00 this is not a model at all")?;
            p
        }),
        ("truncated", {
            let p = dir.path().join("truncated.gguf");
            std::fs::write(&p, &real[..real.len() / 2])?;
            p
        }),
        (
            "huge tensor count",
            gguf(dir.path(), "count.gguf", &keys(2048), &[], 0),
        ),
        (
            "lying sizes",
            gguf(
                dir.path(),
                "sizes.gguf",
                &keys(2048),
                &[("token_embd.weight".into(), vec![64, 1 << 30], 0, 0)],
                64,
            ),
        ),
        (
            "absurd context",
            gguf(dir.path(), "context.gguf", &keys(u64::MAX), &[], 0),
        ),
    ];
    // The tensor count field of the "huge tensor count" file: all ones.
    let count = &mut cases[3].1;
    let mut bytes = std::fs::read(&*count)?;
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&*count, bytes)?;
    for (what, path) in &cases {
        // The node's own check refuses each before any worker sees it...
        let bytes = std::fs::read(path)?;
        assert!(
            llm::gguf::parse(&bytes, bytes.len() as u64, &llm::gguf::Limits::default()).is_err(),
            "{what}: the header check let it through"
        );
        // ...and llama.cpp given it anyway fails in its worker, with a clear error.
        match LanguageModelWorkers::start(command(path.clone(), 512, 2048)) {
            Ok(_) => panic!("{what}: loaded"),
            Err(Error::Load(m)) => assert!(!m.is_empty(), "{what}: an empty error"),
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
    // Meanwhile a good model loads and answers.
    let w = LanguageModelWorkers::start(command(smollm2(), 1024, 512))?;
    assert!(generate(&w, &Prompt::Text("Hello".into()), &greedy(4)).is_ok());
    Ok(())
}

#[test]
fn a_model_larger_than_the_memory_limit_fails_in_its_worker() {
    // 94 MiB of weights mapped, plus the context: 64 MiB of address space is not enough.
    match LanguageModelWorkers::start(command(smollm2(), 64, 512)) {
        Ok(_) => panic!("loaded within 64 MiB"),
        Err(Error::Load(m)) => assert!(!m.is_empty()),
        Err(e) => panic!("{e:?}"),
    }
}
