//! Which connections a node keeps: the I/O-free core of its connection manager, fed by the
//! swarm task with connection events and with what peers did.
//!
//! Every connection costs both ends memory, a keep-alive and a share of gossip, and libp2p keeps
//! a connection open for as long as a gossipsub stream is on it, so without a manager a node
//! ends up connected to every peer its DHT queries ever touched (a full mesh at 100 nodes). The
//! manager holds the count between two watermarks, as operators know from other peer-to-peer
//! daemons: when more than [`Watermarks::high`] connections are open, the least valuable are
//! closed until [`Watermarks::low`] remain.
//!
//! A connection's value is what its peer did: a peer that never sent nor answered a request (a
//! blob stream, a call, a catalogue page it asked for or one that taught this node a manifest)
//! nor relayed gossip that verified is worth least, and
//! among those the longest connected goes first; then peers by how long ago they were last
//! useful. Spared from the prune down to `low`:
//! - *protected* peers, which the caller names at each prune: gossip mesh peers (they carry
//!   every announcement), bootstrap peers;
//! - newcomers, for [`GRACE`] (an honest one syncs or asks for something at once);
//! - peers useful in the last [`RECENT`] (a request in flight counts from when it was sent).
//!
//! If only spared connections are left above `high`, protected but idle peers go down to `high`
//! (gossipsub grafts others into its mesh). Newcomers and peers useful lately may keep the node
//! above `high` for a while (a newcomer for its grace, after which it is prunable), but never
//! above the hard bound ([`Watermarks::hard`], `high + high / 4`): beyond it newcomers go too,
//! the oldest first, and peers useful lately only when nothing else is left. Peer ids cost
//! nothing, so a flood of identities competes for the newcomers' room, never for the place of a
//! peer that did something lately.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

/// How long a new connection is spared while older idle ones are left.
pub const GRACE: Duration = Duration::from_secs(10);

/// A peer that was useful this recently (asked or answered a request, relayed gossip that
/// verified) is spared by a prune while others are left, like a protected one.
pub const RECENT: Duration = Duration::from_secs(300);

/// How many connections a node keeps: it prunes from above `high` down to `low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// Connections kept after a prune.
    pub low: usize,
    /// Connections open at most, but for newcomers and peers useful lately (beyond it the node
    /// prunes).
    pub high: usize,
}

impl Watermarks {
    /// Connections open at most, whatever they are: `high + high / 4`.
    pub fn hard(&self) -> usize {
        self.high + self.high / 4
    }
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: PeerId,
    opened: Instant,
}

/// The open connections and when each peer was last useful.
#[derive(Debug)]
pub struct Connections {
    marks: Watermarks,
    conns: HashMap<ConnectionId, Conn>,
    /// Peers with a connection, and when each was last useful (`None`: never).
    useful: HashMap<PeerId, Option<Instant>>,
}

impl Connections {
    /// Keeps between `marks.low` and `marks.high` connections (`low` is at most `high`, and
    /// `high` at least 1).
    pub fn new(marks: Watermarks) -> Connections {
        let high = marks.high.max(1);
        Connections {
            marks: Watermarks {
                low: marks.low.min(high),
                high,
            },
            conns: HashMap::new(),
            useful: HashMap::new(),
        }
    }

