//! The libp2p `Swarm`, owned by one [`EventLoop`] task; the rest of the program talks to it
//! through a [`Client`](crate::Client) sending [`Command`]s with `oneshot` replies.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::kad::{self, K_VALUE, store::MemoryStore};
use libp2p::metrics::{Metrics, Recorder, Registry};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, identify, identity, mdns, noise, ping,
    tcp, yamux,
};
use protocol::compute::{ComputeOffer, MAX_INFER_CALL_BYTES, MAX_INFER_REPLY_BYTES};
use protocol::wire::{self, CatalogRequest, CatalogResponse};
use protocol::{BlobHash, Manifest, ModelId, Signed};
use tokio::sync::{mpsc, oneshot};

use crate::codec::FrameCodec;
use crate::conns::{Connections, Watermarks};
use crate::{InferResponder, NetConfig, NetError, NetEvent, Provider};

/// Everything the node speaks, composed.
///
/// `limits` comes **first**: the derive asks each field in order whether to accept an
/// established connection, and request-response records a connection as soon as it is asked.
/// A refusal by a field after it left a phantom connection there (it panicked in debug builds
/// when the peer's last real connection closed, and in release sent requests to a connection
/// that does not exist); the connection flood of the attack suite found it.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    per_ip: crate::per_ip::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    catalog: request_response::Behaviour<FrameCodec>,
    infer: request_response::Behaviour<FrameCodec>,
    credits: request_response::Behaviour<FrameCodec>,
    pub(crate) stream: crate::streams::Behaviour,
}

