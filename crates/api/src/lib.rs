//! moxnet's HTTP API: the routers the node serves on localhost, with typed bodies.
//!
//! ```
//! use std::sync::Arc;
//! # struct MyNode;
//! # impl api::NodeApi for MyNode {}
//! // The node implements `NodeApi` (every method has a default that answers 501); the router
//! // adds the access guard and the body limits.
//! let app: axum::Router = api::router(Arc::new(MyNode), api::Access::new(5080, "token"));
//! # drop(app);
//! ```
//!
//! # Concepts
//! - **`/api/v1`** is the node's own API, the contract the CLI is written against: one route
//!   per operation, each with typed request and answer bodies ([`dto`]); documented in
//!   `docs/http-api.md`. Only the node's owner may use it: see [`guard`](Access) for the token,
//!   `Host` and `Origin` checks.
//! - **`/v2`** is the Open Inference Protocol v2 (Triton/KServe clients work unchanged). The
//!   router decodes and checks its JSON bodies into typed requests ([`oip`]), which turn into
//!   raw tensors without this crate knowing the sandbox.
//! - The router talks to the node only through the [`NodeApi`] trait, so this crate never
//!   depends on the network, the sandbox or the store, and its tests run without a swarm.
//! - Errors are `{"error": "<what happened and what to do>"}` with an HTTP status, plus
//!   `details` when there is evidence ([`ApiError`]).
//!
//! **Limits:** bodies of `/api/v1` routes are at most [`MAX_V1_BODY`] bytes; an inference
//! request at most [`MAX_INFER_BODY`] bytes. Larger bodies get 413 before any handler runs.

pub mod dto;
mod guard;
pub mod oip;
pub mod openai;
pub mod ui;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use guard::Access;

use dto::*;

/// The largest body of an `/api/v1` request (paths and small parameters only).
pub const MAX_V1_BODY: usize = 64 << 10;
/// The largest OIP inference request (JSON tensors).
pub const MAX_INFER_BODY: usize = 64 << 20;
/// The largest completion request: a prompt of [`llm::params::MAX_PROMPT_BYTES`] with room
/// for JSON escapes.
pub const MAX_GENERATE_BODY: usize = 8 << 20;

/// An error answer: an HTTP status, a message that says what to do, and evidence if any.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
    /// Evidence, when there is some (e.g. two providers' signed results that disagree).
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: what the request names is not here.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 500: the node failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The JSON body: `{"error": …}`, plus `details` when there are some.
    pub fn to_json(&self) -> Value {
        match &self.details {
            Some(d) => json!({ "error": self.message, "details": d }),
            None => json!({ "error": self.message }),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.to_json())).into_response()
    }
}

/// What an API call answers: a typed body, or an error.
pub type ApiResult<T> = Result<T, ApiError>;

fn unsupported<T: Send>() -> impl Future<Output = ApiResult<T>> + Send {
    std::future::ready(Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "this node does not offer this operation",
    )))
}

