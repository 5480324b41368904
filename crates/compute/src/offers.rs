//! The caller's side of provider choice: the compute offers this node heard, what it measured
//! of each provider ([`Stats`]), and the ranking of providers for a call ([`Offers::candidates`],
//! scored by [`score`]).
//!
//! **Vouched first.** A signed offer proves only that someone holds a key, and keys cost
//! nothing: an attacker can sign thousands of free offers naming addresses where nothing
//! listens. So the ranking puts *vouched* providers first, those this node is connected to now
//! ([`Offers::peer_joined`]) or that answered a call from here, and only then the strangers,
//! each by score. A flood of offers from strangers costs honest calls nothing while a vouched
//! provider can take them.
//!
//! Providers are keyed by [`NodeId`], the key that signed their offer. Every method that needs
//! the time takes it (`now_ms`, milliseconds since the Unix epoch), so the table is
//! deterministic under test.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use protocol::compute::ComputeOffer;
use protocol::{ModelId, NodeId, Signed};

/// Consecutive failures after which a provider's offer is dropped.
pub const MAX_FAILURES: u32 = 3;
/// Most offers kept. Node ids cost nothing, so a flood of offers from fresh ids is bounded
/// here: when the table is full, a new offer takes the place of the longest-held offer of a
/// provider that never answered a call from here; providers that did are never pushed out.
pub const MAX_OFFERS: usize = 1024;
/// The longest an offer is kept without being renewed, ms, whatever it says.
pub const MAX_OFFER_TTL_MS: u64 = 10 * 60_000;
/// How far in the future an offer may say it was made, ms (clock skew); later ones are
/// ignored, since a far-future offer would block the provider's real ones.
pub const MAX_OFFER_SKEW_MS: u64 = 5 * 60_000;
/// How long a failure weighs on a provider's score, ms.
pub const FAILURE_MEMORY_MS: u64 = 60_000;

/// What a caller measured about one provider.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Smoothed latency of successful calls, ms.
    pub latency_ms: Option<f64>,
    /// Calls from here running there now.
    pub in_flight: u32,
    /// Failures since the last success.
    pub failures: u32,
    /// When the last one happened, ms since the Unix epoch.
    pub last_failure_ms: Option<u64>,
}

/// A provider's offer and what this node measured of it.
#[derive(Debug, Clone)]
struct Entry {
    offer: Signed<ComputeOffer>,
    stats: Stats,
    /// When it stops counting here: its expiry, at most [`MAX_OFFER_TTL_MS`] after it arrived.
    expires_ms: u64,
    /// When this provider's first offer arrived.
    since_ms: u64,
}

/// What a call requires of its provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// A GPU and an engine that uses it (for generation, a GPU engine for language models).
    pub gpu: bool,
    /// Generation by a language model: the provider states a price per million tokens, and
    /// `max_price` and the candidates' prices are per million tokens.
    pub tokens: bool,
}

impl Needs {
    /// The price `offer` charges for such a call, if it takes them: per million fuel units,
    /// or per million tokens for generation.
    pub fn price(&self, offer: &ComputeOffer) -> Option<u64> {
        let gpu = if self.tokens {
            offer.offers_gpu_generation()
        } else {
            offer.offers_gpu()
        };
        if self.gpu && !gpu {
            return None;
        }
        if self.tokens {
            offer.price_per_mtoken
        } else {
            Some(offer.price_per_mfuel)
        }
    }
}

/// A provider a call may go to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its node id (the request is addressed to it; its peer id derives from it).
    pub node: NodeId,
    /// Addresses from its offer, as offered (multiaddresses ending in `/p2p/<peer id>`); the
    /// caller parses them.
    pub addrs: Vec<String>,
    /// Its offered price per million fuel units, or per million tokens for generation
    /// (`None` when forced without an offer). The request caps the price at it, so a provider
    /// cannot charge more than it offered.
    pub price_per_mfuel: Option<u64>,
    /// The credit terms it offered (`None` when forced without an offer).
    pub credit: Option<protocol::credits::CreditTerms>,
    /// The engines its offer lists.
    pub backends: Vec<String>,
    /// Connected now, or answered a call from here: ranked ahead of every stranger.
    pub vouched: bool,
    /// Lower is better.
    pub score: f64,
}

