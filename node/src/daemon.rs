//! `moxnet node`: the daemon. It holds the home's store, runs the network (`net`), serves blobs
//! and the catalogue to peers, learns models from announcements and syncs, fetches on request,
//! serves and makes inference calls between peers (`compute`), and offers the HTTP API on
//! localhost, through which the CLI runs while a node is up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use net::{NetConfig, NetEvent, Provider};
use protocol::{BlobHash, ModelId};
use serde_json::json;

use crate::api_client::{API_FILE, TOKEN_FILE};
use crate::cache::CallCache;
use crate::cli::NodeArgs;
use crate::compute::{Compute, ComputeConfig};
use crate::fetcher::Fetcher;
use crate::home::Home;
use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::models::{Models, Runtime};
use crate::output;
use crate::remote::Remote;
use crate::service::Service;

/// Serves blobs, the catalogue and the standing votes from the store (called by `net` on
/// blocking threads).
struct StoreProvider {
    home: Arc<Home>,
    /// The store's `votes` tree: standing votes' envelopes by vote id (kept by
    /// [`crate::votes::Votes`]).
    votes: sled::Tree,
}

impl Provider for StoreProvider {
    fn blob_size(&self, hash: BlobHash) -> Option<u64> {
        self.home.store.record(hash).ok().flatten().map(|r| r.size)
    }

    fn holding(&self, hash: BlobHash) -> Option<(u64, Vec<(u64, u64)>)> {
        let record = self.home.store.partial(hash).ok().flatten()?;
        Some((record.size, record.runs()))
    }

    fn serve(
        &self,
        hash: BlobHash,
        groups: &[(u64, u64)],
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        self.home
            .store
            .read_groups(hash, groups, out)
            .map_err(std::io::Error::other)
    }

    fn catalog_ids(&self, after: Option<ModelId>, max: usize) -> Vec<ModelId> {
        self.home.catalog.ids(after, max)
    }

    fn manifest(&self, id: ModelId) -> Option<Vec<u8>> {
        self.home.catalog.get(id).map(|m| m.to_bytes())
    }

    fn knows(&self, id: ModelId) -> bool {
        self.home.catalog.contains(id)
    }

    fn vote_ids(&self, after: Option<BlobHash>, max: usize) -> Vec<BlobHash> {
        let range = match after {
            Some(a) => self.votes.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes().as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => self.votes.iter(),
        };
        let mut ids = Vec::new();
        for item in range.keys().take(max) {
            match item {
                Ok(k) => match <[u8; 32]>::try_from(k.as_ref()) {
                    Ok(b) => ids.push(BlobHash::from_bytes(b)),
                    Err(_) => tracing::warn!("votes: a damaged key ({} bytes)", k.len()),
                },
                Err(e) => {
                    tracing::error!("votes: listing: {e}");
                    break;
                }
            }
        }
        ids
    }

    fn vote(&self, id: BlobHash) -> Option<Vec<u8>> {
        match self.votes.get(id.as_bytes()) {
            Ok(v) => v.map(|v| v.to_vec()),
            Err(e) => {
                tracing::error!("votes: reading {id}: {e}");
                None
            }
        }
    }

