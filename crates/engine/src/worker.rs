//! The worker process: one engine, one model, confined before it reads a byte of either.
//!
//! A worker is started by the node (`moxnet engine-worker …`, or the `moxnet-engine` binary)
//! with its stdin and stdout as the pipe ([`crate::wire`]). Before it answers, it:
//!
//! 1. asks to be killed when its parent dies (`PR_SET_PDEATHSIG`);
//! 2. starts its engine (loads `libonnxruntime`, the one file it opens outside the rules below);
//! 3. limits itself: address space (`RLIMIT_AS`, or `RLIMIT_DATA` on a GPU, whose driver reserves
//!    far more address space than it uses) to `--memory-mib`; no core dumps; no file writes
//!    (`RLIMIT_FSIZE` 0); at most 256 open files;
//! 4. confines itself with Landlock, best effort for the running kernel: the filesystem is
//!    read-only and only beneath the library's folder, `/usr`, `/lib*`, `/etc/ld.so.cache`,
//!    `/proc/self`, `/sys` and `/dev/null` (plus `/proc/driver/nvidia`, and `/dev/nvidia*` and
//!    `/dev/shm` read-write, on a GPU): no home,
//!    no store, no keys; no TCP bind or connect; no abstract Unix sockets or signals outside.
//!
//! Then it says hello (engine, version, what confinement the kernel granted) and serves
//! requests one at a time until its stdin closes.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use graph::{Error, Tensor};
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use rustix::process::{Resource, Rlimit, Signal, setrlimit};

use crate::pipe::{BadFrame, read_frame, send};
use crate::runtime::{Device, Onnxruntime, OrtGraph};
use crate::wire::{Failure, Reply, Request};

/// Which engine a worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineKind {
    /// onnxruntime from this shared library, on this device.
    Onnxruntime {
        /// `libonnxruntime.so`.
        library: PathBuf,
        /// CPU or a GPU.
        device: Device,
    },
    /// tract, compiled into the worker.
    Tract,
    /// llama.cpp, compiled into the worker, with this GGUF language model (the one file the
    /// worker may read besides the system's libraries).
    Llama {
        /// The GGUF file.
        model: PathBuf,
        /// The most context to allocate, in tokens.
        context: u32,
        /// Layers offloaded to a GPU when llama.cpp was built with one (the `cuda` feature)
        /// and finds one; 0 keeps the model on the CPU.
        gpu_layers: u32,
    },
}

/// A worker's settings, passed as arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The engine.
    pub engine: EngineKind,
    /// Intra-op threads per run.
    pub threads: usize,
    /// The memory limit, MiB.
    pub memory_mib: u64,
}

impl Options {
    /// The arguments that give these options to [`main`].
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        match &self.engine {
            EngineKind::Onnxruntime { library, device } => {
                args.push("--engine".into());
                args.push("onnxruntime".into());
                args.push("--library".into());
                args.push(library.display().to_string());
                if let Device::Cuda(id) = device {
                    args.push("--cuda".into());
                    args.push(id.to_string());
                }
            }
            EngineKind::Tract => {
                args.push("--engine".into());
                args.push("tract".into());
            }
            EngineKind::Llama {
                model,
                context,
                gpu_layers,
            } => {
                args.push("--engine".into());
                args.push("llama".into());
                args.push("--model".into());
                args.push(model.display().to_string());
                args.push("--context".into());
                args.push(context.to_string());
                args.push("--gpu-layers".into());
                args.push(gpu_layers.to_string());
            }
        }
        args.push("--threads".into());
        args.push(self.threads.to_string());
        args.push("--memory-mib".into());
        args.push(self.memory_mib.to_string());
        args
    }

    /// Parses what [`Options::to_args`] wrote.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let mut engine = None;
        let mut library = None;
        let mut cuda = None;
        let mut model = None;
        let mut context = 4096;
        let mut gpu_layers = 0;
        let mut threads = 1;
        let mut memory_mib = 2048;
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--engine" => engine = Some(value()?),
                "--library" => library = Some(PathBuf::from(value()?)),
                "--cuda" => cuda = Some(value()?.parse().map_err(|e| format!("--cuda: {e}"))?),
                "--model" => model = Some(PathBuf::from(value()?)),
                "--context" => context = value()?.parse().map_err(|e| format!("--context: {e}"))?,
                "--gpu-layers" => {
                    gpu_layers = value()?.parse().map_err(|e| format!("--gpu-layers: {e}"))?
                }
                "--threads" => threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
                "--memory-mib" => {
                    memory_mib = value()?.parse().map_err(|e| format!("--memory-mib: {e}"))?
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let engine = match engine.as_deref() {
            Some("onnxruntime") => EngineKind::Onnxruntime {
                library: library.ok_or("--engine onnxruntime needs --library")?,
                device: cuda.map_or(Device::Cpu, Device::Cuda),
            },
            Some("tract") => EngineKind::Tract,
            Some("llama") => EngineKind::Llama {
                model: model.ok_or("--engine llama needs --model")?,
                context,
                gpu_layers,
            },
            Some(other) => return Err(format!("unknown engine {other:?}")),
            None => return Err("--engine is required".into()),
        };
        Ok(Options {
            engine,
            threads,
            memory_mib,
        })
    }
}

