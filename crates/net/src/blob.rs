//! `/moxnet/blob/1`: verified blob ranges over a libp2p stream per request.
//!
//! The requester writes a framed [`BlobRequest`]; the provider answers with a framed
//! [`BlobResponseHeader`] and, if the status is ok, the bao encoding of the requested chunk
//! groups, then closes the stream. Nothing here checks the data: the receiver's store verifies
//! every group against the hash before writing it.
//!
//! A node serves blobs it is still receiving too (swarming: peers that fetch one model at once
//! fetch from each other): it answers with the groups it holds in the header's `have`, and with
//! [`Status::Partial`] when it lacks some of those asked for.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use protocol::Object;
use protocol::wire::{
    self, BlobRequest, BlobResponseHeader, MAX_BLOB_HEADER_BYTES, MAX_BLOB_REQUEST_BYTES,
    MAX_HAVE_RANGES, Status,
};
use tokio::sync::mpsc;

use crate::codec::{read_frame, write_frame};
use crate::rate::Upload;
use crate::{NetError, Provider};

/// How long a peer may take to send its request, or a provider its header.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a stream to a peer (dialling it if needed) may take.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a transfer may go without a byte before it counts as stalled.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Chunk size between the blocking reader of the store and the stream.
const PIPE_CHUNK: usize = 256 * 1024;
/// Bytes written at a time under an upload limit (each waits for its share of the rate).
const PACE_BYTES: usize = 64 * 1024;

/// Limits on inbound blob requests.
///
/// A stream holds its slot while it makes progress. When every slot is taken, a new request
/// takes the slot of the stream that has gone longest without progress (no request read yet,
/// or nothing written for [`ServeLimits::evict_after`]), so peers that open streams and never
/// read cannot keep honest requesters out (and a peer holding such a stream takes no other
/// peer's slot). Before any stream has stalled that long, a peer holding fewer streams than
/// its fair share (`total` over the peers being served, itself included) takes the slot of
/// the peer holding the most, which holds more than that share: its stream with the oldest
/// progress. So a newcomer is never refused for slots that a few peers hold (however fresh
/// their streams), and peers holding more than their share cannot take each other's. A
/// stream that writes nothing for [`IDLE_TIMEOUT`] ends anyway. Under an upload limit
/// ([`crate::rate`]) a stream writes 64 KiB at a time, each when the node's and the peer's
/// buckets allow.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Streams served at once for one peer; more get [`Status::Busy`].
    pub per_peer: usize,
    /// Streams served at once in total.
    pub total: usize,
    /// How long a stream may go without progress before a new request may take its slot.
    pub evict_after: Duration,
    /// Bytes a second this node uploads to all peers together, at most (`None`: unlimited).
    pub upload: Option<u64>,
    /// Bytes a second this node uploads to any one peer, at most (`None`: unlimited).
    pub upload_per_peer: Option<u64>,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            per_peer: 8,
            total: 64,
            evict_after: Duration::from_secs(2),
            upload: None,
            upload_per_peer: None,
        }
    }
}

pub(crate) fn protocol_id() -> StreamProtocol {
    StreamProtocol::new(wire::BLOB_PROTOCOL)
}

/// What an operator sees of the serving limits.
#[derive(Clone, Default)]
pub(crate) struct ServeMetrics {
    /// Requests answered Busy.
    busy: prometheus_client::metrics::counter::Counter,
    /// Stalled streams ended to serve a new request.
    evicted: prometheus_client::metrics::counter::Counter,
    /// Bytes written to requesters' streams.
    sent: prometheus_client::metrics::counter::Counter,
}

impl ServeMetrics {
    pub(crate) fn register(registry: &mut crate::Registry) -> ServeMetrics {
        let m = ServeMetrics::default();
        let sub = registry.sub_registry_with_prefix("moxnet_net");
        sub.register(
            "blob_streams_busy",
            "Blob requests answered Busy: the peer's share or every serving slot was taken by streams making progress",
            m.busy.clone(),
        );
        sub.register(
            "blob_streams_evicted",
            "Blob streams ended for another request while every slot was taken: streams that made no progress, or streams of a peer holding more than its fair share",
            m.evicted.clone(),
        );
        sub.register(
            "blob_sent_bytes",
            "Blob bytes (bao encoding) written to peers' streams; what a cancelled request had not sent yet is not counted",
            m.sent.clone(),
        );
        m
    }
}

