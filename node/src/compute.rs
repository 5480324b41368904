//! Compute sharing: a node serves inference calls for peers and calls peers for models it does
//! not run itself.
//!
//! - **Provider side** ([`handle_call`]): a call on `/moxnet/infer/1` carries a signed
//!   [`InferRequest`] and the OIP v2 request JSON. The provider checks the signature (signed by
//!   the peer that sent it), that it is addressed to this node, fresh, not replayed (nonce), at or
//!   above its price, the input hash, and the caller's share of the slots ([`PeerSlots`]); it
//!   fetches the model if it lacks it, runs it in the sandbox with the caller's fuel limit and
//!   returns the outputs with a signed [`InferResult`].
//! - **Offers** ([`offer_loop`]): a serving node announces a signed [`ComputeOffer`] on gossip
//!   and re-announces it before it expires. Callers keep them in an [`Offers`] table, dropped
//!   when expired, when the peer disconnects, or after repeated failures.
//! - **Caller side** ([`call`]): picks providers by price, measured latency, load and past
//!   failures ([`Offers::candidates`]), signs a request for one, verifies the signed result and
//!   the output hash, and moves to the next provider when one is busy, silent or dishonest.
//!   `verify` runs the call on two providers and compares their output hashes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graph::Tensor;
use net::libp2p::{Multiaddr, PeerId};
use protocol::compute::{
    ComputeOffer, InferCall, InferReply, InferRequest, InferResult, InferStatus,
    MAX_INFER_INPUT_BYTES, MAX_OFFER_ADDRS, MAX_OFFER_MODELS, Outputs,
};
use protocol::{BlobHash, ModelId, NodeId, Object, Signed};
use serde_json::{Value, json};

use crate::config::ComputeSection;
use crate::daemon::Node;
use crate::inference::{CallError, from_wire, oip_response, requested_outputs, to_wire};

/// How far a request's time may be from the provider's clock.
const REQUEST_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Consecutive failures after which a provider's offer is dropped.
const MAX_FAILURES: u32 = 3;
/// How long a failure weighs on a provider's score.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `[compute]` settings, resolved.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    /// Serve calls for peers and announce an offer.
    pub serve: bool,
    /// Price charged, per million fuel units.
    pub price_per_mfuel: u64,
    /// Between re-announcements.
    pub offer_interval: Duration,
    /// How long an offer stays valid.
    pub offer_ttl: Duration,
    /// Calls one peer may have here at once.
    pub per_peer_concurrent: usize,
    /// Highest price paid when calling peers.
    pub max_price_per_mfuel: u64,
    /// A provider's time for one call.
    pub call_timeout: Duration,
    /// Providers tried per call.
    pub attempts: usize,
}

impl From<&ComputeSection> for ComputeConfig {
    fn from(c: &ComputeSection) -> Self {
        let interval = c.offer_interval_secs.unwrap_or(30).max(1);
        ComputeConfig {
            serve: c.serve.unwrap_or(false),
            price_per_mfuel: c.price_per_mfuel.unwrap_or(1),
            offer_interval: Duration::from_secs(interval),
            // An offer outlives at least two re-announcements.
            offer_ttl: Duration::from_secs(c.offer_ttl_secs.unwrap_or(120).max(2 * interval)),
            per_peer_concurrent: c.per_peer_concurrent.unwrap_or(4).max(1),
            max_price_per_mfuel: c.max_price_per_mfuel.unwrap_or(100),
            call_timeout: Duration::from_secs(c.call_timeout_secs.unwrap_or(120).max(1)),
            attempts: c.attempts.unwrap_or(3).max(1),
        }
    }
}

/// What a caller measured about one provider.
#[derive(Debug, Clone, Default)]
struct Stats {
    /// Smoothed latency of successful calls, ms.
    latency_ms: Option<f64>,
    /// Calls from here running there now.
    in_flight: u32,
    /// Failures since the last success.
    failures: u32,
    /// When the last one happened.
    last_failure: Option<Instant>,
}

/// A provider's offer and what this node measured of it.
#[derive(Debug, Clone)]
struct Entry {
    offer: Signed<ComputeOffer>,
    peer: PeerId,
    stats: Stats,
}

/// A provider a call may go to.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its node id (the request is addressed to it).
    pub node: NodeId,
    /// Its peer id.
    pub peer: PeerId,
    /// Addresses from its offer.
    pub addrs: Vec<Multiaddr>,
    /// Its offered price per million fuel units (`None` when forced without an offer). The
    /// request caps the price at it, so a provider cannot charge more than it offered.
    pub price_per_mfuel: Option<u64>,
    /// Lower is better.
    pub score: f64,
}

