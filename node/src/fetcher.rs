//! Fetching by hash from the network: drives the I/O-free scheduler (`net::fetch`) with real
//! requests, ingesting every response into the store, which verifies each 16 KiB group before
//! writing it. Fetching a model fetches its signed manifest, checks the author's signature, then
//! every file and training snapshot it references.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::dto::FetchState;
use net::NetError;
use net::fetch::{Action, Event, Failure, Fetch, FetchConfig, RequestId};
use net::libp2p::PeerId;
use protocol::wire::BlobRequest;
use protocol::{BlobHash, Collection, Manifest, ModelId, Object, Signed, Snapshot};
use store::{IngestError, StoreError};
use tokio::sync::mpsc;

use crate::node::{Node, Progress};

type Shared = Arc<Mutex<Progress>>;

fn lock(p: &Shared) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fetches `id` (a model, a folder, or a plain blob) and pins it.
pub async fn fetch(node: &Arc<Node>, id: BlobHash, progress: Shared) -> Result<()> {
    let fetched = fetch_all(node, id, progress).await;
    node.metrics.fetch(match fetched {
        Ok(()) => crate::metrics::Outcome::Ok,
        Err(_) => crate::metrics::Outcome::Failed,
    });
    fetched
}

async fn fetch_all(node: &Arc<Node>, id: BlobHash, progress: Shared) -> Result<()> {
    lock(&progress).state = FetchState::Running;
    fetch_blob(node, id, None, id, &progress).await?;
    let store = node.home.store.clone();
    let record = store.record(id)?.context("fetched blob vanished")?;
    let bytes = if record.size <= Signed::<Manifest>::MAX_BYTES as u64 {
        Some(store.read_bytes(id, record.size)?)
    } else {
        None
    };
    // Children to fetch, with their size when the parent states it.
    let mut children: Vec<(BlobHash, Option<u64>)> = Vec::new();
    let mut snapshots = Vec::new();
    let catalog = &node.home.catalog;
    // A manifest the catalogue knows was verified when it arrived; a new one is verified here,
    // once.
    let manifest = catalog.get(ModelId(id)).or_else(|| {
        bytes
            .as_deref()
            .and_then(|b| Signed::<Manifest>::from_bytes(b).ok())
            .map(Arc::new)
    });
    if let Some(manifest) = manifest {
        let m = manifest.body();
        children.extend(m.files.iter().map(|f| (f.hash, Some(f.size))));
        // The guest that runs the model travels with it: without it a fetched model could
        // neither be called here nor served to peers.
        children.extend(m.runtime.guest.map(|g| (g, None)));
        snapshots = m.snapshots.clone();
        // Fetched as raw bytes: record what they are and what they link, then catalogue them.
        store.import_bytes(
            bytes.as_deref().unwrap_or_default(),
            "manifest",
            m.referenced_blobs(),
        )?;
        catalog.insert(Signed::clone(&manifest))?;
    } else if let Some(collection) = bytes
        .as_deref()
        .filter(|_| record.kind == "collection" || record.size > 0)
        .and_then(|b| Collection::from_bytes(b).ok())
    {
        children.extend(collection.entries.iter().map(|e| (e.hash, Some(e.size))));
        let links = collection.entries.iter().map(|e| e.hash).collect();
        store.import_bytes(bytes.as_deref().unwrap_or_default(), "collection", links)?;
    }
    {
        let mut p = lock(&progress);
        p.bytes_total = record.size + children.iter().filter_map(|(_, s)| *s).sum::<u64>();
        p.bytes_done = record.size;
    }
    for (hash, size) in children {
        fetch_blob(node, hash, size, id, &progress).await?;
        catalog.blob_added(hash);
    }
    for snapshot in snapshots {
        fetch_blob(node, snapshot, None, id, &progress).await?;
        let bytes = store.read_bytes(snapshot, Signed::<Snapshot>::MAX_BYTES as u64)?;
        let signed = Signed::<Snapshot>::from_bytes(&bytes)
            .with_context(|| format!("snapshot {snapshot} of {id} does not verify"))?;
        let links = signed
            .body()
            .weights
            .iter()
            .map(|w| w.hash)
            .chain(signed.body().parent)
            .collect();
        store.import_bytes(&bytes, "snapshot", links)?;
        for w in &signed.body().weights {
            fetch_blob(node, w.hash, Some(w.size), id, &progress).await?;
        }
    }
    store.pin(id)?;
    Ok(())
}