/// One stream being served: who, when it last made progress, and how to end it.
struct Slot {
    peer: PeerId,
    progress: Arc<Mutex<Instant>>,
    task: tokio::task::AbortHandle,
}

/// What becomes of a new request.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// A slot was free.
    Free,
    /// `peer`'s stream was ended for it: one `stalled` (no progress for
    /// [`ServeLimits::evict_after`]), else one of a peer over its fair share.
    Evicted { peer: PeerId, stalled: bool },
    /// Refused.
    Busy,
}

/// The streams being served, by a serial number.
#[derive(Default)]
struct Slots {
    next: u64,
    serving: HashMap<u64, Slot>,
}

impl Slots {
    fn of_peer(&self, peer: &PeerId) -> usize {
        self.serving.values().filter(|s| &s.peer == peer).count()
    }

    /// Whether `peer` holds a stream that has gone `after` without progress (it does not read
    /// what it asked for).
    fn stalls(&self, peer: &PeerId, after: Duration) -> bool {
        let now = Instant::now();
        self.serving.values().any(|s| {
            &s.peer == peer
                && now.duration_since(*s.progress.lock().unwrap_or_else(|p| p.into_inner()))
                    >= after
        })
    }

    /// Ends the stream that has gone longest without progress, if that is longer than
    /// `after`, and frees its slot.
    fn evict_stalest(&mut self, after: Duration) -> Option<PeerId> {
        let now = Instant::now();
        let (&id, _) = self
            .serving
            .iter()
            .map(|(id, s)| (id, *s.progress.lock().unwrap_or_else(|p| p.into_inner())))
            .filter(|(_, last)| now.duration_since(*last) >= after)
            .min_by_key(|(_, last)| *last)?;
        self.end(id)
    }

    /// When `peer` holds fewer streams than its fair share of `total` (the slots over the
    /// peers being served, `peer` included), ends the stream with the oldest progress of the
    /// peer holding the most streams, which must hold more than that share, and frees its
    /// slot. With every slot taken such a peer always exists: a peer under its share is never
    /// refused, and no peer is pushed below its share by another.
    fn evict_for_share(&mut self, peer: &PeerId, total: usize) -> Option<PeerId> {
        let mut held: HashMap<PeerId, usize> = HashMap::new();
        for s in self.serving.values() {
            *held.entry(s.peer).or_default() += 1;
        }
        let mine = held.get(peer).copied().unwrap_or(0);
        let peers = held.len() + usize::from(mine == 0);
        let share = total / peers.max(1);
        if mine >= share {
            return None;
        }
        let (&most, &count) = held.iter().max_by_key(|&(p, n)| (*n, *p))?;
        if count <= share {
            return None;
        }
        let (&id, _) = self
            .serving
            .iter()
            .filter(|(_, s)| s.peer == most)
            .map(|(id, s)| (id, *s.progress.lock().unwrap_or_else(|p| p.into_inner())))
            .min_by_key(|(_, last)| *last)?;
        self.end(id)
    }

    /// Registers a stream being served; returns its serial number.
    fn insert(&mut self, slot: Slot) -> u64 {
        let id = self.next;
        self.next += 1;
        self.serving.insert(id, slot);
        id
    }

    /// Whether a new request of `peer` is served, and whose stream gives way to it (see
    /// [`ServeLimits`]).
    fn admit(&mut self, peer: &PeerId, limits: &ServeLimits) -> Admission {
        if self.of_peer(peer) >= limits.per_peer {
            Admission::Busy
        } else if self.serving.len() < limits.total {
            Admission::Free
        } else if self.stalls(peer, limits.evict_after) {
            // A peer that does not read the streams it holds takes no one else's: peers
            // holding streams open unread cannot churn the slots among themselves while
            // honest requesters wait.
            Admission::Busy
        } else if let Some(evicted) = self.evict_stalest(limits.evict_after) {
            Admission::Evicted {
                peer: evicted,
                stalled: true,
            }
        } else if let Some(evicted) = self.evict_for_share(peer, limits.total) {
            Admission::Evicted {
                peer: evicted,
                stalled: false,
            }
        } else {
            Admission::Busy
        }
    }

