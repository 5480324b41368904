//! moxnet networking: one libp2p `Swarm` in one task behind a cloneable [`Client`].
//!
//! ```no_run
//! # async fn demo(provider: std::sync::Arc<dyn net::Provider>) -> Result<(), net::NetError> {
//! let config = net::NetConfig {
//!     seed: [7; 32],
//!     listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
//!     ..net::NetConfig::default()
//! };
//! let (client, mut events) = net::spawn(config, provider).await?;
//! let hash = protocol::BlobHash::of(b"weights");
//! client.provide(hash).await?;
//! for peer in client.find_providers(hash).await? {
//!     let request = protocol::wire::BlobRequest { hash, groups: vec![(0, 1)] };
//!     let response = client.request_blob(peer, &request).await?;
//!     // hand `response.into_blocking_reader(..)` to the store's `ingest`
//! #   let _ = response;
//! }
//! while let Some(event) = events.recv().await { /* NetEvent::Manifest, PeerConnected, … */ }
//! # Ok(()) }
//! ```
//!
//! # Concepts
//! - **Client / EventLoop / Command**: the event loop (`swarm.rs`) owns the swarm; each
//!   [`Client`] method sends a `Command` with a `oneshot` reply; in-flight queries wait in
//!   `pending_*` maps keyed by query or request id. Channels are bounded.
//! - Behaviours: identify, ping, Kademlia (`/moxnet/kad/1.0.0`, provider records keyed by blob
//!   hash, server mode), gossipsub (signed manifests on `/moxnet/announce/1`, signed compute
//!   offers on `/moxnet/compute/1`), mDNS (optional), request-response (`/moxnet/catalog/1`,
//!   catalogue sync on connect; `/moxnet/infer/1`, inference calls, answered by the node through
//!   an [`InferResponder`]), and a stream protocol
//!   for blob ranges (`/moxnet/blob/1`, its own streams so bulk data never queues behind
//!   control traffic), and one for generations (`/moxnet/generate/1`, tokens streamed as they
//!   are made, answered by the node through a [`GenerateResponder`]). Transports: TCP + noise + yamux, and QUIC.
//! - [`Provider`]: what this node serves, supplied by `node` (backed by the store).
//!   **Boundary:** `net` never touches the disk.
//! - [`fetch`]: the I/O-free multi-peer fetch scheduler.

pub mod blob;
mod codec;
pub mod conns;
pub mod fetch;
pub mod generate;
pub mod per_ip;
pub mod rate;
pub mod streams;
mod swarm;

use std::io::Write;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use protocol::compute::ComputeOffer;
use protocol::wire::BlobRequest;
use protocol::{BlobHash, Manifest, ModelId, NodeId, Signed};
use tokio::sync::{mpsc, oneshot};

pub use blob::{BlobResponse, BlockingReader, ServeLimits};
pub use generate::{GenerateResponder, GenerateStream};
pub use libp2p;

pub use libp2p::metrics::Registry;
pub use swarm::{
    CATALOG_PAGES_PER_SEC, DHT_REFRESH, MAX_CATALOG_ANSWERS, MAX_SYNC_PAGES, MIN_CONNECTIONS,
    RESYNC, SYNC_PEERS, gossip_config,
};
use swarm::{Command, EventLoop, build_swarm};

/// How to start the network.
#[derive(Debug, Clone, Default)]
pub struct NetConfig {
    /// The ed25519 seed of the node's identity (the same key signs what it publishes).
    pub seed: [u8; 32],
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`, `/ip4/0.0.0.0/udp/4001/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to at start (with `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Limits on serving blob streams.
    pub serve: ServeLimits,
    /// Limits on connections.
    pub connections: ConnectionLimits,
    /// A light node: it does not ask the peers it connects to for their catalogues (it only
    /// fetches and calls models by id, and hears announcements). It still answers theirs.
    pub light: bool,
}

/// How many connections a node keeps, and the limits on who may open them (see [`conns`]).
///
/// When more than `max_connections` are open (both ways), the least valuable are closed until
/// `target_connections` remain (`moxnet_net_connections_pruned_total`): gossip mesh peers,
/// bootstrap peers, peers useful in the last [`conns::RECENT`] and newcomers (for
/// [`conns::GRACE`]) are spared while anything else is left. Newcomers and peers useful lately
/// may hold the node above `max_connections`, never above the hard bound `max_connections +
/// max_connections / 4`: beyond it the oldest newcomers give way. Inbound connections are
/// refused at once (`moxnet_net_connections_denied_total`) beyond another quarter of
/// `max_connections` established, `max_pending_incoming` in their handshake, `max_per_peer` with
/// one peer, or `max_per_ip` from one IP address (loopback exempt; see [`per_ip`]).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections kept after a prune (the low watermark).
    pub target_connections: u32,
    /// Connections open at most, both ways (the high watermark).
    pub max_connections: u32,
    /// Inbound connections still in their handshake, at most.
    pub max_pending_incoming: u32,
    /// Connections with one peer, at most.
    pub max_per_peer: u32,
    /// Inbound connections from one IP address (not loopback), at most.
    pub max_per_ip: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            target_connections: 32,
            max_connections: 40,
            max_pending_incoming: 64,
            max_per_peer: 2,
            max_per_ip: 8,
        }
    }
}

