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
//!   [`FetchConfig::max_in_flight_per_peer`] requests in flight (pipelining), as many as it
//!   answers within [`FetchConfig::target_request_ms`]: a peer starts with one, gets one more
//!   for each request answered within that time, and half as many after one that took more than
//!   twice as long (a busy peer, which shares its upload among many, is not asked for more
//!   than it delivers). Free slots go to partial holders first, then to peers of unknown
//!   holdings, then to complete ones (see "Swarming"); among equals, to the peer with the
//!   fewest requests in flight, then the highest measured rate.
//! - **Work stealing (endgame):** when nothing is left to hand out, an idle peer duplicates the
//!   least raced, then oldest, request of another peer (a request runs on at most
//!   [`MAX_RACERS`] peers at once); whichever answers first wins and the others are cancelled.
//!   A slow peer, or one that never answers (one that left, whose dial hangs), therefore never
//!   holds up the end of a fetch. Peers that have delivered race first (fastest first).
//! - **Bad bytes:** a peer whose data fails verification is banned for this blob at once; what
//!   it had in flight is handed to others. Groups it sent that *did* verify are kept.
//! - **Stalls:** a request gets a deadline from the peer's measured rate (at least
//!   [`FetchConfig::min_timeout_ms`]); past it, the request is cancelled and re-queued. A peer
//!   that fails [`FetchConfig::max_failures`] times in a row is dropped (not banned: it may
//!   come back). Requests that were in flight together when one failed and fail with it (a
//!   lost connection, streams the peer dropped) count as one failure: a live peer with four
//!   pipelined requests is not dropped for one incident, while a peer that fails request after
//!   request is. A busy peer rests for [`FetchConfig::busy_rest_ms`] and is not blamed.
//!
//! # Swarming
//! Peers that fetch one blob at once serve each other what they hold, so that its first
//! providers (seeds) send it about once rather than once per fetcher:
//! - Missing ranges are handed out in an order drawn from the seed of the [`Fetch`] (callers mix
//!   in their own identity), so that fetchers start on different parts.
//! - A peer still receiving the blob states what it holds ([`Event::Has`]); it is asked only
//!   for ranges within that, first of all peers. When it holds nothing more that is needed, it
//!   is asked again ("probed") once what it stated is [`FetchConfig::probe_after_ms`] old; an
//!   answer that it lacks the groups ([`Failure::Lacks`]) costs it nothing, unless it had
//!   stated it holds them.
//! - A peer with the whole blob gets one request at a time while a peer that stated it holds
//!   part of it is in the fetch, is asked first for ranges none of those peers holds, and
//!   races only requests that are late (work stealing).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

/// The most peers one request's groups are asked of at once (the first request and its races,
/// see "Work stealing").
pub const MAX_RACERS: usize = 3;

/// Identifies one request sent to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Tuning of a [`Fetch`].
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Groups per request (16 groups = 256 KiB: small enough that peers fetching a blob at
    /// once soon hold parts to give each other).
    pub chunk_groups: u64,
    /// The most requests in flight per peer.
    pub max_in_flight_per_peer: usize,
    /// How long a request should take: a peer that answers faster gets more requests in
    /// flight, one that takes more than twice as long fewer.
    pub target_request_ms: u64,
    /// The shortest deadline of a request, in ms.
    pub min_timeout_ms: u64,
    /// A deadline is this many times the time a request should take at the peer's rate.
    pub timeout_factor: u64,
    /// Consecutive failures (not misbehaviour) after which a peer is dropped; requests that
    /// were in flight together and fail together count as one.
    pub max_failures: u32,
    /// How long a peer that answered busy is left alone, in ms.
    pub busy_rest_ms: u64,
    /// How old what a partial holder stated must be before it is asked for ranges outside it.
    pub probe_after_ms: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            chunk_groups: 16,
            max_in_flight_per_peer: 4,
            target_request_ms: 1_000,
            min_timeout_ms: 10_000,
            timeout_factor: 4,
            max_failures: 3,
            busy_rest_ms: 500,
            probe_after_ms: 1_000,
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
    /// The peer is at capacity: it rests for a while, unblamed.
    Busy,
    /// The peer is receiving the blob too and lacks groups asked for (what it holds came in an
    /// [`Event::Has`]): unblamed, unless it had stated it holds them (then it counts as
    /// [`Failure::Unavailable`], so a peer that keeps claiming groups it never sends is
    /// dropped).
    Lacks,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// A peer that provides the blob (found in the DHT or by gossip, or connected again).
    PeerAdded(P),
    /// A peer disconnected; its requests are lost.
    PeerRemoved(P),
    /// What a peer holds, as its last answer stated: `None` for the whole blob, else the
    /// ranges of chunk groups of a peer still receiving it (adds the peer if it is new). Send
    /// it just before that answer's [`Event::Completed`] or [`Event::Failed`]: it only records,
    /// and the outcome that follows hands out work with it (an update on its own takes effect
    /// at the next event).
    Has {
        /// The peer.
        peer: P,
        /// The groups it holds, sorted; `None`: all.
        have: Option<Vec<Range<u64>>>,
    },
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
    /// The peer had stated it holds all of `groups` when asked: saying it lacks them now
    /// counts as a failure (an honest holder's groups only grow).
    stated_held: bool,
}

