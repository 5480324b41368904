//! Fetching by hash from the network: drives the I/O-free scheduler (`net::fetch`) with real
//! requests, ingesting every response into the store, which verifies each 16 KiB group before
//! writing it. Fetching a model fetches its signed manifest, checks the author's signature, then
//! every file and training snapshot it references.
//!
//! [`Fetcher`] is the service: it owns the fetches' progress, one lock per model fetched for a
//! call, and the peers that announced each model (likely providers). It reaches the network,
//! the store and the catalogue, and nothing else.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::dto::{FetchProgress, FetchState};
use catalog::Catalog;
use net::NetError;
use net::fetch::{Action, Event, Failure, Fetch, FetchConfig, RequestId};
use net::libp2p::PeerId;
use protocol::wire::BlobRequest;
use protocol::{BlobHash, Collection, Manifest, ModelId, Object, Signed, Snapshot};
use store::{Holder, IngestError, Store, StoreError};
use tokio::sync::mpsc;

use crate::metrics::{Metrics, Outcome};

/// What a fetch has done so far.
#[derive(Debug, Default)]
pub struct Progress {
    /// Running, complete or failed.
    pub state: FetchState,
    /// Bytes to fetch, once known.
    pub bytes_total: u64,
    /// Bytes present.
    pub bytes_done: u64,
    /// Bytes received and verified by this fetch (less than the total when resuming).
    pub bytes_fetched: u64,
    /// Peers that delivered verified data.
    pub peers_used: HashSet<PeerId>,
    /// Peers banned for sending bad bytes.
    pub peers_banned: HashSet<PeerId>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started (none until it does).
    pub started: Option<Instant>,
    /// How long it took, once it ended.
    pub took: Option<Duration>,
}

impl Progress {
    /// The progress of the fetch of `id` as the API shows it.
    pub fn view(&self, id: BlobHash) -> FetchProgress {
        FetchProgress {
            id: id.to_string(),
            state: self.state,
            bytes_total: self.bytes_total,
            bytes_done: self.bytes_done,
            bytes_fetched: self.bytes_fetched,
            peers_used: self.peers_used.len(),
            peers_banned: self.peers_banned.len(),
            elapsed_ms: self
                .took
                .or_else(|| self.started.map(|s| s.elapsed()))
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            error: self.error.clone(),
        }
    }
}

type Shared = Arc<Mutex<Progress>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a peer's answer stated it holds: `None` the whole blob, else the group ranges of a
/// peer still receiving it.
type Holds = Option<Vec<std::ops::Range<u64>>>;

fn holds(have: Option<Vec<(u64, u64)>>) -> Holds {
    have.map(|h| h.into_iter().map(|(s, e)| s..e).collect())
}

/// One request's outcome, reported back to the scheduler loop.
struct Done {
    id: RequestId,
    peer: PeerId,
    /// Groups verified and written by the request, whatever its outcome.
    written: u64,
    outcome: Result<(), (Failure, String)>,
    /// What the peer's answer stated it holds, if it answered.
    holds: Option<Holds>,
}

/// Fetches whose progress is remembered (`GET /api/v1/fetch/{id}`); running ones always are.
const MAX_TRACKED_FETCHES: usize = 256;
/// How long a fetch with no known peer waits for the DHT's first provider.
const FIRST_PROVIDER: Duration = Duration::from_secs(10);
/// How long a fetch goes on without any provider that can serve it before it fails.
const NO_PROVIDER_GIVE_UP: Duration = Duration::from_secs(15);

