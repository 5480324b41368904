//! The attack suite: real attackers against real nodes **while an honest workload runs**.
//!
//! Three honest nodes: a publisher (holds the models), a server (serves compute calls) and a
//! client. The honest workload is a round of fetches (the client fetches models it has never
//! had from the publisher) and remote calls (the client calls the echo model, which runs on the
//! server) at once. Two baseline rounds run with no attack (pooled); then each attack runs its
//! own round on the same nodes. Fetch times are the client node's own (`elapsed_ms`). Each
//! report says whether every honest node still answers, whether all honest work completed, and
//! the honest throughput and p99 latency under attack divided by the baseline's. An attack
//! that was only slow is measured once more (at most `RETRIES` times a run), against two
//! baseline rounds measured just before the second try.
//!
//! Attackers are processes of this crate or tasks in this process that speak the wire protocol
//! with the `net` crate (or raw libp2p): nothing in the product is switched into a test mode.
//! Spammers send at a fixed pace ([`SPAM_PER_SEC`] messages a second), and in-process
//! attackers run at the lowest CPU priority (`lowest_priority`): on a small machine an
//! attacker sending as fast as it can, or competing with the honest nodes for the cores, would
//! mostly measure its own CPU use, which a real attacker spends on its own machine.
//!
//! ```text
//! cargo build --release -p node -p testnet
//! cargo run --release -p testnet -- attack [--mib 32] [--fetches 6] [--call-secs 15] [--call-rate 100] [--only NAME]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use net::libp2p::{Multiaddr, PeerId};
use net::{NetConfig, Provider};
use protocol::compute::{ComputeOffer, InferCall, InferReply, InferRequest, InferStatus};
use protocol::wire::BlobRequest;
use protocol::{BlobHash, Manifest, ModelId, NodeId, Object, SecretKey};

use crate::{Daemon, Node, Testnet, write_random_file};

/// How big the honest workload and the attacks are.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// MiB per fetched model.
    pub mib: u64,
    /// Models the client fetches per round.
    pub fetches: usize,
    /// Seconds the client keeps calling per round (at least; until its fetches are done).
    pub call_secs: u64,
    /// Threads making those calls.
    pub callers: usize,
    /// Calls a second the client asks for, in all (an open-loop load: what users ask of the
    /// network, whether or not it keeps up). Honest throughput is the rate actually answered.
    pub call_rate: u64,
    /// Attackers' fresh identities (connection flood, call flood, offer spam use multiples).
    pub identities: usize,
    /// Manifests the catalogue spammer offers.
    pub spam_manifests: usize,
    /// Functions in the slow-to-compile guest (2,000 additions each).
    pub compile_functions: u32,
    /// The honest nodes' `max_connections` (`None`: the default, 40); under `identities`, the
    /// connection flood fills it and newcomers get in only if idle connections give way.
    pub max_connections: Option<u32>,
}

impl Sizes {
    /// The size `cargo run -p testnet -- attack` uses.
    pub fn full() -> Sizes {
        Sizes {
            mib: 32,
            fetches: 6,
            call_secs: 15,
            callers: 4,
            call_rate: 100,
            identities: 300,
            spam_manifests: 5_000,
            compile_functions: 2_000,
            max_connections: None,
        }
    }

    /// The size the e2e suite uses.
    pub fn ci() -> Sizes {
        Sizes {
            mib: 16,
            fetches: 3,
            call_secs: 5,
            callers: 4,
            call_rate: 50,
            identities: 80,
            spam_manifests: 1_500,
            compile_functions: 500,
            max_connections: None,
        }
    }
}

/// What one round of honest work measured.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Bytes fetched.
    pub bytes: u64,
    /// Time the fetching node spent on all fetches, as it measured them (`elapsed_ms`): free
    /// of the command line's start-up and progress polling.
    pub fetch_time: Duration,
    /// Calls answered with the right output.
    pub calls_ok: usize,
    /// Wall time of all calls.
    pub call_time: Duration,
    /// Every call's latency.
    pub latencies: Vec<Duration>,
    /// Honest operations that failed, with why.
    pub failures: Vec<String>,
}

impl Round {
    /// Two rounds as one: their work and time added up.
    fn pooled(mut self, other: Round) -> Round {
        self.bytes += other.bytes;
        self.fetch_time += other.fetch_time;
        self.calls_ok += other.calls_ok;
        self.call_time += other.call_time;
        self.latencies.extend(other.latencies);
        self.failures.extend(other.failures);
        self
    }

    fn fetch_rate(&self) -> f64 {
        self.bytes as f64 / self.fetch_time.as_secs_f64().max(1e-9)
    }

    fn call_rate(&self) -> f64 {
        self.calls_ok as f64 / self.call_time.as_secs_f64().max(1e-9)
    }

    /// The 99th percentile call latency.
    pub fn p99(&self) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        crate::scenario::percentile(&l, 99)
            .copied()
            .unwrap_or(Duration::ZERO)
    }
}

/// What one attack measured, against the baseline.
#[derive(Debug, Clone)]
pub struct AttackReport {
    /// The attack.
    pub name: &'static str,
    /// What the attacker did (its own count of what it sent).
    pub attacker: String,
    /// Honest nodes that crashed or stopped answering.
    pub down: Vec<String>,
    /// The honest round under attack.
    pub round: Round,
    /// Fetch throughput under attack / baseline.
    pub fetch_ratio: f64,
    /// Call throughput under attack / baseline.
    pub call_ratio: f64,
    /// p99 call latency under attack / baseline (higher is worse).
    pub p99_ratio: f64,
    /// Checks specific to the attack that failed.
    pub problems: Vec<String>,
    /// The first measurement, when it was only slow and so was taken again against a fresh
    /// baseline (see [`run`]).
    pub first_try: Option<(f64, f64)>,
    /// The fresh baseline's fetch throughput (MB/s) a second try was compared with.
    pub fresh_baseline: Option<f64>,
}

impl AttackReport {
    /// The goal: no honest node down, all honest work done, throughput at least half.
    pub fn passed(&self) -> bool {
        self.only_slow() == Some(false)
    }

    /// `None` when something broke (a node down, an honest failure, a failed check);
    /// otherwise whether throughput fell under half of the baseline.
    fn only_slow(&self) -> Option<bool> {
        let broke =
            !self.down.is_empty() || !self.round.failures.is_empty() || !self.problems.is_empty();
        (!broke).then_some(self.fetch_ratio < 0.5 || self.call_ratio < 0.5)
    }
}