/// How a call to a provider ended, for its stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered with a verified result.
    Ok(Duration),
    /// It was at capacity.
    Busy,
    /// It could not be reached, timed out, or failed on its side.
    Unavailable,
    /// It broke the protocol or lied: its offers are ignored from now on.
    Misbehaved,
    /// It ran the call, which failed deterministically (bad inputs, out of fuel, a trap): not
    /// the provider's fault.
    Failed,
}

/// The compute offers this node knows, with per-provider stats, and the ranking of providers.
#[derive(Debug, Default)]
pub struct Offers {
    by_node: HashMap<NodeId, Entry>,
    distrusted: HashSet<NodeId>,
}

impl Offers {
    /// Records an offer heard from `peer` (its signer's). Returns whether it was new or newer;
    /// expired offers, older ones and offers of distrusted providers are ignored.
    pub fn insert(&mut self, offer: Signed<ComputeOffer>, now_ms: u64) -> bool {
        let node = offer.signer();
        let Some(peer) = net::peer_id_of(&node) else {
            return false;
        };
        if offer.body().expires_ms <= now_ms || self.distrusted.contains(&node) {
            return false;
        }
        match self.by_node.get_mut(&node) {
            Some(e) if e.offer.body().issued_ms >= offer.body().issued_ms => false,
            Some(e) => {
                e.offer = offer;
                true
            }
            None => {
                self.by_node.insert(
                    node,
                    Entry {
                        offer,
                        peer,
                        stats: Stats::default(),
                    },
                );
                true
            }
        }
    }

    /// Drops the offer of a peer that went away.
    pub fn remove_peer(&mut self, peer: &PeerId) {
        self.by_node.retain(|_, e| e.peer != *peer);
    }

    /// Drops expired offers.
    pub fn prune(&mut self, now_ms: u64) {
        self.by_node
            .retain(|_, e| e.offer.body().expires_ms > now_ms);
    }

    /// Providers for `model` at or below `max_price`, best first. Offers listing the model rank
    /// ahead of equal ones that would have to fetch it.
    pub fn candidates(&self, model: ModelId, max_price: u64, now_ms: u64) -> Vec<Candidate> {
        let now = Instant::now();
        let mut list: Vec<Candidate> = self
            .by_node
            .iter()
            .filter(|(_, e)| {
                e.offer.body().expires_ms > now_ms && e.offer.body().price_per_mfuel <= max_price
            })
            .map(|(node, e)| {
                let o = e.offer.body();
                Candidate {
                    node: *node,
                    peer: e.peer,
                    addrs: o.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
                    price_per_mfuel: Some(o.price_per_mfuel),
                    score: score(o, &e.stats, model, now),
                }
            })
            .collect();
        list.sort_by(|a, b| a.score.total_cmp(&b.score).then(a.node.cmp(&b.node)));
        list
    }

    /// A call to `node` starts.
    pub fn started(&mut self, node: &NodeId) {
        if let Some(e) = self.by_node.get_mut(node) {
            e.stats.in_flight += 1;
        }
    }

    /// A call to `node` ended.
    pub fn finished(&mut self, node: &NodeId, outcome: Outcome) {
        if outcome == Outcome::Misbehaved {
            self.distrusted.insert(*node);
            self.by_node.remove(node);
            return;
        }
        let Some(e) = self.by_node.get_mut(node) else {
            return;
        };
        let s = &mut e.stats;
        s.in_flight = s.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Ok(took) => {
                let ms = took.as_secs_f64() * 1e3;
                s.latency_ms = Some(s.latency_ms.map_or(ms, |l| 0.8 * l + 0.2 * ms));
                s.failures = 0;
            }
            // Load is normal: the in-flight count already weighs on the score.
            Outcome::Busy => {}
            Outcome::Unavailable => {
                s.failures += 1;
                s.last_failure = Some(Instant::now());
                if s.failures >= MAX_FAILURES {
                    self.by_node.remove(node);
                }
            }
            Outcome::Failed | Outcome::Misbehaved => {}
        }
    }

    /// Whether `node` was caught misbehaving.
    #[cfg(test)]
    pub fn is_distrusted(&self, node: &NodeId) -> bool {
        self.distrusted.contains(node)
    }

    /// The offers and stats, for the API.
    pub fn views(&self, now_ms: u64) -> Vec<api::dto::OfferView> {
        let mut list: Vec<&Entry> = self.by_node.values().collect();
        list.sort_by_key(|e| e.peer.to_string());
        list.into_iter()
            .map(|e| {
                let o = e.offer.body();
                api::dto::OfferView {
                    node_id: e.offer.signer().to_string(),
                    peer_id: e.peer.to_string(),
                    cores: o.cores,
                    memory_mib: o.memory_mib,
                    gpus: o.gpus.clone(),
                    backends: o.backends.clone(),
                    models: o.models.iter().map(|m| m.to_string()).collect(),
                    max_concurrent: o.max_concurrent,
                    price_per_mfuel: o.price_per_mfuel,
                    expires_in_s: o.expires_ms.saturating_sub(now_ms) / 1000,
                    latency_ms: e.stats.latency_ms,
                    in_flight: e.stats.in_flight,
                    failures: e.stats.failures,
                }
            })
            .collect()
    }
}

