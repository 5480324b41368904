//! The node's side of the HTTP API: [`api::NodeApi`] over the running node. Store operations
//! run on blocking threads (`ops.rs`), fetches and calls on the node's services; errors become
//! HTTP statuses in one place ([`to_api`]).

use std::sync::Arc;

use api::dto::{
    AddRequest, Added, BlobList, CreditsView, ExportRequest, Exported, FetchProgress, FollowList,
    GcReport, History, ModelList, ModelView, NodeInfo, OfferList, PinChange, PublishRequest,
    Published, ReceiptList, ReindexReport, RevokeRequest, RevokeView, SearchQuery, SearchResults,
    SnapshotAdded, SnapshotRequest, VerifyReport, VerifyRequest, VoteRequest, VotesView,
};
use api::oip::{InferRequest, InferResponse, ModelMetadata, ModelReady, ServerReady};
use api::{ApiError, ApiResult};
use axum::http::StatusCode;
use net::libp2p::PeerId;
use protocol::{BlobHash, ModelId};

use crate::fetcher::Fetcher;
use crate::home::Home;
use crate::inference::CallError;
use crate::metrics::{Metrics, Outcome, Place};
use crate::models::{Models, Runtime};
use crate::ops::{self, BadRequest, NotFound};
use crate::remote::{CallOptions, Remote};

/// The API's handles on the node's services.
pub struct Service {
    /// Identity, store and catalogue, for the store operations.
    pub home: Arc<Home>,
    /// The network.
    pub net: net::Client,
    /// Fetches from peers.
    pub fetcher: Arc<Fetcher>,
    /// Learns and announces models.
    pub models: Arc<Models>,
    /// Runs models here.
    pub runtime: Arc<Runtime>,
    /// Compute sharing.
    pub remote: Arc<Remote>,
    /// Votes and scores.
    pub votes: Arc<crate::votes::Votes>,
    /// The catalogue's search index.
    pub search: Arc<crate::search::Search>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Language models.
    pub language: Arc<crate::language::LanguageModels>,
}

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

fn parse_model(id: &str) -> ApiResult<ModelId> {
    id.parse::<BlobHash>()
        .map(ModelId)
        .map_err(|e| ApiError::bad_request(format!("{id:?} is not a model id: {e}")))
}

impl Service {
    /// Runs a store operation on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Home) -> anyhow::Result<T> + Send + 'static,
    ) -> ApiResult<T> {
        let home = self.home.clone();
        tokio::task::spawn_blocking(move || f(&home))
            .await
            .map_err(|e| ApiError::internal(format!("the operation's thread failed: {e}")))?
            .map_err(to_api)
    }
}