impl fmt::Display for AttackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<18} fetch x{:.2}  calls x{:.2}  p99 x{:.2}  ({} calls ok, {} failures, {} down)  attacker: {}",
            self.name,
            self.fetch_ratio,
            self.call_ratio,
            self.p99_ratio,
            self.round.calls_ok,
            self.round.failures.len(),
            self.down.len(),
            self.attacker
        )?;
        if let Some((fetch, calls)) = self.first_try {
            let fresh = self
                .fresh_baseline
                .map_or_else(String::new, |r| format!(" (fetch {r:.1} MB/s)"));
            write!(
                f,
                "\n      measured again against a fresh baseline{fresh}: the first try gave fetch x{fetch:.2}  calls x{calls:.2}"
            )?;
        }
        for d in &self.down {
            write!(f, "\n      down: {d}")?;
        }
        for p in self.round.failures.iter().take(5) {
            write!(f, "\n      honest failure: {p}")?;
        }
        for p in &self.problems {
            write!(f, "\n      problem: {p}")?;
        }
        Ok(())
    }
}

/// Every attack, by name.
pub const ATTACKS: [&str; 11] = [
    "size-lies",
    "idle-streams",
    "connection-flood",
    "catalogue-spam",
    "gossip-spam",
    "invalid-gossip",
    "offer-spam",
    "call-flood",
    "replay-after-restart",
    "gc-during-fetch",
    "huge-guest",
];

/// The honest nodes' per-author catalogue quota (a small node's choice; the default is 1,000),
/// so that the CI-sized spam exceeds it.
const MAX_PER_AUTHOR: usize = 100;
/// Every honest node's catalogue quota.
const CATALOG: &str = "[catalog]\nmax_per_author = 100\n";
/// How many messages a second each spammer sends (gossip, announcements, offers).
pub const SPAM_PER_SEC: u64 = 200;

/// Sleeps so that message `sent` (counting from `start`) goes out on the [`SPAM_PER_SEC`]
/// pace.
async fn pace(start: Instant, sent: u64) {
    let due = start + Duration::from_micros(sent * 1_000_000 / SPAM_PER_SEC);
    tokio::time::sleep_until(due.into()).await;
}

/// Honest config for the server: serves calls (one at a time: it shares this machine's two
/// cores with the other nodes and the attackers), offers every second.
const SERVER: &str = "[inference]\nmax_concurrent = 1\nmax_queued = 32\n\n\
                      [compute]\nserve = true\noffer_interval_secs = 1\nper_peer_concurrent = 8\n";
/// Honest config for the client.
const CLIENT: &str = "[compute]\ncall_timeout_secs = 30\n";