/// A provider's score for a call (lower is better), in milliseconds of expected delay: measured
/// latency (50 ms until measured), stretched by the load this node puts on it, plus the price
/// (10 ms per credit per million fuel), a fetch if it lacks the model, and recent failures.
fn score(offer: &ComputeOffer, stats: &Stats, model: ModelId, now: Instant) -> f64 {
    let latency = stats.latency_ms.unwrap_or(50.0);
    let load = 1.0 + f64::from(stats.in_flight) / offer.max_concurrent.max(1) as f64;
    let price = offer.price_per_mfuel as f64 * 10.0;
    let fetch = if offer.models.contains(&model) {
        0.0
    } else {
        500.0
    };
    let recent = stats
        .last_failure
        .is_some_and(|t| now.duration_since(t) < FAILURE_MEMORY);
    let failures = if recent {
        f64::from(stats.failures) * 1000.0
    } else {
        0.0
    };
    latency * load + price + fetch + failures
}

/// Nonces of requests this provider accepted, remembered for the request window: a request is
/// run at most once.
#[derive(Debug, Default)]
pub struct Nonces {
    seen: HashMap<(NodeId, [u8; 16]), u64>,
}

impl Nonces {
    /// Accepts a request (`issued_ms`, `nonce` from `caller`) once, if it is within the window
    /// around `now_ms`; explains a refusal.
    pub fn accept(
        &mut self,
        caller: NodeId,
        nonce: [u8; 16],
        issued_ms: u64,
        now_ms: u64,
    ) -> Result<(), String> {
        if issued_ms + REQUEST_WINDOW_MS < now_ms || issued_ms > now_ms + REQUEST_WINDOW_MS {
            return Err(format!(
                "the request was made {} s from this provider's clock (at most {} s allowed)",
                (now_ms as i128 - issued_ms as i128).abs() / 1000,
                REQUEST_WINDOW_MS / 1000
            ));
        }
        // Entries older than the window can no longer be replayed (they would be stale).
        if self.seen.len() >= 1024 {
            self.seen
                .retain(|_, issued| *issued + REQUEST_WINDOW_MS >= now_ms);
        }
        match self.seen.entry((caller, nonce)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err("replayed request: this nonce was used already".into())
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(issued_ms);
                Ok(())
            }
        }
    }
}

/// Per-caller slots on a provider: one greedy caller cannot take every slot.
#[derive(Debug)]
pub struct PeerSlots {
    limit: usize,
    used: Mutex<HashMap<NodeId, usize>>,
}

/// A taken slot; released when dropped.
pub struct Slot<'a> {
    slots: &'a PeerSlots,
    caller: NodeId,
}

impl PeerSlots {
    /// `limit` calls per caller.
    pub fn new(limit: usize) -> PeerSlots {
        PeerSlots {
            limit,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for `caller`, or `None` when it has `limit` already.
    pub fn take(&self, caller: NodeId) -> Option<Slot<'_>> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let n = used.entry(caller).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self,
            caller,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut used = self.slots.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = used.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                used.remove(&self.caller);
            }
        }
    }
}

/// The node's compute-sharing state.
pub struct Compute {
    /// Settings.
    pub config: ComputeConfig,
    /// Offers heard.
    pub offers: Mutex<Offers>,
    nonces: Mutex<Nonces>,
    slots: PeerSlots,
}