impl api::NodeApi for Service {
    /// Runs here when the model's files are here (and no provider is forced), else on a peer
    /// that offers generation, else fetches the model and runs here.
    async fn generate(
        &self,
        request: api::openai::Generation,
    ) -> ApiResult<tokio::sync::mpsc::Receiver<api::openai::GenerationEvent>> {
        let id = self.language.resolve(&request.model)?;
        let placement = &request.placement;
        let on = placement
            .on
            .as_deref()
            .map(str::parse::<PeerId>)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("moxnet.on: not a peer id: {e}")))?;
        let options = CallOptions {
            on,
            verify: placement.verify,
            gpu: placement.gpu,
        };
        let remote = options.on.is_some()
            || options.verify
            || options.gpu
            || (!self.language.is_here(id) && self.remote.has_generation_providers(id));
        if !remote {
            return self.language.generate(request).await;
        }
        let mut sampling = request.sampling.clone();
        sampling.seed = request.seed.unwrap_or_else(crate::language::rand_seed);
        let input = crate::generation::input_of(&request.prompt, &sampling);
        let started = self.remote.generate(id, input, &options).await;
        if let Err(e) = &started {
            self.metrics
                .call(Place::Remote, Outcome::of_status(e.status));
        }
        started.map_err(from_call)
    }

    async fn language_models(&self) -> ApiResult<serde_json::Value> {
        let language = self.language.clone();
        let list = tokio::task::spawn_blocking(move || language.list())
            .await
            .map_err(|e| ApiError::internal(format!("listing: {e}")))?;
        let owner = self.home.key.node_id().to_string();
        Ok(serde_json::json!({
            "object": "list",
            "data": list.iter().map(|(id, m)| {
                let lm = m.runtime.language_model.as_ref();
                serde_json::json!({
                    "id": m.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": owner,
                    "moxnet": {
                        "model_id": id.to_string(),
                        "version": m.version,
                        "architecture": lm.map(|l| l.architecture.clone()),
                        "context_length": lm.map(|l| l.context_length),
                        "quantisation": lm.map(|l| l.quantisation.clone()),
                        "parameters": lm.map(|l| l.parameters),
                    },
                })
            }).collect::<Vec<_>>(),
        }))
    }

    async fn info(&self) -> ApiResult<NodeInfo> {
        let asking = |e| ApiError::internal(format!("asking the network: {e}"));
        let peers = self.net.peers().await.map_err(asking)?;
        let listen = self.net.dial_addrs().await.map_err(asking)?;
        let engine = self.runtime.engine();
        let c = &self.remote.compute.config;
        let limits = [
            (
                "guests' graphs run on",
                engine
                    .backend()
                    .unwrap_or("wasm (tract inside the sandbox)")
                    .to_string(),
            ),
            ("calls at once", engine.max_concurrent().to_string()),
            ("language models run on", c.generation_engine.to_string()),
            (
                "serves peers",
                if c.serve { "yes" } else { "no" }.to_string(),
            ),
            ("price per million fuel", c.price_per_mfuel.to_string()),
            ("price per million tokens", c.price_per_mtoken.to_string()),
            (
                "calls one peer may have here at once",
                c.per_peer_concurrent.to_string(),
            ),
            (
                "files fetched for one peer's call",
                api::ui::size(c.max_fetch_bytes),
            ),
            (
                "models fetched for peers kept",
                api::ui::size(c.cache_bytes),
            ),
            (
                "highest price paid per million fuel",
                c.max_price_per_mfuel.to_string(),
            ),
            (
                "spent on one peer beyond its calls here",
                self.remote.spend_limit().to_string(),
            ),
        ];
        Ok(NodeInfo {
            node_id: self.home.key.node_id().to_string(),
            peer_id: self.net.peer_id().to_string(),
            listen: listen.iter().map(ToString::to_string).collect(),
            peers: peers.iter().map(PeerId::to_string).collect(),
            limits: limits
                .into_iter()
                .map(|(what, value)| (what.to_string(), value))
                .collect(),
        })
    }

    async fn models(&self) -> ApiResult<ModelList> {
        Ok(ops::models(&self.home.catalog))
    }

    async fn show(&self, id: String) -> ApiResult<ModelView> {
        let id = ModelId(parse(&id)?);
        let mut view = self.blocking(move |h| ops::show(h, id)).await?;
        let votes = self.votes.clone();
        view.votes = Some(
            tokio::task::spawn_blocking(move || votes.view(id))
                .await
                .map_err(|e| ApiError::internal(format!("scoring: {e}")))?,
        );
        Ok(view)
    }

    async fn vote(&self, id: String, request: VoteRequest) -> ApiResult<VotesView> {
        let id = ModelId(parse(&id)?);
        let choice = request
            .choice
            .parse()
            .map_err(|e: protocol::DecodeError| ApiError::bad_request(e.to_string()))?;
        if self.home.catalog.get(id).is_none() {
            return Err(ApiError::not_found(format!(
                "no model {id} in this node's catalogue"
            )));
        }
        self.votes.cast(id, choice).await
    }

    async fn follows(&self) -> ApiResult<FollowList> {
        let followed = self
            .votes
            .followed()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(FollowList {
            follows: followed.iter().map(|n| n.to_string()).collect(),
        })
    }

    async fn follow(&self, node: String, follow: bool) -> ApiResult<FollowList> {
        let node = crate::package::parse_node_id(&node)
            .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        if node == self.home.key.node_id() {
            return Err(ApiError::bad_request("a node cannot follow itself"));
        }
        let followed = self
            .votes
            .follow(node, follow)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(FollowList {
            follows: followed.iter().map(|n| n.to_string()).collect(),
        })
    }

    async fn revoke(&self, request: RevokeRequest) -> ApiResult<RevokeView> {
        let (id, dropped) = self.votes.revoke(request.reason).await?;
        Ok(RevokeView {
            node_id: self.home.key.node_id().to_string(),
            revocation_id: id.to_string(),
            dropped_votes: dropped,
        })
    }

    async fn search(&self, query: SearchQuery) -> ApiResult<SearchResults> {
        let search = self.search.clone();
        tokio::task::spawn_blocking(move || search.search(&query))
            .await
            .map_err(|e| ApiError::internal(format!("searching: {e}")))?
    }

    async fn votes(&self, id: String) -> ApiResult<VotesView> {
        let id = ModelId(parse(&id)?);
        let votes = self.votes.clone();
        tokio::task::spawn_blocking(move || votes.view(id))
            .await
            .map_err(|e| ApiError::internal(format!("scoring: {e}")))
    }

    async fn model_history(&self, id: String) -> ApiResult<History> {
        let id = ModelId(parse(&id)?);
        self.blocking(move |h| ops::model_history(&h.catalog, id))
            .await
    }

    async fn run_history(&self, name: String) -> ApiResult<History> {
        self.blocking(move |h| ops::run_history(h, &name)).await
    }

    async fn blobs(&self) -> ApiResult<BlobList> {
        self.blocking(|h| ops::blobs(&h.store)).await
    }

    async fn add(&self, request: AddRequest) -> ApiResult<Added> {
        absolute(&request.path)?;
        self.blocking(move |h| ops::add(h, &request.path, true))
            .await
    }

    async fn export(&self, request: ExportRequest) -> ApiResult<Exported> {
        let hash = parse(&request.hash)?;
        absolute(&request.output)?;
        self.blocking(move |h| ops::export(h, hash, &request.output))
            .await
    }

    async fn publish(&self, request: PublishRequest) -> ApiResult<Published> {
        absolute(&request.path)?;
        let published = self
            .blocking(move |h| ops::publish(h, &request.path, true))
            .await?;
        // Published while the node runs: live at once (or as soon as a peer can hear it).
        if self.models.announce_local().await > 0 {
            tokio::spawn(self.models.clone().keep_announcing());
        }
        Ok(published)
    }

    async fn snapshot(&self, request: SnapshotRequest) -> ApiResult<SnapshotAdded> {
        for (_, path) in &request.weights {
            absolute(path)?;
        }
        self.blocking(move |h| ops::snapshot(h, &request, true))
            .await
    }

    async fn set_pin(&self, hash: String, pin: bool) -> ApiResult<PinChange> {
        let hash = parse(&hash)?;
        self.blocking(move |h| ops::set_pin(&h.store, hash, pin))
            .await
    }

    async fn reindex(&self) -> ApiResult<ReindexReport> {
        self.blocking(ops::reindex).await
    }

    async fn gc(&self) -> ApiResult<GcReport> {
        self.blocking(ops::gc).await
    }

    async fn verify(&self, request: VerifyRequest) -> ApiResult<VerifyReport> {
        let only = request.hash.as_deref().map(parse).transpose()?;
        self.blocking(move |h| ops::verify(&h.store, only)).await
    }

    async fn start_fetch(&self, id: String) -> ApiResult<FetchProgress> {
        Ok(self.fetcher.start(parse(&id)?))
    }

    async fn fetches(&self) -> ApiResult<api::dto::FetchList> {
        Ok(api::dto::FetchList {
            fetches: self.fetcher.all(),
        })
    }

    async fn fetch_progress(&self, id: String) -> ApiResult<FetchProgress> {
        let hash = parse(&id)?;
        self.fetcher
            .progress(hash)
            .ok_or_else(|| ApiError::not_found(format!("no fetch of {hash} was started")))
    }

    async fn offers(&self) -> ApiResult<OfferList> {
        Ok(self.remote.offers())
    }

    async fn credits(&self) -> ApiResult<CreditsView> {
        Ok(crate::accounts::credits_view(
            self.remote.credits(),
            self.home.key.node_id(),
            self.remote.spend_limit(),
            crate::compute::now_ms(),
        ))
    }

    async fn audit_royalties(&self, peer: String) -> ApiResult<api::dto::RoyaltyAudit> {
        let peer: PeerId = peer
            .parse()
            .map_err(|e| ApiError::bad_request(format!("{peer:?} is not a peer id: {e}")))?;
        self.remote.audit_royalties(peer).await.map_err(from_call)
    }

    async fn credit_receipts(&self, peer: String) -> ApiResult<ReceiptList> {
        let node = crate::package::parse_node_id(&peer)
            .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        let remote = self.remote.clone();
        tokio::task::spawn_blocking(move || crate::accounts::receipt_list(remote.credits(), node))
            .await
            .map_err(|e| ApiError::internal(format!("listing receipts: {e}")))?
            .map_err(ApiError::internal)
    }

    async fn oip_ready(&self) -> ApiResult<ServerReady> {
        Ok(ServerReady {
            ready: true,
            backend: self.runtime.engine().backend().map(str::to_string),
            fallback: self.runtime.engine().fallback().map(str::to_string),
        })
    }

    async fn model_metadata(&self, id: String) -> ApiResult<ModelMetadata> {
        let id = parse_model(&id)?;
        if let Some(m) = self.language_model(id) {
            return Ok(language_metadata(id, m.body()));
        }
        let loaded = self.runtime.load_local(id).await.map_err(from_call)?;
        Ok(loaded.metadata())
    }

    async fn model_ready(&self, id: String) -> ApiResult<ModelReady> {
        let id = parse_model(&id)?;
        if self.language_model(id).is_some() {
            // Callable: its files are here, or a peer offers generation.
            return Ok(ModelReady {
                name: id.to_string(),
                ready: self.language.is_here(id) || self.remote.has_generation_providers(id),
            });
        }
        let loaded = self.runtime.load_local(id).await.map_err(from_call)?;
        Ok(ModelReady {
            name: loaded.id.to_string(),
            ready: true,
        })
    }

    /// Runs here when the model is here (and no provider is forced), else on a peer that
    /// offers compute, else fetches it and runs here.
    async fn infer(
        &self,
        id: String,
        query: api::dto::InferQuery,
        request: InferRequest,
    ) -> ApiResult<InferResponse> {
        let id = parse_model(&id)?;
        if let Some(m) = self.language_model(id) {
            return self.infer_language_model(id, &m, query, request).await;
        }
        let on = query
            .on
            .as_deref()
            .map(str::parse::<PeerId>)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("on: not a peer id: {e}")))?;
        let options = CallOptions {
            on,
            verify: query.verify,
            gpu: query.gpu,
        };
        let local = self.home.catalog.is_local(id);
        // A call that needs a GPU runs here only if this node's engine is a GPU one.
        let gpu_here = self
            .runtime
            .engine()
            .backend()
            .is_some_and(|b| protocol::compute::GPU_BACKENDS.contains(&b));
        let remote = options.on.is_some()
            || options.verify
            || (options.gpu && !gpu_here)
            || (!local && self.remote.has_providers(id));
        let answer = if remote {
            self.remote.call(id, &request, &options).await
        } else {
            self.runtime.infer(id, request).await
        };
        let place = if remote { Place::Remote } else { Place::Local };
        match &answer {
            Ok(v) => {
                if !remote {
                    let fuel = v.parameters.get("fuel").and_then(|f| f.as_u64());
                    self.metrics.fuel.inc_by(fuel.unwrap_or(0));
                }
                self.metrics.call(place, Outcome::Ok);
            }
            Err(e) => self.metrics.call(place, Outcome::of_status(e.status)),
        }
        answer.map_err(from_call)
    }

    async fn metrics(&self) -> ApiResult<String> {
        let m = &self.metrics;
        match self.net.peers().await {
            Ok(peers) => m.peers.set(peers.len() as i64),
            Err(e) => {
                tracing::warn!("metrics: asking the network for peers: {e}");
                0
            }
        };
        let (running, queued) = self.runtime.engine().occupancy();
        m.sandbox_running.set(running as i64);
        m.sandbox_queued.set(queued as i64);
        let counts = self.home.catalog.counts();
        m.models.set(counts.0 as i64);
        m.models_local.set(counts.1 as i64);
        m.models_loaded
            .set(self.runtime.engine().loaded_count() as i64);
        m.encode()
            .map_err(|e| ApiError::internal(format!("encoding the metrics: {e}")))
    }
}

