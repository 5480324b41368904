//! A limit on the connections one IP address may open to this node: a behaviour that refuses
//! an inbound connection as soon as it arrives (before its handshake) when its address already
//! has [`ConnectionLimits::max_per_ip`](crate::ConnectionLimits::max_per_ip) open or pending.
//!
//! Peer ids cost nothing but addresses do: one machine minting identities fills at most this
//! many of a node's slots. Loopback is exempt (what runs on this machine is the operator's,
//! and a testnet puts every node there); so are the node's own dials.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// The IP address of a multiaddr (its first `/ip4` or `/ip6`), if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Why a connection was refused.
#[derive(Debug)]
struct TooManyFromIp {
    ip: IpAddr,
    limit: u32,
}

impl std::fmt::Display for TooManyFromIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections from {} already (max_per_ip)",
            self.limit, self.ip
        )
    }
}

impl std::error::Error for TooManyFromIp {}

/// Counts inbound connections per remote IP address and refuses those beyond the limit.
#[derive(Debug)]
pub(crate) struct Behaviour {
    limit: u32,
    by_conn: HashMap<ConnectionId, IpAddr>,
    by_ip: HashMap<IpAddr, u32>,
}

impl Behaviour {
    pub(crate) fn new(limit: u32) -> Behaviour {
        Behaviour {
            limit,
            by_conn: HashMap::new(),
            by_ip: HashMap::new(),
        }
    }

    fn forget(&mut self, id: ConnectionId) {
        if let Some(ip) = self.by_conn.remove(&id)
            && let Some(n) = self.by_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote).filter(|ip| !ip.is_loopback()) else {
            return Ok(());
        };
        let n = self.by_ip.entry(ip).or_insert(0);
        if *n >= self.limit {
            return Err(ConnectionDenied::new(TooManyFromIp {
                ip,
                limit: self.limit,
            }));
        }
        *n += 1;
        self.by_conn.insert(id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.forget(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn an_address_gets_its_limit_and_loopback_is_exempt() {
        let mut b = Behaviour::new(2);
        let local = addr("/ip4/10.0.0.1/tcp/4001");
        let far = addr("/ip4/203.0.113.7/tcp/5555");
        let id = ConnectionId::new_unchecked;
        assert!(
            b.handle_pending_inbound_connection(id(1), &local, &far)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(id(2), &local, &far)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(id(3), &local, &far)
                .is_err()
        );
        let other = addr("/ip6/2001:db8::1/udp/4001/quic-v1");
        assert!(
            b.handle_pending_inbound_connection(id(4), &local, &other)
                .is_ok()
        );
        for n in 5..20 {
            let lo = addr("/ip4/127.0.0.1/tcp/1234");
            assert!(
                b.handle_pending_inbound_connection(id(n), &local, &lo)
                    .is_ok()
            );
        }
        // One closes (a failed handshake): the address may connect again.
        b.forget(id(1));
        assert!(
            b.handle_pending_inbound_connection(id(21), &local, &far)
                .is_ok()
        );
        assert_eq!(b.by_ip.get(&ip_of(&far).expect("ip")), Some(&2));
    }
}