/// The honest network.
pub struct Honest {
    net: Testnet,
    publisher: Node,
    server: Node,
    client: Node,
    p: Option<Daemon>,
    s: Option<Daemon>,
    c: Option<Daemon>,
    /// Packages of the models to fetch, and their ids on the publisher.
    models: Vec<(PathBuf, String)>,
    next_model: usize,
    /// How many times the catalogue spammer ran (a slow round runs it again, with a fresh
    /// catalogue: the quota check allows for each).
    spam_runs: usize,
    /// The echo model.
    echo: String,
    sizes: Sizes,
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    // Without randomness, a counter still gives distinct identities.
    if getrandom::fill(&mut seed).is_err() {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        seed[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    seed
}

impl Honest {
    /// Starts the three honest nodes, publishes a model per fetch of every round (`rounds`) and
    /// the echo model, and waits until the client knows them and has the server's offer.
    pub fn start(sizes: Sizes, rounds: usize) -> Result<Honest> {
        let net = Testnet::new()?;
        let (publisher, server, client) = (
            net.home("publisher"),
            net.home("server"),
            net.home("client"),
        );
        for n in [&publisher, &server, &client] {
            n.ok(&["init"]);
        }
        // Top-level keys first: TOML puts every key after a section header in that section.
        let top = sizes.max_connections.map_or_else(String::new, |n| {
            format!(
                "target_connections = {}\nmax_connections = {n}\n",
                n * 2 / 3
            )
        });
        std::fs::write(
            publisher.home.join("config.toml"),
            format!("{top}{CATALOG}"),
        )?;
        std::fs::write(
            server.home.join("config.toml"),
            format!("{top}{SERVER}\n{CATALOG}"),
        )?;
        std::fs::write(
            client.home.join("config.toml"),
            format!("{top}{CLIENT}\n{CATALOG}"),
        )?;
        let mut models = Vec::new();
        for i in 0..sizes.fetches * rounds {
            let dir = net.path().join(format!("pkg-{i}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("moxnet.toml"),
                format!("[package]\nname = \"honest-{i}\"\nversion = \"1\"\n"),
            )?;
            write_random_file(&dir.join("weights.bin"), sizes.mib << 20, 1000 + i as u64)?;
            let id = publisher.ok(&["publish", path_str(&dir)?]);
            models.push((dir, id));
        }
        let echo_pkg = crate::echo_package(net.path())?;
        let echo = publisher.ok(&["publish", path_str(&echo_pkg)?]);
        // The packages' source files (a GiB or more, written without fsync; the store fsyncs
        // its own copies) would otherwise be written back by the kernel some 30 s from now,
        // in the middle of the first rounds, halving their fetch throughput: flush them first.
        let synced = std::process::Command::new("sync").status();
        if !synced.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("sync failed ({synced:?}): early rounds may meet the kernel's writeback");
        }
        let p = publisher.start(&[]);
        let s = server.start(&[p.addr()]);
        let c = client.start(&[p.addr(), s.addr()]);
        let honest = Honest {
            net,
            publisher,
            server,
            client,
            p: Some(p),
            s: Some(s),
            c: Some(c),
            models,
            next_model: 0,
            spam_runs: 0,
            echo,
            sizes,
        };
        honest.server.ok(&["fetch", &honest.echo]);
        honest.wait_ready()?;
        Ok(honest)
    }

    fn daemon(d: &Option<Daemon>) -> Result<&Daemon> {
        d.as_ref().context("an honest node is not running")
    }

    /// Waits until the client knows every model and has the server's offer for the echo model.
    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let known = self.client.ok(&["models"]);
            if self.models.iter().all(|(_, id)| known.contains(id)) && known.contains(&self.echo) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the client never learnt the models"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The server's offer (an attacker's may be there too).
        let server = &Self::daemon(&self.s)?.peer_id;
        loop {
            let (_, v) = Self::daemon(&self.c)?.api_get("/api/v1/offers")?;
            let heard = v["offers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["peer_id"].as_str() == Some(server.as_str()));
            if heard {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the client never heard the server's offer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call_body() -> String {
        serde_json::json!({
            "inputs": [{ "name": "mode", "datatype": "BYTES", "shape": [1], "data": ["echo"] }]
        })
        .to_string()
    }

    /// One round of honest work: `fetches` fresh models and `calls` remote calls, at once.
    /// `during` runs alongside (e.g. a gc loop) until the round ends.
    pub fn round(&mut self, during: Option<&(dyn Fn(&AtomicBool) + Sync)>) -> Result<Round> {
        let first = self.next_model;
        self.next_model += self.sizes.fetches;
        ensure!(self.next_model <= self.models.len(), "no fresh models left");
        let ids: Vec<String> = self.models[first..self.next_model]
            .iter()
            .map(|(_, id)| id.clone())
            .collect();
        let api = Self::daemon(&self.c)?.api.clone();
        let path = format!("/v2/models/{}/infer", self.echo);
        let body = Self::call_body();
        let client = &self.client;
        let sizes = &self.sizes;
        let done = AtomicBool::new(false);
        let mut round = Round::default();
        let fetching = AtomicBool::new(true);
        let min_end = Instant::now() + Duration::from_secs(sizes.call_secs);
        std::thread::scope(|s| {
            let fetcher = s.spawn(|| {
                let mut time = Duration::ZERO;
                let mut bytes = 0;
                let mut failures = Vec::new();
                for id in &ids {
                    let out = client.run(&["--json", "fetch", id]);
                    let text = String::from_utf8_lossy(&out.stdout);
                    let took = serde_json::from_str::<serde_json::Value>(text.trim())
                        .ok()
                        .filter(|v| out.status.success() && v["state"] == "complete")
                        .and_then(|v| v["elapsed_ms"].as_u64());
                    if let Some(ms) = took {
                        bytes += sizes.mib << 20;
                        time += Duration::from_millis(ms);
                    } else {
                        failures.push(format!(
                            "fetch {id}: {} {}",
                            text.trim(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                }
                fetching.store(false, Ordering::SeqCst);
                (bytes, time, failures)
            });
            let call_start = Instant::now();
            let callers: Vec<_> = (0..sizes.callers)
                .map(|caller| {
                    let (api, path, body, fetching) = (&api, &path, &body, &fetching);
                    s.spawn(move || {
                        let mut lat = Vec::new();
                        let mut failures = Vec::new();
                        // Each caller's share of the rate, its calls spread evenly (a late
                        // call goes at once; nothing is skipped).
                        let every = Duration::from_micros(
                            1_000_000 * sizes.callers.max(1) as u64 / sizes.call_rate.max(1),
                        );
                        let mut due =
                            call_start + every * caller as u32 / sizes.callers.max(1) as u32;
                        while fetching.load(Ordering::SeqCst) || Instant::now() < min_end {
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            due += every;
                            let t = Instant::now();
                            match crate::http(
                                api,
                                "POST",
                                path,
                                Some(body),
                                Duration::from_secs(120),
                            ) {
                                Ok((200, v))
                                    if v["outputs"][0]["data"] == serde_json::json!(["echo"]) =>
                                {
                                    lat.push(t.elapsed())
                                }
                                Ok((status, v)) => {
                                    failures.push(format!("call: HTTP {status} {v}"))
                                }
                                Err(e) => failures.push(format!("call: {e:#}")),
                            }
                        }
                        (lat, failures)
                    })
                })
                .collect();
            let during_thread = during.map(|f| {
                let done = &done;
                s.spawn(move || f(done))
            });
            for c in callers {
                match c.join() {
                    Ok((lat, failures)) => {
                        round.calls_ok += lat.len();
                        round.latencies.extend(lat);
                        round.failures.extend(failures);
                    }
                    Err(_) => round.failures.push("a caller thread panicked".into()),
                }
            }
            round.call_time = call_start.elapsed();
            match fetcher.join() {
                Ok((bytes, time, failures)) => {
                    round.bytes = bytes;
                    round.fetch_time = time;
                    round.failures.extend(failures);
                }
                Err(_) => round.failures.push("the fetch thread panicked".into()),
            }
            done.store(true, Ordering::SeqCst);
            if let Some(t) = during_thread
                && t.join().is_err()
            {
                round.failures.push("the side thread panicked".into());
            }
        });
        if self.client.json(&["verify"])["ok"] != true {
            round
                .failures
                .push("the client's store does not verify".into());
        }
        Ok(round)
    }

    /// Waits (at most 2 minutes) until the honest nodes have settled after an attack: their
    /// catalogues stopped growing (manifests an attacker sent are stored in the background, at a
    /// bounded pace), so that the next attack is measured on its own.
    pub fn settle(&self) {
        let models = |d: &Option<Daemon>| -> u64 {
            d.as_ref()
                .and_then(|d| {
                    crate::http_text(
                        &d.api,
                        "GET",
                        "/metrics",
                        &[],
                        None,
                        Duration::from_secs(10),
                    )
                    .ok()
                })
                .and_then(|(_, text)| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("moxnet_models ")?.trim().parse::<f64>().ok())
                })
                .map_or(0, |v| v as u64)
        };
        let count = || [models(&self.p), models(&self.s), models(&self.c)];
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut last, mut steady) = (count(), 0);
        while steady < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            let now = count();
            steady = if now == last { steady + 1 } else { 0 };
            last = now;
        }
    }

    /// Honest nodes that exited or do not answer `/v2/health/live`.
    pub fn down(&mut self) -> Vec<String> {
        let mut down = Vec::new();
        for (name, d) in [
            ("publisher", &mut self.p),
            ("server", &mut self.s),
            ("client", &mut self.c),
        ] {
            let Some(d) = d.as_mut() else {
                down.push(format!("{name}: not running"));
                continue;
            };
            if let Ok(Some(status)) = d.child.try_wait() {
                down.push(format!("{name}: exited ({status})"));
                continue;
            }
            match crate::http(
                &d.api,
                "GET",
                "/v2/health/live",
                None,
                Duration::from_secs(10),
            ) {
                Ok((200, _)) => {}
                Ok((status, v)) => down.push(format!("{name}: live check HTTP {status} {v}")),
                Err(e) => down.push(format!("{name}: live check: {e:#}")),
            }
        }
        down
    }

    fn target(d: &Option<Daemon>) -> Result<Target> {
        let d = Self::daemon(d)?;
        Ok(Target {
            peer: d.peer_id.parse().context("a daemon's peer id")?,
            addr: d.addr().parse().context("a daemon's address")?,
        })
    }

    /// The weights blob of a model not fetched yet (the idle-stream attacker asks for it).
    /// A node that was never part of the network joins through the publisher and fetches a
    /// model (under a connection flood: the publisher is over its connection watermark, which
    /// its count of connections pruned shows).
    fn newcomer_fetches(&self) -> Result<()> {
        let pruned = || -> Result<u64> {
            let (_, text) = crate::http_text(
                &Self::daemon(&self.p)?.api,
                "GET",
                "/metrics",
                &[],
                None,
                Duration::from_secs(10),
            )?;
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("moxnet_net_connections_pruned_total ")?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .map(|v| v as u64)
                .context("no moxnet_net_connections_pruned_total in the publisher's metrics")
        };
        ensure!(
            pruned()? > 0,
            "the flood never took the publisher over its connection watermark: nothing was tested"
        );
        let newcomer = self.net.home(&format!("newcomer-{}", now_ms()));
        newcomer.ok(&["init"]);
        std::fs::write(newcomer.home.join("config.toml"), CATALOG)?;
        let daemon = newcomer.start(&[Self::daemon(&self.p)?.addr()]);
        let (_, model) = self.models.first().context("no models")?;
        let fetched = newcomer.run(&["fetch", model]);
        let status = daemon.stop();
        ensure!(
            fetched.status.success(),
            "its fetch failed: {}",
            String::from_utf8_lossy(&fetched.stderr).trim()
        );
        ensure!(status.success(), "it did not stop cleanly: {status}");
        Ok(())
    }

    fn some_blob(&self) -> Result<(BlobHash, u64)> {
        let (dir, _) = self.models.last().context("no models")?;
        let bytes = std::fs::read(dir.join("weights.bin"))?;
        Ok((BlobHash::of(&bytes), bytes.len() as u64))
    }
}

/// A peer to attack.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) peer: PeerId,
    pub(crate) addr: Multiaddr,
}

impl Target {
    pub(crate) fn node(&self) -> Result<NodeId> {
        net::node_id_of(&self.peer).context("a peer id without an ed25519 key")
    }
}

/// What an attacker task and its runner share.
#[derive(Debug, Default)]
struct Flags {
    stop: AtomicBool,
    ready: AtomicBool,
}

impl Flags {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The attacker finished setting up (identities made, connections open): the honest round
    /// may start.
    fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

/// Puts the calling thread at the lowest CPU priority (nice 19; threads it starts inherit it).
///
/// The attackers share this machine's cores with the honest nodes; a real attacker spends its
/// own machine's CPU. At the lowest priority an attacker gets every cycle the honest nodes leave
/// idle and takes none they need, so what an attack measures is what it does to the nodes, not
/// the attacker's own client-side cost (30 libp2p swarms making 200 calls a second take more than
/// a core here). What the attacker achieved is in its report (calls a second, messages sent).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        eprintln!("      (an attacker thread keeps its CPU priority: {e})");
    }
}

/// An attack under way: tasks on their own runtime at the lowest CPU priority
/// (`lowest_priority`), stopped and joined on [`Running::stop`]; and processes (killed).
struct Running {
    stop: Arc<Flags>,
    thread: Option<std::thread::JoinHandle<Result<String>>>,
    /// A call the attack made, whose answer is part of its report.
    waiting: Option<std::thread::JoinHandle<Result<(u16, serde_json::Value)>>>,
    liar: Option<crate::Liar>,
    summary: String,
}

impl Running {
    /// Runs `attack` on a fresh runtime in a thread until stopped; it returns what it did.
    fn spawn<F, Fut>(attack: F) -> Running
    where
        F: FnOnce(Arc<Flags>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<String>> + Send + 'static,
    {
        let stop = Arc::new(Flags::default());
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            lowest_priority();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .on_thread_start(lowest_priority)
                .enable_all()
                .build()
                .context("the attacker's runtime")?;
            let result = runtime.block_on(attack(flag));
            runtime.shutdown_timeout(Duration::from_secs(2));
            result
        });
        Running {
            stop,
            thread: Some(thread),
            waiting: None,
            liar: None,
            summary: String::new(),
        }
    }

    /// An attack that is a process (a `liar`), ready once started.
    fn process(liar: crate::Liar, summary: impl Into<String>) -> Running {
        Running {
            liar: Some(liar),
            ..Running::none(summary)
        }
    }

    /// An attack with nothing left running (done at its start), ready at once.
    fn none(summary: impl Into<String>) -> Running {
        Running {
            stop: Arc::new(Flags {
                stop: AtomicBool::new(false),
                ready: AtomicBool::new(true),
            }),
            thread: None,
            waiting: None,
            liar: None,
            summary: summary.into(),
        }
    }

    /// Waits (at most 2 minutes) until the attacker is set up, so that its set-up work is not
    /// measured as its attack.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.stop.ready.load(Ordering::SeqCst)
            && Instant::now() < deadline
            && self.thread.as_ref().is_some_and(|t| !t.is_finished())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> String {
        self.stop.stop.store(true, Ordering::SeqCst);
        if let Some(liar) = self.liar.take() {
            liar.kill();
        }
        if let Some(call) = self.waiting.take() {
            let answer = match call.join() {
                Ok(Ok((status, v))) => format!("HTTP {status} {}", v["error"]),
                Ok(Err(e)) => format!("no answer: {e:#}"),
                Err(_) => "the call panicked".into(),
            };
            return format!("{}; its call: {answer}", self.summary);
        }
        match self.thread.take().map(|t| t.join()) {
            None => self.summary,
            Some(Ok(Ok(s))) => s,
            Some(Ok(Err(e))) => format!("the attacker failed: {e:#}"),
            Some(Err(_)) => "the attacker panicked".into(),
        }
    }
}

/// A provider with nothing to serve but, optionally, a catalogue of spam.
struct Spammer {
    catalogue: BTreeMap<ModelId, Vec<u8>>,
}

impl Provider for Spammer {
    fn blob_size(&self, _: BlobHash) -> Option<u64> {
        None
    }

