//! Raw libp2p streams for moxnet's own protocols (`/moxnet/blob/1`, `/moxnet/generate/1`): a
//! [`Behaviour`] in the swarm, a cloneable [`Control`] to open streams to a peer (dialling it
//! if needed), and an [`Incoming`] queue per accepted protocol.
//!
//! Each accepted protocol has a queue of [`ACCEPT_QUEUE`] negotiated streams waiting for its
//! accept loop; a stream that finds it full is dropped (the peer sees it reset before any
//! answer) and counted in [`Control::dropped`] (`moxnet_net_streams_dropped_total`). `libp2p-stream`, which this replaces, held one
//! waiting stream per protocol: a requester's pipelined streams negotiated in one poll of a
//! connection, or several peers' streams arriving together, were dropped whenever the accept
//! loop had not run in between (under load, several in every fetch).
//!
//! Bounds: opens in flight from all [`Control`]s together [`OPEN_QUEUE`] (more wait to be
//! sent); opens waiting for a dial, [`MAX_WAITING_PER_PEER`] a peer (more fail at once) until
//! the dial ends; outbound streams being negotiated on a connection are libp2p's own bound.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    DialError, DialFailure, FromSwarm, NetworkBehaviour, NotifyHandler, StreamUpgradeError,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

/// Negotiated streams of one protocol waiting for its accept loop, at most.
pub const ACCEPT_QUEUE: usize = 64;
/// Stream opens from all [`Control`]s waiting for the swarm task, at most.
pub const OPEN_QUEUE: usize = 256;
/// Stream opens waiting for a dial to one peer, at most.
pub const MAX_WAITING_PER_PEER: usize = 64;

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum OpenStreamError {
    /// The peer does not speak the protocol.
    Unsupported(StreamProtocol),
    /// It could not be reached, or the connection failed.
    Io(io::Error),
    /// The swarm task has stopped.
    Shutdown,
}

impl fmt::Display for OpenStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenStreamError::Unsupported(p) => write!(f, "the peer does not support {p}"),
            OpenStreamError::Io(e) => write!(f, "{e}"),
            OpenStreamError::Shutdown => write!(f, "the network has stopped"),
        }
    }
}

impl std::error::Error for OpenStreamError {}

type Reply = oneshot::Sender<Result<Stream, OpenStreamError>>;

/// A request to open a stream, passed from the [`Behaviour`] to a connection's [`Handler`].
#[derive(Debug)]
pub struct Open {
    peer: PeerId,
    protocol: StreamProtocol,
    reply: Reply,
}

/// The accepted protocols, shared by the behaviour, its handlers and the controls.
#[derive(Default)]
struct Accepting {
    queues: Mutex<HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>>,
    dropped: Counter,
}

impl Accepting {
    fn protocols(&self) -> Vec<StreamProtocol> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.retain(|_, q| !q.is_closed());
        queues.keys().cloned().collect()
    }

    /// Hands a negotiated inbound stream to its protocol's queue, or drops it.
    fn deliver(&self, peer: PeerId, stream: Stream, protocol: StreamProtocol) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queues.get(&protocol) else {
            tracing::debug!(%peer, %protocol, "a stream of a protocol no longer accepted: dropped");
            return;
        };
        if let Err(e) = queue.try_send((peer, stream)) {
            self.dropped.inc();
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "its accept queue is full",
                mpsc::error::TrySendError::Closed(_) => "it is no longer accepted",
            };
            tracing::debug!(%peer, %protocol, "an inbound stream dropped: {why}");
        }
    }
}

/// Opens streams and accepts them. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    opens: mpsc::Sender<Open>,
    accepting: Arc<Accepting>,
}

impl Control {
    /// Opens a stream of `protocol` to `peer`, dialling it if it is not connected. Bound the
    /// wait with your own deadline (a dial to a peer that left can take long).
    pub async fn open_stream(
        &mut self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        let (reply, answer) = oneshot::channel();
        self.opens
            .send(Open {
                peer,
                protocol,
                reply,
            })
            .await
            .map_err(|_| OpenStreamError::Shutdown)?;
        // The reply is dropped unanswered when the connection closes first.
        answer.await.map_err(|_| {
            OpenStreamError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection closed before the stream was open",
            ))
        })?
    }

    /// Accepts inbound streams of `protocol` (until the [`Incoming`] is dropped); `None` if it
    /// is accepted already.
    pub fn accept(&self, protocol: StreamProtocol) -> Option<Incoming> {
        let mut queues = self
            .accepting
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        queues.retain(|_, q| !q.is_closed());
        if queues.contains_key(&protocol) {
            return None;
        }
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        queues.insert(protocol, tx);
        Some(Incoming(rx))
    }

    /// Inbound streams dropped so far (their queue was full, or no longer accepted), as a
    /// counter to register.
    pub fn dropped(&self) -> Counter {
        self.accepting.dropped.clone()
    }
}

