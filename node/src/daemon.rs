//! `moxnet node`: the daemon. It holds the home's store, runs the network (`net`), serves blobs
//! and the catalogue to peers, learns models from announcements and syncs, fetches on request,
//! serves and makes inference calls between peers (`compute`), and offers the HTTP API on
//! localhost, through which the CLI runs while a node is up.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use net::libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use net::{NetConfig, NetEvent, Provider};
use protocol::{BlobHash, ModelId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api_client::API_FILE;
use crate::cli::{Command, NodeArgs};
use crate::compute::{CallOptions, Compute, ComputeConfig};
use crate::fetcher::{self, Progress};
use crate::home::Home;
use crate::inference::{CallError, Inference};
use crate::output;

/// The largest HTTP request body (an inference request's JSON).
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// What the node shares between its tasks.
pub struct Node {
    /// The home: identity and store.
    pub home: Arc<Home>,
    /// The network.
    pub net: net::Client,
    /// Addresses we listen on (with our `/p2p/` suffix).
    listening: Mutex<Vec<Multiaddr>>,
    /// One lock per model being fetched for a call.
    fetch_locks: Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
    /// Fetches started through the API, by root hash.
    fetches: Mutex<HashMap<BlobHash, Arc<Mutex<Progress>>>>,
    /// Peers that announced or synced each model to us: likely providers.
    pub announcers: Mutex<HashMap<BlobHash, HashSet<PeerId>>>,
    /// Models already announced and provided by this node.
    announced: Mutex<HashSet<ModelId>>,
    /// The sandbox and the models loaded in it.
    pub inference: Arc<Inference>,
    /// Compute sharing: offers heard, calls served for peers.
    pub compute: Compute,
}

impl Node {
    /// The addresses this node listens on, as text.
    pub fn listen_addrs(&self) -> Vec<String> {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| a.to_string())
            .collect()
    }
}

/// Serves blobs and the catalogue from the store (called by `net` on blocking threads).
struct StoreProvider {
    home: Arc<Home>,
}

/// Whether this node corrupts what it serves: test-only, for Byzantine scenarios. Built in with
/// `--features byzantine`, or in debug builds when `MOXNET_TEST_BYZANTINE=1` is set (release
/// builds without the feature never misbehave).
fn byzantine() -> bool {
    cfg!(feature = "byzantine")
        || (cfg!(debug_assertions)
            && std::env::var_os("MOXNET_TEST_BYZANTINE").is_some_and(|v| v == "1"))
}

/// Test-only Byzantine behaviour: flips one byte in every 64 KiB it serves.
struct Corrupt<'a> {
    inner: &'a mut dyn Write,
    written: usize,
}

impl Write for Corrupt<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut data = data.to_vec();
        for (i, b) in data.iter_mut().enumerate() {
            if (self.written + i) % 65_536 == 1_000 {
                *b ^= 0xa5;
            }
        }
        self.written += data.len();
        self.inner.write_all(&data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Provider for StoreProvider {
    fn blob_size(&self, hash: BlobHash) -> Option<u64> {
        self.home.store.record(hash).ok().flatten().map(|r| r.size)
    }

    fn serve(
        &self,
        hash: BlobHash,
        groups: &[(u64, u64)],
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let ranges = store::chunk_ranges(groups);
        let result = if byzantine() {
            self.home.store.read_ranges(
                hash,
                &ranges,
                Corrupt {
                    inner: out,
                    written: 0,
                },
            )
        } else {
            self.home.store.read_ranges(hash, &ranges, out)
        };
        result.map_err(std::io::Error::other)
    }

    fn catalog(&self) -> Vec<Vec<u8>> {
        let store = &self.home.store;
        store
            .manifests()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| {
                store
                    .read_bytes(
                        id.blob(),
                        protocol::Signed::<protocol::Manifest>::MAX_BYTES as u64,
                    )
                    .ok()
            })
            .collect()
    }
}

/// Runs the node until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: NodeArgs, json: bool) -> Result<()> {
    let config = crate::config::load(dir, &args)?;
    let home = Arc::new(Home::open(dir)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(dir.to_path_buf(), home, config, json))
}