    fn serve(
        &self,
        _: BlobHash,
        _: &[(u64, u64)],
        _: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        Err(std::io::Error::other("nothing here"))
    }

    fn catalog_ids(&self, after: Option<ModelId>, max: usize) -> Vec<ModelId> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.catalogue
            .range((start, Bound::Unbounded))
            .take(max)
            .map(|(id, _)| *id)
            .collect()
    }

    fn manifest(&self, id: ModelId) -> Option<Vec<u8>> {
        self.catalogue.get(&id).cloned()
    }
}

/// A moxnet peer with a fresh identity (or `seed`), connected to `targets`. A light node: it
/// does not sync the catalogues of the peers it connects to (an attacker would not spend its
/// CPU verifying them; the catalogue spammer's victims sync *its* catalogue all the same).
pub(crate) async fn peer(
    seed: Option<[u8; 32]>,
    catalogue: BTreeMap<ModelId, Vec<u8>>,
    targets: &[Target],
) -> Result<net::Client> {
    let config = NetConfig {
        seed: seed.unwrap_or_else(random_seed),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        light: true,
        ..NetConfig::default()
    };
    let (client, mut events) = net::spawn(config, Arc::new(Spammer { catalogue }))
        .await
        .context("an attacker's network")?;
    // Drain its events (it answers nothing: calls to it fail).
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    for t in targets {
        client
            .dial(t.addr.clone())
            .await
            .with_context(|| format!("dialling {}", t.peer))?;
    }
    Ok(client)
}

