//! Which chunk groups to ask which peer for: the I/O-free core of a multi-peer verified fetch.
//!
//! A [`Fetch`] knows the blob's chunk groups (16 KiB each), which are already present, and the
//! providers. The caller feeds it [`Event`]s (a peer appeared or left, a request completed or
//! failed, a timer tick) with the current time, and carries out the [`Action`]s it returns:
//! send a request, cancel one, ban a peer, report completion. Time and randomness are inputs,
//! so a whole fetch can be replayed exactly from a seed.
//!
//! # Policy
//! - Missing groups are split into ranges of [`FetchConfig::chunk_groups`]; each peer has up to
//!   [`FetchConfig::max_in_flight_per_peer`] requests in flight (pipelining). Free slots go to
//!   the peer with the fewest requests in flight, then the highest measured rate.
//! - **Work stealing:** when nothing is left to hand out, an idle peer duplicates the oldest
//!   request of another peer; whichever answers first wins and the other is cancelled. A slow
//!   peer therefore never holds up the end of a fetch.
//! - **Bad bytes:** a peer whose data fails verification is banned for this blob at once; what
//!   it had in flight is handed to others. Groups it sent that *did* verify are kept.
//! - **Stalls:** a request gets a deadline from the peer's measured rate (at least
//!   [`FetchConfig::min_timeout_ms`]); past it, the request is cancelled and re-queued. A peer
//!   that fails [`FetchConfig::max_failures`] times in a row is dropped (not banned: it may
//!   come back).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

/// Identifies one request sent to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Tuning of a [`Fetch`].
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Groups per request (64 groups = 1 MiB).
    pub chunk_groups: u64,
    /// Requests in flight per peer.
    pub max_in_flight_per_peer: usize,
    /// The shortest deadline of a request, in ms.
    pub min_timeout_ms: u64,
    /// A deadline is this many times the time a request should take at the peer's rate.
    pub timeout_factor: u64,
    /// Consecutive failures (not misbehaviour) after which a peer is dropped.
    pub max_failures: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            chunk_groups: 64,
            max_in_flight_per_peer: 4,
            min_timeout_ms: 10_000,
            timeout_factor: 4,
            max_failures: 3,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer sent bytes that failed verification: ban it for this blob.
    Misbehaved,
    /// The peer does not have the data, refused, or the connection failed.
    Unavailable,
    /// The peer stopped sending.
    Stalled,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// A peer that provides the blob (found in the DHT or by gossip, or connected again).
    PeerAdded(P),
    /// A peer disconnected; its requests are lost.
    PeerRemoved(P),
    /// Every group of the request verified and is stored.
    Completed {
        /// The request.
        id: RequestId,
    },
    /// The request ended early.
    Failed {
        /// The request.
        id: RequestId,
        /// Why.
        failure: Failure,
        /// Ranges of groups that verified and were stored before the failure.
        verified: Vec<Range<u64>>,
    },
    /// Time passed; deadlines are checked.
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for chunk groups `groups`.
    Request {
        /// Report its outcome with this id.
        id: RequestId,
        /// Whom to ask.
        peer: P,
        /// Which chunk groups (16 KiB each).
        groups: Range<u64>,
    },
    /// Stop a request (its answer is no longer needed or it is late). Ignore its outcome.
    Cancel {
        /// The request.
        id: RequestId,
        /// Whom it went to.
        peer: P,
    },
    /// Never ask this peer for this blob again.
    Ban {
        /// The peer.
        peer: P,
    },
    /// Every group is present.
    Complete,
    /// Groups are missing and no usable provider is left: find more (reported once per stall;
    /// adding a peer resumes the fetch).
    NeedProviders,
}

#[derive(Debug)]
struct Request<P> {
    peer: P,
    groups: Range<u64>,
    started: u64,
    deadline: u64,
}

#[derive(Debug)]
struct Peer {
    in_flight: usize,
    failures: u32,
    /// Measured groups per ms (exponentially weighted).
    rate: Option<f64>,
    /// Random tie-breaker, fixed per peer.
    tie: u64,
}

