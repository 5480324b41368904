//! Compute sharing's state on this node: the `[compute]` settings, the offers heard, the nonce
//! window and the per-caller slots (the `compute` crate's I/O-free types behind locks), and how
//! offers are shown by the API. The I/O of serving and making calls is `remote.rs`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use compute::{CallerSlots, CheckedCall, Nonces, OfferView, Offers, ServeTerms};
use net::libp2p::PeerId;
use protocol::NodeId;

use crate::config::ComputeSection;

/// Milliseconds since the Unix epoch: the time the `compute` core is given.
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
    /// Price charged for generation, per million tokens.
    pub price_per_mtoken: u64,
    /// Highest price paid for generation on peers, per million tokens.
    pub max_price_per_mtoken: u64,
    /// A provider's time for one call.
    pub call_timeout: Duration,
    /// Providers tried per call.
    pub attempts: usize,
    /// The most bytes of files fetched to serve one peer's call.
    pub max_fetch_bytes: u64,
    /// Bytes of files of models fetched for peers' calls kept (`crate::cache`).
    pub cache_bytes: u64,
    /// The engine this node's generations run on, as offered (see
    /// `LanguageModels::engine`).
    pub generation_engine: &'static str,
}

impl From<&ComputeSection> for ComputeConfig {
    fn from(c: &ComputeSection) -> Self {
        // Peers keep an offer at most `compute::MAX_OFFER_TTL_MS` (10 min) without renewal.
        let interval = c.offer_interval_secs.unwrap_or(30).clamp(1, 300);
        ComputeConfig {
            serve: c.serve.unwrap_or(false),
            price_per_mfuel: c.price_per_mfuel.unwrap_or(1),
            offer_interval: Duration::from_secs(interval),
            // An offer outlives at least two re-announcements.
            offer_ttl: Duration::from_secs(
                c.offer_ttl_secs
                    .unwrap_or(120)
                    .max(2 * interval)
                    .min(compute::MAX_OFFER_TTL_MS / 1000),
            ),
            per_peer_concurrent: c.per_peer_concurrent.unwrap_or(4).max(1),
            max_price_per_mfuel: c.max_price_per_mfuel.unwrap_or(100),
            price_per_mtoken: c.price_per_mtoken.unwrap_or(100_000),
            max_price_per_mtoken: c.max_price_per_mtoken.unwrap_or(10_000_000),
            call_timeout: Duration::from_secs(c.call_timeout_secs.unwrap_or(120).max(1)),
            attempts: c.attempts.unwrap_or(3).max(1),
            max_fetch_bytes: c.max_fetch_mib.unwrap_or(16 << 10).saturating_mul(1 << 20),
            cache_bytes: c.cache_mib.unwrap_or(32 << 10).saturating_mul(1 << 20),
            generation_engine: engine::llama::ENGINE,
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
    pub(crate) slots: CallerSlots,
}

impl Compute {
    /// Compute sharing with `config`.
    pub fn new(config: ComputeConfig) -> Compute {
        Compute {
            slots: CallerSlots::new(config.per_peer_concurrent),
            config,
            offers: Mutex::new(Offers::default()),
            // Requests from before this start are refused: the nonces of the last run are gone.
            nonces: Mutex::new(Nonces::since(now_ms())),
        }
    }

    /// The offers table, locked.
    pub fn offers(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.offers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A peer connected: its offers are vouched for (they rank ahead of strangers').
    pub fn peer_joined(&self, peer: &PeerId) {
        if let Some(node) = net::node_id_of(peer) {
            self.offers().peer_joined(node);
        }
    }

    /// Forgets the offer of a peer that disconnected.
    pub fn peer_left(&self, peer: &PeerId) {
        if let Some(node) = net::node_id_of(peer) {
            self.offers().remove(&node);
        }
    }

    /// Checks an inbound call from `from` against this node's terms, then its nonce (in that
    /// order: a refused request does not spend its nonce).
    pub(crate) fn check(
        &self,
        me: NodeId,
        from: &PeerId,
        call: &[u8],
    ) -> Result<CheckedCall, compute::RequestError> {
        self.check_priced(me, from, call, self.config.price_per_mfuel)
    }

    /// [`Compute::check`] at `price` (a generation's: per million tokens).
    pub(crate) fn check_priced(
        &self,
        me: NodeId,
        from: &PeerId,
        call: &[u8],
        price: u64,
    ) -> Result<CheckedCall, compute::RequestError> {
        let terms = ServeTerms {
            provider: me,
            serve: self.config.serve,
            price_per_mfuel: price,
        };
        let checked = compute::check_call(call, net::node_id_of(from), &terms)?;
        let r = checked.request.body();
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(checked.caller(), r.nonce, r.issued_ms, now_ms())?;
        Ok(checked)
    }
}

/// An offer as the API lists it.
pub fn offer_view(v: OfferView) -> api::dto::OfferView {
    api::dto::OfferView {
        node_id: v.node.to_string(),
        peer_id: net::peer_id_of(&v.node).map_or_else(String::new, |p| p.to_string()),
        cores: v.offer.cores,
        memory_mib: v.offer.memory_mib,
        gpus: v.offer.gpus,
        backends: v.offer.backends,
        models: v.offer.models.iter().map(|m| m.to_string()).collect(),
        max_concurrent: v.offer.max_concurrent,
        price_per_mfuel: v.offer.price_per_mfuel,
        price_per_mtoken: v.offer.price_per_mtoken,
        expires_in_s: v.expires_in_s,
        latency_ms: v.stats.latency_ms,
        in_flight: v.stats.in_flight,
        failures: v.stats.failures,
    }
}

/// The offers heard and their stats, for the API, ordered by peer id.
pub fn offer_views(offers: &Offers, now_ms: u64) -> Vec<api::dto::OfferView> {
    let mut list: Vec<api::dto::OfferView> =
        offers.views(now_ms).into_iter().map(offer_view).collect();
    list.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    list
}