/// A request to the event loop; each carries its reply channel.
#[derive(Debug)]
pub(crate) enum Command {
    /// Start listening on an address.
    Listen {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<ListenerId, NetError>>,
    },
    /// Current listen addresses.
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    /// Connect to an address (with `/p2p/<peer id>` it is also added to the DHT).
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// This node is about to ask `peer` for something (a blob stream): worth its connection.
    Used { peer: PeerId },
    /// Currently connected peers.
    Peers { reply: oneshot::Sender<Vec<PeerId>> },
    /// Connections open now: (inbound, outbound).
    Connections {
        reply: oneshot::Sender<(usize, usize)>,
    },
    /// Announce in the DHT that this node provides a blob.
    Provide {
        hash: BlobHash,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Find providers of a blob in the DHT; each is sent as soon as it is found, and the
    /// channel closes when the query ends.
    FindProviders {
        hash: BlobHash,
        found: mpsc::Sender<PeerId>,
    },
    /// Publish a signed manifest on the announcement topic.
    Announce {
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Ask a peer about its catalogue (a page of manifests or ids, or given manifests).
    Catalog {
        peer: PeerId,
        request: CatalogRequest,
        reply: CatalogReply,
    },
    /// A catalogue sync with a peer ended (`ok`: it ran to the end), having taught this node
    /// `learnt` manifests.
    Synced {
        peer: PeerId,
        ok: bool,
        learnt: usize,
    },
    /// Publish a signed compute offer on the offer topic.
    Offer {
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Publish a signed vote on the vote topic.
    Vote {
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Send an inference call to a peer.
    Infer {
        peer: PeerId,
        call: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    /// Send a credits request to a connected peer.
    Credits {
        peer: PeerId,
        request: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
}

/// A response to send from the loop, computed elsewhere.
type Answer = (request_response::ResponseChannel<Vec<u8>>, Vec<u8>);

/// Hands the node's answer (once it comes on `rx`) back to the loop to send on `channel`. A
/// dropped responder closes the stream, which the requester sees as a failure.
fn forward_answer(
    rx: oneshot::Receiver<Vec<u8>>,
    channel: request_response::ResponseChannel<Vec<u8>>,
    answers: mpsc::Sender<Answer>,
) {
    tokio::spawn(async move {
        if let Ok(bytes) = rx.await {
            let _ = answers.send((channel, bytes)).await;
        }
    });
}

/// Where a catalogue page goes.
type CatalogReply = oneshot::Sender<Result<CatalogPage, NetError>>;

/// One answer from a peer's catalogue, verified.
#[derive(Debug)]
pub(crate) struct CatalogPage {
    /// The manifests whose signatures verified, with their ids (the others were dropped).
    pub(crate) manifests: Vec<(ModelId, Signed<Manifest>)>,
    /// The votes that checked (envelope and receipts), with their envelopes (the others were
    /// dropped).
    pub(crate) votes: Vec<(protocol::vote::VoteMessage, Vec<u8>)>,
    /// The ids listed (a page of ids).
    pub(crate) ids: Vec<ModelId>,
    /// Where the next page starts, if there is one.
    pub(crate) next: Option<ModelId>,
}

/// Peers a node reconciles its catalogue with when it joins or comes back, and at most this
/// many again in each [`RESYNC`]: the rest arrives by gossip.
pub const SYNC_PEERS: usize = 3;

/// How long a completed catalogue sync counts against [`SYNC_PEERS`]: after it, the next new
/// connection reconciles again (anti-entropy for announcements gossip lost; by id, so it costs
/// a page of ids when nothing is missing).
pub const RESYNC: Duration = Duration::from_secs(600);

/// Which catalogue syncs to start: at most [`SYNC_PEERS`] running or completed within
/// [`RESYNC`]. I/O-free.
#[derive(Debug, Default)]
pub(crate) struct Syncs {
    running: HashSet<PeerId>,
    done: std::collections::VecDeque<Instant>,
}

impl Syncs {
    /// Whether to sync with `peer`, newly connected; if so it counts as running.
    pub(crate) fn start(&mut self, peer: PeerId, now: Instant) -> bool {
        while self
            .done
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= RESYNC)
        {
            self.done.pop_front();
        }
        if self.running.contains(&peer) || self.running.len() + self.done.len() >= SYNC_PEERS {
            return false;
        }
        self.running.insert(peer)
    }

    /// The node lost its last connection: whatever it syncs with when it comes back is a
    /// catch-up, not a periodic resync (gossip did not reach it meanwhile).
    pub(crate) fn isolated(&mut self) {
        self.done.clear();
    }

    /// The sync with `peer` ended; only one that ran to the end counts for [`RESYNC`].
    pub(crate) fn ended(&mut self, peer: PeerId, ok: bool, now: Instant) {
        if self.running.remove(&peer) && ok {
            self.done.push_back(now);
        }
    }
}

/// Catalogue pages this node asks one peer for, per sync: with [`wire::MAX_CATALOG_PAGE`]
/// manifests a page, 128 pages hold 131,072 manifests, more than a node keeps
/// (`catalog::MAX_MODELS`).
pub const MAX_SYNC_PAGES: usize = 128;

/// Catalogue pages being built for peers (or waiting for their turn) at once; a request beyond
/// it is refused (its stream closes and the peer may ask again).
pub const MAX_CATALOG_ANSWERS: usize = 8;

/// Catalogue pages this node sends a second, to all peers together (a page is at most 4 MiB):
/// a late joiner syncs 100,000 manifests in about 6 s, and a crowd of fresh peers cannot make
/// this node re-encode and upload its whole catalogue for each of them at once.
pub const CATALOG_PAGES_PER_SEC: u32 = 16;

/// Walks `peer`'s catalogue a page at a time through the event loop's command queue, for at
/// most [`MAX_SYNC_PAGES`] pages.
pub(crate) struct CatalogPager {
    commands: mpsc::Sender<Command>,
    peer: PeerId,
    after: Option<ModelId>,
    pages: usize,
    done: bool,
    /// Walks the peer's votes, not its models.
    votes: bool,
}

impl CatalogPager {
    pub(crate) fn new(commands: mpsc::Sender<Command>, peer: PeerId) -> CatalogPager {
        CatalogPager {
            commands,
            peer,
            after: None,
            pages: 0,
            done: false,
            votes: false,
        }
    }

    /// A pager over the peer's standing votes.
    pub(crate) fn votes(commands: mpsc::Sender<Command>, peer: PeerId) -> CatalogPager {
        CatalogPager {
            votes: true,
            ..CatalogPager::new(commands, peer)
        }
    }

    /// The next page (manifests, or ids with `ids`), or `None` at the end. A peer whose pages
    /// do not advance misbehaves.
    pub(crate) async fn next_page(&mut self, ids: bool) -> Result<Option<CatalogPage>, NetError> {
        if self.done {
            return Ok(None);
        }
        let (peer, after) = (self.peer, self.after);
        let request = CatalogRequest {
            after,
            ids,
            want: Vec::new(),
            votes: self.votes,
        };
        let page = ask(&self.commands, peer, request).await?;
        self.pages += 1;
        if after.is_some_and(|a| page.ids.first().is_some_and(|first| *first <= a)) {
            return Err(NetError::PeerMisbehaved {
                peer,
                reason: "catalogue ids do not advance".into(),
            });
        }
        match page.next {
            Some(next) if after.is_some_and(|a| next <= a) => {
                return Err(NetError::PeerMisbehaved {
                    peer,
                    reason: "catalogue pages do not advance".into(),
                });
            }
            Some(_) if self.pages >= MAX_SYNC_PAGES => {
                tracing::warn!(%peer, "catalogue sync stopped after {MAX_SYNC_PAGES} pages");
                self.done = true;
            }
            Some(next) => self.after = Some(next),
            None => self.done = true,
        }
        Ok(Some(page))
    }
}

/// Sends one catalogue request to `peer` through the event loop and waits for its answer.
async fn ask(
    commands: &mpsc::Sender<Command>,
    peer: PeerId,
    request: CatalogRequest,
) -> Result<CatalogPage, NetError> {
    let (reply, rx) = oneshot::channel();
    commands
        .send(Command::Catalog {
            peer,
            request,
            reply,
        })
        .await
        .map_err(|_| NetError::Shutdown)?;
    rx.await.map_err(|_| NetError::Shutdown)?
}

/// Reconciles this node's catalogue with `peer`'s by id: walks the peer's ids a page at a time
/// (at most [`MAX_SYNC_PAGES`]), asks only for the manifests this node does not know, and hands
/// each one that verifies to the node. Returns how many it handed over.
pub(crate) async fn reconcile(
    commands: mpsc::Sender<Command>,
    provider: Arc<dyn Provider>,
    events: mpsc::Sender<NetEvent>,
    peer: PeerId,
) -> Result<usize, NetError> {
    let mut pager = CatalogPager::new(commands.clone(), peer);
    let mut learnt = 0;
    while let Some(page) = pager.next_page(true).await? {
        let known = provider.clone();
        let (listed, mut missing): (Vec<ModelId>, Vec<ModelId>) =
            tokio::task::spawn_blocking(move || {
                page.ids.into_iter().partition(|id| known.knows(*id))
            })
            .await
            .map_err(|e| NetError::Setup(format!("catalogue sync: {e}")))?;
        if !listed.is_empty() {
            let event = NetEvent::Listed {
                from: peer,
                ids: listed,
            };
            if events.send(event).await.is_err() {
                return Err(NetError::Shutdown);
            }
        }
        while !missing.is_empty() {
            let batch: Vec<ModelId> = missing
                .drain(..missing.len().min(wire::MAX_CATALOG_PAGE))
                .collect();
            let mut rest = &batch[..];
            while !rest.is_empty() {
                let request = CatalogRequest {
                    want: rest.to_vec(),
                    ..CatalogRequest::default()
                };
                let answer = ask(&commands, peer, request).await?;
                for (id, manifest) in answer.manifests {
                    // Only what was asked for.
                    if !rest.contains(&id) {
                        continue;
                    }
                    learnt += 1;
                    let event = NetEvent::Manifest {
                        from: peer,
                        manifest: Box::new(manifest),
                    };
                    if events.send(event).await.is_err() {
                        return Err(NetError::Shutdown);
                    }
                }
                rest = rest_after(rest, answer.next);
            }
        }
    }
    Ok(learnt + reconcile_votes(commands, provider, events, peer).await?)
}

/// Votes a vote sync gossips again at most, because the peer it walked lacked them (recent
/// ones only): a peer lying that it lacks everything makes this node re-gossip at most this
/// many per sync (and syncs are at most [`SYNC_PEERS`] per [`RESYNC`]).
pub const MAX_PUSHED_VOTES: usize = 1024;

/// Votes a push sends at once; see [`push_votes`].
const PUSH_BATCH: usize = 32;

/// Gossips `envelopes` on the vote topic. Right after a connection opens the peer may not
/// have told its subscriptions yet: what no peer could hear is tried again after 1, 2 and 4 s.
async fn push_votes(
    commands: &mpsc::Sender<Command>,
    peer: PeerId,
    mut envelopes: Vec<Vec<u8>>,
) -> Result<(), NetError> {
    let mut wait = Duration::from_secs(1);
    for attempt in 0..4 {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        let mut unheard = Vec::new();
        for (i, envelope) in envelopes.into_iter().enumerate() {
            // At most PUSH_BATCH a tenth of a second: peers check gossip MAX_VERIFYING at a
            // time and drop what arrives beyond.
            if i > 0 && i % PUSH_BATCH == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (reply, rx) = oneshot::channel();
            commands
                .send(Command::Vote {
                    envelope: envelope.clone(),
                    reply,
                })
                .await
                .map_err(|_| NetError::Shutdown)?;
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "vote sync: gossiping a vote the peer lacked: {e}");
                    unheard.push(envelope);
                }
                Err(_) => return Err(NetError::Shutdown),
            }
        }
        if unheard.is_empty() {
            return Ok(());
        }
        envelopes = unheard;
    }
    tracing::debug!(%peer, left = envelopes.len(), "vote sync: votes no peer could hear");
    Ok(())
}

/// Whether a vote was issued within the last [`RESYNC`] (by its own `issued_ms`: a voter
/// that lies about it gets at most [`MAX_PUSHED_VOTES`] pushed per sync).
fn recent(envelope: &[u8], now_ms: u64) -> bool {
    protocol::vote::VoteMessage::issued_ms_of(envelope)
        .is_some_and(|issued| issued.saturating_add(RESYNC.as_millis() as u64) >= now_ms)
}

/// The ids of the votes `provider` holds in `(from, to]` (`to` `None`: to the end), at most
/// [`wire::MAX_CATALOG_IDS`] + 1 (a page's range holds at most that many of the peer's; more
/// here are beyond what one sync pushes anyway).
fn votes_in(
    provider: &dyn Provider,
    from: Option<BlobHash>,
    to: Option<BlobHash>,
) -> Vec<BlobHash> {
    let mut ids = provider.vote_ids(from, wire::MAX_CATALOG_IDS + 1);
    if let Some(to) = to {
        ids.retain(|id| *id <= to);
    }
    ids
}

/// What is left of a `want` list after an answer that stopped early at `next` (the last id it
/// sent): the ids after it; nothing when the answer was complete.
fn rest_after(rest: &[ModelId], next: Option<ModelId>) -> &[ModelId] {
    match next.and_then(|n| rest.iter().position(|id| *id == n)) {
        Some(i) if i + 1 < rest.len() => &rest[i + 1..],
        _ => &[],
    }
}

/// Reconciles this node's standing votes with `peer`'s by id, as [`reconcile`] does models:
/// walks the peer's vote ids, asks for the votes this node does not hold, and hands each one
/// that checks (envelope and receipts) to the node as a [`NetEvent::Vote`]. A vote this node
/// holds a newer one of (same voter and model) is fetched once and loses by the merge rule.
async fn reconcile_votes(
    commands: mpsc::Sender<Command>,
    provider: Arc<dyn Provider>,
    events: mpsc::Sender<NetEvent>,
    peer: PeerId,
) -> Result<usize, NetError> {
    let mut pager = CatalogPager::votes(commands.clone(), peer);
    let mut learnt = 0;
    let mut pushed = 0;
    let mut after: Option<BlobHash> = None;
    while let Some(page) = pager.next_page(true).await? {
        let known = provider.clone();
        let from = after;
        // The range this page covers: (after, its last id], or to the end for the last page.
        let to = page.next.map(|n| n.0);
        after = to;
        let room = MAX_PUSHED_VOTES - pushed;
        let (mut missing, lacking): (Vec<ModelId>, Vec<Vec<u8>>) =
            tokio::task::spawn_blocking(move || {
                let theirs: HashSet<BlobHash> = page.ids.iter().map(|id| id.0).collect();
                let missing = page
                    .ids
                    .into_iter()
                    .filter(|id| !known.knows_vote(id.0))
                    .collect();
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let lacking = votes_in(&*known, from, to)
                    .into_iter()
                    .filter(|id| !theirs.contains(id))
                    .filter_map(|id| known.vote(id))
                    .filter(|envelope| recent(envelope, now_ms))
                    .take(room)
                    .collect();
                (missing, lacking)
            })
            .await
            .map_err(|e| NetError::Setup(format!("vote sync: {e}")))?;
        // Recent votes this node holds and the peer lacks (cast or heard while they were
        // apart): gossiped again, so the peer and whoever else missed them get them. Older
        // ones a peer lacks it pulls in its own syncs; pushing those to the whole network
        // whenever a node syncs with one that is behind would cost every node their checks.
        pushed += lacking.len();
        push_votes(&commands, peer, lacking).await?;
        while !missing.is_empty() {
            let batch: Vec<ModelId> = missing
                .drain(..missing.len().min(wire::MAX_CATALOG_PAGE))
                .collect();
            let mut rest = &batch[..];
            while !rest.is_empty() {
                let request = CatalogRequest {
                    want: rest.to_vec(),
                    votes: true,
                    ..CatalogRequest::default()
                };
                let answer = ask(&commands, peer, request).await?;
                for (vote, envelope) in answer.votes {
                    // Only what was asked for.
                    if !rest.contains(&ModelId(vote.id())) {
                        continue;
                    }
                    learnt += 1;
                    let event = NetEvent::Vote {
                        from: peer,
                        vote: Box::new(vote),
                        envelope,
                    };
                    if events.send(event).await.is_err() {
                        return Err(NetError::Shutdown);
                    }
                }
                rest = rest_after(rest, answer.next);
            }
        }
    }
    Ok(learnt)
}

/// Answers a catalogue request from what `provider` knows (on a blocking thread).
fn answer(provider: &dyn Provider, request: &CatalogRequest) -> CatalogResponse {
    if request.votes {
        return answer_votes(provider, request);
    }
    if !request.want.is_empty() {
        let found = request
            .want
            .iter()
            .take(wire::MAX_CATALOG_PAGE)
            .filter_map(|id| provider.manifest(*id).map(|m| (*id, m)));
        return CatalogResponse::page(found, wire::MAX_CATALOG_PAGE, wire::CATALOG_PAGE_BYTES);
    }
    if request.ids {
        let ids = provider.catalog_ids(request.after, wire::MAX_CATALOG_IDS + 1);
        return CatalogResponse::id_page(ids, wire::MAX_CATALOG_IDS);
    }
    let ids = provider.catalog_ids(request.after, wire::MAX_CATALOG_PAGE + 1);
    CatalogResponse::page(
        ids.into_iter()
            .filter_map(|id| provider.manifest(id).map(|m| (id, m))),
        wire::MAX_CATALOG_PAGE,
        wire::CATALOG_PAGE_BYTES,
    )
}

/// Answers a votes request (see [`answer`]).
fn answer_votes(provider: &dyn Provider, request: &CatalogRequest) -> CatalogResponse {
    if !request.want.is_empty() {
        let found = request
            .want
            .iter()
            .take(wire::MAX_CATALOG_PAGE)
            .filter_map(|id| provider.vote(id.0).map(|v| (*id, v)));
        return CatalogResponse::vote_page(found, wire::MAX_CATALOG_PAGE, wire::CATALOG_PAGE_BYTES);
    }
    let after = request.after.map(|a| a.0);
    if request.ids {
        let ids = provider.vote_ids(after, wire::MAX_CATALOG_IDS + 1);
        return CatalogResponse::id_page(ids.into_iter().map(ModelId), wire::MAX_CATALOG_IDS);
    }
    let ids = provider.vote_ids(after, wire::MAX_CATALOG_PAGE + 1);
    CatalogResponse::vote_page(
        ids.into_iter()
            .filter_map(|id| provider.vote(id).map(|v| (ModelId(id), v))),
        wire::MAX_CATALOG_PAGE,
        wire::CATALOG_PAGE_BYTES,
    )
}

/// Votes a peer may send on the vote topic a second, after a burst of
/// [`VOTE_BURST_PER_PEER`] (a peer forwards everyone's votes, so this bounds what one
/// neighbour can make this node check, not what one voter may say); beyond it they are
/// ignored: neither checked nor forwarded, and not held against the peer.
pub const VOTES_PER_PEER_PER_SEC: u64 = 200;

/// See [`VOTES_PER_PEER_PER_SEC`]: room for a vote sync's push ([`MAX_PUSHED_VOTES`]).
pub const VOTE_BURST_PER_PEER: u64 = 2 * MAX_PUSHED_VOTES as u64;

/// Where an inference reply goes.
type InferReply = oneshot::Sender<Result<Vec<u8>, NetError>>;

/// How often a node checks its connections: below its target it looks for more (also at once
/// when one closes or a dial fails), above `high` it prunes (also at once when one opens).
const REPLENISH_EVERY: Duration = Duration::from_secs(10);

/// A peer whose dial failed or whose connection closed is not dialled again by
/// [`EventLoop::replenish`] for this long.
const REDIAL_AFTER: Duration = Duration::from_secs(20);

/// Below this many connections (or the low watermark, if lower) a node dials more peers: enough
/// for a gossip mesh (`mesh_n` = 6) and a DHT; the DHT's refreshes and peers connecting to it
/// fill the rest up to the watermarks.
pub const MIN_CONNECTIONS: usize = 8;

/// How often a node refreshes its DHT neighbourhood (a lookup of its own id). Each node's first
/// refresh comes at a random point of the first period, so that nodes started together do not
/// all dial at once. (libp2p's own refresh, every 5 minutes, also looks up a random id in each
/// bucket: at 200 nodes that dialled most of the network each time.)
pub const DHT_REFRESH: Duration = Duration::from_secs(1800);

/// Dials [`EventLoop::replenish`] starts at once, at most.
const REPLENISH_DIALS: usize = 4;

/// How often each connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(60);

/// The task that owns the swarm.
pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    /// Its own command queue (weak: the loop still ends when every client is gone), for the
    /// catalogue sync tasks it starts; `None` on a light node, which syncs no catalogues.
    own_commands: Option<mpsc::WeakSender<Command>>,
    /// When the next catalogue page may go out (see [`CATALOG_PAGES_PER_SEC`]).
    next_page: Arc<std::sync::Mutex<tokio::time::Instant>>,
    /// Catalogue pages being built for peers (see [`MAX_CATALOG_ANSWERS`]).
    answering: Arc<tokio::sync::Semaphore>,
    events: mpsc::Sender<NetEvent>,
    provider: Arc<dyn Provider>,
    topic: IdentTopic,
    offer_topic: IdentTopic,
    vote_topic: IdentTopic,
    /// Catalogue answers computed off the loop, to be sent from it.
    catalog_answers: mpsc::Receiver<Answer>,
    catalog_answers_tx: mpsc::Sender<Answer>,
    /// Inference replies from the node, to be sent from the loop.
    infer_answers: mpsc::Receiver<Answer>,
    infer_answers_tx: mpsc::Sender<Answer>,
    pending_dial: HashMap<PeerId, Vec<oneshot::Sender<Result<(), NetError>>>>,
    pending_provide: HashMap<kad::QueryId, oneshot::Sender<Result<(), NetError>>>,
    pending_providers: HashMap<kad::QueryId, (HashSet<PeerId>, mpsc::Sender<PeerId>)>,
    pending_catalog: HashMap<request_response::OutboundRequestId, CatalogReply>,
    credit_answers: mpsc::Receiver<Answer>,
    credit_answers_tx: mpsc::Sender<Answer>,
    pending_credits: HashMap<request_response::OutboundRequestId, InferReply>,
    pending_infer: HashMap<request_response::OutboundRequestId, InferReply>,
    /// Vote rate per connected peer (see [`VOTES_PER_PEER_PER_SEC`]).
    vote_buckets: HashMap<PeerId, crate::rate::TokenBucket>,
    /// Catalogue syncs running and recently done.
    syncs: Syncs,
    /// libp2p's own metrics (connections, Kademlia, gossipsub, identify, ping).
    metrics: Metrics,
    /// Events the node was too slow to take (see [`EventLoop::emit`]).
    dropped: prometheus_client::metrics::counter::Counter,
    /// `moxnet_net_connections_denied_total`.
    denied: prometheus_client::metrics::counter::Counter,
    /// Open connections, ranked by what their peers did (see [`Connections`]).
    conns: Connections,
    /// The bootstrap peers: spared by a prune, and dialled first when below the target.
    bootstrap: HashSet<PeerId>,
    bootstrap_addrs: Vec<Multiaddr>,
    /// Peers whose dial failed or whose connection closed lately (not dialled again by
    /// [`EventLoop::replenish`] for [`REDIAL_AFTER`]).
    failed: HashMap<PeerId, Instant>,
    /// Checks now and then that the node is not below its target (see [`EventLoop::replenish`]).
    replenish_tick: tokio::time::Interval,
    /// When to refresh the DHT routing table next (see [`DHT_REFRESH`]).
    next_refresh: Instant,
    /// Peers whose blob requests were served (from `blob::serve`).
    served: mpsc::Receiver<PeerId>,
    /// `moxnet_net_connections_pruned_total`.
    pruned: prometheus_client::metrics::counter::Counter,
    /// Gossip messages being verified off the loop.
    verifying: Arc<tokio::sync::Semaphore>,
    /// Verdicts on gossip messages, from the verifying threads: forward, or drop and penalise.
    validations: mpsc::Receiver<Validation>,
    validations_tx: mpsc::Sender<Validation>,
}

/// Gossip peer scoring: a peer that sends messages which fail verification loses score fast
/// (each counts squared; the count decays by 10% a second, a half-life of about 7 s), and below the graylist threshold everything
/// it sends is ignored before it is verified, so invalid gossip costs this node next to nothing
/// after the first few messages (n of them count -5 × n², less the credit a peer earned, at
/// most 20 a topic): 2 put a fresh peer below the gossip threshold (-10: no gossip to or from
/// it), 3 below publishing (-40), 5 below the graylist (-80), 6 any peer. Honest
/// peers never go negative: the only other weights are the positive ones for time in the mesh
/// and first deliveries, capped (so that credit cannot buy room for lies). Penalties for
/// delivering too few messages in the mesh are off (the topics are quiet), and so is the IP
/// colocation penalty (nodes behind one NAT, and every testnet on loopback, share an address).
fn gossip_scoring() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        // Credit: a point a second in the mesh and a point a first delivery, 10 of each at most.
        time_in_mesh_weight: 1.0,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 10.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -5.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    };
    for topic_name in [wire::ANNOUNCE_TOPIC, wire::OFFER_TOPIC, wire::VOTE_TOPIC] {
        params
            .topics
            .insert(IdentTopic::new(topic_name).hash(), topic.clone());
    }
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -40.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 1.0,
    };
    (params, thresholds)
}