enum Engine {
    Ort(Onnxruntime),
    Tract,
}

enum Loaded {
    Ort(OrtGraph),
    Tract(graph::Graph),
}

/// Runs a worker with these arguments (after the program name and any subcommand), serving on
/// stdin and stdout.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    // The pipe itself, not Rust's line-buffered stdout, which writes a binary frame in pieces
    // (up to its last newline byte, then the rest): the node would wake for each.
    let mut out = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("engine worker: cannot use stdout: {e}");
            return ExitCode::from(2);
        }
    };
    let options = match Options::from_args(args) {
        Ok(o) => o,
        Err(e) => {
            let _ = send(&mut out, &failed(Failure::Load, e));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        eprintln!("engine worker: cannot ask to die with the node: {e}");
    }
    if let EngineKind::Llama {
        model,
        context,
        gpu_layers,
    } = &options.engine
    {
        return language_model(&options, model, *context, *gpu_layers, &mut out);
    }
    let engine = match &options.engine {
        EngineKind::Llama { .. } => return ExitCode::from(2),
        EngineKind::Onnxruntime { library, device } => {
            match Onnxruntime::start(library, options.threads, *device) {
                Ok(ort) => Engine::Ort(ort),
                Err(e) => {
                    let _ = send(&mut out, &failed(Failure::Load, e.to_string()));
                    return ExitCode::from(3);
                }
            }
        }
        EngineKind::Tract => Engine::Tract,
    };
    let confinement = confine(&options);
    let (name, version) = match &engine {
        Engine::Ort(ort) => (ort.name().to_string(), ort.version().to_string()),
        Engine::Tract => ("tract-native".to_string(), "0.23".to_string()),
    };
    if send(
        &mut out,
        &Reply::Hello {
            engine: name,
            version,
            confinement,
        },
    )
    .is_err()
    {
        return ExitCode::from(4);
    }
    serve(&engine, &mut std::io::stdin().lock(), &mut out)
}

/// A `llama` worker: confined first (the model file readable), then the model loaded, then
/// hello, what the model is, and generations.
fn language_model(
    options: &Options,
    model: &Path,
    context: u32,
    gpu_layers: u32,
    out: &mut impl Write,
) -> ExitCode {
    let confinement = confine(options);
    let llama = match crate::llama::Llama::load(model, context, options.threads, gpu_layers) {
        Ok(l) => l,
        Err(e) => {
            let _ = send(out, &failed(Failure::Load, e));
            return ExitCode::from(3);
        }
    };
    let hello = Reply::Hello {
        engine: llama.engine().into(),
        version: crate::llama::VERSION.into(),
        confinement,
    };
    llama.serve(&hello, out)
}

