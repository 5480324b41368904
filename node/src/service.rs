//! The node's side of the HTTP API: [`api::NodeApi`] over the running node. Store operations
//! run on blocking threads (`ops.rs`), fetches and calls on the node's services; errors become
//! HTTP statuses in one place ([`to_api`]).

use std::sync::{Arc, Mutex};

use api::dto::{
    AddRequest, Added, BlobList, ExportRequest, Exported, FetchProgress, FetchState, GcReport,
    History, ModelList, ModelView, NodeInfo, OfferList, PinChange, PublishRequest, Published,
    SnapshotAdded, SnapshotRequest, VerifyReport, VerifyRequest,
};
use api::{ApiError, ApiResult};
use axum::body::Bytes;
use axum::http::StatusCode;
use net::libp2p::PeerId;
use protocol::{BlobHash, ModelId};
use serde_json::{Value, json};

use crate::fetcher;
use crate::inference::CallError;
use crate::metrics::{Outcome, Place};
use crate::models::{announce_local, ensure_loaded, load_local};
use crate::node::{Node, Progress};
use crate::ops::{self, BadRequest, NotFound};
use crate::remote::CallOptions;

/// The API's handle on the node.
pub struct Service(pub Arc<Node>);

/// An operation's error as the API answers it: 404 for what is not here, 400 for a malformed
/// request, 500 for the rest (with the whole chain of context).
pub fn to_api(e: anyhow::Error) -> ApiError {
    let message = format!("{e:#}");
    if e.downcast_ref::<NotFound>().is_some() {
        ApiError::not_found(message)
    } else if e.downcast_ref::<BadRequest>().is_some() {
        ApiError::bad_request(message)
    } else {
        tracing::warn!("API request failed: {message}");
        ApiError::internal(message)
    }
}

/// An inference error as the API answers it.
fn from_call(e: CallError) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        message: e.message,
        details: e.details,
    }
}

fn parse(id: &str) -> ApiResult<BlobHash> {
    ops::parse_hash(id).map_err(to_api)
}

fn parse_model(id: &str) -> Result<ModelId, CallError> {
    id.parse::<BlobHash>()
        .map(ModelId)
        .map_err(|e| CallError::new(400, format!("{id:?} is not a model id: {e}")))
}

impl Service {
    /// Runs a store operation on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> anyhow::Result<T> + Send + 'static,
    ) -> ApiResult<T> {
        let node = self.0.clone();
        tokio::task::spawn_blocking(move || f(&node))
            .await
            .map_err(|e| ApiError::internal(format!("the operation's thread failed: {e}")))?
            .map_err(to_api)
    }

    /// A fetch's progress as the API shows it.
    fn progress(id: BlobHash, p: &Progress) -> FetchProgress {
        FetchProgress {
            id: id.to_string(),
            state: p.state,
            bytes_total: p.bytes_total,
            bytes_done: p.bytes_done,
            bytes_fetched: p.bytes_fetched,
            peers_used: p.peers_used.len(),
            peers_banned: p.peers_banned.len(),
            error: p.error.clone(),
        }
    }
}

impl api::NodeApi for Service {
    async fn info(&self) -> ApiResult<NodeInfo> {
        let node = &self.0;
        let peers = match node.net.peers().await {
            Ok(p) => p.iter().map(PeerId::to_string).collect(),
            Err(e) => return Err(ApiError::internal(format!("asking the network: {e}"))),
        };
        Ok(NodeInfo {
            node_id: node.home.key.node_id().to_string(),
            peer_id: node.net.peer_id().to_string(),
            listen: node.listen_addrs(),
            peers,
        })
    }

    async fn models(&self) -> ApiResult<ModelList> {
        Ok(ops::models(&self.0.home.catalog))
    }

    async fn show(&self, id: String) -> ApiResult<ModelView> {
        let id = ModelId(parse(&id)?);
        self.blocking(move |n| ops::show(&n.home, id)).await
    }

    async fn model_history(&self, id: String) -> ApiResult<History> {
        let id = ModelId(parse(&id)?);
        self.blocking(move |n| ops::model_history(&n.home.catalog, id))
            .await
    }

    async fn run_history(&self, name: String) -> ApiResult<History> {
        self.blocking(move |n| ops::run_history(&n.home, &name))
            .await
    }

    async fn blobs(&self) -> ApiResult<BlobList> {
        self.blocking(|n| ops::blobs(&n.home.store)).await
    }

    async fn add(&self, request: AddRequest) -> ApiResult<Added> {
        absolute(&request.path)?;
        self.blocking(move |n| ops::add(&n.home, &request.path, true))
            .await
    }

    async fn export(&self, request: ExportRequest) -> ApiResult<Exported> {
        let hash = parse(&request.hash)?;
        absolute(&request.output)?;
        self.blocking(move |n| ops::export(&n.home, hash, &request.output))
            .await
    }

    async fn publish(&self, request: PublishRequest) -> ApiResult<Published> {
        absolute(&request.path)?;
        let published = self
            .blocking(move |n| ops::publish(&n.home, &request.path, true))
            .await?;
        // Published while the node runs: live at once.
        announce_local(&self.0).await;
        Ok(published)
    }

    async fn snapshot(&self, request: SnapshotRequest) -> ApiResult<SnapshotAdded> {
        for (_, path) in &request.weights {
            absolute(path)?;
        }
        self.blocking(move |n| ops::snapshot(&n.home, &request, true))
            .await
    }

    async fn set_pin(&self, hash: String, pin: bool) -> ApiResult<PinChange> {
        let hash = parse(&hash)?;
        self.blocking(move |n| ops::set_pin(&n.home.store, hash, pin))
            .await
    }

