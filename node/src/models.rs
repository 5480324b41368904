//! This node's models at work: announcing the local ones, loading one into the sandbox, and
//! fetching one that a call needs first (one fetch per model at a time).

use std::sync::{Arc, Mutex};

use api::dto::FetchState;
use protocol::{BlobHash, ModelId};

use crate::fetcher;
use crate::inference::{CallError, Loaded};
use crate::node::{Node, Progress};

/// Announces every local manifest not yet announced, and provides it and its files.
pub async fn announce_local(node: &Arc<Node>) {
    let catalog = &node.home.catalog;
    let local: Vec<(ModelId, Vec<u8>, Vec<BlobHash>)> = catalog
        .local_models()
        .into_iter()
        .filter_map(|id| {
            let signed = catalog.get(id)?;
            // Local: the manifest, files and guest are here; snapshots may be too.
            let store = &node.home.store;
            let blobs = std::iter::once(id.blob())
                .chain(signed.body().referenced_blobs())
                .filter(|h| store.has(*h).unwrap_or(false))
                .collect();
            Some((id, signed.to_bytes(), blobs))
        })
        .collect();
    for (id, envelope, blobs) in local {
        if !node
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
        {
            continue;
        }
        if let Err(e) = node.net.announce(envelope).await {
            tracing::warn!(model = %id, "announcing: {e}");
        }
        for hash in blobs {
            if let Err(e) = node.net.provide(hash).await {
                tracing::warn!(model = %id, blob = %hash, "providing on the DHT: {e}");
            }
        }
        tracing::info!(model = %id, "announced");
    }
}

/// Loads a local model into the sandbox (on a blocking thread: compiling a guest takes a while
/// the first time).
pub async fn load_local(node: &Arc<Node>, id: ModelId) -> Result<Arc<Loaded>, CallError> {
    if let Some(l) = node.inference.get(id) {
        return Ok(l);
    }
    let worker = node.clone();
    tokio::task::spawn_blocking(move || worker.inference.load(&worker.home, id))
        .await
        .map_err(|e| CallError::new(500, format!("loading the model: {e}")))?
}

/// The model loaded in the sandbox, fetched from peers first if it is not here.
pub async fn ensure_loaded(node: &Arc<Node>, id: ModelId) -> Result<Arc<Loaded>, CallError> {
    if node.inference.get(id).is_some() {
        return load_local(node, id).await;
    }
    if !node.home.catalog.is_local(id) {
        // One fetch per model: concurrent calls for a missing model wait for the first.
        let lock = node
            .fetch_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.blob())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        if !node.home.catalog.is_local(id) {
            let progress = Arc::new(Mutex::new(Progress::default()));
            node.fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.blob(), progress.clone());
            let fetched = fetcher::fetch(node, id.blob(), progress.clone()).await;
            let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = fetched {
                p.state = FetchState::Failed;
                p.error = Some(format!("{e:#}"));
                return Err(CallError::new(
                    404,
                    format!("model {id} is not on this node and fetching it failed: {e:#}"),
                ));
            }
            p.state = FetchState::Complete;
        }
    }
    load_local(node, id).await
}
