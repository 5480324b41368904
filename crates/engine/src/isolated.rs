//! The node's side of the process boundary: a [`sandbox::Backend`] whose graphs run in
//! confined worker processes ([`crate::worker`]).
//!
//! Each loaded graph has its own workers, started on demand (one per call running on it at
//! once, so at most the sandbox's `max_concurrent`) and kept while the model stays loaded. A
//! call checks its inputs against the graph's specs and the call's limits before they cross,
//! and the worker's outputs against the specs and limits after. A worker that dies, sends
//! garbage or runs past the wall-clock limit is killed and reaped; its call gets an error, the
//! next call a fresh worker. Nothing a graph does reaches the node's memory.
//!
//! A call waits for its reply the way Linux waits for a fast disk with hybrid polling
//! (`ReplyClock`): asleep until shortly before the reply is due, then polling the pipe for
//! at most [`MAX_POLL`] twice, when the graph was idle for [`IDLE_BEFORE_POLL`] and a core is
//! idle. On a virtual machine, a core that went idle while the worker ran takes a hundred or
//! more microseconds to wake for the reply (measured here: a pipe round trip between two idle
//! processes p50 297 µs, between two busy ones 9 µs); a thread already awake sees it at once.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use graph::{Error, Limits, Spec, Tensor};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::wire::{self, Failure, Reply, Request};
use crate::worker::Options;

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The program: the `moxnet` binary or `moxnet-engine`.
    pub program: PathBuf,
    /// Arguments before the worker's options (`["engine-worker"]` for `moxnet`).
    pub prefix: Vec<String>,
    /// The worker's options.
    pub options: Options,
    /// How long one run may take before its worker is killed.
    pub run_timeout: Duration,
    /// How long starting a worker and loading a model may take.
    pub load_timeout: Duration,
}

/// What a worker said when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The engine's name (`onnxruntime`, `onnxruntime-cuda`, `tract-native`).
    pub engine: String,
    /// Its version.
    pub version: String,
    /// The confinement it got, in words.
    pub confinement: String,
}

/// The environment variables a worker gets from its node (all others are cleared).
pub const PASSED_ENV: [&str; 3] = [
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
];

/// Set in every worker's environment: glibc's malloc backs its heap with transparent huge
/// pages (where the kernel has THP in `madvise` or `always` mode), which a graph's weights,
/// read whole on every run, want.
pub const HUGE_PAGES: (&str, &str) = ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1");

/// A backend whose graphs run in workers.
pub struct Isolated {
    command: Arc<WorkerCommand>,
    hello: Hello,
}

impl Isolated {
    /// Starts one worker to learn that the engine works (and its name and version), then
    /// lets it go. An error says why the engine cannot run here (e.g. no onnxruntime library).
    pub fn start(command: WorkerCommand) -> Result<Isolated, Error> {
        let worker = Worker::spawn(&command)?;
        Ok(Isolated {
            hello: worker.hello.clone(),
            command: Arc::new(command),
        })
    }

    /// What the probe worker said.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Loads a graph in a fresh worker (also what [`sandbox::Backend::load`] does).
    pub fn load_graph(&self, model: &[u8]) -> Result<IsolatedGraph, Error> {
        let mut worker = Worker::spawn(&self.command)?;
        let (inputs, outputs) = worker.load(model, self.command.load_timeout)?;
        Ok(IsolatedGraph {
            model: model.into(),
            inputs,
            outputs,
            idle: Mutex::new(vec![worker]),
            clock: ReplyClock::new(self.command.options.threads),
            command: self.command.clone(),
        })
    }
}

impl sandbox::Backend for Isolated {
    fn name(&self) -> &str {
        &self.hello.engine
    }

    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn sandbox::LoadedGraph>, Error> {
        Ok(Arc::new(self.load_graph(bytes)?))
    }
}

/// A graph loaded in workers.
pub struct IsolatedGraph {
    model: Arc<[u8]>,
    inputs: Vec<Spec>,
    outputs: Vec<Spec>,
    idle: Mutex<Vec<Worker>>,
    clock: ReplyClock,
    command: Arc<WorkerCommand>,
}

/// The most a call polls for its reply on each side of the moment it is due (so at most twice
/// this per call): the CPU hybrid waiting may spend.
pub const MAX_POLL: Duration = Duration::from_micros(500);

/// How long a graph must have had no reply for its next call to poll: calls closer together
/// find the cores awake (the node preparing the next instance, the client sending the next
/// call), where a wake costs little and polling would only take a core from them.
pub const IDLE_BEFORE_POLL: Duration = Duration::from_millis(5);