/// Everyone who might have `hash`: DHT providers, peers that announced the model, and
/// connected peers (a peer without it just answers NotFound).
async fn candidates(node: &Arc<Node>, hash: BlobHash, root: BlobHash) -> Vec<PeerId> {
    let mut peers: HashSet<PeerId> = node
        .net
        .find_providers(hash)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Some(announcers) = node
        .announcers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&root)
    {
        peers.extend(announcers.iter().copied());
    }
    peers.extend(node.net.peers().await.unwrap_or_default());
    peers.remove(&node.net.peer_id());
    let mut peers: Vec<PeerId> = peers.into_iter().collect();
    peers.sort();
    peers
}

/// One request's outcome, reported back to the scheduler loop.
struct Done {
    id: RequestId,
    peer: PeerId,
    /// Groups verified and written by the request, whatever its outcome.
    written: u64,
    outcome: Result<(), (Failure, String)>,
}

async fn fetch_blob(
    node: &Arc<Node>,
    hash: BlobHash,
    size: Option<u64>,
    root: BlobHash,
    progress: &Shared,
) -> Result<()> {
    let store = node.home.store.clone();
    if store.has(hash)? {
        lock(progress).bytes_done += size.unwrap_or(0);
        return Ok(());
    }
    let started = Instant::now();
    let mut peers = candidates(node, hash, root).await;
    while peers.is_empty() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        peers = candidates(node, hash, root).await;
    }
    if peers.is_empty() {
        bail!("no peer provides {hash}");
    }
    // The size: known from the manifest, or learnt from the first peer that has the blob (the
    // bao encoding then proves it).
    let size = match size {
        Some(s) => s,
        None => {
            let learnt = learn_size(node, hash, &peers).await?;
            if hash != root {
                lock(progress).bytes_total += learnt;
            }
            learnt
        }
    };
    let total = store::groups(size);
    let missing = store.missing(hash, size)?;
    let ranges: Vec<std::ops::Range<u64>> = store::group_ranges(&missing, size)
        .into_iter()
        .map(|(s, e)| s..e)
        .collect();
    let seed = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    let mut fetch: Fetch<PeerId> = Fetch::new(total, ranges, FetchConfig::default(), seed);
    let clock = Instant::now();
    let now = || clock.elapsed().as_millis() as u64;
    let (tx, mut rx) = mpsc::channel::<Done>(64);
    let mut running: HashMap<RequestId, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut actions = Vec::new();
    for p in &peers {
        actions.extend(fetch.handle(now(), Event::PeerAdded(*p)));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut stuck_since: Option<Instant> = None;
    let base_done = lock(progress).bytes_done;
    loop {
        for action in actions.drain(..) {
            match action {
                Action::Request { id, peer, groups } => {
                    let node = node.clone();
                    let tx = tx.clone();
                    running.insert(
                        id,
                        tokio::spawn(async move {
                            let (written, outcome) = request(&node, peer, hash, size, groups).await;
                            let _ = tx
                                .send(Done {
                                    id,
                                    peer,
                                    written,
                                    outcome,
                                })
                                .await;
                        }),
                    );
                }
                Action::Cancel { id, .. } => {
                    if let Some(task) = running.remove(&id) {
                        task.abort();
                    }
                }
                Action::Ban { peer } => {
                    lock(progress).peers_banned.insert(peer);
                }
                Action::Complete => {
                    for (_, task) in running.drain() {
                        task.abort();
                    }
                    lock(progress).bytes_done = base_done + size;
                    let _ = node.net.provide(hash).await;
                    return Ok(());
                }
                Action::NeedProviders => {
                    stuck_since.get_or_insert_with(Instant::now);
                }
            }
        }
        if let Some(since) = stuck_since {
            if since.elapsed() > Duration::from_secs(15) {
                bail!(
                    "no honest provider of {hash} is left ({} groups missing)",
                    fetch.missing_groups()
                );
            }
            let fresh = candidates(node, hash, root).await;
            for p in fresh {
                if !fetch.is_banned(&p) {
                    actions.extend(fetch.handle(now(), Event::PeerAdded(p)));
                }
            }
            if fetch.in_flight().count() > 0 {
                stuck_since = None;
            }
        }
        tokio::select! {
            Some(done) = rx.recv() => {
                running.remove(&done.id);
                let received = done.written * protocol::CHUNK_GROUP_BYTES;
                lock(progress).bytes_fetched += received;
                node.metrics.bytes_fetched.inc_by(received);
                let event = match done.outcome {
                    Ok(()) => {
                        lock(progress).peers_used.insert(done.peer);
                        Event::Completed { id: done.id }
                    }
                    Err((failure, _reason)) => {
                        let verified = verified_ranges(&store, hash, size, &fetch, done.id);
                        Event::Failed { id: done.id, failure, verified }
                    }
                };
                actions.extend(fetch.handle(now(), event));
                if let Ok(Some(partial)) = store.partial(hash) {
                    lock(progress).bytes_done = base_done + (partial.count() * protocol::CHUNK_GROUP_BYTES).min(size);
                }
            }
            _ = tick.tick() => actions.extend(fetch.handle(now(), Event::Tick)),
        }
    }
}

