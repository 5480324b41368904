//! Runs model guests — WebAssembly components of the `moxnet:model` world — in wasmtime.
//!
//! ```no_run
//! use sandbox::{CallLimits, Sandbox, SandboxConfig};
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let wasm = std::fs::read("moxnet_runner.wasm").expect("runner");
//! let model = sandbox.load(&wasm, "/path/to/package".as_ref(), Some("model.onnx"))?;
//! let x = graph::Tensor::from_f32("x", vec![1, 4], &[5.1, 3.5, 1.4, 0.2]);
//! let outcome = sandbox.predict(&model, vec![x], &CallLimits::default())?;
//! println!("{:?} used {} fuel", outcome.outputs, outcome.fuel);
//! # Ok::<(), sandbox::SandboxError>(())
//! ```
//!
//! Core concepts:
//! - **No ambient authority.** A guest sees the model package read-only at `/model` and nothing
//!   else: no network, no environment, no host files; its wall clock is fixed at the Unix epoch,
//!   its monotonic clock at zero, its random sources seeded with zero. The same input therefore
//!   gives the same output and the same fuel on every peer, which is what lets a second peer
//!   replay and check a call.
//! - **Fresh instance per call.** Each call runs `predict` on an instance that has run `init`
//!   and nothing else, then drops it: nothing of one caller's call survives into the next, and
//!   the same input costs the same fuel every time. To keep `init` (parsing and optimising a
//!   graph) off the call's path, each model keeps up to two such spare instances ready,
//!   prepared on background threads ([`SandboxConfig::warm_instances`] bounds them) of the idle
//!   scheduling policy, which run only on a core nothing else wants: a call waits for a spare
//!   under way no longer than one build's CPU time, then builds its own. Fuel
//!   counts `predict` only; `init` has its own budget. A finished instance's pool slot keeps the
//!   pages it wrote resident, reset in place ([`KEEP_RESIDENT_MEMORY`]): the next instance in it
//!   starts from the guest's initial state all the same, without the page faults.
//! - **Snapshots.** A model whose instances have spent [`SandboxConfig::snapshot_after`] in
//!   `init` is snapshotted: its guest as `init` left it (memories, globals) becomes a component
//!   of its own, compiled in the background, and instances start from it (a copy-on-write
//!   memory image) instead of running `init`: each call still gets a fresh instance, without
//!   paying for `init` in CPU. A snapshot answers as `init` would have: it is refused when
//!   `init` drew randomness or kept a host resource other than the package directory, and an
//!   instance from it that traps ends snapshots for the model (the call runs again as before).
//!   A model snapshotted before a restart is snapshotted again at its first load (a mark in the
//!   cache directory; both compiles then come from the cache).
//! - **Limits per call** ([`CallLimits`]): a memory cap (growth beyond it traps), fuel (the
//!   deterministic unit calls are priced in), a wall-clock deadline enforced by epoch
//!   interruption, and a cap on output bytes. [`SandboxConfig::max_concurrent`] and
//!   [`SandboxConfig::max_queued`] bound the work in flight: beyond them a call gets
//!   [`SandboxError::Busy`] at once.
//! - **Bounded compiling.** Each compile runs on its own [`SandboxConfig::compile_threads`]
//!   threads: a guest built to compile slowly takes those cores, never every core of the
//!   machine, and holds up no other compile; and at a low CPU priority ([`COMPILE_NICE`]), so
//!   that compiling yields to the node's network, its running calls and the rest of the machine.
//! - **Compiled-module cache.** Compilation goes through wasmtime's cache, keyed by the wasm
//!   bytes and the engine configuration, in a directory of this node's own: only code this node
//!   compiled itself is ever loaded from disk.
//! - **Host backend** ([`Backend`]): a guest may hand its heavy graph to the host (the WIT
//!   `graph` interface, in the style of wasi-nn). The host checks every tensor the guest passes,
//!   meters its work separately from fuel ([`Outcome::host`]), and loads each graph once per model.
//!   It is off by default ([`SandboxConfig::host_backend`]): fuel, the deadline and the memory cap
//!   bind the guest, but a graph run natively allocates in the host, so a graph built to ask for
//!   absurd shapes could exhaust the node's memory. Enable it for models you trust.

mod backend;
mod background;
mod epoch;
mod gate;
mod nan;
mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

pub use backend::{Backend, HostWork, LoadedGraph, MAX_GRAPHS_PER_MODEL, NativeTract};
use gate::Gate;

mod bindings {
    //! Host bindings for the `moxnet:model` world (guests/wit/model.wit).
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({ path: "../../guests/wit", world: "model" });
}

use bindings::Model as Guest;
use bindings::moxnet::model::graph as wit_graph;
use bindings::moxnet::model::types as wit;

/// How often the epoch ticks: the resolution of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How much of a linear memory's slot in the pool stays resident when its instance is torn
/// down: the pages the instance wrote (found with Linux's `PAGEMAP_SCAN`, where the kernel has
/// it) are reset in place, up to this much, instead of being unmapped. The next instance in
/// the slot, a call's, then takes no page faults for them: on a 2-core VM, the demo model's spare
/// instance costs ~1.5 ms of CPU instead of ~2.1 ms, and its call's thread ~0.1 ms less. A
/// call of the runner guest writes under 2 MiB; what a guest wrote beyond this is unmapped as
/// before.
pub const KEEP_RESIDENT_MEMORY: usize = 8 << 20;

/// Like [`KEEP_RESIDENT_MEMORY`], for each table's slot (function references, 8 bytes each).
pub const KEEP_RESIDENT_TABLE: usize = 512 << 10;

/// Where the package appears inside the guest.
pub const GUEST_ROOT: &str = "/model";

/// Why a sandboxed call failed. Each variant says whose fault it is and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The caller's input does not fit the model: fix the request.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The guest ran and reported a failure.
    #[error("model failed: {0}")]
    Failed(String),
    /// The guest or its package could not be loaded: a malformed or oversized component, a
    /// component that is not a `moxnet:model` guest, or a model its runner cannot load.
    #[error("cannot load model: {0}")]
    Load(String),
    /// The call used all the fuel it was given.
    #[error("out of fuel: the call needed more than {limit} fuel units")]
    OutOfFuel {
        /// The fuel the call had.
        limit: u64,
    },
    /// The call ran past its wall-clock deadline.
    #[error("timed out after {limit:?}")]
    Timeout {
        /// The deadline.
        limit: Duration,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("out of memory: the guest tried to use more than {limit_mib} MiB")]
    OutOfMemory {
        /// The cap.
        limit_mib: u64,
    },
    /// The guest's outputs are larger than the call allows.
    #[error("output too large: {bytes} bytes, the limit is {limit}")]
    OutputTooLarge {
        /// The size of the outputs.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The guest trapped (a bug or a hostile guest): stack overflow, unreachable, bad access.
    #[error("guest trapped: {0}")]
    Trap(String),
    /// Too many calls are running or waiting: retry later or elsewhere.
    #[error("busy: {running} calls running and {queued} waiting")]
    Busy {
        /// Calls running.
        running: usize,
        /// Calls waiting.
        queued: usize,
    },
    /// The node itself failed (e.g. the compile cache directory is unusable).
    #[error("sandbox: {0}")]
    Host(String),
}

/// Sandbox-wide settings, fixed when the engine is built.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled modules are cached (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// The largest memory any guest may have, in MiB (the pooling allocator's slot size).
    pub max_memory_mib: u64,
    /// Calls running at once.
    pub max_concurrent: usize,
    /// Calls waiting for a slot; beyond this, calls are answered [`SandboxError::Busy`].
    pub max_queued: usize,
    /// Whether guests may use the host's graph backend (native tract). Off by default: a graph
    /// run natively is outside the guest's memory cap (see the crate docs).
    pub host_backend: bool,
    /// The largest component accepted, in bytes.
    pub max_component_bytes: usize,
    /// Spare instances kept ready (each has run `init`), across all models: a call takes its
    /// model's spare instead of paying for `init`, and a new spare is prepared behind it.
    pub warm_instances: usize,
    /// When a model's guest is snapshotted: once its instances have spent this long in `init`
    /// in all (`None`: never). A snapshot is the guest's state as `init` left it, built on a
    /// background thread at [`COMPILE_NICE`] (it costs two compiles of the guest: about as
    /// much CPU as a first load); each instance then starts from it instead of running `init`.
    /// Zero snapshots every model on its first load. See the crate docs.
    pub snapshot_after: Option<Duration>,
    /// Threads one compile runs on (wasmtime compiles a guest's functions in parallel on
    /// them; each compile has its own, so compiles running at once share nothing and none
    /// waits for another). Default: a quarter of the cores, at least one, so that a guest built
    /// to compile slowly leaves the node, its running calls and the rest of the machine room.
    pub compile_threads: usize,
}

