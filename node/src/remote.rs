//! Calls between peers, wired: a node serves inference calls for peers and calls peers for models
//! it does not run itself. The decisions (which provider, what to check, what a reply means)
//! are the `compute` crate's and the state is `compute.rs`'s; this module does the I/O around
//! them: the network, the sandbox, fetching a model, the clock, randomness, signing.
//!
//! - **Provider side** ([`Remote::serve`]): a call on `/moxnet/infer/1` carries a signed
//!   [`InferRequest`] and the OIP v2 request JSON. [`compute::check_call`] checks it (signed by
//!   the peer that sent it, addressed to this node, serving, at or above its price, the input
//!   hash), then [`compute::Nonces`] (fresh, not replayed) and the caller's share of the slots
//!   ([`compute::CallerSlots`]); the node fetches the model if it lacks it, runs it in the sandbox with
//!   the caller's fuel limit and returns the outputs with a signed [`InferResult`]. A model
//!   fetched for a peer's call is held by the call cache (`crate::cache`), not pinned for good.
//! - **Offers** ([`Remote::offer_loop`]): a serving node announces a signed [`ComputeOffer`] on gossip
//!   and re-announces it before it expires. Callers keep them in a [`compute::Offers`] table, dropped
//!   when expired, when the peer disconnects, or after repeated failures.
//! - **Caller side** ([`Remote::call`]): picks providers by price, measured latency, load and past
//!   failures ([`compute::Offers::candidates`]), signs a request for one, has
//!   [`compute::check_reply`] verify the signed result and the output hash, and moves to the
//!   next provider when one is busy, silent or dishonest. `verify` runs the call on two
//!   providers and compares their output hashes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::dto::OfferList;
use api::oip::{InferRequest as OipRequest, InferResponse};
use catalog::Catalog;
use compute::{Candidate, CheckedCall, Outcome, ReplyError};
use credits::{Accepted, Credits, CreditsError, PayWhen, Reservation, Side};
use graph::Tensor;
use net::libp2p::{Multiaddr, PeerId};
use protocol::compute::{
    ComputeOffer, InferCall, InferReply, InferRequest, InferResult, InferStatus,
    MAX_INFER_INPUT_BYTES, MAX_OFFER_ADDRS, MAX_OFFER_MODELS,
};
use protocol::credits::{Cheque, CreditsAnswer, CreditsRequest, MAX_RECEIPTS_PER_ANSWER};
use protocol::{BlobHash, ModelId, NodeId, Object, SecretKey, Signed};
use serde_json::{Value, json};
use store::Holder;

use crate::cache::{CallCache, Evicted};
use crate::compute::{Compute, now_ms};
use crate::inference::{CallError, from_wire, parameters, response, to_wire};
use crate::metrics::{self, Metrics, Place};
use crate::models::Runtime;

/// Compute sharing between peers: serves calls, announces offers, calls providers.
pub struct Remote {
    pub(crate) key: Arc<SecretKey>,
    pub(crate) net: net::Client,
    pub(crate) compute: Compute,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) catalog: Arc<Catalog>,
    cache: Arc<CallCache>,
    pub(crate) metrics: Arc<Metrics>,
    credits: Arc<Credits>,
    pub(crate) spend_limit: u64,
    settle_every: Duration,
    /// The cheque for each provider's next call, signed after the last one ended (see
    /// [`Remote::cheque_to_send`]); at most [`MAX_PREPARED`] providers.
    prepared: Arc<Mutex<HashMap<NodeId, Signed<Cheque>>>>,
}

/// How many providers' next cheques a caller keeps signed in advance (about 400 bytes each).
const MAX_PREPARED: usize = 1024;

/// A call's reservation of credit, given back if the call ends without a receipt.
pub(crate) struct Held<'a> {
    credits: &'a Credits,
    reservation: Option<Reservation>,
}

impl Held<'_> {
    fn take(mut self) -> Option<Reservation> {
        self.reservation.take()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.credits.release(r);
        }
    }
}

/// Why a cheque that came with a call was not taken.
enum ChequeRefused {
    /// The cheque itself was refused: the answer is `PaymentRequired`.
    Payment(String),
    /// Another failure, with the status to answer.
    Other(InferStatus, String),
}

/// Takes a cheque from `from` (with a call, or on settling): checked, and on disk before this
/// returns (a signature check and a journal write, tens of microseconds); counted.
fn take_cheque(
    credits: &Credits,
    metrics: &Metrics,
    from: &PeerId,
    cheque: &[u8],
) -> Result<(), ChequeRefused> {
    match credits.accept_cheque(cheque) {
        Ok((_, Accepted::New { calls, royalties })) => {
            metrics.cheque("received", "new");
            tracing::debug!(peer = %from, calls, royalties, "took a cheque");
            Ok(())
        }
        Ok((_, Accepted::Stale)) => {
            metrics.cheque("received", "stale");
            Ok(())
        }
        Err(CreditsError::Cheque(e)) => {
            metrics.cheque("received", "refused");
            Err(ChequeRefused::Payment(format!(
                "your cheque was refused: {e}"
            )))
        }
        Err(CreditsError::Store(e)) => {
            tracing::error!("credits: {e}");
            Err(ChequeRefused::Other(
                InferStatus::Internal,
                format!("the provider's ledger: {e}"),
            ))
        }
        Err(e) => {
            metrics.cheque("received", "refused");
            Err(ChequeRefused::Other(
                InferStatus::Refused,
                format!("cheque: {e}"),
            ))
        }
    }
}

/// A cheque that came with a call admitted without it: taken when the call's answer is made
/// (dropped), on a blocking thread, so that it costs the call nothing. A refused one is logged;
/// the caller's debt stays, and its next call past the limit is answered `PaymentRequired` with
/// the newest cheque held from it.
struct LaterCheque {
    credits: Arc<Credits>,
    metrics: Arc<Metrics>,
    from: PeerId,
    cheque: Option<Vec<u8>>,
}

