//! A lying peer for tests. It speaks the moxnet wire protocol itself, with the `net`, `store` and
//! `protocol` crates (never the `node` crate), and misbehaves in one chosen way, so that the
//! product binary carries no fault switches. The `liar` binary (`src/bin/liar.rs`) runs it; tests
//! start it with [`crate::Node::start_corrupting`] and [`crate::Node::start_cheating`].
//!
//! - [`Lie::CorruptBlobs`]: serves a moxnet home's store like a node (real blob sizes, the real
//!   catalogue, its models announced on gossip and provided in the DHT) but flips one byte in
//!   every 64 KiB of every blob range it serves ([`Corrupt`]). A fetcher must ban it and finish
//!   from honest peers.
//! - [`Lie::WrongSizes`]: serves the home's blobs with their true bytes but states every blob's
//!   size as [`SIZE_LIE`] bytes more than it is. A fetcher must not trust the figure before the
//!   blob's last group proves it, and must not blame honest peers for disagreeing with it.
//! - [`Lie::Compute`]: announces a signed compute offer (re-announced every second) and answers
//!   calls on `/moxnet/infer/1`. It runs nothing: it calls the honest provider it was given
//!   (with its own signed request and the caller's input bytes) and lies about the answer
//!   ([`Fault`], [`falsify`]). It offers generation too (`/moxnet/generate/1`), and runs no
//!   language model either: it streams a made-up text and signs an end that lies as its fault
//!   says (`Peer::generate_lie`).
//!
//! It opens the home's identity key and store itself, so no node may run on that home.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use net::libp2p::multiaddr::Protocol;
use net::libp2p::{Multiaddr, PeerId};
use net::{InferResponder, NetConfig, NetEvent, Provider};
use protocol::compute::{
    ComputeOffer, InferCall, InferReply, InferRequest, InferResult, InferStatus, MAX_OFFER_ADDRS,
    Outputs,
};
use protocol::{BlobHash, DecodeError, Manifest, ModelId, Object, SecretKey, Signed};
use store::Store;

/// The identity key file in a home: the ed25519 seed as 64 hex characters (`node/src/home.rs`).
const KEY_FILE: &str = "identity.key";
/// The store's folder in a home.
const STORE_DIR: &str = "store";
/// Between two announcements of the compute offer.
const OFFER_INTERVAL: Duration = Duration::from_secs(1);
/// How long an offer stays valid.
const OFFER_TTL: Duration = Duration::from_secs(120);
/// What the liar charges per million fuel units (a node's default).
const PRICE_PER_MFUEL: u64 = 1;
/// What the liar charges per million tokens of generation (a node's default).
const PRICE_PER_MTOKEN: u64 = 100_000;
/// The most it pays the honest provider per million fuel units (a node's default).
const MAX_PRICE_PER_MFUEL: u64 = 100;
/// How long it waits for the honest provider's answer.
/// What a [`Fault::FakeGpu`] liar answers every call and generation with.
pub const FAKE_GPU: &str = "a fake GPU provider";
/// The GPU a [`Fault::FakeGpu`] liar offers.
const FAKE_GPU_NAME: &str = "Fake GPU (0 MiB)";
const HONEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How many bytes [`Lie::WrongSizes`] adds to every blob's size.
pub const SIZE_LIE: u64 = 100;

/// How a compute liar answers a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Corrupts the outputs (a bit of the last byte of the first tensor) and hashes and signs the
    /// corrupted outputs consistently: only comparing two providers (`--verify`) catches it.
    WrongOutput,
    /// Signs the true output hash but sends the outputs with a byte appended: caught on any call.
    BadHash,
    /// Never answers (holds the call open): the caller times out.
    Silent,
    /// Sends the true outputs but signs twice the fuel they took: only comparing two providers
    /// (`--verify`) catches it, since fuel is deterministic.
    InflatedFuel,
    /// Offers a GPU it does not have, with GPU engines for graphs and language models
    /// (`onnxruntime-cuda`, `llama.cpp-cuda`), and refuses every call and generation ("a
    /// fake GPU provider"): a call that requires a GPU reaches it, and only it.
    FakeGpu,
}