impl Compute {
    /// Compute sharing with `config`.
    pub fn new(config: ComputeConfig) -> Compute {
        Compute {
            slots: PeerSlots::new(config.per_peer_concurrent),
            config,
            offers: Mutex::new(Offers::default()),
            nonces: Mutex::new(Nonces::default()),
        }
    }

    /// The offers table, locked.
    pub fn offers(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.offers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Answers one inbound call (see the module docs for the checks).
pub async fn handle_call(node: Arc<Node>, from: PeerId, call: Vec<u8>) -> InferReply {
    let refuse = |status, message: String| InferReply::error(status, message);
    let call = match InferCall::from_bytes(&call) {
        Ok(c) => c,
        Err(e) => return refuse(InferStatus::BadRequest, format!("malformed call: {e}")),
    };
    let request = match Signed::<InferRequest>::from_bytes(&call.request) {
        Ok(r) => r,
        Err(e) => return refuse(InferStatus::Refused, format!("request: {e}")),
    };
    let compute = &node.compute;
    let caller = request.signer();
    if net::peer_id_of(&caller) != Some(from) {
        return refuse(
            InferStatus::Refused,
            format!("the request is signed by {caller}, not by the peer that sent it"),
        );
    }
    let r = request.body();
    if r.provider != node.home.key.node_id() {
        return refuse(
            InferStatus::Refused,
            "the request is addressed to another provider".into(),
        );
    }
    if !compute.config.serve {
        return refuse(
            InferStatus::Refused,
            "this node does not serve calls for peers".into(),
        );
    }
    if r.max_price_per_mfuel < compute.config.price_per_mfuel {
        return refuse(
            InferStatus::Refused,
            format!(
                "price: this provider charges {} per million fuel, the request allows {}",
                compute.config.price_per_mfuel, r.max_price_per_mfuel
            ),
        );
    }
    if BlobHash::of(&call.input) != r.input_hash {
        return refuse(
            InferStatus::BadRequest,
            "the inputs do not match the signed input hash".into(),
        );
    }
    let accepted = compute
        .nonces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .accept(caller, r.nonce, r.issued_ms, now_ms());
    if let Err(why) = accepted {
        return refuse(InferStatus::Refused, why);
    }
    let Some(_slot) = compute.slots.take(caller) else {
        return refuse(
            InferStatus::Busy,
            format!(
                "this caller already has {} calls here",
                compute.config.per_peer_concurrent
            ),
        );
    };
    let input: Value = match serde_json::from_slice(&call.input) {
        Ok(v) => v,
        Err(e) => return refuse(InferStatus::BadRequest, format!("inputs are not JSON: {e}")),
    };
    let model = match crate::daemon::ensure_loaded(&node, r.model).await {
        Ok(m) => m,
        Err(e) if e.status == 404 => return refuse(InferStatus::NotFound, e.message),
        Err(e) => return refuse(InferStatus::Internal, e.message),
    };
    let worker = node.clone();
    let max_fuel = r.max_fuel;
    let ran =
        tokio::task::spawn_blocking(move || worker.inference.run(&model, &input, Some(max_fuel)))
            .await;
    let outcome = match ran {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            let status = match e.status {
                400 => InferStatus::BadRequest,
                503 => InferStatus::Busy,
                _ => InferStatus::Failed,
            };
            return refuse(status, e.message);
        }
        Err(e) => return refuse(InferStatus::Internal, format!("the call failed: {e}")),
    };
    node.metrics.fuel.inc_by(outcome.fuel);
    let output = to_wire(&outcome.outputs).to_bytes();
    let output_hash = BlobHash::of(&output);
    let result = node.home.key.sign(InferResult {
        request: BlobHash::of(&call.request),
        model: r.model,
        output_hash,
        fuel: outcome.fuel,
        price_per_mfuel: compute.config.price_per_mfuel,
        backend: node.inference.engine(&outcome),
    });
    InferReply {
        status: InferStatus::Ok,
        result: Some(result.to_bytes()),
        output: Some(output),
        message: None,
    }
}

/// This machine's GPUs, from the NVIDIA driver's `/proc` entries (empty without one).
fn gpus() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("information")).ok())
        .map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("Model:"))
                .map_or_else(|| "NVIDIA GPU".to_string(), |m| m.trim().to_string())
        })
        .take(16)
        .collect()
}