/// SplitMix64: small, seedable, good enough for tie-breaking.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The state of one blob's fetch. See the module docs.
#[derive(Debug)]
pub struct Fetch<P> {
    config: FetchConfig,
    rng: Rng,
    total: u64,
    present: Vec<bool>,
    present_count: u64,
    pending: VecDeque<Range<u64>>,
    requests: BTreeMap<RequestId, Request<P>>,
    peers: BTreeMap<P, Peer>,
    banned: BTreeSet<P>,
    next_id: u64,
    complete_reported: bool,
    need_reported: bool,
}

impl<P: Ord + Clone> Fetch<P> {
    /// A fetch of a blob of `total_groups` chunk groups, of which `missing` are not present yet.
    pub fn new(
        total_groups: u64,
        missing: impl IntoIterator<Item = Range<u64>>,
        config: FetchConfig,
        seed: u64,
    ) -> Self {
        let mut present = vec![true; total_groups as usize];
        for r in missing {
            for g in r.start.min(total_groups)..r.end.min(total_groups) {
                present[g as usize] = false;
            }
        }
        let present_count = present.iter().filter(|p| **p).count() as u64;
        let chunk = config.chunk_groups.max(1);
        let mut pending = VecDeque::new();
        for run in runs(&present, 0..total_groups, |p| !p) {
            let mut start = run.start;
            while start < run.end {
                let end = (start + chunk).min(run.end);
                pending.push_back(start..end);
                start = end;
            }
        }
        Fetch {
            config,
            rng: Rng(seed),
            total: total_groups,
            present,
            present_count,
            pending,
            requests: BTreeMap::new(),
            peers: BTreeMap::new(),
            banned: BTreeSet::new(),
            next_id: 0,
            complete_reported: false,
            need_reported: false,
        }
    }

    /// Whether every group is present.
    pub fn is_complete(&self) -> bool {
        self.present_count == self.total
    }

    /// Groups still missing.
    pub fn missing_groups(&self) -> u64 {
        self.total - self.present_count
    }

    /// Requests in flight: id, peer, groups.
    pub fn in_flight(&self) -> impl Iterator<Item = (RequestId, &P, Range<u64>)> {
        self.requests
            .iter()
            .map(|(id, r)| (*id, &r.peer, r.groups.clone()))
    }

    /// Whether `peer` is banned for this blob.
    pub fn is_banned(&self, peer: &P) -> bool {
        self.banned.contains(peer)
    }