impl Fault {
    /// Every fault, in the order of its name in [`Fault::name`].
    pub const ALL: [Fault; 5] = [
        Fault::WrongOutput,
        Fault::BadHash,
        Fault::Silent,
        Fault::InflatedFuel,
        Fault::FakeGpu,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::WrongOutput => "wrong-output",
            Fault::BadHash => "bad-hash",
            Fault::Silent => "silent",
            Fault::InflatedFuel => "inflated-fuel",
            Fault::FakeGpu => "fake-gpu",
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault {s:?}: one of {}", names.join(", "))
            })
    }
}

/// What the liar does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Serves the home's blobs with corrupted bytes.
    CorruptBlobs,
    /// Serves the home's blobs with their true bytes and a false size.
    WrongSizes,
    /// Offers compute and answers calls with `fault`, copying the answers of `honest`.
    Compute {
        /// How it lies.
        fault: Fault,
        /// The honest provider whose answers it copies.
        honest: PeerId,
    },
}

/// How to run a liar.
#[derive(Debug, Clone)]
pub struct Config {
    /// An existing moxnet home (`moxnet init`), on which no node runs.
    pub home: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to at start (with `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// What it does wrong.
    pub lie: Lie,
}

/// Reads a home's identity key: `identity.key`, the 32-byte seed as 64 hex characters (what
/// `moxnet init` writes).
pub fn read_identity(home: &Path) -> Result<SecretKey> {
    let path = home.join(KEY_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run `moxnet init` first)", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).with_context(|| {
        format!(
            "{} is not a moxnet identity key (64 hex characters expected)",
            path.display()
        )
    })?;
    Ok(SecretKey::from_seed(&seed))
}

/// A writer that flips one byte (`^ 0xa5`) at offset 1000 of every 64 KiB written through it,
/// however the writes are split: what a Byzantine provider does to the blob ranges it serves.
pub struct Corrupt<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Corrupt<W> {
    /// Corrupts what is written to `inner`.
    pub fn new(inner: W) -> Self {
        Corrupt { inner, written: 0 }
    }
}

impl<W: Write> Write for Corrupt<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut data = data.to_vec();
        for (i, b) in data.iter_mut().enumerate() {
            if (self.written + i as u64) % 65_536 == 1_000 {
                *b ^= 0xa5;
            }
        }
        self.written += data.len() as u64;
        self.inner.write_all(&data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a compute liar sends in place of the honest outputs `honest` (encoded [`Outputs`]): the
/// output bytes it sends and the output hash it signs. ([`Fault::Silent`] never answers; were it
/// asked, it would pass the honest answer on.)
pub fn falsify(fault: Fault, honest: &[u8]) -> Result<(Vec<u8>, BlobHash), DecodeError> {
    match fault {
        Fault::WrongOutput => {
            let mut outputs = Outputs::from_bytes(honest)?;
            if let Some(byte) = outputs.tensors.first_mut().and_then(|t| t.data.last_mut()) {
                *byte ^= 0x40;
            }
            let bytes = outputs.to_bytes();
            let hash = BlobHash::of(&bytes);
            Ok((bytes, hash))
        }
        Fault::BadHash => {
            let hash = BlobHash::of(honest);
            let mut bytes = honest.to_vec();
            bytes.push(0);
            Ok((bytes, hash))
        }
        Fault::Silent | Fault::InflatedFuel | Fault::FakeGpu => {
            Ok((honest.to_vec(), BlobHash::of(honest)))
        }
    }
}

/// Serves a store's blobs and catalogue the way a node does, corrupting the bytes or lying
/// about the sizes when asked.
struct StoreProvider {
    store: Arc<Store>,
    corrupt: bool,
    size_lie: u64,
}

impl Provider for StoreProvider {
    fn blob_size(&self, hash: BlobHash) -> Option<u64> {
        let size = self.store.record(hash).ok().flatten()?.size;
        Some(size + self.size_lie)
    }

    fn serve(
        &self,
        hash: BlobHash,
        groups: &[(u64, u64)],
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let ranges = store::chunk_ranges(groups);
        let served = if self.corrupt {
            self.store.read_ranges(hash, &ranges, Corrupt::new(out))
        } else {
            self.store.read_ranges(hash, &ranges, out)
        };
        served.map_err(std::io::Error::other)
    }

    fn catalog_ids(&self, after: Option<ModelId>, max: usize) -> Vec<ModelId> {
        let mut ids = self.store.manifests().unwrap_or_default();
        ids.sort();
        ids.into_iter()
            .filter(|id| after.is_none_or(|a| *id > a))
            .take(max)
            .collect()
    }

    fn manifest(&self, id: ModelId) -> Option<Vec<u8>> {
        self.store
            .read_bytes(id.blob(), Signed::<Manifest>::MAX_BYTES as u64)
            .ok()
    }
}

/// The store's complete models: each signed manifest envelope with the blobs to provide (the
/// manifest and the files, snapshots and guest that are here).
fn local_models(store: &Store) -> Vec<(Vec<u8>, Vec<BlobHash>)> {
    let has = |h: BlobHash| store.has(h).unwrap_or(false);
    store
        .manifests()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| {
            let bytes = store
                .read_bytes(id.blob(), Signed::<Manifest>::MAX_BYTES as u64)
                .ok()?;
            let signed = Signed::<Manifest>::from_bytes(&bytes).ok()?;
            if !signed.body().files.iter().all(|f| has(f.hash)) {
                return None;
            }
            let blobs = std::iter::once(id.blob())
                .chain(signed.body().referenced_blobs())
                .filter(|h| has(*h))
                .collect();
            Some((bytes, blobs))
        })
        .collect()
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a call is not answered with outputs: the status and message of the reply.
type Refusal = (InferStatus, String);

/// The running liar.
struct Peer {
    key: SecretKey,
    store: Arc<Store>,
    net: net::Client,
    lie: Lie,
    /// Our listen addresses, with `/p2p/<our peer id>`.
    listening: Mutex<Vec<Multiaddr>>,
    /// Addresses from the compute offers heard, by provider: how to reach the honest one.
    offered: Mutex<HashMap<PeerId, Vec<Multiaddr>>>,
}

/// Runs a liar until the process is killed: starts the network, prints one JSON line
/// (`{"peer_id", "node_id", "listen"}`, like `moxnet --json node`), announces and provides the
/// home's models, announces its compute offer (a compute liar), and answers peers.
pub async fn run(config: Config) -> Result<()> {
    let key = read_identity(&config.home)?;
    let store_dir = config.home.join(STORE_DIR);
    let store = Arc::new(
        Store::open(&store_dir)
            .with_context(|| format!("opening the store {}", store_dir.display()))?,
    );
    let provider = Arc::new(StoreProvider {
        store: store.clone(),
        corrupt: config.lie == Lie::CorruptBlobs,
        size_lie: if config.lie == Lie::WrongSizes {
            SIZE_LIE
        } else {
            0
        },
    });
    let net_config = NetConfig {
        seed: key.seed(),
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        ..NetConfig::default()
    };
    let (client, mut events) = net::spawn(net_config, provider)
        .await
        .context("starting the network")?;
    let peer = Arc::new(Peer {
        key,
        store,
        net: client,
        lie: config.lie,
        listening: Mutex::new(Vec::new()),
        offered: Mutex::new(HashMap::new()),
    });
    // Wait briefly for the listeners so the start-up line shows real addresses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while peer.listen_addrs().len() < config.listen.len() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => peer.on_event(event),
            _ => break,
        }
    }
    let listen: Vec<String> = peer.listen_addrs().iter().map(|a| a.to_string()).collect();
    let line = serde_json::json!({
        "peer_id": peer.net.peer_id().to_string(),
        "node_id": peer.key.node_id().to_string(),
        "listen": listen,
    });
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("printing the start-up line")?;

    let announcing = peer.clone();
    tokio::spawn(async move { announcing.announce_models().await });
    if matches!(peer.lie, Lie::Compute { .. }) {
        tokio::spawn(peer.clone().offer_loop());
    }
    while let Some(event) = events.recv().await {
        peer.on_event(event);
    }
    bail!("the network task stopped")
}

impl Peer {
    fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn on_event(self: &Arc<Self>, event: NetEvent) {
        match event {
            NetEvent::Listening(addr) => {
                let addr = addr.with(Protocol::P2p(self.net.peer_id()));
                self.listening
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(addr);
            }
            NetEvent::Offer { offer, .. } => {
                if let Some(provider) = net::peer_id_of(&offer.signer()) {
                    let addrs = offer
                        .body()
                        .addrs
                        .iter()
                        .filter_map(|a| a.parse().ok())
                        .collect();
                    self.offered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(provider, addrs);
                }
            }
            NetEvent::InferCall { from, call, reply } => {
                let peer = self.clone();
                tokio::spawn(async move { peer.answer(from, call, reply).await });
            }
            // It keeps no ledger: a credits request goes unanswered (the stream closes).
            NetEvent::CreditsRequest { .. } => {}
            NetEvent::GenerateCall {
                from,
                call,
                responder,
            } => {
                let peer = self.clone();
                tokio::spawn(async move { peer.generate_lie(from, call, responder).await });
            }
            // Manifests and votes learnt from others are not kept: the liar only serves its
            // own home.
            NetEvent::Manifest { .. }
            | NetEvent::Vote { .. }
            | NetEvent::Listed { .. }
            | NetEvent::PeerConnected(_)
            | NetEvent::PeerDisconnected(_)
            | NetEvent::Rejected { .. } => {}
        }
    }

    /// Announces the home's complete models on gossip and provides their blobs in the DHT, as a
    /// node does at start.
    async fn announce_models(&self) {
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || local_models(&store))
            .await
            .unwrap_or_default();
        for (envelope, blobs) in local {
            // No peers yet is fine: they get the catalogue when they connect.
            let _ = self.net.announce(envelope).await;
            for hash in blobs {
                let _ = self.net.provide(hash).await;
            }
        }
    }

    /// The GPUs its offer lists: a made-up one for [`Fault::FakeGpu`].
    fn gpus(&self) -> Vec<String> {
        match self.lie {
            Lie::Compute {
                fault: Fault::FakeGpu,
                ..
            } => vec![FAKE_GPU_NAME.into()],
            _ => Vec::new(),
        }
    }

    /// The engines its offer lists: the GPU ones for [`Fault::FakeGpu`].
    fn backends(&self) -> Vec<String> {
        let engines: &[&str] = match self.lie {
            Lie::Compute {
                fault: Fault::FakeGpu,
                ..
            } => &["wasm", "onnxruntime-cuda", "llama.cpp-cuda"],
            _ => &["wasm", "llama.cpp"],
        };
        engines.iter().map(|e| e.to_string()).collect()
    }

    /// Announces the compute offer now and every [`OFFER_INTERVAL`].
    async fn offer_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(OFFER_INTERVAL);
        loop {
            tick.tick().await;
            let issued_ms = now_ms();
            let mut addrs: Vec<String> =
                self.listen_addrs().iter().map(|a| a.to_string()).collect();
            addrs.truncate(MAX_OFFER_ADDRS);
            let offer = self.key.sign(ComputeOffer {
                issued_ms,
                expires_ms: issued_ms + OFFER_TTL.as_millis() as u64,
                cores: 1,
                memory_mib: 1024,
                gpus: self.gpus(),
                backends: self.backends(),
                // It holds no model it could run: every answer is copied or made up.
                models: Vec::new(),
                max_concurrent: 4,
                price_per_mfuel: PRICE_PER_MFUEL,
                addrs,
                credit: protocol::credits::CreditTerms::default(),
                price_per_mtoken: Some(PRICE_PER_MTOKEN),
            });
            // No peers yet is fine: the next round reaches them.
            let _ = self.net.announce_offer(offer.to_bytes()).await;
        }
    }

    /// Answers a generation with a made-up text, streamed, then an end signed as its fault
    /// says: [`Fault::WrongOutput`] signs the text it streamed (consistent: only `--verify`
    /// catches it), [`Fault::BadHash`] signs another text than it streamed, [`Fault::InflatedFuel`]
    /// signs more tokens than its counts add up to, [`Fault::Silent`] says nothing.
    async fn generate_lie(
        &self,
        from: PeerId,
        call: Vec<u8>,
        mut responder: Box<net::GenerateResponder>,
    ) {
        let no_timings = protocol::generate::Timings::default();
        let refuse = |status, why: &str| InferReply::error(status, why);
        let Lie::Compute { fault, .. } = self.lie else {
            let no = refuse(
                InferStatus::Refused,
                "this node does not serve calls for peers",
            );
            let _ = responder.end(no, no_timings).await;
            return;
        };
        if fault == Fault::FakeGpu {
            let no = refuse(InferStatus::Refused, FAKE_GPU);
            let _ = responder.end(no, no_timings).await;
            return;
        }
        if fault == Fault::Silent {
            let _held = responder;
            std::future::pending::<()>().await;
            return;
        }
        let checked = InferCall::from_bytes(&call).ok().and_then(|call| {
            let request = Signed::<InferRequest>::from_bytes(&call.request).ok()?;
            let r = request.body();
            let fits = net::peer_id_of(&request.signer()) == Some(from)
                && r.provider == self.key.node_id()
                && r.max_price_per_mfuel >= PRICE_PER_MTOKEN
                && r.max_fuel >= 40;
            fits.then(|| (BlobHash::of(&call.request), r.model))
        });
        let Some((request, model)) = checked else {
            let no = refuse(InferStatus::Refused, "a call this liar does not take");
            let _ = responder.end(no, no_timings).await;
            return;
        };
        let text = "I ran nothing, and I say so at length.";
        if responder.text(text).await.is_err() {
            return;
        }
        let output = protocol::generate::GenerateOutput {
            text: match fault {
                Fault::BadHash => format!("{text} Or did I?"),
                _ => text.to_string(),
            },
            finish: protocol::generate::GenerateFinish::Stop,
            prompt_tokens: 10,
            generated_tokens: 10,
        }
        .to_bytes();
        let result = self.key.sign(InferResult {
            request,
            model,
            output_hash: BlobHash::of(&output),
            fuel: if fault == Fault::InflatedFuel { 40 } else { 20 },
            price_per_mfuel: PRICE_PER_MTOKEN,
            backend: "llama.cpp".into(),
        });
        let reply = InferReply {
            status: InferStatus::Ok,
            result: Some(result.to_bytes()),
            output: Some(output),
            message: None,
            cheque: None,
        };
        let _ = responder.end(reply, no_timings).await;
    }

    /// Answers one inbound call.
    async fn answer(&self, from: PeerId, call: Vec<u8>, reply: InferResponder) {
        let (fault, honest) = match self.lie {
            Lie::CorruptBlobs | Lie::WrongSizes => {
                let no = InferReply::error(
                    InferStatus::Refused,
                    "this node does not serve calls for peers",
                );
                reply.send(no.to_bytes());
                return;
            }
            Lie::Compute { fault, honest } => (fault, honest),
        };
        if fault == Fault::FakeGpu {
            reply.send(InferReply::error(InferStatus::Refused, FAKE_GPU).to_bytes());
            return;
        }
        if fault == Fault::Silent {
            // Keep the call open and say nothing until the caller gives up.
            let _held = reply;
            std::future::pending::<()>().await;
            return;
        }
        let answer = match self.copy_and_lie(from, &call, fault, honest).await {
            Ok(answer) => answer,
            Err((status, message)) => InferReply::error(status, message),
        };
        reply.send(answer.to_bytes());
    }

    /// Checks a call like a provider would, runs it on `honest` under the liar's own signed
    /// request, and answers with the honest outputs falsified by `fault`, signed by the liar.
    async fn copy_and_lie(
        &self,
        from: PeerId,
        call: &[u8],
        fault: Fault,
        honest: PeerId,
    ) -> Result<InferReply, Refusal> {
        let refused = |why: String| (InferStatus::Refused, why);
        let internal = |why: String| (InferStatus::Internal, why);
        let call = InferCall::from_bytes(call)
            .map_err(|e| (InferStatus::BadRequest, format!("malformed call: {e}")))?;
        let request = Signed::<InferRequest>::from_bytes(&call.request)
            .map_err(|e| refused(format!("request: {e}")))?;
        if net::peer_id_of(&request.signer()) != Some(from) {
            return Err(refused(
                "the request is not signed by the peer that sent it".into(),
            ));
        }
        let r = request.body();
        if r.provider != self.key.node_id() {
            return Err(refused(
                "the request is addressed to another provider".into(),
            ));
        }
        if r.max_price_per_mfuel < PRICE_PER_MFUEL {
            return Err(refused(format!(
                "price: this provider charges {PRICE_PER_MFUEL} per million fuel"
            )));
        }
        if BlobHash::of(&call.input) != r.input_hash {
            return Err((
                InferStatus::BadRequest,
                "the inputs do not match the signed input hash".into(),
            ));
        }
        let honest_node = net::node_id_of(&honest)
            .ok_or_else(|| internal(format!("{honest} has no ed25519 key in its id")))?;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| internal(format!("no randomness: {e}")))?;
        let ours = self.key.sign(InferRequest {
            model: r.model,
            input_hash: r.input_hash,
            max_fuel: r.max_fuel,
            max_price_per_mfuel: MAX_PRICE_PER_MFUEL,
            nonce,
            issued_ms: now_ms(),
            provider: honest_node,
        });
        let forwarded = InferCall {
            request: ours.to_bytes(),
            input: call.input.clone(),
            cheque: None,
        };
        self.reach(honest).await;
        let bytes =
            tokio::time::timeout(HONEST_TIMEOUT, self.net.infer(honest, forwarded.to_bytes()))
                .await
                .map_err(|_| internal(format!("{honest} did not answer in time")))?
                .map_err(|e| internal(format!("{honest}: {e}")))?;
        let copied = InferReply::from_bytes(&bytes)
            .map_err(|e| internal(format!("{honest}'s reply: {e}")))?;
        let (Some(result), Some(output)) = (copied.result.as_ref(), copied.output.as_ref()) else {
            // The honest provider refused or failed: pass its answer on.
            return Ok(copied);
        };
        let result = Signed::<InferResult>::from_bytes(result)
            .map_err(|e| internal(format!("{honest}'s result: {e}")))?;
        let (output, output_hash) =
            falsify(fault, output).map_err(|e| internal(format!("{honest}'s outputs: {e}")))?;
        let signed = self.key.sign(InferResult {
            request: BlobHash::of(&call.request),
            model: r.model,
            output_hash,
            fuel: if fault == Fault::InflatedFuel {
                result.body().fuel.saturating_mul(2).max(1)
            } else {
                result.body().fuel
            },
            price_per_mfuel: PRICE_PER_MFUEL,
            backend: result.body().backend.clone(),
        });
        Ok(InferReply {
            status: InferStatus::Ok,
            result: Some(signed.to_bytes()),
            output: Some(output),
            message: None,
            cheque: None,
        })
    }

    /// Connects to `peer` if it is not connected, through the addresses of its offer.
    async fn reach(&self, peer: PeerId) {
        let addrs = self
            .offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .cloned()
            .unwrap_or_default();
        self.net.reach(peer, &addrs).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::compute::WireTensor;

    #[test]
    fn corrupt_flips_one_byte_per_64_kib_however_the_writes_are_split() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for split in [1usize, 999, 1000, 1001, 65_536, 200_000] {
            let mut out = Vec::new();
            let mut w = Corrupt::new(&mut out);
            for piece in data.chunks(split) {
                w.write_all(piece).expect("write");
            }
            let flipped: Vec<usize> = (0..data.len()).filter(|&i| out[i] != data[i]).collect();
            assert_eq!(
                flipped,
                vec![1000, 66_536, 132_072, 197_608],
                "split {split}"
            );
        }
    }

    fn outputs() -> Vec<u8> {
        Outputs {
            tensors: vec![WireTensor {
                name: "out".into(),
                dtype: "BYTES".into(),
                shape: vec![1],
                data: b"\x04\0\0\0echo".to_vec(),
            }],
        }
        .to_bytes()
    }

    #[test]
    fn a_wrong_output_is_signed_consistently_a_bad_hash_is_not() {
        let honest = outputs();
        let (sent, signed) = falsify(Fault::WrongOutput, &honest).expect("outputs");
        assert_ne!(sent, honest);
        assert_eq!(
            signed,
            BlobHash::of(&sent),
            "consistent: only a comparison catches it"
        );
        let decoded = Outputs::from_bytes(&sent).expect("still valid outputs");
        assert_eq!(decoded.tensors[0].data, b"\x04\0\0\0ech/");

        let (sent, signed) = falsify(Fault::BadHash, &honest).expect("outputs");
        assert_eq!(signed, BlobHash::of(&honest), "the true hash");
        assert_ne!(signed, BlobHash::of(&sent), "not the hash of what is sent");
    }

    #[test]
    fn faults_parse_from_their_names() {
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>(), Ok(f));
        }
        assert!("lie".parse::<Fault>().is_err());
    }
}