/// A fetch with fewer providers than this takes more as they are found (a DHT provider even
/// when not connected yet, an announcer as soon as it connects), so that the load spreads over
/// several and a slow one never sets the pace; beyond it, unconnected DHT providers wait until
/// the fetch is stuck (a provider record may outlive its provider, and a dial to one that left
/// takes its whole timeout).
const SPREAD_OVER: usize = 4;
/// Peers asked at once to prove a blob's size.
const PROVE_AT_ONCE: usize = 3;
/// How soon a peer that could not serve (not found, unreachable) is asked again.
const RETRY_UNAVAILABLE: Duration = Duration::from_millis(500);
/// Most peers one fetch uses: what the DHT names beyond it is not asked (bounds the requests,
/// dials and state a fetch spends, whatever the DHT says).
const MAX_FETCH_PEERS: usize = 32;
/// A fetch with fewer peers than this asks the DHT again this often while it runs: peers that
/// fetch the same blob at once announce themselves as providers while they receive it (see
/// [`PROVIDE_PARTIAL_AFTER`]) and serve each other the groups they hold (swarming).
const SWARM_PEERS: usize = 8;
/// See [`SWARM_PEERS`].
const REQUERY_EVERY: Duration = Duration::from_secs(1);
/// A fetch still running after this long provides its blob in the DHT (peers fetching it too
/// find the groups it holds); a shorter one only once complete, so that a quick fetch costs the
/// DHT one announcement, not two.
const PROVIDE_PARTIAL_AFTER: Duration = Duration::from_millis(500);

/// What one peer's answer proved about a blob's size.
enum Proof {
    /// The size, proven by the last group, and what the peer stated it holds.
    Proven(u64, Holds),
    /// The peer's claim did not verify.
    Lied(String),
    /// The peer could not answer (no copy, busy, unreachable).
    Unavailable(String),
}

/// Models whose announcers are remembered (see [`Fetcher::heard_from`]).
pub const MAX_ANNOUNCED_MODELS: usize = 65_536;
/// Announcers remembered per model.
pub const MAX_ANNOUNCERS: usize = 16;

/// Fetches from peers into this node's store.
pub struct Fetcher {
    net: net::Client,
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    /// Peers that announced or synced each model to us: likely providers.
    announcers: Mutex<HashMap<BlobHash, HashSet<PeerId>>>,
    /// Fetches started (through the API or for a call), by root hash, with a serial number:
    /// at most [`MAX_TRACKED_FETCHES`] are remembered, the oldest finished ones forgotten.
    fetches: Mutex<HashMap<BlobHash, (u64, Shared)>>,
    started: std::sync::atomic::AtomicU64,
    /// One lock per model being fetched for a call.
    model_locks: Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetcher {
    /// A fetcher over `net`, into `store`, cataloguing what it brings in `catalog`.
    pub fn new(
        net: net::Client,
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
    ) -> Fetcher {
        Fetcher {
            net,
            store,
            catalog,
            metrics,
            announcers: Mutex::default(),
            fetches: Mutex::default(),
            started: std::sync::atomic::AtomicU64::new(0),
            model_locks: Mutex::default(),
        }
    }

    /// Notes that `peer` announced or synced `model`: it is asked first when fetching it.
    /// Bounded: at most [`MAX_ANNOUNCED_MODELS`] models (when full, those the catalogue did not
    /// take are forgotten first) and [`MAX_ANNOUNCERS`] peers each.
    pub fn heard_from(&self, model: ModelId, peer: PeerId) {
        let mut announcers = lock(&self.announcers);
        if announcers.len() >= MAX_ANNOUNCED_MODELS && !announcers.contains_key(&model.blob()) {
            announcers.retain(|root, _| self.catalog.get(ModelId(*root)).is_some());
            if announcers.len() >= MAX_ANNOUNCED_MODELS {
                return;
            }
        }
        let peers = announcers.entry(model.blob()).or_default();
        if peers.len() < MAX_ANNOUNCERS {
            peers.insert(peer);
        }
    }

    /// Starts fetching `id` in the background (or joins the fetch of it that is running) and
    /// returns its progress so far.
    pub fn start(self: &Arc<Self>, id: BlobHash) -> FetchProgress {
        if let Some(existing) = lock(&self.fetches).get(&id) {
            let p = lock(&existing.1);
            if p.state == FetchState::Running {
                return p.view(id);
            }
        }
        let progress = self.track(id);
        let view = lock(&progress).view(id);
        let fetcher = self.clone();
        tokio::spawn(async move {
            if let Err(e) = fetcher.fetch(id, progress, Holder::User).await {
                tracing::warn!(%id, "fetch failed: {e:#}");
            }
        });
        view
    }

    /// Every fetch remembered (running, and the newest finished), newest first.
    pub fn all(&self) -> Vec<FetchProgress> {
        let mut shared: Vec<(u64, BlobHash, Shared)> = lock(&self.fetches)
            .iter()
            .map(|(id, (n, p))| (*n, *id, p.clone()))
            .collect();
        shared.sort_by_key(|s| std::cmp::Reverse(s.0));
        shared
            .into_iter()
            .map(|(_, id, p)| lock(&p).view(id))
            .collect()
    }

    /// The progress of the last fetch of `id` started on this node.
    pub fn progress(&self, id: BlobHash) -> Option<FetchProgress> {
        let shared = lock(&self.fetches).get(&id).map(|(_, p)| p.clone())?;
        let view = lock(&shared).view(id);
        Some(view)
    }

    /// Fetches model `id` unless it is local already, one fetch per model at a time:
    /// concurrent calls for a missing model wait for the first. What it brings is pinned for
    /// `holder`.
    pub async fn fetch_model(&self, id: ModelId, holder: Holder) -> Result<()> {
        if self.catalog.is_local(id) {
            return Ok(());
        }
        let one = lock(&self.model_locks)
            .entry(id.blob())
            .or_default()
            .clone();
        let _one = one.lock().await;
        if self.catalog.is_local(id) {
            return Ok(());
        }
        let progress = self.track(id.blob());
        let fetched = self.fetch(id.blob(), progress, holder).await;
        // Forget the lock unless another call waits on it.
        let mut locks = lock(&self.model_locks);
        if locks
            .get(&id.blob())
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            locks.remove(&id.blob());
        }
        fetched
    }