async fn serve(
    dir: PathBuf,
    home: Arc<Home>,
    config: crate::config::NodeConfig,
    json: bool,
) -> Result<()> {
    let provider = Arc::new(StoreProvider { home: home.clone() });
    let net_config = NetConfig {
        seed: home.key.seed(),
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
        ..NetConfig::default()
    };
    let (client, mut events) = net::spawn(net_config, provider)
        .await
        .context("starting the network")?;
    let (sandbox_config, limits) = config.inference.sandbox();
    let inference = Arc::new(Inference::new(&dir, sandbox_config, limits)?);
    let node = Arc::new(Node {
        home,
        net: client,
        listening: Mutex::new(Vec::new()),
        fetches: Mutex::new(HashMap::new()),
        fetch_locks: Mutex::new(HashMap::new()),
        announcers: Mutex::new(HashMap::new()),
        announced: Mutex::new(HashSet::new()),
        inference,
        compute: Compute::new(ComputeConfig::from(&config.compute)),
    });
    // Wait briefly for the listeners so the start-up line can show real addresses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while node
        .listening
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .len()
        < config.listen.len()
    {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => on_event(&node, event).await,
            _ => break,
        }
    }
    let event_node = node.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            on_event(&event_node, event).await;
        }
    });
    // Stay connected to the bootstrap peers: redial after a restart or a partition heals (the
    // catalogue is synced again on every new connection).
    let redial_node = node.clone();
    let bootstrap = config.bootstrap.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let peers = redial_node.net.peers().await.unwrap_or_default();
            for addr in &bootstrap {
                let peer = addr.iter().find_map(|p| match p {
                    Protocol::P2p(id) => Some(id),
                    _ => None,
                });
                if peer.is_some_and(|p| !peers.contains(&p)) {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        redial_node.net.dial(addr.clone()),
                    )
                    .await;
                }
            }
        }
    });
    let announce_node = node.clone();
    tokio::spawn(async move { announce_local(&announce_node).await });
    if node.compute.config.serve {
        tokio::spawn(crate::compute::offer_loop(node.clone()));
    }

    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("binding the HTTP API to {}", config.api))?;
    let api_addr = listener.local_addr().context("reading the API address")?;
    let api_file = dir.join(API_FILE);
    std::fs::write(&api_file, format!("{api_addr}\n"))
        .with_context(|| format!("writing {}", api_file.display()))?;
    let listen = node.listen_addrs();
    output::emit(
        json,
        json!({ "peer_id": node.net.peer_id().to_string(), "node_id": node.home.key.node_id().to_string(), "listen": listen, "api": api_addr.to_string() }),
        || {
            format!(
                "moxnet node {}\nlistening on {}\nHTTP API on http://{api_addr}",
                node.net.peer_id(),
                listen.join(", ")
            )
        },
    );
    let _ = std::io::stdout().flush();

    let app = Router::new()
        .route("/api/v1/node", get(node_info))
        .route("/api/v1/models", get(models))
        .route("/api/v1/blobs", get(blobs))
        .route("/api/v1/exec", post(exec))
        .route("/api/v1/fetch/{id}", post(start_fetch).get(fetch_progress))
        .route("/api/v1/offers", get(offers))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{id}", get(model_metadata))
        .route("/v2/models/{id}/ready", get(model_ready))
        .route("/v2/models/{id}/infer", post(infer))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(node.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    let _ = std::fs::remove_file(&api_file);
    node.home.store.flush().context("flushing the store")?;
    served.context("serving the HTTP API")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

async fn on_event(node: &Arc<Node>, event: NetEvent) {
    match event {
        NetEvent::Listening(addr) => {
            let addr = addr.with(Protocol::P2p(node.net.peer_id()));
            node.listening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(addr);
        }
        NetEvent::Manifest { from, manifest } => {
            let bytes = manifest.to_bytes();
            let id = protocol::model_id(&bytes);
            node.announcers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.blob())
                .or_default()
                .insert(from);
            let home = node.home.clone();
            let links = manifest.body().referenced_blobs();
            // Learning a model stores its signed manifest (not its files) in the catalogue.
            let _ = tokio::task::spawn_blocking(move || -> Result<()> {
                if !home.store.has(id.blob())? {
                    home.store.import_bytes(&bytes, "manifest", links)?;
                }
                home.store.index_manifest(id)?;
                Ok(())
            })
            .await;
        }
        NetEvent::Offer { offer, .. } => {
            if offer.signer() != node.home.key.node_id() {
                node.compute
                    .offers()
                    .insert(*offer, crate::compute::now_ms());
            }
        }
        NetEvent::InferCall { from, call, reply } => {
            let node = node.clone();
            tokio::spawn(async move {
                let answer = crate::compute::handle_call(node, from, call).await;
                reply.send(protocol::Object::to_bytes(&answer));
            });
        }
        NetEvent::PeerDisconnected(peer) => node.compute.offers().remove_peer(&peer),
        NetEvent::PeerConnected(_) | NetEvent::Rejected { .. } => {}
    }
}