/// The attacker is set up: says so, then lets `tasks` run until it is told to stop, and waits
/// for them to end.
async fn hold(stop: &Flags, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.set_ready();
    until(stop).await;
    for t in tasks {
        let _ = t.await;
    }
}

async fn until(stop: &Flags) {
    while !stop.stopped() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peers opening blob streams for a real blob and never reading them, opening new ones as
/// the provider evicts theirs.
async fn idle_streams(
    stop: Arc<Flags>,
    target: Target,
    blob: (BlobHash, u64),
    peers: usize,
) -> Result<String> {
    let request = BlobRequest {
        hash: blob.0,
        groups: vec![(0, store::groups(blob.1).min(64))],
    };
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..peers {
        let client = peer(None, BTreeMap::new(), std::slice::from_ref(&target)).await?;
        let (stop, opened, request, to) =
            (stop.clone(), opened.clone(), request.clone(), target.peer);
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while !stop.stopped() {
                if let Ok(r) = client.request_blob(to, &request).await {
                    opened.fetch_add(1, Ordering::Relaxed);
                    held.push(r);
                    held.truncate(64);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    hold(&stop, tasks).await;
    Ok(format!(
        "{peers} peers held {} idle blob streams",
        opened.load(Ordering::Relaxed)
    ))
}

/// Fresh identities connecting to the targets and holding the connections.
async fn connection_flood(stop: Arc<Flags>, targets: Vec<Target>, ids: usize) -> Result<String> {
    use net::libp2p::{SwarmBuilder, futures::StreamExt, noise, ping, tcp, yamux};
    let connected = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..ids {
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| ping::Behaviour::default())?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        let (stop, connected, refused) = (stop.clone(), connected.clone(), refused.clone());
        let targets = targets.clone();
        tasks.push(tokio::spawn(async move {
            use net::libp2p::swarm::SwarmEvent;
            // Every identity keeps trying to hold a connection to each target: one refused
            // or closed dials again a second later.
            let mut next_dial = Instant::now();
            while !stop.stopped() {
                if Instant::now() >= next_dial {
                    for t in &targets {
                        if !swarm.is_connected(&t.peer) {
                            let _ = swarm.dial(t.addr.clone());
                        }
                    }
                    next_dial = Instant::now() + Duration::from_secs(1);
                }
                match tokio::time::timeout(Duration::from_millis(200), swarm.select_next_some())
                    .await
                {
                    Ok(SwarmEvent::ConnectionEstablished { .. }) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(
                        SwarmEvent::ConnectionClosed { .. }
                        | SwarmEvent::OutgoingConnectionError { .. },
                    ) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
    }
    hold(&stop, tasks).await;
    Ok(format!(
        "{ids} identities: {} connections made, {} refused or closed",
        connected.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    ))
}

/// A catalogue of `n` signed manifests: half from one author, half from fresh ones.
fn spam_catalogue(n: usize) -> BTreeMap<ModelId, Vec<u8>> {
    let one = random_seed();
    (0..n)
        .map(|i| {
            let key = if i % 2 == 0 {
                SecretKey::from_seed(&one)
            } else {
                SecretKey::from_seed(&random_seed())
            };
            let envelope = key
                .sign(Manifest {
                    name: format!("spam-{i}"),
                    version: "1".into(),
                    description: "x".repeat(4096),
                    ..Manifest::default()
                })
                .to_bytes();
            (protocol::model_id(&envelope), envelope)
        })
        .collect()
}

/// A peer whose catalogue is spam, connected to every target (each syncs it), and which
/// gossips the same manifests.
async fn catalogue_spam(stop: Arc<Flags>, targets: Vec<Target>, n: usize) -> Result<String> {
    let catalogue = spam_catalogue(n);
    let envelopes: Vec<Vec<u8>> = catalogue.values().cloned().collect();
    let client = peer(None, catalogue, &targets).await?;
    stop.set_ready();
    let mut sent = 0u64;
    let start = Instant::now();
    for e in envelopes.iter().cycle() {
        if stop.stopped() {
            break;
        }
        let _ = client.announce(e.clone()).await;
        sent += 1;
        pace(start, sent).await;
    }
    Ok(format!(
        "a catalogue of {n} manifests; {sent} announced on gossip"
    ))
}

/// Gossip as fast as the attacker can: valid but useless manifests (`valid`), or bytes that
/// are no signed object at all and offers with broken signatures.
async fn gossip_spam(stop: Arc<Flags>, targets: Vec<Target>, valid: bool) -> Result<String> {
    let client = peer(None, BTreeMap::new(), &targets).await?;
    let key = SecretKey::from_seed(&random_seed());
    stop.set_ready();
    let mut sent = 0u64;
    let start = Instant::now();
    while !stop.stopped() {
        let (announce, offer) = if valid {
            let m = key.sign(Manifest {
                name: format!("gossip-{sent}"),
                version: "1".into(),
                ..Manifest::default()
            });
            (m.to_bytes(), Vec::new())
        } else {
            let mut garbage = vec![0u8; 512];
            let _ = getrandom::fill(&mut garbage);
            let mut forged = key
                .sign(ComputeOffer {
                    issued_ms: now_ms(),
                    expires_ms: now_ms() + 60_000,
                    ..ComputeOffer::default()
                })
                .to_bytes();
            if let Some(last) = forged.last_mut() {
                *last ^= 1;
            }
            (garbage, forged)
        };
        let _ = client.announce(announce).await;
        if !offer.is_empty() {
            let _ = client.announce_offer(offer).await;
        }
        sent += 1;
        pace(start, sent).await;
    }
    Ok(format!(
        "{sent} {} messages",
        if valid { "valid" } else { "invalid" }
    ))
}

/// Signed offers for `model` from `ids` fresh identities: free, fast, at addresses where
/// nothing listens, re-announced in turn.
async fn offer_spam(
    stop: Arc<Flags>,
    targets: Vec<Target>,
    model: ModelId,
    ids: usize,
) -> Result<String> {
    let client = peer(None, BTreeMap::new(), &targets).await?;
    let keys: Vec<SecretKey> = (0..ids)
        .map(|_| SecretKey::from_seed(&random_seed()))
        .collect();
    stop.set_ready();
    let mut sent = 0u64;
    let start = Instant::now();
    while !stop.stopped() {
        for key in &keys {
            if stop.stopped() {
                break;
            }
            let peer = net::peer_id_of(&key.node_id()).context("a fresh key's peer id")?;
            let offer = key.sign(ComputeOffer {
                issued_ms: now_ms(),
                expires_ms: now_ms() + 120_000,
                cores: 64,
                memory_mib: 1 << 20,
                gpus: vec!["NVIDIA H200".into()],
                backends: vec!["wasm".into()],
                models: vec![model],
                max_concurrent: 64,
                price_per_mfuel: 0,
                addrs: vec![format!("/ip4/127.0.0.1/tcp/9/p2p/{peer}")],
                credit: protocol::credits::CreditTerms::default(),
                price_per_mtoken: None,
            });
            let _ = client.announce_offer(offer.to_bytes()).await;
            sent += 1;
            pace(start, sent).await;
        }
    }
    Ok(format!("{sent} offers from {ids} fresh identities"))
}

/// A signed call of the echo model on `provider`, from `key`, with no cheque.
pub(crate) fn echo_call(
    key: &SecretKey,
    model: ModelId,
    provider: NodeId,
    max_fuel: u64,
    max_price_per_mfuel: u64,
) -> Vec<u8> {
    let input = serde_json::to_vec(&serde_json::json!({
        "inputs": [{ "name": "mode", "datatype": "BYTES", "shape": [1], "data": ["echo"] }]
    }))
    .unwrap_or_default();
    let nonce = {
        let s = random_seed();
        let mut n = [0u8; 16];
        n.copy_from_slice(&s[..16]);
        n
    };
    let request = key.sign(InferRequest {
        model,
        input_hash: BlobHash::of(&input),
        max_fuel,
        max_price_per_mfuel,
        nonce,
        issued_ms: now_ms(),
        provider,
    });
    InferCall {
        request: request.to_bytes(),
        input,
        cheque: None,
    }
    .to_bytes()
}

/// Fresh identities each keeping 8 calls at once in flight on the server, [`SPAM_PER_SEC`]
/// calls a second in all (the server's slots, queue and per-caller limits are what is
/// contested, not this machine's CPU).
async fn call_flood(
    stop: Arc<Flags>,
    target: Target,
    model: ModelId,
    ids: usize,
) -> Result<String> {
    let provider = target.node()?;
    let (ok, busy, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    // Every identity connects first; the pace starts after (connecting takes seconds, and a
    // pace started before would send that backlog at once).
    let mut clients = Vec::new();
    for _ in 0..ids {
        let seed = random_seed();
        let client = peer(Some(seed), BTreeMap::new(), std::slice::from_ref(&target)).await?;
        clients.push((seed, client));
    }
    let (sent, start) = (Arc::new(AtomicU64::new(0)), Instant::now());
    let mut tasks = Vec::new();
    for (seed, client) in clients {
        for _ in 0..8 {
            let (stop, client, key, to) = (
                stop.clone(),
                client.clone(),
                SecretKey::from_seed(&seed),
                target.peer,
            );
            let (ok, busy, other) = (ok.clone(), busy.clone(), other.clone());
            let (sent, start) = (sent.clone(), start);
            tasks.push(tokio::spawn(async move {
                while !stop.stopped() {
                    pace(start, sent.fetch_add(1, Ordering::Relaxed)).await;
                    let call = echo_call(&key, model, provider, 1_000_000_000, 100);
                    let reply =
                        tokio::time::timeout(Duration::from_secs(10), client.infer(to, call)).await;
                    match reply
                        .ok()
                        .and_then(|r| r.ok())
                        .and_then(|b: Vec<u8>| InferReply::from_bytes(&b).ok())
                    {
                        Some(r) if r.status == InferStatus::Ok => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        Some(r) if r.status == InferStatus::Busy => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            other.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
    }
    hold(&stop, tasks).await;
    let (ok, busy, other) = (
        ok.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    Ok(format!(
        "{ids} identities: {} calls a second ({SPAM_PER_SEC} paced): {ok} run, {busy} answered busy, {other} refused or failed",
        ((ok + busy + other) as f64 / secs).round()
    ))
}

/// A call captured before the server restarts, sent again after: it must be refused.
fn replay_after_restart(honest: &mut Honest) -> Result<(Running, Vec<String>)> {
    let target = Honest::target(&honest.s)?;
    let model: ModelId = honest.echo.parse().context("the echo model id")?;
    let key = SecretKey::from_seed(&random_seed());
    let seed = key.seed();
    let call = echo_call(&key, model, target.node()?, 1_000_000_000, 100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let send = |target: Target, call: Vec<u8>| -> Result<InferReply> {
        runtime.block_on(async {
            let client = peer(Some(seed), BTreeMap::new(), std::slice::from_ref(&target)).await?;
            let bytes =
                tokio::time::timeout(Duration::from_secs(30), client.infer(target.peer, call))
                    .await
                    .context("no answer in 30 s")??;
            Ok(InferReply::from_bytes(&bytes)?)
        })
    };
    let mut problems = Vec::new();
    let first = send(target.clone(), call.clone())?;
    if first.status != InferStatus::Ok {
        problems.push(format!(
            "the original call was not run: {:?} {:?}",
            first.status, first.message
        ));
    }
    let again = send(target.clone(), call.clone())?;
    if again.status == InferStatus::Ok {
        problems.push("a replay before the restart ran again".into());
    }
    // Restart the server on the same home.
    let old = honest.s.take().context("the server is not running")?;
    let status = old.stop();
    ensure!(
        status.success(),
        "the server did not stop cleanly: {status}"
    );
    let p = Honest::daemon(&honest.p)?.addr().to_string();
    honest.s = Some(honest.server.start(&[&p]));
    let restarted = Honest::target(&honest.s)?;
    let replayed = send(restarted, call)?;
    if replayed.status == InferStatus::Ok {
        problems.push("a call replayed after the restart ran again".into());
    }
    drop(runtime);
    honest.wait_ready()?;
    Ok((
        Running::none(format!(
            "replay before restart: {:?}; after restart: {:?}",
            again.status, replayed.status
        )),
        problems,
    ))
}

/// Starts attack `name` against `honest`; returns it running and any problem found at once.
fn start(name: &str, honest: &mut Honest) -> Result<(Running, Vec<String>)> {
    let sizes = honest.sizes.clone();
    let p = Honest::target(&honest.p)?;
    let s = Honest::target(&honest.s)?;
    let c = Honest::target(&honest.c)?;
    let all = vec![p.clone(), s.clone(), c.clone()];
    let echo: ModelId = honest.echo.parse().context("the echo model id")?;
    let running = match name {
        "size-lies" => {
            // A liar holding the same weights, stating every size wrong; the client finds it
            // in the DHT as a provider of the blobs it fetches.
            let home = honest.net.home("size-liar");
            home.ok(&["init"]);
            for (dir, _) in &honest.models[honest.next_model..] {
                home.ok(&["publish", path_str(dir)?]);
            }
            let liar = home.start_lying_about_sizes(&[
                Honest::daemon(&honest.p)?.addr(),
                Honest::daemon(&honest.c)?.addr(),
            ]);
            Running::process(liar, "a provider of every blob, stating wrong sizes")
        }
        "idle-streams" => {
            let blob = honest.some_blob()?;
            Running::spawn(move |stop| idle_streams(stop, p, blob, 8))
        }
        "connection-flood" => {
            let ids = sizes.identities;
            Running::spawn(move |stop| connection_flood(stop, vec![p, s], ids))
        }
        "catalogue-spam" => {
            honest.spam_runs += 1;
            let n = sizes.spam_manifests;
            Running::spawn(move |stop| catalogue_spam(stop, all, n))
        }
        "gossip-spam" => Running::spawn(move |stop| gossip_spam(stop, all, true)),
        "invalid-gossip" => Running::spawn(move |stop| gossip_spam(stop, all, false)),
        "offer-spam" => {
            let ids = sizes.identities;
            Running::spawn(move |stop| offer_spam(stop, all, echo, ids))
        }
        "call-flood" => {
            let ids = (sizes.identities / 10).max(2);
            Running::spawn(move |stop| call_flood(stop, s, echo, ids))
        }
        "replay-after-restart" => return replay_after_restart(honest),
        "gc-during-fetch" => Running::none("moxnet gc on the client every second"),
        "huge-guest" => return huge_guest(honest),
        other => bail!("unknown attack {other:?}"),
    };
    Ok((running, Vec::new()))
}

/// A valid component whose one core module holds `functions` functions of `body` additions
/// each (about 11 bytes an addition): slow to compile for its size, and it implements nothing
/// (loading fails after compiling).
pub fn slow_to_compile(functions: u32, body: u32) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, Component, Function, FunctionSection, Instruction, Module, ModuleSection,
        TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut funcs = FunctionSection::new();
    let mut code = CodeSection::new();
    for f in 0..functions {
        funcs.function(0);
        let mut func = Function::new([(1, ValType::I32)]);
        for i in 0..body {
            func.instruction(&Instruction::LocalGet(0))
                .instruction(&Instruction::I32Const((i ^ f) as i32))
                .instruction(&Instruction::I32Mul)
                .instruction(&Instruction::LocalGet(1))
                .instruction(&Instruction::I32Add)
                .instruction(&Instruction::LocalSet(1));
        }
        func.instruction(&Instruction::LocalGet(1))
            .instruction(&Instruction::End);
        code.function(&func);
    }
    let mut module = Module::new();
    module.section(&types).section(&funcs).section(&code);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    component.finish()
}

/// A model whose guest is a valid component built to compile for long, published and then
/// called on the server through the client: the server compiles it (bounded in size, one
/// compile at a time, never holding up the loads and calls of other models) and refuses it,
/// and keeps serving honest calls meanwhile.
fn huge_guest(honest: &mut Honest) -> Result<(Running, Vec<String>)> {
    let dir = honest.net.path().join("huge-guest");
    std::fs::create_dir_all(&dir)?;
    let guest = slow_to_compile(honest.sizes.compile_functions, 2_000);
    std::fs::write(dir.join("guest.wasm"), &guest)?;
    std::fs::write(
        dir.join("moxnet.toml"),
        "[package]\nname = \"huge-guest\"\nversion = \"1\"\n\n[runtime]\nkind = \"wasm\"\nentry = \"guest.wasm\"\n\n\
         [[interface.inputs]]\nname = \"mode\"\ndtype = \"BYTES\"\nshape = [1]\n\n\
         [[interface.outputs]]\nname = \"out\"\ndtype = \"BYTES\"\nshape = [1]\n",
    )?;
    let id = honest.publisher.ok(&["publish", path_str(&dir)?]);
    // A second honest model, not loaded anywhere yet: it must load while the hostile one
    // compiles.
    let other = crate::echo_package(&honest.net.path().join("second-echo"))?;
    std::fs::write(
        other.join("moxnet.toml"),
        std::fs::read_to_string(other.join("moxnet.toml"))?
            .replace("name = \"own-guest\"", "name = \"second-echo\""),
    )?;
    let second = honest.publisher.ok(&["publish", path_str(&other)?]);
    let api = Honest::daemon(&honest.c)?.api.clone();
    let body = Honest::call_body();
    let size = guest.len();
    // Called in the background: the honest round runs while the server compiles it.
    let (hostile_api, hostile_body) = (api.clone(), body.clone());
    let call = std::thread::spawn(move || {
        let path = format!("/v2/models/{id}/infer");
        crate::http(
            &hostile_api,
            "POST",
            &path,
            Some(&hostile_body),
            Duration::from_secs(300),
        )
    });
    // Once the server is compiling (it fetched the guest first), the second model is called.
    std::thread::sleep(Duration::from_secs(5));
    let mut problems = Vec::new();
    let t = Instant::now();
    let path = format!("/v2/models/{second}/infer");
    match crate::http(&api, "POST", &path, Some(&body), Duration::from_secs(120)) {
        Ok((200, _)) => {}
        Ok((status, v)) => problems.push(format!(
            "another model could not load while the hostile one compiled: HTTP {status} {v}"
        )),
        Err(e) => problems.push(format!("another model's call: {e:#}")),
    }
    let mut running = Running::none(format!(
        "a {} KiB guest built to compile slowly (another model loaded and answered in {:.1} s meanwhile)",
        size >> 10,
        t.elapsed().as_secs_f64()
    ));
    running.waiting = Some(call);
    Ok((running, problems))
}

/// Runs the baseline and every attack in `only` (all when empty); returns the reports.
pub fn run(sizes: Sizes, only: &[String]) -> Result<(Round, Vec<AttackReport>)> {
    let names: Vec<&str> = ATTACKS
        .iter()
        .copied()
        .filter(|a| only.is_empty() || only.iter().any(|o| o == a))
        .collect();
    ensure!(
        !names.is_empty(),
        "no attack named {only:?}; attacks: {}",
        ATTACKS.join(", ")
    );
    let rounds = names.len() + 1 + BASELINE_ROUNDS + RETRIES * (1 + RETRY_BASELINE_ROUNDS);
    let mut honest = Honest::start(sizes, rounds)?;
    // A first round warms the nodes (connections, loaded models, caches); the next ones,
    // pooled, are the baseline (one round's fetches last about a second: one is noisy).
    let _ = honest.round(None)?;
    let mut baseline = honest.round(None)?;
    for _ in 1..BASELINE_ROUNDS {
        baseline = baseline.pooled(honest.round(None)?);
    }
    ensure!(
        baseline.failures.is_empty(),
        "the honest workload fails without any attack: {:?}",
        baseline.failures
    );
    let mut reports = Vec::new();
    let mut retries = RETRIES;
    for name in names {
        let mut report = attack_or_report(name, &mut honest, &baseline);
        // A round that was only slow is measured once more while retries last: on a shared
        // machine one round's throughput is noisy, while harm an attack does shows twice.
        // The second try is set against a baseline measured just before it: over a run of
        // minutes the machine's own pace drifts (the page cache fills and writeback starts,
        // a neighbour comes and goes), and only rounds measured close together see the same
        // machine. Anything that broke is never measured again.
        if report.only_slow() == Some(true) && retries > 0 {
            retries -= 1;
            let first = (report.fetch_ratio, report.call_ratio);
            let mut near = honest.round(None)?;
            for _ in 1..RETRY_BASELINE_ROUNDS {
                near = near.pooled(honest.round(None)?);
            }
            ensure!(
                near.failures.is_empty(),
                "the honest workload failed without any attack (after {name}): {:?}",
                near.failures
            );
            report = attack_or_report(name, &mut honest, &near);
            report.first_try = Some(first);
            report.fresh_baseline = Some(near.fetch_rate() / 1e6);
        }
        reports.push(report);
    }
    Ok((baseline, reports))
}

/// Slow attacks measured again (see [`run`]); each costs its baseline rounds and one more.
const RETRIES: usize = 3;
/// Rounds pooled into the baseline.
const BASELINE_ROUNDS: usize = 2;
/// Rounds pooled into the fresh baseline a retry is compared with.
const RETRY_BASELINE_ROUNDS: usize = 2;

/// [`attack`], with an error that stopped it reported as a failed check.
fn attack_or_report(name: &str, honest: &mut Honest, baseline: &Round) -> AttackReport {
    attack(name, honest, baseline).unwrap_or_else(|e| AttackReport {
        name: ATTACKS.iter().copied().find(|a| *a == name).unwrap_or("?"),
        attacker: String::new(),
        down: honest.down(),
        round: Round::default(),
        fetch_ratio: 0.0,
        call_ratio: 0.0,
        p99_ratio: 0.0,
        problems: vec![format!("{e:#}")],
        first_try: None,
        fresh_baseline: None,
    })
}

/// Runs attack `name` during one honest round and reports it against `baseline`.
fn attack(name: &str, honest: &mut Honest, baseline: &Round) -> Result<AttackReport> {
    let (running, mut problems) = start(name, honest)?;
    running.wait_ready();
    // Give the attack a moment to take hold before honest work starts.
    std::thread::sleep(Duration::from_secs(2));
    if name == "connection-flood"
        && let Err(e) = honest.newcomer_fetches()
    {
        problems.push(format!("a newcomer during the flood: {e:#}"));
    }
    let (bin, client_home) = (honest.client.bin.clone(), honest.client.home.clone());
    let gc_loop = move |done: &AtomicBool| {
        while !done.load(Ordering::SeqCst) {
            let gc = std::process::Command::new(&bin)
                .arg("--home")
                .arg(&client_home)
                .arg("gc")
                .output();
            if gc.is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let round = if name == "gc-during-fetch" {
        honest.round(Some(&gc_loop))
    } else {
        honest.round(None)
    };
    let attacker = running.stop();
    let round = round?;
    let down = honest.down();
    honest.settle();
    problems.extend(checks_after(name, honest));
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    Ok(AttackReport {
        name: ATTACKS.iter().copied().find(|a| *a == name).unwrap_or("?"),
        attacker,
        down,
        fetch_ratio: ratio(round.fetch_rate(), baseline.fetch_rate()),
        call_ratio: ratio(round.call_rate(), baseline.call_rate()),
        p99_ratio: round.p99().as_secs_f64() / baseline.p99().as_secs_f64().max(1e-9),
        round,
        problems,
        first_try: None,
        fresh_baseline: None,
    })
}

/// Checks after an attack: what the attacker must not have achieved.
fn checks_after(name: &str, honest: &Honest) -> Vec<String> {
    let mut problems = Vec::new();
    if name == "catalogue-spam" {
        let out = honest.client.ok(&["models"]);
        let spam = out.lines().filter(|l| l.contains("spam-")).count();
        // Half the spam is one author's: at most the quota of those, plus the fresh authors';
        // each run of the spammer has its own author and fresh ones.
        let bound = honest.spam_runs * (MAX_PER_AUTHOR + honest.sizes.spam_manifests / 2);
        if spam > bound {
            problems.push(format!(
                "the client kept {spam} spam manifests (bound {bound})"
            ));
        }
    }
    problems
}

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<18} fetch {:.1} MB/s  calls {:.1}/s  p99 {:.0} ms  ({} calls ok, {} failures)",
            "baseline",
            self.fetch_rate() / 1e6,
            self.call_rate(),
            self.p99().as_secs_f64() * 1e3,
            self.calls_ok,
            self.failures.len()
        )
    }
}