/// The gossipsub configuration every node runs with (the simulation in `testnet` reads its
/// parameters from here).
///
/// The mesh keeps libp2p's (and the gossipsub spec's) defaults, which suit a network of
/// thousands of nodes each keeping [`ConnectionLimits`](crate::ConnectionLimits) 32–40
/// connections: each node forwards a message to `mesh_n` = 6 mesh peers (grafting more below
/// `mesh_n_low` = 5, pruning above `mesh_n_high` = 12, at least `mesh_outbound_min` = 2 of them
/// dialled by itself, so that inbound floods cannot take the whole mesh), so a message reaches N
/// nodes in about log₆ N hops while each node receives it about 6 times at most; at each
/// heartbeat (1 s) a node also tells `gossip_lazy` = 6 (or a quarter, `gossip_factor`) of its
/// other peers which messages it has had in the last `history_gossip` = 3 heartbeats, and a peer
/// that missed one asks for it: the lazy path that repairs what the mesh lost. The publisher
/// sends its own message to every connected peer (`flood_publish`). Messages are validated by
/// the node before being forwarded, signed (strict mode), and at most a signed envelope long.
pub fn gossip_config() -> Result<gossipsub::Config, NetError> {
    gossipsub::ConfigBuilder::default()
        .max_transmit_size(
            Signed::<Manifest>::MAX_BYTES
                .max(Signed::<ComputeOffer>::MAX_BYTES)
                .max(Signed::<protocol::vote::Vote>::MAX_BYTES),
        )
        .validation_mode(gossipsub::ValidationMode::Strict)
        // Forward a message only after this node verified it (see `verify_off_loop`).
        .validate_messages()
        .heartbeat_interval(Duration::from_secs(1))
        .build()
        .map_err(|e| NetError::Setup(format!("gossipsub config: {e}")))
}