/// The groups of a failed request that did verify (they are in the store's partial record).
fn verified_ranges(
    store: &store::Store,
    hash: BlobHash,
    size: u64,
    fetch: &Fetch<PeerId>,
    id: RequestId,
) -> Vec<std::ops::Range<u64>> {
    let Some(groups) = fetch
        .in_flight()
        .find(|(r, _, _)| *r == id)
        .map(|(_, _, g)| g)
    else {
        return Vec::new();
    };
    if store.has(hash).unwrap_or(false) {
        return vec![groups];
    }
    let Ok(Some(partial)) = store.partial(hash) else {
        return Vec::new();
    };
    let _ = size;
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for g in groups {
        if partial.has(g) {
            match out.last_mut() {
                Some(r) if r.end == g => r.end = g + 1,
                _ => out.push(g..g + 1),
            }
        }
    }
    out
}

async fn learn_size(node: &Arc<Node>, hash: BlobHash, peers: &[PeerId]) -> Result<u64> {
    let mut last_error = None;
    for peer in peers {
        match node
            .net
            .request_blob(
                *peer,
                &BlobRequest {
                    hash,
                    groups: vec![(0, 1)],
                },
            )
            .await
        {
            Ok(response) => return Ok(response.size),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(e).with_context(|| format!("no peer serves {hash}")),
        None => bail!("no peer serves {hash}"),
    }
}

/// Requests `groups` of `hash` from `peer` and ingests the answer; returns the groups written
/// and the outcome.
async fn request(
    node: &Arc<Node>,
    peer: PeerId,
    hash: BlobHash,
    size: u64,
    groups: std::ops::Range<u64>,
) -> (u64, Result<(), (Failure, String)>) {
    let request = BlobRequest {
        hash,
        groups: vec![(groups.start, groups.end)],
    };
    let response = match node.net.request_blob(peer, &request).await {
        Ok(r) => r,
        Err(e @ NetError::PeerMisbehaved { .. }) => {
            return (0, Err((Failure::Misbehaved, e.to_string())));
        }
        Err(e) => return (0, Err((Failure::Unavailable, e.to_string()))),
    };
    if response.size != size {
        return (
            0,
            Err((
                Failure::Misbehaved,
                format!("claims size {} not {size}", response.size),
            )),
        );
    }
    let reader = response.into_blocking_reader(tokio::runtime::Handle::current());
    let store = node.home.store.clone();
    let ranges = store::chunk_ranges(&[(groups.start, groups.end)]);
    let result = match tokio::task::spawn_blocking(move || {
        store.ingest(hash, size, &ranges, reader)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return (0, Err((Failure::Unavailable, e.to_string()))),
    };
    match result {
        Ok(outcome) => (outcome.groups_written, Ok(())),
        Err(IngestError::PeerMisbehaved {
            reason, outcome, ..
        }) => (outcome.groups_written, Err((Failure::Misbehaved, reason))),
        Err(IngestError::Incomplete {
            reason, outcome, ..
        }) => (outcome.groups_written, Err((Failure::Stalled, reason))),
        Err(IngestError::Store(StoreError::Io { source, context }))
            if source.kind() == std::io::ErrorKind::TimedOut =>
        {
            (0, Err((Failure::Stalled, context)))
        }
        Err(e) => (0, Err((Failure::Unavailable, e.to_string()))),
    }
}
