//! A seeded discrete-event simulation of a moxnet network far bigger than one machine runs
//! (10,000 nodes by default), with the parameters the nodes really use: the connection
//! watermarks of [`net::ConnectionLimits`], the gossipsub mesh of [`net::gossip_config`]
//! (`mesh_n`, `mesh_n_low`, `mesh_n_high`, `gossip_lazy`, `gossip_factor`, `history_gossip`,
//! the heartbeat, flood publishing) and Kademlia's `K_VALUE` and `ALPHA_VALUE`.
//!
//! What it models:
//! - **Connections**: each node dials random peers until it has `target_connections`; a node
//!   at `max_connections` refuses more, so degrees stay within the watermarks.
//! - **Announcements**: the publisher sends its message to every connected peer; a node that
//!   receives it for the first time verifies it ([`VERIFY`]) and forwards it to its mesh peers
//!   (but the sender). At each heartbeat (each node's own phase) for `history_gossip`
//!   heartbeats after it had the message, a node sends IHAVE to `max(gossip_lazy, gossip_factor
//!   × non-mesh peers)` random non-mesh peers; a peer that misses the message asks (IWANT) and
//!   gets it two link latencies later.
//! - **Links**: each connection has a one-way latency drawn once, 5 ms plus an exponential of
//!   mean 40 ms, at most 300 ms (a spread of continents).
//! - **Provider lookups**: ids are 64 random bits (10,000 nodes use only a few of them; the
//!   XOR metric works alike); each node's routing table holds up to `K_VALUE` nodes per bucket,
//!   as a well-maintained DHT does; a provider record lives on the `K_VALUE` nodes closest to
//!   its key. A lookup asks `ALPHA_VALUE` of the closest peers it knows at once, learns up to
//!   `K_VALUE` closer ones from each answer, and counts in *hops* (rounds of requests) until it
//!   reaches a node holding the record.
//! - **Offline nodes**: a fraction of nodes (`--offline`) do not answer anything.
//!
//! Run it with `cargo run -p testnet -- simulate [--nodes 10000] [--seed 1] [--lookups 1000]
//! [--offline 0.1]`; the suite runs a CI-sized one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

/// How long a node takes to verify an announcement before forwarding it (an ed25519 signature
/// and a CBOR decode; measured at about 0.1 ms, counted generously).
pub const VERIFY: Duration = Duration::from_millis(1);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes in the network.
    pub nodes: usize,
    /// The seed: the same seed gives the same network and the same figures.
    pub seed: u64,
    /// Provider lookups to run.
    pub lookups: usize,
    /// Fraction of nodes that are offline (answer nothing, forward nothing).
    pub offline: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 10_000,
            seed: 1,
            lookups: 1000,
            offline: 0.0,
        }
    }
}

/// What a simulation measured.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// What ran.
    pub config: SimConfig,
    /// Online nodes.
    pub online: usize,
    /// Online nodes the announcement reached.
    pub reached: usize,
    /// When each node that was reached had it, from the publish, sorted.
    pub propagation: Vec<Duration>,
    /// Copies of the announcement delivered, over the nodes reached (duplicates cost bandwidth).
    pub copies_per_node: f64,
    /// Nodes reached through the lazy path (IHAVE/IWANT) rather than a push.
    pub by_gossip: usize,
    /// Connections per node: (min, median, max).
    pub degree: (usize, usize, usize),
    /// Hops each successful lookup took, sorted.
    pub hops: Vec<u32>,
    /// Requests each successful lookup sent, sorted.
    pub requests: Vec<u32>,
    /// Lookups that never reached a record holder.
    pub failed_lookups: usize,
}

impl SimReport {
    /// A percentile of the propagation times.
    pub fn propagation_percentile(&self, pct: usize) -> Option<Duration> {
        crate::scenario::percentile(&self.propagation, pct).copied()
    }

