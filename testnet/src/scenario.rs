//! Testnet scenarios: many real `moxnet node` processes (and, where a peer must misbehave, a
//! [`liar`](crate::liar)) on loopback, each printing a short report and failing loudly. Run them with the `testnet` binary (`cargo run -p testnet -- all`)
//! or from tests with small sizes.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{Daemon, Node, Testnet, write_random_file};

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name.
    pub name: &'static str,
    /// Nodes started.
    pub nodes: usize,
    /// Bytes each fetcher fetched.
    pub bytes: u64,
    /// Wall time of the fetch phase.
    pub elapsed: Duration,
    /// Fetches that completed.
    pub fetches: usize,
    /// Peers banned for bad bytes, over all fetchers.
    pub peers_banned: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.bytes * self.fetches as u64;
        write!(
            f,
            "{:<14} nodes {:>2}  fetches {:>2}  {:>7.2} s  {:>7.1} MB/s total  peers banned {}",
            self.name,
            self.nodes,
            self.fetches,
            self.elapsed.as_secs_f64(),
            total as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6,
            self.peers_banned
        )
    }
}

fn package(dir: &Path, mib: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("moxnet.toml"),
        "[package]\nname = \"testnet\"\nversion = \"1\"\n",
    )?;
    write_random_file(&dir.join("weights.bin"), mib << 20, 77)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