/// What the router needs from the node. Each method is one route (see `docs/http-api.md`);
/// hashes and ids arrive as text and the node parses them (answering 400 when they are not).
/// Every method has a default that answers 501, so a partial node (or a test) implements only
/// what it offers.
pub trait NodeApi: Send + Sync + 'static {
    /// `GET /api/v1/node`.
    fn info(&self) -> impl Future<Output = ApiResult<NodeInfo>> + Send {
        unsupported()
    }
    /// `GET /api/v1/models`.
    fn models(&self) -> impl Future<Output = ApiResult<ModelList>> + Send {
        unsupported()
    }
    /// `GET /api/v1/search`.
    fn search(&self, _query: SearchQuery) -> impl Future<Output = ApiResult<SearchResults>> + Send {
        unsupported()
    }
    /// `GET /api/v1/models/{id}`.
    fn show(&self, _id: String) -> impl Future<Output = ApiResult<ModelView>> + Send {
        unsupported()
    }
    /// `GET /api/v1/models/{id}/history`.
    fn model_history(&self, _id: String) -> impl Future<Output = ApiResult<History>> + Send {
        unsupported()
    }
    /// `GET /api/v1/runs/{name}/history`.
    fn run_history(&self, _name: String) -> impl Future<Output = ApiResult<History>> + Send {
        unsupported()
    }
    /// `GET /api/v1/blobs`.
    fn blobs(&self) -> impl Future<Output = ApiResult<BlobList>> + Send {
        unsupported()
    }
    /// `POST /api/v1/blobs`.
    fn add(&self, _request: AddRequest) -> impl Future<Output = ApiResult<Added>> + Send {
        unsupported()
    }
    /// `POST /api/v1/export`.
    fn export(&self, _request: ExportRequest) -> impl Future<Output = ApiResult<Exported>> + Send {
        unsupported()
    }
    /// `POST /api/v1/publish`.
    fn publish(
        &self,
        _request: PublishRequest,
    ) -> impl Future<Output = ApiResult<Published>> + Send {
        unsupported()
    }
    /// `POST /api/v1/snapshots`.
    fn snapshot(
        &self,
        _request: SnapshotRequest,
    ) -> impl Future<Output = ApiResult<SnapshotAdded>> + Send {
        unsupported()
    }
    /// `PUT /api/v1/pins/{hash}` (`pin` true) and `DELETE /api/v1/pins/{hash}` (false).
    fn set_pin(
        &self,
        _hash: String,
        _pin: bool,
    ) -> impl Future<Output = ApiResult<PinChange>> + Send {
        unsupported()
    }
    /// `POST /api/v1/gc`.
    fn gc(&self) -> impl Future<Output = ApiResult<GcReport>> + Send {
        unsupported()
    }
    /// `POST /api/v1/reindex`.
    fn reindex(&self) -> impl Future<Output = ApiResult<ReindexReport>> + Send {
        unsupported()
    }
    /// `POST /api/v1/verify`.
    fn verify(
        &self,
        _request: VerifyRequest,
    ) -> impl Future<Output = ApiResult<VerifyReport>> + Send {
        unsupported()
    }
    /// `POST /api/v1/fetch/{id}`: starts a fetch (or joins the one running).
    fn start_fetch(&self, _id: String) -> impl Future<Output = ApiResult<FetchProgress>> + Send {
        unsupported()
    }
    /// `GET /api/v1/fetch/{id}`.
    /// `GET /api/v1/fetch`.
    fn fetches(&self) -> impl Future<Output = ApiResult<FetchList>> + Send {
        unsupported()
    }
    /// `GET /api/v1/fetch/{id}`.
    fn fetch_progress(&self, _id: String) -> impl Future<Output = ApiResult<FetchProgress>> + Send {
        unsupported()
    }
    /// `GET /api/v1/offers`.
    fn offers(&self) -> impl Future<Output = ApiResult<OfferList>> + Send {
        unsupported()
    }
    /// `GET /api/v1/credits`.
    fn credits(&self) -> impl Future<Output = ApiResult<CreditsView>> + Send {
        unsupported()
    }
    /// `GET /api/v1/credits/{peer}/receipts`.
    fn credit_receipts(
        &self,
        _peer: String,
    ) -> impl Future<Output = ApiResult<ReceiptList>> + Send {
        unsupported()
    }
    /// `GET /api/v1/credits/{peer}/royalties`.
    fn audit_royalties(
        &self,
        _peer: String,
    ) -> impl Future<Output = ApiResult<RoyaltyAudit>> + Send {
        unsupported()
    }
    /// `POST /api/v1/revoke`: revokes this node's own key for votes (signed, kept, gossiped).
    fn revoke(
        &self,
        _request: RevokeRequest,
    ) -> impl Future<Output = ApiResult<RevokeView>> + Send {
        unsupported()
    }
    /// `POST /api/v1/models/{id}/vote`: this node votes on a model (signed, kept, gossiped).
    fn vote(
        &self,
        _id: String,
        _request: VoteRequest,
    ) -> impl Future<Output = ApiResult<VotesView>> + Send {
        unsupported()
    }
    /// `GET /api/v1/models/{id}/votes`: the model's score here and its breakdown.
    fn votes(&self, _id: String) -> impl Future<Output = ApiResult<VotesView>> + Send {
        unsupported()
    }
    /// `GET /api/v1/follows`.
    fn follows(&self) -> impl Future<Output = ApiResult<FollowList>> + Send {
        unsupported()
    }
    /// `PUT /api/v1/follows/{node}` (`follow`) and `DELETE …` (not).
    fn follow(
        &self,
        _node: String,
        _follow: bool,
    ) -> impl Future<Output = ApiResult<FollowList>> + Send {
        unsupported()
    }
    /// `GET /metrics`: the node's metrics in the OpenMetrics text format.
    fn metrics(&self) -> impl Future<Output = ApiResult<String>> + Send {
        unsupported()
    }
    /// `GET /v2/health/ready`: the OIP server-ready body.
    fn oip_ready(&self) -> impl Future<Output = ApiResult<oip::ServerReady>> + Send {
        unsupported()
    }
    /// `GET /v2/models/{id}`: OIP model metadata.
    fn model_metadata(
        &self,
        _id: String,
    ) -> impl Future<Output = ApiResult<oip::ModelMetadata>> + Send {
        unsupported()
    }
    /// `GET /v2/models/{id}/ready`.
    fn model_ready(&self, _id: String) -> impl Future<Output = ApiResult<oip::ModelReady>> + Send {
        unsupported()
    }
    /// `POST /v1/completions` and `POST /v1/chat/completions`: starts a generation. An error
    /// before the first token is the HTTP answer; after it, events arrive on the receiver, and
    /// dropping the receiver (the client went away) cancels the generation.
    fn generate(
        &self,
        _request: openai::Generation,
    ) -> impl Future<Output = ApiResult<tokio::sync::mpsc::Receiver<openai::GenerationEvent>>> + Send
    {
        unsupported()
    }
    /// `GET /v1/models`: the language models this node can run, OpenAI's way.
    fn language_models(&self) -> impl Future<Output = ApiResult<Value>> + Send {
        unsupported()
    }
    /// `POST /v2/models/{id}/infer`: the request, decoded and checked for form.
    fn infer(
        &self,
        _id: String,
        _query: InferQuery,
        _request: oip::InferRequest,
    ) -> impl Future<Output = ApiResult<oip::InferResponse>> + Send {
        unsupported()
    }
}