/// A gossip message's id, the peer it came from, and whether it verified.
type Validation = (gossipsub::MessageId, PeerId, gossipsub::MessageAcceptance);

/// Gossip messages verified at once, off the swarm task; more are dropped.
const MAX_VERIFYING: usize = 64;

pub(crate) fn build_swarm(
    config: &NetConfig,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, NetError> {
    let mut seed = config.seed;
    let keypair = identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| NetError::Setup(format!("identity key: {e}")))?;
    let mdns_enabled = config.mdns;
    let builder = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Setup(format!("tcp transport: {e}")))?
        .with_quic()
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(StreamProtocol::new(wire::KAD_PROTOCOL));
            kad_config.set_query_timeout(Duration::from_secs(30));
            // Records of a provider that left expire in 2 h instead of libp2p's 48 h; a live
            // provider republishes hourly.
            kad_config.set_provider_record_ttl(Some(Duration::from_secs(2 * 3600)));
            kad_config.set_provider_publication_interval(Some(Duration::from_secs(3600)));
            // libp2p refreshes every 5 minutes on the dot; nodes started together would all
            // dial at once. The event loop refreshes instead, spread (see `DHT_REFRESH`).
            kad_config.set_periodic_bootstrap_interval(None);
            // Peers enter the routing table only through `EventLoop::learn_address`, never as
            // a side effect of a connection: with a full bucket libp2p would dial the entry
            // it might replace to check it is alive, and with a connection manager closing
            // connections that check becomes a new connection for every one that opens.
            kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
            let mut kad =
                kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config);
            kad.set_mode(Some(kad::Mode::Server));
            let gossip_config = gossip_config().map_err(|e| e.to_string())?;
            let mut gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)
                    .map_err(|e| format!("gossipsub: {e}"))?;
            let (params, thresholds) = gossip_scoring();
            gossipsub
                .with_peer_score(params, thresholds)
                .map_err(|e| format!("gossipsub scoring: {e}"))?;
            let mdns = if mdns_enabled {
                Toggle::from(Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?))
            } else {
                Toggle::from(None)
            };
            let c = &config.connections;
            let limits = libp2p::connection_limits::Behaviour::new(
                libp2p::connection_limits::ConnectionLimits::default()
                    // Room above the hard bound (see `conns::Watermarks::hard`): a connection
                    // beyond it is let in and the prune makes the oldest newcomer give way, so a
                    // flood of fresh identities never keeps an honest newcomer out; beyond the
                    // room, refused at the door.
                    .with_max_established_incoming(Some(
                        c.max_connections
                            .saturating_add(c.max_connections / 4)
                            .saturating_add(c.max_connections / 4),
                    ))
                    .with_max_pending_incoming(Some(c.max_pending_incoming))
                    .with_max_established_per_peer(Some(c.max_per_peer)),
            );
            Ok(Behaviour {
                limits,
                per_ip: crate::per_ip::Behaviour::new(c.max_per_ip),
                identify: identify::Behaviour::new(identify::Config::new(
                    wire::IDENTIFY_VERSION.into(),
                    key.public(),
                )),
                // Once a minute: a dead connection is found by its first failed request anyway,
                // and on an idle node pings are most of what wakes it.
                ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
                kad,
                gossipsub,
                mdns,
                catalog: request_response::Behaviour::with_codec(
                    FrameCodec {
                        max_request: wire::MAX_CATALOG_REQUEST_BYTES,
                        max_response: wire::MAX_CATALOG_RESPONSE_BYTES,
                    },
                    [(
                        StreamProtocol::new(wire::CATALOG_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30)),
                ),
                // The node bounds each call with its own deadline; this is the backstop.
                infer: request_response::Behaviour::with_codec(
                    FrameCodec {
                        max_request: MAX_INFER_CALL_BYTES,
                        max_response: MAX_INFER_REPLY_BYTES,
                    },
                    [(
                        StreamProtocol::new(wire::INFER_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(600))
                        .with_max_concurrent_streams(1024),
                ),
                credits: request_response::Behaviour::with_codec(
                    FrameCodec {
                        max_request: protocol::credits::MAX_CREDITS_REQUEST_BYTES,
                        max_response: protocol::credits::MAX_CREDITS_ANSWER_BYTES,
                    },
                    [(
                        StreamProtocol::new(wire::CREDITS_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(16),
                ),
                stream: crate::streams::Behaviour::new(),
            })
        })
        .map_err(|e| NetError::Setup(format!("behaviour: {e}")))?;
    Ok(builder
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build())
}

impl EventLoop {
    pub(crate) fn new(
        mut swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        own_commands: Option<mpsc::WeakSender<Command>>,
        events: mpsc::Sender<NetEvent>,
        provider: Arc<dyn Provider>,
        (config, served): (&NetConfig, mpsc::Receiver<PeerId>),
        registry: &mut Registry,
    ) -> Result<Self, NetError> {
        let metrics = Metrics::new(registry);
        let dropped = prometheus_client::metrics::counter::Counter::default();
        registry.sub_registry_with_prefix("moxnet_net").register(
            "events_dropped",
            "Network events dropped: the node's queue was full, or too many gossip messages were being verified",
            dropped.clone(),
        );
        let denied = prometheus_client::metrics::counter::Counter::default();
        registry.sub_registry_with_prefix("moxnet_net").register(
            "connections_denied",
            "Inbound connections refused by the connection limits",
            denied.clone(),
        );
        let pruned = prometheus_client::metrics::counter::Counter::default();
        registry.sub_registry_with_prefix("moxnet_net").register(
            "connections_pruned",
            "Connections closed above max_connections, down to target_connections: those whose peers did least",
            pruned.clone(),
        );
        let c = &config.connections;
        let marks = Watermarks {
            low: c.target_connections as usize,
            high: c.max_connections as usize,
        };
        let bootstrap = config
            .bootstrap
            .iter()
            .filter_map(|a| {
                a.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                    _ => None,
                })
            })
            .collect();
        let topic = IdentTopic::new(wire::ANNOUNCE_TOPIC);
        let offer_topic = IdentTopic::new(wire::OFFER_TOPIC);
        let vote_topic = IdentTopic::new(wire::VOTE_TOPIC);
        for t in [&topic, &offer_topic, &vote_topic] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(t)
                .map_err(|e| NetError::Setup(format!("subscribing to {t}: {e}")))?;
        }
        let (catalog_answers_tx, catalog_answers) = mpsc::channel(64);
        let (credit_answers_tx, credit_answers) = mpsc::channel(64);
        let (infer_answers_tx, infer_answers) = mpsc::channel(256);
        let (validations_tx, validations) = mpsc::channel(MAX_VERIFYING);
        // The first DHT refresh at a point of the first period drawn from the peer id: spread
        // over the network, and stable for a node.
        let next_refresh = {
            let id = swarm.local_peer_id().to_bytes();
            let draw = id
                .iter()
                .rev()
                .take(8)
                .fold(0u64, |a, b| (a << 8) | *b as u64);
            Instant::now() + DHT_REFRESH.mul_f64((draw % 10_000) as f64 / 10_000.0)
        };
        Ok(EventLoop {
            swarm,
            commands,
            own_commands,
            next_page: Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())),
            answering: Arc::new(tokio::sync::Semaphore::new(MAX_CATALOG_ANSWERS)),
            events,
            provider,
            topic,
            offer_topic,
            vote_topic,
            catalog_answers,
            catalog_answers_tx,
            infer_answers,
            infer_answers_tx,
            pending_dial: HashMap::new(),
            pending_provide: HashMap::new(),
            pending_providers: HashMap::new(),
            pending_catalog: HashMap::new(),
            credit_answers,
            credit_answers_tx,
            pending_credits: HashMap::new(),
            pending_infer: HashMap::new(),
            syncs: Syncs::default(),
            vote_buckets: HashMap::new(),
            metrics,
            dropped,
            denied,
            conns: Connections::new(marks),
            bootstrap,
            bootstrap_addrs: config.bootstrap.clone(),
            failed: HashMap::new(),
            next_refresh,
            replenish_tick: {
                // Not at once: the bootstrap peers are being dialled as the node starts.
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + REPLENISH_EVERY,
                    REPLENISH_EVERY,
                );
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            },
            served,
            pruned,
            verifying: Arc::new(tokio::sync::Semaphore::new(MAX_VERIFYING)),
            validations,
            validations_tx,
        })
    }

    /// Runs until every [`Client`](crate::Client) is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                Some((channel, bytes)) = self.credit_answers.recv() => {
                    let _ = self.swarm.behaviour_mut().credits.send_response(channel, bytes);
                }
                Some((channel, bytes)) = self.catalog_answers.recv() => {
                    // The requester may have gone; nothing to do then.
                    let _ = self.swarm.behaviour_mut().catalog.send_response(channel, bytes);
                }
                Some((channel, bytes)) = self.infer_answers.recv() => {
                    let _ = self.swarm.behaviour_mut().infer.send_response(channel, bytes);
                }
                _ = self.replenish_tick.tick() => {
                    // Newcomers whose grace ended may leave the node above `high`.
                    self.prune();
                    self.replenish();
                    if Instant::now() >= self.next_refresh {
                        self.next_refresh += DHT_REFRESH;
                        // The peers closest to this node: they keep its neighbourhood, the
                        // part of the table lookups end in, fresh (the rest fills with the
                        // peers that connect). A whole-table refresh would dial some 170 of 200
                        // peers each time.
                        let me = *self.swarm.local_peer_id();
                        self.swarm.behaviour_mut().kad.get_closest_peers(me);
                    }
                }
                Some(peer) = self.served.recv() => {
                    self.conns.useful(peer, Instant::now());
                }
                Some((id, source, acceptance)) = self.validations.recv() => {
                    if matches!(acceptance, gossipsub::MessageAcceptance::Accept) {
                        self.conns.useful(source, Instant::now());
                    }
                    // `false`: the message left gossipsub's cache meanwhile; nothing to forward.
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(&id, &source, acceptance);
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Listen { addr, reply } => {
                let result = self
                    .swarm
                    .listen_on(addr.clone())
                    .map_err(|e| NetError::Setup(format!("listening on {addr}: {e}")));
                let _ = reply.send(result);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { addr, reply } => {
                let peer = addr.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                    _ => None,
                });
                if let Some(peer) = peer {
                    self.learn_address(peer, addr.clone());
                    if self.swarm.is_connected(&peer) {
                        let _ = reply.send(Ok(()));
                        return;
                    }
                }
                match self.swarm.dial(addr.clone()) {
                    Ok(()) => match peer {
                        Some(peer) => self.pending_dial.entry(peer).or_default().push(reply),
                        None => {
                            let _ = reply.send(Ok(()));
                        }
                    },
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial(format!("{addr}: {e}"))));
                    }
                }
            }
            Command::Used { peer } => self.conns.useful(peer, Instant::now()),
            Command::Peers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Connections { reply } => {
                let info = self.swarm.network_info();
                let counters = info.connection_counters();
                let _ = reply.send((
                    counters.num_established_incoming() as usize,
                    counters.num_established_outgoing() as usize,
                ));
            }
            Command::Provide { hash, reply } => {
                let key = kad::RecordKey::new(hash.as_bytes());
                match self.swarm.behaviour_mut().kad.start_providing(key) {
                    Ok(id) => {
                        self.pending_provide.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dht(format!("providing {hash}: {e}"))));
                    }
                }
            }
            Command::FindProviders { hash, found } => {
                let key = kad::RecordKey::new(hash.as_bytes());
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.pending_providers.insert(id, (HashSet::new(), found));
            }
            Command::Announce { envelope, reply } => {
                let topic = self.topic.clone();
                let _ = reply.send(self.publish(topic, envelope));
            }
            Command::Synced { peer, ok, learnt } => {
                self.syncs.ended(peer, ok, Instant::now());
                // A peer that taught this node something is worth its connection; one that
                // only answered is not (anyone can answer with nothing).
                if learnt > 0 {
                    self.conns.useful(peer, Instant::now());
                }
            }
            Command::Catalog {
                peer,
                request,
                reply,
            } => {
                // Never a reason to dial: a sync page for a peer the node pruned meanwhile
                // would reopen the connection (outbound, past the inbound door) only to be
                // pruned again.
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(NetError::Unavailable {
                        peer,
                        reason: "not connected".into(),
                    }));
                    return;
                }
                let request = frame_object(&request);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .catalog
                    .send_request(&peer, request);
                self.pending_catalog.insert(id, reply);
            }
            Command::Offer { envelope, reply } => {
                let topic = self.offer_topic.clone();
                let _ = reply.send(self.publish(topic, envelope));
            }
            Command::Vote { envelope, reply } => {
                let topic = self.vote_topic.clone();
                let _ = reply.send(self.publish(topic, envelope));
            }
            Command::Credits {
                peer,
                request,
                reply,
            } => {
                // Settling is between peers that are connected; never a reason to dial.
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(NetError::Unavailable {
                        peer,
                        reason: "not connected".into(),
                    }));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .credits
                    .send_request(&peer, request);
                self.pending_credits.insert(id, reply);
            }
            Command::Infer { peer, call, reply } => {
                self.conns.useful(peer, Instant::now());
                let id = self.swarm.behaviour_mut().infer.send_request(&peer, call);
                self.pending_infer.insert(id, reply);
            }
        }
    }

    /// Adds a peer's address to the DHT's routing table, if the peer is there already or its
    /// bucket has room: a full bucket keeps the peers it has (Kademlia prefers long-lived
    /// entries), and nothing is dialled to make room.
    fn learn_address(&mut self, peer: PeerId, addr: Multiaddr) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let room = kad.kbucket(peer).is_some_and(|bucket| {
            bucket.num_entries() < K_VALUE.get()
                || bucket.iter().any(|e| *e.node.key.preimage() == peer)
        });
        if room {
            kad.add_address(&peer, addr);
        }
    }

    /// Above the high watermark, closes the least valuable connections down to the low one
    /// (see [`Connections::prune`]), sparing gossip mesh peers and bootstrap peers.
    fn prune(&mut self) {
        if !self.conns.over() {
            return;
        }
        let mesh: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        let bootstrap = &self.bootstrap;
        let victims = self.conns.prune(Instant::now(), |p| {
            mesh.contains(p) || bootstrap.contains(p)
        });
        let marks = self.conns.watermarks();
        for (victim, peer) in victims {
            self.pruned.inc();
            tracing::debug!(%peer, high = marks.high, low = marks.low, "pruned a connection");
            self.swarm.close_connection(victim);
        }
    }

    /// Below [`MIN_CONNECTIONS`] (or the low watermark, if lower), dials a few more peers:
    /// bootstrap peers first, then peers the DHT knows (never all at once: at most [`REPLENISH_DIALS`], none that failed in the last
    /// [`REDIAL_AFTER`]). Discovering a peer is never by itself a reason to connect.
    fn replenish(&mut self) {
        // Dialling whenever below `low` would cascade: a prune closes several connections at
        // once, and each peer that lost one would dial others, pushing them over `high`.
        let low = self.conns.watermarks().low.min(MIN_CONNECTIONS);
        let have = self.conns.len();
        if have >= low {
            return;
        }
        let now = Instant::now();
        self.failed
            .retain(|_, at| now.saturating_duration_since(*at) < REDIAL_AFTER);
        let want = (low - have).min(REPLENISH_DIALS);
        let mut dialled = 0;
        for addr in self.bootstrap_addrs.clone() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            if dialled >= want || peer.is_none_or(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            if peer.is_some_and(|p| self.failed.contains_key(&p)) {
                continue;
            }
            if self.swarm.dial(addr).is_ok() {
                dialled += 1;
            }
        }
        if dialled >= want {
            return;
        }
        let mut known: Vec<PeerId> = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            known.extend(bucket.iter().map(|e| *e.node.key.preimage()));
        }
        for peer in known {
            if dialled >= want {
                break;
            }
            if self.swarm.is_connected(&peer) || self.failed.contains_key(&peer) {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .build();
            if self.swarm.dial(opts).is_ok() {
                dialled += 1;
            }
        }
        if dialled > 0 {
            tracing::debug!(
                have,
                low,
                dialled,
                "below the target connections: dialled more peers"
            );
        }
    }

    /// Publishes on a gossip topic. Nobody to tell yet is fine: later peers sync the catalogue
    /// or hear the next re-announcement.
    fn publish(&mut self, topic: IdentTopic, data: Vec<u8>) -> Result<(), NetError> {
        match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => Ok(()),
            // Nobody heard it: the caller may try again once peers are here.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(NetError::Gossip(
                "no peer subscribed to the topic yet".into(),
            )),
            Err(e) => Err(NetError::Gossip(e.to_string())),
        }
    }

    /// Hands an event to the node without ever waiting for it: the swarm must keep serving
    /// every peer even when the node is slow. When the node's queue (1024 events) is full the
    /// event is dropped and counted (`moxnet_net_events_dropped_total`); an inference call
    /// dropped this way is answered by request-response's failure path, a manifest comes
    /// again with the next announcement or catalogue sync.
    async fn emit(&mut self, event: NetEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.dropped.inc();
                tracing::warn!(
                    "the node is not keeping up; dropped a {} event",
                    event.kind()
                );
            }
            // The node is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Verifies a gossiped object on a blocking thread and hands the resulting event to the
    /// node there, so a burst of messages never stalls the swarm. Gossipsub forwards the
    /// message to other peers only once it verified (`validate_messages`); a forgery is
    /// rejected, which penalises the peer that sent it. At most [`MAX_VERIFYING`] run at once;
    /// beyond that a message is ignored (neither forwarded nor penalised), dropped and counted
    /// (gossip repeats what matters: offers are re-announced, manifests re-synced).
    /// Whether a vote from `peer` (the peer that sent it, whoever signed it) fits
    /// [`VOTES_PER_PEER_PER_SEC`]; buckets are kept for connected peers only.
    fn vote_rate(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        self.vote_buckets
            .entry(peer)
            .or_insert_with(|| {
                crate::rate::TokenBucket::new(VOTES_PER_PEER_PER_SEC, VOTE_BURST_PER_PEER, now)
            })
            .try_take(1, now)
    }

    fn verify_off_loop(
        &mut self,
        id: gossipsub::MessageId,
        source: PeerId,
        verify: impl FnOnce() -> NetEvent + Send + 'static,
    ) {
        let Ok(permit) = self.verifying.clone().try_acquire_owned() else {
            self.dropped.inc();
            tracing::warn!("too many gossip messages being verified; dropped one");
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &id,
                    &source,
                    gossipsub::MessageAcceptance::Ignore,
                );
            return;
        };
        let events = self.events.clone();
        let dropped = self.dropped.clone();
        let validations = self.validations_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let event = verify();
            let acceptance = match event {
                NetEvent::Rejected { .. } => gossipsub::MessageAcceptance::Reject,
                _ => gossipsub::MessageAcceptance::Accept,
            };
            // Verdicts in flight are about as many as permits, which the channel holds; if the
            // loop still falls behind, the message is never forwarded and expires from the
            // cache (as if ignored). A closed channel means the swarm stopped.
            if let Err(mpsc::error::TrySendError::Full(_)) =
                validations.try_send((id, source, acceptance))
            {
                dropped.inc();
                tracing::warn!("the swarm is not keeping up; a gossip message was not forwarded");
            }
            if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
                dropped.inc();
                tracing::warn!(
                    "the node is not keeping up; dropped a {} event",
                    event.kind()
                );
            }
        });
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&event);
        if let SwarmEvent::Behaviour(behaviour) = &event {
            match behaviour {
                BehaviourEvent::Identify(e) => self.metrics.record(e),
                BehaviourEvent::Ping(e) => self.metrics.record(e),
                BehaviourEvent::Kad(e) => self.metrics.record(e),
                BehaviourEvent::Gossipsub(e) => self.metrics.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                self.emit(NetEvent::Listening(address)).await;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                self.conns.opened(connection_id, peer_id, Instant::now());
                self.prune();
                if let Some(waiting) = self.pending_dial.remove(&peer_id) {
                    for reply in waiting {
                        let _ = reply.send(Ok(()));
                    }
                }
                if endpoint.is_dialer() {
                    self.learn_address(peer_id, endpoint.get_remote_address().clone());
                }
                self.emit(NetEvent::PeerConnected(peer_id)).await;
                if let Some(commands) = self.own_commands.as_ref().and_then(|c| c.upgrade())
                    && self.syncs.start(peer_id, Instant::now())
                {
                    // Catalogue sync on join (and now and then after): learn what was
                    // announced before we were here from a few peers, by id.
                    let events = self.events.clone();
                    let provider = self.provider.clone();
                    tokio::spawn(async move {
                        let result = reconcile(commands.clone(), provider, events, peer_id).await;
                        match &result {
                            Ok(n) => {
                                tracing::debug!(peer = %peer_id, learnt = n, "catalogue reconciled")
                            }
                            Err(e) => tracing::debug!(peer = %peer_id, "catalogue sync: {e}"),
                        }
                        let (ok, learnt) = match result {
                            Ok(n) => (true, n),
                            Err(_) => (false, 0),
                        };
                        let _ = commands
                            .send(Command::Synced {
                                peer: peer_id,
                                ok,
                                learnt,
                            })
                            .await;
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.conns.closed(connection_id);
                if self.conns.is_empty() {
                    self.syncs.isolated();
                }
                if num_established == 0 {
                    // Not redialled at once: a peer that closed (it may be full) would close
                    // again, and the two would churn.
                    self.failed.insert(peer_id, Instant::now());
                    // A vote bucket is forgotten once full again: reconnecting earns no burst.
                    let now = Instant::now();
                    self.vote_buckets.retain(|peer, bucket| {
                        self.swarm.is_connected(peer) || !bucket.is_full(now)
                    });
                    self.emit(NetEvent::PeerDisconnected(peer_id)).await;
                }
                self.replenish();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                self.failed.insert(peer, Instant::now());
                self.replenish();
                if let Some(waiting) = self.pending_dial.remove(&peer) {
                    for reply in waiting {
                        let _ = reply.send(Err(NetError::Dial(format!("{peer}: {error}"))));
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                let n = self.denied.inc() + 1;
                if n.is_power_of_two() {
                    tracing::warn!(from = %send_back_addr, total = n, "refused a connection: {cause}");
                } else {
                    tracing::debug!(from = %send_back_addr, "refused a connection: {cause}");
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event).await,
            _ => {}
        }
    }

    async fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != wire::IDENTIFY_VERSION {
                    return;
                }
                for addr in info.listen_addrs {
                    self.learn_address(peer_id, addr);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.learn_address(peer, addr.clone());
                    // Discovery is not a reason to connect: only while below the target.
                    if !self.swarm.is_connected(&peer)
                        && self.conns.len() < self.conns.watermarks().low
                    {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => {
                match result {
                    kad::QueryResult::StartProviding(result) => {
                        if let Some(reply) = self.pending_provide.remove(&id) {
                            // With no peers the record is still stored locally and served to
                            // peers that ask later, so that counts as success.
                            let outcome = match result {
                                Ok(_) | Err(kad::AddProviderError::Timeout { .. }) => Ok(()),
                            };
                            let _ = reply.send(outcome);
                        }
                    }
                    kad::QueryResult::GetProviders(result) => {
                        let local = *self.swarm.local_peer_id();
                        let mut gone = false;
                        if let Some((seen, found)) = self.pending_providers.get_mut(&id)
                            && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) =
                                &result
                        {
                            // Each provider goes out as soon as it is known: a fetch starts on
                            // the first live one instead of waiting for the whole query (whose
                            // end waits on peers that left).
                            for p in providers {
                                if *p != local && seen.insert(*p) && found.try_send(*p).is_err() {
                                    gone = found.is_closed();
                                }
                            }
                        }
                        if step.last {
                            self.pending_providers.remove(&id);
                        } else if gone {
                            // Nobody listens any more: end the query.
                            self.pending_providers.remove(&id);
                            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                                query.finish();
                            }
                        }
                    }
                    _ => {}
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source: from,
                message,
                message_id,
            }) => {
                let offers = message.topic == self.offer_topic.hash();
                if message.topic == self.vote_topic.hash() {
                    if !self.vote_rate(from) {
                        self.dropped.inc();
                        tracing::debug!(%from, "votes over the per-peer rate; ignored one");
                        self.swarm
                            .behaviour_mut()
                            .gossipsub
                            .report_message_validation_result(
                                &message_id,
                                &from,
                                gossipsub::MessageAcceptance::Ignore,
                            );
                        return;
                    }
                    self.verify_off_loop(message_id, from, move || {
                        match protocol::vote::VoteMessage::from_bytes(&message.data) {
                            Ok(vote) => NetEvent::Vote {
                                from,
                                vote: Box::new(vote),
                                envelope: message.data,
                            },
                            Err(e) => NetEvent::Rejected {
                                from,
                                reason: e.to_string(),
                            },
                        }
                    });
                    return;
                }
                self.verify_off_loop(message_id, from, move || {
                    let verified = if offers {
                        Signed::<ComputeOffer>::from_bytes(&message.data).map(|offer| {
                            NetEvent::Offer {
                                from,
                                offer: Box::new(offer),
                            }
                        })
                    } else {
                        Signed::<Manifest>::from_bytes(&message.data).map(|manifest| {
                            NetEvent::Manifest {
                                from,
                                manifest: Box::new(manifest),
                            }
                        })
                    };
                    verified.unwrap_or_else(|e| NetEvent::Rejected {
                        from,
                        reason: format!(
                            "{}: {e}",
                            if offers {
                                "compute offer"
                            } else {
                                "announcement"
                            }
                        ),
                    })
                });
            }
            BehaviourEvent::Catalog(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let Ok(request) = decode_frame::<CatalogRequest>(&request) else {
                            return; // dropping the channel closes the stream: bad request
                        };
                        self.conns.useful(peer, Instant::now());
                        let Ok(permit) = self.answering.clone().try_acquire_owned() else {
                            tracing::debug!(%peer, "too many catalogue pages being built; refused one");
                            return;
                        };
                        let provider = self.provider.clone();
                        let answers = self.catalog_answers_tx.clone();
                        // Pages leave at a steady pace, whoever asks: a crowd of new peers
                        // (each syncing on connect) costs this node a bounded upload.
                        let slot = {
                            let mut next = self.next_page.lock().unwrap_or_else(|p| p.into_inner());
                            let slot = (*next).max(tokio::time::Instant::now());
                            *next = slot + Duration::from_secs(1) / CATALOG_PAGES_PER_SEC;
                            slot
                        };
                        tokio::spawn(async move {
                            tokio::time::sleep_until(slot).await;
                            let page =
                                tokio::task::spawn_blocking(move || answer(&*provider, &request))
                                    .await
                                    .unwrap_or_default();
                            drop(permit);
                            let response = frame_object(&page);
                            let _ = answers.send((channel, response)).await;
                        });
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some(reply) = self.pending_catalog.remove(&request_id) {
                            // Verifying a whole catalogue takes a while: off the swarm task.
                            tokio::task::spawn_blocking(move || {
                                let result = decode_frame::<CatalogResponse>(&response)
                                    .map_err(|e| NetError::PeerMisbehaved {
                                        peer,
                                        reason: format!("catalogue: {e}"),
                                    })
                                    .map(|r| CatalogPage {
                                        manifests: r
                                            .manifests
                                            .iter()
                                            .filter_map(|m| {
                                                let manifest =
                                                    Signed::<Manifest>::from_bytes(m).ok()?;
                                                Some((protocol::model_id(m), manifest))
                                            })
                                            .collect(),
                                        votes: r
                                            .votes
                                            .into_iter()
                                            .filter_map(|v| {
                                                let vote =
                                                    protocol::vote::VoteMessage::from_bytes(&v)
                                                        .ok()?;
                                                Some((vote, v))
                                            })
                                            .collect(),
                                        ids: r.ids,
                                        next: r.next,
                                    });
                                let _ = reply.send(result);
                            });
                        }
                    }
                }
            }
            BehaviourEvent::Catalog(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            }) => {
                if let Some(reply) = self.pending_catalog.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Unavailable {
                        peer,
                        reason: format!("catalogue: {error}"),
                    }));
                }
            }
            BehaviourEvent::Infer(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        self.conns.useful(peer, Instant::now());
                        // The node answers through the responder; the loop sends it. A dropped
                        // responder closes the stream, which the caller sees as a failure.
                        let (tx, rx) = oneshot::channel();
                        forward_answer(rx, channel, self.infer_answers_tx.clone());
                        self.emit(NetEvent::InferCall {
                            from: peer,
                            call: request,
                            reply: InferResponder(tx),
                        })
                        .await;
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some(reply) = self.pending_infer.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                }
            }
            BehaviourEvent::Infer(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            }) => {
                if let Some(reply) = self.pending_infer.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Unavailable {
                        peer,
                        reason: format!("inference call: {error}"),
                    }));
                }
            }
            BehaviourEvent::Credits(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let (tx, rx) = oneshot::channel();
                        forward_answer(rx, channel, self.credit_answers_tx.clone());
                        self.emit(NetEvent::CreditsRequest {
                            from: peer,
                            request,
                            reply: InferResponder(tx),
                        })
                        .await;
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some(reply) = self.pending_credits.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                }
            }
            BehaviourEvent::Credits(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            }) => {
                if let Some(reply) = self.pending_credits.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Unavailable {
                        peer,
                        reason: format!("credits: {error}"),
                    }));
                }
            }
            _ => {}
        }
    }
}