/// What a peer is known to hold.
#[derive(Debug, Clone, PartialEq)]
enum Avail {
    /// Not stated yet: asked for anything.
    Unknown,
    /// The whole blob.
    Complete,
    /// The ranges stated at time `at`.
    Partial { have: Vec<Range<u64>>, at: u64 },
}

#[derive(Debug)]
struct Peer {
    in_flight: usize,
    failures: u32,
    /// Requests numbered below this were in flight when its last counted failure came: they
    /// fail with it (one lost connection, one stall), not as failures of their own.
    incident: u64,
    /// Measured groups per ms (exponentially weighted).
    rate: Option<f64>,
    /// Random tie-breaker, fixed per peer.
    tie: u64,
    avail: Avail,
    /// Not asked before this time (it answered busy).
    rest_until: u64,
    /// Requests it may have in flight now (see "Policy").
    depth: usize,
}

impl Peer {
    fn new(tie: u64) -> Peer {
        Peer {
            in_flight: 0,
            failures: 0,
            incident: 0,
            rate: None,
            tie,
            avail: Avail::Unknown,
            rest_until: 0,
            depth: 1,
        }
    }
}

/// How a peer may be used now, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Use {
    /// A partial holder, for ranges within what it stated.
    Within,
    /// A peer of unknown holdings, or a partial holder whose statement is old: any range.
    Probe,
    /// A holder of the whole blob: ranges no partial holder has first.
    Seed,
}

/// The first part of `range` that lies within the sorted runs `have`.
fn within(have: &[Range<u64>], range: Range<u64>) -> Option<Range<u64>> {
    let i = have.partition_point(|h| h.end <= range.start);
    have[i..]
        .iter()
        .map(|h| h.start.max(range.start)..h.end.min(range.end))
        .find(|r| r.start < r.end)
}

fn holds(have: &[Range<u64>], g: u64) -> bool {
    let i = have.partition_point(|h| h.end <= g);
    have.get(i).is_some_and(|h| h.start <= g)
}

/// Pending ranges looked at per choice: bounds the work of one step on a huge blob (the order
/// is random, so these are a fair sample).
const SCAN_LIMIT: usize = 4096;