/// What this node offers to peers. Implemented by `node` on top of the store; methods are
/// called on blocking threads.
pub trait Provider: Send + Sync + 'static {
    /// The size of a complete blob this node has, if it has it.
    fn blob_size(&self, hash: BlobHash) -> Option<u64>;
    /// The proven size and the chunk groups held (`[start, end)` runs, in order) of a blob this
    /// node is still receiving, if it is: peers fetching it too are served those groups.
    fn holding(&self, hash: BlobHash) -> Option<(u64, Vec<(u64, u64)>)> {
        let _ = hash;
        None
    }
    /// Writes the bao encoding of chunk groups `groups` (`[start, end)`, sorted) of a blob: a
    /// complete one, or one being received when [`Provider::holding`] lists every group asked.
    fn serve(
        &self,
        hash: BlobHash,
        groups: &[(u64, u64)],
        out: &mut dyn Write,
    ) -> std::io::Result<()>;
    /// The ids of the models this node knows whose id is greater than `after`, in id order
    /// (the 32 bytes compared as unsigned bytes), at most `max`: what a peer reconciling its
    /// catalogue walks.
    fn catalog_ids(&self, after: Option<ModelId>, max: usize) -> Vec<ModelId>;
    /// The signed manifest envelope of a model this node knows.
    fn manifest(&self, id: ModelId) -> Option<Vec<u8>>;
    /// Whether this node knows the model already (then a catalogue sync does not ask for it).
    fn knows(&self, id: ModelId) -> bool {
        self.manifest(id).is_some()
    }
    /// The ids of the standing votes this node holds (protocol §13) greater than `after`, in
    /// id order, at most `max`: what a peer reconciling its votes walks. None by default.
    fn vote_ids(&self, after: Option<BlobHash>, max: usize) -> Vec<BlobHash> {
        let _ = (after, max);
        Vec::new()
    }
    /// The envelope of a vote this node holds.
    fn vote(&self, id: BlobHash) -> Option<Vec<u8>> {
        let _ = id;
        None
    }
    /// Whether this node holds the vote (then a sync does not ask for it).
    fn knows_vote(&self, id: BlobHash) -> bool {
        self.vote(id).is_some()
    }
}

/// The way back for one inbound inference call: send the encoded reply once. Dropping it
/// unanswered closes the stream (the caller sees a failed call).
pub struct InferResponder(oneshot::Sender<Vec<u8>>);

impl InferResponder {
    /// Sends the encoded [`protocol::compute::InferReply`].
    pub fn send(self, reply: Vec<u8>) {
        // The caller may have gone (timed out); nothing to do then.
        let _ = self.0.send(reply);
    }
}

impl std::fmt::Debug for InferResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InferResponder")
    }
}

/// The libp2p peer id of a node id (both are the same ed25519 key).
pub fn peer_id_of(node: &NodeId) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(node.as_bytes()).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// The node id of a libp2p peer id, when the peer id embeds an ed25519 key (moxnet's always do).
pub fn node_id_of(peer: &PeerId) -> Option<NodeId> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None; // not an identity multihash: the key is not in the id
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    let bytes = key.try_into_ed25519().ok()?.to_bytes();
    NodeId::from_bytes(bytes).ok()
}