/// Total memory, MiB, from `/proc/meminfo` (0 if unknown).
fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// This node's current offer, signed.
pub async fn make_offer(node: &Arc<Node>) -> Signed<ComputeOffer> {
    let mut models = node.home.catalog.local_models();
    models.truncate(MAX_OFFER_MODELS);
    let mut backends = vec!["wasm".to_string()];
    if let Some(b) = node.inference.backend() {
        backends.push(b.to_string());
    }
    let issued_ms = now_ms();
    let mut addrs = node.listen_addrs();
    addrs.truncate(MAX_OFFER_ADDRS);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    node.home.key.sign(ComputeOffer {
        issued_ms,
        expires_ms: issued_ms + node.compute.config.offer_ttl.as_millis() as u64,
        cores,
        memory_mib: memory_mib(),
        gpus: gpus(),
        backends,
        models,
        max_concurrent: node.inference.max_concurrent() as u64,
        price_per_mfuel: node.compute.config.price_per_mfuel,
        addrs,
    })
}

/// Announces this node's offer now and every `offer_interval` (a serving node only).
pub async fn offer_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.compute.config.offer_interval);
    loop {
        tick.tick().await;
        let offer = make_offer(&node).await;
        // No peers yet is fine: the next round reaches them.
        let _ = node.net.announce_offer(offer.to_bytes()).await;
        node.compute.offers().prune(now_ms());
    }
}

/// How a caller wants a call run.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Only this provider.
    pub on: Option<PeerId>,
    /// Run on two providers and compare their output hashes.
    pub verify: bool,
}

/// A verified answer from one provider.
struct Answer {
    peer: PeerId,
    result: Signed<InferResult>,
    tensors: Vec<Tensor>,
    elapsed: Duration,
}

/// Why one attempt failed.
enum Failure {
    /// Try another provider.
    Retry(Outcome, String),
    /// The same call fails everywhere: stop.
    Final(CallError),
}