/// `pause` instructions between two looks at the pipe while polling.
const PAUSES: usize = 16;

/// `poll`'s timeout for `d`.
fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// The threads running or ready to run, from a `/proc/loadavg` line (its fourth field,
/// `running/all`).
fn runnable(loadavg: &str) -> Option<usize> {
    let (running, _) = loadavg.split_whitespace().nth(3)?.split_once('/')?;
    running.parse().ok()
}

/// The CPU a process's main thread runs on (or last ran on), from its `/proc/<pid>/stat` line
/// (field 39, `processor`; counted after the command name, which may hold spaces and
/// parentheses).
fn processor(stat: &str) -> Option<usize> {
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(36)?.parse().ok()
}

/// When a graph's replies come: a running mean of the time from a run's request to its reply,
/// which tells a call when to stop sleeping and start polling.
struct ReplyClock {
    /// The mean, ns (0: no run yet).
    mean_ns: AtomicU64,
    /// When the last reply came, ns after `epoch`.
    last_ns: AtomicU64,
    epoch: Instant,
    /// Whether calls may poll: only when the workers' threads leave this machine a core.
    polls: bool,
    /// This machine's cores.
    cores: usize,
}

impl ReplyClock {
    fn new(worker_threads: usize) -> ReplyClock {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ReplyClock {
            mean_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            polls: worker_threads < cores,
            cores,
        }
    }

    /// The window to poll in, from a request sent at `sent`: `(start, end)`, or `None` to
    /// just sleep (no reply yet, or one less than [`IDLE_BEFORE_POLL`] ago).
    fn window(&self, sent: Instant) -> Option<(Duration, Duration)> {
        let mean = Duration::from_nanos(self.mean_ns.load(Ordering::Relaxed));
        let last = self.epoch + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed));
        if !self.polls || mean.is_zero() || sent.saturating_duration_since(last) < IDLE_BEFORE_POLL
        {
            return None;
        }
        let lead = (mean / 4).min(MAX_POLL);
        Some((mean - lead, mean + lead))
    }

    /// Whether a core is idle for a call to poll on, now: fewer threads running or ready to
    /// run than cores (`/proc/loadavg` counts the asking thread too). Where that cannot be
    /// read, no.
    fn core_idle(&self) -> bool {
        let line = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        runnable(&line).is_some_and(|n| n <= self.cores)
    }

    /// Counts a reply that came `took` after its request: a mean over about the last eight,
    /// each clamped to half or twice the mean so far (one stall moves it little).
    fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let mean = self.mean_ns.load(Ordering::Relaxed);
        let next = if mean == 0 {
            took
        } else {
            let took = took.clamp(mean / 2, mean.saturating_mul(2));
            mean - mean / 8 + took / 8
        };
        self.mean_ns.store(next.max(1), Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(now, Ordering::Relaxed);
    }
}

impl IsolatedGraph {
    /// Its inputs.
    pub fn inputs(&self) -> &[Spec] {
        &self.inputs
    }

    /// Its outputs.
    pub fn outputs(&self) -> &[Spec] {
        &self.outputs
    }

    /// Workers idle now.
    pub fn idle_workers(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Runs the graph in a worker: checks the inputs, sends them, waits at most the run
    /// timeout, checks the outputs.
    pub fn run(&self, inputs: Vec<Tensor>, limits: &Limits) -> Result<Vec<Tensor>, Error> {
        let inputs = graph::match_inputs(&self.inputs, inputs, limits)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut worker = match idle {
            Some(w) => w,
            None => {
                let mut w = Worker::spawn(&self.command)?;
                w.load(&self.model, self.command.load_timeout)?;
                w
            }
        };
        let outputs = worker.run(inputs, self.command.run_timeout, &self.clock)?;
        // The worker answered in time with well-formed frames: it may serve the next call.
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(worker);
        let outputs = outputs?;
        check_outputs(&self.outputs, &outputs, limits)?;
        Ok(outputs)
    }
}

impl sandbox::LoadedGraph for IsolatedGraph {
    fn inputs(&self) -> &[Spec] {
        &self.inputs
    }

