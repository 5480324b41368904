//! This node's models at work, as two services:
//! - [`Models`]: what the node learns and tells about models: it stores manifests heard from
//!   peers in the catalogue (off the event loop, a bounded number at once) and announces and
//!   provides its local models.
//! - [`Runtime`]: runs models: loads a local one into the sandbox, fetches one that a call needs
//!   first, and runs OIP requests on blocking threads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use api::oip::{InferRequest, InferResponse};
use catalog::Catalog;
use net::libp2p::PeerId;
use protocol::{BlobHash, Manifest, ModelId, Signed};
use sandbox::Outcome;
use store::Store;

use crate::fetcher::Fetcher;
use crate::inference::{CallError, Inference, Loaded};
use crate::metrics::{DropLabels, Metrics};

/// Manifests learnt from peers being stored at once; more are dropped (and counted in
/// `moxnet_manifests_dropped_total`).
pub const MAX_MANIFEST_IMPORTS: usize = 256;

/// Learns models from peers and announces this node's own.
pub struct Models {
    net: net::Client,
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    /// Bounds the manifests being stored at once (see [`MAX_MANIFEST_IMPORTS`]).
    imports: Arc<tokio::sync::Semaphore>,
    /// Models already announced and provided by this node.
    announced: Mutex<HashSet<ModelId>>,
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
        Models {
            quota,
            net,
            store,
            catalog,
            metrics,
            imports: Arc::new(tokio::sync::Semaphore::new(MAX_MANIFEST_IMPORTS)),
            announced: Mutex::default(),
        }
    }

    /// Stores manifest `id` that `from` announced or synced (its signature verified by `net`) in
    /// the catalogue, on a blocking thread: the event loop never waits for the disk. A burst
    /// beyond [`MAX_MANIFEST_IMPORTS`] in flight is shed: the next sync or announcement brings
    /// the manifest again.
    pub fn learnt(&self, id: ModelId, from: PeerId, manifest: Signed<Manifest>) {
        if self.catalog.get(id).is_some() {
            return;
        }
        let drop = |reason: &'static str| {
            self.metrics
                .manifests_dropped
                .get_or_create(&DropLabels { reason })
                .inc();
        };
        // Checked here first so that a flood over quota costs no blocking thread.
        if let Err(refused) = self.catalog.admits(manifest.signer(), self.quota) {
            drop(refused.label());
            tracing::warn!(model = %id, peer = %from, author = %manifest.signer(), "manifest from a peer dropped: {refused}");
            return;
        }
        let Ok(permit) = self.imports.clone().try_acquire_owned() else {
            drop("busy");
            tracing::warn!(model = %id, peer = %from, "too many manifests being stored; dropped this one");
            return;
        };
        let catalog = self.catalog.clone();
        let (quota, metrics) = (self.quota, self.metrics.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match catalog.insert_learnt(manifest, quota) {
                Ok(Ok(_)) => {}
                Ok(Err(refused)) => {
                    metrics
                        .manifests_dropped
                        .get_or_create(&DropLabels {
                            reason: refused.label(),
                        })
                        .inc();
                    tracing::warn!(model = %id, "manifest from a peer dropped: {refused}");
                }
                Err(e) => tracing::warn!(model = %id, "storing a learnt manifest: {e:#}"),
            }
        });
    }

    /// Announces every local manifest not yet announced, and provides it and its files.
    pub async fn announce_local(&self) {
        let catalog = &self.catalog;
        let local: Vec<(ModelId, Vec<u8>, Vec<BlobHash>)> = catalog
            .local_models()
            .into_iter()
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
                tracing::warn!(model = %id, "announcing: {e}");
            }
            for hash in blobs {
                if let Err(e) = self.net.provide(hash).await {
                    tracing::warn!(model = %id, blob = %hash, "providing on the DHT: {e}");
                }
            }
            tracing::info!(model = %id, "announced");
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

    /// The model loaded in the sandbox, fetched from peers first if it is not here.
    pub async fn ensure_loaded(self: &Arc<Self>, id: ModelId) -> Result<Arc<Loaded>, CallError> {
        if self.engine.get(id).is_none()
            && let Err(e) = self.fetcher.fetch_model(id).await
        {
            return Err(CallError::new(
                404,
                format!("model {id} is not on this node and fetching it failed: {e:#}"),
            ));
        }
        self.load_local(id).await
    }

    /// Runs `request` on model `id` here, fetching the model first if it is not here.
    pub async fn infer(
        self: &Arc<Self>,
        id: ModelId,
        request: InferRequest,
    ) -> Result<InferResponse, CallError> {
        let model = self.ensure_loaded(id).await?;
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || runtime.engine.infer(&model, &request))
            .await
            .map_err(|e| CallError::new(500, format!("the call failed: {e}")))?
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
        tokio::task::spawn_blocking(move || runtime.engine.run(&model, &request, Some(max_fuel)))
            .await
            .map_err(|e| CallError::new(500, format!("the call failed: {e}")))?
    }
}