/// The inbound streams of one protocol, with the peer that opened each.
pub struct Incoming(mpsc::Receiver<(PeerId, Stream)>);

impl Incoming {
    /// The next stream; `None` once the swarm has stopped.
    pub async fn next(&mut self) -> Option<(PeerId, Stream)> {
        self.0.recv().await
    }
}

/// The swarm's part: routes opens to a connection of their peer (dialling it first if needed)
/// and gives each connection a [`Handler`].
pub struct Behaviour {
    accepting: Arc<Accepting>,
    opens: mpsc::Receiver<Open>,
    control: mpsc::Sender<Open>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Opens waiting for a connection to their peer (a dial is under way).
    waiting: HashMap<PeerId, Vec<Open>>,
    events: VecDeque<ToSwarm<Infallible, Open>>,
    waker: Option<Waker>,
    /// Opens routed so far: spreads them over a peer's connections.
    routed: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::new()
    }
}

impl Behaviour {
    /// A behaviour accepting nothing yet (see [`Control::accept`]).
    pub fn new() -> Behaviour {
        let (control, opens) = mpsc::channel(OPEN_QUEUE);
        Behaviour {
            accepting: Arc::default(),
            opens,
            control,
            connections: HashMap::new(),
            waiting: HashMap::new(),
            events: VecDeque::new(),
            waker: None,
            routed: 0,
        }
    }

    /// A control for this behaviour's streams.
    pub fn new_control(&self) -> Control {
        Control {
            opens: self.control.clone(),
            accepting: self.accepting.clone(),
        }
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            remote: peer,
            accepting: self.accepting.clone(),
            queued: VecDeque::new(),
            waker: None,
        }
    }

    fn route(&mut self, open: Open) {
        if open.reply.is_closed() {
            return;
        }
        if let Some(conns) = self.connections.get(&open.peer).filter(|c| !c.is_empty()) {
            let conn = conns[self.routed % conns.len()];
            self.routed = self.routed.wrapping_add(1);
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: open.peer,
                handler: NotifyHandler::One(conn),
                event: open,
            });
            return;
        }
        let peer = open.peer;
        let dial = !self.waiting.contains_key(&peer);
        let waiting = self.waiting.entry(peer).or_default();
        waiting.retain(|o| !o.reply.is_closed());
        if waiting.len() >= MAX_WAITING_PER_PEER {
            let _ = open
                .reply
                .send(Err(OpenStreamError::Io(io::Error::other(format!(
                    "{MAX_WAITING_PER_PEER} streams already wait for a connection to {peer}"
                )))));
            return;
        }
        waiting.push(open);
        if dial {
            self.events.push_back(ToSwarm::Dial {
                opts: DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            });
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            }) => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push(connection_id);
                for open in self.waiting.remove(&peer_id).unwrap_or_default() {
                    self.route(open);
                }
                self.wake();
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|c| *c != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) => {
                // Another dial to the peer is under way: its outcome decides.
                if matches!(error, DialError::DialPeerConditionFalse(_))
                    || self.connections.contains_key(&peer)
                {
                    return;
                }
                let reason = error.to_string();
                for open in self.waiting.remove(&peer).unwrap_or_default() {
                    let _ = open.reply.send(Err(OpenStreamError::Io(io::Error::new(
                        io::ErrorKind::NotConnected,
                        reason.clone(),
                    ))));
                }
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

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(open)) = self.opens.poll_recv(cx) {
            self.route(open);
        }
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One connection's part: negotiates the outbound streams routed to it and hands inbound ones
/// to their protocol's queue.
pub struct Handler {
    remote: PeerId,
    accepting: Arc<Accepting>,
    queued: VecDeque<Open>,
    waker: Option<Waker>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Open;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = Protocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = (StreamProtocol, Reply);

    fn listen_protocol(&self) -> SubstreamProtocol<Protocols> {
        SubstreamProtocol::new(Protocols(self.accepting.protocols()), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Protocols, (StreamProtocol, Reply), Infallible>> {
        while let Some(open) = self.queued.pop_front() {
            if open.reply.is_closed() {
                continue;
            }
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(
                    Protocols(vec![open.protocol.clone()]),
                    (open.protocol, open.reply),
                ),
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, open: Open) {
        self.queued.push_back(open);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Protocols, Protocols, (), (StreamProtocol, Reply)>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => self.accepting.deliver(self.remote, stream, protocol),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: (_, reply),
            }) => {
                // The opener may have stopped waiting: dropping the stream closes it.
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError {
                info: (protocol, reply),
                error,
            }) => {
                let error = match error {
                    StreamUpgradeError::Timeout => {
                        OpenStreamError::Io(io::Error::from(io::ErrorKind::TimedOut))
                    }
                    StreamUpgradeError::NegotiationFailed => OpenStreamError::Unsupported(protocol),
                    StreamUpgradeError::Io(e) => OpenStreamError::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}

/// The protocols offered (inbound: every accepted one) or asked for (outbound: one).
#[derive(Debug, Clone)]
pub struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}
