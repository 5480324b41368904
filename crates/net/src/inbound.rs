//! Which inbound connections give way when the node is at its inbound limit: the I/O-free core
//! the swarm task feeds with connection events and with what peers did.
//!
//! Peer ids cost nothing, so a flood of identities can take every inbound slot and hold it
//! doing nothing; a plain limit would then refuse every honest newcomer. Instead the node
//! accepts connections up to a hard limit above [`ConnectionLimits::max_incoming`] and, as
//! soon as more than `max_incoming` are open, closes the least valuable ones until it is back
//! at the limit. A connection's value is what its peer did: a peer that never sent a request
//! (a blob stream, a catalogue page, a call) nor a gossip message that verified is worth
//! least, and among those the longest connected goes first; then peers by how long ago they
//! were last useful. A newcomer gets [`GRACE`] to be useful (an honest one syncs the catalogue
//! on connecting) before it can be chosen, unless only newcomers are left. The node's own
//! dials are never counted nor closed.
//!
//! [`ConnectionLimits::max_incoming`]: crate::ConnectionLimits::max_incoming

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

/// How long a new inbound connection is spared while older idle ones are left.
pub const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: PeerId,
    opened: Instant,
}

/// The inbound connections and when each peer was last useful.
#[derive(Debug)]
pub struct Inbound {
    limit: usize,
    conns: HashMap<ConnectionId, Conn>,
    /// Peers with an inbound connection, and when each was last useful (`None`: never).
    useful: HashMap<PeerId, Option<Instant>>,
}

impl Inbound {
    /// At most `limit` inbound connections stay open.
    pub fn new(limit: usize) -> Inbound {
        Inbound {
            limit,
            conns: HashMap::new(),
            useful: HashMap::new(),
        }
    }

    /// Inbound connections open now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A peer opened connection `id` to this node.
    pub fn opened(&mut self, id: ConnectionId, peer: PeerId, now: Instant) {
        self.conns.insert(id, Conn { peer, opened: now });
        self.useful.entry(peer).or_insert(None);
    }

    /// Connection `id` closed (inbound or not: others are ignored).
    pub fn closed(&mut self, id: ConnectionId) {
        if let Some(conn) = self.conns.remove(&id)
            && !self.conns.values().any(|c| c.peer == conn.peer)
        {
            self.useful.remove(&conn.peer);
        }
    }

    /// `peer` did something worth its connection (sent a request, or gossip that verified).
    /// Only peers with an inbound connection are remembered.
    pub fn useful(&mut self, peer: PeerId, now: Instant) {
        if let Some(last) = self.useful.get_mut(&peer) {
            *last = Some(now);
        }
    }

    /// The connections to close to be back at the limit, least valuable first; they are
    /// forgotten here at once (their close events are then ignored).
    pub fn to_close(&mut self, now: Instant) -> Vec<(ConnectionId, PeerId)> {
        let excess = self.conns.len().saturating_sub(self.limit);
        if excess == 0 {
            return Vec::new();
        }
        let mut ranked: Vec<(ConnectionId, Conn)> =
            self.conns.iter().map(|(id, c)| (*id, *c)).collect();
        // Spared newcomers last; then never useful before useful, least recently useful
        // first; then the longest connected first.
        ranked.sort_by_key(|(id, c)| {
            let newcomer = now.saturating_duration_since(c.opened) < GRACE;
            let last = self.useful.get(&c.peer).copied().flatten();
            (newcomer, last.is_some(), last, c.opened, *id)
        });
        let victims: Vec<(ConnectionId, PeerId)> = ranked
            .into_iter()
            .take(excess)
            .map(|(id, c)| (id, c.peer))
            .collect();
        for (id, _) in &victims {
            self.closed(*id);
        }
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conn(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    #[test]
    fn idle_strangers_give_way_to_a_newcomer_and_useful_peers_stay() {
        let t0 = Instant::now();
        let mut inbound = Inbound::new(3);
        let honest = PeerId::random();
        inbound.opened(conn(0), honest, t0);
        let idle: Vec<PeerId> = (1..3).map(|_| PeerId::random()).collect();
        for (i, p) in idle.iter().enumerate() {
            inbound.opened(conn(i + 1), *p, t0 + Duration::from_secs(1));
        }
        inbound.useful(honest, t0 + Duration::from_secs(5));
        assert!(inbound.to_close(t0 + Duration::from_secs(20)).is_empty());
        // A newcomer at the limit: the longest connected idle stranger goes, never the
        // useful peer nor the newcomer.
        let newcomer = PeerId::random();
        let now = t0 + Duration::from_secs(30);
        inbound.opened(conn(9), newcomer, now);
        assert_eq!(inbound.to_close(now), vec![(conn(1), idle[0])]);
        assert_eq!(inbound.len(), 3);
        // The newcomer stays idle past its grace; the next arrival pushes the other stranger
        // out, then the newcomer (both never useful, the stranger connected earlier).
        let later = now + GRACE + Duration::from_secs(1);
        inbound.opened(conn(10), PeerId::random(), later);
        assert_eq!(inbound.to_close(later), vec![(conn(2), idle[1])]);
        inbound.opened(conn(11), PeerId::random(), later);
        assert_eq!(inbound.to_close(later), vec![(conn(9), newcomer)]);
        // Closing the honest peer's connection forgets it.
        inbound.closed(conn(0));
        assert_eq!(inbound.len(), 2);
        inbound.useful(honest, later);
        assert!(!inbound.useful.contains_key(&honest));
    }

    #[test]
    fn when_only_newcomers_are_left_the_oldest_of_them_goes() {
        let t0 = Instant::now();
        let mut inbound = Inbound::new(2);
        for i in 0..3 {
            inbound.opened(
                conn(i),
                PeerId::random(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        let closed = inbound.to_close(t0 + Duration::from_millis(5));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].0, conn(0));
    }

    proptest! {
        /// Whatever the events, the open connections are back at the limit after `to_close`,
        /// and every connection it chose was open (with the peer that opened it).
        #[test]
        fn the_limit_holds_and_idle_ones_go_first(
            ops in proptest::collection::vec((0u8..4, 0usize..12, 0u64..100), 1..200),
            limit in 1usize..6,
        ) {
            let t0 = Instant::now();
            let peers: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
            let mut inbound = Inbound::new(limit);
            let mut open: HashMap<ConnectionId, PeerId> = HashMap::new();
            let mut clock = t0;
            for (op, n, dt) in ops {
                clock += Duration::from_secs(dt);
                match op {
                    0 | 1 => {
                        inbound.opened(conn(n), peers[n], clock);
                        open.insert(conn(n), peers[n]);
                    }
                    2 => {
                        inbound.closed(conn(n));
                        open.remove(&conn(n));
                    }
                    _ => inbound.useful(peers[n], clock),
                }
                let before: Vec<ConnectionId> = open.keys().copied().collect();
                let closed = inbound.to_close(clock);
                for (id, peer) in &closed {
                    prop_assert!(before.contains(id));
                    prop_assert_eq!(open.remove(id), Some(*peer));
                }
                prop_assert!(inbound.len() <= limit);
                prop_assert_eq!(inbound.len(), open.len());
            }
        }
    }
}