    /// Remembers a new fetch of `id` and returns its progress; forgets the oldest finished
    /// ones beyond [`MAX_TRACKED_FETCHES`].
    fn track(&self, id: BlobHash) -> Shared {
        let progress = Shared::new(Mutex::new(Progress {
            started: Some(Instant::now()),
            ..Progress::default()
        }));
        let serial = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.fetches).insert(id, (serial, progress.clone()));
        self.forget_finished();
        progress
    }

    /// Forgets the oldest finished fetches beyond [`MAX_TRACKED_FETCHES`] (running ones are
    /// kept: when more run at once, the map shrinks back as they finish).
    fn forget_finished(&self) {
        let mut fetches = lock(&self.fetches);
        while fetches.len() > MAX_TRACKED_FETCHES {
            let oldest = fetches
                .iter()
                .filter(|(_, (_, p))| lock(p).state != FetchState::Running)
                .min_by_key(|(_, (serial, _))| *serial)
                .map(|(h, _)| *h);
            match oldest {
                Some(h) => fetches.remove(&h),
                None => break,
            };
        }
    }

    /// Fetches `id` (a model, a folder, or a plain blob) and pins it, recording the outcome in
    /// `progress` and the metrics.
    async fn fetch(&self, id: BlobHash, progress: Shared, holder: Holder) -> Result<()> {
        let fetched = self.fetch_all(id, &progress, holder).await;
        self.metrics.fetch(match fetched {
            Ok(()) => Outcome::Ok,
            Err(_) => Outcome::Failed,
        });
        {
            let mut p = lock(&progress);
            p.took = p.started.map(|s| s.elapsed());
            match &fetched {
                Ok(()) => p.state = FetchState::Complete,
                Err(e) => {
                    p.state = FetchState::Failed;
                    p.error = Some(format!("{e:#}"));
                }
            }
        }
        self.forget_finished();
        fetched
    }

    async fn fetch_all(&self, id: BlobHash, progress: &Shared, holder: Holder) -> Result<()> {
        lock(progress).state = FetchState::Running;
        let store = self.store.clone();
        // The root is pinned as soon as it is here, before any child arrives: a gc while the
        // fetch runs must take neither it nor the children it links (its links are recorded
        // below, before the children are fetched). A fetch that fails leaves what it brought
        // pinned. A gc may still take the root between its arrival and the pin: fetch it again.
        for attempt in 0.. {
            self.fetch_blob(id, None, id, progress).await?;
            match store.pin_for(id, holder) {
                Ok(()) => break,
                Err(StoreError::NotFound { .. }) if attempt < 2 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let record = store.record(id)?.context("fetched blob vanished")?;
        let bytes = if record.size <= Signed::<Manifest>::MAX_BYTES as u64 {
            Some(store.read_bytes(id, record.size)?)
        } else {
            None
        };
        // Children to fetch, with their size when the parent states it.
        let mut children: Vec<(BlobHash, Option<u64>)> = Vec::new();
        let mut snapshots = Vec::new();
        let catalog = &self.catalog;
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
        // Sizes are capped at decode (`protocol::MAX_BLOB_BYTES` each), so these sums cannot
        // overflow; what is missing must fit on the disk before any of it is fetched.
        let stated: u64 = children.iter().filter_map(|(_, s)| *s).sum();
        let mut needed = 0u64;
        for (hash, size) in &children {
            if !store.has(*hash)? {
                needed += size.unwrap_or(0);
            }
        }
        let available = store.available_bytes()?;
        if needed > available {
            bail!(
                "{id} needs {} more on disk and only {} is free in {}",
                crate::render::bytes(needed),
                crate::render::bytes(available),
                store.root().display()
            );
        }
        {
            let mut p = lock(progress);
            p.bytes_total = record.size + stated;
            p.bytes_done = record.size;
        }
        for (hash, size) in children {
            self.fetch_blob(hash, size, id, progress).await?;
            catalog.blob_added(hash);
        }
        for snapshot in snapshots {
            self.fetch_blob(snapshot, None, id, progress).await?;
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
                self.fetch_blob(w.hash, Some(w.size), id, progress).await?;
            }
        }
        Ok(())
    }

    /// Proves the size of `hash` with the first peer whose last group verifies (see
    /// [`Fetcher::try_proof`]), trying `peers`, then providers as the DHT finds them and
    /// connected peers again (one that answered NotFound may have the blob a moment later),
    /// for up to [`NO_PROVIDER_GIVE_UP`]. Returns the proven size, the peer that proved it, what
    /// it stated it holds, and the peers whose claims did not verify (never asked again); the
    /// DHT's providers found meanwhile are added to `seen` (at most [`MAX_FETCH_PEERS`]).
    async fn prove_size(
        &self,
        hash: BlobHash,
        stated: Option<u64>,
        root: BlobHash,
        peers: Vec<PeerId>,
        dht: &mut Option<mpsc::Receiver<PeerId>>,
        seen: &mut Vec<PeerId>,
    ) -> Result<(u64, PeerId, Holds, Vec<PeerId>)> {
        let deadline = Instant::now() + NO_PROVIDER_GIVE_UP;
        let mut liars = Vec::new();
        let mut reasons: HashMap<PeerId, String> = HashMap::new();
        let mut asked: HashMap<PeerId, Instant> = HashMap::new();
        let mut queue: std::collections::VecDeque<PeerId> = peers.into();
        // A few peers are asked at once: one that left (still named by an announcement or a
        // DHT record) costs a dial timeout, which must not hold up the live ones.
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            while running.len() < PROVE_AT_ONCE {
                let Some(peer) = queue.pop_front() else { break };
                if liars.contains(&peer)
                    || asked
                        .get(&peer)
                        .is_some_and(|t| t.elapsed() < RETRY_UNAVAILABLE)
                {
                    continue;
                }
                asked.insert(peer, Instant::now());
                running.push(async move { (peer, self.try_proof(peer, hash, stated).await) });
            }
            if running.is_empty() && Instant::now() >= deadline {
                let mut reasons: Vec<String> =
                    reasons.iter().map(|(p, r)| format!("{p}: {r}")).collect();
                reasons.sort();
                bail!(
                    "no peer proved the size of {hash} within {} s ({})",
                    NO_PROVIDER_GIVE_UP.as_secs(),
                    if reasons.is_empty() {
                        "no provider found".to_string()
                    } else {
                        reasons.join("; ")
                    }
                );
            }
            let room = running.len() < PROVE_AT_ONCE;
            tokio::select! {
                Some((peer, proof)) = async {
                    match running.is_empty() {
                        true => std::future::pending().await,
                        false => futures::StreamExt::next(&mut running).await,
                    }
                } => match proof? {
                    Proof::Proven(size, holds) => return Ok((size, peer, holds, liars)),
                    Proof::Lied(why) => {
                        tracing::info!(%peer, blob = %hash, "size refuted: {why}");
                        liars.push(peer);
                        reasons.insert(peer, why);
                    }
                    Proof::Unavailable(why) => {
                        reasons.insert(peer, why);
                    }
                },
                found = async {
                    match dht.as_mut() {
                        Some(found) => found.recv().await,
                        None => std::future::pending().await,
                    }
                } => match found {
                    // A provider record is better evidence than a connection: asked next.
                    Some(peer) => {
                        if seen.len() < MAX_FETCH_PEERS && !seen.contains(&peer) {
                            seen.push(peer);
                        }
                        queue.push_front(peer);
                    }
                    None => *dht = None,
                },
                // A moment later, ask the known peers again (one that answered NotFound may
                // have the blob now) and start a new DHT query if the last one ended.
                _ = tokio::time::sleep(RETRY_UNAVAILABLE), if room => {
                    queue.extend(self.known_candidates(root).await);
                    if dht.is_none() {
                        *dht = self.dht_providers(hash).await;
                    }
                }
            }
        }
    }

    /// Asks `peer` for the last group of `hash`, for the size the parent `stated` (or, without
    /// one, the size the peer claims), and has the store verify it: BLAKE3's tree commits to
    /// the length, so the group verifies only under the true size. Nothing is allocated for a
    /// size before it is proven, and a peer is never blamed for disagreeing with an unproven
    /// figure, only for a claim of its own that does not verify.
    async fn try_proof(&self, peer: PeerId, hash: BlobHash, stated: Option<u64>) -> Result<Proof> {
        let mut guess = stated;
        // At most two asks: the stated size's last group, then the peer's own claim's.
        for _ in 0..2 {
            let last = guess.map_or(0, |s| store::groups(s) - 1);
            let request = BlobRequest {
                hash,
                groups: vec![(last, last + 1)],
            };
            let mut response = match self.net.request_blob(peer, &request).await {
                Ok(r) => r,
                Err(e @ NetError::PeerMisbehaved { .. }) => return Ok(Proof::Lied(e.to_string())),
                // A peer receiving the blob too holds its last group (its size was proven to it
                // by that group): ask for that one.
                Err(NetError::Partial { size, .. }) if guess.is_none() => {
                    guess = Some(size);
                    continue;
                }
                Err(e) => return Ok(Proof::Unavailable(e.to_string())),
            };
            let stated = holds(response.have.take());
            let claim = response.size;
            if store::groups(claim) - 1 != last {
                // Not the last group of what this peer claims: ask for that one.
                guess = Some(claim);
                continue;
            }
            let reader = response.into_blocking_reader(tokio::runtime::Handle::current());
            let store = self.store.clone();
            let ranges = store::chunk_ranges(&[(last, last + 1)]);
            let ingested =
                tokio::task::spawn_blocking(move || store.ingest(hash, claim, &ranges, reader))
                    .await
                    .context("the store's thread failed")?;
            return Ok(match ingested {
                Ok(_) => Proof::Proven(claim, stated),
                Err(IngestError::PeerMisbehaved { reason, .. }) => {
                    Proof::Lied(format!("claimed {claim} bytes, refuted: {reason}"))
                }
                Err(IngestError::Store(e)) => return Err(e.into()),
                Err(e) => Proof::Unavailable(e.to_string()),
            });
        }
        Ok(Proof::Lied(
            "changed its claimed size between two requests".into(),
        ))
    }

    /// The peers likely to have `hash` that are known without asking the DHT, best first:
    /// connected peers that announced the model, then other connected peers (one without the
    /// blob just answers NotFound), then announcers that are not connected (they may have left,
    /// and a dial to them can take its whole timeout). Anyone can connect, so plain connected
    /// peers never come before the announcers.
    async fn known_candidates(&self, root: BlobHash) -> Vec<PeerId> {
        let mut connected = self.net.peers().await.unwrap_or_default();
        connected.sort();
        let mut announcers: Vec<PeerId> = lock(&self.announcers)
            .get(&root)
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default();
        announcers.sort();
        let (live, gone): (Vec<PeerId>, Vec<PeerId>) =
            announcers.into_iter().partition(|p| connected.contains(p));
        let me = self.net.peer_id();
        live.iter()
            .copied()
            .chain(connected.into_iter().filter(|p| !live.contains(p)))
            .chain(gone)
            .filter(|p| *p != me)
            .collect()
    }

    /// Asks the DHT for providers of `hash`; they arrive on the channel as they are found (the
    /// query's end waits on every peer it asks, including those that left).
    async fn dht_providers(&self, hash: BlobHash) -> Option<mpsc::Receiver<PeerId>> {
        match self.net.providers(hash).await {
            Ok(found) => Some(found),
            Err(e) => {
                tracing::debug!(blob = %hash, "asking the DHT for providers: {e}");
                None
            }
        }
    }

    async fn fetch_blob(
        &self,
        hash: BlobHash,
        stated: Option<u64>,
        root: BlobHash,
        progress: &Shared,
    ) -> Result<()> {
        let store = self.store.clone();
        if store.has(hash)? {
            lock(progress).bytes_done += stated.unwrap_or(0);
            return Ok(());
        }
        // Start on the peers known now; DHT providers join as the query finds them, so the
        // fetch never waits for a query that is still asking peers that left.
        let mut dht = self.dht_providers(hash).await;
        let mut peers = self.known_candidates(root).await;
        if peers.is_empty()
            && let Some(found) = dht.as_mut()
            && let Ok(Some(first)) = tokio::time::timeout(FIRST_PROVIDER, found.recv()).await
        {
            peers.push(first);
        }
        if peers.is_empty() {
            bail!("no peer provides {hash}");
        }
        // The size, proven before anything is allocated or anyone banned on its account: by a
        // receipt begun earlier (the store proved it then), else by one peer's last group.
        let mut prover_holds = None;
        // DHT providers not connected when found (see below), kept for when the fetch is stuck.
        let mut spare: Vec<PeerId> = Vec::new();
        let size = match store.partial(hash)? {
            Some(record) => record.size,
            None => {
                let mut seen = Vec::new();
                let (proven, prover, stated, liars) = self
                    .prove_size(hash, stated, root, peers.clone(), &mut dht, &mut seen)
                    .await?;
                // The peer that proved it has the blob, whether or not it was known at first.
                // The fetch starts on it, the model's announcers and the DHT's providers found
                // meanwhile (as they would have joined had the fetch been running): any peer
                // can connect, so plain connected peers join only as needed.
                let announced: Vec<PeerId> = lock(&self.announcers)
                    .get(&root)
                    .map(|a| a.iter().copied().collect())
                    .unwrap_or_default();
                peers.retain(|p| *p != prover && announced.contains(p));
                peers.insert(0, prover);
                let connected = self.net.peers().await.unwrap_or_default();
                for p in seen {
                    if peers.contains(&p) || liars.contains(&p) {
                        continue;
                    }
                    if peers.len() < SPREAD_OVER
                        || (peers.len() < MAX_FETCH_PEERS && connected.contains(&p))
                    {
                        peers.push(p);
                    } else if spare.len() < MAX_FETCH_PEERS {
                        spare.push(p);
                    }
                }
                prover_holds = Some((prover, stated));
                if !liars.is_empty() {
                    peers.retain(|p| !liars.contains(p));
                    lock(progress).peers_banned.extend(liars);
                }
                proven
            }
        };
        match stated {
            Some(s) if s != size => bail!(
                "blob {hash} is {size} bytes (proven by its last group), not the {s} bytes {root} states"
            ),
            None if hash != root => lock(progress).bytes_total += size,
            _ => {}
        }
        if store.has(hash)? {
            // The proof was the whole blob.
            lock(progress).bytes_done += size;
            return Ok(());
        }
        let total = store::groups(size);
        let missing = store.missing(hash, size)?;
        let ranges: Vec<std::ops::Range<u64>> = store::group_ranges(&missing, size)
            .into_iter()
            .map(|(s, e)| s..e)
            .collect();
        // Nodes fetching this blob at once draw different orders (see `net::fetch`).
        let seed = u64::from_le_bytes(
            *BlobHash::of(&[hash.as_bytes().as_slice(), &self.net.peer_id().to_bytes()].concat())
                .as_bytes()
                .first_chunk::<8>()
                .unwrap_or(&[0; 8]),
        );
        let mut fetch: Fetch<PeerId> = Fetch::new(total, ranges, FetchConfig::default(), seed);
        // Provided in the DHT while it is received, once the fetch has run for a while (see
        // `PROVIDE_PARTIAL_AFTER`).
        let mut provided = false;
        let clock = Instant::now();
        let now = || clock.elapsed().as_millis() as u64;
        let (tx, mut rx) = mpsc::channel::<Done>(64);
        let mut running: HashMap<RequestId, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut actions = Vec::new();
        let mut added: HashSet<PeerId> = HashSet::new();
        if let Some((peer, have)) = prover_holds {
            actions.extend(fetch.handle(now(), Event::Has { peer, have }));
        }
        for p in &peers {
            added.insert(*p);
            tracing::debug!(blob = %hash, peer = %*p, ms = now(), "a peer joins the fetch (first)");
            actions.extend(fetch.handle(now(), Event::PeerAdded(*p)));
        }
        let mut last_query = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut stuck_since: Option<Instant> = None;
        let base_done = lock(progress).bytes_done;
        loop {
            for action in actions.drain(..) {
                match action {
                    Action::Request { id, peer, groups } => {
                        let (net, store) = (self.net.clone(), self.store.clone());
                        let tx = tx.clone();
                        running.insert(
                            id,
                            tokio::spawn(async move {
                                let (written, outcome, holds) =
                                    request(&net, store, peer, hash, size, groups).await;
                                let _ = tx
                                    .send(Done {
                                        id,
                                        peer,
                                        written,
                                        outcome,
                                        holds,
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
                        tracing::debug!(blob = %hash, ms = now(), peers = fetch.peer_count(), "fetch complete");
                        lock(progress).bytes_done = base_done + size;
                        // Announcing a provider record waits on DHT peers (some may have
                        // left): not on the fetch's time.
                        let net = self.net.clone();
                        tokio::spawn(async move {
                            if let Err(e) = net.provide(hash).await {
                                tracing::debug!(blob = %hash, "providing on the DHT: {e}");
                            }
                        });
                        return Ok(());
                    }
                    Action::NeedProviders => {
                        stuck_since.get_or_insert_with(Instant::now);
                    }
                }
            }
            if let Some(since) = stuck_since {
                if since.elapsed() > NO_PROVIDER_GIVE_UP {
                    bail!(
                        "no honest provider of {hash} is left ({} groups missing)",
                        fetch.missing_groups()
                    );
                }
                // Connected peers and announcers again, the DHT's providers that were not
                // connected, and a new DHT query once the last one ended; all feed the fetch
                // without holding it up.
                for p in spare.drain(..).chain(self.known_candidates(root).await) {
                    if !fetch.is_banned(&p) {
                        if added.insert(p) {
                            tracing::debug!(blob = %hash, peer = %p, ms = now(), "a peer joins the fetch (stuck)");
                        }
                        actions.extend(fetch.handle(now(), Event::PeerAdded(p)));
                    }
                }
                if dht.is_none() {
                    dht = self.dht_providers(hash).await;
                    last_query = Instant::now();
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
                    self.metrics.bytes_fetched.inc_by(received);
                    if let Some(have) = done.holds {
                        actions.extend(fetch.handle(now(), Event::Has { peer: done.peer, have }));
                    }
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
                found = async {
                    match dht.as_mut() {
                        Some(found) => found.recv().await,
                        None => std::future::pending().await,
                    }
                } => match found {
                    // A provider record may name a peer that left (records outlive their
                    // providers): one connected now joins at once; the others wait until the
                    // fetch needs more peers, so ranges never sit on a dial to a departed peer.
                    // A peer the fetch dropped (it failed) may join again: it may hold more now.
                    Some(p) if !fetch.is_banned(&p) => {
                        if fetch.peer_count() < SPREAD_OVER
                            || (fetch.peer_count() < MAX_FETCH_PEERS
                                && self.net.peers().await.is_ok_and(|c| c.contains(&p)))
                        {
                            if added.insert(p) {
                                tracing::debug!(blob = %hash, peer = %p, ms = now(), "a peer joins the fetch (dht)");
                            }
                            actions.extend(fetch.handle(now(), Event::PeerAdded(p)));
                        } else if !spare.contains(&p) && spare.len() < MAX_FETCH_PEERS {
                            spare.push(p);
                        }
                    }
                    Some(_) => {}
                    None => dht = None,
                },
                _ = tick.tick() => {
                    actions.extend(fetch.handle(now(), Event::Tick));
                    // Peers fetching it too find this node as a provider of the groups it holds.
                    if !provided && clock.elapsed() >= PROVIDE_PARTIAL_AFTER {
                        provided = true;
                        let net = self.net.clone();
                        tokio::spawn(async move {
                            if let Err(e) = net.provide(hash).await {
                                tracing::debug!(blob = %hash, "providing a blob being received on the DHT: {e}");
                            }
                        });
                    }
                    // Peers that began fetching this blob since (swarming), while few serve it.
                    if dht.is_none()
                        && fetch.peer_count() < SWARM_PEERS
                        && last_query.elapsed() >= REQUERY_EVERY
                    {
                        dht = self.dht_providers(hash).await;
                        last_query = Instant::now();
                    }
                    // Announcers that connected since the fetch began join it (within a tick),
                    // while it has few providers.
                    if added.len() < SPREAD_OVER {
                        let connected = self.net.peers().await.unwrap_or_default();
                        let announced: Vec<PeerId> = lock(&self.announcers)
                            .get(&root)
                            .map(|a| a.iter().copied().collect())
                            .unwrap_or_default();
                        for p in announced {
                            if connected.contains(&p) && !fetch.is_banned(&p) && added.insert(p) {
                                tracing::debug!(blob = %hash, peer = %p, ms = now(), "a peer joins the fetch (announcer)");
                                actions.extend(fetch.handle(now(), Event::PeerAdded(p)));
                            }
                        }
                    }
                }
            }
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

/// Requests `groups` of `hash` from `peer` and ingests the answer; returns the groups written
/// and the outcome.
async fn request(
    net: &net::Client,
    store: Arc<Store>,
    peer: PeerId,
    hash: BlobHash,
    size: u64,
    groups: std::ops::Range<u64>,
) -> (u64, Result<(), (Failure, String)>, Option<Holds>) {
    let request = BlobRequest {
        hash,
        groups: vec![(groups.start, groups.end)],
    };
    let mut response = match net.request_blob(peer, &request).await {
        Ok(r) => r,
        Err(e @ NetError::PeerMisbehaved { .. }) => {
            return (0, Err((Failure::Misbehaved, e.to_string())), None);
        }
        Err(NetError::Partial {
            size: claimed,
            have,
            ..
        }) => {
            // Its size was proven to it as to this node: another one is a lie.
            let failure = if claimed == size {
                Failure::Lacks
            } else {
                Failure::Misbehaved
            };
            let reason = format!("holds only part of {hash}");
            return (0, Err((failure, reason)), Some(holds(Some(have))));
        }
        Err(e @ NetError::Busy { .. }) => return (0, Err((Failure::Busy, e.to_string())), None),
        Err(e) => return (0, Err((Failure::Unavailable, e.to_string())), None),
    };
    if response.size != size {
        return (
            0,
            Err((
                Failure::Misbehaved,
                format!("claims size {} not {size}", response.size),
            )),
            None,
        );
    }
    let stated = Some(holds(response.have.take()));
    let reader = response.into_blocking_reader(tokio::runtime::Handle::current());
    let ranges = store::chunk_ranges(&[(groups.start, groups.end)]);
    let result = match tokio::task::spawn_blocking(move || {
        store.ingest(hash, size, &ranges, reader)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return (0, Err((Failure::Unavailable, e.to_string())), stated),
    };
    let (written, outcome) = match result {
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
    };
    (written, outcome, stated)
}
