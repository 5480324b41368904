//! This node's models at work, as two services:
//! - [`Models`]: what the node learns and tells about models: it stores manifests heard from
//!   peers in the catalogue (off the event loop, through a bounded queue and one importer at a
//!   time, so a flood of manifests costs the disk one write stream) and announces and provides
//!   its local models.
//! - [`Runtime`]: runs models: loads a local one into the sandbox, fetches one that a call needs
//!   first, and runs OIP requests on blocking threads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::oip::{InferRequest, InferResponse};
use catalog::Catalog;
use net::libp2p::PeerId;
use protocol::{BlobHash, Manifest, ModelId, Signed};
use sandbox::Outcome;
use store::{Holder, Store};

use crate::fetcher::Fetcher;
use crate::inference::{CallError, Inference, Loaded};
use crate::metrics::{DropLabels, Metrics};

/// Manifests learnt from peers waiting to be stored; more are dropped (and counted in
/// `moxnet_manifests_dropped_total{reason="busy"}`): the next sync or announcement brings them
/// again.
pub const MAX_MANIFEST_IMPORTS: usize = 4096;

/// Manifests the importer stores together (one commit, one flush).
const IMPORT_BATCH: usize = 32;

/// The importer's pace: one batch per this long, so at most 32 × 4 = 128 manifests a second
/// (a catalogue of 100,000 syncs in about 13 minutes, in the background).
const IMPORT_BATCH_EVERY: Duration = Duration::from_millis(250);

/// A manifest from a peer, waiting to be stored.
type Learnt = (ModelId, PeerId, Signed<Manifest>);

/// The longest wait between two tries to announce a model no peer heard yet.
pub const ANNOUNCE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Learns models from peers and announces this node's own.
pub struct Models {
    net: net::Client,
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    /// Manifests waiting for the importer (see [`MAX_MANIFEST_IMPORTS`]).
    imports: tokio::sync::mpsc::Sender<Learnt>,
    /// Models already announced and provided by this node.
    announced: Mutex<HashSet<ModelId>>,
    /// Whether a [`Models::keep_announcing`] loop runs (one is enough).
    retrying: std::sync::atomic::AtomicBool,
    /// How many manifests from peers the catalogue takes.
    quota: catalog::Quota,
}

impl Models {
    /// The service over `net`, `store` and `catalog`.
    pub fn new(
        net: net::Client,
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        quota: catalog::Quota,
    ) -> Models {
        let (imports, queue) = tokio::sync::mpsc::channel(MAX_MANIFEST_IMPORTS);
        tokio::spawn(import_loop(queue, catalog.clone(), metrics.clone(), quota));
        Models {
            quota,
            net,
            store,
            catalog,
            metrics,
            imports,
            announced: Mutex::default(),
            retrying: Default::default(),
        }
    }

    /// Queues manifest `id` that `from` announced or synced (its signature verified by `net`)
    /// for the catalogue: the event loop never waits for the disk. One over quota is dropped at
    /// once; a burst beyond [`MAX_MANIFEST_IMPORTS`] waiting is shed (the next sync or
    /// announcement brings the manifest again).
    pub fn learnt(&self, id: ModelId, from: PeerId, manifest: Signed<Manifest>) {
        if self.catalog.get(id).is_some() {
            return;
        }
        // Checked here first so that a flood over quota costs no disk.
        if let Err(refused) = self.catalog.admits(manifest.signer(), self.quota) {
            dropped(
                &self.metrics,
                refused.label(),
                id,
                from,
                &refused.to_string(),
            );
            return;
        }
        if self.imports.try_send((id, from, manifest)).is_err() {
            let why = format!("{MAX_MANIFEST_IMPORTS} manifests are waiting to be stored");
            dropped(&self.metrics, "busy", id, from, &why);
        }
    }