/// The canonical bytes of an object (request-response messages are already length-delimited).
fn frame_object<T: protocol::Object>(object: &T) -> Vec<u8> {
    object.to_bytes()
}

fn decode_frame<T: protocol::Object>(bytes: &[u8]) -> Result<T, protocol::DecodeError> {
    T::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_syncs_at_a_time_and_a_few_more_each_resync_period() {
        let t0 = Instant::now();
        let mut syncs = Syncs::default();
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        for p in &peers[..SYNC_PEERS] {
            assert!(syncs.start(*p, t0));
        }
        // Full: neither a fourth peer nor one already syncing.
        assert!(!syncs.start(peers[SYNC_PEERS], t0));
        assert!(!syncs.start(peers[0], t0));
        // A failed sync frees its place at once; a completed one only after RESYNC.
        syncs.ended(peers[0], false, t0);
        assert!(syncs.start(peers[3], t0));
        syncs.ended(peers[1], true, t0);
        assert!(!syncs.start(peers[4], t0 + RESYNC / 2));
        assert!(syncs.start(peers[4], t0 + RESYNC));
        // An end for a peer that was not syncing changes nothing.
        syncs.ended(peers[5], true, t0 + RESYNC);
        assert!(!syncs.start(peers[5], t0 + RESYNC));
        // A node that lost every connection catches up with the first peers it meets again.
        for p in &peers[2..5] {
            syncs.ended(*p, true, t0 + RESYNC);
        }
        assert!(!syncs.start(peers[5], t0 + RESYNC));
        syncs.isolated();
        assert!(syncs.start(peers[5], t0 + RESYNC));
    }
}