/// The most bytes of text an OIP call of a language model answers with (the whole text is
/// one BYTES element).
const MAX_OIP_TEXT: usize = 16 << 20;

/// OIP metadata of a language model, from its manifest: its interface (`prompt` → `text` for a
/// bare `.gguf`), platform `moxnet_gguf`, and what its GGUF header said.
fn language_metadata(id: ModelId, m: &protocol::Manifest) -> ModelMetadata {
    let spec = |s: &protocol::TensorSpec| api::oip::TensorMetadata {
        name: s.name.clone(),
        datatype: s.dtype.name().to_string(),
        shape: s
            .shape
            .iter()
            .map(|d| match d {
                protocol::Dim::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
                protocol::Dim::Symbolic(_) => -1,
            })
            .collect(),
    };
    let mut parameters = serde_json::Map::new();
    parameters.insert("package".into(), m.name.clone().into());
    if let Some(lm) = &m.runtime.language_model {
        parameters.insert(
            "language_model".into(),
            serde_json::json!({
                "architecture": lm.architecture,
                "context_length": lm.context_length,
                "quantisation": lm.quantisation,
                "parameters": lm.parameters,
            }),
        );
    }
    ModelMetadata {
        name: id.to_string(),
        versions: vec![m.version.clone()],
        platform: format!("moxnet_{}", m.runtime.kind),
        inputs: m.interface.inputs.iter().map(spec).collect(),
        outputs: m.interface.outputs.iter().map(spec).collect(),
        parameters,
    }
}