/// Something the network learnt.
#[derive(Debug)]
pub enum NetEvent {
    /// Listening on a new address.
    Listening(Multiaddr),
    /// A connection to a peer opened.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A signed manifest (signature verified), announced by gossip or received in a sync.
    Manifest {
        /// The peer it came from (not necessarily its author).
        from: PeerId,
        /// The manifest.
        manifest: Box<Signed<Manifest>>,
    },
    /// A peer's catalogue lists these models, which this node knows already (a catalogue
    /// sync asks only for the others): the peer is a likely provider of them.
    Listed {
        /// The peer.
        from: PeerId,
        /// Models it lists (at most [`protocol::wire::MAX_CATALOG_IDS`] an event).
        ids: Vec<ModelId>,
    },
    /// A signed compute offer (signature verified), from gossip.
    Offer {
        /// The peer it came from (not necessarily its signer).
        from: PeerId,
        /// The offer.
        offer: Box<Signed<ComputeOffer>>,
    },
    /// A valid vote (envelope and receipts verified) or key revocation, from gossip or a vote
    /// sync.
    Vote {
        /// The peer it came from (not necessarily its signer).
        from: PeerId,
        /// The vote or revocation, checked.
        vote: Box<protocol::vote::VoteMessage>,
        /// Its envelope, as received.
        envelope: Vec<u8>,
    },
    /// A peer calls a model here: decode `call` as a [`protocol::compute::InferCall`] (it is
    /// only bounded in size) and answer through `reply`.
    InferCall {
        /// The caller.
        from: PeerId,
        /// The encoded call.
        call: Vec<u8>,
        /// Where the encoded reply goes.
        reply: InferResponder,
    },
    /// A peer asks for a generation: decode `call` as a [`protocol::compute::InferCall`]
    /// whose input is a [`protocol::generate::GenerateInput`] (it is only bounded in size) and
    /// answer through `responder`, text as it comes, then the end.
    GenerateCall {
        /// The caller.
        from: PeerId,
        /// The encoded call.
        call: Vec<u8>,
        /// The stream back.
        responder: Box<GenerateResponder>,
    },
    /// A peer settles credits: decode `request` as a [`protocol::credits::CreditsRequest`]
    /// (it is only bounded in size) and answer through `reply` with a
    /// [`protocol::credits::CreditsAnswer`].
    CreditsRequest {
        /// The peer.
        from: PeerId,
        /// The encoded request.
        request: Vec<u8>,
        /// Where the encoded answer goes.
        reply: InferResponder,
    },
    /// A peer sent something invalid.
    Rejected {
        /// The peer.
        from: PeerId,
        /// What was wrong.
        reason: String,
    },
}

impl NetEvent {
    /// What kind of event this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            NetEvent::Listening(_) => "listening",
            NetEvent::PeerConnected(_) => "peer-connected",
            NetEvent::PeerDisconnected(_) => "peer-disconnected",
            NetEvent::Manifest { .. } => "manifest",
            NetEvent::Listed { .. } => "listed",
            NetEvent::Offer { .. } => "offer",
            NetEvent::Vote { .. } => "vote",
            NetEvent::InferCall { .. } => "infer-call",
            NetEvent::GenerateCall { .. } => "generate-call",
            NetEvent::CreditsRequest { .. } => "credits-request",
            NetEvent::Rejected { .. } => "rejected",
        }
    }
}

/// Network failures, saying what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The network could not start (bad key, address in use, …).
    #[error("network setup: {0}")]
    Setup(String),
    /// A dial failed.
    #[error("cannot connect to {0}")]
    Dial(String),
    /// A DHT operation failed.
    #[error("DHT: {0}")]
    Dht(String),
    /// Publishing failed.
    #[error("gossip: {0}")]
    Gossip(String),
    /// The peer does not have it, refused, or the connection failed: try another peer.
    #[error("peer {peer} unavailable: {reason}")]
    Unavailable {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer is at capacity: try later or elsewhere.
    #[error("peer {peer} is busy")]
    Busy {
        /// The peer.
        peer: PeerId,
    },
    /// The peer is receiving the blob too and lacks some of the groups asked for: ask it for
    /// those it has, or later.
    #[error("peer {peer} holds only part of the blob")]
    Partial {
        /// The peer.
        peer: PeerId,
        /// The blob's size as the peer states it.
        size: u64,
        /// The chunk groups it holds (`[start, end)`, sorted, at most
        /// [`protocol::wire::MAX_HAVE_RANGES`]).
        have: Vec<(u64, u64)>,
    },
    /// The peer broke the protocol: drop it.
    #[error("peer {peer} misbehaved: {reason}")]
    PeerMisbehaved {
        /// The peer.
        peer: PeerId,
        /// What it did.
        reason: String,
    },
    /// The network task has stopped.
    #[error("the network has shut down")]
    Shutdown,
}