pub(crate) fn wait_for_model(node: &Node, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node.ok(&["models"]).contains(id) {
        if Instant::now() > deadline {
            bail!("{} never learnt model {id}", node.home.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Starts a fetch and waits for it; returns the `fetch --json` answer.
fn fetch(node: &Node, id: &str) -> Result<serde_json::Value> {
    let out = node.run(&["--json", "fetch", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    let value: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "fetch printed {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(
        out.status.success() && value["state"] == "complete",
        "fetch failed: {value}"
    );
    Ok(value)
}

/// One publisher and `nodes - 1` fetchers in a chain (each knows only the previous node); all
/// fetch the model at once.
pub fn fetch_many(nodes: usize, mib: u64) -> Result<Report> {
    ensure!(nodes >= 2, "fetch-many needs at least 2 nodes");
    let net = Testnet::new()?;
    let pkg = net.path().join("pkg");
    package(&pkg, mib)?;
    let homes: Vec<Node> = (0..nodes).map(|i| net.home(&format!("n{i}"))).collect();
    for h in &homes {
        h.ok(&["init"]);
    }
    let id = homes[0].ok(&["publish", path_str(&pkg)?]);
    let mut daemons: Vec<Daemon> = Vec::new();
    for (i, h) in homes.iter().enumerate() {
        let boot: Vec<&str> = daemons
            .last()
            .map(|d: &Daemon| vec![d.addr()])
            .unwrap_or_default();
        let d = h.start(&boot);
        if i > 0 {
            wait_for_model(h, &id)?;
        }
        daemons.push(d);
    }
    let start = Instant::now();
    let results: Vec<Result<serde_json::Value>> = std::thread::scope(|s| {
        let handles: Vec<_> = homes[1..]
            .iter()
            .map(|h| s.spawn(|| fetch(h, &id)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("fetch thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut banned = 0;
    for r in &results {
        let v = r.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        banned += v["peers_banned"].as_u64().unwrap_or(0);
    }
    for h in &homes[1..] {
        ensure!(
            h.json(&["verify"])["ok"] == true,
            "{} does not verify",
            h.home.display()
        );
    }
    Ok(Report {
        name: "fetch-many",
        nodes,
        bytes: mib << 20,
        elapsed,
        fetches: results.len(),
        peers_banned: banned,
    })
}

/// Three providers, one of which is a [`liar`](crate::liar) that corrupts every range it
/// serves; one fetcher.
pub fn byzantine(mib: u64) -> Result<Report> {
    let net = Testnet::new()?;
    let pkg = net.path().join("pkg");
    package(&pkg, mib)?;
    let providers: Vec<Node> = (0..3).map(|i| net.home(&format!("p{i}"))).collect();
    let mut id = String::new();
    for p in &providers {
        p.ok(&["init"]);
        id = p.ok(&["publish", path_str(&pkg)?]);
    }
    let liar = providers[0].start_corrupting(&[]);
    let honest = [providers[1].start(&[]), providers[2].start(&[])];
    let client = net.home("client");
    client.ok(&["init"]);
    let boot: Vec<&str> = std::iter::once(liar.addr())
        .chain(honest.iter().map(|d| d.addr()))
        .collect();
    let _c = client.start(&boot);
    wait_for_model(&client, &id)?;
    let start = Instant::now();
    let v = fetch(&client, &id)?;
    let elapsed = start.elapsed();
    ensure!(
        client.json(&["verify"])["ok"] == true,
        "bad bytes reached the store"
    );
    let banned = v["peers_banned"].as_u64().unwrap_or(0);
    ensure!(
        banned == 1,
        "expected the Byzantine provider banned, got {v}"
    );
    Ok(Report {
        name: "byzantine",
        nodes: 4,
        bytes: mib << 20,
        elapsed,
        fetches: 1,
        peers_banned: banned,
    })
}

/// Two providers; one is killed (SIGKILL) while the fetch is under way.
pub fn kill_provider(mib: u64) -> Result<Report> {
    let net = Testnet::new()?;
    let pkg = net.path().join("pkg");
    package(&pkg, mib)?;
    let providers: Vec<Node> = (0..2).map(|i| net.home(&format!("p{i}"))).collect();
    let mut id = String::new();
    for p in &providers {
        p.ok(&["init"]);
        id = p.ok(&["publish", path_str(&pkg)?]);
    }
    let victim = providers[0].start(&[]);
    let survivor = providers[1].start(&[]);
    let client = net.home("client");
    client.ok(&["init"]);
    let _c = client.start(&[victim.addr(), survivor.addr()]);
    wait_for_model(&client, &id)?;
    let start = Instant::now();
    let mut fetching = client.spawn(&["--json", "fetch", &id]);
    let partial = client.home.join("store/partial");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = std::fs::read_dir(&partial)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false);
        if started {
            break;
        }
        if Instant::now() > deadline {
            let _ = fetching.kill();
            let _ = fetching.wait();
            bail!("the fetch never started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    victim.kill();
    let out = fetching.wait_with_output()?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "fetch failed after a provider died: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        client.json(&["verify"])["ok"] == true,
        "store does not verify"
    );
    Ok(Report {
        name: "kill-provider",
        nodes: 3,
        bytes: mib << 20,
        elapsed,
        fetches: 1,
        peers_banned: 0,
    })
}

/// What the churn scenario measured: the same fetch from one live provider, without and with
/// providers that left (still named by DHT records and announcements).
#[derive(Debug, Clone)]
pub struct ChurnReport {
    /// Bytes fetched.
    pub bytes: u64,
    /// The fetch when no provider has left.
    pub baseline: Duration,
    /// The fetch after `departed` providers fetched the model and stopped.
    pub churned: Duration,
    /// Providers that left.
    pub departed: usize,
}

impl ChurnReport {
    /// `churned / baseline`: the goal is at most 1.5.
    pub fn ratio(&self) -> f64 {
        self.churned.as_secs_f64() / self.baseline.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<14} {} MiB  baseline {:.2} s  with {} departed providers {:.2} s  ratio {:.2}",
            "churn",
            self.bytes >> 20,
            self.baseline.as_secs_f64(),
            self.departed,
            self.churned.as_secs_f64(),
            self.ratio()
        )
    }
}

/// What the slow-providers scenario measured.
#[derive(Debug, Clone)]
pub struct SlowProvidersReport {
    /// Bytes fetched.
    pub bytes: u64,
    /// Each provider's upload limit, bytes a second.
    pub rate: u64,
    /// The fetch from one rate-limited provider.
    pub one: Duration,
    /// The fetch when three providers, each limited alike, hold the model.
    pub three: Duration,
    /// Providers that second fetch took data from.
    pub used: u64,
}

impl SlowProvidersReport {
    /// `three / one`: the goal is at most 0.4 (a third, ideally).
    pub fn ratio(&self) -> f64 {
        self.three.as_secs_f64() / self.one.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for SlowProvidersReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<14} {} MiB  providers limited to {:.1} MiB/s each  from one {:.2} s  from three {:.2} s ({} used)  ratio {:.2}",
            "slow-providers",
            self.bytes >> 20,
            self.rate as f64 / 1048576.0,
            self.one.as_secs_f64(),
            self.three.as_secs_f64(),
            self.used,
            self.ratio()
        )
    }
}

/// Slow providers: three nodes hold a model of `mib` MiB, each uploading at most `rate_mib`
/// MiB/s (`upload_mib_per_sec`). A fresh node fetches it while only one of them runs, and
/// another fresh node while all three do: a fetch spreads over the providers it finds, so the
/// second should take about a third of the first (goal: at most 0.4 of it).
pub fn slow_providers(mib: u64, rate_mib: f64) -> Result<SlowProvidersReport> {
    let net = Testnet::new()?;
    let pkg = net.path().join("pkg");
    package(&pkg, mib)?;
    let a = net.home("a");
    a.ok(&["init"]);
    let id = a.ok(&["publish", path_str(&pkg)?]);
    // Two more providers take their copies from the first, with no limit yet.
    {
        let first = a.start_listening(LISTEN_TCP_AND_QUIC, &[]);
        for name in ["b", "c"] {
            let (_, _, daemon) = timed_fetch(&net, name, &first, &id)?;
            daemon.kill();
        }
        first.kill();
    }
    let providers: Vec<Node> = ["a", "b", "c"].iter().map(|n| net.home(n)).collect();
    for p in &providers {
        std::fs::write(
            p.home.join("config.toml"),
            format!("upload_mib_per_sec = {rate_mib}\n"),
        )?;
    }
    let first = providers[0].start_listening(LISTEN_TCP_AND_QUIC, &[]);
    let (one, _, fetcher) = timed_fetch(&net, "from-one", &first, &id)?;
    fetcher.kill();
    let others: Vec<Daemon> = providers[1..]
        .iter()
        .map(|p| p.start_listening(LISTEN_TCP_AND_QUIC, &[first.addr()]))
        .collect();
    // The restarted providers announce their copies in the DHT as they start.
    std::thread::sleep(Duration::from_secs(2));
    let (three, used, _fetcher) = timed_fetch(&net, "from-three", &first, &id)?;
    drop(others);
    Ok(SlowProvidersReport {
        bytes: mib << 20,
        rate: (rate_mib * 1048576.0) as u64,
        one,
        three,
        used,
    })
}

/// What the swarm scenario measured.
#[derive(Debug, Clone)]
pub struct SwarmReport {
    /// Nodes fetching.
    pub fetchers: usize,
    /// The model's size in bytes (its weights file; the manifest is tiny).
    pub bytes: u64,
    /// Every node's upload limit, bytes a second (0: none).
    pub rate: u64,
    /// Fetches that completed.
    pub completed: usize,
    /// Each completed fetch's time, as its node measured it, sorted.
    pub times: Vec<Duration>,
    /// Bytes the publisher uploaded during the fetches.
    pub publisher_sent: u64,
    /// The most bytes any one fetcher uploaded to the others.
    pub most_by_a_fetcher: u64,
    /// From the first fetch started to the last one complete.
    pub wall: Duration,
}

impl SwarmReport {
    /// The publisher's upload in copies of the model: the goal is at most 3 (without
    /// swarming it would be one per fetcher).
    pub fn publisher_copies(&self) -> f64 {
        self.publisher_sent as f64 / self.bytes.max(1) as f64
    }
}

impl fmt::Display for SwarmReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |p| percentile(&self.times, p).map_or(f64::NAN, |d| d.as_secs_f64());
        write!(
            f,
            "{:<14} {} fetchers x {} MiB  uploads limited to {}  {}/{} complete in {:.1} s (p50 {:.1} s, max {:.1} s)  publisher sent {:.2} copies (vs {} without swarming)  busiest fetcher sent {:.2} copies",
            "swarm",
            self.fetchers,
            self.bytes >> 20,
            if self.rate == 0 {
                "nothing".to_string()
            } else {
                format!("{:.1} MiB/s", self.rate as f64 / 1048576.0)
            },
            self.completed,
            self.fetchers,
            self.wall.as_secs_f64(),
            pct(50),
            pct(100),
            self.publisher_copies(),
            self.fetchers,
            self.most_by_a_fetcher as f64 / self.bytes.max(1) as f64,
        )
    }
}

/// Swarm: `nodes` real nodes (loopback, each bootstrapped to a random earlier one), every one
/// limited to upload `rate_mib` MiB/s (`upload_mib_per_sec`: equal uplinks, as on a real network
/// where the publisher is one home among many; 0 for none). The first publishes a model of
/// `mib` MiB; once every node knows it, all the others fetch it at once. They serve each other
/// the groups they hold, so the publisher should upload about one copy (goal: at most 3).
pub fn swarm(nodes: usize, mib: u64, rate_mib: f64) -> Result<SwarmReport> {
    ensure!(nodes >= 2, "swarm needs at least 2 nodes");
    let net = Testnet::new()?;
    let homes: Vec<Node> = (0..nodes).map(|i| net.home(&format!("n{i}"))).collect();
    for h in &homes {
        h.ok(&["init"]);
        if rate_mib > 0.0 {
            std::fs::write(
                h.home.join("config.toml"),
                format!("upload_mib_per_sec = {rate_mib}\n"),
            )?;
        }
    }
    let pkg = net.path().join("pkg");
    package(&pkg, mib)?;
    let id = homes[0].ok(&["publish", path_str(&pkg)?]);
    let mut rng = Seeded(0x5157_4152_4D00_0001);
    let mut daemons: Vec<Daemon> = Vec::new();
    for h in &homes {
        let boot: Vec<&str> = if daemons.is_empty() {
            Vec::new()
        } else {
            vec![daemons[rng.below(daemons.len())].addr()]
        };
        daemons.push(h.start(&boot));
    }
    for h in &homes[1..] {
        wait_for_model(h, &id)?;
    }
    // Settling: the DHT's provider records of the publisher's blobs are in place.
    std::thread::sleep(Duration::from_secs(2));
    let served = |d: &Daemon| -> Result<u64> {
        Ok(counter(
            &metrics(&d.api)?,
            "moxnet_net_blob_sent_bytes_total",
        ))
    };
    let before: Vec<u64> = daemons.iter().map(served).collect::<Result<_>>()?;
    let started = Instant::now();
    for d in &daemons[1..] {
        let (status, v) = d.api_call("POST", &format!("/api/v1/fetch/{id}"), None)?;
        ensure!(status == 202, "starting a fetch: HTTP {status}: {v}");
    }
    let deadline = started + Duration::from_secs(600);
    let mut pending: Vec<usize> = (1..nodes).collect();
    let mut times = Vec::new();
    let mut failed = Vec::new();
    let mut last_done = started;
    while !pending.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let mut still = Vec::new();
        for i in pending {
            let (_, v) = daemons[i].api_get(&format!("/api/v1/fetch/{id}"))?;
            match v["state"].as_str() {
                Some("complete") => {
                    times.push(Duration::from_millis(v["elapsed_ms"].as_u64().unwrap_or(0)));
                    last_done = Instant::now();
                }
                Some("failed") => failed.push(format!("n{i}: {}", v["error"])),
                _ => still.push(i),
            }
        }
        pending = still;
    }
    ensure!(failed.is_empty(), "fetches failed: {}", failed.join("; "));
    times.sort();
    let after: Vec<u64> = daemons.iter().map(served).collect::<Result<_>>()?;
    let sent: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    for h in &homes[1..] {
        if !pending.iter().any(|i| homes[*i].home == h.home) {
            ensure!(
                h.json(&["verify"])["ok"] == true,
                "{} does not verify",
                h.home.display()
            );
        }
    }
    Ok(SwarmReport {
        fetchers: nodes - 1,
        bytes: mib << 20,
        rate: (rate_mib * 1048576.0) as u64,
        completed: times.len(),
        times,
        publisher_sent: sent[0],
        most_by_a_fetcher: sent[1..].iter().copied().max().unwrap_or(0),
        wall: last_done.duration_since(started),
    })
}

/// What the default configuration listens on, on loopback: TCP and QUIC. A QUIC address of a
/// node that left is not refused like a closed TCP port: a dial waits for its handshake timeout.
const LISTEN_TCP_AND_QUIC: &[&str] = &["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"];

/// Fetches a fresh node's copy of a model from `provider`, and how long it took (as the node
/// measured it: free of the command line's start-up and progress polling) and from how many
/// peers.
fn timed_fetch(
    net: &Testnet,
    name: &str,
    provider: &Daemon,
    id: &str,
) -> Result<(Duration, u64, Daemon)> {
    let node = net.home(name);
    node.ok(&["init"]);
    let daemon = node.start_listening(LISTEN_TCP_AND_QUIC, &[provider.addr()]);
    wait_for_model(&node, id)?;
    let fetched = fetch(&node, id)?;
    let elapsed = fetched["elapsed_ms"]
        .as_u64()
        .map(Duration::from_millis)
        .context("the fetch's answer has no elapsed_ms")?;
    ensure!(
        node.json(&["verify"])["ok"] == true,
        "{} does not verify",
        node.home.display()
    );
    let peers = fetched["peers_used"].as_u64().unwrap_or(0);
    Ok((elapsed, peers, daemon))
}

/// Churn: one provider holds a model of `mib` MiB. Baseline: a fresh node fetches it (in a
/// network of its own). Then, in a second network, `departed` nodes fetch it (becoming
/// providers in the DHT and announcing it) and stop, and a fresh node fetches it again: the
/// providers that left must not cost it much (goal: at most 1.5x the baseline).
pub fn churn(mib: u64, departed: usize) -> Result<ChurnReport> {
    let mut times = Vec::new();
    for leavers in [0, departed] {
        let net = Testnet::new()?;
        let pkg = net.path().join("pkg");
        package(&pkg, mib)?;
        let a = net.home("a");
        a.ok(&["init"]);
        let id = a.ok(&["publish", path_str(&pkg)?]);
        let provider = a.start_listening(LISTEN_TCP_AND_QUIC, &[]);
        for i in 0..leavers {
            let (_, _, daemon) = timed_fetch(&net, &format!("b{i}"), &provider, &id)?;
            daemon.kill();
        }
        let (elapsed, _, _daemon) = timed_fetch(&net, "fresh", &provider, &id)?;
        times.push(elapsed);
    }
    Ok(ChurnReport {
        bytes: mib << 20,
        baseline: times[0],
        churned: times[1],
        departed,
    })
}

/// Runs `ip` with `args`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Two network namespaces joined by a veth pair (10.203.0.1 ↔ 10.203.0.2): two hosts on one
/// machine. Deleted on drop. Needs root (CAP_NET_ADMIN), as CI has.
struct TwoHosts {
    ns: [String; 2],
    veth: [String; 2],
}

impl TwoHosts {
    fn create() -> Result<TwoHosts> {
        let tag = format!("mx{}", std::process::id() % 100_000);
        let hosts = TwoHosts {
            ns: [format!("{tag}a"), format!("{tag}b")],
            veth: [format!("{tag}va"), format!("{tag}vb")],
        };
        for ns in &hosts.ns {
            ip(&["netns", "add", ns]).context("creating a network namespace (needs root)")?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link",
            "add",
            &hosts.veth[0],
            "type",
            "veth",
            "peer",
            "name",
            &hosts.veth[1],
        ])?;
        for (i, addr) in ["10.203.0.1/24", "10.203.0.2/24"].iter().enumerate() {
            ip(&["link", "set", &hosts.veth[i], "netns", &hosts.ns[i]])?;
            ip(&[
                "-n",
                &hosts.ns[i],
                "addr",
                "add",
                addr,
                "dev",
                &hosts.veth[i],
            ])?;
            ip(&["-n", &hosts.ns[i], "link", "set", &hosts.veth[i], "up"])?;
        }
        Ok(hosts)
    }

    /// Cuts the link between the hosts (both ends down), or restores it. (`tc netem` would
    /// model loss and latency, but its kernel module is not available on every machine.)
    fn partition(&self, on: bool) -> Result<()> {
        let state = if on { "down" } else { "up" };
        for i in 0..2 {
            ip(&["-n", &self.ns[i], "link", "set", &self.veth[i], state])?;
        }
        if !on {
            for (i, addr) in ["10.203.0.1/24", "10.203.0.2/24"].iter().enumerate() {
                // Addresses survive link down; re-adding is a no-op error we can ignore.
                let _ = ip(&["-n", &self.ns[i], "addr", "add", addr, "dev", &self.veth[i]]);
            }
        }
        Ok(())
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Two hosts (network namespaces). A model published on one while the network is partitioned
/// reaches the other once it heals, and can be fetched.
pub fn partition(mib: u64) -> Result<Report> {
    let hosts = TwoHosts::create()?;
    let net = Testnet::new()?;
    let mut a = net.home("a");
    let mut b = net.home("b");
    a.netns = Some(hosts.ns[0].clone());
    b.netns = Some(hosts.ns[1].clone());
    a.ok(&["init"]);
    b.ok(&["init"]);
    let before = net.path().join("before");
    package(&before, 1)?;
    let id_before = a.ok(&["publish", path_str(&before)?]);
    let node_a = a.start_on("/ip4/10.203.0.1/tcp/0", &[]);
    let _node_b = b.start_on("/ip4/10.203.0.2/tcp/0", &[node_a.addr()]);
    wait_for_model(&b, &id_before)?;

    hosts.partition(true)?;
    let during = net.path().join("during");
    package(&during, mib)?;
    std::fs::write(
        during.join("moxnet.toml"),
        "[package]\nname = \"during-partition\"\nversion = \"1\"\n",
    )?;
    let id_during = a.ok(&["publish", path_str(&during)?]);
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        !b.ok(&["models"]).contains(&id_during),
        "the model crossed a partitioned network"
    );
    hosts.partition(false)?;
    wait_for_model(&b, &id_during)?;
    let start = Instant::now();
    let v = fetch(&b, &id_during)?;
    let elapsed = start.elapsed();
    ensure!(b.json(&["verify"])["ok"] == true, "store does not verify");
    Ok(Report {
        name: "partition",
        nodes: 2,
        bytes: mib << 20,
        elapsed,
        fetches: 1,
        peers_banned: v["peers_banned"].as_u64().unwrap_or(0),
    })
}

/// What the compute scenario measured.
#[derive(Debug, Clone)]
pub struct CallsReport {
    /// Nodes started.
    pub nodes: usize,
    /// Calls made, all at once.
    pub calls: usize,
    /// Calls answered with the right output.
    pub ok: usize,
    /// Calls that failed with an error message (each was printed).
    pub failed: usize,
    /// Calls answered by each provider (by peer id), from the answers' `provider`.
    pub by_provider: Vec<(String, usize)>,
    /// Wall time of the call phase.
    pub elapsed: Duration,
}

impl fmt::Display for CallsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spread: Vec<String> = self
            .by_provider
            .iter()
            .map(|(p, n)| format!("…{} {n}", &p[p.len().saturating_sub(6)..]))
            .collect();
        write!(
            f,
            "{:<14} nodes {:>2}  calls {}  ok {}  failed {}  {:>7.2} s  {:.0} calls/s  by provider: {}",
            "compute",
            self.nodes,
            self.calls,
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9),
            spread.join(", ")
        )
    }
}