impl Drop for LaterCheque {
    fn drop(&mut self) {
        let Some(cheque) = self.cheque.take() else {
            return;
        };
        let (credits, metrics, from) = (self.credits.clone(), self.metrics.clone(), self.from);
        let take = move || {
            if let Err(ChequeRefused::Payment(why) | ChequeRefused::Other(_, why)) =
                take_cheque(&credits, &metrics, &from, &cheque)
            {
                tracing::warn!(peer = %from, "a cheque that came with a call: {why}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(take)),
            Err(_) => take(),
        }
    }
}

impl Remote {
    /// The service: `key` signs requests, results, offers and cheques; `runtime` runs served
    /// calls; `credits` books every call between peers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: Arc<SecretKey>,
        net: net::Client,
        compute: Compute,
        runtime: Arc<Runtime>,
        catalog: Arc<Catalog>,
        cache: Arc<CallCache>,
        metrics: Arc<Metrics>,
        credits: Arc<Credits>,
        spend_limit: u64,
        settle_every: Duration,
    ) -> Remote {
        metrics.call_cache_bytes.set(cache.bytes() as i64);
        Remote {
            key,
            net,
            compute,
            runtime,
            catalog,
            cache,
            metrics,
            credits,
            spend_limit,
            settle_every,
            prepared: Arc::default(),
        }
    }

    /// The node's credits.
    pub fn credits(&self) -> &Credits {
        &self.credits
    }

    /// The most this node pays one peer beyond what that peer's calls here cost.
    pub fn spend_limit(&self) -> u64 {
        self.spend_limit
    }

    /// Whether this node serves calls for peers.
    pub fn serving(&self) -> bool {
        self.compute.config.serve
    }

    /// Keeps a peer's offer (not this node's own).
    pub fn offer_heard(&self, offer: Signed<ComputeOffer>) {
        if offer.signer() != self.key.node_id() {
            self.compute.offers().insert(offer, now_ms());
        }
    }

    /// A peer connected: its offers rank among the vouched.
    pub fn peer_joined(&self, peer: &PeerId) {
        self.compute.peer_joined(peer);
    }

    /// Forgets the offer of a peer that disconnected.
    pub fn peer_left(&self, peer: &PeerId) {
        self.compute.peer_left(peer);
    }

    /// The offers heard, for the API.
    pub fn offers(&self) -> OfferList {
        let now = now_ms();
        let mut offers = self.compute.offers();
        offers.prune(now);
        OfferList {
            serving: self.serving(),
            offers: crate::compute::offer_views(&offers, now),
        }
    }

    /// Answers one inbound call and counts it; returns the encoded reply.
    pub async fn serve(&self, from: PeerId, call: Vec<u8>) -> Vec<u8> {
        let answer = self.handle_call(from, call).await;
        let outcome = metrics::Outcome::of_reply(answer.status);
        self.metrics.call(Place::Served, outcome);
        if outcome != metrics::Outcome::Ok {
            tracing::debug!(peer = %from, status = ?answer.status, "refused or failed a call for a peer: {}", answer.message.as_deref().unwrap_or(""));
        }
        answer.to_bytes()
    }

    /// Answers one inbound call (see the module docs for the checks).
    async fn handle_call(&self, from: PeerId, call: Vec<u8>) -> InferReply {
        let refuse = |status, message: String| InferReply::error(status, message);
        let compute = &self.compute;
        let mut call = match compute.check(self.key.node_id(), &from, &call) {
            Ok(c) => c,
            Err(e) => return refuse(e.status(), e.to_string()),
        };
        let _slot = match compute.slots.take(call.caller()) {
            Ok(slot) => slot,
            Err(busy) => return refuse(InferStatus::Busy, busy.to_string()),
        };
        let price = compute.config.price_per_mfuel;
        let admitted = match self.admit(from, &mut call, price) {
            Ok(a) => a,
            Err(refusal) => return refusal,
        };
        let r = call.request.body();
        let input = match serde_json::from_slice::<Value>(&call.input)
            .map_err(|e| format!("inputs are not JSON: {e}"))
            .and_then(|v| OipRequest::from_json(&v))
        {
            Ok(r) => r,
            Err(e) => return refuse(InferStatus::BadRequest, e),
        };
        if let Err((status, why)) = self.may_fetch_for(r.model, self.runtime.engine().is_full()) {
            return refuse(status, why);
        }
        let model = match self.runtime.ensure_loaded(r.model, Holder::CallCache).await {
            Ok(m) => m,
            Err(e) if e.status == 404 => return refuse(InferStatus::NotFound, e.message),
            Err(e) => return refuse(InferStatus::Internal, e.message),
        };
        self.cache_used(r.model);
        let outcome = match self.runtime.run(model, input, r.max_fuel).await {
            Ok(o) => o,
            Err(e) => {
                let status = match e.status {
                    400 => InferStatus::BadRequest,
                    503 => InferStatus::Busy,
                    _ => InferStatus::Failed,
                };
                return refuse(status, e.message);
            }
        };
        self.metrics.fuel.inc_by(outcome.fuel);
        let output = to_wire(&outcome.outputs).to_bytes();
        let result = self.key.sign(call.result(
            &output,
            outcome.fuel,
            price,
            self.runtime.engine().engine(&outcome),
        ));
        if let Err(refusal) = self.book(from, admitted, &call, &result) {
            return refusal;
        }
        InferReply {
            status: InferStatus::Ok,
            result: Some(result.to_bytes()),
            output: Some(output),
            message: None,
            cheque: None,
        }
    }

    /// Admits a checked call at `price` (per million fuel units, or tokens) on credit: takes the
    /// cheque that came with it (first, or beside the call) and reserves the call's worst case
    /// against the caller's limit. The refusal is the reply to send.
    pub(crate) fn admit(
        &self,
        from: PeerId,
        call: &mut CheckedCall,
        price: u64,
    ) -> Result<Admitted<'_>, InferReply> {
        let refuse = |status, message: String| InferReply::error(status, message);
        let caller = call.caller();
        let payment_required = |message: String| {
            self.metrics.refused_for_payment("served");
            InferReply {
                cheque: self.credits.cheque_from(&caller),
                ..InferReply::error(InferStatus::PaymentRequired, message)
            }
        };
        let r = call.request.body();
        let worst = protocol::credits::cost(r.max_fuel, price);
        // A paying caller sends a cheque with most calls. When a known caller's call is
        // admitted without counting it (its debt leaves room for the call's worst case), the
        // call runs at once and the cheque is checked and stored beside it, off the call's
        // path (`_later`, also when the call fails); otherwise the cheque is taken first and
        // the call admitted with it.
        let mut cheque = call.cheque.take();
        // A stranger's cheque is always taken first: it asks for credit, and its call is not
        // to come out of the free allowance that strangers share.
        let mut reservation = None;
        if self.credits.balance(&caller).account.known() {
            reservation = self.credits.admit(caller, worst, now_ms()).ok();
        }
        if reservation.is_none() {
            if let Some(cheque) = cheque.take() {
                match take_cheque(&self.credits, &self.metrics, &from, &cheque) {
                    Ok(()) => {}
                    Err(ChequeRefused::Payment(why)) => return Err(payment_required(why)),
                    Err(ChequeRefused::Other(status, why)) => return Err(refuse(status, why)),
                }
            }
            match self.credits.admit(caller, worst, now_ms()) {
                Ok(r) => reservation = Some(r),
                Err(refusal) => return Err(payment_required(refusal.to_string())),
            }
        }
        Ok(Admitted {
            held: Held {
                credits: &self.credits,
                reservation,
            },
            _later: LaterCheque {
                credits: self.credits.clone(),
                metrics: self.metrics.clone(),
                from,
                cheque,
            },
        })
    }