    fn outputs(&self) -> &[Spec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<Tensor>, limits: &Limits) -> Result<Vec<Tensor>, Error> {
        IsolatedGraph::run(self, inputs, limits)
    }
}

/// Checks a worker's outputs: one per spec, in order, each well-formed within the limits.
fn check_outputs(specs: &[Spec], outputs: &[Tensor], limits: &Limits) -> Result<(), Error> {
    let bad = |m: String| {
        Err(Error::Run(format!(
            "the engine's worker answered wrongly: {m}"
        )))
    };
    if outputs.len() != specs.len() {
        return bad(format!(
            "{} outputs for {} specs",
            outputs.len(),
            specs.len()
        ));
    }
    for (t, spec) in outputs.iter().zip(specs) {
        if t.name != spec.name || t.dtype != spec.dtype {
            return bad(format!(
                "output {:?} of {} where {:?} of {} was due",
                t.name, t.dtype, spec.name, spec.dtype
            ));
        }
        t.check(limits).map_err(|e| Error::Run(e.to_string()))?;
    }
    Ok(())
}

/// What a `llama` worker said about its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo {
    /// The context the model was trained for, in tokens.
    pub trained_context: u32,
    /// The context each worker allocates, in tokens.
    pub context: u32,
    /// Tokens in the vocabulary.
    pub vocab: u32,
    /// Parameters.
    pub parameters: u64,
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Tokens of the prompt as the model saw it (the chat template applied).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Why it ended.
    pub finish: llm::Finish,
    /// Time spent on the prompt.
    pub prompt_time: Duration,
    /// Time spent generating.
    pub generate_time: Duration,
}

/// A GGUF language model served by `llama` workers: one generation per worker at a time,
/// workers started on demand and kept idle for the next (the caller bounds how many run).
pub struct LanguageModelWorkers {
    command: Arc<WorkerCommand>,
    hello: Hello,
    info: ModelInfo,
    idle: Mutex<Vec<Worker>>,
}

impl LanguageModelWorkers {
    /// Starts a first worker, which loads the model (its options' engine is
    /// [`crate::worker::EngineKind::Llama`]). An error says why the model cannot run: the
    /// worker's own message, or how it died.
    pub fn start(command: WorkerCommand) -> Result<LanguageModelWorkers, Error> {
        let (worker, info) = Self::spawn(&command)?;
        Ok(LanguageModelWorkers {
            hello: worker.hello.clone(),
            info,
            command: Arc::new(command),
            idle: Mutex::new(vec![worker]),
        })
    }

    fn spawn(command: &WorkerCommand) -> Result<(Worker, ModelInfo), Error> {
        let mut worker = Worker::spawn(command)?;
        match worker.receive(Some(Instant::now() + command.load_timeout)) {
            Ok(Reply::LanguageModel {
                trained_context,
                context,
                vocab,
                parameters,
            }) => Ok((
                worker,
                ModelInfo {
                    trained_context,
                    context,
                    vocab,
                    parameters,
                },
            )),
            Ok(Reply::Failed { message, .. }) => Err(Error::Load(message)),
            Ok(other) => Err(Error::Load(format!(
                "the engine worker answered {other:?} instead of describing its model"
            ))),
            Err(e) => Err(Error::Load(e.to_string())),
        }
    }

    /// What the first worker said when it started.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// What the model is.
    pub fn info(&self) -> ModelInfo {
        self.info
    }