/// The models whose manifest and files are all in the store.
pub async fn complete_models(node: &Arc<Node>) -> Vec<ModelId> {
    let home = node.home.clone();
    tokio::task::spawn_blocking(move || {
        let store = &home.store;
        store
            .manifests()
            .unwrap_or_default()
            .into_iter()
            .filter(|id| is_complete(store, *id))
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Whether a model's manifest and all its files are in the store.
fn is_complete(store: &store::Store, id: ModelId) -> bool {
    crate::commands::load_manifest(store, id).is_ok_and(|signed| {
        signed
            .body()
            .files
            .iter()
            .all(|f| store.has(f.hash).unwrap_or(false))
    })
}

/// Announces every local manifest not yet announced, and provides it and its files.
pub async fn announce_local(node: &Arc<Node>) {
    let home = node.home.clone();
    let local = tokio::task::spawn_blocking(move || -> Vec<(ModelId, Vec<u8>, Vec<BlobHash>)> {
        let store = &home.store;
        store
            .manifests()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| {
                let signed = crate::commands::load_manifest(store, id).ok()?;
                let blobs: Vec<BlobHash> = std::iter::once(id.blob())
                    .chain(signed.body().referenced_blobs())
                    .filter(|h| store.has(*h).unwrap_or(false))
                    .collect();
                // Only models whose files are all here are ours to announce.
                let complete = signed
                    .body()
                    .files
                    .iter()
                    .all(|f| store.has(f.hash).unwrap_or(false));
                complete.then(|| (id, signed.to_bytes(), blobs))
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    for (id, envelope, blobs) in local {
        if !node
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
        {
            continue;
        }
        let _ = node.net.announce(envelope).await;
        for hash in blobs {
            let _ = node.net.provide(hash).await;
        }
    }
}

async fn node_info(State(node): State<Arc<Node>>) -> Json<Value> {
    let peers: Vec<String> = node
        .net
        .peers()
        .await
        .unwrap_or_default()
        .iter()
        .map(|p| p.to_string())
        .collect();
    let listen = node.listen_addrs();
    Json(json!({
        "node_id": node.home.key.node_id().to_string(),
        "peer_id": node.net.peer_id().to_string(),
        "listen": listen,
        "peers": peers,
    }))
}

fn run_captured(node: &Arc<Node>, command: Command, json: bool) -> Value {
    let (result, stdout) = output::capture(|| crate::commands::execute(&node.home, command, json));
    match result {
        Ok(code) => {
            json!({ "code": if code == std::process::ExitCode::SUCCESS { 0 } else { 1 }, "stdout": stdout })
        }
        Err(e) => json!({ "code": 1, "stdout": stdout, "error": format!("{e:#}") }),
    }
}

async fn models(State(node): State<Arc<Node>>) -> (StatusCode, Json<Value>) {
    listing(node, Command::Models).await
}

async fn blobs(State(node): State<Arc<Node>>) -> (StatusCode, Json<Value>) {
    listing(node, Command::Ls).await
}

/// Runs a listing command with JSON output and returns its object.
async fn listing(node: Arc<Node>, command: Command) -> (StatusCode, Json<Value>) {
    let answer = tokio::task::spawn_blocking(move || run_captured(&node, command, true)).await;
    match answer {
        Ok(v) => match serde_json::from_str::<Value>(v["stdout"].as_str().unwrap_or("")) {
            Ok(list) => (StatusCode::OK, Json(list)),
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Json(v)),
        },
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

#[derive(Deserialize)]
struct ExecRequest {
    command: Command,
    #[serde(default)]
    json: bool,
}

/// Runs a CLI store command inside the node (which holds the store), then announces anything
/// newly published.
async fn exec(
    State(node): State<Arc<Node>>,
    Json(request): Json<ExecRequest>,
) -> (StatusCode, Json<Value>) {
    if matches!(
        request.command,
        Command::Init | Command::Node(_) | Command::Fetch { .. }
    ) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "not a store command" })),
        );
    }
    let worker = node.clone();
    let answer =
        tokio::task::spawn_blocking(move || run_captured(&worker, request.command, request.json))
            .await;
    announce_local(&node).await;
    match answer {
        Ok(v) => (StatusCode::OK, Json(v)),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

async fn start_fetch(
    State(node): State<Arc<Node>>,
    UrlPath(id): UrlPath<String>,
) -> (StatusCode, Json<Value>) {
    let hash: BlobHash = match id.parse() {
        Ok(h) => h,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("{id:?}: {e}") })),
            );
        }
    };
    let progress = {
        let mut fetches = node.fetches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = fetches.get(&hash) {
            let running = existing.lock().unwrap_or_else(|p| p.into_inner()).state == "running";
            if running {
                return (StatusCode::ACCEPTED, Json(json!({ "state": "running" })));
            }
        }
        let progress = Arc::new(Mutex::new(Progress::default()));
        fetches.insert(hash, progress.clone());
        progress
    };
    let worker = node.clone();
    tokio::spawn(async move {
        let result = fetcher::fetch(&worker, hash, progress.clone()).await;
        let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => p.state = "complete",
            Err(e) => {
                p.state = "failed";
                p.error = Some(format!("{e:#}"));
            }
        }
    });
    (StatusCode::ACCEPTED, Json(json!({ "state": "running" })))
}