    /// Books a call that ran: the receipt (request and signed result) is on disk before this
    /// returns, so before the result leaves: the caller can never hold a receipt this node has
    /// not booked. The refusal is the reply to send.
    pub(crate) fn book(
        &self,
        from: PeerId,
        admitted: Admitted<'_>,
        call: &CheckedCall,
        result: &Signed<InferResult>,
    ) -> Result<(), InferReply> {
        let refuse = |status, message: String| InferReply::error(status, message);
        let Admitted { held, _later } = admitted;
        let royalty = self
            .catalog
            .get(call.request.body().model)
            .and_then(|m| m.body().royalty);
        let Some(reservation) = held.take() else {
            return Err(refuse(
                InferStatus::Internal,
                "the call's reservation was lost".into(),
            ));
        };
        // A journal write (the ledger's disk flush is its checkpointer's): no need to leave
        // the async worker for it.
        match self
            .credits
            .settle(reservation, &call.request, result, royalty, now_ms())
        {
            Ok(receipt) => {
                self.metrics.billed("served", receipt.cost);
                if let Some(r) = royalty {
                    self.metrics
                        .royalties_owed
                        .inc_by(protocol::credits::royalty_of(receipt.cost, r.bps));
                }
            }
            Err(e) => {
                tracing::error!(peer = %from, "credits: booking a served call: {e}");
                return Err(refuse(
                    InferStatus::Internal,
                    format!("the provider could not book the call: {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// A call admitted on credit ([`Remote::admit`]): its reservation, given back if it ends
/// without a receipt, and the cheque that came with it, taken when this is dropped.
pub(crate) struct Admitted<'a> {
    held: Held<'a>,
    _later: LaterCheque,
}

impl Remote {
    /// Notes that a peer called `model`: the call cache takes it (unless the user pinned it)
    /// and, when over its budget, lets the least recently called go. In the background: the
    /// call does not wait for a pin or a gc.
    pub(crate) fn cache_used(&self, model: ModelId) {
        if self.cache.touch(model) && self.cache.bytes() <= self.compute.config.cache_bytes {
            return;
        }
        let (cache, metrics) = (self.cache.clone(), self.metrics.clone());
        tokio::task::spawn_blocking(move || {
            let evicted = cache.admit(model).and_then(|over| {
                Ok(if over {
                    cache.evict(model)?
                } else {
                    Evicted::default()
                })
            });
            match evicted {
                Ok(evicted) if !evicted.models.is_empty() => {
                    metrics
                        .call_cache_evicted
                        .inc_by(evicted.models.len() as u64);
                    tracing::info!(
                        models = evicted.models.len(),
                        freed_mib = evicted.bytes_freed >> 20,
                        "the call cache let the least recently called models go"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%model, "the call cache: {e:#}"),
            }
            metrics.call_cache_bytes.set(cache.bytes() as i64);
        });
    }

    /// Whether a peer's call for `model` may make this node fetch it: only when the engine
    /// that would run it is not `full`, the model was announced to this node (its manifest is in the
    /// catalogue), and its files total at most `max_fetch_bytes`. A model already here passes.
    pub(crate) fn may_fetch_for(
        &self,
        model: ModelId,
        full: bool,
    ) -> Result<(), (InferStatus, String)> {
        if self.catalog.is_local(model) {
            return Ok(());
        }
        if full {
            return Err((
                InferStatus::Busy,
                format!("every slot is taken; {model} is not fetched for a call now"),
            ));
        }
        let Some(manifest) = self.catalog.get(model) else {
            return Err((
                InferStatus::NotFound,
                format!(
                    "model {model} was never announced to this provider; it fetches for a call only models it knows"
                ),
            ));
        };
        let bytes = manifest
            .body()
            .files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size));
        let limit = self.compute.config.max_fetch_bytes;
        if bytes > limit {
            return Err((
                InferStatus::Refused,
                format!(
                    "model {model} has {} MiB of files; this provider fetches at most {} MiB for a call",
                    bytes >> 20,
                    limit >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// This machine's GPUs, from the NVIDIA driver's `/proc` entries (empty without one).
pub(crate) fn gpus() -> Vec<String> {
    // nvidia-smi names each GPU with its memory; the driver's files name it only.
    if let Ok(out) = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        && out.status.success()
    {
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (name, mib) = l.rsplit_once(',')?;
                Some(format!("{} ({} MiB)", name.trim(), mib.trim()))
            })
            .take(16)
            .collect();
        if !listed.is_empty() {
            return listed;
        }
    }
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

impl Remote {
    /// This node's current offer, signed.
    async fn make_offer(&self) -> Signed<ComputeOffer> {
        let mut models = self.catalog.held_models();
        models.truncate(MAX_OFFER_MODELS);
        let engine = self.runtime.engine();
        let mut backends = vec!["wasm".to_string()];
        if let Some(b) = engine.backend() {
            backends.push(b.to_string());
        }
        // Language models run in llama.cpp workers on every node (on its GPU where it can).
        backends.push(self.compute.config.generation_engine.to_string());
        let issued_ms = now_ms();
        let mut addrs: Vec<String> = match self.net.dial_addrs().await {
            Ok(a) => a.iter().map(|a| a.to_string()).collect(),
            Err(e) => {
                tracing::warn!("offer: asking the network for its addresses: {e}");
                Vec::new()
            }
        };
        addrs.truncate(MAX_OFFER_ADDRS);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        self.key.sign(ComputeOffer {
            issued_ms,
            expires_ms: issued_ms + self.compute.config.offer_ttl.as_millis() as u64,
            cores,
            memory_mib: memory_mib(),
            gpus: gpus(),
            backends,
            models,
            max_concurrent: engine.max_concurrent() as u64,
            price_per_mfuel: self.compute.config.price_per_mfuel,
            addrs,
            credit: self.credits.terms(),
            price_per_mtoken: Some(self.compute.config.price_per_mtoken),
        })
    }

    /// Announces this node's offer now and every `offer_interval` (a serving node only).
    pub async fn offer_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.compute.config.offer_interval);
        loop {
            tick.tick().await;
            let offer = self.make_offer().await;
            // No peers yet is fine: the next round reaches them.
            if let Err(e) = self.net.announce_offer(offer.to_bytes()).await {
                tracing::debug!("announcing the offer: {e}");
            }
            self.compute.offers().prune(now_ms());
        }
    }
}

/// How a caller wants a call run.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Only this provider.
    pub on: Option<PeerId>,
    /// Run on two providers and compare their output hashes.
    pub verify: bool,
    /// Only on providers that offer a GPU and a GPU engine.
    pub gpu: bool,
}

/// A verified answer from one provider.
struct Answer {
    peer: PeerId,
    result: Signed<InferResult>,
    tensors: Vec<Tensor>,
    elapsed: Duration,
    /// What it cost, credits.
    cost: u64,
    /// The account with the provider after it.
    account: credits::Account,
}

/// Why one attempt failed.
pub(crate) enum Failure {
    /// Try another provider.
    Retry(Outcome, String),
    /// The provider wants to be paid first; it returned the newest cheque from this node it
    /// holds, if any.
    Payment(String, Option<Vec<u8>>),
    /// The same call fails everywhere: stop.
    Final(CallError),
}

/// A provider a call may go to, with its libp2p identity and addresses.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Its node id (the request is addressed to it).
    pub(crate) node: NodeId,
    /// Its peer id.
    pub(crate) peer: PeerId,
    /// Addresses from its offer.
    pub(crate) addrs: Vec<Multiaddr>,
    /// Its offered price per million fuel units (`None` when forced without an offer). The
    /// request caps the price at it, so a provider cannot charge more than it offered.
    pub(crate) price_per_mfuel: Option<u64>,
    /// Its offered credit terms (`None` when forced without an offer: the defaults).
    pub(crate) credit: Option<protocol::credits::CreditTerms>,
    /// The engines its offer lists (empty when forced without an offer).
    pub(crate) backends: Vec<String>,
}

impl Target {
    /// The ranking's candidate, reachable through libp2p: its peer id derives from its node id
    /// (which always holds for a `NodeId`, a valid ed25519 key), its addresses are parsed
    /// (those that do not parse are skipped).
    pub(crate) fn of(c: Candidate) -> Option<Target> {
        Some(Target {
            peer: net::peer_id_of(&c.node)?,
            addrs: c.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
            node: c.node,
            price_per_mfuel: c.price_per_mfuel,
            credit: c.credit,
            backends: c.backends,
        })
    }
}

impl Remote {
    /// The cheque owed to `to` now (see [`Credits::pay`]), signed and on disk, as bytes.
    fn cheque_for(&self, to: &Target, when: PayWhen) -> Result<Option<Vec<u8>>, Failure> {
        let terms = to.credit.unwrap_or_default();
        // A signature and a journal write, tens of microseconds: done in place.
        match self.credits.pay(
            &self.key,
            to.node,
            terms.payment_threshold,
            self.spend_limit,
            when,
            now_ms(),
        ) {
            Ok(Some(cheque)) => {
                self.metrics.cheque("sent", "new");
                Ok(Some(cheque.to_bytes()))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(Failure::Final(CallError::new(
                500,
                format!("this node's ledger: {e}"),
            ))),
        }
    }

    /// One call to one provider, paying first what is due; a refusal for payment is answered
    /// once by adopting the provider's copy of this node's cheque (if this node lost a newer
    /// one) and paying everything owed.
    async fn attempt(
        &self,
        to: &Target,
        model: ModelId,
        input: &[u8],
        max_price: u64,
    ) -> Result<Answer, Failure> {
        match self
            .attempt_once(to, model, input, max_price, PayWhen::Due)
            .await
        {
            Err(Failure::Payment(_, kept)) => {
                self.before_paying_in_full(to, kept).await;
                self.attempt_once(to, model, input, max_price, PayWhen::Now)
                    .await
                    .inspect_err(|f| {
                        if matches!(f, Failure::Payment(..)) {
                            self.metrics.refused_for_payment("used");
                        }
                    })
            }
            other => other,
        }
    }

    /// What a caller does when a provider refused it for payment, before it pays everything
    /// owed: adopts the provider's copy of this node's newest cheque (`kept`, if this node lost
    /// a newer one), then settles, since the provider may hold receipts this node lost (it was
    /// killed before their replies came, or restored from a copy).
    pub(crate) async fn before_paying_in_full(&self, to: &Target, kept: Option<Vec<u8>>) {
        if let Some(kept) = kept {
            match tokio::task::block_in_place(|| self.credits.adopt_own(to.node, &kept)) {
                Ok(true) => {
                    tracing::info!(provider = %to.peer, "adopted the provider's copy of this node's newest cheque to it")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(provider = %to.peer, "the provider's copy of this node's cheque: {e}")
                }
            }
        }
        self.settle_with(to.peer).await;
    }

    /// A call to `to` for `model` on `input`: the signed request (a fresh nonce, the price
    /// capped at the provider's offer, at most `max_fuel` fuel units or tokens, fewer when the
    /// provider's credit for a caller that pays on time allows fewer) and the encoded
    /// [`InferCall`] with the cheque due.
    pub(crate) fn signed_call(
        &self,
        to: &Target,
        model: ModelId,
        input: &[u8],
        (max_price, max_fuel): (u64, u64),
        pay: PayWhen,
    ) -> Result<(Signed<InferRequest>, Vec<u8>), Failure> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| {
            Failure::Final(CallError::new(
                500,
                format!("no randomness for a nonce: {e}"),
            ))
        })?;
        let max_price = to.price_per_mfuel.map_or(max_price, |p| p.min(max_price));
        // The worst case of the call must fit what the provider extends to a caller that pays
        // on time (it owes under half the payment threshold when it calls): more than that
        // would be refused for payment however much was paid.
        let terms = to.credit.unwrap_or_default();
        let room = terms
            .disconnect_threshold
            .saturating_sub(terms.payment_threshold / 2);
        let affordable = u64::try_from(room as u128 * 1_000_000 / u128::from(max_price.max(1)))
            .unwrap_or(u64::MAX);
        let request = self.key.sign(InferRequest {
            model,
            input_hash: BlobHash::of(input),
            max_fuel: max_fuel.min(affordable),
            max_price_per_mfuel: max_price,
            nonce,
            issued_ms: now_ms(),
            provider: to.node,
        });
        let call = InferCall {
            request: request.to_bytes(),
            input: input.to_vec(),
            cheque: self.cheque_to_send(to, pay)?,
        }
        .to_bytes();
        Ok((request, call))
    }

    /// The answer when no provider took a call: 402 when every one wants to be paid first,
    /// 503 when some stayed busy, else 502; `reasons` says what each answered.
    pub(crate) fn no_provider(
        &self,
        reasons: &[String],
        any_payment: bool,
        any_busy: bool,
        what: &str,
    ) -> CallError {
        let reasons = reasons.join("; ");
        if any_payment && !any_busy {
            CallError::new(
                402,
                format!(
                    "payment required: every provider wants to be paid first ({reasons}); this node pays at most [credits] spend_limit = {} beyond what a peer's calls here cost",
                    self.spend_limit
                ),
            )
        } else if any_busy {
            CallError::new(503, format!("every provider stayed busy ({reasons})"))
        } else {
            CallError::new(502, format!("no provider could run the {what}: {reasons}"))
        }
    }

    /// One signed call to one provider, verified.
    async fn attempt_once(
        &self,
        to: &Target,
        model: ModelId,
        input: &[u8],
        max_price: u64,
        pay: PayWhen,
    ) -> Result<Answer, Failure> {
        let max_fuel = self.runtime.engine().max_fuel();
        let (request, call) = self.signed_call(to, model, input, (max_price, max_fuel), pay)?;
        let started = Instant::now();
        // Not reaching it is not final: the call below says why.
        self.net.reach(to.peer, &to.addrs).await;
        let timeout = self.compute.config.call_timeout;
        let reply = match tokio::time::timeout(timeout, self.net.infer(to.peer, call)).await {
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
        let verified = compute::check_reply(&reply, &request).map_err(|e| match e {
            ReplyError::BadRequest(message) => Failure::Final(CallError::new(400, message)),
            ReplyError::Failed(message) => Failure::Final(CallError::new(500, message)),
            ReplyError::PaymentRequired { message, cheque } => Failure::Payment(message, cheque),
            e => Failure::Retry(e.outcome(), e.to_string()),
        })?;
        let tensors =
            from_wire(verified.outputs).map_err(|why| Failure::Retry(Outcome::Misbehaved, why))?;
        // Booked before the answer is handed on; a failure here under-counts what this node
        // owes (the provider holds the receipt), so it is logged, not hidden.
        let cost = match self.credits.record_used(&request, &verified.result) {
            Ok(receipt) => {
                self.metrics.billed("used", receipt.cost);
                receipt.cost
            }
            Err(e) => {
                tracing::error!(provider = %to.peer, "credits: booking a call a peer served: {e}");
                protocol::credits::cost(
                    verified.result.body().fuel,
                    verified.result.body().price_per_mfuel,
                )
            }
        };
        self.prepare_cheque(to);
        Ok(Answer {
            peer: to.peer,
            result: verified.result,
            tensors,
            elapsed,
            cost,
            account: self.credits.balance(&to.node).account,
        })
    }

    /// The cheque to send with a call to `to`: for [`PayWhen::Due`], the one prepared after the
    /// last call if it is still right (recorded as sent now: a journal write), else a new one
    /// signed now (see [`Remote::cheque_for`]).
    pub(crate) fn cheque_to_send(
        &self,
        to: &Target,
        when: PayWhen,
    ) -> Result<Option<Vec<u8>>, Failure> {
        if when == PayWhen::Due {
            let prepared = self
                .prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&to.node);
            if let Some(cheque) = prepared {
                let terms = to.credit.unwrap_or_default();
                match self.credits.send_prepared(
                    &cheque,
                    terms.payment_threshold,
                    self.spend_limit,
                    now_ms(),
                ) {
                    Ok(true) => {
                        self.metrics.cheque("sent", "prepared");
                        return Ok(Some(cheque.to_bytes()));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        return Err(Failure::Final(CallError::new(
                            500,
                            format!("this node's ledger: {e}"),
                        )));
                    }
                }
            }
        }
        self.cheque_for(to, when)
    }

    /// Signs the cheque for the next call to `to` now, on a blocking thread, if one will be
    /// due: the next call then only records it (see [`Credits::prepare`]).
    pub(crate) fn prepare_cheque(&self, to: &Target) {
        let threshold = to.credit.unwrap_or_default().payment_threshold;
        let (credits, key, prepared) = (
            self.credits.clone(),
            self.key.clone(),
            self.prepared.clone(),
        );
        let (node, spend_limit) = (to.node, self.spend_limit);
        drop(tokio::task::spawn_blocking(move || {
            let Some(cheque) = credits.prepare(&key, node, threshold, spend_limit, now_ms()) else {
                return;
            };
            let mut prepared = prepared.lock().unwrap_or_else(|p| p.into_inner());
            if prepared.len() < MAX_PREPARED || prepared.contains_key(&node) {
                prepared.insert(node, cheque);
            }
        }));
    }

    /// Runs a call on providers in `order`, at most `attempts` of them per round, until one
    /// answers. When some were only busy, waits (exponential backoff with jitter) and tries another
    /// round, until the call timeout: a burst of calls queues here instead of failing.
    async fn first_answer(
        &self,
        mut order: Vec<Target>,
        model: ModelId,
        input: &[u8],
        max_price: u64,
    ) -> Result<Answer, CallError> {
        let attempts = self.compute.config.attempts;
        let deadline = Instant::now() + self.compute.config.call_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let mut reasons = Vec::new();
            let mut any_busy = false;
            let mut any_payment = false;
            let mut gone = HashSet::new();
            for to in order.iter().take(attempts) {
                self.compute.offers().started(&to.node);
                let result = self.attempt(to, model, input, max_price).await;
                let outcome = match &result {
                    Ok(a) => Outcome::Ok(a.elapsed),
                    Err(Failure::Retry(o, _)) => *o,
                    // Not the provider's fault: it stays ranked as it was.
                    Err(Failure::Payment(..)) => Outcome::Busy,
                    Err(Failure::Final(_)) => Outcome::Failed,
                };
                self.compute.offers().finished(&to.node, outcome, now_ms());
                match result {
                    Ok(answer) => return Ok(answer),
                    Err(Failure::Final(e)) => return Err(e),
                    Err(Failure::Payment(why, _)) => {
                        any_payment = true;
                        gone.insert(to.node);
                        reasons.push(format!("{}: {why}", to.peer));
                    }
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
                return Err(self.no_provider(&reasons, any_payment, any_busy, "call"));
            }
            let mut jitter = [0u8; 1];
            // Without randomness the backoff has no jitter; it still backs off.
            getrandom::fill(&mut jitter).unwrap_or_default();
            tokio::time::sleep(backoff + backoff * u32::from(jitter[0]) / 255).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            // Only the busy ones are worth another try; keep the ranking's order.
            order.retain(|c| !gone.contains(&c.node));
        }
    }

    /// Whether this node knows an offer it could send `model` to.
    pub fn has_providers(&self, model: ModelId) -> bool {
        !self
            .compute
            .offers()
            .candidates(model, self.compute.config.max_price_per_mfuel, now_ms())
            .is_empty()
    }

    /// Whether this node knows an offer it could send a generation by `model` to.
    pub fn has_generation_providers(&self, model: ModelId) -> bool {
        let needs = compute::Needs {
            tokens: true,
            ..compute::Needs::default()
        };
        !self
            .compute
            .offers()
            .candidates_for(
                model,
                self.compute.config.max_price_per_mtoken,
                needs,
                now_ms(),
            )
            .is_empty()
    }

    /// The providers a call for `model` may go to, best first, with `needs`, at or below
    /// `max_price` (per million fuel units, or tokens), as `options` restrict them.
    pub(crate) fn providers(
        &self,
        model: ModelId,
        options: &CallOptions,
        needs: compute::Needs,
        max_price: u64,
    ) -> Result<Vec<Target>, CallError> {
        let (what, unit) = if needs.tokens {
            ("generation", "tokens")
        } else {
            ("compute", "fuel")
        };
        let candidates = self
            .compute
            .offers()
            .candidates_for(model, max_price, needs, now_ms());
        let mut order: Vec<Target> = candidates.into_iter().filter_map(Target::of).collect();
        if options.gpu && order.is_empty() {
            let engines = if needs.tokens {
                protocol::compute::GPU_GENERATION_BACKENDS
            } else {
                protocol::compute::GPU_BACKENDS
            };
            return Err(CallError::new(
                503,
                format!(
                    "no provider offers a GPU (and a GPU engine: {}) at or below {max_price} per million {unit}",
                    engines.join(", ")
                ),
            ));
        }
        if let Some(peer) = options.on {
            let node_id = net::node_id_of(&peer).ok_or_else(|| {
                CallError::new(400, format!("{peer} has no ed25519 key in its id"))
            })?;
            order.retain(|c| c.peer == peer);
            if order.is_empty() && options.gpu {
                return Err(CallError::new(
                    503,
                    format!("{peer} offers no GPU (and GPU engine) this node knows of"),
                ));
            }
            if order.is_empty() {
                order.push(Target {
                    node: node_id,
                    peer,
                    addrs: Vec::new(),
                    price_per_mfuel: None,
                    credit: None,
                    backends: Vec::new(),
                });
            }
        }
        if order.is_empty() {
            return Err(CallError::new(
                503,
                format!("no provider offers {what} at or below {max_price} per million {unit}"),
            ));
        }
        Ok(order)
    }

    /// Runs an OIP v2 request for `model` on peers and returns the OIP response, with the
    /// provider, its signed result and the fuel in `parameters`.
    pub async fn call(
        &self,
        model: ModelId,
        request: &OipRequest,
        options: &CallOptions,
    ) -> Result<InferResponse, CallError> {
        let input = serde_json::to_vec(&request.to_json())
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
        let max_price = self.compute.config.max_price_per_mfuel;
        let needs = compute::Needs {
            gpu: options.gpu,
            tokens: false,
        };
        let mut order = self.providers(model, options, needs, max_price)?;
        let version = crate::inference::local_manifest(&self.catalog, model)
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
                self.first_answer(order, model, &input, max_price),
                self.first_answer(others, model, &input, max_price)
            );
            let (a, b) = (a?, b?);
            let (ra, rb) = (a.result.body(), b.result.body());
            // Fuel is deterministic for one engine: two honest providers that ran the graph the
            // same way report the same fuel, so a difference means one inflates it.
            let fuel_differs = ra.backend == rb.backend && ra.fuel != rb.fuel;
            // Pure wasm is bit-exact everywhere; a native engine is held to a tolerance
            // (compute::tolerance), so an honest provider on another machine is no liar.
            let native = ra.backend != "wasm" || rb.backend != "wasm";
            let within = if native && ra.output_hash != rb.output_hash {
                Some(compute::tolerance::agree(
                    &tolerance_outputs(&a.tensors),
                    &tolerance_outputs(&b.tensors),
                ))
            } else {
                None
            };
            let outputs_differ = match &within {
                Some(agreed) => agreed.is_err(),
                None => ra.output_hash != rb.output_hash,
            };
            if outputs_differ || fuel_differs {
                let evidence = |x: &Answer| {
                    json!({
                        "provider": x.peer.to_string(),
                        "output_hash": x.result.body().output_hash.to_string(),
                        "fuel": x.result.body().fuel,
                        "result": hex::encode(x.result.to_bytes()),
                    })
                };
                let message = if let Some(Err(why)) = &within {
                    format!(
                        "providers disagree beyond the tolerance for native engines ({} ran {}, {} ran {}): {why}",
                        a.peer, ra.backend, b.peer, rb.backend
                    )
                } else if outputs_differ {
                    format!(
                        "providers disagree: {} returned outputs {}, {} returned {}",
                        a.peer, ra.output_hash, b.peer, rb.output_hash
                    )
                } else {
                    format!(
                        "providers disagree on the fuel of the same outputs: {} reported {}, {} reported {} (fuel is deterministic: one of them inflates it)",
                        a.peer, ra.fuel, b.peer, rb.fuel
                    )
                };
                let mut e = CallError::new(502, message);
                e.details = Some(json!({ "results": [evidence(&a), evidence(&b)] }));
                return Err(e);
            }
            let verified_by = [a.peer.to_string(), b.peer.to_string()];
            let mut v = respond(model, version, request, &a);
            v.parameters
                .insert("verified_by".into(), json!(verified_by));
            v.parameters.insert(
                "verified".into(),
                json!(if within.is_some() {
                    "within the tolerance for native engines"
                } else {
                    "bit for bit"
                }),
            );
            return Ok(v);
        }
        let answer = self.first_answer(order, model, &input, max_price).await?;
        Ok(respond(model, version, request, &answer))
    }
}

/// A provider's outputs as `compute::tolerance` compares them.
fn tolerance_outputs(tensors: &[Tensor]) -> Vec<compute::tolerance::Output<'_>> {
    tensors
        .iter()
        .map(|t| compute::tolerance::Output {
            name: &t.name,
            dtype: crate::inference::oip_dtype(t.dtype),
            shape: &t.shape,
            data: &t.data,
        })
        .collect()
}

fn respond(model: ModelId, version: String, request: &OipRequest, a: &Answer) -> InferResponse {
    let r = a.result.body();
    response(
        model.to_string(),
        version,
        request,
        &a.tensors,
        parameters([
            ("fuel", json!(r.fuel)),
            ("elapsed_ms", json!(a.elapsed.as_secs_f64() * 1e3)),
            ("provider", json!(a.peer.to_string())),
            ("backend", json!(r.backend)),
            ("price_per_mfuel", json!(r.price_per_mfuel)),
            ("output_hash", json!(r.output_hash.to_string())),
            ("result", json!(hex::encode(a.result.to_bytes()))),
            ("cost", json!(a.cost)),
            (
                "credits",
                json!({
                    "paid": a.account.paid_out(),
                    "owed": u64::try_from((-a.account.net()).max(0)).unwrap_or(u64::MAX),
                    "cheque_seq": a.account.cheque_out.as_ref().map(|c| c.seq),
                }),
            ),
        ]),
    )
}

/// Pages of receipts asked for when catching up with a provider, at most.
const MAX_RECEIPT_PAGES: usize = 64;

/// Receipts before this node's own count that it asks for again: calls that ran at once may
/// be in another order in the provider's list.
const RECEIPT_SLACK: u64 = 64;

impl Remote {
    /// The credit terms `node` offered, or the defaults.
    fn terms_of(&self, node: &NodeId) -> protocol::credits::CreditTerms {
        self.compute.offers().terms_of(node).unwrap_or_default()
    }

    /// The cheque to send `node` when settling: a new one if this node owes it something now
    /// (royalties, or calls past half of `threshold`), else the newest one sent, again. Blocking
    /// (a signature and a durable write).
    fn cheque_on_settling(&self, node: NodeId, threshold: u64) -> Option<Vec<u8>> {
        match self.credits.pay(
            &self.key,
            node,
            threshold,
            self.spend_limit,
            PayWhen::Settling,
            now_ms(),
        ) {
            Ok(Some(c)) => {
                self.metrics.cheque("sent", "new");
                Some(c.to_bytes())
            }
            Ok(None) => self
                .credits
                .balance(&node)
                .account
                .cheque_out
                .map(|c| c.envelope),
            Err(e) => {
                tracing::error!("credits: paying {node}: {e}");
                None
            }
        }
    }

    /// Answers a peer's `/moxnet/credits/1` request: takes its cheque, pays it what this node
    /// owes now (royalties, or calls past half its threshold), returns the newest cheque from it
    /// held here, and the receipts it asked for. Returns the encoded answer.
    pub async fn answer_credits(&self, from: PeerId, request: Vec<u8>) -> Vec<u8> {
        let Some(node) = net::node_id_of(&from) else {
            return CreditsAnswer {
                refused: Some("no ed25519 key in your peer id".into()),
                ..CreditsAnswer::default()
            }
            .to_bytes();
        };
        let request = match CreditsRequest::from_bytes(&request) {
            Ok(r) => r,
            Err(e) => {
                return CreditsAnswer {
                    refused: Some(format!("credits request: {e}")),
                    ..CreditsAnswer::default()
                }
                .to_bytes();
            }
        };
        let threshold = self.terms_of(&node).payment_threshold;
        tokio::task::block_in_place(|| {
            let credits = &self.credits;
            let mut refused = None;
            if let Some(cheque) = &request.cheque
                && let Err(ChequeRefused::Payment(why) | ChequeRefused::Other(_, why)) =
                    take_cheque(credits, &self.metrics, &from, cheque)
            {
                tracing::debug!(peer = %from, "a cheque sent to settle: {why}");
                refused = Some(why);
            }
            let cheque = self.cheque_on_settling(node, threshold);
            let receipts = match request.receipts_from {
                Some(at) => credits
                    .receipts_range(&node, Side::Served, at, MAX_RECEIPTS_PER_ANSWER)
                    .unwrap_or_else(|e| {
                        tracing::error!("credits: listing receipts for {from}: {e}");
                        Vec::new()
                    }),
                None => Vec::new(),
            };
            let royalty_receipts = match request.royalties_from {
                Some(at) => credits
                    .royalty_receipts(&node, at, MAX_RECEIPTS_PER_ANSWER)
                    .unwrap_or_else(|e| {
                        tracing::error!("credits: listing royalty receipts for {from}: {e}");
                        Vec::new()
                    }),
                None => Vec::new(),
            };
            let account = credits.balance(&node).account;
            CreditsAnswer {
                refused,
                cheque,
                held: credits.cheque_from(&node),
                served_calls: account.served_calls,
                receipts,
                royalty_calls: account.royalty_calls,
                royalty_receipts,
            }
            .to_bytes()
        })
    }

    /// Settles with `peer` (on connect, and now and then while royalties are due): sends the
    /// newest cheque this node owes it (or the one it sent last, again), takes the peer's,
    /// adopts the peer's copy of its own if newer, and fetches the receipts of calls the peer
    /// served this node that it did not record (it stopped before their replies came).
    pub async fn settle_with(&self, peer: PeerId) {
        let Some(node) = net::node_id_of(&peer) else {
            return;
        };
        let account = self.credits.balance(&node).account;
        if account == credits::Account::default() {
            return;
        }
        let threshold = self.terms_of(&node).payment_threshold;
        let cheque = tokio::task::block_in_place(|| self.cheque_on_settling(node, threshold));
        let mut request = CreditsRequest {
            cheque,
            ..CreditsRequest::default()
        };
        let mut pages = 0;
        loop {
            let answer = match self.net.credits(peer, request.to_bytes()).await {
                Ok(bytes) => match CreditsAnswer::from_bytes(&bytes) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(%peer, "credits answer: {e}");
                        return;
                    }
                },
                Err(e) => {
                    tracing::debug!(%peer, "settling credits: {e}");
                    return;
                }
            };
            if let Some(why) = &answer.refused {
                tracing::warn!(%peer, "the peer refused this node's cheque: {why}");
            }
            let mut recorded = 0;
            tokio::task::block_in_place(|| {
                if let Some(held) = &answer.held {
                    match self.credits.adopt_own(node, held) {
                        Ok(true) => {
                            tracing::info!(%peer, "adopted the peer's copy of this node's newest cheque to it")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::debug!(%peer, "the peer's copy of this node's cheque: {e}")
                        }
                    }
                }
                if let Some(cheque) = &answer.cheque
                    && let Err(ChequeRefused::Payment(why) | ChequeRefused::Other(_, why)) =
                        take_cheque(&self.credits, &self.metrics, &peer, cheque)
                {
                    tracing::warn!(%peer, "the cheque the peer sent on settling: {why}");
                }
                for bytes in &answer.receipts {
                    let receipt = match protocol::credits::Receipt::from_bytes(bytes) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(%peer, "a receipt the peer sent: {e}");
                            continue;
                        }
                    };
                    match self.credits.record_receipt(&receipt) {
                        Ok(Some(v)) if v.provider == node => {
                            recorded += 1;
                            self.metrics.billed("used", v.cost);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(%peer, "a receipt the peer sent: {e}"),
                    }
                }
            });
            if recorded > 0 {
                tracing::info!(%peer, recorded, "recorded receipts of calls whose replies this node never got");
            }
            // Catch up on receipts while the peer has served more calls than recorded here.
            let used = self.credits.balance(&node).account.used_calls;
            let next = match request.receipts_from {
                None if answer.served_calls > used => used.saturating_sub(RECEIPT_SLACK),
                Some(at) if !answer.receipts.is_empty() && answer.served_calls > used => {
                    at + answer.receipts.len() as u64
                }
                _ => return,
            };
            pages += 1;
            if pages > MAX_RECEIPT_PAGES {
                return;
            }
            request = CreditsRequest {
                receipts_from: Some(next),
                ..CreditsRequest::default()
            };
        }
    }

    /// Every `[credits] settle_every_secs`, settles with the connected peers this node owes
    /// royalties to.
    pub async fn settle_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settle_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let connected = match self.net.peers().await {
                Ok(p) => p,
                Err(_) => return,
            };
            for peer in connected {
                let owes = net::node_id_of(&peer)
                    .is_some_and(|n| self.credits.balance(&n).account.royalties_due() > 0);
                if owes {
                    self.settle_with(peer).await;
                }
            }
        }
    }
}

