//! Testnet scenarios: many real `moxnet node` processes on loopback, each printing a short
//! report and failing loudly. Run them with the `testnet` binary (`cargo run -p testnet -- all`)
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

fn wait_for_model(node: &Node, id: &str) -> Result<()> {
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

/// Three providers, one of which corrupts every range it serves; one fetcher.
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
    let daemons = [
        providers[0].start_with(&[], &[("MOXNET_TEST_BYZANTINE", "1")]),
        providers[1].start(&[]),
        providers[2].start(&[]),
    ];
    let client = net.home("client");
    client.ok(&["init"]);
    let boot: Vec<&str> = daemons.iter().map(|d| d.addr()).collect();
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