/// Whether `peer` is connected; if not, dials the addresses it offered.
async fn reach(node: &Arc<Node>, peer: PeerId, addrs: &[Multiaddr]) {
    if node
        .net
        .peers()
        .await
        .is_ok_and(|peers| peers.contains(&peer))
    {
        return;
    }
    for addr in addrs {
        if matches!(
            tokio::time::timeout(Duration::from_secs(5), node.net.dial(addr.clone())).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// One signed call to one provider, verified.
async fn attempt(
    node: &Arc<Node>,
    to: &Candidate,
    model: ModelId,
    input: &[u8],
    max_price: u64,
) -> Result<Answer, Failure> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| {
        Failure::Final(CallError::new(
            500,
            format!("no randomness for a nonce: {e}"),
        ))
    })?;
    let max_fuel = node.inference.max_fuel();
    let max_price = to.price_per_mfuel.map_or(max_price, |p| p.min(max_price));
    let request = node.home.key.sign(InferRequest {
        model,
        input_hash: BlobHash::of(input),
        max_fuel,
        max_price_per_mfuel: max_price,
        nonce,
        issued_ms: now_ms(),
        provider: to.node,
    });
    let request_bytes = request.to_bytes();
    let call = InferCall {
        request: request_bytes.clone(),
        input: input.to_vec(),
    }
    .to_bytes();
    let started = Instant::now();
    reach(node, to.peer, &to.addrs).await;
    let timeout = node.compute.config.call_timeout;
    let reply = match tokio::time::timeout(timeout, node.net.infer(to.peer, call)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(Failure::Retry(Outcome::Unavailable, e.to_string())),
        Err(_) => {
            return Err(Failure::Retry(
                Outcome::Unavailable,
                format!("no answer within {} s", timeout.as_secs()),
            ));
        }
    };
    let elapsed = started.elapsed();
    let misbehaved = |why: String| Failure::Retry(Outcome::Misbehaved, why);
    let reply = InferReply::from_bytes(&reply).map_err(|e| misbehaved(format!("reply: {e}")))?;
    let message = reply.message.clone().unwrap_or_default();
    match reply.status {
        InferStatus::Ok => {}
        InferStatus::Busy => return Err(Failure::Retry(Outcome::Busy, message)),
        InferStatus::NotFound | InferStatus::Internal | InferStatus::Refused => {
            return Err(Failure::Retry(Outcome::Unavailable, message));
        }
        InferStatus::BadRequest => return Err(Failure::Final(CallError::new(400, message))),
        InferStatus::Failed => return Err(Failure::Final(CallError::new(500, message))),
    }
    let (Some(result), Some(output)) = (reply.result, reply.output) else {
        return Err(misbehaved("an ok reply without a result".into()));
    };
    let result = Signed::<InferResult>::from_bytes(&result)
        .map_err(|e| misbehaved(format!("signed result: {e}")))?;
    let r = result.body();
    if result.signer() != to.node {
        return Err(misbehaved(format!(
            "the result is signed by {}, not by the provider",
            result.signer()
        )));
    }
    if r.request != BlobHash::of(&request_bytes) || r.model != model {
        return Err(misbehaved(
            "the signed result answers another request".into(),
        ));
    }
    if r.output_hash != BlobHash::of(&output) {
        return Err(misbehaved(
            "the outputs do not match the signed output hash".into(),
        ));
    }
    if r.fuel > max_fuel || r.price_per_mfuel > max_price {
        return Err(misbehaved(format!(
            "the result claims fuel {} at price {}, above the request's limits",
            r.fuel, r.price_per_mfuel
        )));
    }
    let outputs = Outputs::from_bytes(&output).map_err(|e| misbehaved(format!("outputs: {e}")))?;
    let tensors = from_wire(outputs).map_err(misbehaved)?;
    Ok(Answer {
        peer: to.peer,
        result,
        tensors,
        elapsed,
    })
}

/// Runs a call on providers in `order`, at most `attempts` of them per round, until one
/// answers. When some were only busy, waits (exponential backoff with jitter) and tries another
/// round, until the call timeout: a burst of calls queues here instead of failing.
async fn first_answer(
    node: &Arc<Node>,
    mut order: Vec<Candidate>,
    model: ModelId,
    input: &[u8],
    max_price: u64,
) -> Result<Answer, CallError> {
    let attempts = node.compute.config.attempts;
    let deadline = Instant::now() + node.compute.config.call_timeout;
    let mut backoff = Duration::from_millis(10);
    loop {
        let mut reasons = Vec::new();
        let mut any_busy = false;
        let mut gone = HashSet::new();
        for to in order.iter().take(attempts) {
            node.compute.offers().started(&to.node);
            let result = attempt(node, to, model, input, max_price).await;
            let outcome = match &result {
                Ok(a) => Outcome::Ok(a.elapsed),
                Err(Failure::Retry(o, _)) => *o,
                Err(Failure::Final(_)) => Outcome::Failed,
            };
            node.compute.offers().finished(&to.node, outcome);
            match result {
                Ok(answer) => return Ok(answer),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry(outcome, why)) => {
                    any_busy |= outcome == Outcome::Busy;
                    if outcome != Outcome::Busy {
                        gone.insert(to.node);
                    }
                    reasons.push(format!("{}: {why}", to.peer));
                }
            }
        }
        let retry = any_busy && Instant::now() + backoff < deadline;
        if !retry {
            return Err(if any_busy {
                CallError::new(
                    503,
                    format!("every provider stayed busy ({})", reasons.join("; ")),
                )
            } else {
                CallError::new(
                    502,
                    format!("no provider could run the call: {}", reasons.join("; ")),
                )
            });
        }
        let mut jitter = [0u8; 1];
        let _ = getrandom::fill(&mut jitter);
        tokio::time::sleep(backoff + backoff * u32::from(jitter[0]) / 255).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
        // Only the busy ones are worth another try; keep the ranking's order.
        order.retain(|c| !gone.contains(&c.node));
    }
}

/// Whether this node knows an offer it could send `model` to.
pub fn has_providers(node: &Node, model: ModelId) -> bool {
    !node
        .compute
        .offers()
        .candidates(model, node.compute.config.max_price_per_mfuel, now_ms())
        .is_empty()
}