/// A handle to the network task. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    control: streams::Control,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

/// Starts the network: builds the swarm, listens, dials the bootstrap peers, and spawns the
/// event loop and the blob server on the current tokio runtime.
pub async fn spawn(
    config: NetConfig,
    provider: Arc<dyn Provider>,
) -> Result<(Client, mpsc::Receiver<NetEvent>), NetError> {
    spawn_with_metrics(config, provider, &mut Registry::default()).await
}

/// Like [`spawn`], registering the network's metrics in `registry`: libp2p's own
/// (`libp2p_*`: connections, bandwidth per protocol stack, Kademlia, gossipsub, identify, ping)
/// and moxnet's (`moxnet_net_events_dropped_total`, `moxnet_net_streams_dropped_total`,
/// `moxnet_net_blob_streams_busy_total`,
/// `moxnet_net_blob_streams_evicted_total`).
pub async fn spawn_with_metrics(
    config: NetConfig,
    provider: Arc<dyn Provider>,
    registry: &mut Registry,
) -> Result<(Client, mpsc::Receiver<NetEvent>), NetError> {
    let mut swarm = build_swarm(&config, registry)?;
    let peer_id = *swarm.local_peer_id();
    let control = swarm.behaviour().stream.new_control();
    let accept = |p: libp2p::StreamProtocol| {
        control
            .accept(p.clone())
            .ok_or_else(|| NetError::Setup(format!("{p} is accepted twice")))
    };
    let incoming = accept(blob::protocol_id())?;
    let generations = accept(generate::protocol_id())?;
    registry.sub_registry_with_prefix("moxnet_net").register(
        "streams_dropped",
        "Inbound blob and generation streams reset unanswered: their accept queue was full",
        control.dropped(),
    );
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Setup(format!("listening on {addr}: {e}")))?;
    }
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(1024);
    // Peers whose blob requests were served: worth their connections (see `inbound`).
    let (served_tx, served_rx) = mpsc::channel(256);
    tokio::spawn(generate::accept(generations, events_tx.clone()));
    let event_loop = EventLoop::new(
        swarm,
        commands_rx,
        (!config.light).then(|| commands_tx.downgrade()),
        events_tx,
        provider.clone(),
        (&config, served_rx),
        registry,
    )?;
    tokio::spawn(event_loop.run());
    let blob_metrics = blob::ServeMetrics::register(registry);
    tokio::spawn(blob::serve(
        incoming,
        provider,
        config.serve.clone(),
        blob_metrics,
        served_tx,
    ));
    let client = Client {
        peer_id,
        commands: commands_tx,
        control,
    };
    for addr in config.bootstrap {
        // A bootstrap peer that is down must not stop the node from starting.
        let _ = client.dial(addr).await;
    }
    Ok((client, events_rx))
}