    fn knows_vote(&self, id: BlobHash) -> bool {
        self.votes.contains_key(id.as_bytes()).unwrap_or(false)
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
    let votes_tree = home.store.open_tree("votes").context("opening the votes")?;
    let provider = Arc::new(StoreProvider {
        home: home.clone(),
        votes: votes_tree.clone(),
    });
    let net_config = NetConfig {
        seed: home.key.seed(),
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
        connections: config.connections.clone(),
        serve: net::ServeLimits {
            upload: config.upload.0,
            upload_per_peer: config.upload.1,
            ..net::ServeLimits::default()
        },
        ..NetConfig::default()
    };
    let (client, mut events) =
        net::spawn_with_metrics(net_config, provider, metrics.registry_mut())
            .await
            .context("starting the network")?;
    let (sandbox_config, limits) = config.inference.sandbox();
    let max_fuel = limits.fuel;
    let host = crate::engines::start(&config.inference, !crate::remote::gpus().is_empty())?;
    let engine = Inference::new(&dir, sandbox_config, limits, host)?;
    // The services, each with the handles it needs and nothing else.
    let metrics = Arc::new(metrics);
    let (store, catalog) = (home.store.clone(), home.catalog.clone());
    let fetcher = Arc::new(Fetcher::new(
        client.clone(),
        store.clone(),
        catalog.clone(),
        metrics.clone(),
    ));
    let models = Arc::new(Models::new(
        client.clone(),
        store.clone(),
        catalog.clone(),
        metrics.clone(),
        config.catalog,
    ));
    let runtime = Arc::new(Runtime::new(
        engine,
        store,
        catalog.clone(),
        fetcher.clone(),
    ));
    let language = Arc::new(crate::language::LanguageModels::new(
        home.store.clone(),
        home.catalog.clone(),
        home.key.node_id().to_string(),
        &config.llm,
    )?);
    let compute = ComputeConfig {
        generation_engine: language.engine(),
        ..ComputeConfig::from(&config.compute)
    };
    let terms = config.credits.terms;
    let worst = protocol::credits::cost(max_fuel, compute.price_per_mfuel);
    if compute.serve && worst > terms.disconnect_threshold {
        // Callers size their calls' fuel to the terms in the offer, so this only caps them.
        tracing::warn!(
            "[credits] disconnect_threshold = {} is below the worst case of a call at full fuel here ({worst} credits: fuel {} at {} per million); callers' calls get less fuel",
            terms.disconnect_threshold,
            max_fuel,
            compute.price_per_mfuel
        );
    }
    let credits = Arc::new(
        credits::Credits::open(
            &dir.join("credits"),
            home.key.node_id(),
            terms,
            crate::compute::now_ms(),
        )
        .with_context(|| {
            format!(
                "opening the credit ledger in {}",
                dir.join("credits").display()
            )
        })?,
    );
    let cache = Arc::new(
        CallCache::open(home.store.clone(), catalog.clone(), compute.cache_bytes)
            .context("opening the call cache")?,
    );
    let votes = Arc::new(
        crate::votes::Votes::open(
            home.key.clone(),
            client.clone(),
            credits.clone(),
            votes_tree,
            home.store
                .open_tree("follows")
                .context("opening the follows")?,
            metrics.clone(),
        )
        .context("loading the votes")?,
    );
    let search = Arc::new(
        crate::search::Search::open(
            catalog.clone(),
            home.store
                .open_tree("seen")
                .context("opening the seen tree")?,
            Some(votes.clone()),
            Some(metrics.clone()),
        )
        .context("building the search index")?,
    );
    tokio::spawn(search.clone().run());
    let remote = Arc::new(Remote::new(
        home.key.clone(),
        client.clone(),
        Compute::new(compute),
        runtime.clone(),
        catalog,
        cache,
        metrics.clone(),
        credits,
        config.credits.spend_limit,
        config.credits.settle_every,
    ));
    let service = Arc::new(Service {
        language: language.clone(),
        home: home.clone(),
        net: client.clone(),
        fetcher: fetcher.clone(),
        models: models.clone(),
        runtime,
        remote: remote.clone(),
        votes: votes.clone(),
        search,
        metrics,
    });
    let events_to = Events {
        fetcher,
        models: models.clone(),
        remote: remote.clone(),
        language,
        votes,
    };
    // Wait briefly for the listeners so the start-up line can show real addresses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut listening = 0;
    while listening < config.listen.len() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                listening += usize::from(matches!(event, NetEvent::Listening(_)));
                events_to.on(event);
            }
            _ => break,
        }
    }
    // The network's event stream ends only if its task died (a panic in libp2p or in `net`):
    // the node then stops with an error instead of living on deaf (a supervisor restarts it).
    let (network_lost, lost) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            events_to.on(event);
        }
        let _ = network_lost.send(());
    });
    // Reconnecting (to the bootstrap peers first) after a restart or a partition heals is the
    // network's: it dials more peers whenever it is below its target connections.
    tokio::spawn(models.keep_announcing());
    tokio::spawn(remote.clone().settle_loop());
    if remote.serving() {
        tokio::spawn(remote.offer_loop());
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
    let listen: Vec<String> = client
        .dial_addrs()
        .await
        .context("asking the network for its addresses")?
        .iter()
        .map(ToString::to_string)
        .collect();
    output::emit(
        json,
        json!({ "peer_id": client.peer_id().to_string(), "node_id": home.key.node_id().to_string(), "listen": listen, "api": api_addr.to_string() }),
        || {
            format!(
                "moxnet node {}\nlistening on {}\nHTTP API on http://{api_addr}",
                client.peer_id(),
                listen.join(", ")
            )
        },
    );
    if let Err(e) = std::io::stdout().flush() {
        tracing::warn!("flushing stdout: {e}");
    }
    tracing::info!(peer = %client.peer_id(), api = %api_addr, "node started");

    let app = api::router(service, api::Access::new(api_addr.port(), token));
    let network_died = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = {
        let network_died = network_died.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                Ok(()) = lost => {
                    tracing::error!("the network task stopped; the node stops");
                    network_died.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await;
    if let Err(e) = std::fs::remove_file(&api_file) {
        tracing::warn!("removing {}: {e}", api_file.display());
    }
    home.store.flush().context("flushing the store")?;
    served.context("serving the HTTP API")?;
    if network_died.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!(
            "the network task stopped unexpectedly (see the log above); restart the node"
        );
    }
    Ok(())
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

/// Where the network's events go: each to the service that owns what it is about. Nothing
/// here waits: the services hand slow work (the disk, calls) to their own tasks.
struct Events {
    fetcher: Arc<Fetcher>,
    models: Arc<Models>,
    remote: Arc<Remote>,
    language: Arc<crate::language::LanguageModels>,
    votes: Arc<crate::votes::Votes>,
}

impl Events {
    fn on(&self, event: NetEvent) {
        match event {
            NetEvent::Manifest { from, manifest } => {
                let id = protocol::model_id(&manifest.to_bytes());
                self.fetcher.heard_from(id, from);
                self.models.learnt(id, from, *manifest);
            }
            NetEvent::Listed { from, ids } => {
                for id in ids {
                    self.fetcher.heard_from(id, from);
                }
            }
            NetEvent::Offer { offer, .. } => self.remote.offer_heard(*offer),
            NetEvent::Vote { vote, envelope, .. } => {
                // A sled write: off the event loop.
                let votes = self.votes.clone();
                tokio::task::spawn_blocking(move || votes.heard_message(&envelope, &vote));
            }
            NetEvent::InferCall { from, call, reply } => {
                let remote = self.remote.clone();
                tokio::spawn(async move { reply.send(remote.serve(from, call).await) });
            }
            NetEvent::GenerateCall {
                from,
                call,
                responder,
            } => {
                let (remote, language) = (self.remote.clone(), self.language.clone());
                tokio::spawn(async move {
                    remote
                        .serve_generation(&language, from, call, responder)
                        .await
                });
            }
            NetEvent::PeerDisconnected(peer) => self.remote.peer_left(&peer),
            NetEvent::Listening(addr) => tracing::debug!(%addr, "listening"),
            NetEvent::PeerConnected(peer) => {
                self.remote.peer_joined(&peer);
                // Settle what is owed both ways (and fetch missed receipts) with a peer this
                // node has an account with; nothing happens for one it never dealt with.
                let remote = self.remote.clone();
                tokio::spawn(async move { remote.settle_with(peer).await });
            }
            NetEvent::CreditsRequest {
                from,
                request,
                reply,
            } => {
                let remote = self.remote.clone();
                tokio::spawn(async move { reply.send(remote.answer_credits(from, request).await) });
            }
            NetEvent::Rejected { .. } => {}
        }
    }
}
