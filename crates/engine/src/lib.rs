//! Native graph engines, out of process.
//!
//! A guest may hand its heavy graph to the host ([`sandbox::Backend`]); this crate provides
//! the host engines that are worth it — onnxruntime (CPU, or CUDA on a GPU) and native tract —
//! and runs them where a hostile graph can hurt nothing but itself:
//!
//! - [`worker`]: the worker process. One engine, one model; limits its own memory, confines
//!   itself with Landlock (no network, the filesystem read-only beneath its libraries), dies
//!   with its node, then serves requests on its stdin and stdout.
//! - [`isolated`]: the node's side, [`Isolated`], a [`sandbox::Backend`]: workers per loaded
//!   graph, a wall-clock kill per run, every frame decoded with limits, inputs and outputs
//!   checked against the graph's specs on the node's side of the pipe.
//! - [`wire`]: the frames on the pipe (I/O-free).
//! - [`llama`]: llama.cpp in a worker, for GGUF language models; the node's side is
//!   [`LanguageModelWorkers`] (generations streamed token by token, cancellable).
//! - [`runtime`]: onnxruntime in the worker, loaded at run time from a shared library (the
//!   `onnxruntime` PyPI wheel ships one; [`find_onnxruntime`] looks for it).
//!
//! ```no_run
//! use engine::{Isolated, WorkerCommand, worker::{EngineKind, Options}, runtime::Device};
//! use std::time::Duration;
//! let library = engine::find_onnxruntime(None).ok_or("no onnxruntime")?;
//! let backend = Isolated::start(WorkerCommand {
//!     program: "moxnet-engine".into(),
//!     prefix: vec![],
//!     options: Options { engine: EngineKind::Onnxruntime { library, device: Device::Cpu }, threads: 1, memory_mib: 2048 },
//!     run_timeout: Duration::from_secs(30),
//!     load_timeout: Duration::from_secs(60),
//! })?;
//! let graph = backend.load_graph(&std::fs::read("model.onnx")?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod isolated;
pub mod llama;
mod pipe;
pub mod runtime;
pub mod wire;
pub mod worker;

pub use isolated::{
    Generated, HUGE_PAGES, Hello, Isolated, IsolatedGraph, LanguageModelWorkers, ModelInfo,
    WorkerCommand,
};

use std::path::{Path, PathBuf};

/// Where onnxruntime's shared library is: `configured` if given, else `ORT_DYLIB_PATH`, else
/// the `onnxruntime` (or `onnxruntime-gpu`) Python package's (asking `python3`), else the
/// usual system folders. `None` if none exists.
pub fn find_onnxruntime(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return path.is_file().then(|| path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        if path.is_file() {
            return Some(path);
        }
        tracing::warn!("ORT_DYLIB_PATH={} is not a file", path.display());
    }
    let mut dirs = Vec::new();
    if let Some(dir) = python_package_dir() {
        dirs.push(dir.join("capi"));
    }
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .iter()
        .map(PathBuf::from),
    );
    dirs.iter().find_map(|dir| library_in(dir))
}

/// `libonnxruntime.so` or its newest `libonnxruntime.so.X.Y.Z` in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
                && p.is_file()
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

/// The folder of Python's `onnxruntime` package, if `python3` has one.
fn python_package_dir() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u, os; s = u.find_spec('onnxruntime'); print(os.path.dirname(s.origin) if s and s.origin else '')",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}
