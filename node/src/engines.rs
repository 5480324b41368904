//! The host graph engine guests hand their graphs to: chosen at start from the configuration
//! and what this machine has, started out of process (the `engine` crate's confined workers,
//! run as `moxnet engine-worker`), with the reason whenever the node fell back from what it was
//! asked for.
//!
//! `engine = "auto"` (the default) takes onnxruntime with CUDA when this machine has an NVIDIA
//! GPU and the library can use it, else onnxruntime on the CPU, else native tract; a pinned
//! engine that cannot start falls back the same way and says so (log, offer,
//! `/v2/health/ready`). `engine = "off"` (or `host_backend = false`) runs every graph in wasm.

use std::sync::Arc;
use std::time::Duration;

use engine::runtime::Device;
use engine::worker::{EngineKind, Options};
use engine::{Isolated, WorkerCommand};

use crate::config::InferenceSection;

/// The engine a node runs graphs on, and why it is not the one asked for, if it is not.
#[derive(Clone, Default)]
pub struct HostEngine {
    /// The backend guests get (`None`: every graph runs in wasm).
    pub backend: Option<Arc<dyn sandbox::Backend>>,
    /// What the node fell back from, and why.
    pub fallback: Option<String>,
}

/// The engines `engine` may name.
pub const ENGINES: [&str; 5] = ["auto", "onnxruntime-cuda", "onnxruntime", "tract", "off"];

/// Starts the engine the settings ask for (probing it with one worker), falling back as the
/// module docs say. `gpu`: whether this machine has an NVIDIA GPU.
pub fn start(section: &InferenceSection, gpu: bool) -> anyhow::Result<HostEngine> {
    let wanted = section.engine.as_deref().unwrap_or("auto");
    if !ENGINES.contains(&wanted) {
        anyhow::bail!(
            "inference.engine = {wanted:?} is not one of {}",
            ENGINES.join(", ")
        );
    }
    if wanted == "off" || section.host_backend == Some(false) {
        return Ok(HostEngine::default());
    }
    let program = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("finding this program to run engine workers: {e}"))?;
    let library = engine::find_onnxruntime(section.onnxruntime.as_deref());
    let mut chain: Vec<&str> = match wanted {
        "onnxruntime-cuda" => vec!["onnxruntime-cuda", "onnxruntime", "tract"],
        "onnxruntime" => vec!["onnxruntime", "tract"],
        "tract" => vec!["tract"],
        _ if gpu => vec!["onnxruntime-cuda", "onnxruntime", "tract"],
        _ => vec!["onnxruntime", "tract"],
    };
    let mut failures = Vec::new();
    for (i, name) in chain.drain(..).enumerate() {
        let kind = match (name, &library) {
            ("tract", _) => EngineKind::Tract,
            (_, None) => {
                failures.push(format!(
                    "{name}: no onnxruntime library found (set inference.onnxruntime or \
                     ORT_DYLIB_PATH, or pip install onnxruntime)"
                ));
                continue;
            }
            (name, Some(library)) => EngineKind::Onnxruntime {
                library: library.clone(),
                device: if name == "onnxruntime-cuda" {
                    Device::Cuda(0)
                } else {
                    Device::Cpu
                },
            },
        };
        let command = WorkerCommand {
            program: program.clone(),
            prefix: vec!["engine-worker".into()],
            options: Options {
                engine: kind,
                threads: section.engine_threads.unwrap_or(1).max(1),
                memory_mib: section
                    .engine_memory_mib
                    .unwrap_or(DEFAULT_ENGINE_MEMORY_MIB),
            },
            run_timeout: Duration::from_secs(section.timeout_secs.unwrap_or(60).max(1)),
            load_timeout: LOAD_TIMEOUT,
        };
        match Isolated::start(command) {
            Ok(isolated) => {
                let hello = isolated.hello();
                tracing::info!(
                    engine = %hello.engine,
                    version = %hello.version,
                    confinement = %hello.confinement,
                    "graphs run in confined engine workers"
                );
                let fallback = (i > 0 || !failures.is_empty()).then(|| {
                    let why = failures.join("; ");
                    tracing::warn!("host engine: fell back to {}: {why}", hello.engine);
                    format!("fell back to {}: {why}", hello.engine)
                });
                return Ok(HostEngine {
                    backend: Some(Arc::new(isolated)),
                    fallback,
                });
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let why = failures.join("; ");
    tracing::warn!("no host engine starts, every graph runs in wasm: {why}");
    Ok(HostEngine {
        backend: None,
        fallback: Some(format!("no host engine, graphs run in wasm: {why}")),
    })
}

/// The default memory limit of one engine worker, MiB.
pub const DEFAULT_ENGINE_MEMORY_MIB: u64 = 4096;

/// How long starting a worker and loading a model in it may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