/// The CPU priority (nice value) compile threads run at. Compiling is the one thing a peer can
/// make this node do that no fuel or deadline bounds (wasmtime cannot interrupt a compile), and
/// it can always wait: at nice 10 it takes the cores the node's network, its running calls and
/// the operator's other programs leave idle, and yields to them when they need them.
pub const COMPILE_NICE: i32 = 10;

/// Where, in the cache directory, models snapshotted before leave their marks.
const SNAPSHOT_MARKS: &str = "snapshotted";

/// Under the cache directory: guests as `nan` rewrote them, one file per guest (about the
/// guest's size), at most [`REWRITES_KEPT`] files and [`REWRITES_KEPT_BYTES`].
const REWRITTEN: &str = "nan";

/// Rewritten guests kept in the cache directory, at most: a peer that has this node run many
/// models with guests of their own cannot fill its disk with rewrites. Beyond this (or
/// [`REWRITES_KEPT_BYTES`]) the least recently used go first; a guest whose rewrite went is
/// rewritten when next loaded (~0.7 s for the 18 MB runner).
pub const REWRITES_KEPT: usize = 64;
/// See [`REWRITES_KEPT`].
pub const REWRITES_KEPT_BYTES: u64 = 4 << 30;

/// The default [`SandboxConfig::snapshot_after`]: a model is snapshotted once `init` has cost
/// about what the snapshot costs (two compiles of a large guest, some tens of seconds of one
/// core): a model called rarely never pays for one, a busy one pays once.
pub const DEFAULT_SNAPSHOT_AFTER: Duration = Duration::from_secs(30);

/// The default [`SandboxConfig::compile_threads`]: a quarter of the cores, at least one (a
/// node compiling two guests at once then takes at most half the machine).
pub fn default_compile_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1))
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: None,
            max_memory_mib: 2048,
            max_concurrent: 2,
            max_queued: 16,
            host_backend: false,
            max_component_bytes: 64 << 20,
            warm_instances: 4,
            snapshot_after: Some(DEFAULT_SNAPSHOT_AFTER),
            compile_threads: default_compile_threads(),
        }
    }
}

/// Limits for one call.
#[derive(Debug, Clone)]
pub struct CallLimits {
    /// Memory cap, MiB (at most [`SandboxConfig::max_memory_mib`]).
    pub memory_mib: u64,
    /// Fuel for `predict`.
    pub fuel: u64,
    /// Fuel for `init` (loading the model), not charged to the caller.
    pub init_fuel: u64,
    /// Wall-clock deadline for the whole call, instantiation included.
    pub timeout: Duration,
    /// Largest total size of the outputs' data, bytes.
    pub max_output_bytes: u64,
    /// Limits on each input tensor.
    pub input: graph::Limits,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            memory_mib: 1024,
            fuel: 200_000_000_000,
            init_fuel: 1_000_000_000_000,
            timeout: Duration::from_secs(60),
            max_output_bytes: 64 << 20,
            input: graph::Limits::default(),
        }
    }
}

/// The result of a call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The outputs, in the model's output order.
    pub outputs: Vec<graph::Tensor>,
    /// Fuel `predict` used: deterministic for a given guest, package and input.
    pub fuel: u64,
    /// Work the host backend did for the call.
    pub host: HostWork,
    /// Wall-clock time of the whole call.
    pub elapsed: Duration,
    /// Whether the call's instance started from the model's snapshot (not from `init`).
    pub from_snapshot: bool,
}

/// A guest loaded with its package, ready for calls.
pub struct Model {
    inner: Arc<Package>,
    inputs: Vec<graph::Spec>,
    outputs: Vec<graph::Spec>,
}

/// What every instance of a model is built from, and the spare instance waiting for a call.
struct Package {
    component: Component,
    /// The guest's bytes (shared with the sandbox's compiled list), for its snapshot.
    wasm: Arc<[u8]>,
    dir: PathBuf,
    entry: Option<String>,
    graphs: backend::GraphCache,
    spare: Mutex<Spares>,
    /// Whether instances start from a snapshot (see [`SandboxConfig::snapshot_after`]).
    snap: Mutex<Snap>,
    /// A file in the cache directory that says this guest and package were snapshotted.
    mark: Option<PathBuf>,
    /// Signalled when a spare being built is ready (or failed).
    built: std::sync::Condvar,
    /// The CPU time (of the thread that built it) the latest instance built took, in
    /// nanoseconds: the longest a call waits for a spare under way (see [`SPARE_WAIT`]).
    build_cpu: AtomicU64,
    /// Signalled when the snapshot is made or given up.
    snapped: std::sync::Condvar,
}

/// The longest a call waits for a spare that is being built before it builds its own
/// instance. It waits no longer than the model's last build took in CPU time
/// ([`Package::build_cpu`]): a build under way that has had the CPU is ready by then; one that
/// is not has been kept off it (spares are built as idle-policy threads, which run only on a
/// core no other thread wants), and the call builds its own at its own priority. A call so
/// pays at most two builds' time for its instance.
const SPARE_WAIT: Duration = Duration::from_millis(500);

/// Most spare instances one model keeps (ready or being built): with two, calls back to back
/// each find one ready while the next is built beside the running call.
const SPARES_PER_MODEL: usize = 2;

/// A model's spare instances: ones that have run `init` and nothing else.
#[derive(Default)]
struct Spares {
    ready: Vec<Ready>,
    building: usize,
}

/// Where a model stands with its snapshot.
enum Snap {
    /// Instances run `init`, which has taken this long in all so far.
    Counting(Duration),
    /// The snapshot is being made.
    Building,
    /// Instances start from this.
    Ready(Arc<Snapshot>),
    /// Instances run `init` for good, for this reason.
    Off(String),
}

/// Where a model stands with its snapshot (see [`SandboxConfig::snapshot_after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// Not (yet) worth one: instances run `init`.
    Pending,
    /// Being made on a background thread; instances run `init` meanwhile.
    Building,
    /// Instances start from the snapshot.
    Ready,
    /// This guest cannot be snapshotted, for this reason; instances run `init`.
    Off(String),
}

/// A model's guest as `init` left it.
struct Snapshot {
    /// The guest with its memories and globals as `init` left them.
    component: Component,
    /// What `init` returned.
    metadata: wit::Metadata,
    /// The host graphs `init` loaded, under the handles the guest holds.
    handles: Vec<Arc<dyn LoadedGraph>>,
}

/// An instance that has run `init` (or started from the snapshot), with the token that counts it against
/// [`SandboxConfig::warm_instances`].
struct Ready {
    store: Store<CallState>,
    bindings: Guest,
    from_snapshot: bool,
    _token: WarmToken,
}

/// One of the [`SandboxConfig::warm_instances`] places; dropping it frees the place.
struct WarmToken(Arc<AtomicUsize>);

impl Drop for WarmToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dir", &self.inner.dir)
            .field("entry", &self.inner.entry)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// The model's inputs.
    pub fn inputs(&self) -> &[graph::Spec] {
        &self.inputs
    }

    /// The model's outputs.
    pub fn outputs(&self) -> &[graph::Spec] {
        &self.outputs
    }

    /// Whether a spare instance is ready, so that the next call skips `init`.
    pub fn is_warm(&self) -> bool {
        !lock(&self.inner.spare).ready.is_empty()
    }

    /// Waits, at most `timeout`, while the model's snapshot is pending or being made; then
    /// where it stands.
    pub fn wait_for_snapshot(&self, timeout: Duration) -> SnapshotStatus {
        let waiting = |snap: &mut Snap| matches!(snap, Snap::Counting(_) | Snap::Building);
        let snap = lock(&self.inner.snap);
        drop(
            self.inner
                .snapped
                .wait_timeout_while(snap, timeout, waiting)
                .map_or_else(|p| p.into_inner().0, |(s, _)| s),
        );
        self.snapshot()
    }

    /// Where the model stands with its snapshot.
    pub fn snapshot(&self) -> SnapshotStatus {
        match &*lock(&self.inner.snap) {
            Snap::Counting(_) => SnapshotStatus::Pending,
            Snap::Building => SnapshotStatus::Building,
            Snap::Ready(_) => SnapshotStatus::Ready,
            Snap::Off(why) => SnapshotStatus::Off(why.clone()),
        }
    }
}