fn serve(engine: &Engine, input: &mut impl Read, out: &mut impl Write) -> ExitCode {
    let mut loaded = None;
    loop {
        let reply = match read_frame(input) {
            Ok(None) => return ExitCode::SUCCESS,
            Err(BadFrame::Broken) => return ExitCode::from(5),
            Err(BadFrame::Malformed(why)) => return fail_and_exit(out, why, 6),
            Ok(Some(Request::Load { model })) => match load(engine, &model) {
                Ok(l) => {
                    let (inputs, outputs) = match &l {
                        Loaded::Ort(g) => (g.inputs().to_vec(), g.outputs().to_vec()),
                        Loaded::Tract(g) => (g.inputs().to_vec(), g.outputs().to_vec()),
                    };
                    loaded = Some(l);
                    Reply::Loaded { inputs, outputs }
                }
                Err(e) => error_reply(e),
            },
            Ok(Some(Request::Generate { .. } | Request::Cancel)) => failed(
                Failure::Invalid,
                "this worker runs graphs: it does not generate".into(),
            ),
            Ok(Some(Request::Run { inputs })) => match &loaded {
                None => failed(Failure::Run, "no model is loaded".into()),
                Some(l) => match run(l, inputs) {
                    Ok(outputs) => Reply::Outputs(outputs),
                    Err(e) => error_reply(e),
                },
            },
        };
        if send(out, &reply).is_err() {
            return ExitCode::from(4);
        }
    }
}

fn fail_and_exit(out: &mut impl Write, message: String, code: u8) -> ExitCode {
    let _ = send(out, &failed(Failure::Run, message));
    ExitCode::from(code)
}

fn load(engine: &Engine, model: &[u8]) -> Result<Loaded, Error> {
    match engine {
        Engine::Ort(ort) => ort.load(model).map(Loaded::Ort),
        Engine::Tract => graph::Graph::load(model).map(Loaded::Tract),
    }
}

fn run(loaded: &Loaded, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
    match loaded {
        Loaded::Ort(g) => g.run(inputs),
        // The node checked the inputs against the specs and its limits; tract checks again.
        Loaded::Tract(g) => g.run_with(inputs, &graph::Limits::default()),
    }
}

fn failed(failure: Failure, message: String) -> Reply {
    Reply::Failed { failure, message }
}

fn error_reply(e: Error) -> Reply {
    match e {
        Error::Invalid(m) => failed(Failure::Invalid, m),
        Error::Load(m) => failed(Failure::Load, m),
        Error::Run(m) => failed(Failure::Run, m),
    }
}

/// Applies the limits and the Landlock rules; says in words what took effect.
fn confine(options: &Options) -> String {
    let mut said = Vec::new();
    // A GPU worker maps the driver's devices and reserves much address space (RLIMIT_DATA
    // then, not RLIMIT_AS). llama.cpp uses a GPU only when built with one and it finds one
    // (asking opens the driver's devices: before the rules below, as loading a library does).
    let gpu = match &options.engine {
        EngineKind::Onnxruntime { device, .. } => matches!(device, Device::Cuda(_)),
        EngineKind::Llama { gpu_layers, .. } => {
            *gpu_layers > 0 && crate::llama::GPU_BUILD && crate::llama::has_gpu()
        }
        EngineKind::Tract => false,
    };
    let bytes = options.memory_mib.saturating_mul(1 << 20);
    let (resource, what) = if gpu {
        (Resource::Data, "RLIMIT_DATA")
    } else {
        (Resource::As, "RLIMIT_AS")
    };
    let limits = [
        (resource, bytes, what),
        (Resource::Core, 0, "RLIMIT_CORE"),
        (Resource::Fsize, 0, "RLIMIT_FSIZE"),
        (Resource::Nofile, 256, "RLIMIT_NOFILE"),
    ];
    for (resource, limit, name) in limits {
        let rlimit = Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        };
        if let Err(e) = setrlimit(resource, rlimit) {
            said.push(format!("{name} not set ({e})"));
        }
    }
    said.insert(0, format!("memory {} MiB ({what})", options.memory_mib));
    let (library_dir, model) = match &options.engine {
        EngineKind::Onnxruntime { library, .. } => (library.parent().map(Path::to_path_buf), None),
        EngineKind::Tract => (None, None),
        EngineKind::Llama { model, .. } => (None, Some(model.as_path())),
    };
    said.push(match landlock(library_dir.as_deref(), model, gpu) {
        Ok(status) => status,
        Err(e) => format!("landlock failed: {e}"),
    });
    said.join("; ")
}