impl Service {
    /// The manifest of `id` when it is a language model this node knows of.
    fn language_model(&self, id: ModelId) -> Option<Arc<protocol::Signed<protocol::Manifest>>> {
        self.home
            .catalog
            .get(id)
            .filter(|m| m.body().runtime.kind == crate::language::KIND)
    }

    /// `POST /v2/models/{id}/infer` for a language model: one BYTES input (the prompt), the
    /// sampling parameters (`max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`) in
    /// the request's `parameters`, run as a completion (here or on a peer, as `/v1/completions`
    /// would), answered whole: one BYTES output, the text, with the finish reason, the token
    /// counts and where it ran in `parameters`.
    async fn infer_language_model(
        &self,
        id: ModelId,
        manifest: &protocol::Signed<protocol::Manifest>,
        query: api::dto::InferQuery,
        request: InferRequest,
    ) -> ApiResult<InferResponse> {
        let m = manifest.body();
        let prompt = match request.inputs.as_slice() {
            [one] if one.data.len() == 1 => one.data[0].as_str().map(str::to_string),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "model {id} is a language model: it takes one input, a BYTES tensor of shape [1] holding the prompt text (sampling parameters go in the request's parameters)"
            ))
        })?;
        let mut body = serde_json::json!({
            "model": id.to_string(),
            "prompt": prompt,
            "moxnet": query,
        });
        for key in [
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "stop",
        ] {
            if let Some(v) = request.parameters.get(key) {
                body[key] = v.clone();
            }
        }
        let body = serde_json::to_vec(&body)
            .map_err(|e| ApiError::internal(format!("encoding the completion: {e}")))?;
        let generation = api::openai::parse_request(&body, false)?;
        let mut events = api::NodeApi::generate(self, generation).await?;
        let mut text = String::new();
        let done = loop {
            match events.recv().await {
                Some(api::openai::GenerationEvent::Text(t)) => {
                    if text.len() + t.len() > MAX_OIP_TEXT {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "the text passed {MAX_OIP_TEXT} bytes: stream it from /v1/completions"
                            ),
                        ));
                    }
                    text.push_str(&t);
                }
                Some(api::openai::GenerationEvent::Done(done)) => break done,
                Some(api::openai::GenerationEvent::Failed(e)) => return Err(e),
                None => return Err(ApiError::internal("the generation ended without an answer")),
            }
        };
        let name = m
            .interface
            .outputs
            .first()
            .map_or_else(|| "text".to_string(), |o| o.name.clone());
        let mut data = Vec::with_capacity(4 + text.len());
        data.extend_from_slice(&(text.len() as u32).to_le_bytes());
        data.extend_from_slice(text.as_bytes());
        let tensor = api::oip::RawTensor {
            name,
            datatype: protocol::DType::Bytes,
            shape: vec![1],
            data,
        };
        let mut parameters = serde_json::Map::new();
        parameters.insert("finish_reason".into(), done.finish.name().into());
        parameters.insert("usage".into(), done.usage());
        if let serde_json::Value::Object(moxnet) = done.moxnet() {
            parameters.extend(moxnet);
        }
        Ok(InferResponse::new(
            id.to_string(),
            m.version.clone(),
            &request,
            &[tensor],
            parameters,
        ))
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