/// Runs an OIP v2 request for `model` on peers and returns the OIP response, with the
/// provider, its signed result and the fuel in `parameters`.
pub async fn call(
    node: &Arc<Node>,
    model: ModelId,
    request: &Value,
    options: &CallOptions,
) -> Result<Value, CallError> {
    let wanted = requested_outputs(request)?;
    let input = serde_json::to_vec(request)
        .map_err(|e| CallError::new(400, format!("the request cannot be encoded: {e}")))?;
    if input.len() > MAX_INFER_INPUT_BYTES {
        return Err(CallError::new(
            413,
            format!(
                "the inputs are {} bytes; a remote call takes at most {MAX_INFER_INPUT_BYTES}",
                input.len()
            ),
        ));
    }
    let max_price = node.compute.config.max_price_per_mfuel;
    let mut order = node.compute.offers().candidates(model, max_price, now_ms());
    if let Some(peer) = options.on {
        let node_id = net::node_id_of(&peer)
            .ok_or_else(|| CallError::new(400, format!("{peer} has no ed25519 key in its id")))?;
        order.retain(|c| c.peer == peer);
        if order.is_empty() {
            order.push(Candidate {
                node: node_id,
                peer,
                addrs: Vec::new(),
                price_per_mfuel: None,
                score: 0.0,
            });
        }
    }
    if order.is_empty() {
        return Err(CallError::new(
            503,
            format!("no provider offers compute at or below {max_price} per million fuel"),
        ));
    }
    let version = crate::inference::local_manifest(&node.home.catalog, model)
        .map(|m| m.body().version.clone())
        .unwrap_or_default();
    if options.verify {
        if order.len() < 2 {
            return Err(CallError::new(
                503,
                "--verify needs two providers; this node knows one",
            ));
        }
        // The best provider, and the rest for the second opinion.
        let others = order.split_off(1);
        let (a, b) = tokio::join!(
            first_answer(node, order, model, &input, max_price),
            first_answer(node, others, model, &input, max_price)
        );
        let (a, b) = (a?, b?);
        if a.result.body().output_hash != b.result.body().output_hash {
            let evidence = |x: &Answer| {
                json!({
                    "provider": x.peer.to_string(),
                    "output_hash": x.result.body().output_hash.to_string(),
                    "fuel": x.result.body().fuel,
                    "result": hex::encode(x.result.to_bytes()),
                })
            };
            let mut e = CallError::new(
                502,
                format!(
                    "providers disagree: {} returned outputs {}, {} returned {}",
                    a.peer,
                    a.result.body().output_hash,
                    b.peer,
                    b.result.body().output_hash
                ),
            );
            e.details = Some(json!({ "results": [evidence(&a), evidence(&b)] }));
            return Err(e);
        }
        let verified_by = [a.peer.to_string(), b.peer.to_string()];
        let mut v = respond(model, &version, request, &a, wanted.as_deref());
        v["parameters"]["verified_by"] = json!(verified_by);
        return Ok(v);
    }
    let answer = first_answer(node, order, model, &input, max_price).await?;
    Ok(respond(
        model,
        &version,
        request,
        &answer,
        wanted.as_deref(),
    ))
}