    /// A percentile of the lookup hops.
    pub fn hops_percentile(&self, pct: usize) -> Option<u32> {
        crate::scenario::percentile(&self.hops, pct).copied()
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |pct| {
            self.propagation_percentile(pct)
                .map_or("-".into(), |d| format!("{} ms", d.as_millis()))
        };
        let hops = |pct| {
            self.hops_percentile(pct)
                .map_or("-".into(), |h| h.to_string())
        };
        let requests = |pct| {
            crate::scenario::percentile(&self.requests, pct).map_or("-".into(), |r| r.to_string())
        };
        write!(
            f,
            "simulate       {} nodes ({} online, seed {})  connections {}..{} (median {})  announcement reached {}/{}  p50 {}  p99 {}  max {}  ({:.1} copies per node, {} by IHAVE/IWANT)  lookups {}: hops p50 {} p99 {} max {}, requests p50 {} p99 {}, failed {}",
            self.config.nodes,
            self.online,
            self.config.seed,
            self.degree.0,
            self.degree.2,
            self.degree.1,
            self.reached,
            self.online,
            ms(50),
            ms(99),
            ms(100),
            self.copies_per_node,
            self.by_gossip,
            self.config.lookups,
            hops(50),
            hops(99),
            hops(100),
            requests(50),
            requests(99),
            self.failed_lookups,
        )
    }
}

/// xorshift64*: deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point); spread small seeds.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The gossipsub parameters in force (from [`net::gossip_config`]).
#[derive(Debug, Clone, Copy)]
struct Gossip {
    mesh_n: usize,
    mesh_n_low: usize,
    mesh_n_high: usize,
    lazy: usize,
    factor: f64,
    history: usize,
    heartbeat: Duration,
    flood_publish: bool,
}

impl Gossip {
    fn from_node() -> Result<Gossip> {
        let c = net::gossip_config().context("the nodes' gossipsub config")?;
        Ok(Gossip {
            mesh_n: c.mesh_n(),
            mesh_n_low: c.mesh_n_low(),
            mesh_n_high: c.mesh_n_high(),
            lazy: c.gossip_lazy(),
            factor: c.gossip_factor(),
            history: c.history_gossip(),
            heartbeat: c.heartbeat_interval(),
            flood_publish: c.flood_publish(),
        })
    }
}

/// One node: its connections (peer, one-way latency), its mesh, its heartbeat phase.
struct Node {
    links: Vec<(usize, Duration)>,
    mesh: Vec<usize>,
    phase: Duration,
    online: bool,
}

/// Something that happens at a time: a copy of the announcement arriving, or a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The message arrives at `to` from `from` (`lazy`: after an IWANT).
    Deliver { to: usize, from: usize, lazy: bool },
    /// `node` has verified the message and forwards it to its mesh.
    Forward { node: usize, from: usize },
    /// One of `node`'s heartbeats while the message is in its history: IHAVE to a few peers.
    Heartbeat { node: usize },
}

/// Runs the simulation.
pub fn simulate(config: SimConfig) -> Result<SimReport> {
    ensure!(config.nodes >= 2, "simulate needs at least 2 nodes");
    let gossip = Gossip::from_node()?;
    let limits = net::ConnectionLimits::default();
    let (target, max) = (
        limits.target_connections as usize,
        limits.max_connections as usize,
    );
    let mut rng = Rng::new(config.seed);
    let n = config.nodes;
    let mut nodes: Vec<Node> = (0..n)
        .map(|_| Node {
            links: Vec::new(),
            mesh: Vec::new(),
            phase: gossip.heartbeat.mul_f64(rng.unit()),
            online: true,
        })
        .collect();
    for node in nodes.iter_mut().skip(1) {
        node.online = rng.unit() >= config.offline;
    }
    connect(&mut nodes, &mut rng, target.min(n - 1), max);
    build_meshes(&mut nodes, &mut rng, &gossip);
    let mut degrees: Vec<usize> = nodes.iter().map(|x| x.links.len()).collect();
    degrees.sort_unstable();
    let degree = (
        degrees[0],
        degrees[degrees.len() / 2],
        degrees[degrees.len() - 1],
    );

    let (propagation, copies, by_gossip) = announce(&nodes, &mut rng, &gossip, 0);
    let online = nodes.iter().filter(|x| x.online).count();
    let reached = propagation.len();

    let (hops, requests, failed_lookups) = lookups(&nodes, &mut rng, config.lookups);
    Ok(SimReport {
        config,
        online,
        reached,
        propagation,
        copies_per_node: copies as f64 / reached.max(1) as f64,
        by_gossip,
        degree,
        hops,
        requests,
        failed_lookups,
    })
}

