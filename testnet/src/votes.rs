//! The votes scenario: votes cast on different real nodes reach every node (propagation p50 and
//! p99 over gossip), and a node that was apart while the others voted (and voted alone
//! meanwhile) converges when it comes back, by the vote sync on connect.
//!
//! `cargo run -p testnet -- votes [--nodes 20]`
//!
//! 1. `nodes` nodes start, each bootstrapped to one or two earlier ones; the first publishes
//!    three models, which reach everyone.
//! 2. Each node in turn votes on one of the models; every other node is polled (its HTTP API,
//!    a thread each, every 5 ms) until it lists the vote: one propagation time per (vote,
//!    observer).
//! 3. The last node leaves (it is stopped). The others all vote again (another choice). It comes
//!    back alone (no bootstrap peer, so no connection) and votes on its own. Then it rejoins:
//!    its standing votes must become every other node's, and its own lone vote must reach them
//!    all (the sync pulls what it missed and pushes what the others lack).
//!
//! Pass: every vote reaches every node, and after the rejoin every node holds the same standing
//! votes on every model (the same vote ids, so the same tallies; scores are each node's own,
//! weighed by its own trust). The goal for propagation is p99 ≤ 1 s on loopback (reported).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{Daemon, Node, Testnet};

/// What [`votes`] measured.
#[derive(Debug, Clone)]
pub struct VotesReport {
    /// Nodes started.
    pub nodes: usize,
    /// Propagation times, one per (vote, observer), sorted.
    pub propagation: Vec<Duration>,
    /// Votes cast while the last node was away (by the others, and by it alone).
    pub while_apart: usize,
    /// From the rejoined node's start until every node held the same standing votes.
    pub converged: Duration,
    /// Standing votes every node held at the end (on all models).
    pub standing: usize,
}

impl VotesReport {
    /// The `q` quantile of the propagation times (nearest rank).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.propagation.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.propagation.len() as f64).ceil() as usize).max(1);
        self.propagation[rank.min(self.propagation.len()) - 1]
    }
}

impl fmt::Display for VotesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "votes          nodes {:>2}  {} arrivals: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms (goal p99 <= 1000 ms); \
             {} votes cast while one node was apart, all nodes agreed on {} standing votes {:.2} s after it came back",
            self.nodes,
            self.propagation.len(),
            self.quantile(0.5).as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3,
            self.propagation
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            self.while_apart,
            self.standing,
            self.converged.as_secs_f64(),
        )
    }
}

/// How long a vote may take to reach a node before the scenario fails.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(20);

/// Votes on one model as a node sees them: voter → vote id.
type Standing = BTreeMap<String, String>;

fn votes_on(daemon: &Daemon, model: &str) -> Result<Standing> {
    let (status, body) = daemon.api_get(&format!("/api/v1/models/{model}/votes"))?;
    ensure!(status == 200, "GET votes: {status} {body}");
    let voters = body["voters"].as_array().context("votes without voters")?;
    Ok(voters
        .iter()
        .filter_map(|v| Some((v["node_id"].as_str()?.into(), v["vote_id"].as_str()?.into())))
        .collect())
}

fn cast(daemon: &Daemon, model: &str, choice: &str) -> Result<String> {
    let body = format!("{{\"choice\":\"{choice}\"}}");
    let (status, view) =
        daemon.api_call("POST", &format!("/api/v1/models/{model}/vote"), Some(&body))?;
    ensure!(status == 200, "POST vote: {status} {view}");
    let me = node_id(daemon)?;
    voters(&view)
        .into_iter()
        .find(|(voter, _)| *voter == me)
        .map(|(_, id)| id)
        .context("the vote just cast is not listed")
}