    /// Workers waiting for a generation.
    pub fn idle_workers(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Generates on an idle worker (or a new one). `on_token` gets each token's id and the
    /// text it releases, as they come; when it returns `false` the generation is cancelled
    /// (the worker stops at its next token). The whole generation must end within the
    /// command's `run_timeout`, or its worker is killed.
    pub fn generate(
        &self,
        prompt: &llm::Prompt,
        sampling: &llm::Sampling,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<(Generated, String), Error> {
        prompt.check().map_err(Error::Invalid)?;
        sampling.check().map_err(Error::Invalid)?;
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut worker = match taken {
            Some(w) => w,
            None => Self::spawn(&self.command)?.0,
        };
        let deadline = Instant::now() + self.command.run_timeout;
        worker
            .send(&Request::Generate {
                prompt: prompt.clone(),
                sampling: sampling.clone(),
            })
            .map_err(|e| Error::Run(e.to_string()))?;
        let mut cancelled = false;
        loop {
            match worker.receive(Some(deadline)) {
                Ok(Reply::Token { id, text }) => {
                    if !cancelled && !on_token(id, &text) {
                        cancelled = true;
                        worker
                            .send(&Request::Cancel)
                            .map_err(|e| Error::Run(e.to_string()))?;
                    }
                }
                Ok(Reply::Generated {
                    prompt_tokens,
                    completion_tokens,
                    finish,
                    tail,
                    prompt_us,
                    generate_us,
                }) => {
                    self.idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(worker);
                    return Ok((
                        Generated {
                            prompt_tokens,
                            completion_tokens,
                            finish,
                            prompt_time: Duration::from_micros(prompt_us),
                            generate_time: Duration::from_micros(generate_us),
                        },
                        tail,
                    ));
                }
                Ok(Reply::Failed { failure, message }) => {
                    self.idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(worker);
                    return Err(match failure {
                        Failure::Invalid => Error::Invalid(message),
                        Failure::Load => Error::Load(message),
                        Failure::Run => Error::Run(message),
                    });
                }
                Ok(other) => {
                    let status = worker.reap();
                    return Err(Error::Run(format!(
                        "the engine worker sent {other:?} during a generation; killed ({status})"
                    )));
                }
                Err(e) => return Err(Error::Run(e.to_string())),
            }
        }
    }
}

/// One worker process and its pipe.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    hello: Hello,
    stderr_tail: Arc<Mutex<String>>,
    memory_mib: u64,
}

impl Worker {
    fn spawn(command: &WorkerCommand) -> Result<Worker, Error> {
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.prefix)
            .args(command.options.to_args())
            // Nothing of the node's environment (tokens, paths to keys) crosses but where the
            // engine's libraries are and which GPUs it may use.
            .env_clear()
            // ggml, on an assertion, would start gdb on itself to print a backtrace.
            .env("GGML_NO_BACKTRACE", "1")
            // glibc's malloc asks for transparent huge pages (`MADV_HUGEPAGE`) for its heap:
            // a graph's weights, read whole on every run, then take a few TLB entries instead
            // of thousands (the demo model ran 6–17% faster in onnxruntime; its resident
            // memory grew ~3 MB). Where THP is `never`, or the libc is not glibc, nothing
            // changes.
            .env(HUGE_PAGES.0, HUGE_PAGES.1)
            .current_dir("/");
        for key in PASSED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Load(format!(
                    "cannot start the engine worker {}: {e}",
                    command.program.display()
                ))
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Load("the engine worker has no pipes".into()));
        };
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        forward_stderr(stderr, child.id(), stderr_tail.clone());
        let mut worker = Worker {
            child,
            stdin,
            stdout,
            hello: Hello {
                engine: String::new(),
                version: String::new(),
                confinement: String::new(),
            },
            stderr_tail,
            memory_mib: command.options.memory_mib,
        };
        match worker.receive(Some(Instant::now() + command.load_timeout)) {
            Ok(Reply::Hello {
                engine,
                version,
                confinement,
            }) => {
                tracing::debug!(pid = worker.child.id(), %engine, %version, %confinement, "engine worker started");
                worker.hello = Hello {
                    engine,
                    version,
                    confinement,
                };
                Ok(worker)
            }
            Ok(Reply::Failed { message, .. }) => Err(Error::Load(message)),
            Ok(other) => Err(Error::Load(format!(
                "the engine worker began with {other:?} instead of hello"
            ))),
            Err(e) => Err(Error::Load(e.to_string())),
        }
    }

    fn load(&mut self, model: &[u8], timeout: Duration) -> Result<(Vec<Spec>, Vec<Spec>), Error> {
        self.send(&Request::Load {
            model: model.to_vec(),
        })
        .map_err(|e| Error::Load(e.to_string()))?;
        match self.receive(Some(Instant::now() + timeout)) {
            Ok(Reply::Loaded { inputs, outputs }) => Ok((inputs, outputs)),
            Ok(Reply::Failed { message, .. }) => Err(Error::Load(message)),
            Ok(_) => Err(Error::Load(
                "the engine worker answered a load wrongly".into(),
            )),
            Err(e) => Err(Error::Load(e.to_string())),
        }
    }

    /// Runs on the worker. The outer error means the worker is gone (killed, dead or lying);
    /// the inner one is the engine's answer.
    fn run(
        &mut self,
        inputs: Vec<Tensor>,
        timeout: Duration,
        clock: &ReplyClock,
    ) -> Result<Result<Vec<Tensor>, Error>, Error> {
        self.send(&Request::Run { inputs })
            .map_err(|e| Error::Run(e.to_string()))?;
        let sent = Instant::now();
        if let Some((from, to)) = clock.window(sent) {
            self.poll_between(sent + from, sent + to, || clock.core_idle());
        }
        let reply = self.receive(Some(sent + timeout));
        clock.record(sent.elapsed());
        match reply {
            Ok(Reply::Outputs(outputs)) => Ok(Ok(outputs)),
            Ok(Reply::Failed { failure, message }) => Ok(Err(match failure {
                Failure::Invalid => Error::Invalid(message),
                Failure::Load => Error::Load(message),
                Failure::Run => Error::Run(message),
            })),
            Ok(_) => Err(Error::Run(
                "the engine worker answered a run wrongly".into(),
            )),
            Err(e) => Err(Error::Run(e.to_string())),
        }
    }

    /// Sleeps until `from` (or the reply), then, if `may_poll` then, polls for the reply until
    /// `to`; whatever comes, the reply is then read as usual.
    fn poll_between(&self, from: Instant, to: Instant, may_poll: impl FnOnce() -> bool) {
        let mut fds = [PollFd::new(&self.stdout, PollFlags::IN)];
        let mut ready = |wait: Duration| {
            // An error (EINTR) reads as "not yet": the reply is read, with its deadline, after.
            matches!(poll(&mut fds, Some(&timespec(wait))), Ok(n) if n > 0)
        };
        let asleep = from.saturating_duration_since(Instant::now());
        if !asleep.is_zero() && ready(asleep) || !may_poll() {
            return;
        }
        // Never on the worker's core: the pipe's wake-up put the worker on this thread's core
        // (the writer is about to sleep), and the timer often brings this thread back there,
        // where polling would take the core from the very run it waits for (paced calls: the
        // worker ran ~0.5 ms longer). Polling stops if this thread is moved.
        let here = rustix::thread::sched_getcpu();
        if self.cpu() == Some(here) {
            return;
        }
        while Instant::now() < to {
            if ready(Duration::ZERO) || rustix::thread::sched_getcpu() != here {
                return;
            }
            // About a microsecond of `pause` between looks: the core's other hardware
            // thread (a worker's, maybe) keeps nearly all of the core meanwhile.
            for _ in 0..PAUSES {
                std::hint::spin_loop();
            }
        }
    }

    /// The CPU the worker runs on (its main thread), if `/proc` says.
    fn cpu(&self) -> Option<usize> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        processor(&stat)
    }

    fn send(&mut self, request: &Request) -> Result<(), Gone> {
        // One write: the worker, waiting for a request, wakes once for it.
        let frame = request.frame().map_err(|e| Gone(e.to_string()))?;
        let sent = self
            .stdin
            .write_all(&frame)
            .and_then(|()| self.stdin.flush());
        match sent {
            Ok(()) => Ok(()),
            Err(_) => Err(self.gone("it stopped reading")),
        }
    }

    fn receive(&mut self, deadline: Option<Instant>) -> Result<Reply, Gone> {
        let mut header = [0; 4];
        self.read_exact_by(&mut header, deadline)?;
        let len = wire::payload_len(header).map_err(|e| self.lying(e))?;
        let mut payload = vec![0; len];
        self.read_exact_by(&mut payload, deadline)?;
        Reply::decode(&payload).map_err(|e| self.lying(e))
    }

    fn read_exact_by(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Result<(), Gone> {
        let mut filled = 0;
        while filled < buf.len() {
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.timed_out());
                }
                let mut fds = [PollFd::new(&self.stdout, PollFlags::IN)];
                match poll(&mut fds, Some(&timespec(left))) {
                    Ok(0) => return Err(self.timed_out()),
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(self.gone(&format!("polling its pipe failed: {e}"))),
                }
            }
            match self.stdout.read(&mut buf[filled..]) {
                Ok(0) => return Err(self.gone("it closed its pipe")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.gone(&format!("reading its pipe failed: {e}"))),
            }
        }
        Ok(())
    }

    fn reap(&mut self) -> String {
        let _ = self.child.kill();
        let status = match self.child.wait() {
            Ok(s) => describe(s),
            Err(e) => format!("cannot be reaped ({e})"),
        };
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if tail.is_empty() {
            status
        } else {
            format!("{status}; it said: {tail}")
        }
    }

    fn gone(&mut self, how: &str) -> Gone {
        // Give the worker a moment to finish dying so that its status says why.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(200) {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        let status = self.reap();
        let memory = self.memory_hint();
        Gone(format!("the engine worker died ({how}): {status}{memory}"))
    }

    fn timed_out(&mut self) -> Gone {
        let status = self.reap();
        Gone(format!(
            "the model ran past the engine's time limit; its worker was killed ({status})"
        ))
    }

    fn lying(&mut self, e: wire::Malformed) -> Gone {
        let status = self.reap();
        Gone(format!(
            "the engine worker sent garbage ({e}); killed ({status})"
        ))
    }

    fn memory_hint(&self) -> String {
        format!("; its memory limit is {} MiB", self.memory_mib)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker that can serve no more: why.
#[derive(Debug)]
struct Gone(String);

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(9)) => "killed (SIGKILL)".into(),
        (None, Some(6)) => {
            "aborted (SIGABRT: an assertion failed, or an allocation went over its memory limit)"
                .into()
        }
        (None, Some(11)) => "crashed (SIGSEGV)".into(),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "ended".into(),
    }
}