    /// The watermarks in force.
    pub fn watermarks(&self) -> Watermarks {
        self.marks
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connection `id` with `peer` opened (either way).
    pub fn opened(&mut self, id: ConnectionId, peer: PeerId, now: Instant) {
        self.conns.insert(id, Conn { peer, opened: now });
        self.useful.entry(peer).or_insert(None);
    }

    /// Connection `id` closed (one this manager does not know is ignored).
    pub fn closed(&mut self, id: ConnectionId) {
        if let Some(conn) = self.conns.remove(&id)
            && !self.conns.values().any(|c| c.peer == conn.peer)
        {
            self.useful.remove(&conn.peer);
        }
    }

    /// `peer` did something worth its connection (asked or answered a request, relayed gossip
    /// that verified). Only connected peers are remembered.
    pub fn useful(&mut self, peer: PeerId, now: Instant) {
        if let Some(last) = self.useful.get_mut(&peer) {
            *last = Some(now);
        }
    }

    /// Whether a prune would close anything now.
    pub fn over(&self) -> bool {
        self.conns.len() > self.marks.high
    }

    /// The connections to close, least valuable first, when more than `high` are open: the
    /// prunable ones down to `low`; then, still above `high`, protected idle peers down to
    /// `high`; then, still above the hard bound, newcomers and at last peers useful lately down
    /// to it. They are forgotten here at once (their close events are then ignored).
    pub fn prune(
        &mut self,
        now: Instant,
        protected: impl Fn(&PeerId) -> bool,
    ) -> Vec<(ConnectionId, PeerId)> {
        if !self.over() {
            return Vec::new();
        }
        let ranked = self.ranked(now, protected);
        let count = |max_class: Class| ranked.iter().filter(|(c, _, _)| *c <= max_class).count();
        let len = self.conns.len();
        let (low, high, hard) = (self.marks.low, self.marks.high, self.marks.hard());
        let n = (len - low)
            .min(count(Class::Prunable))
            .max((len - high).min(count(Class::Idle)))
            .max(len.saturating_sub(hard));
        let victims: Vec<(ConnectionId, PeerId)> = ranked
            .into_iter()
            .take(n)
            .map(|(_, id, c)| (id, c.peer))
            .collect();
        for (id, _) in &victims {
            self.closed(*id);
        }
        victims
    }

    /// Every connection with its class, least valuable first: by class, then never useful
    /// before useful, least recently useful first, then the longest connected first.
    fn ranked(
        &self,
        now: Instant,
        protected: impl Fn(&PeerId) -> bool,
    ) -> Vec<(Class, ConnectionId, Conn)> {
        let mut ranked: Vec<(Class, ConnectionId, Conn)> = self
            .conns
            .iter()
            .map(|(id, c)| {
                let last = self.useful.get(&c.peer).copied().flatten();
                let class = if last.is_some_and(|t| now.saturating_duration_since(t) < RECENT) {
                    Class::Busy
                } else if now.saturating_duration_since(c.opened) < GRACE {
                    Class::Newcomer
                } else if protected(&c.peer) {
                    Class::Idle
                } else {
                    Class::Prunable
                };
                (class, *id, *c)
            })
            .collect();
        ranked.sort_by_key(|(class, id, c)| {
            let last = self.useful.get(&c.peer).copied().flatten();
            (*class, last.is_some(), last, c.opened, *id)
        });
        ranked
    }
}

/// What a connection is worth to a prune, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Neither protected, nor new, nor useful lately.
    Prunable,
    /// Protected (a gossip mesh or bootstrap peer) but not useful lately.
    Idle,
    /// Opened less than [`GRACE`] ago.
    Newcomer,
    /// Useful in the last [`RECENT`].
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn conn(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    fn marks(low: usize, high: usize) -> Watermarks {
        Watermarks { low, high }
    }

    #[test]
    fn idle_strangers_give_way_and_useful_peers_stay() {
        let t0 = Instant::now();
        let mut conns = Connections::new(marks(2, 3));
        let honest = PeerId::random();
        conns.opened(conn(0), honest, t0);
        let idle: Vec<PeerId> = (1..3).map(|_| PeerId::random()).collect();
        for (i, p) in idle.iter().enumerate() {
            conns.opened(conn(i + 1), *p, t0 + Duration::from_secs(1));
        }
        conns.useful(honest, t0 + Duration::from_secs(5));
        assert!(
            conns
                .prune(t0 + Duration::from_secs(20), |_| false)
                .is_empty()
        );
        // A newcomer above the high watermark: down to the low one, the idle strangers
        // longest connected first, never the useful peer nor the newcomer.
        let newcomer = PeerId::random();
        let now = t0 + Duration::from_secs(30);
        conns.opened(conn(9), newcomer, now);
        assert_eq!(
            conns.prune(now, |_| false),
            vec![(conn(1), idle[0]), (conn(2), idle[1])]
        );
        assert_eq!(conns.len(), 2);
        // Closing the honest peer's connection forgets it.
        conns.closed(conn(0));
        assert_eq!(conns.len(), 1);
        conns.useful(honest, now);
        assert!(!conns.useful.contains_key(&honest));
    }

    #[test]
    fn protected_peers_and_newcomers_are_spared_while_others_are_left() {
        let t0 = Instant::now();
        let mut conns = Connections::new(marks(1, 3));
        let mesh = PeerId::random();
        conns.opened(conn(0), mesh, t0);
        let others: Vec<PeerId> = (1..4).map(|_| PeerId::random()).collect();
        for (i, p) in others.iter().enumerate() {
            conns.opened(conn(i + 1), *p, t0);
        }
        // The mesh peer is the least useful, but protected: the others (useful, but not
        // recently) go down to `low`.
        for p in &others {
            conns.useful(*p, t0);
        }
        let now = t0 + RECENT;
        let closed = conns.prune(now, |p| *p == mesh);
        assert_eq!(closed.len(), 3);
        assert!(closed.iter().all(|(_, p)| *p != mesh));
        assert_eq!(conns.len(), 1);
    }

    #[test]
    fn above_high_with_only_newcomers_left_the_oldest_of_them_goes() {
        let t0 = Instant::now();
        let mut conns = Connections::new(marks(1, 2));
        for i in 0..3 {
            conns.opened(
                conn(i),
                PeerId::random(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        let closed = conns.prune(t0 + Duration::from_millis(5), |_| false);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].0, conn(0));
    }

    proptest! {
        /// Whatever the events, after a prune: no more than the hard bound are open, and more
        /// than `high` only if all are newcomers or useful lately; every connection it chose
        /// was open (with its peer); a protected one goes only when no prunable one is left, a
        /// newcomer or busy one only to get back to the hard bound; never below `low`.
        #[test]
        fn the_watermarks_hold_and_the_spared_go_last(
            ops in proptest::collection::vec((0u8..4, 0usize..16, 0u64..20), 1..200),
            low in 0usize..6,
            extra in 1usize..6,
            guarded in proptest::collection::hash_set(0usize..16, 0..5),
        ) {
            let high = low + extra;
            let t0 = Instant::now();
            let peers: Vec<PeerId> = (0..16).map(|_| PeerId::random()).collect();
            let protected: HashSet<PeerId> = guarded.iter().map(|i| peers[*i]).collect();
            let is_protected = |p: &PeerId| protected.contains(p);
            let mut conns = Connections::new(marks(low, high));
            let mut open: HashMap<ConnectionId, (PeerId, Instant)> = HashMap::new();
            let mut clock = t0;
            let mut useful: HashMap<PeerId, Instant> = HashMap::new();
            for (op, n, dt) in ops {
                clock += Duration::from_secs(dt);
                match op {
                    0 | 1 => {
                        conns.opened(conn(n), peers[n], clock);
                        open.insert(conn(n), (peers[n], clock));
                    }
                    2 => {
                        conns.closed(conn(n));
                        open.remove(&conn(n));
                    }
                    _ => {
                        conns.useful(peers[n], clock);
                        if open.values().any(|(p, _)| *p == peers[n]) {
                            useful.insert(peers[n], clock);
                        }
                    }
                }
                useful.retain(|p, _| open.values().any(|(q, _)| q == p));
                let before = open.len();
                let keen = |(p, at): &(PeerId, Instant)| {
                    clock.saturating_duration_since(*at) < GRACE
                        || useful
                            .get(p)
                            .is_some_and(|t| clock.saturating_duration_since(*t) < RECENT)
                };
                let prunable = |e: &(PeerId, Instant)| !keen(e) && !is_protected(&e.0);
                let closed = conns.prune(clock, is_protected);
                let (mut closed_keen, mut closed_idle) = (false, false);
                for (id, peer) in &closed {
                    let entry = open.remove(id);
                    prop_assert_eq!(entry.map(|e| e.0), Some(*peer));
                    if let Some(e) = entry {
                        closed_keen |= keen(&e);
                        closed_idle |= !keen(&e) && is_protected(&e.0);
                    }
                }
                prop_assert_eq!(conns.len(), open.len());
                prop_assert!(conns.len() <= high + high / 4);
                if !closed.is_empty() {
                    prop_assert!(conns.len() >= low.min(before));
                }
                if conns.len() > high {
                    // Only newcomers and peers useful lately keep it above `high`.
                    prop_assert!(open.values().all(keen));
                }
                if closed_idle {
                    prop_assert!(!open.values().any(prunable));
                }
                if closed_keen {
                    // Newcomers and busy peers go only to get back to the hard bound.
                    prop_assert!(open.values().all(keen));
                    prop_assert_eq!(conns.len(), high + high / 4);
                }
            }
        }
    }
}