    async fn gc(&self) -> ApiResult<GcReport> {
        self.blocking(|n| ops::gc(&n.home)).await
    }

    async fn verify(&self, request: VerifyRequest) -> ApiResult<VerifyReport> {
        let only = request.hash.as_deref().map(parse).transpose()?;
        self.blocking(move |n| ops::verify(&n.home.store, only))
            .await
    }

    async fn start_fetch(&self, id: String) -> ApiResult<FetchProgress> {
        let hash = parse(&id)?;
        let node = &self.0;
        let progress = {
            let mut fetches = node.fetches.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = fetches.get(&hash) {
                let p = existing.lock().unwrap_or_else(|p| p.into_inner());
                if p.state == FetchState::Running {
                    return Ok(Self::progress(hash, &p));
                }
            }
            let progress = Arc::new(Mutex::new(Progress::default()));
            fetches.insert(hash, progress.clone());
            progress
        };
        let worker = node.clone();
        let shared = progress.clone();
        tokio::spawn(async move {
            let result = fetcher::fetch(&worker, hash, shared.clone()).await;
            let mut p = shared.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(()) => p.state = FetchState::Complete,
                Err(e) => {
                    tracing::warn!(%hash, "fetch failed: {e:#}");
                    p.state = FetchState::Failed;
                    p.error = Some(format!("{e:#}"));
                }
            }
        });
        let p = progress.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Self::progress(hash, &p))
    }

    async fn fetch_progress(&self, id: String) -> ApiResult<FetchProgress> {
        let hash = parse(&id)?;
        let progress = self
            .0
            .fetches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .cloned();
        match progress {
            Some(p) => Ok(Self::progress(
                hash,
                &p.lock().unwrap_or_else(|p| p.into_inner()),
            )),
            None => Err(ApiError::not_found(format!(
                "no fetch of {hash} was started"
            ))),
        }
    }

    async fn offers(&self) -> ApiResult<OfferList> {
        let node = &self.0;
        let now = crate::compute::now_ms();
        let mut offers = node.compute.offers();
        offers.prune(now);
        Ok(OfferList {
            serving: node.compute.config.serve,
            offers: crate::compute::offer_views(&offers, now),
        })
    }

    async fn oip_ready(&self) -> ApiResult<Value> {
        Ok(json!({ "ready": true, "backend": self.0.inference.backend() }))
    }

    async fn model_metadata(&self, id: String) -> ApiResult<Value> {
        let id = parse_model(&id).map_err(from_call)?;
        let loaded = load_local(&self.0, id).await.map_err(from_call)?;
        Ok(loaded.metadata())
    }

    async fn model_ready(&self, id: String) -> ApiResult<Value> {
        let id = parse_model(&id).map_err(from_call)?;
        let loaded = load_local(&self.0, id).await.map_err(from_call)?;
        Ok(json!({ "name": loaded.id.to_string(), "ready": true }))
    }

    /// Runs here when the model is here (and no provider is forced), else on a peer that
    /// offers compute, else fetches it and runs here.
    async fn infer(
        &self,
        id: String,
        query: api::dto::InferQuery,
        body: Bytes,
    ) -> ApiResult<Value> {
        let node = &self.0;
        let id = parse_model(&id).map_err(from_call)?;
        let request: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the request is not JSON: {e}")))?;
        let on = query
            .on
            .as_deref()
            .map(str::parse::<PeerId>)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("on: not a peer id: {e}")))?;
        let options = CallOptions {
            on,
            verify: query.verify,
        };
        let local = node.home.catalog.is_local(id);
        let remote = options.on.is_some()
            || options.verify
            || (!local && crate::remote::has_providers(node, id));
        let answer = if remote {
            crate::remote::call(node, id, &request, &options).await
        } else {
            self.run_here(id, request).await
        };
        let place = if remote { Place::Remote } else { Place::Local };
        match &answer {
            Ok(v) => {
                if !remote {
                    node.metrics
                        .fuel
                        .inc_by(v["parameters"]["fuel"].as_u64().unwrap_or(0));
                }
                node.metrics.call(place, Outcome::Ok);
            }
            Err(e) => node.metrics.call(place, Outcome::of_status(e.status)),
        }
        answer.map_err(from_call)
    }

    async fn metrics(&self) -> ApiResult<String> {
        let node = &self.0;
        let m = &node.metrics;
        match node.net.peers().await {
            Ok(peers) => {
                m.peers.set(peers.len() as i64);
            }
            Err(e) => tracing::warn!("metrics: asking the network for peers: {e}"),
        }
        let (running, queued) = node.inference.occupancy();
        m.sandbox_running.set(running as i64);
        m.sandbox_queued.set(queued as i64);
        let counts = node.home.catalog.counts();
        m.models.set(counts.0 as i64);
        m.models_local.set(counts.1 as i64);
        m.encode()
            .map_err(|e| ApiError::internal(format!("encoding the metrics: {e}")))
    }
}

impl Service {
    /// Runs a call on this node's sandbox, fetching the model first if it is not here.
    async fn run_here(&self, id: ModelId, request: Value) -> Result<Value, CallError> {
        let node = &self.0;
        let model = ensure_loaded(node, id).await?;
        let worker = node.clone();
        tokio::task::spawn_blocking(move || worker.inference.infer(&model, &request))
            .await
            .map_err(|e| CallError::new(500, format!("the call failed: {e}")))?
    }
}

/// Paths in requests are read or written by the node, whose working directory is not the
/// client's: they must be absolute.
fn absolute(path: &std::path::Path) -> ApiResult<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{} is not an absolute path",
            path.display()
        )))
    }
}