fn landlock(
    library_dir: Option<&Path>,
    model: Option<&Path>,
    gpu: bool,
) -> Result<String, landlock::RulesetError> {
    let abi = ABI::V6;
    let read = AccessFs::from_read(abi);
    let mut readable: Vec<PathBuf> = [
        "/usr",
        "/lib",
        "/lib64",
        "/etc/ld.so.cache",
        "/proc/self",
        "/sys",
        "/dev/null",
        "/dev/urandom",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Some(dir) = library_dir {
        // A wheel's library sits in site-packages/<package>/capi; its GPU libraries in
        // site-packages/nvidia: allow the package's site-packages.
        readable.push(dir.ancestors().nth(2).unwrap_or(dir).to_path_buf());
    }
    readable.extend(model.map(Path::to_path_buf));
    let mut writable: Vec<PathBuf> = Vec::new();
    if gpu {
        readable.push("/proc/driver/nvidia".into());
        writable.push("/dev/shm".into());
        if let Ok(entries) = std::fs::read_dir("/dev") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("nvidia") {
                    writable.push(e.path());
                }
            }
        }
    }
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
        .scope(Scope::from_all(abi))?
        .create()?;
    // Directory rights on a file are refused: a file gets the file rights among them. A path
    // this system lacks is skipped: it cannot be reached anyway.
    let rights = |path: &Path, wanted: landlock::BitFlags<AccessFs>| {
        if path.is_dir() {
            wanted
        } else {
            wanted & AccessFs::from_file(abi)
        }
    };
    for (paths, wanted) in [(&readable, read), (&writable, AccessFs::from_all(abi))] {
        for path in paths {
            if let Ok(fd) = PathFd::new(path) {
                ruleset = ruleset.add_rule(PathBeneath::new(fd, rights(path, wanted)))?;
            }
        }
    }
    let status = ruleset.restrict_self()?;
    let abi = match status.landlock {
        landlock::LandlockStatus::Available { effective_abi, .. } => {
            format!(" (kernel ABI {})", effective_abi as i32)
        }
        _ => String::new(),
    };
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => {
            format!(
                "landlock fully enforced{abi}: files read-only beneath the libraries, no TCP, no signals out"
            )
        }
        RulesetStatus::PartiallyEnforced => {
            format!("landlock partly enforced{abi}: files read-only beneath the libraries")
        }
        RulesetStatus::NotEnforced => "landlock not enforced: this kernel lacks it".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_arguments() {
        for options in [
            Options {
                engine: EngineKind::Tract,
                threads: 3,
                memory_mib: 512,
            },
            Options {
                engine: EngineKind::Onnxruntime {
                    library: "/opt/ort/libonnxruntime.so".into(),
                    device: Device::Cuda(1),
                },
                threads: 1,
                memory_mib: 4096,
            },
            Options {
                engine: EngineKind::Llama {
                    model: "/home/me/run/m/model.gguf".into(),
                    context: 2048,
                    gpu_layers: 999,
                },
                threads: 2,
                memory_mib: 1024,
            },
        ] {
            assert_eq!(Options::from_args(options.to_args()), Ok(options));
        }
        assert!(Options::from_args(["--engine".to_string()]).is_err());
        assert!(Options::from_args(["--engine".into(), "onnxruntime".into()]).is_err());
        assert!(Options::from_args(["--bogus".to_string()]).is_err());
    }
}