/// How a call to a provider ended, for its stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered with a verified result, after this long.
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

/// One provider's offer and stats, as a listing shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferView {
    /// The provider (the offer's signer).
    pub node: NodeId,
    /// Its offer.
    pub offer: ComputeOffer,
    /// Seconds until the offer expires.
    pub expires_in_s: u64,
    /// What this node measured of it.
    pub stats: Stats,
}

/// The compute offers this node knows, with per-provider stats, and the ranking of providers.
#[derive(Debug, Default)]
pub struct Offers {
    by_node: HashMap<NodeId, Entry>,
    distrusted: HashSet<NodeId>,
    /// Providers connected to this node now (bounded by the node's connection limits).
    connected: HashSet<NodeId>,
}

impl Offers {
    /// Records an offer heard (from its signer). Returns whether it was new or newer; expired
    /// offers, older ones and offers of distrusted providers are ignored.
    ///
    /// Bounds: offers made more than [`MAX_OFFER_SKEW_MS`] in the future are ignored, none is
    /// kept more than [`MAX_OFFER_TTL_MS`] without renewal, and at most [`MAX_OFFERS`] are kept
    /// (see there for which one gives way).
    pub fn insert(&mut self, offer: Signed<ComputeOffer>, now_ms: u64) -> bool {
        let node = offer.signer();
        let body = offer.body();
        if body.expires_ms <= now_ms
            || body.issued_ms > now_ms.saturating_add(MAX_OFFER_SKEW_MS)
            || self.distrusted.contains(&node)
        {
            return false;
        }
        let expires_ms = body.expires_ms.min(now_ms.saturating_add(MAX_OFFER_TTL_MS));
        match self.by_node.get_mut(&node) {
            Some(e) if e.offer.body().issued_ms >= body.issued_ms => false,
            Some(e) => {
                e.offer = offer;
                e.expires_ms = expires_ms;
                true
            }
            None => {
                if self.by_node.len() >= MAX_OFFERS && !self.make_room() {
                    return false;
                }
                self.by_node.insert(
                    node,
                    Entry {
                        offer,
                        stats: Stats::default(),
                        expires_ms,
                        since_ms: now_ms,
                    },
                );
                true
            }
        }
    }

    /// Drops the longest-held offer of a provider that never answered a call from here;
    /// false when every provider kept has.
    fn make_room(&mut self) -> bool {
        let unproven = self
            .by_node
            .iter()
            .filter(|(_, e)| e.stats.latency_ms.is_none())
            .min_by_key(|(node, e)| (e.since_ms, **node))
            .map(|(node, _)| *node);
        match unproven {
            Some(node) => {
                self.by_node.remove(&node);
                true
            }
            None => false,
        }
    }

    /// How many offers are kept.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Drops the offer of a provider that went away (it disconnected).
    pub fn remove(&mut self, node: &NodeId) {
        self.by_node.remove(node);
        self.connected.remove(node);
    }

    /// `node` is connected to this node now: its offers are vouched for until it leaves
    /// ([`Offers::remove`]).
    pub fn peer_joined(&mut self, node: NodeId) {
        self.connected.insert(node);
    }

    /// The addresses `node` stated in the offer kept from it (empty if none).
    pub fn addrs_of(&self, node: &NodeId) -> Vec<String> {
        self.by_node
            .get(node)
            .map(|e| e.offer.body().addrs.clone())
            .unwrap_or_default()
    }

    /// The credit terms `node` stated in the offer kept from it, if any.
    pub fn terms_of(&self, node: &NodeId) -> Option<protocol::credits::CreditTerms> {
        self.by_node.get(node).map(|e| e.offer.body().credit)
    }

    /// Drops expired offers.
    pub fn prune(&mut self, now_ms: u64) {
        self.by_node.retain(|_, e| e.expires_ms > now_ms);
    }

    /// Providers for `model` at or below `max_price`, best first: vouched ones (see the module
    /// doc) ahead of strangers, then by score, ties by node id. Offers listing the model rank
    /// ahead of equal ones that would have to fetch it.
    pub fn candidates(&self, model: ModelId, max_price: u64, now_ms: u64) -> Vec<Candidate> {
        self.candidates_for(model, max_price, Needs::default(), now_ms)
    }