/// SplitMix64: small, seedable, good enough for tie-breaking and shuffling.
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
    /// Requests in flight for each group (a group raced by two peers has two).
    asked: Vec<u16>,
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
        let mut pending = Vec::new();
        for run in runs(&present, 0..total_groups, |p| !p) {
            let mut start = run.start;
            while start < run.end {
                let end = (start + chunk).min(run.end);
                pending.push(start..end);
                start = end;
            }
        }
        // Fetchers of one blob start on different parts (see "Swarming").
        let mut rng = Rng(seed);
        for i in (1..pending.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            pending.swap(i, j);
        }
        Fetch {
            config,
            rng,
            total: total_groups,
            present,
            present_count,
            asked: vec![0; total_groups as usize],
            pending: pending.into(),
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

    /// Peers in the fetch (neither banned nor dropped).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Applies `event` at time `now` (ms, monotonic) and returns what to do.
    pub fn handle(&mut self, now: u64, event: Event<P>) -> Vec<Action<P>> {
        let mut actions = Vec::new();
        match event {
            Event::PeerAdded(peer) => {
                self.add(peer);
            }
            Event::Has { peer, have } => {
                if let Some(p) = self.add(peer) {
                    p.avail = match have {
                        None => Avail::Complete,
                        Some(mut have) => {
                            have.retain(|r| r.start < r.end);
                            have.sort_by_key(|r| r.start);
                            Avail::Partial { have, at: now }
                        }
                    };
                }
                return actions;
            }
            Event::PeerRemoved(peer) => self.drop_peer(&peer, false, &mut actions),
            Event::Completed { id } => {
                if let Some(req) = self.take_request(id) {
                    let (target, max) = (
                        self.config.target_request_ms,
                        self.config.max_in_flight_per_peer,
                    );
                    if let Some(p) = self.peers.get_mut(&req.peer) {
                        p.in_flight -= 1;
                        p.failures = 0;
                        let took = now.saturating_sub(req.started);
                        if took <= target {
                            p.depth = (p.depth + 1).min(max.max(1));
                        } else if took > 2 * target {
                            p.depth = (p.depth / 2).max(1);
                        }
                        let took = took.max(1) as f64;
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
                if let Some(req) = self.take_request(id) {
                    for r in verified {
                        let r = r.start.max(req.groups.start)..r.end.min(req.groups.end);
                        self.mark_present(r);
                    }
                    self.cancel_redundant(&mut actions);
                    if let Some(p) = self.peers.get_mut(&req.peer) {
                        p.in_flight -= 1;
                    }
                    self.requeue(req.groups);
                    let failure = match failure {
                        Failure::Lacks if req.stated_held => Failure::Unavailable,
                        f => f,
                    };
                    self.punish(now, id, &req.peer, failure, &mut actions);
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
                    if let Some(req) = self.take_request(id) {
                        actions.push(Action::Cancel {
                            id,
                            peer: req.peer.clone(),
                        });
                        if let Some(p) = self.peers.get_mut(&req.peer) {
                            p.in_flight -= 1;
                        }
                        self.requeue(req.groups);
                        self.punish(now, id, &req.peer, Failure::Stalled, &mut actions);
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
        } else if self.requests.is_empty() && self.peers.values().all(|p| p.rest_until <= now) {
            if !self.need_reported {
                self.need_reported = true;
                actions.push(Action::NeedProviders);
            }
        } else {
            self.need_reported = false;
        }
        actions
    }

    /// The peer's state, added if new; `None` if it is banned.
    fn add(&mut self, peer: P) -> Option<&mut Peer> {
        if self.banned.contains(&peer) {
            return None;
        }
        if !self.peers.contains_key(&peer) {
            let tie = self.rng.next();
            self.peers.insert(peer.clone(), Peer::new(tie));
        }
        self.peers.get_mut(&peer)
    }

    /// Charges `peer` with the failure of request `id`.
    fn punish(
        &mut self,
        now: u64,
        id: RequestId,
        peer: &P,
        failure: Failure,
        actions: &mut Vec<Action<P>>,
    ) {
        match failure {
            Failure::Busy => {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.rest_until = now + self.config.busy_rest_ms;
                    p.depth = 1;
                }
            }
            Failure::Lacks => {}
            Failure::Misbehaved => self.drop_peer(peer, true, actions),
            Failure::Unavailable | Failure::Stalled => {
                let next = self.next_id;
                let dropped = match self.peers.get_mut(peer) {
                    // Sent before the failure last counted against the peer: the same
                    // incident (its requests in flight fail together when a connection drops
                    // or it stops sending).
                    Some(p) if id.0 < p.incident => false,
                    Some(p) => {
                        p.failures += 1;
                        p.incident = next;
                        p.depth = 1;
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
            if let Some(req) = self.take_request(id) {
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
            if let Some(req) = self.take_request(id) {
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
        self.asked.get(g as usize).is_some_and(|n| *n > 0)
    }

    /// Removes a request, and its groups from those asked for.
    fn take_request(&mut self, id: RequestId) -> Option<Request<P>> {
        let req = self.requests.remove(&id)?;
        for g in req.groups.clone() {
            if let Some(n) = self.asked.get_mut(g as usize) {
                *n = n.saturating_sub(1);
            }
        }
        Some(req)
    }

    /// Takes the first part of a pending range that is still wanted and that `pick` accepts
    /// (`pick` maps a wanted run to the part of it to take). The rest of that range stays
    /// pending, in place. Looks at most [`SCAN_LIMIT`] ranges ahead.
    fn take_pending(
        &mut self,
        mut pick: impl FnMut(&Self, Range<u64>) -> Option<Range<u64>>,
    ) -> Option<Range<u64>> {
        let mut i = 0;
        let mut scanned = 0;
        while i < self.pending.len() && scanned < SCAN_LIMIT {
            scanned += 1;
            let r = self.pending[i].clone();
            let wanted: Vec<bool> = (r.start..r.end)
                .map(|g| !self.present[g as usize] && !self.requested(g))
                .collect();
            let parts: Vec<Range<u64>> = runs(&wanted, 0..wanted.len() as u64, |w| w)
                .map(|p| p.start + r.start..p.end + r.start)
                .collect();
            if parts.is_empty() {
                // Nothing of it is wanted any more.
                self.pending.remove(i);
                continue;
            }
            let taken = parts
                .iter()
                .find_map(|part| pick(self, part.clone()).filter(|t| t.start < t.end));
            let Some(taken) = taken else {
                i += 1;
                continue;
            };
            self.pending.remove(i);
            // What is left of the range's wanted parts goes back where it was, in order.
            let mut rest = Vec::new();
            for part in parts {
                if part.start < taken.start {
                    rest.push(part.start..part.end.min(taken.start));
                }
                if part.end > taken.end {
                    rest.push(part.start.max(taken.end)..part.end);
                }
            }
            for (k, p) in rest.into_iter().filter(|p| p.start < p.end).enumerate() {
                self.pending.insert(i + k, p);
            }
            return Some(taken);
        }
        None
    }

    /// Whether any peer in the fetch stated that it holds part of the blob.
    fn swarming(&self) -> bool {
        self.peers
            .values()
            .any(|p| matches!(p.avail, Avail::Partial { .. }))
    }

    /// How `peer` may be used at `now`.
    fn usage(&self, p: &Peer, now: u64) -> Use {
        match &p.avail {
            Avail::Unknown => Use::Probe,
            Avail::Complete => Use::Seed,
            Avail::Partial { at, .. } if now.saturating_sub(*at) >= self.config.probe_after_ms => {
                Use::Probe
            }
            Avail::Partial { .. } => Use::Within,
        }
    }

    /// The part of the wanted run `part` to ask `peer` for, used as `usage`.
    fn pick_for(&self, peer: &Peer, usage: Use, part: Range<u64>) -> Option<Range<u64>> {
        match (usage, &peer.avail) {
            (Use::Within, Avail::Partial { have, .. }) => within(have, part),
            (Use::Seed, _) if self.swarming() => {
                // What no partial holder has, if any: they can serve the rest.
                let held = |g: u64| {
                    self.peers.values().any(|q| match &q.avail {
                        Avail::Partial { have, .. } => holds(have, g),
                        _ => false,
                    })
                };
                let start = part.clone().find(|g| !held(*g))?;
                let end = (start..part.end).find(|g| held(*g)).unwrap_or(part.end);
                Some(start..end)
            }
            _ => Some(part),
        }
    }

    /// Peers with a free slot that may be asked now, best first: partial holders, then peers
    /// to probe, then seeds; within each, fewest in flight, then fastest, then the tie-breaker.
    fn candidates(&self, now: u64, idle_only: bool) -> Vec<(P, Use)> {
        let swarming = self.swarming();
        let mut out: Vec<(&P, &Peer, Use)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.rest_until <= now)
            .map(|(k, p)| (k, p, self.usage(p, now)))
            .filter(|(_, p, usage)| {
                // A seed gets one request at a time while peers may serve each other.
                let cap = if *usage == Use::Seed && swarming {
                    1
                } else {
                    p.depth.min(self.config.max_in_flight_per_peer)
                };
                p.in_flight < cap && (!idle_only || p.in_flight == 0)
            })
            .collect();
        out.sort_by(|(_, a, ua), (_, b, ub)| {
            ua.cmp(ub)
                .then_with(|| a.in_flight.cmp(&b.in_flight))
                .then_with(|| {
                    let (ra, rb) = (a.rate.unwrap_or(f64::MAX), b.rate.unwrap_or(f64::MAX));
                    rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal)
                })
                .then_with(|| a.tie.cmp(&b.tie))
        });
        out.into_iter().map(|(k, _, u)| (k.clone(), u)).collect()
    }

    fn schedule(&mut self, now: u64, actions: &mut Vec<Action<P>>) {
        'more: loop {
            let candidates = self.candidates(now, false);
            if candidates.is_empty() {
                return;
            }
            for (peer, usage) in &candidates {
                let taken = self.take_pending(|fetch, part| {
                    let p = fetch.peers.get(peer)?;
                    fetch.pick_for(p, *usage, part)
                });
                if let Some(groups) = taken {
                    self.send(now, peer.clone(), groups, actions);
                    continue 'more;
                }
            }
            // Nothing left to hand out that these peers can serve: let an idle peer race the
            // oldest unraced request it can serve. While peers serve each other, a seed races
            // only requests that are late (more than twice the target time old): its upload is
            // what the swarm spares.
            // Peers that have delivered race first, fastest first: a request is raced by one
            // peer at a time, so a peer that never answered (one that left, whose dial hangs)
            // must not take the race from a seed that is idle.
            let swarming = self.swarming();
            let late = now.saturating_sub(2 * self.config.target_request_ms);
            let mut thieves = self.candidates(now, true);
            let rate = |p: &P| self.peers.get(p).and_then(|p| p.rate);
            thieves.sort_by(|(a, _), (b, _)| match (rate(a), rate(b)) {
                (Some(ra), Some(rb)) => rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
            for (thief, usage) in thieves {
                let Some(t) = self.peers.get(&thief) else {
                    continue;
                };
                let victim = self
                    .requests
                    .iter()
                    .filter(|(_, r)| r.peer != thief)
                    .filter(|(_, r)| !(swarming && usage == Use::Seed && r.started > late))
                    .filter_map(|(_, r)| {
                        // Requests already racing for these groups (this one included): the
                        // least raced goes first, and none more than `MAX_RACERS` times.
                        let racers = self
                            .requests
                            .values()
                            .filter(|o| {
                                o.groups.start < r.groups.end && r.groups.start < o.groups.end
                            })
                            .count();
                        (racers < MAX_RACERS).then_some((racers, r))
                    })
                    .filter_map(|(racers, r)| {
                        // Only the part still missing (a race partner may have verified some).
                        let missing = r.groups.clone().find(|g| !self.present[*g as usize])?;
                        let end = (missing..r.groups.end)
                            .find(|g| self.present[*g as usize])
                            .unwrap_or(r.groups.end);
                        let part = match (usage, &t.avail) {
                            (Use::Within, Avail::Partial { have, .. }) => {
                                within(have, missing..end)?
                            }
                            _ => missing..end,
                        };
                        Some(((racers, r.started), part))
                    })
                    .min_by_key(|(key, _)| *key)
                    .map(|(_, groups)| groups);
                if let Some(groups) = victim {
                    self.send(now, thief, groups, actions);
                    continue 'more;
                }
            }
            return;
        }
    }

    fn send(&mut self, now: u64, peer: P, groups: Range<u64>, actions: &mut Vec<Action<P>>) {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.in_flight += 1;
        let stated_held = match &p.avail {
            Avail::Partial { have, .. } => within(have, groups.clone()) == Some(groups.clone()),
            _ => false,
        };
        let len = groups.end - groups.start;
        let expected = p.rate.map_or(0, |rate| (len as f64 / rate) as u64);
        let deadline = now
            + self
                .config
                .min_timeout_ms
                .max(expected * self.config.timeout_factor);
        for g in groups.clone() {
            if let Some(n) = self.asked.get_mut(g as usize) {
                *n = n.saturating_add(1);
            }
        }
        self.requests.insert(
            id,
            Request {
                peer: peer.clone(),
                groups: groups.clone(),
                started: now,
                deadline,
                stated_held,
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
