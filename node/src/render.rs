//! Rendering typed results for people: one [`Render`] impl per answer of `/api/v1` (and the
//! CLI's own results). With `--json` the CLI prints the same value serialised instead, so text
//! and JSON come from one typed result, whether the node or the CLI produced it.

use api::dto::{
    Added, BlobList, CreditsView, DimView, Exported, FetchProgress, GcReport, History, ModelList,
    ModelView, OfferList, PeerCredits, PinChange, Published, ReceiptList, ReindexReport,
    SnapshotAdded, VerifyReport,
};
use api::oip::InferResponse;
use serde_json::Value;

/// A result the CLI prints as text.
pub trait Render {
    /// The text shown without `--json` (empty: print nothing).
    fn text(&self) -> String;
}

impl Render for Added {
    fn text(&self) -> String {
        self.hash.clone()
    }
}

impl Render for Exported {
    fn text(&self) -> String {
        format!(
            "wrote {} {} ({})",
            self.kind,
            self.path.display(),
            bytes(self.bytes)
        )
    }
}

impl Render for Published {
    fn text(&self) -> String {
        self.model_id.clone()
    }
}

impl Render for ModelList {
    fn text(&self) -> String {
        if self.models.is_empty() {
            return "no models known yet".into();
        }
        self.models
            .iter()
            .map(|r| {
                format!(
                    "{}  {} {}  {}{}",
                    r.model_id,
                    r.name,
                    r.version,
                    bytes(r.bytes),
                    if r.local { "" } else { "  (not fetched)" },
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Render for BlobList {
    fn text(&self) -> String {
        self.blobs
            .iter()
            .map(|r| {
                format!(
                    "{}  {:>10}  {:<11} {}",
                    r.hash,
                    bytes(r.size),
                    r.kind,
                    if r.pinned { "pinned" } else { "" },
                )
                .trim_end()
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn dims(shape: &[DimView]) -> String {
    let parts: Vec<String> = shape
        .iter()
        .map(|d| match d {
            DimView::Fixed(n) => n.to_string(),
            DimView::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The first 16 hex characters (8 bytes) of a hash, as listings show it.
fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// Voters `moxnet show` lists under the score (the heaviest; `moxnet votes` lists them all).
const SHOWN_VOTERS: usize = 5;

impl Render for ModelView {
    fn text(&self) -> String {
        let mut out = vec![
            format!("model    {}", self.model_id),
            format!("name     {} {}", self.name, self.version),
            format!("author   {} (signature verified)", self.author),
        ];
        if !self.description.is_empty() {
            out.push(format!("about    {}", self.description));
        }
        if !self.license.is_empty() {
            out.push(format!("license  {}", self.license));
        }
        if !self.tags.is_empty() {
            out.push(format!("tags     {}", self.tags.join(", ")));
        }
        if !self.authors.is_empty() {
            out.push(format!("authors  {}", self.authors.join(", ")));
        }
        out.push(format!(
            "runtime  {}{}",
            self.runtime.kind,
            self.runtime
                .entry
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
        if let Some(lm) = &self.runtime.language_model {
            out.push(format!(
                "language {}, {:.0}M parameters, {}, context {} tokens{}",
                lm.architecture,
                lm.parameters as f64 / 1e6,
                lm.quantisation,
                lm.context_length,
                if lm.chat_template.is_some() {
                    ", chat template"
                } else {
                    ""
                }
            ));
        }
        for t in &self.interface.inputs {
            out.push(format!(
                "input    {} {} {}",
                t.name,
                t.datatype,
                dims(&t.shape)
            ));
        }
        for t in &self.interface.outputs {
            out.push(format!(
                "output   {} {} {}",
                t.name,
                t.datatype,
                dims(&t.shape)
            ));
        }
        if let Some(p) = &self.parent {
            out.push(format!("parent   {p}"));
        }
        if let Some(r) = &self.royalty {
            out.push(format!(
                "royalty  {}.{:02}% of every call's cost to {}",
                r.bps / 100,
                r.bps % 100,
                r.payee
            ));
        }
        for d in &self.datasets {
            out.push(format!("dataset  {} {}", d.hash, d.description));
        }
        let total: u64 = self.files.iter().map(|f| f.size).sum();
        out.push(format!("files    {} ({})", self.files.len(), bytes(total)));
        for f in &self.files {
            out.push(format!(
                "  {}  {:>10}  {}",
                short(&f.hash),
                bytes(f.size),
                f.path
            ));
        }
        if !self.snapshots.is_empty() {
            out.push(format!(
                "snapshots {} (see `moxnet history {}`)",
                self.snapshots.len(),
                self.model_id
            ));
        }
        match &self.votes {
            Some(v) => {
                out.push(format!(
                    "score    {:.6} = up {:.6} - down {:.6} (votes weighed by trust x usage, as this node sees them)",
                    v.score, v.up_weight, v.down_weight
                ));
                out.push(format!(
                    "votes    {} up, {} down, {} retracted; {} paying voters; usage {} credits on trusted providers",
                    v.up, v.down, v.retracted, v.paying_voters, v.usage
                ));
                for voter in v
                    .voters
                    .iter()
                    .filter(|v| v.weight > 0.0)
                    .take(SHOWN_VOTERS)
                {
                    out.push(format!(
                        "  {} {:<7} weight {:.6} (trust {:.6}, usage {})",
                        short(&voter.node_id),
                        voter.choice,
                        voter.weight,
                        voter.trust,
                        voter.usage
                    ));
                }
            }
            None => {
                out.push("score    (the node is not running: no trust graph to weigh votes)".into())
            }
        }
        out.join("\n")
    }
}

impl Render for SnapshotAdded {
    fn text(&self) -> String {
        self.snapshot.clone()
    }
}

impl Render for History {
    fn text(&self) -> String {
        if self.snapshots.is_empty() {
            return "no snapshots".into();
        }
        self.snapshots
            .iter()
            .map(|s| {
                let metrics: Vec<String> =
                    s.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let weight_bytes: u64 = s.weights.iter().map(|w| w.size).sum();
                format!(
                    "step {:>8}  {}  {}  weights {} ({})",
                    s.step,
                    short(&s.snapshot),
                    metrics.join(" "),
                    s.weights.len(),
                    bytes(weight_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Render for PinChange {
    fn text(&self) -> String {
        match (self.pinned, self.was_pinned) {
            (true, _) => format!("pinned {}", self.hash),
            (false, true) => format!("unpinned {}", self.hash),
            (false, false) => format!("{} was not pinned", self.hash),
        }
    }
}

impl Render for GcReport {
    fn text(&self) -> String {
        let mut text = format!(
            "removed {} blobs, freed {}",
            self.blobs_removed,
            bytes(self.bytes_freed)
        );
        if self.partials_removed > 0 {
            text += &format!(
                "; removed {} abandoned partial blobs",
                self.partials_removed
            );
        }
        if self.orphans > 0 {
            text += &format!(
                "\n{} blob files are not in the index (kept); `moxnet reindex` adopts them",
                self.orphans
            );
        }
        text
    }
}

impl Render for ReindexReport {
    fn text(&self) -> String {
        format!(
            "adopted {} blobs ({}, pinned; {} models), removed {} files whose bytes did not match their name",
            self.adopted,
            bytes(self.adopted_bytes),
            self.models,
            self.removed
        )
    }
}

impl Render for VerifyReport {
    fn text(&self) -> String {
        let mut out: Vec<String> = self
            .problems
            .iter()
            .map(|p| format!("{}  {}", p.hash, p.problem))
            .collect();
        out.push(format!(
            "checked {} blobs ({}): {}",
            self.checked,
            bytes(self.bytes),
            if self.ok {
                "all intact".to_string()
            } else {
                format!("{} with problems", self.problems.len())
            }
        ));
        out.join("\n")
    }
}

impl Render for FetchProgress {
    fn text(&self) -> String {
        format!(
            "fetched {} ({} from {} peers in {:.2} s, {} peers banned)",
            self.id,
            bytes(self.bytes_total),
            self.peers_used,
            self.elapsed_ms as f64 / 1000.0,
            self.peers_banned
        )
    }
}

impl Render for PeerCredits {
    fn text(&self) -> String {
        let balance = match self.net {
            0 => "even".to_string(),
            n if n > 0 => format!("owes this node {n}"),
            n => format!("this node owes {}", n.unsigned_abs()),
        };
        let mut line = format!(
            "{}  served {} calls ({} credits, {} forgiven)  used {} calls ({} credits)  paid in {}  paid out {}  {balance}",
            self.peer_id,
            self.served_calls,
            self.served,
            self.forgiven,
            self.used_calls,
            self.used,
            self.paid_in,
            self.paid_out,
        );
        if self.in_flight > 0 {
            line.push_str(&format!("  {} reserved in flight", self.in_flight));
        }
        if self.royalties_owed > 0 || self.royalties_received > 0 {
            line.push_str(&format!(
                "  royalties owed {} ({} calls, {} paid)  received {}",
                self.royalties_owed,
                self.royalty_calls,
                self.royalties_paid,
                self.royalties_received
            ));
        }
        line
    }
}

impl Render for CreditsView {
    fn text(&self) -> String {
        let mut lines = vec![format!(
            "terms: pay at {} (half of the payment threshold {}), refused past {}; free allowance {} left of {} (+{}/s); spend limit {}",
            self.payment_threshold / 2,
            self.payment_threshold,
            self.disconnect_threshold,
            self.free_left,
            self.free_cap,
            self.free_per_sec,
            self.spend_limit
        )];
        if self.peers.is_empty() {
            lines.push("no calls with peers yet".to_string());
        }
        lines.extend(self.peers.iter().map(Render::text));
        lines.join("\n")
    }
}

impl Render for api::dto::RoyaltyAudit {
    fn text(&self) -> String {
        let verdict = match self.due.cmp(&self.paid) {
            std::cmp::Ordering::Equal => "paid in full".to_string(),
            std::cmp::Ordering::Greater => format!("{} still owed", self.due - self.paid),
            std::cmp::Ordering::Less => {
                format!("{} paid beyond the receipts", self.paid - self.due)
            }
        };
        let mut lines = vec![format!(
            "{}: {} receipts checked of {} calls it reports ({} models), billed {} credits, royalties due {}, paid {}: {verdict}",
            self.peer_id,
            self.receipts,
            self.claimed_calls,
            self.audited_models,
            self.billed,
            self.due,
            self.paid
        )];
        if self.rejected > 0 {
            lines.push(format!("{} receipts refused:", self.rejected));
            lines.extend(self.problems.iter().take(20).map(|p| format!("  {p}")));
        }
        lines.join("\n")
    }
}

impl Render for ReceiptList {
    fn text(&self) -> String {
        let mut lines = vec![self.account.text()];
        let row = |side: &str, r: &api::dto::ReceiptView| {
            format!(
                "{side} {}  model {}  fuel {}  price {}/Mfuel  cost {}",
                r.id, r.model, r.fuel, r.price_per_mfuel, r.cost
            )
        };
        lines.extend(self.served.iter().map(|r| row("served", r)));
        lines.extend(self.used.iter().map(|r| row("used  ", r)));
        lines.join("\n")
    }
}

impl Render for OfferList {
    fn text(&self) -> String {
        if self.offers.is_empty() {
            return "no compute offers heard yet".to_string();
        }
        self.offers
            .iter()
            .map(|o| {
                let tokens = o
                    .price_per_mtoken
                    .map_or_else(String::new, |p| format!(" {p}/Mtoken"));
                format!(
                    "{}  {} cores  {} MiB  price {}/Mfuel{tokens}  models {}  {}  latency {}  failures {}",
                    o.peer_id,
                    o.cores,
                    o.memory_mib,
                    o.price_per_mfuel,
                    o.models.len(),
                    o.backends.join("+"),
                    o.latency_ms
                        .map_or_else(|| "unmeasured".to_string(), |l| format!("{l:.1} ms")),
                    o.failures
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// An OIP response, shortly: each output's type, shape and first values, then the fuel, the
/// time and, for a remote call, the provider (and who agreed, for `--verify`).
impl Render for InferResponse {
    fn text(&self) -> String {
        let mut lines = Vec::new();
        for o in &self.outputs {
            let values = o.data.values();
            let shown: Vec<String> = values.iter().take(8).map(Value::to_string).collect();
            let more = if o.data.len() > 8 {
                format!(", … ({} values)", o.data.len())
            } else {
                String::new()
            };
            lines.push(format!(
                "{} {} {}: [{}{more}]",
                o.name,
                o.datatype,
                serde_json::json!(o.shape),
                shown.join(", ")
            ));
        }
        let p = &self.parameters;
        let text = |k: &str| p.get(k).and_then(Value::as_str);
        let place = match text("provider") {
            Some(peer) => format!(" on {peer} ({})", text("backend").unwrap_or("?")),
            None => String::new(),
        };
        lines.push(format!(
            "fuel {}, {:.1} ms{place}",
            p.get("fuel").and_then(Value::as_u64).unwrap_or(0),
            p.get("elapsed_ms").and_then(Value::as_f64).unwrap_or(0.0)
        ));
        if let Some(hash) = text("output_hash") {
            lines.push(format!("output hash {hash}"));
        }
        if let Some(by) = p.get("verified_by").and_then(Value::as_array) {
            let by: Vec<&str> = by.iter().filter_map(Value::as_str).collect();
            lines.push(format!(
                "verified: {} agree on the outputs",
                by.join(" and ")
            ));
        }
        lines.join("\n")
    }
}

/// Human-readable byte count (as the web UI writes it).
pub fn bytes(n: u64) -> String {
    api::ui::size(n)
}

impl Render for api::dto::VotesView {
    fn text(&self) -> String {
        let mut lines = vec![format!(
            "score {:.6} (up {:.6}, down {:.6}); votes: {} up, {} down, {} retracted; {} paying voters, usage {} credits (a vote weighs its voter's whole trust from {} credits)",
            self.score,
            self.up_weight,
            self.down_weight,
            self.up,
            self.down,
            self.retracted,
            self.paying_voters,
            self.usage,
            self.usage_full
        )];
        for v in &self.voters {
            lines.push(format!(
                "  {} {:<7} weight {:.6} = trust {:.6} x usage {} ({} receipts, clock {})",
                v.node_id, v.choice, v.weight, v.trust, v.usage, v.receipts, v.clock
            ));
        }
        lines.join("\n")
    }
}

impl Render for api::dto::FollowList {
    fn text(&self) -> String {
        if self.follows.is_empty() {
            return "following nobody".into();
        }
        let mut lines = vec![format!("following {}:", self.follows.len())];
        lines.extend(self.follows.iter().map(|n| format!("  {n}")));
        lines.join("\n")
    }
}

impl Render for api::dto::SearchResults {
    fn text(&self) -> String {
        if self.hits.is_empty() {
            return if self.total == 0 {
                "no model matches".into()
            } else {
                format!("{} models match; none on this page", self.total)
            };
        }
        let mut lines = Vec::with_capacity(self.hits.len() + 1);
        for h in &self.hits {
            let tags = if h.tags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", h.tags.join(", "))
            };
            lines.push(format!(
                "{}  {} {}  score {:.4} ({} paying voters, usage {}){}{}",
                h.model_id,
                h.name,
                h.version,
                h.score,
                h.paying_voters,
                h.usage,
                if h.local { "  local" } else { "" },
                tags,
            ));
            if !h.description.is_empty() {
                lines.push(format!("    {}", h.description));
            }
        }
        lines.push(format!(
            "{} of {} matching models, by {}",
            self.hits.len(),
            self.total,
            self.sort
        ));
        lines.join("\n")
    }
}

impl Render for api::dto::RevokeView {
    fn text(&self) -> String {
        format!(
            "revoked the key of node {} (revocation {}); {} of its standing votes dropped here. Its votes count nowhere now: vote from a new home",
            self.node_id, self.revocation_id, self.dropped_votes
        )
    }
}