/// The engine, its linker and the call gate. Cheap to share behind an `Arc`.
pub struct Sandbox {
    core: Arc<Core>,
    gate: Gate,
    /// Components compiled (or read from the on-disk cache) by this sandbox, newest first, at
    /// most [`COMPILED_KEPT`]: every ONNX model shares the runner guest, and reading it back
    /// from the disk cache (decompressing and checking it) costs far more than a model's own
    /// load.
    compiled: Mutex<Vec<Compiled>>,
}

/// A guest this sandbox compiled (or read from the on-disk cache).
struct Compiled {
    hash: blake3::Hash,
    component: Component,
    /// Its bytes, for a model's snapshot.
    wasm: Arc<[u8]>,
}

/// Compiled components a sandbox keeps in memory (each is some MiB of machine code).
pub const COMPILED_KEPT: usize = 8;

/// What building an instance needs; shared with the threads that prepare spare instances.
struct Core {
    engine: Engine,
    linker: Linker<CallState>,
    config: SandboxConfig,
    backend: Option<Arc<dyn Backend>>,
    /// Spare instances held or being built, at most `config.warm_instances`.
    warm: Arc<AtomicUsize>,
    /// Whether a snapshot is being made (one at a time: each takes a compile's threads and an
    /// instance slot).
    snapshotting: AtomicBool,
    /// Advances the epoch (call deadlines) while guest code may run, and only then.
    ticker: epoch::Ticker,
    /// Builds spare instances, off the calls' path, at the idle policy ([`idle_priority`]).
    builders: background::Background,
    /// Tears down used instances, off the calls' path, as batch threads ([`lower_priority`]).
    teardown: background::Background,
    /// Used instances handed to `teardown` and not yet torn down.
    tearing: Arc<AtomicUsize>,
}

impl Sandbox {
    /// Builds the engine (cranelift, fuel, epochs, pooling allocator) and its linker; with
    /// [`SandboxConfig::host_backend`], guests may use native tract in this process.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let backend: Option<Arc<dyn Backend>> = if config.host_backend {
            Some(Arc::new(NativeTract))
        } else {
            None
        };
        Sandbox::with_backend(config, backend)
    }

    /// Like [`Sandbox::new`], with this host backend for guests (or none), whatever
    /// [`SandboxConfig::host_backend`] says: e.g. the `engine` crate's out-of-process engines.
    pub fn with_backend(
        config: SandboxConfig,
        backend: Option<Arc<dyn Backend>>,
    ) -> Result<Sandbox, SandboxError> {
        let host = |e: wasmtime::Error| SandboxError::Host(format!("{e:#}"));
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .max_wasm_stack(1 << 20)
            // Relaxed SIMD in wasmtime's deterministic profile (fused multiply-add, signed dot
            // products, the plain min/max/truncation/select): the same bits on every host, like
            // NaNs, which every guest is rewritten to make canonical where their bits can be
            // seen (`nan`); a guest's results never depend on the CPU it ran on. wasmtime's own
            // canonicalization, after every float operation, would cost ~1.45× in pure wasm.
            .wasm_relaxed_simd(true)
            .relaxed_simd_deterministic(true)
            .cranelift_nan_canonicalization(false);
        let memory_bytes = usize::try_from(config.max_memory_mib << 20)
            .map_err(|_| SandboxError::Host("max_memory_mib is too large".into()))?;
        // Every running call's instance; the spares, ready or being built (`warm_instances`);
        // used instances waiting for teardown (`warm_instances + 1`: beyond that a call tears
        // its own down, see `Core::tear_down`); the snapshot being made (one at a time).
        let slots = u32::try_from(config.max_concurrent + 2 * config.warm_instances + 2)
            .map_err(|_| SandboxError::Host("too many concurrent calls".into()))?;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .total_stacks(slots)
            .max_memory_size(memory_bytes)
            .table_elements(1 << 18)
            .max_core_instance_size(1 << 22)
            .max_component_instance_size(1 << 22)
            .max_core_instances_per_component(32)
            .max_tables_per_component(32)
            .max_memories_per_component(2)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .pagemap_scan(wasmtime::Enabled::Auto);
        wasm.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| SandboxError::Host(format!("cache {}: {e}", dir.display())))?;
            // wasmtime wants an absolute path.
            let dir = std::fs::canonicalize(dir)
                .map_err(|e| SandboxError::Host(format!("cache {}: {e}", dir.display())))?;
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            wasm.cache(Some(wasmtime::Cache::new(cache).map_err(host)?));
        }
        let engine = Engine::new(&wasm).map_err(host)?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(host)?;
        Guest::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(host)?;
        let ticker = {
            let engine = engine.clone();
            epoch::Ticker::start("sandbox-epoch", EPOCH_TICK, move || {
                engine.increment_epoch()
            })
            .map_err(|e| SandboxError::Host(format!("epoch thread: {e}")))?
        };
        Ok(Sandbox {
            compiled: Mutex::new(Vec::new()),
            gate: Gate::new(config.max_concurrent, config.max_queued),
            core: Arc::new(Core {
                engine,
                linker,
                config,
                backend,
                warm: Arc::new(AtomicUsize::new(0)),
                snapshotting: AtomicBool::new(false),
                ticker,
                builders: background::Background::new(
                    "sandbox-spare",
                    std::thread::available_parallelism().map_or(2, usize::from),
                    idle_priority,
                ),
                teardown: background::Background::new(
                    "sandbox-teardown",
                    std::thread::available_parallelism().map_or(2, usize::from),
                    lower_priority,
                ),
                tearing: Arc::new(AtomicUsize::new(0)),
            }),
        })
    }

    /// Calls that run at once (more wait in the queue, then get [`SandboxError::Busy`]).
    pub fn max_concurrent(&self) -> usize {
        self.core.config.max_concurrent
    }

    /// Calls running now and calls waiting for a slot.
    pub fn occupancy(&self) -> (usize, usize) {
        self.gate.counts()
    }

    /// Whether a call now would be answered busy: every slot running and the queue full.
    pub fn is_full(&self) -> bool {
        let (running, queued) = self.occupancy();
        running >= self.core.config.max_concurrent && queued >= self.core.config.max_queued
    }

    /// The host backend guests may use, if any.
    pub fn backend_name(&self) -> Option<&str> {
        self.core.backend.as_ref().map(|b| b.name())
    }

    /// Compiles a guest ahead of its first load, filling the on-disk cache (if configured) so
    /// that later loads, in this process or the next, skip compilation.
    pub fn precompile(&self, wasm: &[u8]) -> Result<(), SandboxError> {
        self.compile(wasm).map(drop)
    }

    /// The guest compiled, and its bytes.
    fn compile(&self, wasm: &[u8]) -> Result<(Component, Arc<[u8]>), SandboxError> {
        let limit = self.core.config.max_component_bytes;
        if wasm.len() > limit {
            return Err(SandboxError::Load(format!(
                "the component is {} bytes; the limit is {limit}",
                wasm.len()
            )));
        }
        let hash = blake3::hash(wasm);
        {
            let mut kept = lock(&self.compiled);
            if let Some(i) = kept.iter().position(|c| c.hash == hash) {
                let hit = kept.remove(i);
                let found = (hit.component.clone(), hit.wasm.clone());
                kept.insert(0, hit);
                return Ok(found);
            }
        }
        // NaNs made canonical where they can be seen (`nan`): wasmtime's own canonicalization,
        // after every float operation, is off.
        let wasm = rewritten(self.core.config.cache_dir.as_deref(), wasm, &hash)?;
        // wasmtime's parallel compilation runs on the rayon pool it is called from: this
        // compile's own, of `compile_threads` threads.
        let component = compile_pool(self.core.config.compile_threads)?
            .install(|| Component::new(&self.core.engine, &wasm))
            .map_err(|e| SandboxError::Load(format!("{e:#}")))?;
        let bytes: Arc<[u8]> = Arc::from(wasm);
        let mut kept = lock(&self.compiled);
        if !kept.iter().any(|c| c.hash == hash) {
            kept.insert(
                0,
                Compiled {
                    hash,
                    component: component.clone(),
                    wasm: bytes.clone(),
                },
            );
            kept.truncate(COMPILED_KEPT);
        }
        Ok((component, bytes))
    }

    /// Compiles a guest (or takes it from the cache) and loads its package: instantiates it
    /// once, runs `init`, and records its interface. That instance becomes the model's first
    /// spare, so the first call does not pay for `init`.
    pub fn load(
        &self,
        wasm: &[u8],
        dir: &Path,
        entry: Option<&str>,
    ) -> Result<Model, SandboxError> {
        let (component, wasm) = self.compile(wasm)?;
        let mark = self.core.config.cache_dir.as_ref().map(|cache| {
            let mut key = blake3::Hasher::new();
            key.update(blake3::hash(&wasm).as_bytes());
            key.update(dir.as_os_str().as_encoded_bytes());
            key.update(&[0]);
            key.update(entry.unwrap_or_default().as_bytes());
            cache
                .join(SNAPSHOT_MARKS)
                .join(key.finalize().to_hex().as_str())
        });
        // A model snapshotted before (by this node, before a restart) is snapshotted again as
        // soon as it is loaded: both compiles then come from the on-disk cache.
        let spent = match (&mark, self.core.config.snapshot_after) {
            (Some(mark), Some(after)) if mark.is_file() => after,
            _ => Duration::ZERO,
        };
        let inner = Arc::new(Package {
            component,
            wasm,
            dir: dir.to_path_buf(),
            entry: entry.map(str::to_string),
            graphs: backend::GraphCache::default(),
            spare: Mutex::new(Spares::default()),
            snap: Mutex::new(Snap::Counting(spent)),
            mark,
            built: std::sync::Condvar::new(),
            build_cpu: AtomicU64::new(0),
            snapped: std::sync::Condvar::new(),
        });
        let _slot = self.gate.enter()?;
        let built = self.core.instantiate(&inner, &CallLimits::default())?;
        let metadata = built.metadata.clone();
        if let Some(token) = self.core.warm_token() {
            lock(&inner.spare).ready.push(built.ready(token));
        }
        self.core.refill(&inner, None);
        Ok(Model {
            inner,
            inputs: metadata.inputs.into_iter().map(spec_from_wit).collect(),
            outputs: metadata.outputs.into_iter().map(spec_from_wit).collect(),
        })
    }

    /// Runs one call with `limits`, on an instance that has run `init` and nothing else: the
    /// model's spare if one is ready (a new spare is then prepared in the background), else a
    /// new instance.
    pub fn predict(
        &self,
        model: &Model,
        inputs: Vec<graph::Tensor>,
        limits: &CallLimits,
    ) -> Result<Outcome, SandboxError> {
        for t in &inputs {
            t.check(&limits.input).map_err(invalid_input)?;
        }
        check_inputs(model, &inputs)?;
        let _slot = self.gate.enter()?;
        let _ticking = self.core.ticker.running();
        let started = Instant::now();
        let spare = {
            let mut spares = lock(&model.inner.spare);
            if spares.ready.is_empty() && spares.building > 0 {
                let wait = Duration::from_nanos(model.inner.build_cpu.load(Ordering::Relaxed))
                    .min(SPARE_WAIT);
                spares = model
                    .inner
                    .built
                    .wait_timeout_while(spares, wait, |s| s.ready.is_empty() && s.building > 0)
                    .map_or_else(|p| p.into_inner().0, |(s, _)| s);
            }
            spares.ready.pop()
        };
        // A spare from a snapshot that has since been given up is not used.
        let spare = spare.filter(|r| !r.from_snapshot || model.inner.snapshot().is_some());
        let ready = match spare {
            Some(mut ready) => {
                let state = ready.store.data_mut();
                state.memory_limit = limits.memory_mib.min(self.core.config.max_memory_mib) << 20;
                state.input_limits = limits.input;
                state.host_work = HostWork::default();
                ready.store.set_epoch_deadline(epoch_ticks(limits.timeout));
                (ready.store, ready.bindings, ready.from_snapshot)
            }
            None => {
                let built = self.core.instantiate(&model.inner, limits)?;
                (built.store, built.bindings, built.from_snapshot)
            }
        };
        let inputs: Vec<wit::Tensor> = inputs.into_iter().map(tensor_to_wit).collect();
        let (store, bindings, from_snapshot) = ready;
        let (mut outcome, used) = call(store, bindings, &inputs, limits, started);
        if from_snapshot && let Err(SandboxError::Trap(why)) = &outcome {
            // Either the guest traps on this input anyway, or it touched state the snapshot
            // cannot carry (a handle `init` opened): the call runs again on an instance that
            // ran `init`, and if that one does not trap, snapshots end for this model.
            let why = format!("an instance started from the snapshot trapped: {why}");
            self.core.refill(&model.inner, Some(used));
            let built = self.core.instantiate_with_init(&model.inner, limits)?;
            let (again, used) = call(built.store, built.bindings, &inputs, limits, started);
            if !matches!(again, Err(SandboxError::Trap(_))) {
                tracing::warn!(%why, "the model's instances run init again");
                model.inner.set_snap(Snap::Off(why));
                model.inner.set_mark(false);
            }
            self.core.refill(&model.inner, Some(used));
            return again;
        }
        outcome
            .iter_mut()
            .for_each(|o| o.from_snapshot = from_snapshot);
        // The used instance is torn down (its memory reset) on the spare's thread, off the
        // call's path.
        self.core.refill(&model.inner, Some(used));
        outcome
    }
}