async fn fetch_progress(
    State(node): State<Arc<Node>>,
    UrlPath(id): UrlPath<String>,
) -> (StatusCode, Json<Value>) {
    let Ok(hash) = id.parse::<BlobHash>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "not a hash" })),
        );
    };
    let progress = node
        .fetches
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&hash)
        .cloned();
    match progress {
        Some(p) => {
            let p = p.lock().unwrap_or_else(|p| p.into_inner());
            (StatusCode::OK, Json(p.to_json(hash)))
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such fetch" })),
        ),
    }
}

/// An OIP error answer.
fn oip_error(e: &CallError) -> (StatusCode, Json<Value>) {
    (
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(e.to_json()),
    )
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(json!({ "ready": true, "backend": node.inference.backend() }))
}

fn parse_model(id: &str) -> Result<ModelId, CallError> {
    id.parse::<BlobHash>()
        .map(ModelId)
        .map_err(|e| CallError::new(400, format!("{id:?} is not a model id: {e}")))
}

/// Loads a local model into the sandbox (on a blocking thread: compiling a guest takes a while
/// the first time).
async fn load_local(
    node: &Arc<Node>,
    id: ModelId,
) -> Result<Arc<crate::inference::Loaded>, CallError> {
    if let Some(l) = node.inference.get(id) {
        return Ok(l);
    }
    let worker = node.clone();
    tokio::task::spawn_blocking(move || worker.inference.load(&worker.home.store, id))
        .await
        .map_err(|e| CallError::new(500, format!("loading the model: {e}")))?
}

/// The local model named in a request path, loaded.
async fn load_named(
    node: &Arc<Node>,
    id: &str,
) -> Result<Arc<crate::inference::Loaded>, CallError> {
    load_local(node, parse_model(id)?).await
}

async fn model_metadata(
    State(node): State<Arc<Node>>,
    UrlPath(id): UrlPath<String>,
) -> (StatusCode, Json<Value>) {
    match load_named(&node, &id).await {
        Ok(l) => (StatusCode::OK, Json(l.metadata())),
        Err(e) => oip_error(&e),
    }
}