fn voters(view: &Value) -> Vec<(String, String)> {
    view["voters"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| {
                    Some((v["node_id"].as_str()?.into(), v["vote_id"].as_str()?.into()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn node_id(daemon: &Daemon) -> Result<String> {
    let (status, body) = daemon.api_get("/api/v1/node")?;
    ensure!(status == 200, "GET node: {status} {body}");
    body["node_id"]
        .as_str()
        .map(str::to_string)
        .context("node without node_id")
}

fn package(dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("moxnet.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"1\"\ndescription = \"voted on\"\n"),
    )?;
    std::fs::write(dir.join("weights.bin"), name.as_bytes())?;
    Ok(())
}

/// Polls `observer` until it lists `vote` by `voter` on `model`; the time from `start`.
fn arrival(
    observer: &Daemon,
    model: &str,
    voter: &str,
    vote: &str,
    start: Instant,
) -> Result<Duration> {
    loop {
        if votes_on(observer, model)?.get(voter).map(String::as_str) == Some(vote) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > ARRIVAL_DEADLINE {
            bail!("vote {vote} never reached {}", observer.api);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the scenario with `nodes` nodes (at least 3).
pub fn votes(nodes: usize) -> Result<VotesReport> {
    ensure!(nodes >= 3, "the votes scenario needs at least 3 nodes");
    let net = Testnet::new()?;
    let homes: Vec<Node> = (0..nodes).map(|i| net.home(&format!("v{i}"))).collect();
    for h in &homes {
        h.ok(&["init"]);
    }
    let mut models = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let dir = net.path().join(name);
        package(&dir, name)?;
        models.push(homes[0].ok(&["publish", dir.to_str().context("temp path")?]));
    }
    let mut daemons: Vec<Daemon> = Vec::new();
    for (i, h) in homes.iter().enumerate() {
        // Each joins through one or two earlier nodes: a connected graph, not a star.
        let boot: Vec<String> = match i {
            0 => Vec::new(),
            1 => vec![daemons[0].addr().to_string()],
            _ => vec![
                daemons[(i * 7) % i].addr().to_string(),
                daemons[i - 1].addr().to_string(),
            ],
        };
        let boot: Vec<&str> = boot.iter().map(String::as_str).collect();
        daemons.push(h.start(&boot));
    }
    for h in &homes {
        for m in &models {
            crate::scenario::wait_for_model(h, m)?;
        }
    }
    // Gossip meshes form on the heartbeat (1 s).
    std::thread::sleep(Duration::from_secs(3));
    let ids: Vec<String> = daemons.iter().map(node_id).collect::<Result<_>>()?;

    // Propagation: one vote at a time, every other node watching.
    let mut propagation = Vec::new();
    for (i, voter) in daemons.iter().enumerate() {
        let model = &models[i % models.len()];
        let choice = if i % 4 == 3 { "down" } else { "up" };
        let start = Instant::now();
        let vote = cast(voter, model, choice)?;
        let times: Vec<Result<Duration>> = std::thread::scope(|s| {
            let handles: Vec<_> = daemons
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, d)| {
                    let (vote, voter) = (&vote, &ids[i]);
                    s.spawn(move || arrival(d, model, voter, vote, start))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a watcher panicked")))
                })
                .collect()
        });
        for t in times {
            propagation.push(t?);
        }
    }
    propagation.sort();

    // The last node leaves; the others vote again; it votes alone; it comes back.
    let last = nodes - 1;
    let away = daemons.pop().context("no nodes")?;
    away.stop();
    let mut while_apart = 0;
    for (i, d) in daemons.iter().enumerate() {
        let model = &models[(i + 1) % models.len()];
        let choice = if i % 3 == 0 { "retract" } else { "down" };
        cast(d, model, choice)?;
        while_apart += 1;
    }
    let alone = homes[last].start(&[]);
    let lone_vote = cast(&alone, &models[0], "down")?;
    while_apart += 1;
    alone.stop();
    let start = Instant::now();
    let boot = [daemons[0].addr(), daemons[nodes / 2].addr()];
    daemons.push(homes[last].start(&boot));
    let standing = loop {
        let mut views: Vec<Vec<Standing>> = Vec::new();
        for d in &daemons {
            views.push(
                models
                    .iter()
                    .map(|m| votes_on(d, m))
                    .collect::<Result<_>>()?,
            );
        }
        let lone_everywhere = views
            .iter()
            .all(|v| v[0].get(&ids[last]).map(String::as_str) == Some(lone_vote.as_str()));
        if lone_everywhere && views.iter().all(|v| *v == views[0]) {
            break views[0].iter().map(BTreeMap::len).sum::<usize>();
        }
        if start.elapsed() > Duration::from_secs(60) {
            let differ = views.iter().filter(|v| **v != views[0]).count();
            bail!(
                "{differ} of {nodes} nodes still hold other votes 60 s after the last one came back (its lone vote everywhere: {lone_everywhere})"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let converged = start.elapsed();
    Ok(VotesReport {
        nodes,
        propagation,
        while_apart,
        converged,
        standing,
    })
}