    /// Ends the stream `id` and frees its slot; returns whose it was.
    fn end(&mut self, id: u64) -> Option<PeerId> {
        let slot = self.serving.remove(&id)?;
        slot.task.abort();
        Some(slot.peer)
    }
}

/// Accepts inbound blob streams until the swarm goes away.
pub(crate) async fn serve(
    mut incoming: crate::streams::Incoming,
    provider: Arc<dyn Provider>,
    limits: ServeLimits,
    metrics: ServeMetrics,
    served: tokio::sync::mpsc::Sender<libp2p::PeerId>,
) {
    let slots: Arc<Mutex<Slots>> = Arc::default();
    let upload = Arc::new(Upload::new(limits.upload, limits.upload_per_peer));
    while let Some((peer, mut stream)) = incoming.next().await {
        let admitted = {
            let mut all = slots.lock().unwrap_or_else(|p| p.into_inner());
            match all.admit(&peer, &limits) {
                Admission::Free => true,
                Admission::Evicted {
                    peer: evicted,
                    stalled,
                } => {
                    metrics.evicted.inc();
                    if stalled {
                        tracing::debug!(%evicted, for_peer = %peer, "ended a stalled blob stream to serve another");
                    } else {
                        tracing::debug!(%evicted, for_peer = %peer, "ended a blob stream of a peer over its share to serve one under it");
                    }
                    true
                }
                Admission::Busy => false,
            }
        };
        if !admitted {
            metrics.busy.inc();
            tracing::debug!(%peer, "blob request refused: busy");
            tokio::spawn(async move {
                let busy = async {
                    answer(&mut stream, BlobResponseHeader::status(Status::Busy)).await?;
                    stream.close().await
                };
                if let Ok(Err(e)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, busy).await {
                    tracing::debug!(%peer, "answering busy: {e}");
                }
            });
            continue;
        }
        let progress = Arc::new(Mutex::new(Instant::now()));
        let provider = provider.clone();
        let (start, started) = tokio::sync::oneshot::channel::<u64>();
        let task = {
            let progress = progress.clone();
            let slots = slots.clone();
            let served = served.clone();
            let upload = upload.clone();
            let sent = metrics.sent.clone();
            tokio::spawn(async move {
                // The slot is registered before the work starts, and freed when it ends.
                let Ok(id) = started.await else { return };
                let _free = FreeSlot { slots, id };
                match serve_one(&mut stream, peer, provider, &upload, &progress, &sent).await {
                    // The swarm ranks connections by what their peers did (a stream read to
                    // its end counts, one held open does not); a full queue loses a hint only.
                    Ok(()) => {
                        let _ = served.try_send(peer);
                    }
                    Err(e) => tracing::debug!(%peer, "serving a blob stream: {e}"),
                }
                let _ = stream.close().await;
            })
        };
        let id = slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Slot {
                peer,
                progress,
                task: task.abort_handle(),
            });
        let _ = start.send(id);
    }
}

/// Frees a stream's slot when its task ends (or is aborted).
struct FreeSlot {
    slots: Arc<Mutex<Slots>>,
    id: u64,
}

impl Drop for FreeSlot {
    fn drop(&mut self) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .serving
            .remove(&self.id);
    }
}

async fn answer(stream: &mut Stream, header: BlobResponseHeader) -> io::Result<()> {
    write_frame(stream, &header.to_bytes()).await
}

/// At most [`MAX_HAVE_RANGES`] of `runs`: the longest, in order (a hint, so dropping the
/// shortest runs of a scattered receipt only hides some of what it could serve).
pub(crate) fn have_hint(mut runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    if runs.len() > MAX_HAVE_RANGES {
        runs.sort_by_key(|(s, e)| std::cmp::Reverse(e - s));
        runs.truncate(MAX_HAVE_RANGES);
        runs.sort_unstable();
    }
    runs
}