/// The whole API for `node`: `/api/v1`, `/v2`, each route behind `access` and its body limit.
pub fn router<N: NodeApi>(node: Arc<N>, access: Access) -> Router {
    let v1 =
        Router::new()
            .route(
                "/api/v1/node",
                get(|s: State<Arc<N>>| async move { ok(s.info().await) }),
            )
            .route(
                "/api/v1/models",
                get(|s: State<Arc<N>>| async move { ok(s.models().await) }),
            )
            .route(
                "/api/v1/models/{id}",
                get(|s: State<Arc<N>>, Path(id): Path<String>| async move { ok(s.show(id).await) }),
            )
            .route(
                "/api/v1/search",
                get(
                    |s: State<Arc<N>>, query: Result<Query<SearchQuery>, QueryRejection>| async move {
                        match query {
                            Ok(Query(q)) => ok(s.search(q).await),
                            Err(e) => ApiError::bad_request(format!("query: {e}")).into_response(),
                        }
                    },
                ),
            )
            .route(
                "/api/v1/models/{id}/history",
                get(|s: State<Arc<N>>, Path(id): Path<String>| async move {
                    ok(s.model_history(id).await)
                }),
            )
            .route(
                "/api/v1/runs/{name}/history",
                get(|s: State<Arc<N>>, Path(name): Path<String>| async move {
                    ok(s.run_history(name).await)
                }),
            )
            .route(
                "/api/v1/blobs",
                get(|s: State<Arc<N>>| async move { ok(s.blobs().await) }).post(
                    |s: State<Arc<N>>, Body(body): Body| async move {
                        match parse(&body) {
                            Ok(r) => ok(s.add(r).await),
                            Err(e) => e.into_response(),
                        }
                    },
                ),
            )
            .route(
                "/api/v1/export",
                post(|s: State<Arc<N>>, Body(body): Body| async move {
                    match parse(&body) {
                        Ok(r) => ok(s.export(r).await),
                        Err(e) => e.into_response(),
                    }
                }),
            )
            .route(
                "/api/v1/publish",
                post(|s: State<Arc<N>>, Body(body): Body| async move {
                    match parse(&body) {
                        Ok(r) => ok(s.publish(r).await),
                        Err(e) => e.into_response(),
                    }
                }),
            )
            .route(
                "/api/v1/snapshots",
                post(|s: State<Arc<N>>, Body(body): Body| async move {
                    match parse(&body) {
                        Ok(r) => ok(s.snapshot(r).await),
                        Err(e) => e.into_response(),
                    }
                }),
            )
            .route(
                "/api/v1/pins/{hash}",
                put(|s: State<Arc<N>>, Path(hash): Path<String>| async move {
                    ok(s.set_pin(hash, true).await)
                })
                .delete(|s: State<Arc<N>>, Path(hash): Path<String>| async move {
                    ok(s.set_pin(hash, false).await)
                }),
            )
            .route(
                "/api/v1/gc",
                post(|s: State<Arc<N>>| async move { ok(s.gc().await) }),
            )
            .route(
                "/api/v1/reindex",
                post(|s: State<Arc<N>>| async move { ok(s.reindex().await) }),
            )
            .route(
                "/api/v1/verify",
                post(|s: State<Arc<N>>, Body(body): Body| async move {
                    let request = if body.is_empty() {
                        Ok(VerifyRequest::default())
                    } else {
                        parse(&body)
                    };
                    match request {
                        Ok(r) => ok(s.verify(r).await),
                        Err(e) => e.into_response(),
                    }
                }),
            )
            .route(
                "/api/v1/fetch",
                get(|s: State<Arc<N>>| async move { ok(s.fetches().await) }),
            )
            .route(
                "/api/v1/fetch/{id}",
                post(|s: State<Arc<N>>, Path(id): Path<String>| async move {
                    match s.start_fetch(id).await {
                        Ok(p) => (StatusCode::ACCEPTED, axum::Json(p)).into_response(),
                        Err(e) => e.into_response(),
                    }
                })
                .get(|s: State<Arc<N>>, Path(id): Path<String>| async move {
                    ok(s.fetch_progress(id).await)
                }),
            )
            .route(
                "/api/v1/models/{id}/vote",
                post(
                    |s: State<Arc<N>>, Path(id): Path<String>, Body(body): Body| async move {
                        match parse(&body) {
                            Ok(r) => ok(s.vote(id, r).await),
                            Err(e) => e.into_response(),
                        }
                    },
                ),
            )
            .route(
                "/api/v1/revoke",
                post(|s: State<Arc<N>>, Body(body): Body| async move {
                    match parse(&body) {
                        Ok(r) => ok(s.revoke(r).await),
                        Err(e) => e.into_response(),
                    }
                }),
            )
            .route(
                "/api/v1/models/{id}/votes",
                get(
                    |s: State<Arc<N>>, Path(id): Path<String>| async move { ok(s.votes(id).await) },
                ),
            )
            .route(
                "/api/v1/follows",
                get(|s: State<Arc<N>>| async move { ok(s.follows().await) }),
            )
            .route(
                "/api/v1/follows/{node}",
                put(|s: State<Arc<N>>, Path(node): Path<String>| async move {
                    ok(s.follow(node, true).await)
                })
                .delete(|s: State<Arc<N>>, Path(node): Path<String>| async move {
                    ok(s.follow(node, false).await)
                }),
            )
            .route(
                "/api/v1/offers",
                get(|s: State<Arc<N>>| async move { ok(s.offers().await) }),
            )
            .route(
                "/api/v1/credits",
                get(|s: State<Arc<N>>| async move { ok(s.credits().await) }),
            )
            .route(
                "/api/v1/credits/{peer}/royalties",
                get(|s: State<Arc<N>>, Path(peer): Path<String>| async move {
                    ok(s.audit_royalties(peer).await)
                }),
            )
            .route(
                "/api/v1/credits/{peer}/receipts",
                get(|s: State<Arc<N>>, Path(peer): Path<String>| async move {
                    ok(s.credit_receipts(peer).await)
                }),
            )
            .layer(DefaultBodyLimit::max(MAX_V1_BODY));
    let v2 =
        Router::new()
            .route(
                "/v2",
                get(|| async {
                    axum::Json(oip::ServerMetadata {
                        name: "moxnet".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        extensions: vec!["binary_tensor_data".into()],
                    })
                }),
            )
            .route(
                "/v2/health/live",
                get(|| async { axum::Json(json!({ "live": true })) }),
            )
            .route(
                "/v2/health/ready",
                get(|s: State<Arc<N>>| async move { ok(s.oip_ready().await) }),
            )
            .route(
                "/v2/models/{id}",
                get(|s: State<Arc<N>>, Path(id): Path<String>| async move {
                    ok(s.model_metadata(id).await)
                }),
            )
            .route(
                "/v2/models/{id}/ready",
                get(|s: State<Arc<N>>, Path(id): Path<String>| async move {
                    ok(s.model_ready(id).await)
                }),
            )
            .route(
                "/v2/models/{id}/infer",
                post(
                    |s: State<Arc<N>>,
                     Path(id): Path<String>,
                     query: Result<Query<InferQuery>, QueryRejection>,
                     headers: axum::http::HeaderMap,
                     Body(body): Body| async move {
                        match query {
                            Ok(Query(q)) => match infer_request(&headers, &body) {
                                Ok(r) => infer_answer(s.infer(id, q, r).await),
                                Err(e) => e.into_response(),
                            },
                            Err(e) => ApiError::bad_request(format!("query: {e}")).into_response(),
                        }
                    },
                ),
            )
            .layer(DefaultBodyLimit::max(MAX_INFER_BODY));
    let openai =
        Router::new()
            .route(
                "/v1/models",
                get(|s: State<Arc<N>>| async move { ok(s.language_models().await) }),
            )
            .route(
                "/v1/completions",
                post(|s: State<Arc<N>>, Body(body): Body| async move {
                    generation(s.0, &body, false).await
                }),
            )
            .route(
                "/v1/chat/completions",
                post(|s: State<Arc<N>>, Body(body): Body| async move {
                    generation(s.0, &body, true).await
                }),
            )
            .layer(DefaultBodyLimit::max(MAX_GENERATE_BODY));
    let metrics = Router::new().route(
        "/metrics",
        get(|s: State<Arc<N>>| async move {
            match s.metrics().await {
                Ok(text) => (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response(),
                Err(e) => e.into_response(),
            }
        }),
    );
    let ui = ui::router(node.clone(), &access);
    v1.merge(v2)
        .merge(openai)
        .merge(metrics)
        .with_state(node)
        .merge(ui)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            guard::guard,
        ))
}