    /// Applies `event` at time `now` (ms, monotonic) and returns what to do.
    pub fn handle(&mut self, now: u64, event: Event<P>) -> Vec<Action<P>> {
        let mut actions = Vec::new();
        match event {
            Event::PeerAdded(peer) => {
                if !self.banned.contains(&peer) && !self.peers.contains_key(&peer) {
                    let tie = self.rng.next();
                    self.peers.insert(
                        peer,
                        Peer {
                            in_flight: 0,
                            failures: 0,
                            rate: None,
                            tie,
                        },
                    );
                }
            }
            Event::PeerRemoved(peer) => self.drop_peer(&peer, false, &mut actions),
            Event::Completed { id } => {
                if let Some(req) = self.requests.remove(&id) {
                    if let Some(p) = self.peers.get_mut(&req.peer) {
                        p.in_flight -= 1;
                        p.failures = 0;
                        let took = now.saturating_sub(req.started).max(1) as f64;
                        let rate = (req.groups.end - req.groups.start) as f64 / took;
                        p.rate = Some(match p.rate {
                            Some(old) => old * 0.7 + rate * 0.3,
                            None => rate,
                        });
                    }
                    self.mark_present(req.groups);
                    self.cancel_redundant(&mut actions);
                }
            }
            Event::Failed {
                id,
                failure,
                verified,
            } => {
                if let Some(req) = self.requests.remove(&id) {
                    for r in verified {
                        let r = r.start.max(req.groups.start)..r.end.min(req.groups.end);
                        self.mark_present(r);
                    }
                    self.cancel_redundant(&mut actions);
                    if let Some(p) = self.peers.get_mut(&req.peer) {
                        p.in_flight -= 1;
                    }
                    self.requeue(req.groups);
                    self.punish(&req.peer, failure, &mut actions);
                }
            }
            Event::Tick => {
                let late: Vec<RequestId> = self
                    .requests
                    .iter()
                    .filter(|(_, r)| r.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in late {
                    if let Some(req) = self.requests.remove(&id) {
                        actions.push(Action::Cancel {
                            id,
                            peer: req.peer.clone(),
                        });
                        if let Some(p) = self.peers.get_mut(&req.peer) {
                            p.in_flight -= 1;
                        }
                        self.requeue(req.groups);
                        self.punish(&req.peer, Failure::Stalled, &mut actions);
                    }
                }
            }
        }
        self.schedule(now, &mut actions);
        if self.is_complete() {
            if !self.complete_reported {
                self.complete_reported = true;
                actions.push(Action::Complete);
            }
        } else if self.requests.is_empty() {
            if !self.need_reported {
                self.need_reported = true;
                actions.push(Action::NeedProviders);
            }
        } else {
            self.need_reported = false;
        }
        actions
    }

    fn punish(&mut self, peer: &P, failure: Failure, actions: &mut Vec<Action<P>>) {
        match failure {
            Failure::Misbehaved => self.drop_peer(peer, true, actions),
            Failure::Unavailable | Failure::Stalled => {
                let dropped = match self.peers.get_mut(peer) {
                    Some(p) => {
                        p.failures += 1;
                        p.failures >= self.config.max_failures
                    }
                    None => false,
                };
                if dropped {
                    self.drop_peer(peer, false, actions);
                }
            }
        }
    }

    /// Forgets a peer (and bans it if `ban`), re-queueing what it had in flight.
    fn drop_peer(&mut self, peer: &P, ban: bool, actions: &mut Vec<Action<P>>) {
        self.peers.remove(peer);
        if ban && self.banned.insert(peer.clone()) {
            actions.push(Action::Ban { peer: peer.clone() });
        }
        let theirs: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| &r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in theirs {
            if let Some(req) = self.requests.remove(&id) {
                actions.push(Action::Cancel {
                    id,
                    peer: req.peer.clone(),
                });
                self.requeue(req.groups);
            }
        }
    }

    fn mark_present(&mut self, groups: Range<u64>) {
        for g in groups.start..groups.end.min(self.total) {
            if !self.present[g as usize] {
                self.present[g as usize] = true;
                self.present_count += 1;
            }
        }
    }

    /// Cancels requests whose groups are all present now (the losers of a race).
    fn cancel_redundant(&mut self, actions: &mut Vec<Action<P>>) {
        let done: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.groups.clone().all(|g| self.present[g as usize]))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(req) = self.requests.remove(&id) {
                if let Some(p) = self.peers.get_mut(&req.peer) {
                    p.in_flight -= 1;
                }
                actions.push(Action::Cancel { id, peer: req.peer });
            }
        }
    }

    /// Puts the groups of `range` that are neither present nor requested elsewhere back at the
    /// front of the queue.
    fn requeue(&mut self, range: Range<u64>) {
        let wanted: Vec<bool> = (range.start..range.end)
            .map(|g| !self.present[g as usize] && !self.requested(g))
            .collect();
        let mut runs: Vec<Range<u64>> = runs(&wanted, 0..wanted.len() as u64, |w| w)
            .map(|r| r.start + range.start..r.end + range.start)
            .collect();
        runs.reverse();
        for r in runs {
            self.pending.push_front(r);
        }
    }

    fn requested(&self, g: u64) -> bool {
        self.requests.values().any(|r| r.groups.contains(&g))
    }

    /// The next pending range that is still wanted, trimmed to its wanted part.
    fn next_pending(&mut self) -> Option<Range<u64>> {
        while let Some(r) = self.pending.pop_front() {
            let wanted: Vec<bool> = (r.start..r.end)
                .map(|g| !self.present[g as usize] && !self.requested(g))
                .collect();
            let mut parts = runs(&wanted, 0..wanted.len() as u64, |w| w)
                .map(|p| p.start + r.start..p.end + r.start);
            if let Some(first) = parts.next() {
                let rest: Vec<_> = parts.collect();
                for p in rest.into_iter().rev() {
                    self.pending.push_front(p);
                }
                return Some(first);
            }
        }
        None
    }

    /// The best peer with a free slot: fewest in flight, then fastest, then the tie-breaker.
    fn best_peer(&self, idle_only: bool) -> Option<P> {
        self.peers
            .iter()
            .filter(|(_, p)| p.in_flight < self.config.max_in_flight_per_peer)
            .filter(|(_, p)| !idle_only || p.in_flight == 0)
            .min_by(|(_, a), (_, b)| {
                a.in_flight
                    .cmp(&b.in_flight)
                    .then_with(|| {
                        let (ra, rb) = (a.rate.unwrap_or(f64::MAX), b.rate.unwrap_or(f64::MAX));
                        rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal)
                    })
                    .then_with(|| a.tie.cmp(&b.tie))
            })
            .map(|(peer, _)| peer.clone())
    }

    fn schedule(&mut self, now: u64, actions: &mut Vec<Action<P>>) {
        loop {
            if let Some(peer) = self.best_peer(false) {
                if let Some(groups) = self.next_pending() {
                    self.send(now, peer, groups, actions);
                    continue;
                }
            } else {
                return;
            }
            // Nothing left to hand out: let an idle peer race the oldest unraced request.
            let Some(thief) = self.best_peer(true) else {
                return;
            };
            let victim = self
                .requests
                .iter()
                .filter(|(_, r)| r.peer != thief)
                .filter(|(id, r)| {
                    !self.requests.iter().any(|(other, o)| {
                        other != *id
                            && o.groups.start < r.groups.end
                            && r.groups.start < o.groups.end
                    })
                })
                .filter_map(|(_, r)| {
                    // Only the part still missing (a race partner may have verified some).
                    let missing = r.groups.clone().find(|g| !self.present[*g as usize])?;
                    let end = (missing..r.groups.end)
                        .find(|g| self.present[*g as usize])
                        .unwrap_or(r.groups.end);
                    Some((r.started, missing..end))
                })
                .min_by_key(|(started, _)| *started)
                .map(|(_, groups)| groups);
            match victim {
                Some(groups) => self.send(now, thief, groups, actions),
                None => return,
            }
        }
    }

    fn send(&mut self, now: u64, peer: P, groups: Range<u64>, actions: &mut Vec<Action<P>>) {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.in_flight += 1;
        let len = groups.end - groups.start;
        let expected = p.rate.map_or(0, |rate| (len as f64 / rate) as u64);
        let deadline = now
            + self
                .config
                .min_timeout_ms
                .max(expected * self.config.timeout_factor);
        self.requests.insert(
            id,
            Request {
                peer: peer.clone(),
                groups: groups.clone(),
                started: now,
                deadline,
            },
        );
        actions.push(Action::Request { id, peer, groups });
    }
}

/// Maximal runs of indices in `range` (indices into `flags`) whose flag satisfies `pred`.
fn runs<'a, T: Copy>(
    flags: &'a [T],
    range: Range<u64>,
    pred: impl Fn(T) -> bool + 'a,
) -> impl Iterator<Item = Range<u64>> + 'a {
    let mut g = range.start;
    std::iter::from_fn(move || {
        while g < range.end && !pred(flags[g as usize]) {
            g += 1;
        }
        if g >= range.end {
            return None;
        }
        let start = g;
        while g < range.end && pred(flags[g as usize]) {
            g += 1;
        }
        Some(start..g)
    })
}