/// Logs the worker's stderr at debug level and keeps its last line for error messages.
fn forward_stderr(stderr: std::process::ChildStderr, pid: u32, tail: Arc<Mutex<String>>) {
    let spawned = std::thread::Builder::new()
        .name("engine-stderr".into())
        .spawn(move || {
            use std::io::BufRead;
            let reader = std::io::BufReader::new(stderr.take(1 << 24));
            for line in reader.lines() {
                let Ok(line) = line else { break };
                tracing::debug!(pid, "engine worker: {line}");
                // The lines that say why, not the hints after them.
                let line: String = line.trim().chars().take(300).collect();
                if !line.is_empty() && !line.starts_with("note: run with") {
                    *tail.lock().unwrap_or_else(PoisonError::into_inner) = line;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot read the engine worker's stderr: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(polls: bool) -> ReplyClock {
        ReplyClock {
            mean_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            // As if the last reply came a second ago.
            epoch: Instant::now() - Duration::from_secs(1),
            polls,
            cores: 2,
        }
    }

    /// A call sent 10 ms from now: after an idle gap, whatever the test recorded.
    fn later() -> Instant {
        Instant::now() + Duration::from_millis(10)
    }

    #[test]
    fn a_call_polls_around_the_mean_reply_time_once_there_is_one() {
        let c = clock(true);
        assert_eq!(c.window(later()), None, "no run yet: sleep");
        c.record(Duration::from_millis(4));
        let (from, to) = c.window(later()).expect("a window");
        assert_eq!(
            (from, to),
            (Duration::from_micros(3500), Duration::from_micros(4500))
        );
        // Short runs poll a quarter of the mean each side.
        let c = clock(true);
        c.record(Duration::from_micros(40));
        assert_eq!(
            c.window(later()),
            Some((Duration::from_micros(30), Duration::from_micros(50)))
        );
        // Workers that take every core: never.
        let c = clock(false);
        c.record(Duration::from_millis(4));
        assert_eq!(c.window(later()), None);
    }

    #[test]
    fn calls_close_behind_a_reply_do_not_poll() {
        let c = clock(true);
        c.record(Duration::from_millis(4));
        assert_eq!(c.window(Instant::now()), None);
        assert!(c.window(Instant::now() + IDLE_BEFORE_POLL).is_some());
    }

    #[test]
    fn one_stall_moves_the_mean_little() {
        let c = clock(true);
        c.record(Duration::from_millis(4));
        c.record(Duration::from_secs(30));
        // Counted as twice the mean: 4 - 4/8 + 8/8 = 4.5 ms.
        assert_eq!(c.mean_ns.load(Ordering::Relaxed), 4_500_000);
        for _ in 0..40 {
            c.record(Duration::from_millis(4));
        }
        let mean = c.mean_ns.load(Ordering::Relaxed);
        assert!((4_000_000..4_010_000).contains(&mean), "{mean}");
    }

    #[test]
    fn the_processor_is_field_39_of_stat_whatever_the_command_name() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 \
                    27 28 29 30 31 32 33 34 35 1 0 0";
        assert_eq!(processor(&format!("4242 (moxnet) {tail}")), Some(1));
        assert_eq!(processor(&format!("4242 (a) b (c) {tail}")), Some(1));
        let own = std::fs::read_to_string("/proc/self/stat").expect("stat");
        assert!(processor(&own).is_some(), "{own}");
        assert_eq!(processor("4242 (moxnet) S 1 2"), None);
        assert_eq!(processor("no parenthesis"), None);
    }

    #[test]
    fn runnable_threads_come_from_the_fourth_field_of_loadavg() {
        assert_eq!(runnable("0.41 0.82 0.94 1/83 21240\n"), Some(1));
        assert_eq!(runnable("0.41 0.82 0.94 17/1083 21240"), Some(17));
        assert_eq!(runnable(""), None);
        assert_eq!(runnable("0.41 0.82 0.94 x/83 1"), None);
    }
}