/// A request body, at most the route's limit; a body over it (or unreadable) is answered with
/// an [`ApiError`] in JSON like every other error, not axum's plain-text rejection.
struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> ApiResult<Body> {
        Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(|e| ApiError::new(e.status(), format!("the request body: {}", e.body_text())))
    }
}

/// A typed answer as JSON, or the error.
fn ok<T: serde::Serialize>(answer: ApiResult<T>) -> Response {
    match answer {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Decodes and checks an OIP inference request, answering 400 with what is wrong. With the
/// [`oip::HEADER_LENGTH`] header, that many bytes are the JSON and the rest binary tensor data.
fn infer_request(headers: &axum::http::HeaderMap, body: &Bytes) -> ApiResult<oip::InferRequest> {
    let split = match headers.get(oip::HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{}: expected the JSON part's length, at most the body's {} bytes",
                    oip::HEADER_LENGTH,
                    body.len()
                ))
            })?,
    };
    let (json, binary) = body.split_at(split);
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| ApiError::bad_request(format!("the request is not JSON: {e}")))?;
    oip::InferRequest::from_parts(&value, binary).map_err(ApiError::bad_request)
}

/// An inference answer: JSON, or JSON then binary tensor data with [`oip::HEADER_LENGTH`].
fn infer_answer(answer: ApiResult<oip::InferResponse>) -> Response {
    match answer {
        Ok(response) => match response.to_body() {
            (body, None) => (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            (body, Some(header)) => (
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "application/octet-stream".to_string(),
                    ),
                    (
                        axum::http::HeaderName::from_static("inference-header-content-length"),
                        header.to_string(),
                    ),
                ],
                body,
            )
                .into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// A completion: decoded, started on the node, answered whole or as server-sent events.
async fn generation<N: NodeApi>(node: Arc<N>, body: &Bytes, chat: bool) -> Response {
    let request = match openai::parse_request(body, chat) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut events = match node.generate(request.clone()).await {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("{:016x}", {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(created);
        h.finish()
    });
    let answer = openai::Answer::new(&request, id, created);
    if !request.stream {
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                openai::GenerationEvent::Text(t) => text.push_str(&t),
                openai::GenerationEvent::Done(done) => {
                    return axum::Json(answer.whole(&text, &done)).into_response();
                }
                openai::GenerationEvent::Failed(e) => return e.into_response(),
            }
        }
        return ApiError::internal("the generation ended without an answer").into_response();
    }
    let include_usage = request.include_usage;
    // One SSE event per chunk; the stream ends after `[DONE]` (or an error event).
    #[derive(Clone, Copy, PartialEq)]
    enum Stage {
        First,
        Streaming,
        Done,
        Ended,
    }
    let stream = futures::stream::unfold(
        (events, answer, Stage::First),
        move |(mut events, answer, stage)| async move {
            use axum::response::sse::Event;
            let (event, next) = match stage {
                Stage::Ended => return None,
                Stage::Done => (Event::default().data("[DONE]"), Stage::Ended),
                Stage::First | Stage::Streaming => match events.recv().await {
                    Some(openai::GenerationEvent::Text(t)) => (
                        Event::default().data(answer.chunk(&t, stage == Stage::First).to_string()),
                        Stage::Streaming,
                    ),
                    Some(openai::GenerationEvent::Done(done)) => (
                        Event::default().data(answer.last_chunk(&done, include_usage).to_string()),
                        Stage::Done,
                    ),
                    Some(openai::GenerationEvent::Failed(e)) => (
                        Event::default().data(json!({ "error": e.to_json() }).to_string()),
                        Stage::Ended,
                    ),
                    None => (
                        Event::default().data(
                            json!({ "error": { "error": "the generation ended without an answer" } })
                                .to_string(),
                        ),
                        Stage::Ended,
                    ),
                },
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (events, answer, next),
            ))
        },
    );
    axum::response::sse::Sse::new(stream).into_response()
}

/// Decodes a JSON request body, answering 400 with serde's reason when it does not fit.
fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body: {e}")))
}
