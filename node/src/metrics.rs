//! The node's metrics, served at `GET /metrics` in the Prometheus/OpenMetrics text format
//! (`prometheus-client`). Counters are bumped where the work happens; gauges that describe the
//! node's state (peers, catalogue size, sandbox queue) are read when scraped. Every metric is
//! documented in `docs/operating.md`, next to libp2p's own (`libp2p_*`, registered by `net`).

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Where a call ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// On this node, for its own user.
    Local,
    /// On a provider, for this node's user.
    Remote,
    /// On this node, for a peer.
    Served,
}

/// How a call or fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// The request was refused or malformed (HTTP 4xx, or a refused peer request).
    Refused,
    /// It was turned away because every slot was busy.
    Busy,
    /// It failed (the model, a provider or this node).
    Failed,
}

impl EncodeLabelValue for Place {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Place::Local => "local",
            Place::Remote => "remote",
            Place::Served => "served",
        })
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Busy => "busy",
            Outcome::Failed => "failed",
        })
    }
}

impl Outcome {
    /// The outcome of an HTTP-like status.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Ok,
            503 => Outcome::Busy,
            400..=499 => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }

    /// The outcome of a call served for a peer, by the status of its answer.
    pub fn of_reply(status: protocol::compute::InferStatus) -> Outcome {
        use protocol::compute::InferStatus as S;
        match status {
            S::Ok => Outcome::Ok,
            S::Busy | S::PaymentRequired => Outcome::Busy,
            S::BadRequest | S::NotFound | S::Refused => Outcome::Refused,
            S::Failed | S::Internal => Outcome::Failed,
        }
    }
}

/// Labels of `moxnet_calls_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallLabels {
    /// Where it ran.
    pub place: Place,
    /// How it ended.
    pub outcome: Outcome,
}

/// Labels of `moxnet_manifests_dropped_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// Why: `busy`, `catalogue_full` or `author_quota`.
    pub reason: &'static str,
}

/// Labels of `moxnet_fetches_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FetchLabels {
    /// How it ended.
    pub outcome: Outcome,
}

/// The node's counters and gauges, and the registry that holds them and libp2p's.
pub struct Metrics {
    registry: Registry,
    /// Peers connected now.
    pub peers: Gauge,
    /// Models in the catalogue (known here, local or not).
    pub models: Gauge,
    /// Models whose files and guest are all here.
    pub models_local: Gauge,
    /// Models loaded in the sandbox (at most `inference::MAX_LOADED`).
    pub models_loaded: Gauge,
    /// Sandbox calls running now.
    pub sandbox_running: Gauge,
    /// Sandbox calls waiting for a slot now.
    pub sandbox_queued: Gauge,
    /// Blob bytes received from peers and verified.
    pub bytes_fetched: Counter,
    /// Fetches finished, by outcome.
    pub fetches: Family<FetchLabels, Counter>,
    /// Calls finished, by place and outcome.
    pub calls: Family<CallLabels, Counter>,
    /// Fuel burnt by calls run on this node (local and served).
    pub fuel: Counter,
    /// Tokens (prompt and generated) of generations this node served peers.
    pub tokens: Counter,
    /// Manifests learnt from peers and dropped, by reason.
    pub manifests_dropped: Family<DropLabels, Counter>,
    /// Bytes of files the call cache holds.
    pub call_cache_bytes: Gauge,
    /// Models the call cache let go.
    pub call_cache_evicted: Counter,
    /// Credits billed by receipts: calls this node served peers (`served`) and calls peers
    /// served it (`used`).
    pub credits_billed: Family<SideLabels, Counter>,
    /// Cheques, by direction and outcome.
    pub cheques: Family<ChequeLabels, Counter>,
    /// Calls refused for payment: by this node (`served`) or to it (`used`).
    pub payment_required: Family<SideLabels, Counter>,
    /// Royalties this node owes authors for the calls it served, credits.
    pub royalties_owed: Counter,
    /// Valid votes taken, by what the vote book did with them.
    pub votes: Family<VoteLabels, Counter>,
    /// Searches answered, and how long each took.
    pub search_seconds: Histogram,
    /// Models in the search index.
    pub search_models: Gauge,
}

/// Labels of `moxnet_votes_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VoteLabels {
    /// `new`, `replaced`, `older`, `same` or `full`.
    pub outcome: &'static str,
}

/// Labels of the credit metrics: which side of calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SideLabels {
    /// `served` (this node ran the calls) or `used` (peers ran them for it).
    pub side: &'static str,
}

/// Labels of `moxnet_cheques_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ChequeLabels {
    /// `sent` or `received`.
    pub direction: &'static str,
    /// `new`, `stale` (the one held or older) or `refused`.
    pub outcome: &'static str,
}