async fn model_ready(
    State(node): State<Arc<Node>>,
    UrlPath(id): UrlPath<String>,
) -> (StatusCode, Json<Value>) {
    match load_named(&node, &id).await {
        Ok(l) => (
            StatusCode::OK,
            Json(json!({ "name": l.id.to_string(), "ready": true })),
        ),
        Err(e) => oip_error(&e),
    }
}

/// `GET /api/v1/offers`: the compute offers this node knows, with what it measured.
async fn offers(State(node): State<Arc<Node>>) -> Json<Value> {
    let now = crate::compute::now_ms();
    let mut offers = node.compute.offers();
    offers.prune(now);
    Json(json!({ "serving": node.compute.config.serve, "offers": offers.to_json(now) }))
}

/// Query parameters of `POST /v2/models/{id}/infer`.
#[derive(Debug, Default, Deserialize)]
struct InferQuery {
    /// Run on this peer only.
    on: Option<String>,
    /// Run on two providers and compare.
    #[serde(default)]
    verify: bool,
}

/// `POST /v2/models/{id}/infer[?on=PEER][&verify=true]`: runs here when the model is here (and
/// no provider is forced), else on a peer that offers compute, else fetches it and runs here.
async fn infer(
    State(node): State<Arc<Node>>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<InferQuery>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let id = match parse_model(&id) {
        Ok(id) => id,
        Err(e) => return oip_error(&e),
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return oip_error(&CallError::new(
                400,
                format!("the request is not JSON: {e}"),
            ));
        }
    };
    let on = match query.on.as_deref().map(str::parse::<PeerId>).transpose() {
        Ok(p) => p,
        Err(e) => return oip_error(&CallError::new(400, format!("on: not a peer id: {e}"))),
    };
    let options = CallOptions {
        on,
        verify: query.verify,
    };
    let worker = node.clone();
    let local = tokio::task::spawn_blocking(move || is_complete(&worker.home.store, id))
        .await
        .unwrap_or(false);
    let remote = options.on.is_some()
        || options.verify
        || (!local && crate::compute::has_providers(&node, id));
    if remote {
        return match crate::compute::call(&node, id, &request, &options).await {
            Ok(v) => (StatusCode::OK, Json(v)),
            Err(e) => oip_error(&e),
        };
    }
    let model = match ensure_loaded(&node, id).await {
        Ok(m) => m,
        Err(e) => return oip_error(&e),
    };
    let worker = node.clone();
    let answer =
        tokio::task::spawn_blocking(move || worker.inference.infer(&model, &request)).await;
    match answer {
        Ok(Ok(v)) => (StatusCode::OK, Json(v)),
        Ok(Err(e)) => oip_error(&e),
        Err(e) => oip_error(&CallError::new(500, format!("the call failed: {e}"))),
    }
}

/// The model loaded in the sandbox, fetched from peers first if it is not here.
pub async fn ensure_loaded(
    node: &Arc<Node>,
    id: ModelId,
) -> Result<Arc<crate::inference::Loaded>, CallError> {
    if node.inference.get(id).is_some() {
        return load_local(node, id).await;
    }
    let worker = node.clone();
    let complete = tokio::task::spawn_blocking(move || is_complete(&worker.home.store, id))
        .await
        .unwrap_or(false);
    if !complete {
        // One fetch per model: concurrent calls for a missing model wait for the first.
        let lock = node
            .fetch_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.blob())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        let worker = node.clone();
        let complete = tokio::task::spawn_blocking(move || is_complete(&worker.home.store, id))
            .await
            .unwrap_or(false);
        if !complete {
            let progress = Arc::new(Mutex::new(Progress::default()));
            node.fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.blob(), progress.clone());
            let fetched = fetcher::fetch(node, id.blob(), progress.clone()).await;
            let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = fetched {
                p.state = "failed";
                p.error = Some(format!("{e:#}"));
                return Err(CallError::new(
                    404,
                    format!("model {id} is not on this node and fetching it failed: {e:#}"),
                ));
            }
            p.state = "complete";
        }
    }
    load_local(node, id).await
}