/// Serving config for the compute scenario: offers every second.
const SERVE: &str = "[inference]\nmax_concurrent = 2\nmax_queued = 32\n\n\
                     [compute]\nserve = true\noffer_interval_secs = 1\nper_peer_concurrent = 16\n";

/// Five nodes: a publisher, a relay, two providers and a client that has never fetched the model.
/// The client makes `calls` calls at once through its HTTP API; one provider is killed (SIGKILL)
/// when half have been answered. Every call must end, with the right output or a clear error,
/// well before its timeout; none may hang.
pub fn compute(calls: usize) -> Result<CallsReport> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let net = Testnet::new()?;
    let homes: Vec<Node> = ["publisher", "relay", "p0", "p1", "client"]
        .iter()
        .map(|n| net.home(n))
        .collect();
    for h in &homes {
        h.ok(&["init"]);
    }
    for p in &homes[2..4] {
        std::fs::write(p.home.join("config.toml"), SERVE)?;
    }
    std::fs::write(
        homes[4].home.join("config.toml"),
        "[compute]\ncall_timeout_secs = 30\n",
    )?;
    let pkg = crate::echo_package(net.path())?;
    let id = homes[0].ok(&["publish", path_str(&pkg)?]);
    let publisher = homes[0].start(&[]);
    let relay = homes[1].start(&[publisher.addr()]);
    let p0 = homes[2].start(&[relay.addr()]);
    let p1 = homes[3].start(&[relay.addr()]);
    let client = homes[4].start(&[relay.addr()]);
    let (p0_id, p1_id) = (p0.peer_id.clone(), p1.peer_id.clone());
    crate::wait_for_offers(&client, &[&p0_id, &p1_id])?;
    let body = serde_json::json!({
        "inputs": [{ "name": "mode", "datatype": "BYTES", "shape": [1], "data": ["echo"] }]
    })
    .to_string();
    let path = format!("/v2/models/{id}/infer");
    let answered = AtomicUsize::new(0);
    let mut mid_run = None;
    let start = Instant::now();
    // A call that takes this long counts as hung (the client gives a provider 30 s).
    let hang = Duration::from_secs(120);
    let results: Vec<Result<(u16, serde_json::Value)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..calls)
            .map(|_| {
                s.spawn(|| {
                    let r = crate::http(&client.api, "POST", &path, Some(&body), hang);
                    answered.fetch_add(1, Ordering::SeqCst);
                    r
                })
            })
            .collect();
        let mut victim = Some(p0);
        while answered.load(Ordering::SeqCst) < calls {
            if answered.load(Ordering::SeqCst) >= calls / 2
                && let Some(v) = victim.take()
            {
                // While calls are in flight, the client's metrics are scraped as Prometheus
                // would (no token), then a provider is killed.
                mid_run = Some(metrics(&client.api));
                v.kill();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("call thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let (mut ok, mut failed) = (0, 0);
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for r in results {
        let (status, v) = r.context("a call hung or lost its answer")?;
        if status == 200 {
            ensure!(
                v["outputs"][0]["data"] == serde_json::json!(["echo"]),
                "wrong output: {v}"
            );
            let provider = v["parameters"]["provider"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            ensure!(
                provider == p0_id || provider == p1_id,
                "answered by {provider}, not a provider"
            );
            *by.entry(provider).or_default() += 1;
            ok += 1;
        } else {
            let message = v["error"].as_str().unwrap_or_default();
            ensure!(!message.is_empty(), "HTTP {status} without a reason: {v}");
            eprintln!("call failed (HTTP {status}): {message}");
            failed += 1;
        }
    }
    ensure!(ok > 0, "no call succeeded");
    // The metrics agree with what the callers saw: every call is counted on the client, and
    // the surviving provider counts the calls it served and the fuel they burnt.
    let mid_run = mid_run.context("no metrics scraped during the calls")??;
    ensure!(
        mid_run.contains("moxnet_peers ") && mid_run.contains("libp2p_"),
        "the client's metrics during the run lack peers or libp2p's: {mid_run}"
    );
    let after = metrics(&client.api)?;
    let remote_ok = counter(&after, r#"moxnet_calls_total{place="remote",outcome="ok"}"#);
    ensure!(
        remote_ok == ok as u64,
        "the client counted {remote_ok} remote calls ok, the callers saw {ok}"
    );
    let provider = metrics(&p1.api)?;
    let served = counter(
        &provider,
        r#"moxnet_calls_total{place="served",outcome="ok"}"#,
    );
    let p1_answered = by.get(&p1_id).copied().unwrap_or(0) as u64;
    ensure!(
        served >= p1_answered && counter(&provider, "moxnet_fuel_total") > 0,
        "provider p1 counted {served} served calls, the callers saw {p1_answered}"
    );
    drop((client, p1, relay, publisher));
    Ok(CallsReport {
        nodes: 5,
        calls,
        ok,
        failed,
        by_provider: by.into_iter().collect(),
        elapsed,
    })
}

/// `GET /metrics` on a node's API, as a scraper sends it (no token).
fn metrics(api: &str) -> Result<String> {
    let (status, text) =
        crate::http_text(api, "GET", "/metrics", &[], None, Duration::from_secs(30))?;
    ensure!(status == 200, "GET /metrics: HTTP {status}: {text}");
    Ok(text)
}

/// The value of one counter or gauge line (`name{labels} value`) in a metrics text; 0 if absent.
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// What [`scale`] measured: N real nodes, idle and then propagating one new model.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    /// Nodes started.
    pub nodes: usize,
    /// Nodes that listed the new model before the deadline (the publisher included).
    pub seen: usize,
    /// Time from the start of `moxnet publish` on the last node until each other node listed
    /// the model (polled about every 50 ms), sorted.
    pub propagation: Vec<Duration>,
    /// How long `moxnet publish` took (a part of every propagation time: polling starts when
    /// it returns).
    pub publish: Duration,
    /// Peers connected per node (`moxnet_peers`), sorted, after the nodes settled.
    pub connections: Vec<u64>,
    /// CPU seconds per minute each node used while idle (no model published, no fetch), sorted.
    pub idle_cpu: Vec<f64>,
    /// Resident memory per node after the idle window, MiB, sorted.
    pub rss_mib: Vec<f64>,
    /// The machine's 1-minute load average at the end of the idle window (it still carries
    /// some of the start-up when the window is short: e^-1 of it after 60 s).
    pub load: f64,
    /// Threads runnable on the machine, sampled every 250 ms over the second half of the idle
    /// window (the sampler not counted), mean: what the load average tends to when idle lasts.
    pub runnable: f64,
    /// The high watermark the nodes ran with (`max_connections`).
    pub max_connections: u32,
    /// Connections opened per node per minute while idle (churn: DHT refreshes, prunes,
    /// redials), from `libp2p_swarm_connections_established_total`, mean.
    pub opened_per_min: f64,
    /// Length of the idle window.
    pub idle: Duration,
}

impl ScaleReport {
    /// The `pct` percentile of the propagation times of the nodes that saw the model.
    pub fn propagation_percentile(&self, pct: usize) -> Option<Duration> {
        percentile(&self.propagation, pct).copied()
    }
}

/// The `pct` percentile (0..=100) of a sorted slice, by nearest rank; `None` if it is empty.
pub(crate) fn percentile<T>(sorted: &[T], pct: usize) -> Option<&T> {
    let rank = (sorted.len() * pct.min(100)).div_ceil(100).max(1);
    sorted.get(rank - 1)
}

impl fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |pct: usize| {
            self.propagation_percentile(pct)
                .map_or("-".to_string(), |d| format!("{} ms", d.as_millis()))
        };
        let mid = |v: &[f64]| percentile(v, 50).copied().unwrap_or(0.0);
        let top = |v: &[f64]| v.last().copied().unwrap_or(0.0);
        write!(
            f,
            "scale          {} nodes  saw the model {}/{}  p50 {}  p99 {}  max {} (publish took {} ms)  connections per node {}..{} (median {}, high watermark {}, {:.1} opened a minute)  idle CPU {:.2} s/min per node (max {:.2}) over {} s  load {:.2} (runnable {:.2})  memory {:.0} MiB per node (max {:.0})",
            self.nodes,
            self.seen,
            self.nodes,
            ms(50),
            ms(99),
            ms(100),
            self.publish.as_millis(),
            self.connections.first().copied().unwrap_or(0),
            self.connections.last().copied().unwrap_or(0),
            percentile(&self.connections, 50).copied().unwrap_or(0),
            self.max_connections,
            self.opened_per_min,
            mid(&self.idle_cpu),
            top(&self.idle_cpu),
            self.idle.as_secs(),
            self.load,
            self.runnable,
            mid(&self.rss_mib),
            top(&self.rss_mib),
        )
    }
}

/// A small deterministic generator (xorshift64*), so that a scale run's topology repeats.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("malformed /proc/<pid>/stat")
    };
    Ok(field(11)? + field(12)?)
}