    /// Announces every model this node holds (local and pinned: see [`Catalog::held_models`])
    /// not yet announced, and provides it and its files, then tries again those no peer heard
    /// (a node with no peer yet, just started or offline when the model was published): after
    /// 2 s, then twice as long each time, at most [`ANNOUNCE_RETRY_MAX`] apart, until every one
    /// was heard.
    /// Only one such loop runs: a call while one runs returns at once (the running one
    /// announces what was added since).
    pub async fn keep_announcing(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.retrying.swap(true, Ordering::SeqCst) {
            return;
        }
        loop {
            let mut wait = Duration::from_secs(2);
            while self.announce_local().await > 0 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(ANNOUNCE_RETRY_MAX);
            }
            self.retrying.store(false, Ordering::SeqCst);
            // A model added between the last round and the flag's reset: this loop goes on
            // (unless another started meanwhile).
            if self.announce_local().await == 0 || self.retrying.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Announces every model this node holds not yet announced, and provides it and its
    /// files. Returns how many no peer heard (they are tried again by the next call).
    pub async fn announce_local(&self) -> usize {
        let catalog = &self.catalog;
        let done: HashSet<ModelId> = self
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Only the models not announced yet are read (a node holding thousands publishes one
        // more without reading them all).
        let local: Vec<(ModelId, Vec<u8>, Vec<BlobHash>)> = catalog
            .held_models()
            .into_iter()
            .filter(|id| !done.contains(id))
            .filter_map(|id| {
                let signed = catalog.get(id)?;
                // Local: the manifest, files and guest are here; snapshots may be too.
                let blobs = std::iter::once(id.blob())
                    .chain(signed.body().referenced_blobs())
                    .filter(|h| self.store.has(*h).unwrap_or(false))
                    .collect();
                Some((id, signed.to_bytes(), blobs))
            })
            .collect();
        let mut unheard = 0;
        for (id, envelope, blobs) in local {
            if !self
                .announced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id)
            {
                continue;
            }
            if let Err(e) = self.net.announce(envelope).await {
                tracing::debug!(model = %id, "announcing (tried again later): {e}");
                self.announced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                unheard += 1;
                continue;
            }
            for hash in blobs {
                if let Err(e) = self.net.provide(hash).await {
                    tracing::warn!(model = %id, blob = %hash, "providing on the DHT: {e}");
                }
            }
            tracing::info!(model = %id, "announced");
        }
        unheard
    }
}

/// Counts a manifest from a peer that was dropped, and says why in the log: a warning for the
/// 1st, 2nd, 4th, 8th… of each reason (a flood cannot flood the log), debug otherwise.
fn dropped(metrics: &Metrics, reason: &'static str, id: ModelId, from: PeerId, why: &str) {
    let n = metrics
        .manifests_dropped
        .get_or_create(&DropLabels { reason })
        .inc()
        + 1;
    if n.is_power_of_two() {
        tracing::warn!(model = %id, peer = %from, "manifest from a peer dropped ({n} so far for this reason): {why}");
    } else {
        tracing::debug!(model = %id, peer = %from, "manifest from a peer dropped: {why}");
    }
}

/// Stores queued manifests in the catalogue, up to [`IMPORT_BATCH`] at a time in one commit
/// on a blocking thread, until the service is dropped.
async fn import_loop(
    mut queue: tokio::sync::mpsc::Receiver<Learnt>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    quota: catalog::Quota,
) {
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let mut tick = tokio::time::interval(IMPORT_BATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while queue.recv_many(&mut batch, IMPORT_BATCH).await > 0 {
        // At most one batch per tick: learning models is background work, and a flood of
        // manifests must not take the disk from fetches.
        tick.tick().await;
        let (who, manifests): (Vec<(ModelId, PeerId)>, Vec<Signed<Manifest>>) =
            batch.drain(..).map(|(id, from, m)| ((id, from), m)).unzip();
        let catalog = catalog.clone();
        let stored =
            tokio::task::spawn_blocking(move || catalog.insert_learnt_many(manifests, quota)).await;
        match stored {
            Ok(Ok(results)) => {
                for ((id, from), result) in who.into_iter().zip(results) {
                    if let Err(refused) = result {
                        let why = refused.to_string();
                        dropped(&metrics, refused.label(), id, from, &why);
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!("storing {} learnt manifests: {e:#}", who.len()),
            Err(e) => tracing::warn!("storing {} learnt manifests: {e}", who.len()),
        }
    }
}

/// Runs models on this node's sandbox.
pub struct Runtime {
    engine: Inference,
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    fetcher: Arc<Fetcher>,
}

impl Runtime {
    /// Runs models with `engine`, from `store` and `catalog`, fetching missing ones with
    /// `fetcher`.
    pub fn new(
        engine: Inference,
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        fetcher: Arc<Fetcher>,
    ) -> Runtime {
        Runtime {
            engine,
            store,
            catalog,
            fetcher,
        }
    }

    /// The sandbox engine (limits, occupancy, backend).
    pub fn engine(&self) -> &Inference {
        &self.engine
    }

    /// Loads a local model into the sandbox (on a blocking thread: compiling a guest takes a
    /// while the first time).
    pub async fn load_local(self: &Arc<Self>, id: ModelId) -> Result<Arc<Loaded>, CallError> {
        if let Some(l) = self.engine.get(id) {
            return Ok(l);
        }
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || {
            runtime.engine.load(&runtime.store, &runtime.catalog, id)
        })
        .await
        .map_err(|e| CallError::new(500, format!("loading the model: {e}")))?
    }

    /// The model loaded in the sandbox, fetched from peers first if it is not here (and then
    /// pinned for `holder`).
    ///
    /// A model still loaded whose files went (a gc after an unpin, or the call cache letting
    /// it go) is fetched again too, so that what runs is also what the node holds; when that
    /// fetch fails, the loaded model still answers.
    pub async fn ensure_loaded(
        self: &Arc<Self>,
        id: ModelId,
        holder: Holder,
    ) -> Result<Arc<Loaded>, CallError> {
        let fetched = self.fetcher.fetch_model(id, holder).await;
        if let Some(loaded) = self.engine.get(id) {
            if let Err(e) = fetched {
                tracing::warn!(%id, "a loaded model's files are gone and fetching them again failed: {e:#}");
            }
            return Ok(loaded);
        }
        if let Err(e) = fetched {
            return Err(CallError::new(
                404,
                format!("model {id} is not on this node and fetching it failed: {e:#}"),
            ));
        }
        self.load_local(id).await
    }

    /// The files of model `id` here, fetched from peers first if they are not (then pinned for
    /// `holder`).
    pub async fn ensure_local(&self, id: ModelId, holder: Holder) -> Result<(), CallError> {
        self.fetcher.fetch_model(id, holder).await.map_err(|e| {
            CallError::new(
                404,
                format!("model {id} is not on this node and fetching it failed: {e:#}"),
            )
        })
    }

    /// Runs `request` on model `id` here, fetching the model first if it is not here.
    pub async fn infer(
        self: &Arc<Self>,
        id: ModelId,
        request: InferRequest,
    ) -> Result<InferResponse, CallError> {
        let model = self.ensure_loaded(id, Holder::User).await?;
        let runtime = self.clone();
        blocking(move || runtime.engine.infer(&model, &request)).await
    }

    /// Runs `request` on a loaded model with at most `max_fuel` (a peer's call); returns every
    /// output.
    pub async fn run(
        self: &Arc<Self>,
        model: Arc<Loaded>,
        request: InferRequest,
        max_fuel: u64,
    ) -> Result<Outcome, CallError> {
        let runtime = self.clone();
        blocking(move || runtime.engine.run(&model, &request, Some(max_fuel))).await
    }
}

/// Runs a call, which blocks: in place on a multi-threaded runtime's worker (tokio hands the
/// worker's other tasks to another thread), else on the blocking pool. In place, a call has no
/// thread hand-off on its path: on a 2-core VM each one cost ~140 µs of latency (an idle core
/// woken), twice per call, on the ~3 ms of the demo model.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(call)
    } else {
        tokio::task::spawn_blocking(call)
            .await
            .map_err(|e| CallError::new(500, format!("the call failed: {e}")))?
    }
}