/// Each node in turn dials random peers until it has `target` connections; a peer at `max`
/// refuses (as a node at its hard bound would).
fn connect(nodes: &mut [Node], rng: &mut Rng, target: usize, max: usize) {
    let n = nodes.len();
    let mut linked: HashSet<(usize, usize)> = HashSet::new();
    for a in 0..n {
        let mut tries = 0;
        while nodes[a].links.len() < target && tries < 20 * target {
            tries += 1;
            let b = rng.below(n);
            if b == a || nodes[b].links.len() >= max || !linked.insert((a.min(b), a.max(b))) {
                continue;
            }
            let latency = latency(rng);
            nodes[a].links.push((b, latency));
            nodes[b].links.push((a, latency));
        }
    }
}

/// One-way latency of a link: 5 ms plus an exponential of mean 40 ms, at most 300 ms.
fn latency(rng: &mut Rng) -> Duration {
    let exp = -40.0 * (1.0 - rng.unit()).ln();
    Duration::from_secs_f64((5.0 + exp).min(300.0) / 1000.0)
}

/// Meshes as gossipsub's heartbeats leave them: each node grafts random connected peers up to
/// `mesh_n` (grafts are mutual), a peer at `mesh_n_high` refuses, and a node below
/// `mesh_n_low` grafts again.
fn build_meshes(nodes: &mut [Node], rng: &mut Rng, gossip: &Gossip) {
    for round in 0..2 {
        for a in 0..nodes.len() {
            let want = if round == 0 {
                gossip.mesh_n
            } else {
                gossip.mesh_n_low
            };
            let mut tries = 0;
            while nodes[a].mesh.len() < want && tries < 4 * nodes[a].links.len() {
                tries += 1;
                let (b, _) = nodes[a].links[rng.below(nodes[a].links.len())];
                if nodes[a].mesh.contains(&b) || nodes[b].mesh.len() >= gossip.mesh_n_high {
                    continue;
                }
                nodes[a].mesh.push(b);
                nodes[b].mesh.push(a);
            }
        }
    }
}

/// The latency of the link between `a` and `b`.
fn link(nodes: &[Node], a: usize, b: usize) -> Duration {
    nodes[a]
        .links
        .iter()
        .find(|(p, _)| *p == b)
        .map_or(Duration::from_millis(100), |(_, l)| *l)
}