impl Metrics {
    /// The node's metrics, registered in a fresh registry under `moxnet_`; `net` adds its own
    /// (`moxnet_net_*`, and libp2p's `libp2p_*`) to [`Metrics::registry_mut`], the registry's
    /// root, before the node starts.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("moxnet");
        let metrics = Metrics {
            peers: Gauge::default(),
            models: Gauge::default(),
            models_local: Gauge::default(),
            models_loaded: Gauge::default(),
            sandbox_running: Gauge::default(),
            sandbox_queued: Gauge::default(),
            bytes_fetched: Counter::default(),
            fetches: Family::default(),
            calls: Family::default(),
            fuel: Counter::default(),
            tokens: Counter::default(),
            manifests_dropped: Family::default(),
            call_cache_bytes: Gauge::default(),
            call_cache_evicted: Counter::default(),
            credits_billed: Family::default(),
            cheques: Family::default(),
            payment_required: Family::default(),
            royalties_owed: Counter::default(),
            votes: Family::default(),
            search_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 12)),
            search_models: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("peers", "Peers connected now", metrics.peers.clone());
        registry.register(
            "models",
            "Models this node knows (published here, announced or synced)",
            metrics.models.clone(),
        );
        registry.register(
            "models_local",
            "Models whose files and guest are all on this node",
            metrics.models_local.clone(),
        );
        registry.register(
            "models_loaded",
            "Models loaded in the sandbox now (the least recently called gives way beyond 32)",
            metrics.models_loaded.clone(),
        );
        registry.register(
            "sandbox_running",
            "Sandbox calls running now",
            metrics.sandbox_running.clone(),
        );
        registry.register(
            "sandbox_queued",
            "Sandbox calls waiting for a slot now (queue depth)",
            metrics.sandbox_queued.clone(),
        );
        registry.register(
            "blob_fetched_bytes",
            "Blob bytes received from peers and verified",
            metrics.bytes_fetched.clone(),
        );
        registry.register(
            "fetches",
            "Fetches finished, by outcome",
            metrics.fetches.clone(),
        );
        registry.register(
            "calls",
            "Inference calls finished, by place (local, remote, served) and outcome",
            metrics.calls.clone(),
        );
        registry.register(
            "fuel",
            "Fuel burnt by calls run on this node",
            metrics.fuel.clone(),
        );
        registry.register(
            "tokens_served",
            "Tokens (prompt and generated) of generations this node served peers",
            metrics.tokens.clone(),
        );
        registry.register(
            "manifests_dropped",
            "Manifests from peers dropped: busy (256 being stored at once), catalogue_full or author_quota",
            metrics.manifests_dropped.clone(),
        );
        registry.register(
            "call_cache_bytes",
            "Bytes of files of models fetched for peers' calls kept now ([compute] cache_mib)",
            metrics.call_cache_bytes.clone(),
        );
        registry.register(
            "call_cache_evicted",
            "Models fetched for peers' calls let go (least recently called) to fit [compute] cache_mib",
            metrics.call_cache_evicted.clone(),
        );
        registry.register(
            "credits_billed",
            "Credits billed by receipts, by side: served (peers owe this node) or used (this node owes peers)",
            metrics.credits_billed.clone(),
        );
        registry.register(
            "votes",
            "Valid votes taken (heard or cast), by outcome: new (a voter's first on a model), replaced (it superseded the standing one), older or same (ignored), full (the voter or the book at its limit)",
            metrics.votes.clone(),
        );
        registry.register(
            "search_seconds",
            "Searches answered (GET /api/v1/search, moxnet search), by time taken",
            metrics.search_seconds.clone(),
        );
        registry.register(
            "search_models",
            "Models in the search index (it follows the catalogue within a fraction of a second)",
            metrics.search_models.clone(),
        );
        registry.register(
            "cheques",
            "Cheques sent and received, by outcome: new, stale (the one held or older, ignored) or refused",
            metrics.cheques.clone(),
        );
        registry.register(
            "payment_required",
            "Calls refused for payment: by this node (served) or by providers (used)",
            metrics.payment_required.clone(),
        );
        registry.register(
            "royalties_owed",
            "Royalties this node owes authors for the calls it served, credits",
            metrics.royalties_owed.clone(),
        );
        Metrics {
            registry: root,
            ..metrics
        }
    }

    /// The registry, for other components to register their metrics at start-up.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Counts one finished call.
    pub fn call(&self, place: Place, outcome: Outcome) {
        self.calls
            .get_or_create(&CallLabels { place, outcome })
            .inc();
    }

    /// Counts credits billed on one side.
    pub fn billed(&self, side: &'static str, credits: u64) {
        self.credits_billed
            .get_or_create(&SideLabels { side })
            .inc_by(credits);
    }

    /// Counts one cheque.
    pub fn cheque(&self, direction: &'static str, outcome: &'static str) {
        self.cheques
            .get_or_create(&ChequeLabels { direction, outcome })
            .inc();
    }

    /// Counts one call refused for payment.
    pub fn refused_for_payment(&self, side: &'static str) {
        self.payment_required
            .get_or_create(&SideLabels { side })
            .inc();
    }

    /// Counts one finished fetch.
    pub fn fetch(&self, outcome: Outcome) {
        self.fetches.get_or_create(&FetchLabels { outcome }).inc();
    }

    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_text_format() {
        let m = Metrics::new();
        m.call(Place::Served, Outcome::Ok);
        m.call(Place::Served, Outcome::Ok);
        m.fuel.inc_by(1234);
        m.peers.set(3);
        let text = m.encode().expect("encode");
        assert!(
            text.contains(r#"moxnet_calls_total{place="served",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains("moxnet_fuel_total 1234"), "{text}");
        assert!(text.contains("moxnet_peers 3"), "{text}");
        assert!(
            text.contains("# HELP moxnet_peers Peers connected now"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn other_components_register_at_the_root() {
        let mut m = Metrics::new();
        let sub = m.registry_mut().sub_registry_with_prefix("moxnet_net");
        sub.register("connections_pruned", "help", Counter::<u64>::default());
        let text = m.encode().expect("encode");
        assert!(
            text.contains("\nmoxnet_net_connections_pruned_total 0\n"),
            "{text}"
        );
        assert!(text.contains("\nmoxnet_peers 0\n"), "{text}");
    }
}