/// Runs `predict` on an instance; returns the outcome and the used instance.
fn call(
    mut store: Store<CallState>,
    bindings: Guest,
    inputs: &[wit::Tensor],
    limits: &CallLimits,
    started: Instant,
) -> (Result<Outcome, SandboxError>, Box<dyn Send>) {
    let outcome = (|| {
        store
            .set_fuel(limits.fuel)
            .map_err(|e| SandboxError::Host(format!("{e:#}")))?;
        let result = bindings.call_predict(&mut store, inputs);
        let fuel = limits.fuel - store.get_fuel().unwrap_or(0);
        let outputs = match result {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(e)) => return Err(guest_error(e)),
            Err(e) => return Err(trap(&store, e, limits, limits.fuel)),
        };
        let bytes: u64 = outputs.iter().map(|t| t.data.len() as u64).sum();
        if bytes > limits.max_output_bytes {
            return Err(SandboxError::OutputTooLarge {
                bytes,
                limit: limits.max_output_bytes,
            });
        }
        let outputs: Vec<graph::Tensor> = outputs.into_iter().map(tensor_from_wit).collect();
        let output_limits = graph::Limits {
            max_bytes: usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX),
            ..limits.input
        };
        for t in &outputs {
            t.check(&output_limits).map_err(|e| {
                SandboxError::Failed(format!("the guest returned a malformed tensor: {e}"))
            })?;
        }
        Ok(Outcome {
            outputs,
            fuel,
            host: store.data().host_work,
            elapsed: started.elapsed(),
            from_snapshot: false,
        })
    })();
    (outcome, Box::new((store, bindings)))
}

/// The threads one compile runs on: `threads` of them (at least one), at [`COMPILE_NICE`].
fn compile_pool(threads: usize) -> Result<rayon::ThreadPool, SandboxError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("sandbox-compile-{i}"))
        .start_handler(|_| lower_priority())
        .build()
        .map_err(|e| SandboxError::Host(format!("compile threads: {e}")))
}

/// The CPU time the calling thread has used, where the platform says (Linux and most Unixes).
fn thread_cpu() -> Option<Duration> {
    #[cfg(unix)]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        let secs = u64::try_from(t.tv_sec).ok()?;
        let nanos = u32::try_from(t.tv_nsec).ok()?;
        Some(Duration::new(secs, nanos))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Makes the calling thread an idle-policy thread (`SCHED_IDLE`; Linux, elsewhere
/// [`lower_priority`]): spare builders.
///
/// A core running only idle-policy threads counts as idle where the scheduler places a waking
/// thread, and a normal thread woken there preempts at once. As batch threads at nice 10,
/// builders (the guest's `init`, ~1.3 ms for the demo model) held up the thread that a call's
/// request woke: placed on the builder's core while the other was idle, it waited out the
/// builder's slice. Measured on a 2-core VM, demo model, back to back, no snapshot: 46 of 387
/// requests reached the worker more than 1 ms late.
///
/// An idle-policy thread runs only when no other thread wants the core (its weight is 3, a
/// nice-0 thread's 1024), so nothing must wait long for one: a call waits for a spare under
/// way at most one build's CPU time ([`SPARE_WAIT`]), and used instances, which hold slots of
/// the instance pool, are torn down by batch threads ([`lower_priority`]). Host locks a
/// builder takes (the spares' list, wasmtime's instance pool) are held for microseconds.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        // The crate takes a 0–99 priority and, for the idle policy, accepts only the one that
        // comes to 0 (the nice value, which the idle policy does not use).
        let priority = (0..=99u8)
            .filter_map(|p| ThreadPriorityValue::try_from(p).ok())
            .map(ThreadPriority::Crossplatform)
            .find(|p| p.to_posix(idle).ok() == Some(0));
        let set = priority.map(|p| {
            thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                p,
                idle,
            )
        });
        // Setting the nice value fails in a process started with a higher one; the policy,
        // set first, is what counts.
        if !matches!(set, Some(Ok(())))
            && thread_priority::thread_schedule_policy().ok() != Some(idle)
        {
            tracing::warn!(result = ?set, "a spare builder is not an idle-policy thread: it runs as a batch thread");
            lower_priority();
        }
    }
    #[cfg(not(target_os = "linux"))]
    lower_priority();
}