/// Publishes one announcement on `publisher` and runs the events until none are left: when
/// each online node had it (sorted), copies delivered, and nodes reached by the lazy path.
fn announce(
    nodes: &[Node],
    rng: &mut Rng,
    gossip: &Gossip,
    publisher: usize,
) -> (Vec<Duration>, u64, usize) {
    let mut queue: BinaryHeap<Reverse<(Duration, Event)>> = BinaryHeap::new();
    let mut had: Vec<Option<Duration>> = vec![None; nodes.len()];
    had[publisher] = Some(Duration::ZERO);
    let mut copies = 0u64;
    let mut by_gossip = 0;
    let first: Vec<usize> = if gossip.flood_publish {
        nodes[publisher].links.iter().map(|(p, _)| *p).collect()
    } else {
        nodes[publisher].mesh.clone()
    };
    for to in first {
        let at = link(nodes, publisher, to);
        queue.push(Reverse((
            at,
            Event::Deliver {
                to,
                from: publisher,
                lazy: false,
            },
        )));
    }
    schedule_heartbeats(nodes, gossip, publisher, Duration::ZERO, &mut queue);
    while let Some(Reverse((now, event))) = queue.pop() {
        match event {
            Event::Deliver { to, from, lazy } => {
                if !nodes[to].online {
                    continue;
                }
                copies += 1;
                if had[to].is_some() {
                    continue;
                }
                had[to] = Some(now);
                if lazy {
                    by_gossip += 1;
                }
                queue.push(Reverse((now + VERIFY, Event::Forward { node: to, from })));
                schedule_heartbeats(nodes, gossip, to, now + VERIFY, &mut queue);
            }
            Event::Forward { node, from } => {
                for &to in &nodes[node].mesh {
                    if to != from {
                        let at = now + link(nodes, node, to);
                        queue.push(Reverse((
                            at,
                            Event::Deliver {
                                to,
                                from: node,
                                lazy: false,
                            },
                        )));
                    }
                }
            }
            Event::Heartbeat { node } => {
                let others: Vec<(usize, Duration)> = nodes[node]
                    .links
                    .iter()
                    .filter(|(p, _)| !nodes[node].mesh.contains(p))
                    .copied()
                    .collect();
                let count = gossip
                    .lazy
                    .max((gossip.factor * others.len() as f64) as usize)
                    .min(others.len());
                for (to, latency) in pick(&others, count, rng) {
                    // IHAVE there; IWANT back if missing; then the message: three crossings
                    // (a copy that a push delivers meanwhile makes this one a duplicate).
                    if had[to].is_none() && nodes[to].online {
                        queue.push(Reverse((
                            now + latency * 3,
                            Event::Deliver {
                                to,
                                from: node,
                                lazy: true,
                            },
                        )));
                    }
                }
            }
        }
    }
    let mut times: Vec<Duration> = had
        .iter()
        .zip(nodes)
        .filter(|(_, x)| x.online)
        .filter_map(|(t, _)| *t)
        .collect();
    times.sort();
    (times, copies, by_gossip)
}

/// Queues `node`'s next `history_gossip` heartbeats after `from`.
fn schedule_heartbeats(
    nodes: &[Node],
    gossip: &Gossip,
    node: usize,
    from: Duration,
    queue: &mut BinaryHeap<Reverse<(Duration, Event)>>,
) {
    let beat = gossip.heartbeat;
    let phase = nodes[node].phase;
    // The first heartbeat at or after `from` in this node's phase.
    let periods = from.saturating_sub(phase).as_secs_f64() / beat.as_secs_f64();
    let mut next = phase + beat.mul_f64(periods.ceil());
    for _ in 0..gossip.history {
        queue.push(Reverse((next, Event::Heartbeat { node })));
        next += beat;
    }
}

/// `count` distinct random items of `from`.
fn pick<T: Copy>(from: &[T], count: usize, rng: &mut Rng) -> Vec<T> {
    let mut items = from.to_vec();
    let count = count.min(items.len());
    for i in 0..count {
        let j = i + rng.below(items.len() - i);
        items.swap(i, j);
    }
    items.truncate(count);
    items
}

/// Kademlia's parameters, from libp2p.
const K: usize = net::libp2p::kad::K_VALUE.get();
const ALPHA: usize = net::libp2p::kad::ALPHA_VALUE.get();