impl Client {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Shutdown)?;
        rx.await.map_err(|_| NetError::Shutdown)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Starts listening on another address.
    pub async fn listen(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::Listen { addr, reply })
            .await?
            .map(|_| ())
    }

    /// The addresses this node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// The addresses this node listens on, each with its `/p2p/<peer id>` suffix: what a peer
    /// dials to reach it.
    pub async fn dial_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let me = self.peer_id();
        Ok(self
            .listen_addrs()
            .await?
            .into_iter()
            .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(me)))
            .collect())
    }

    /// Connects to a peer; with `/p2p/<peer id>` in the address, waits until connected.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Makes sure `peer` is connected: returns at once if it is, else dials `addrs` in turn
    /// (each for at most 5 s) until one connects. Whether it connected is returned; a caller
    /// that needs the peer then learns more from its request.
    pub async fn reach(&self, peer: PeerId, addrs: &[Multiaddr]) -> bool {
        if self.peers().await.is_ok_and(|peers| peers.contains(&peer)) {
            return true;
        }
        for addr in addrs {
            if matches!(
                tokio::time::timeout(std::time::Duration::from_secs(5), self.dial(addr.clone()))
                    .await,
                Ok(Ok(()))
            ) {
                return true;
            }
        }
        false
    }

    /// The peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// The connections open now, `(inbound, outbound)` (a peer may have more than one).
    pub async fn connections(&self) -> Result<(usize, usize), NetError> {
        self.call(|reply| Command::Connections { reply }).await
    }

    /// Announces in the DHT that this node provides `hash`.
    pub async fn provide(&self, hash: BlobHash) -> Result<(), NetError> {
        self.call(|reply| Command::Provide { hash, reply }).await?
    }

    /// Peers that the DHT says provide `hash`, as they are found: each comes once, the channel
    /// closes when the query ends, and dropping the receiver ends the query. At most 64 wait
    /// unread; more are dropped.
    pub async fn providers(&self, hash: BlobHash) -> Result<mpsc::Receiver<PeerId>, NetError> {
        let (found, rx) = mpsc::channel(64);
        self.commands
            .send(Command::FindProviders { hash, found })
            .await
            .map_err(|_| NetError::Shutdown)?;
        Ok(rx)
    }

    /// Peers that the DHT says provide `hash`, once the whole query has ended (which waits on
    /// every peer it asks; see [`Client::providers`] to start on the first one found).
    pub async fn find_providers(&self, hash: BlobHash) -> Result<Vec<PeerId>, NetError> {
        let mut found = self.providers(hash).await?;
        let mut all = Vec::new();
        while let Some(peer) = found.recv().await {
            all.push(peer);
        }
        Ok(all)
    }

    /// Publishes a signed manifest envelope on the announcement topic. Fails with
    /// [`NetError::Gossip`] when no peer subscribed to it yet (nobody heard it).
    pub async fn announce(&self, envelope: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Announce { envelope, reply })
            .await?
    }

    /// Asks `peer`, which must be connected (a catalogue request never dials), for the signed
    /// manifests it knows, page by page (at most [`swarm::MAX_SYNC_PAGES`] pages); invalid ones
    /// are dropped.
    pub async fn catalog(&self, peer: PeerId) -> Result<Vec<Signed<Manifest>>, NetError> {
        let mut pager = swarm::CatalogPager::new(self.commands.clone(), peer);
        let mut all = Vec::new();
        while let Some(page) = pager.next_page(false).await? {
            all.extend(page.manifests.into_iter().map(|(_, m)| m));
        }
        Ok(all)
    }

    /// Publishes a signed compute offer envelope on the offer topic.
    pub async fn announce_offer(&self, envelope: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Offer { envelope, reply })
            .await?
    }

    /// Publishes a signed vote envelope on the vote topic.
    pub async fn publish_vote(&self, envelope: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Vote { envelope, reply }).await?
    }

    /// Sends an encoded [`protocol::compute::InferCall`] to `peer` and returns its encoded reply
    /// (bounded in size, not yet decoded). Bound the wait with your own deadline.
    pub async fn infer(&self, peer: PeerId, call: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.call(|reply| Command::Infer { peer, call, reply })
            .await?
    }

    /// Opens a generation on `peer` with an encoded [`protocol::compute::InferCall`] (whose
    /// input is a [`protocol::generate::GenerateInput`]); read the frames from the stream
    /// returned.
    pub async fn generate(&self, peer: PeerId, call: &[u8]) -> Result<GenerateStream, NetError> {
        let _ = self.commands.try_send(Command::Used { peer });
        generate::open(self.control.clone(), peer, call).await
    }

    /// Sends an encoded [`protocol::credits::CreditsRequest`] to `peer`, which must be
    /// connected (settling never dials), and returns its encoded answer (bounded in size, not
    /// yet decoded).
    pub async fn credits(&self, peer: PeerId, request: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.call(|reply| Command::Credits {
            peer,
            request,
            reply,
        })
        .await?
    }

    /// Opens a blob request to `peer`; the response streams the encoded groups.
    pub async fn request_blob(
        &self,
        peer: PeerId,
        request: &BlobRequest,
    ) -> Result<BlobResponse, NetError> {
        // A blob stream does not pass through the swarm task: tell it the peer is in use, so
        // that a prune spares it (a full queue only loses this hint).
        let _ = self.commands.try_send(Command::Used { peer });
        blob::request(self.control.clone(), peer, request).await
    }
}