fn respond(
    model: ModelId,
    version: &str,
    request: &Value,
    a: &Answer,
    wanted: Option<&[String]>,
) -> Value {
    let r = a.result.body();
    oip_response(
        &model.to_string(),
        version,
        request,
        &a.tensors,
        wanted,
        json!({
            "fuel": r.fuel,
            "elapsed_ms": a.elapsed.as_secs_f64() * 1e3,
            "provider": a.peer.to_string(),
            "backend": r.backend,
            "price_per_mfuel": r.price_per_mfuel,
            "output_hash": r.output_hash.to_string(),
            "result": hex::encode(a.result.to_bytes()),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::SecretKey;

    fn offer(seed: u8, issued: u64, price: u64, models: Vec<ModelId>) -> Signed<ComputeOffer> {
        SecretKey::from_seed(&[seed; 32]).sign(ComputeOffer {
            issued_ms: issued,
            expires_ms: issued + 60_000,
            cores: 2,
            max_concurrent: 2,
            price_per_mfuel: price,
            models,
            backends: vec!["wasm".into()],
            ..ComputeOffer::default()
        })
    }

    fn model() -> ModelId {
        ModelId(BlobHash::of(b"m"))
    }

    #[test]
    fn newer_offers_replace_older_and_expired_ones_go() {
        let mut offers = Offers::default();
        assert!(offers.insert(offer(1, 1000, 1, vec![]), 1000));
        assert!(!offers.insert(offer(1, 900, 1, vec![]), 1000), "older");
        assert!(offers.insert(offer(1, 2000, 5, vec![]), 2000), "newer");
        let c = offers.candidates(model(), 100, 2000);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].price_per_mfuel, Some(5));
        assert!(!offers.insert(offer(2, 0, 1, vec![]), 70_000), "expired");
        offers.prune(62_001);
        assert!(offers.candidates(model(), 100, 2000).is_empty());
    }

    #[test]
    fn ranking_prefers_cheap_local_and_healthy_providers() {
        let mut offers = Offers::default();
        offers.insert(offer(1, 1, 1, vec![]), 1);
        offers.insert(offer(2, 1, 1, vec![model()]), 1);
        offers.insert(offer(3, 1, 1000, vec![model()]), 1);
        let order: Vec<NodeId> = offers
            .candidates(model(), 100, 1)
            .iter()
            .map(|c| c.node)
            .collect();
        let id = |s: u8| SecretKey::from_seed(&[s; 32]).node_id();
        assert_eq!(
            order,
            vec![id(2), id(1)],
            "has the model first; too dear left out"
        );
        offers.started(&id(2));
        offers.finished(&id(2), Outcome::Unavailable);
        assert_eq!(offers.candidates(model(), 100, 1)[0].node, id(1));
        offers.started(&id(1));
        offers.finished(&id(1), Outcome::Misbehaved);
        assert!(offers.is_distrusted(&id(1)));
        assert!(
            !offers.insert(offer(1, 5, 1, vec![]), 5),
            "a liar's new offers are ignored"
        );
        for _ in 0..MAX_FAILURES {
            offers.finished(&id(2), Outcome::Unavailable);
        }
        assert!(
            offers.candidates(model(), 100, 1).is_empty(),
            "unreachable dropped"
        );
    }

    #[test]
    fn a_nonce_is_accepted_once_and_stale_requests_never() {
        let caller = SecretKey::from_seed(&[1; 32]).node_id();
        let mut n = Nonces::default();
        let now = 10 * REQUEST_WINDOW_MS;
        assert!(n.accept(caller, [1; 16], now, now).is_ok());
        assert!(
            n.accept(caller, [1; 16], now, now)
                .expect_err("a replay")
                .contains("replayed")
        );
        assert!(
            n.accept(caller, [2; 16], now - REQUEST_WINDOW_MS - 1, now)
                .is_err()
        );
        assert!(
            n.accept(caller, [3; 16], now + REQUEST_WINDOW_MS + 1, now)
                .is_err()
        );
        // Old entries are forgotten once they can only be stale.
        for i in 0..2000u32 {
            let mut nonce = [0; 16];
            nonce[..4].copy_from_slice(&i.to_le_bytes());
            n.accept(caller, nonce, now, now).expect("fresh");
        }
        let later = now + 2 * REQUEST_WINDOW_MS;
        n.accept(caller, [9; 16], later, later).expect("fresh");
        n.accept(caller, [8; 16], later, later).expect("fresh");
        assert!(n.seen.len() < 1100, "{}", n.seen.len());
    }

    #[test]
    fn each_caller_gets_its_own_slots() {
        let slots = PeerSlots::new(2);
        let a = SecretKey::from_seed(&[1; 32]).node_id();
        let b = SecretKey::from_seed(&[2; 32]).node_id();
        let a1 = slots.take(a).expect("a1");
        let _a2 = slots.take(a).expect("a2");
        assert!(slots.take(a).is_none(), "a is at its limit");
        assert!(slots.take(b).is_some(), "b is not starved");
        drop(a1);
        assert!(slots.take(a).is_some(), "released");
    }

    proptest! {
        /// Whatever happened, the ranking never offers an expired, too dear or distrusted
        /// provider, never lists one twice, and is sorted by score.
        #[test]
        fn candidates_respect_price_expiry_and_trust(
            events in prop::collection::vec((1u8..6, 0u64..5000, 0u64..20, 0u8..5), 1..60),
            max_price in 0u64..20,
            now in 0u64..70_000,
        ) {
            let mut offers = Offers::default();
            for (seed, issued, price, what) in events {
                let node = SecretKey::from_seed(&[seed; 32]).node_id();
                match what {
                    0 => { offers.insert(offer(seed, issued, price, vec![]), issued); }
                    1 => { offers.started(&node); offers.finished(&node, Outcome::Ok(Duration::from_millis(price))); }
                    2 => { offers.started(&node); offers.finished(&node, Outcome::Unavailable); }
                    3 => { offers.started(&node); offers.finished(&node, Outcome::Busy); }
                    _ => { offers.started(&node); offers.finished(&node, Outcome::Misbehaved); }
                }
            }
            let list = offers.candidates(model(), max_price, now);
            let mut seen = HashSet::new();
            for w in list.windows(2) {
                prop_assert!(w[0].score <= w[1].score);
            }
            for c in &list {
                prop_assert!(c.price_per_mfuel.is_some_and(|p| p <= max_price));
                prop_assert!(!offers.is_distrusted(&c.node));
                prop_assert!(seen.insert(c.node));
                let e = &offers.by_node[&c.node];
                prop_assert!(e.offer.body().expires_ms > now);
            }
        }
    }
}