/// Runs `count` provider lookups from random online nodes for random keys, each record stored
/// on the `K` nodes closest to its key: hops and requests of each that succeeded (sorted), and
/// how many failed.
fn lookups(nodes: &[Node], rng: &mut Rng, count: usize) -> (Vec<u32>, Vec<u32>, usize) {
    let n = nodes.len();
    let ids: Vec<u64> = (0..n).map(|_| rng.next()).collect();
    // Routing tables: up to K nodes per bucket (by the highest differing bit), chosen at random
    // among all nodes at that distance, as a long-running DHT's refreshes leave them.
    let mut by_bucket: Vec<Vec<Vec<usize>>> = vec![vec![Vec::new(); 64]; n];
    let order: Vec<usize> = pick(&(0..n).collect::<Vec<_>>(), n, rng);
    for a in 0..n {
        for &b in &order {
            if a == b {
                continue;
            }
            let bucket = 63 - (ids[a] ^ ids[b]).leading_zeros() as usize;
            if by_bucket[a][bucket].len() < K {
                by_bucket[a][bucket].push(b);
            }
        }
    }
    let mut hops = Vec::new();
    let mut requests = Vec::new();
    let mut failed = 0;
    for _ in 0..count {
        let key = rng.next();
        let mut closest: Vec<usize> = (0..n).collect();
        closest.sort_by_key(|&x| ids[x] ^ key);
        let holders: HashSet<usize> = closest
            .iter()
            .copied()
            .filter(|&x| nodes[x].online)
            .take(K)
            .collect();
        let start = loop {
            let s = rng.below(n);
            if nodes[s].online {
                break s;
            }
        };
        match lookup(nodes, &ids, &by_bucket, start, key, &holders) {
            Some((h, r)) => {
                hops.push(h);
                requests.push(r);
            }
            None => failed += 1,
        }
    }
    hops.sort_unstable();
    requests.sort_unstable();
    (hops, requests, failed)
}

/// One iterative lookup from `start` for `key`: each round asks the `ALPHA` closest known peers
/// not yet asked; each online one answers with the `K` closest it knows. Ends when a record
/// holder is asked (hops, requests), or when no closer peer is left to ask (`None`).
fn lookup(
    nodes: &[Node],
    ids: &[u64],
    tables: &[Vec<Vec<usize>>],
    start: usize,
    key: u64,
    holders: &HashSet<usize>,
) -> Option<(u32, u32)> {
    if holders.contains(&start) {
        return Some((0, 0));
    }
    let closest_known = |of: usize| -> Vec<usize> {
        let mut all: Vec<usize> = tables[of].iter().flatten().copied().collect();
        all.sort_by_key(|&x| ids[x] ^ key);
        all.truncate(K);
        all
    };
    let mut known: Vec<usize> = closest_known(start);
    let mut asked: HashSet<usize> = HashSet::from([start]);
    let mut requests = 0u32;
    for hop in 1..=64u32 {
        let round: Vec<usize> = known
            .iter()
            .copied()
            .filter(|x| !asked.contains(x))
            .take(ALPHA)
            .collect();
        if round.is_empty() {
            return None;
        }
        let mut learnt = Vec::new();
        for &peer in &round {
            asked.insert(peer);
            requests += 1;
            if !nodes[peer].online {
                continue;
            }
            if holders.contains(&peer) {
                return Some((hop, requests));
            }
            learnt.extend(closest_known(peer));
        }
        known.extend(learnt);
        known.sort_by_key(|&x| ids[x] ^ key);
        known.dedup();
        known.truncate(4 * K);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_figures() {
        let config = SimConfig {
            nodes: 300,
            seed: 7,
            lookups: 50,
            offline: 0.05,
        };
        let a = simulate(config.clone()).expect("sim");
        let b = simulate(config).expect("sim");
        assert_eq!(a.propagation, b.propagation);
        assert_eq!(a.hops, b.hops);
    }

    #[test]
    fn latencies_are_bounded_and_picks_are_distinct() {
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            let l = latency(&mut rng);
            assert!(l >= Duration::from_millis(5) && l <= Duration::from_millis(300));
        }
        let items: Vec<usize> = (0..20).collect();
        let mut chosen = pick(&items, 7, &mut rng);
        chosen.sort_unstable();
        chosen.dedup();
        assert_eq!(chosen.len(), 7);
    }
}
