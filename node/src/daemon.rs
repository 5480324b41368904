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
use net::libp2p::multiaddr::Protocol;
use net::{NetConfig, NetEvent, Provider};
use protocol::BlobHash;
use serde_json::json;

use crate::api_client::{API_FILE, TOKEN_FILE};
use crate::cli::NodeArgs;
use crate::compute::{Compute, ComputeConfig};
use crate::home::Home;
use crate::inference::Inference;
use crate::metrics::{Metrics, Outcome, Place};
use crate::models::announce_local;
use crate::node::{MAX_MANIFEST_IMPORTS, Node};
use crate::output;

/// Serves blobs and the catalogue from the store (called by `net` on blocking threads).
struct StoreProvider {
    home: Arc<Home>,
    /// `moxnet_blob_served_bytes_total`.
    served: prometheus_client::metrics::counter::Counter,
}

/// Counts the bytes written through it.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    counter: &'a prometheus_client::metrics::counter::Counter,
}

impl Write for Counting<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.counter.inc_by(n as u64);
        Ok(n)
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
        let out = Counting {
            inner: out,
            counter: &self.served,
        };
        self.home
            .store
            .read_ranges(hash, &ranges, out)
            .map_err(std::io::Error::other)
    }

    fn catalog(&self) -> Vec<Vec<u8>> {
        self.home
            .catalog
            .entries()
            .iter()
            .map(|e| e.manifest.to_bytes())
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
    let mut metrics = Metrics::new();
    let provider = Arc::new(StoreProvider {
        home: home.clone(),
        served: metrics.bytes_served.clone(),
    });
    let net_config = NetConfig {
        seed: home.key.seed(),
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
        ..NetConfig::default()
    };
    let (client, mut events) =
        net::spawn_with_metrics(net_config, provider, metrics.registry_mut())
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
        manifest_imports: Arc::new(tokio::sync::Semaphore::new(MAX_MANIFEST_IMPORTS)),
        metrics,
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
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        redial_node.net.dial(addr.clone()),
                    )
                    .await
                    {
                        Ok(Ok(())) => tracing::debug!(%addr, "redialled a bootstrap peer"),
                        Ok(Err(e)) => tracing::debug!(%addr, "bootstrap peer unreachable: {e}"),
                        Err(_) => tracing::debug!(%addr, "bootstrap peer: no answer in 5 s"),
                    }
                }
            }
        }
    });
    let announce_node = node.clone();
    tokio::spawn(async move { announce_local(&announce_node).await });
    if node.compute.config.serve {
        tokio::spawn(crate::remote::offer_loop(node.clone()));
    }

    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("binding the HTTP API to {}", config.api))?;
    let api_addr = listener.local_addr().context("reading the API address")?;
    // The token first, then the address: a CLI that finds the address finds the token too.
    let token = write_token(&dir)?;
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
    if let Err(e) = std::io::stdout().flush() {
        tracing::warn!("flushing stdout: {e}");
    }
    tracing::info!(peer = %node.net.peer_id(), api = %api_addr, "node started");

    let app = api::router(
        Arc::new(crate::service::Service(node.clone())),
        api::Access::new(api_addr.port(), token),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    if let Err(e) = std::fs::remove_file(&api_file) {
        tracing::warn!("removing {}: {e}", api_file.display());
    }
    node.home.store.flush().context("flushing the store")?;
    served.context("serving the HTTP API")
}

/// Writes a fresh random API token to `<home>/api.token`, readable by the owner only (0600),
/// and returns it. Every node start makes a new one.
fn write_token(dir: &Path) -> Result<String> {
    let token = crate::home::random_hex().context("making the API token")?;
    crate::home::write_secret(&dir.join(TOKEN_FILE), &token)?;
    Ok(token)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            if let Err(e) = ctrl_c.await {
                tracing::warn!("waiting for ctrl-c: {e}");
            }
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
            // Learning a model stores its signed manifest (not its files) in the catalogue, on
            // a blocking thread: the event loop never waits for the disk. A burst beyond
            // `MAX_MANIFEST_IMPORTS` in flight is shed (the next sync or announcement brings
            // the manifest again).
            let Ok(permit) = node.manifest_imports.clone().try_acquire_owned() else {
                node.metrics.manifests_dropped.inc();
                tracing::warn!(model = %id, peer = %from, "too many manifests being stored; dropped this one");
                return;
            };
            if node.home.catalog.get(id).is_some() {
                return;
            }
            let catalog = node.home.catalog.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                // `net` verified the signature: the catalogue keeps it without checking again.
                if let Err(e) = catalog.insert(*manifest) {
                    tracing::warn!(model = %id, "storing a learnt manifest: {e:#}");
                }
            });
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
                let answer = crate::remote::handle_call(node.clone(), from, call).await;
                use protocol::compute::InferStatus;
                let outcome = match answer.status {
                    InferStatus::Ok => Outcome::Ok,
                    InferStatus::Busy => Outcome::Busy,
                    InferStatus::BadRequest | InferStatus::NotFound | InferStatus::Refused => {
                        Outcome::Refused
                    }
                    InferStatus::Failed | InferStatus::Internal => Outcome::Failed,
                };
                node.metrics.call(Place::Served, outcome);
                if outcome != Outcome::Ok {
                    tracing::debug!(peer = %from, status = ?answer.status, "refused or failed a call for a peer: {}", answer.message.as_deref().unwrap_or(""));
                }
                reply.send(protocol::Object::to_bytes(&answer));
            });
        }
        NetEvent::PeerDisconnected(peer) => node.compute.peer_left(&peer),
        NetEvent::PeerConnected(_) | NetEvent::Rejected { .. } => {}
    }
}