/// Lowers the calling thread's CPU priority to [`COMPILE_NICE`] (or keeps a lower one it
/// inherited) and makes it a batch thread (`SCHED_BATCH`; Linux, elsewhere a no-op).
///
/// Compiles, snapshots and teardowns of used instances run so. A batch thread never preempts
/// the thread that wakes it. A call hands its used instance to a background thread as it ends,
/// and the scheduler (EEVDF) put that thread (then a spare builder at the normal policy), woken
/// after a long sleep, ahead of the call on the call's own core: the call sent its answer only
/// after the thread's ~1.5 ms slice. Measured on a 2-core VM, demo model, back to back: in
/// 107–111 of 200 calls; 20 ms apart: 1 call in 10.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        };
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let nice = COMPILE_NICE.max(own.unwrap_or(COMPILE_NICE));
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        // The crate sets a normal policy's nice value from a 0–99 priority: the one that
        // comes to `nice`.
        let priority = (0..=99u8)
            .filter_map(|p| ThreadPriorityValue::try_from(p).ok())
            .map(ThreadPriority::Crossplatform)
            .find(|p| p.to_posix(batch).ok() == Some(nice));
        let batched = priority.map(|p| {
            thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                p,
                batch,
            )
        });
        match batched {
            Some(Ok(())) => {}
            other => {
                let why = match other {
                    Some(Err(e)) => format!("{e:?}"),
                    _ => format!("no priority for nice {nice}"),
                };
                tracing::warn!(error = %why, "a background thread is not a batch thread");
                if let Err(e) =
                    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
                {
                    tracing::warn!(error = %e, "a background thread keeps its CPU priority");
                }
            }
        }
    }
}

/// `wasm` (whose hash is `hash`) rewritten for deterministic NaNs (`nan`), taken from the cache
/// directory when this node rewrote it before: the rewrite takes ~0.7 s for the 18 MB runner,
/// reading it back ~10 ms. A kept copy ends with the BLAKE3 hash of what precedes it; one that
/// does not match is rewritten (and kept) again.
fn rewritten(
    cache: Option<&Path>,
    wasm: &[u8],
    hash: &blake3::Hash,
) -> Result<Vec<u8>, SandboxError> {
    let path = cache.map(|dir| {
        dir.join(REWRITTEN)
            .join(format!("{}-{}.wasm", hash.to_hex(), nan::VERSION))
    });
    if let Some(path) = &path {
        match std::fs::read(path) {
            Ok(mut kept) => {
                let body = kept.len().saturating_sub(32);
                if kept.len() >= 32 && blake3::hash(&kept[..body]).as_bytes() == &kept[body..] {
                    kept.truncate(body);
                    // Used now: the last to go when the kept rewrites are pruned.
                    if let Err(e) = std::fs::File::options()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
                    {
                        tracing::debug!(path = %path.display(), error = %e, "marking a kept rewrite used");
                    }
                    return Ok(kept);
                }
                tracing::warn!(path = %path.display(), "a kept rewritten guest is damaged: rewriting it");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading a kept rewritten guest")
            }
        }
    }
    let out =
        nan::rewrite(wasm).map_err(|e| SandboxError::Load(format!("preparing the guest: {e}")))?;
    if let Some(path) = &path {
        match keep(path, &out) {
            Ok(()) => {
                forget_older_rewrites(path, hash);
                prune_rewrites(path, REWRITES_KEPT, REWRITES_KEPT_BYTES);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "keeping a rewritten guest")
            }
        }
    }
    Ok(out)
}

/// Removes what earlier versions of the rewrite kept for this guest beside `kept` (a node that
/// was upgraded would otherwise hold every version's copy).
fn forget_older_rewrites(kept: &Path, hash: &blake3::Hash) {
    let Some(dir) = kept.parent() else { return };
    for version in 0..nan::VERSION {
        let old = dir.join(format!("{}-{version}.wasm", hash.to_hex()));
        match std::fs::remove_file(&old) {
            Ok(()) => tracing::debug!(path = %old.display(), "removed an older rewrite"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %old.display(), error = %e, "removing an older rewrite")
            }
        }
    }
}

/// Removes the least recently used rewrites beside `kept` (just written; never removed) beyond
/// `files` files or `bytes` bytes in all.
fn prune_rewrites(kept: &Path, files: usize, bytes: u64) {
    let Some(dir) = kept.parent() else { return };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = %e, "listing the kept rewrites");
            return;
        }
    };
    // (last used, size, path) of every kept rewrite but `kept`; temporary files are a writer's.
    let mut others: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".wasm") && !name.starts_with('.') && e.path() != kept
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    let (mut count, mut total) = (1, std::fs::metadata(kept).map_or(0, |m| m.len()));
    for (_, len, path) in others {
        count += 1;
        total = total.saturating_add(len);
        if count <= files && total <= bytes {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "removed the least recently used rewrite")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing a kept rewrite"),
        }
    }
}