/// Whether the runs `have` (sorted) cover every group of `groups` (sorted).
pub(crate) fn covers(have: &[(u64, u64)], groups: &[(u64, u64)]) -> bool {
    groups.iter().all(|(s, e)| {
        // The run that holds `s` must reach `e` (runs never touch, so one run covers it all).
        let i = have.partition_point(|(_, end)| *end <= *s);
        have.get(i).is_some_and(|(hs, he)| hs <= s && e <= he)
    })
}

async fn serve_one(
    stream: &mut Stream,
    peer: PeerId,
    provider: Arc<dyn Provider>,
    upload: &Upload,
    progress: &Mutex<Instant>,
    sent: &prometheus_client::metrics::counter::Counter,
) -> io::Result<()> {
    let touch = || *progress.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    let frame = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_frame(stream, MAX_BLOB_REQUEST_BYTES),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    touch();
    let Ok(request) = BlobRequest::from_bytes(&frame) else {
        return answer(stream, BlobResponseHeader::status(Status::BadRequest)).await;
    };
    let hash = request.hash;
    // A complete copy, or the part held of one being received.
    let found = {
        let provider = provider.clone();
        tokio::task::spawn_blocking(move || match provider.blob_size(hash) {
            Some(size) => Some((size, None)),
            None => provider
                .holding(hash)
                .map(|(size, runs)| (size, Some(runs))),
        })
        .await
        .ok()
        .flatten()
    };
    let Some((size, held)) = found else {
        return answer(stream, BlobResponseHeader::status(Status::NotFound)).await;
    };
    let groups = size.div_ceil(protocol::CHUNK_GROUP_BYTES).max(1);
    if request.groups.last().is_some_and(|(_, end)| *end > groups) {
        return answer(stream, BlobResponseHeader::status(Status::BadRequest)).await;
    }
    let status = match &held {
        Some(runs) if !covers(runs, &request.groups) => Status::Partial,
        _ => Status::Ok,
    };
    let header = BlobResponseHeader {
        status,
        size: Some(size),
        have: held.map(have_hint),
    };
    answer(stream, header).await?;
    if status == Status::Partial {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut pipe = Pipe {
            tx,
            buf: Vec::with_capacity(PIPE_CHUNK),
        };
        provider.serve(hash, &request.groups, &mut pipe)?;
        pipe.flush()
    });
    while let Some(chunk) = rx.recv().await {
        for piece in chunk.chunks(PACE_BYTES) {
            // Within the upload limits: waiting for them is progress, not a stall.
            upload.pace(peer, piece.len() as u64).await;
            touch();
            // A requester that stops reading stalls the write; it ends after IDLE_TIMEOUT (or
            // sooner, when its slot is taken by a new request).
            tokio::time::timeout(IDLE_TIMEOUT, stream.write_all(piece))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "requester stopped reading")
                })??;
            sent.inc_by(piece.len() as u64);
            touch();
        }
    }
    // A failure while reading the local copy (it may be corrupt) ends the stream early; the
    // requester sees a short response and retries elsewhere.
    match producer.await {
        Ok(Ok(())) => stream.flush().await,
        Ok(Err(e)) => Err(e),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// A `Write` on a blocking thread that hands chunks to the async side.
struct Pipe {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for Pipe {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIPE_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_CHUNK));
            self.tx
                .blocking_send(chunk)
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "requester went away"))?;
        }
        Ok(())
    }
}

/// An open response: the blob's size as the provider states it, and the encoded groups.
pub struct BlobResponse {
    /// Who sends it.
    pub peer: PeerId,
    /// The size the provider claims (the bao encoding proves or refutes it).
    pub size: u64,
    /// The groups the provider holds when it is still receiving the blob itself (`None`: it
    /// has all of it).
    pub have: Option<Vec<(u64, u64)>>,
    stream: Stream,
}

impl std::fmt::Debug for BlobResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobResponse")
            .field("peer", &self.peer)
            .field("size", &self.size)
            .finish()
    }
}