/// Royalty receipts an audit reads from one provider, at most (pages of 64).
const MAX_AUDITED_RECEIPTS: u64 = 100_000;

impl Remote {
    /// Audits the royalties `peer` owes this node: asks it for the receipts of every call it ran
    /// of a model whose royalty this node is owed, checks each (signatures, that `peer` ran it,
    /// that the model's manifest, as this node knows it, names this node and a share) and sums
    /// the shares, against what `peer` has paid in royalties (its newest cheque here).
    pub async fn audit_royalties(&self, peer: PeerId) -> Result<api::dto::RoyaltyAudit, CallError> {
        let node = net::node_id_of(&peer)
            .ok_or_else(|| CallError::new(400, format!("{peer} has no ed25519 key in its id")))?;
        let me = self.key.node_id();
        let addrs: Vec<Multiaddr> = self
            .compute
            .offers()
            .addrs_of(&node)
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if !self.net.reach(peer, &addrs).await {
            return Err(CallError::new(
                503,
                format!("cannot reach {peer}: an audit asks the provider itself"),
            ));
        }
        let (mut from, mut audit) = (0u64, api::dto::RoyaltyAudit::default());
        audit.peer_id = peer.to_string();
        let mut models = std::collections::BTreeMap::<ModelId, Option<u16>>::new();
        loop {
            let request = CreditsRequest {
                royalties_from: Some(from),
                ..CreditsRequest::default()
            };
            let answer = self
                .net
                .credits(peer, request.to_bytes())
                .await
                .map_err(|e| CallError::new(502, format!("asking {peer}: {e}")))
                .and_then(|b| {
                    CreditsAnswer::from_bytes(&b)
                        .map_err(|e| CallError::new(502, format!("{peer}'s answer: {e}")))
                })?;
            audit.claimed_calls = answer.royalty_calls;
            let page = answer.royalty_receipts.len() as u64;
            for bytes in &answer.royalty_receipts {
                let checked = protocol::credits::Receipt::from_bytes(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.verify().map_err(|e| e.to_string()));
                let v = match checked {
                    Ok(v) if v.provider == node => v,
                    Ok(_) => {
                        audit.rejected += 1;
                        audit
                            .problems
                            .push("a receipt of a call another provider ran".into());
                        continue;
                    }
                    Err(e) => {
                        audit.rejected += 1;
                        audit
                            .problems
                            .push(format!("a receipt that does not verify: {e}"));
                        continue;
                    }
                };
                let bps = *models.entry(v.model).or_insert_with(|| {
                    self.catalog
                        .get(v.model)
                        .and_then(|m| m.body().royalty)
                        .filter(|r| r.payee == me)
                        .map(|r| r.bps)
                });
                let Some(bps) = bps else {
                    audit.rejected += 1;
                    audit.problems.push(format!(
                        "a receipt for {}, whose manifest names no royalty to this node",
                        v.model
                    ));
                    continue;
                };
                audit.receipts += 1;
                audit.billed = audit.billed.saturating_add(v.cost);
                audit.due = audit
                    .due
                    .saturating_add(protocol::credits::royalty_of(v.cost, bps));
            }
            from += page;
            if page == 0 || from >= answer.royalty_calls || from >= MAX_AUDITED_RECEIPTS {
                break;
            }
        }
        audit.audited_models = models.values().filter(|b| b.is_some()).count() as u64;
        audit.paid = self.credits.balance(&node).account.royalties_in();
        Ok(audit)
    }
}