/// Writes `bytes` and their BLAKE3 hash to `path`, through a temporary file renamed into place
/// (a reader sees the old file or the whole new one).
fn keep(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.write_all(blake3::hash(bytes).as_bytes())
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn epoch_ticks(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis() / EPOCH_TICK.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Core {
    /// Takes one of the warm places, if any is free.
    fn warm_token(&self) -> Option<WarmToken> {
        let max = self.config.warm_instances;
        self.warm
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WarmToken(self.warm.clone()))
    }

    /// Prepares a spare instance of `package` on a background thread, unless
    /// [`SPARES_PER_MODEL`] are ready or being built, or every warm place is taken; `used`, a
    /// finished call's instance, is torn down ([`Core::tear_down`]). A call that finds no spare
    /// ready but one being built waits for it (at most [`SPARE_WAIT`]) rather than building
    /// another.
    fn refill(self: &Arc<Self>, package: &Arc<Package>, used: Option<Box<dyn Send>>) {
        let mut spares = lock(&package.spare);
        let token = if spares.ready.len() + spares.building < SPARES_PER_MODEL {
            self.warm_token()
        } else {
            None
        };
        if token.is_some() {
            spares.building += 1;
        }
        drop(spares);
        if let Some(used) = used {
            self.tear_down(used);
        }
        let Some(token) = token else {
            return;
        };
        let (core, building) = (self.clone(), package.clone());
        self.builders.run(move || {
            let built = core.instantiate(&building, &CallLimits::default());
            let mut spares = lock(&building.spare);
            spares.building -= 1;
            let ok = built.is_ok();
            if let Ok(built) = built {
                spares.ready.push(built.ready(token));
            }
            let more = ok && spares.ready.len() + spares.building < SPARES_PER_MODEL;
            drop(spares);
            building.built.notify_all();
            // A spare taken while this one was built leaves room for another.
            if more {
                core.refill(&building, None);
            }
        });
    }

    /// Hands `used`, a finished call's instance, to a teardown thread (resetting its memory
    /// takes ~0.1 ms and holds a slot of the instance pool until done), or, if
    /// `warm_instances + 1` are waiting for one already (the machine too busy for the batch
    /// threads to keep up), tears it down here: slots held by used instances stay bounded.
    fn tear_down(&self, used: Box<dyn Send>) {
        let most = self.config.warm_instances + 1;
        let queued = self
            .tearing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < most).then_some(n + 1)
            })
            .is_ok();
        if !queued {
            drop(used);
            return;
        }
        let tearing = self.tearing.clone();
        self.teardown.run(move || {
            drop(used);
            tearing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// A new instance of `model`: from its snapshot if there is one, else instantiated and
    /// `init` run (which counts towards the snapshot).
    fn instantiate(
        self: &Arc<Self>,
        model: &Arc<Package>,
        limits: &CallLimits,
    ) -> Result<Built, SandboxError> {
        let started = thread_cpu();
        let built = match model.snapshot() {
            Some(snapshot) => self.instantiate_from(model, &snapshot, limits),
            None => self.instantiate_with_init(model, limits),
        };
        if let (Some(started), Some(ended)) = (started, thread_cpu()) {
            let took =
                u64::try_from((ended.saturating_sub(started)).as_nanos()).unwrap_or(u64::MAX);
            model.build_cpu.store(took, Ordering::Relaxed);
        }
        built
    }

    /// A new instance of `model` started from `snapshot`.
    fn instantiate_from(
        self: &Arc<Self>,
        model: &Arc<Package>,
        snapshot: &Snapshot,
        limits: &CallLimits,
    ) -> Result<Built, SandboxError> {
        // A start function would run here: deadlines need the epoch to advance.
        let _ticking = self.ticker.running();
        let mut store = self.new_store(model, limits)?;
        store.data_mut().handles = snapshot.handles.clone();
        let bindings = Guest::instantiate(&mut store, &snapshot.component, &self.linker)
            .map_err(|e| instantiation_error(&store, e, limits))?;
        Ok(Built {
            store,
            bindings,
            metadata: snapshot.metadata.clone(),
            from_snapshot: true,
        })
    }

    /// A new instance of `model` that has run `init`.
    fn instantiate_with_init(
        self: &Arc<Self>,
        model: &Arc<Package>,
        limits: &CallLimits,
    ) -> Result<Built, SandboxError> {
        // `init` runs here: its deadline needs the epoch to advance.
        let _ticking = self.ticker.running();
        let mut store = self.new_store(model, limits)?;
        let started = Instant::now();
        let bindings = Guest::instantiate(&mut store, &model.component, &self.linker)
            .map_err(|e| instantiation_error(&store, e, limits))?;
        let metadata = init(&bindings, &mut store, model, limits)?;
        self.count_init(model, started.elapsed());
        Ok(Built {
            store,
            bindings,
            metadata,
            from_snapshot: false,
        })
    }

    /// A store for one instance of `model`, with nothing in it yet.
    fn new_store(
        &self,
        model: &Package,
        limits: &CallLimits,
    ) -> Result<Store<CallState>, SandboxError> {
        let memory_mib = limits.memory_mib.min(self.config.max_memory_mib);
        let draws = Arc::new(AtomicU64::new(0));
        let mut wasi = WasiCtx::builder();
        // Guests run on threads of their own: a file operation blocks this one, rather than
        // going through tokio's blocking pool and back (two thread hand-offs per operation;
        // the demo model's `init` does about twenty). Set before the preopen, which keeps it.
        wasi.allow_blocking_current_thread(true)
            .preopened_dir(&model.dir, GUEST_ROOT, FsPerms::ReadOnly)
            .map_err(|e| SandboxError::Host(format!("{}: {e:#}", model.dir.display())))?
            .wall_clock(FixedClock)
            .monotonic_clock(FixedClock)
            .secure_random(snapshot::Counted::new(draws.clone()))
            .insecure_random(snapshot::Counted::new(draws.clone()))
            .insecure_random_seed(0)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false);
        let state = CallState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            memory_limit: memory_mib << 20,
            memory_denied: false,
            backend: self.backend.clone(),
            graphs: model.graphs.clone(),
            dir: model.dir.clone(),
            handles: Vec::new(),
            input_limits: limits.input,
            host_work: HostWork::default(),
            draws,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        store.set_epoch_deadline(epoch_ticks(limits.timeout));
        store
            .set_fuel(limits.init_fuel)
            .map_err(|e| SandboxError::Host(format!("{e:#}")))?;
        Ok(store)
    }

    /// Adds `took` to the time `model`'s instances have spent in `init`; once that reaches
    /// [`SandboxConfig::snapshot_after`], starts making the snapshot on a background thread.
    fn count_init(self: &Arc<Self>, model: &Arc<Package>, took: Duration) {
        let Some(after) = self.config.snapshot_after else {
            return;
        };
        let mut snap = lock(&model.snap);
        let Snap::Counting(spent) = &mut *snap else {
            return;
        };
        *spent += took;
        if *spent < after
            || self
                .snapshotting
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        *snap = Snap::Building;
        drop(snap);
        let (core, package) = (self.clone(), model.clone());
        let spawned = std::thread::Builder::new()
            .name("sandbox-snapshot".into())
            .spawn(move || {
                lower_priority();
                let started = Instant::now();
                let made = core.make_snapshot(&package);
                core.snapshotting.store(false, Ordering::Release);
                package.set_snap(match made {
                    Ok(snapshot) => {
                        tracing::debug!(
                            dir = %package.dir.display(),
                            took = ?started.elapsed(),
                            "instances start from the model's snapshot"
                        );
                        package.set_mark(true);
                        Snap::Ready(Arc::new(snapshot))
                    }
                    Err(why) => {
                        tracing::info!(
                            dir = %package.dir.display(),
                            %why,
                            "the model's guest is not snapshotted: its instances run init"
                        );
                        package.set_mark(false);
                        Snap::Off(why)
                    }
                });
            });
        if let Err(e) = spawned {
            self.snapshotting.store(false, Ordering::Release);
            model.set_snap(Snap::Off(format!("no snapshot thread: {e}")));
        }
    }

    /// Instruments the guest (exports that read its memories and globals), runs `init` on an
    /// instance of it, checks that what `init` left can be carried by memory alone, and
    /// compiles the guest as `init` left it.
    fn make_snapshot(&self, model: &Package) -> Result<Snapshot, String> {
        let (cx, instrumented) = snapshot::instrument(&model.wasm)?;
        let compile = |wasm: &[u8]| {
            compile_pool(self.config.compile_threads)
                .map_err(|e| e.to_string())?
                .install(|| Component::new(&self.engine, wasm))
                .map_err(|e| format!("compiling: {e:#}"))
        };
        let component = compile(&instrumented)?;
        drop(instrumented);
        let limits = CallLimits::default();
        let mut store = self.new_store(model, &limits).map_err(|e| e.to_string())?;
        let (bytes, metadata) = {
            let _ticking = self.ticker.running();
            let instance = self
                .linker
                .instantiate(&mut store, &component)
                .map_err(|e| format!("instantiating: {e:#}"))?;
            let bindings =
                Guest::new(&mut store, &instance).map_err(|e| format!("bindings: {e:#}"))?;
            let metadata =
                init(&bindings, &mut store, model, &limits).map_err(|e| e.to_string())?;
            snapshot::check(store.data_mut())?;
            // The state crosses as lists as large as the guest's memory.
            store.set_hostcall_fuel(usize::MAX);
            (snapshot::snapshot(&cx, &mut store, instance)?, metadata)
        };
        let component = compile(&bytes)?;
        drop(bytes);
        let snapshot = Snapshot {
            component,
            metadata,
            handles: store.data().handles.clone(),
        };
        drop(store);
        // One instance, to find out now whether the snapshot instantiates.
        let mut probe = self.new_store(model, &limits).map_err(|e| e.to_string())?;
        probe.data_mut().handles = snapshot.handles.clone();
        Guest::instantiate(&mut probe, &snapshot.component, &self.linker)
            .map_err(|e| format!("instantiating the snapshot: {e:#}"))?;
        Ok(snapshot)
    }
}

/// An instance that is ready for `predict`.
struct Built {
    store: Store<CallState>,
    bindings: Guest,
    metadata: wit::Metadata,
    from_snapshot: bool,
}

impl Built {
    fn ready(self, token: WarmToken) -> Ready {
        Ready {
            store: self.store,
            bindings: self.bindings,
            from_snapshot: self.from_snapshot,
            _token: token,
        }
    }
}

impl Package {
    /// Moves the model to `snap` and wakes whoever waits for its snapshot.
    fn set_snap(&self, snap: Snap) {
        *lock(&self.snap) = snap;
        self.snapped.notify_all();
    }

    /// Leaves (or removes) the mark that has this model snapshotted at its first load after a
    /// restart. A mark that cannot be written only costs that.
    fn set_mark(&self, snapshotted: bool) {
        let Some(mark) = &self.mark else {
            return;
        };
        let done = match snapshotted {
            true => mark
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(mark, b"")),
            false => match std::fs::remove_file(mark) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        if let Err(e) = done {
            tracing::warn!(mark = %mark.display(), error = %e, "the snapshot mark");
        }
    }