impl BlobResponse {
    /// A blocking `Read` over the encoded groups, for the store's `ingest` on a blocking thread.
    /// A read that waits longer than [`IDLE_TIMEOUT`] fails with `TimedOut`.
    pub fn into_blocking_reader(self, runtime: tokio::runtime::Handle) -> BlockingReader {
        BlockingReader {
            stream: self.stream,
            runtime,
        }
    }
}

/// See [`BlobResponse::into_blocking_reader`].
pub struct BlockingReader {
    stream: Stream,
    runtime: tokio::runtime::Handle,
}

impl Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stream = &mut self.stream;
        self.runtime.block_on(async {
            tokio::time::timeout(IDLE_TIMEOUT, stream.read(buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stalled"))?
        })
    }
}

/// Opens a stream to `peer`, sends the request, and reads the header.
pub(crate) async fn request(
    mut control: crate::streams::Control,
    peer: PeerId,
    request: &BlobRequest,
) -> Result<BlobResponse, NetError> {
    let unavailable = |reason: String| NetError::Unavailable { peer, reason };
    // A peer that left may still be named by DHT records: give up on it quickly.
    let mut stream = tokio::time::timeout(DIAL_TIMEOUT, control.open_stream(peer, protocol_id()))
        .await
        .map_err(|_| unavailable(format!("not reachable within {} s", DIAL_TIMEOUT.as_secs())))?
        .map_err(|e| unavailable(e.to_string()))?;
    write_frame(&mut stream, &request.to_bytes())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let header = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_frame(&mut stream, MAX_BLOB_HEADER_BYTES),
    )
    .await
    .map_err(|_| unavailable("no answer".into()))?
    .map_err(|e| unavailable(e.to_string()))?;
    let header = BlobResponseHeader::from_bytes(&header).map_err(|e| NetError::PeerMisbehaved {
        peer,
        reason: format!("blob header: {e}"),
    })?;
    match (header.status, header.size) {
        (Status::Ok, Some(size)) => Ok(BlobResponse {
            peer,
            size,
            have: header.have,
            stream,
        }),
        (Status::Partial, Some(size)) => Err(NetError::Partial {
            peer,
            size,
            have: header.have.unwrap_or_default(),
        }),
        (Status::Busy, _) => Err(NetError::Busy { peer }),
        (status, _) => Err(unavailable(format!("{status:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What happens to a provider's slots: a request from a peer, a stream that ends, one that
    /// stalls (its requester stopped reading long ago) or makes progress.
    #[derive(Debug, Clone)]
    enum Step {
        Request(usize),
        End(usize),
        Stall(usize),
        Progress(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..10usize).prop_map(Step::Request),
            1 => any::<usize>().prop_map(Step::End),
            1 => any::<usize>().prop_map(Step::Stall),
            1 => any::<usize>().prop_map(Step::Progress),
        ]
    }

    proptest! {
        /// Whatever peers do: the limits hold; a peer under its fair share with nothing
        /// stalled is never refused; only stalled streams, or streams of a peer over its
        /// share (which keeps at least its share), give way.
        #[test]
        fn slots_are_bounded_and_a_peer_under_its_share_is_served(
            per_peer in 1..6usize,
            total in 1..24usize,
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let _in = rt.enter();
            let limits = ServeLimits { per_peer, total, ..ServeLimits::default() };
            let peers: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
            let now = Instant::now();
            // Progress this long ago is a stall (an Instant cannot go before boot).
            let Some(stalled_at) = now.checked_sub(limits.evict_after * 2) else {
                return Ok(());
            };
            let mut slots = Slots::default();
            for step in steps {
                let ids: Vec<u64> = {
                    let mut ids: Vec<u64> = slots.serving.keys().copied().collect();
                    ids.sort_unstable();
                    ids
                };
                match step {
                    Step::Request(i) => {
                        let peer = peers[i];
                        let count = |slots: &Slots, p: &PeerId| slots.of_peer(p);
                        let mine = count(&slots, &peer);
                        let mut held: HashMap<PeerId, usize> = HashMap::new();
                        for s in slots.serving.values() {
                            *held.entry(s.peer).or_default() += 1;
                        }
                        let share = total / (held.len() + usize::from(mine == 0));
                        let stalled = slots.stalls(&peer, limits.evict_after);
                        let before = slots.serving.len();
                        let stalled_ids: Vec<u64> = slots
                            .serving
                            .iter()
                            .filter(|(_, s)| *s.progress.lock().expect("lock") <= stalled_at)
                            .map(|(id, _)| *id)
                            .collect();
                        let outcome = slots.admit(&peer, &limits);
                        match &outcome {
                            Admission::Busy => {
                                prop_assert!(
                                    mine >= per_peer || stalled || mine >= share,
                                    "refused a peer under its share ({mine} < {share}) with nothing stalled"
                                );
                                prop_assert_eq!(slots.serving.len(), before);
                            }
                            Admission::Free => prop_assert!(before < total),
                            Admission::Evicted { peer: victim, stalled: true } => {
                                prop_assert_eq!(before, total);
                                prop_assert!(!stalled);
                                let gone: Vec<&u64> = stalled_ids
                                    .iter()
                                    .filter(|id| !slots.serving.contains_key(id))
                                    .collect();
                                prop_assert_eq!(gone.len(), 1, "one stalled stream ended");
                                prop_assert!(held.contains_key(victim));
                            }
                            Admission::Evicted { peer: victim, stalled: false } => {
                                prop_assert_eq!(before, total);
                                prop_assert!(mine < share);
                                prop_assert!(count(&slots, victim) >= share);
                                prop_assert!(victim != &peer);
                            }
                        }
                        if outcome != Admission::Busy {
                            let task = tokio::spawn(std::future::pending::<()>());
                            slots.insert(Slot {
                                peer,
                                progress: Arc::new(Mutex::new(now)),
                                task: task.abort_handle(),
                            });
                        }
                    }
                    Step::End(k) if !ids.is_empty() => {
                        slots.end(ids[k % ids.len()]);
                    }
                    Step::Stall(k) | Step::Progress(k) if !ids.is_empty() => {
                        let at = if matches!(step, Step::Stall(_)) { stalled_at } else { now };
                        if let Some(s) = slots.serving.get(&ids[k % ids.len()]) {
                            *s.progress.lock().expect("lock") = at;
                        }
                    }
                    _ => {}
                }
                prop_assert!(slots.serving.len() <= total);
                for p in &peers {
                    prop_assert!(slots.of_peer(p) <= per_peer);
                }
            }
        }
    }

    #[test]
    fn covers_needs_one_run_around_each_range() {
        let have = [(0, 4), (10, 20)];
        assert!(covers(&have, &[(0, 4)]));
        assert!(covers(&have, &[(1, 3), (12, 20)]));
        assert!(covers(&have, &[]));
        assert!(!covers(&have, &[(3, 5)]));
        assert!(!covers(&have, &[(4, 10)]));
        assert!(!covers(&have, &[(19, 21)]));
        assert!(!covers(&[], &[(0, 1)]));
    }

    #[test]
    fn a_scattered_receipt_states_its_longest_runs_in_order() {
        let runs: Vec<(u64, u64)> = (0..MAX_HAVE_RANGES as u64 + 10)
            .map(|i| (10 * i, 10 * i + 1 + i % 3))
            .collect();
        let hint = have_hint(runs.clone());
        assert_eq!(hint.len(), MAX_HAVE_RANGES);
        assert!(hint.windows(2).all(|w| w[0].1 < w[1].0), "sorted, disjoint");
        assert!(hint.iter().all(|r| runs.contains(r)));
        // No dropped run is longer than a kept one.
        let kept_shortest = hint.iter().map(|(s, e)| e - s).min();
        let dropped_longest = runs
            .iter()
            .filter(|r| !hint.contains(r))
            .map(|(s, e)| e - s)
            .max();
        assert!(dropped_longest <= kept_shortest);
        assert_eq!(have_hint(runs[..3].to_vec()), runs[..3].to_vec());
    }
}