    /// [`Offers::candidates`] that meet `needs` (a GPU: see
    /// [`protocol::compute::ComputeOffer::offers_gpu`]).
    pub fn candidates_for(
        &self,
        model: ModelId,
        max_price: u64,
        needs: Needs,
        now_ms: u64,
    ) -> Vec<Candidate> {
        let mut list: Vec<Candidate> = self
            .by_node
            .iter()
            .filter(|(_, e)| e.expires_ms > now_ms)
            .filter_map(|(node, e)| {
                let price = needs.price(e.offer.body()).filter(|p| *p <= max_price)?;
                Some((node, e, price))
            })
            .map(|(node, e, price)| {
                let o = e.offer.body();
                Candidate {
                    node: *node,
                    addrs: o.addrs.clone(),
                    price_per_mfuel: Some(price),
                    credit: Some(o.credit),
                    backends: o.backends.clone(),
                    vouched: self.connected.contains(node) || e.stats.latency_ms.is_some(),
                    score: score(o, &e.stats, model, price, now_ms),
                }
            })
            .collect();
        list.sort_by(|a, b| {
            b.vouched
                .cmp(&a.vouched)
                .then(a.score.total_cmp(&b.score))
                .then(a.node.cmp(&b.node))
        });
        list
    }

    /// A call to `node` starts.
    pub fn started(&mut self, node: &NodeId) {
        if let Some(e) = self.by_node.get_mut(node) {
            e.stats.in_flight += 1;
        }
    }

    /// A call to `node` ended at `now_ms` with `outcome`. A provider that misbehaved is
    /// distrusted for good; one unavailable [`MAX_FAILURES`] times in a row is dropped until it
    /// offers again.
    pub fn finished(&mut self, node: &NodeId, outcome: Outcome, now_ms: u64) {
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
                s.last_failure_ms = Some(now_ms);
                if s.failures >= MAX_FAILURES {
                    self.by_node.remove(node);
                }
            }
            Outcome::Failed | Outcome::Misbehaved => {}
        }
    }

    /// Whether `node` was caught misbehaving.
    pub fn is_distrusted(&self, node: &NodeId) -> bool {
        self.distrusted.contains(node)
    }

    /// The offers and stats, ordered by node id, for a listing.
    pub fn views(&self, now_ms: u64) -> Vec<OfferView> {
        let mut list: Vec<OfferView> = self
            .by_node
            .iter()
            .map(|(node, e)| OfferView {
                node: *node,
                offer: e.offer.body().clone(),
                expires_in_s: e.expires_ms.saturating_sub(now_ms) / 1000,
                stats: e.stats.clone(),
            })
            .collect();
        list.sort_by_key(|v| v.node);
        list
    }
}