/// Resident memory of a process, MiB, from `/proc/<pid>/status`.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kib / 1024.0)
}

/// `moxnet_peers` from a node's `/metrics`.
fn peers(api: &str) -> Result<u64> {
    let text = metrics(api)?;
    text.lines()
        .find_map(|l| l.strip_prefix("moxnet_peers "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .context("no moxnet_peers in /metrics")
}

/// The clock ticks a second `/proc` counts CPU time in (`CLK_TCK`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Threads runnable on the machine now (`/proc/loadavg`'s fourth field), less the reader.
fn runnable_now() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let field = text.split_whitespace().nth(3)?;
    let running: f64 = field.split('/').next()?.parse().ok()?;
    Some((running - 1.0).max(0.0))
}

/// `nodes` real nodes on loopback (`--no-mdns`), each bootstrapped to a random earlier one
/// (seeded), with `max_connections` as their high watermark (`None`: the default) and two
/// thirds of it as their target; once they have settled, `idle` seconds with nothing happening
/// measure each node's CPU use, memory and connections, and the machine's load; then a model
/// published on the last node is polled for on every node (about every 50 ms, a few threads
/// taking turns) until all list it or 60 s pass.
pub fn scale(nodes: usize, idle: Duration, max_connections: Option<u32>) -> Result<ScaleReport> {
    ensure!(nodes >= 2, "scale needs at least 2 nodes");
    let net = Testnet::new()?;
    let homes: Vec<Node> = (0..nodes).map(|i| net.home(&format!("n{i}"))).collect();
    for h in &homes {
        h.ok(&["init"]);
        if let Some(high) = max_connections {
            std::fs::write(
                h.home.join("config.toml"),
                format!(
                    "target_connections = {}\nmax_connections = {high}\n",
                    high * 2 / 3
                ),
            )?;
        }
    }
    let mut rng = Seeded(0x9E37_79B9_7F4A_7C15);
    let mut daemons: Vec<Daemon> = Vec::new();
    for h in &homes {
        let boot: Vec<&str> = if daemons.is_empty() {
            Vec::new()
        } else {
            vec![daemons[rng.below(daemons.len())].addr()]
        };
        let d = h.start(&boot);
        daemons.push(d);
    }
    // Settling: connections made, catalogues synced, the DHT bootstrapped.
    std::thread::sleep(Duration::from_secs(5));
    let opened = |d: &Daemon| -> Result<u64> {
        let text = metrics(&d.api)?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("libp2p_swarm_connections_established_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    };
    let opened_before: Vec<u64> = daemons.iter().map(opened).collect::<Result<_>>()?;
    let before: Vec<u64> = daemons
        .iter()
        .map(|d| cpu_ticks(d.child.id()))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < idle {
        samples.extend(runnable_now());
        std::thread::sleep(Duration::from_millis(250));
    }
    // The second half only: the first still carries the start-up's tail.
    let settled = &samples[samples.len() / 2..];
    let runnable = settled.iter().sum::<f64>() / settled.len().max(1) as f64;
    let took = started.elapsed().as_secs_f64();
    let mut idle_cpu = Vec::new();
    let mut rss = Vec::new();
    for (d, b) in daemons.iter().zip(&before) {
        let used = cpu_ticks(d.child.id())?.saturating_sub(*b) as f64 / TICKS_PER_SEC;
        idle_cpu.push(used * 60.0 / took);
        rss.push(rss_mib(d.child.id())?);
    }
    let opened_after: Vec<u64> = daemons.iter().map(opened).collect::<Result<_>>()?;
    let opened_per_min = opened_after
        .iter()
        .zip(&opened_before)
        .map(|(a, b)| a.saturating_sub(*b) as f64)
        .sum::<f64>()
        * 60.0
        / took
        / nodes as f64;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN);
    let mut connections: Vec<u64> = daemons
        .iter()
        .map(|d| peers(&d.api))
        .collect::<Result<_>>()?;

    let pkg = net.path().join("pkg");
    package(&pkg, 1)?;
    let last = homes.len() - 1;
    let start = Instant::now();
    let id = homes[last].ok(&["publish", path_str(&pkg)?]);
    let publish = start.elapsed();
    let deadline = start + Duration::from_secs(60);
    let threads = nodes.min(8);
    let mut propagation: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let (daemons, id) = (&daemons, &id);
                s.spawn(move || {
                    let mut pending: Vec<usize> = (k..nodes).step_by(threads).collect();
                    let mut seen = Vec::new();
                    while !pending.is_empty() && Instant::now() < deadline {
                        let pass = Instant::now();
                        pending.retain(|&i| {
                            let listed = daemons[i]
                                .api_get("/api/v1/models")
                                .map(|(status, v)| {
                                    status == 200
                                        && v["models"].as_array().is_some_and(|ms| {
                                            ms.iter().any(|m| m["model_id"] == id.as_str())
                                        })
                                })
                                .unwrap_or(false);
                            if listed {
                                seen.push(start.elapsed());
                            }
                            !listed
                        });
                        if let Some(rest) = Duration::from_millis(50).checked_sub(pass.elapsed()) {
                            std::thread::sleep(rest);
                        }
                    }
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    propagation.sort();
    connections.sort_unstable();
    idle_cpu.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);
    Ok(ScaleReport {
        nodes,
        seen: propagation.len(),
        propagation,
        publish,
        connections,
        idle_cpu,
        rss_mib: rss,
        load,
        runnable,
        max_connections: max_connections.unwrap_or(40),
        opened_per_min,
        idle,
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(&50));
        assert_eq!(percentile(&v, 99), Some(&99));
        assert_eq!(percentile(&v, 100), Some(&100));
        assert_eq!(percentile(&v, 0), Some(&1));
        assert_eq!(percentile(&[7], 99), Some(&7));
        assert_eq!(
            percentile(&(1..=1504).collect::<Vec<u32>>(), 99),
            Some(&1489)
        );
        assert_eq!(percentile::<u32>(&[], 50), None);
    }
}