    /// The snapshot instances start from, if there is one.
    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        match &*lock(&self.snap) {
            Snap::Ready(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Why instantiating failed: a trap (in a start function) or a component that does not fit.
fn instantiation_error(
    store: &Store<CallState>,
    e: wasmtime::Error,
    limits: &CallLimits,
) -> SandboxError {
    match e.downcast_ref::<Trap>() {
        Some(_) => trap(store, e, limits, limits.init_fuel),
        None => SandboxError::Load(format!("{e:#}")),
    }
}

/// Runs the guest's `init`: its interface, or why the model cannot be loaded.
fn init(
    bindings: &Guest,
    store: &mut Store<CallState>,
    model: &Package,
    limits: &CallLimits,
) -> Result<wit::Metadata, SandboxError> {
    match bindings.call_init(&mut *store, model.entry.as_deref()) {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(SandboxError::Load(match e {
            wit::Error::InvalidInput(m) | wit::Error::Failed(m) => m,
        })),
        Err(e) => Err(match trap(store, e, limits, limits.init_fuel) {
            SandboxError::OutOfFuel { limit } => SandboxError::Load(format!(
                "loading the model needs more than {limit} fuel units"
            )),
            other => other,
        }),
    }
}

/// A graph error about an input, without `graph`'s own "invalid input: " prefix (the
/// sandbox error adds it).
fn invalid_input(e: graph::Error) -> SandboxError {
    match e {
        graph::Error::Invalid(m) => SandboxError::InvalidInput(m),
        other => SandboxError::InvalidInput(other.to_string()),
    }
}

/// Checks inputs against the model's declared interface.
fn check_inputs(model: &Model, inputs: &[graph::Tensor]) -> Result<(), SandboxError> {
    let invalid = SandboxError::InvalidInput;
    for t in inputs {
        let spec = model
            .inputs
            .iter()
            .find(|s| s.name == t.name)
            .ok_or_else(|| {
                let names: Vec<&str> = model.inputs.iter().map(|s| s.name.as_str()).collect();
                invalid(format!(
                    "the model has no input {:?} (inputs: {})",
                    t.name,
                    names.join(", ")
                ))
            })?;
        spec.accepts(t.dtype, &t.shape).map_err(invalid_input)?;
    }
    for spec in &model.inputs {
        match inputs.iter().filter(|t| t.name == spec.name).count() {
            1 => {}
            0 => return Err(invalid(format!("missing input {:?}", spec.name))),
            _ => return Err(invalid(format!("input {:?} given twice", spec.name))),
        }
    }
    Ok(())
}

fn guest_error(e: wit::Error) -> SandboxError {
    match e {
        wit::Error::InvalidInput(m) => SandboxError::InvalidInput(m),
        wit::Error::Failed(m) => SandboxError::Failed(m),
    }
}

fn trap(
    store: &Store<CallState>,
    e: wasmtime::Error,
    limits: &CallLimits,
    fuel: u64,
) -> SandboxError {
    if store.data().memory_denied {
        return SandboxError::OutOfMemory {
            limit_mib: store.data().memory_limit >> 20,
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => SandboxError::OutOfFuel { limit: fuel },
        Some(Trap::Interrupt) => SandboxError::Timeout {
            limit: limits.timeout,
        },
        Some(t) => SandboxError::Trap(t.to_string()),
        None => SandboxError::Trap(format!("{e:#}")),
    }
}

/// Per-call state inside the store.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory_limit: u64,
    memory_denied: bool,
    backend: Option<Arc<dyn Backend>>,
    graphs: backend::GraphCache,
    dir: PathBuf,
    handles: Vec<Arc<dyn LoadedGraph>>,
    input_limits: graph::Limits,
    host_work: HostWork,
    /// Values drawn from the guest's random sources.
    draws: Arc<AtomicU64>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            self.memory_denied = true;
            return Err(wasmtime::format_err!(
                "memory of {desired} bytes is above the call's cap"
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 18)
    }
}

impl wit::Host for CallState {}

impl wit_graph::Host for CallState {
    fn backend(&mut self) -> Option<String> {
        self.backend.as_ref().map(|b| b.name().to_string())
    }

    fn load(&mut self, path: String) -> Result<wit_graph::Loaded, String> {
        let backend = self
            .backend
            .clone()
            .ok_or("this node offers no graph backend")?;
        let graph = self.graphs.load(&*backend, &self.dir, &path)?;
        let handle = self.handles.len() as u32;
        let loaded = wit_graph::Loaded {
            handle,
            inputs: graph.inputs().iter().map(spec_to_wit).collect(),
            outputs: graph.outputs().iter().map(spec_to_wit).collect(),
        };
        self.handles.push(graph);
        Ok(loaded)
    }

    fn compute(
        &mut self,
        graph: u32,
        inputs: Vec<wit::Tensor>,
    ) -> Result<Vec<wit::Tensor>, String> {
        let graph = self
            .handles
            .get(graph as usize)
            .cloned()
            .ok_or_else(|| format!("no graph with handle {graph}"))?;
        let inputs: Vec<graph::Tensor> = inputs.into_iter().map(tensor_from_wit).collect();
        let started = Instant::now();
        let in_bytes: u64 = inputs.iter().map(|t| t.data.len() as u64).sum();
        let outputs = graph
            .run(inputs, &self.input_limits)
            .map_err(|e| e.to_string())?;
        let out_bytes: u64 = outputs.iter().map(|t| t.data.len() as u64).sum();
        self.host_work.calls += 1;
        self.host_work.bytes += in_bytes + out_bytes;
        self.host_work.time += started.elapsed();
        Ok(outputs.into_iter().map(tensor_to_wit).collect())
    }
}

/// A clock that always reads zero: guests must not depend on time.
struct FixedClock;

impl wasmtime_wasi::HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn dtype_to_wit(d: graph::DType) -> wit::Dtype {
    use graph::DType as D;
    match d {
        D::Bool => wit::Dtype::Boolean,
        D::U8 => wit::Dtype::Uint8,
        D::U16 => wit::Dtype::Uint16,
        D::U32 => wit::Dtype::Uint32,
        D::U64 => wit::Dtype::Uint64,
        D::I8 => wit::Dtype::Int8,
        D::I16 => wit::Dtype::Int16,
        D::I32 => wit::Dtype::Int32,
        D::I64 => wit::Dtype::Int64,
        D::F16 => wit::Dtype::Fp16,
        D::F32 => wit::Dtype::Fp32,
        D::F64 => wit::Dtype::Fp64,
        D::Bytes => wit::Dtype::Bytes,
    }
}

fn dtype_from_wit(d: wit::Dtype) -> graph::DType {
    graph::DType::ALL
        .into_iter()
        .find(|&g| dtype_to_wit(g) == d)
        .unwrap_or(graph::DType::Bytes)
}

fn tensor_to_wit(t: graph::Tensor) -> wit::Tensor {
    wit::Tensor {
        name: t.name,
        dtype: dtype_to_wit(t.dtype),
        shape: t.shape,
        data: t.data,
    }
}

fn tensor_from_wit(t: wit::Tensor) -> graph::Tensor {
    graph::Tensor {
        name: t.name,
        dtype: dtype_from_wit(t.dtype),
        shape: t.shape,
        data: t.data,
    }
}

fn spec_to_wit(s: &graph::Spec) -> wit::TensorSpec {
    wit::TensorSpec {
        name: s.name.clone(),
        dtype: dtype_to_wit(s.dtype),
        shape: s
            .shape
            .iter()
            .map(|d| match d {
                graph::Dim::Fixed(n) => wit::Dim::Fixed(*n),
                graph::Dim::Symbolic(n) => wit::Dim::Symbolic(n.clone()),
            })
            .collect(),
    }
}

fn spec_from_wit(s: wit::TensorSpec) -> graph::Spec {
    graph::Spec {
        name: s.name,
        dtype: dtype_from_wit(s.dtype),
        shape: s
            .shape
            .into_iter()
            .map(|d| match d {
                wit::Dim::Fixed(n) => graph::Dim::Fixed(n),
                wit::Dim::Symbolic(n) => graph::Dim::Symbolic(n),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spare builders are idle-policy threads; compile, snapshot and teardown threads batch
    /// threads at [`COMPILE_NICE`].
    #[cfg(target_os = "linux")]
    #[test]
    fn builders_run_at_the_idle_policy_and_the_rest_as_batch_threads() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let policy = |lower: fn()| {
            std::thread::spawn(move || {
                lower();
                (
                    thread_priority::thread_schedule_policy().expect("policy"),
                    rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                        .expect("nice"),
                )
            })
            .join()
            .expect("thread")
        };
        let (idle, _) = policy(idle_priority);
        assert_eq!(
            idle,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        let (batch, nice) = policy(lower_priority);
        assert_eq!(
            batch,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch)
        );
        assert!(nice >= COMPILE_NICE, "nice {nice}");
    }

    /// Gives each of the threads `pool` may run a job that waits for `gate` (held by the
    /// caller): the pool's later jobs wait until it is let go.
    fn hold_every_thread(pool: &background::Background, gate: &Arc<Mutex<()>>) {
        for _ in 0..std::thread::available_parallelism().map_or(2, usize::from) {
            let gate = gate.clone();
            pool.run(move || drop(gate.lock()));
        }
    }

    /// A call that finds no spare ready while the one under way cannot run (every builder
    /// thread held, as on a machine too busy for idle-policy threads) waits for it no longer
    /// than a build's CPU time, then builds its own.
    #[test]
    fn a_call_waits_for_a_starved_spare_no_longer_than_a_build() {
        let guests = std::env::var_os("MOXNET_GUESTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../guests/target/wasm32-wasip2/release")
            });
        let path = guests.join("moxnet_hostile.wasm");
        let wasm = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build the guests first (see README)",
                path.display()
            )
        });
        let sandbox = Sandbox::new(SandboxConfig {
            max_memory_mib: 256,
            warm_instances: 2,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        let core = &sandbox.core;
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().expect("gate");
        hold_every_thread(&core.builders, &gate);
        let package = tempfile::tempdir().expect("package");
        let model = sandbox.load(&wasm, package.path(), None).expect("load");
        let build = Duration::from_nanos(model.inner.build_cpu.load(Ordering::Relaxed));
        assert!(build > Duration::ZERO, "load's build was timed");
        let input = || vec![graph::Tensor::from_bytes("mode", vec![1], &["env"])];
        // The first call takes the spare `load` made; the second finds two being built.
        sandbox
            .predict(&model, input(), &CallLimits::default())
            .expect("call on the spare");
        assert_eq!(lock(&model.inner.spare).building, 2);
        let started = Instant::now();
        sandbox
            .predict(&model, input(), &CallLimits::default())
            .expect("call on its own instance");
        let took = started.elapsed();
        // A build's CPU time is milliseconds here: the call did not wait out the cap.
        assert!(
            took < SPARE_WAIT,
            "the call took {took:?} (a build: {build:?})"
        );
        assert_eq!(lock(&model.inner.spare).ready.len(), 0);
        drop(held);
    }

    /// Used instances waiting for a teardown thread stay within `warm_instances + 1`: beyond
    /// that the call's own thread tears its instance down.
    #[test]
    fn a_teardown_backlog_beyond_its_bound_is_torn_down_in_line() {
        struct Used(usize, std::sync::mpsc::Sender<usize>);
        impl Drop for Used {
            fn drop(&mut self) {
                let _ = self.1.send(self.0);
            }
        }
        let sandbox = Sandbox::new(SandboxConfig {
            warm_instances: 1,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        let core = &sandbox.core;
        // Every teardown thread held up.
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().expect("gate");
        hold_every_thread(&core.teardown, &gate);
        let (dropped, torn) = std::sync::mpsc::channel();
        for i in 0..4 {
            core.tear_down(Box::new(Used(i, dropped.clone())));
        }
        // Two queued (`warm_instances + 1`), two torn down before `tear_down` returned.
        assert_eq!(torn.try_iter().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(core.tearing.load(Ordering::Acquire), 2);
        drop(held);
        let mut rest: Vec<usize> = (0..2)
            .map(|_| {
                torn.recv_timeout(Duration::from_secs(10))
                    .expect("torn down")
            })
            .collect();
        rest.sort_unstable();
        assert_eq!(rest, [0, 1]);
        for _ in 0..1000 {
            if core.tearing.load(Ordering::Acquire) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(core.tearing.load(Ordering::Acquire), 0);
    }

    /// Beyond the bounds, the least recently used rewrites go; the one just kept stays.
    #[test]
    fn kept_rewrites_are_bounded_least_recently_used_first() {
        let dir = tempfile::tempdir().expect("dir");
        let start = std::time::SystemTime::now() - Duration::from_secs(3600);
        let files: Vec<PathBuf> = (0..6)
            .map(|i| {
                let path = dir.path().join(format!("{i}-1.wasm"));
                std::fs::write(&path, [0u8; 10]).expect("write");
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(start + Duration::from_secs(i * 60)))
                    .expect("mtime");
                path
            })
            .collect();
        let temporary = dir.path().join(".123-0.tmp");
        std::fs::write(&temporary, b"a writer's").expect("write");
        let left = || -> Vec<bool> { files.iter().map(|p| p.exists()).collect() };
        // By count: the kept one (the oldest here) and the 3 used last.
        prune_rewrites(&files[0], 4, u64::MAX);
        assert_eq!(left(), [true, false, false, true, true, true]);
        assert!(
            temporary.exists(),
            "a writer's temporary file is not a rewrite"
        );
        // By bytes: 10 each, at most 25: the kept one and the one used last.
        prune_rewrites(&files[0], 64, 25);
        assert_eq!(left(), [true, false, false, false, false, true]);
        // The one just kept stays even when it alone is over.
        prune_rewrites(&files[5], 64, 5);
        assert_eq!(left(), [false, false, false, false, false, true]);
    }

    /// The rewrite is kept in the cache directory and used from there; a damaged copy is
    /// rewritten and replaced.
    #[test]
    fn rewritten_guests_are_kept_and_checked() {
        // A module that returns 0/0's bits, and the same rewritten.
        let module = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
            0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // type: [] -> [i32]
            0x03, 0x02, 0x01, 0x00, // function 0: type 0
            0x0a, 0x10, 0x01, 0x0e, 0x00, // code: one body, no locals
            0x43, 0x00, 0x00, 0x00, 0x00, 0x43, 0x00, 0x00, 0x00, 0x00, // f32.const 0 ×2
            0x95, 0xbc, 0x0b, // f32.div, i32.reinterpret_f32, end
        ];
        let want = nan::rewrite(&module).expect("rewrite");
        assert_ne!(
            want, module,
            "the result is observed: the rewrite changes the body"
        );
        let cache = tempfile::tempdir().expect("cache");
        let hash = blake3::hash(&module);
        // What an earlier version of the rewrite kept for this guest goes once it is rewritten.
        let older = cache.path().join(REWRITTEN).join(format!(
            "{}-{}.wasm",
            hash.to_hex(),
            nan::VERSION - 1
        ));
        keep(&older, b"an older rewrite").expect("keep");
        let got = rewritten(Some(cache.path()), &module, &hash).expect("rewritten");
        assert_eq!(got, want);
        assert!(!older.exists(), "the older rewrite is removed");
        let path =
            cache
                .path()
                .join(REWRITTEN)
                .join(format!("{}-{}.wasm", hash.to_hex(), nan::VERSION));
        let kept = std::fs::read(&path).expect("kept");
        assert_eq!(&kept[..want.len()], &want[..]);
        // Used from the directory: a copy with a valid hash stands for the rewrite, and is
        // marked used (the last to go when the kept rewrites are pruned).
        let stand_in = b"stand-in".to_vec();
        keep(&path, &stand_in).expect("keep");
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(long_ago))
            .expect("mtime");
        assert_eq!(
            rewritten(Some(cache.path()), &module, &hash).expect("kept"),
            stand_in
        );
        let used = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert!(used > long_ago + Duration::from_secs(3600), "marked used");
        // Damaged: rewritten and kept again.
        std::fs::write(&path, b"damaged bytes, and no hash to match them").expect("damage");
        assert_eq!(
            rewritten(Some(cache.path()), &module, &hash).expect("again"),
            want
        );
        assert_eq!(std::fs::read(&path).expect("kept").len(), want.len() + 32);
    }

    /// A compile's threads are as many as configured, and run at [`COMPILE_NICE`] while this
    /// thread keeps its own priority.
    #[test]
    #[cfg(target_os = "linux")]
    fn compile_threads_are_bounded_and_run_at_low_priority() {
        let nice = |tid| rustix::process::getpriority_process(Some(tid)).expect("getpriority");
        let own = nice(rustix::thread::gettid());
        let pool = compile_pool(3).expect("pool");
        assert_eq!(pool.current_num_threads(), 3);
        let (inside, name, policy) = pool.install(|| {
            let name = std::thread::current().name().map(str::to_owned);
            let policy = thread_priority::thread_schedule_policy().expect("policy");
            (nice(rustix::thread::gettid()), name, policy)
        });
        assert_eq!(inside, COMPILE_NICE.max(own));
        // A batch thread: it never preempts the call that wakes it.
        assert_eq!(
            policy,
            thread_priority::ThreadSchedulePolicy::Normal(
                thread_priority::NormalThreadSchedulePolicy::Batch
            )
        );
        assert!(name.is_some_and(|n| n.starts_with("sandbox-compile-")));
        assert_eq!(nice(rustix::thread::gettid()), own);
        assert_eq!(compile_pool(0).expect("pool").current_num_threads(), 1);
    }
}