/// A provider's score for a call at `now_ms` (lower is better), in milliseconds of expected
/// delay: measured latency (50 ms until measured), stretched by the load this node puts on it,
/// plus the price the call pays (`price`, what [`Needs::price`] gives: per million fuel units,
/// or per million tokens for a generation; 10 ms per credit), a fetch if it lacks the model,
/// and failures in the last [`FAILURE_MEMORY_MS`].
pub fn score(offer: &ComputeOffer, stats: &Stats, model: ModelId, price: u64, now_ms: u64) -> f64 {
    let latency = stats.latency_ms.unwrap_or(50.0);
    let load = 1.0 + f64::from(stats.in_flight) / offer.max_concurrent.max(1) as f64;
    let price = price as f64 * 10.0;
    let fetch = if offer.models.contains(&model) {
        0.0
    } else {
        500.0
    };
    let recent = stats
        .last_failure_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < FAILURE_MEMORY_MS);
    let failures = if recent {
        f64::from(stats.failures) * 1000.0
    } else {
        0.0
    };
    latency * load + price + fetch + failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::{BlobHash, SecretKey};

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

    fn id(seed: u8) -> NodeId {
        SecretKey::from_seed(&[seed; 32]).node_id()
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

    /// An offer valid from 1 s to 61 s with these GPUs and engines, that serves generations.
    fn with(seed: u8, gpus: Vec<&str>, backends: Vec<&str>) -> Signed<ComputeOffer> {
        SecretKey::from_seed(&[seed; 32]).sign(ComputeOffer {
            issued_ms: 1000,
            expires_ms: 61_000,
            gpus: gpus.into_iter().map(String::from).collect(),
            backends: backends.into_iter().map(String::from).collect(),
            price_per_mtoken: Some(10),
            ..ComputeOffer::default()
        })
    }

    #[test]
    fn a_call_that_needs_a_gpu_sees_only_offers_with_a_gpu_and_a_gpu_engine() {
        let mut offers = Offers::default();
        offers.insert(with(1, vec![], vec!["wasm"]), 1000);
        offers.insert(with(2, vec!["NVIDIA H200"], vec!["wasm"]), 1000);
        offers.insert(with(3, vec![], vec!["wasm", "onnxruntime-cuda"]), 1000);
        offers.insert(with(4, vec!["NVIDIA H200"], vec!["onnxruntime-cuda"]), 1000);
        let gpu = Needs {
            gpu: true,
            ..Needs::default()
        };
        let found: Vec<NodeId> = offers
            .candidates_for(model(), 100, gpu, 2000)
            .iter()
            .map(|c| c.node)
            .collect();
        assert_eq!(found, vec![id(4)]);
        assert_eq!(offers.candidates(model(), 100, 2000).len(), 4);
    }

    #[test]
    fn a_generation_that_needs_a_gpu_sees_only_offers_with_a_gpu_and_a_gpu_llm_engine() {
        let mut offers = Offers::default();
        // A GPU for ONNX graphs only: its generations run on the CPU.
        offers.insert(
            with(
                1,
                vec!["NVIDIA H100"],
                vec!["wasm", "onnxruntime-cuda", "llama.cpp"],
            ),
            1000,
        );
        offers.insert(with(2, vec![], vec!["wasm", "llama.cpp-cuda"]), 1000);
        offers.insert(
            with(3, vec!["NVIDIA H100"], vec!["wasm", "llama.cpp-cuda"]),
            1000,
        );
        let needs = |gpu| Needs { gpu, tokens: true };
        let found: Vec<NodeId> = offers
            .candidates_for(model(), 100, needs(true), 2000)
            .iter()
            .map(|c| c.node)
            .collect();
        assert_eq!(found, vec![id(3)]);
        assert_eq!(
            offers
                .candidates_for(model(), 100, needs(false), 2000)
                .len(),
            3
        );
        let on_gpu = offers.candidates_for(model(), 100, needs(true), 2000);
        assert_eq!(
            protocol::compute::generation_engine(&on_gpu[0].backends),
            Some("llama.cpp-cuda")
        );
    }

    #[test]
    fn generation_sees_only_offers_with_a_token_price_at_or_below_the_callers() {
        let with = |seed: u8, price_per_mtoken: Option<u64>| {
            SecretKey::from_seed(&[seed; 32]).sign(ComputeOffer {
                issued_ms: 1000,
                expires_ms: 61_000,
                price_per_mfuel: 1,
                price_per_mtoken,
                ..ComputeOffer::default()
            })
        };
        let mut offers = Offers::default();
        offers.insert(with(1, None), 1000);
        offers.insert(with(2, Some(50)), 1000);
        offers.insert(with(3, Some(5000)), 1000);
        let tokens = Needs {
            tokens: true,
            ..Needs::default()
        };
        let found = offers.candidates_for(model(), 100, tokens, 2000);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].node, found[0].price_per_mfuel),
            (id(2), Some(50)),
            "the candidate's price is its token price"
        );
        assert_eq!(offers.candidates(model(), 100, 2000).len(), 3);
    }

    #[test]
    fn generations_rank_by_token_price_and_graph_calls_by_fuel_price() {
        let with = |seed: u8, price_per_mfuel: u64, price_per_mtoken: u64| {
            SecretKey::from_seed(&[seed; 32]).sign(ComputeOffer {
                issued_ms: 1000,
                expires_ms: 61_000,
                max_concurrent: 1,
                price_per_mfuel,
                price_per_mtoken: Some(price_per_mtoken),
                ..ComputeOffer::default()
            })
        };
        let mut offers = Offers::default();
        // Cheap fuel, dear tokens; and the other way round.
        offers.insert(with(1, 1, 90), 1000);
        offers.insert(with(2, 90, 1), 1000);
        let tokens = Needs {
            tokens: true,
            ..Needs::default()
        };
        let order = |needs| -> Vec<(NodeId, f64)> {
            offers
                .candidates_for(model(), 100, needs, 2000)
                .iter()
                .map(|c| (c.node, c.score))
                .collect()
        };
        // 50 ms unmeasured latency + 500 ms fetch + 10 ms per credit of the price that applies.
        assert_eq!(order(tokens), vec![(id(2), 560.0), (id(1), 1450.0)]);
        assert_eq!(
            order(Needs::default()),
            vec![(id(1), 560.0), (id(2), 1450.0)]
        );
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
        assert_eq!(
            order,
            vec![id(2), id(1)],
            "has the model first; too dear left out"
        );
        offers.started(&id(2));
        offers.finished(&id(2), Outcome::Unavailable, 1);
        assert_eq!(offers.candidates(model(), 100, 1)[0].node, id(1));
        offers.started(&id(1));
        offers.finished(&id(1), Outcome::Misbehaved, 1);
        assert!(offers.is_distrusted(&id(1)));
        assert!(
            !offers.insert(offer(1, 5, 1, vec![]), 5),
            "a liar's new offers are ignored"
        );
        for _ in 0..MAX_FAILURES {
            offers.finished(&id(2), Outcome::Unavailable, 1);
        }
        assert!(
            offers.candidates(model(), 100, 1).is_empty(),
            "unreachable dropped"
        );
    }

    #[test]
    fn a_failure_weighs_on_the_score_for_a_minute() {
        let offer = offer(1, 0, 1, vec![model()]);
        let healthy = score(offer.body(), &Stats::default(), model(), 1, 0);
        assert_eq!(healthy, 60.0, "50 ms unmeasured latency + 10 ms per credit");
        let failed = Stats {
            failures: 1,
            last_failure_ms: Some(1000),
            ..Stats::default()
        };
        let at = |now| score(offer.body(), &failed, model(), 1, now);
        assert_eq!(at(1000), healthy + 1000.0, "one recent failure");
        assert_eq!(at(1000 + FAILURE_MEMORY_MS - 1), healthy + 1000.0);
        assert_eq!(at(1000 + FAILURE_MEMORY_MS), healthy, "forgotten");
        // A clock that went back keeps the failure recent rather than forgetting it.
        assert_eq!(at(500), healthy + 1000.0);
        // Through the table: the failure is stamped with the time passed in.
        let mut offers = Offers::default();
        offers.insert(offer.clone(), 0);
        offers.started(&id(1));
        offers.finished(&id(1), Outcome::Unavailable, 1000);
        assert_eq!(
            offers.candidates(model(), 100, 1000)[0].score,
            healthy + 1000.0
        );
        assert_eq!(offers.views(0)[0].stats, failed);
    }

    #[test]
    fn a_provider_that_went_away_is_removed_and_views_list_the_rest() {
        let mut offers = Offers::default();
        offers.insert(offer(1, 0, 1, vec![model()]), 0);
        offers.insert(offer(2, 0, 3, vec![]), 0);
        offers.started(&id(2));
        offers.finished(&id(2), Outcome::Ok(Duration::from_millis(20)), 10);
        let views = offers.views(10_000);
        assert_eq!(views.len(), 2);
        assert!(views.windows(2).all(|w| w[0].node < w[1].node), "ordered");
        let two = views.iter().find(|v| v.node == id(2)).expect("listed");
        assert_eq!(two.expires_in_s, 50);
        assert_eq!(two.offer.price_per_mfuel, 3);
        assert_eq!(two.stats.latency_ms, Some(20.0));
        assert_eq!(two.stats.in_flight, 0);
        offers.remove(&id(2));
        let left: Vec<NodeId> = offers.views(0).iter().map(|v| v.node).collect();
        assert_eq!(left, vec![id(1)]);
        assert!(!offers.is_distrusted(&id(2)), "leaving is not lying");
    }

    #[test]
    fn offers_from_the_future_or_that_never_expire_are_bounded() {
        let mut offers = Offers::default();
        let now = 1_000_000;
        let late = offer(1, now + MAX_OFFER_SKEW_MS + 1, 1, vec![]);
        assert!(!offers.insert(late, now), "made too far in the future");
        let forever = SecretKey::from_seed(&[2; 32]).sign(ComputeOffer {
            issued_ms: now,
            expires_ms: u64::MAX,
            max_concurrent: 1,
            ..ComputeOffer::default()
        });
        assert!(offers.insert(forever, now));
        assert_eq!(
            offers
                .candidates(model(), 100, now + MAX_OFFER_TTL_MS - 1)
                .len(),
            1
        );
        assert!(
            offers
                .candidates(model(), 100, now + MAX_OFFER_TTL_MS)
                .is_empty(),
            "kept at most MAX_OFFER_TTL_MS without renewal"
        );
    }

    #[test]
    fn free_offers_from_strangers_never_rank_ahead_of_a_vouched_provider() {
        let mut offers = Offers::default();
        let now = 1_000;
        // The honest provider charges 5; a hundred strangers offer it free, listing the model.
        let honest = offer(1, now, 5, vec![model()]);
        let honest_id = honest.signer();
        offers.insert(honest, now);
        for seed in 10..110 {
            offers.insert(offer(seed, now, 0, vec![model()]), now);
        }
        let first = |o: &Offers| o.candidates(model(), 100, now)[0].node;
        assert_ne!(
            first(&offers),
            honest_id,
            "unvouched, the honest one is a stranger too"
        );
        offers.peer_joined(honest_id);
        assert_eq!(first(&offers), honest_id, "connected: first");
        offers.remove(&honest_id);
        offers.insert(offer(1, now + 1, 5, vec![model()]), now + 1);
        assert_ne!(first(&offers), honest_id, "it left: a stranger again");
        offers.started(&honest_id);
        offers.finished(&honest_id, Outcome::Ok(Duration::from_millis(80)), now + 2);
        assert_eq!(first(&offers), honest_id, "it answered a call: first");
        let list = offers.candidates(model(), 100, now);
        assert!(list[0].vouched && list[1..].iter().all(|c| !c.vouched));
    }

    #[test]
    fn a_flood_of_fresh_ids_never_pushes_out_a_provider_that_worked() {
        let mut offers = Offers::default();
        let honest = SecretKey::from_seed(&[1; 32]);
        let offer_of = |key: &SecretKey, price| {
            key.sign(ComputeOffer {
                issued_ms: 1,
                expires_ms: 100_000,
                max_concurrent: 1,
                price_per_mfuel: price,
                ..ComputeOffer::default()
            })
        };
        assert!(offers.insert(offer_of(&honest, 5), 1));
        offers.started(&honest.node_id());
        offers.finished(&honest.node_id(), Outcome::Ok(Duration::from_millis(30)), 2);
        // Three tables' worth of free offers from fresh ids.
        for i in 0..(3 * MAX_OFFERS) as u32 {
            let mut seed = [0xee; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            offers.insert(offer_of(&SecretKey::from_seed(&seed), 0), 3 + u64::from(i));
        }
        assert_eq!(offers.len(), MAX_OFFERS);
        assert!(
            offers
                .candidates(model(), 100, 10)
                .iter()
                .any(|c| c.node == honest.node_id()),
            "the provider that answered is still there"
        );
    }

    proptest! {
        /// Whatever happened, the ranking never offers an expired, too dear or distrusted
        /// provider, never lists one twice, and is sorted vouched first, then by score.
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
                    1 => { offers.started(&node); offers.finished(&node, Outcome::Ok(Duration::from_millis(price)), issued); }
                    2 => { offers.started(&node); offers.finished(&node, Outcome::Unavailable, issued); }
                    3 => { offers.started(&node); offers.finished(&node, Outcome::Busy, issued); }
                    _ => { offers.started(&node); offers.finished(&node, Outcome::Misbehaved, issued); }
                }
            }
            let list = offers.candidates(model(), max_price, now);
            let mut seen = HashSet::new();
            for w in list.windows(2) {
                // Vouched first, then by score.
                prop_assert!(w[0].vouched >= w[1].vouched);
                if w[0].vouched == w[1].vouched {
                    prop_assert!(w[0].score <= w[1].score);
                }
            }
            for c in &list {
                prop_assert!(c.price_per_mfuel.is_some_and(|p| p <= max_price));
                prop_assert!(!offers.is_distrusted(&c.node));
                prop_assert!(seen.insert(c.node));
                let e = &offers.by_node[&c.node];
                prop_assert!(e.expires_ms > now && e.expires_ms <= e.offer.body().expires_ms);
            }
        }
    }
}
