//! The pages, as pure functions from the API's answers to HTML (so they are tested and
//! benchmarked without a node): the catalogue, a model, the network, credits and the node.
//! Every page reads without JavaScript; `ui.js` adds the charts, the call form's requests, the
//! chat and live updates.

use std::collections::BTreeMap;

use maud::{Markup, html};
use serde_json::json;

use super::page::{json_block, page, score, short, size};
use crate::dto::{
    BlobList, CreditsView, DimView, FetchProgress, History, ModelView, NodeInfo, OfferList,
    SearchResults, TensorView,
};

/// Rows per catalogue page.
pub const PAGE_ROWS: usize = 50;

/// The catalogue's query, as its URL carries it (`/?q=&sort=&tag=&page=`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct CatalogueQuery {
    /// Words to search for.
    #[serde(default)]
    pub q: String,
    /// `score` (the default), `usage`, `new` or `relevance`.
    #[serde(default)]
    pub sort: Option<String>,
    /// A tag every row must carry.
    #[serde(default)]
    pub tag: Option<String>,
    /// The page, from 0.
    #[serde(default)]
    pub page: usize,
}

/// The orders the catalogue offers: value and label.
pub const SORTS: [(&str, &str); 4] = [
    ("score", "Score"),
    ("usage", "Usage"),
    ("new", "Newest"),
    ("relevance", "Relevance"),
];

impl CatalogueQuery {
    /// The order asked for, or the default.
    pub fn sort(&self) -> &str {
        match self.sort.as_deref() {
            Some(s) if SORTS.iter().any(|(v, _)| *v == s) => s,
            _ => "score",
        }
    }

    /// The tag asked for, if any (blank is none).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref().map(str::trim).filter(|t| !t.is_empty())
    }

    /// This query's URL with some parts changed.
    fn url(&self, sort: &str, tag: Option<&str>, page: usize) -> String {
        let mut parts = Vec::new();
        if !self.q.is_empty() {
            parts.push(format!("q={}", encode(&self.q)));
        }
        parts.push(format!("sort={}", encode(sort)));
        if let Some(t) = tag {
            parts.push(format!("tag={}", encode(t)));
        }
        if page > 0 {
            parts.push(format!("page={page}"));
        }
        format!("/?{}", parts.join("&"))
    }
}

/// Percent-encodes `text` for a URL's query or path (everything but RFC 3986's unreserved
/// characters).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How many offers name each model (its providers, as this node has heard).
pub fn providers(offers: &OfferList) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for o in &offers.offers {
        for m in &o.models {
            *count.entry(m.clone()).or_insert(0) += 1;
        }
    }
    count
}

/// `/`: the models this node knows, searched, sorted and filtered.
pub fn catalogue(
    query: &CatalogueQuery,
    results: &SearchResults,
    providers: &BTreeMap<String, usize>,
) -> Markup {
    let sort = query.sort();
    let tag = query.tag();
    let shown = results.hits.len();
    let first = query.page * PAGE_ROWS;
    let body = html! {
        h1 { "Catalogue" }
        p.muted {
            (results.total) " models"
            @if !query.q.is_empty() { " match " q { (query.q) } }
            @if let Some(t) = tag { " tagged " span.chip { (t) } a href=(query.url(sort, None, 0)) title="Remove the tag filter" { "×" } }
            @if shown > 0 { " · showing " (first + 1) "–" (first + shown) }
        }
        form.search method="get" action="/" role="search" {
            input type="search" name="q" value=(query.q) placeholder="Search models (name, description, tags)" aria-label="Search";
            select name="sort" aria-label="Order" {
                @for (value, label) in SORTS {
                    option value=(value) selected[value == sort] { (label) }
                }
            }
            @if let Some(t) = tag { input type="hidden" name="tag" value=(t); }
            button type="submit" { "Search" }
        }
        div.panel.table-wrap {
            table.cards id="catalogue" data-live="10000" {
                thead { tr {
                    th { "Model" } th { "Version" } th { "Author" }
                    th.num { a href=(query.url("score", tag, 0)) { "Score" } }
                    th.num { "Paying voters" }
                    th.num title="Credits paid for its calls on providers this node trusts: paid use, which cannot be inflated for free as a count of calls could" { a href=(query.url("usage", tag, 0)) { "Usage" } }
                    th.num { "Size" } th { "Local" } th.num { "Providers" }
                } }
                tbody {
                    @for h in &results.hits {
                        tr data-model=(h.model_id) {
                            td {
                                a.name href={ "/m/" (h.model_id) } { (h.name) }
                                @if !h.description.is_empty() {
                                    div.muted { (first_line(&h.description, 120)) }
                                }
                                div {
                                    @for t in &h.tags {
                                        a.chip href=(query.url(sort, Some(t), 0)) { (t) }
                                    }
                                }
                            }
                            td data-label="Version" { (h.version) }
                            td.mono.id data-label="Author" title=(h.author) { (short(&h.author)) }
                            td.num data-label="Score" { (score(h.score)) }
                            td.num data-label="Paying voters" { (h.paying_voters) }
                            td.num data-label="Usage" { (h.usage) }
                            td.num data-label="Size" { (size(h.bytes)) }
                            td data-label="Local" { @if h.local { span.yes { "yes" } } @else { span.no { "no" } } }
                            td.num data-label="Providers" { (providers.get(&h.model_id).copied().unwrap_or(0)) }
                        }
                    }
                    @if results.hits.is_empty() {
                        tr { td.muted colspan="9" { "No model matches." } }
                    }
                }
            }
        }
        div.pager {
            @if query.page > 0 { a href=(query.url(sort, tag, query.page - 1)) { "← Previous" } }
            @if first + shown < results.total { a href=(query.url(sort, tag, query.page + 1)) { "Next →" } }
        }
    };
    page("Catalogue", "/", body, false)
}

/// The first line of `text`, at most `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// A tensor's shape: `[1, seq, 384]`.
fn shape(t: &TensorView) -> String {
    let dims: Vec<String> = t
        .shape
        .iter()
        .map(|d| match d {
            DimView::Fixed(n) => n.to_string(),
            DimView::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// The elements of one item of a tensor of fixed shape (its leading dimension may be named:
/// a batch, of one item in the form), if it has one.
fn elements(t: &TensorView) -> Option<u64> {
    t.shape
        .iter()
        .enumerate()
        .try_fold(1u64, |n, (i, d)| match d {
            DimView::Fixed(k) => n.checked_mul(*k),
            DimView::Symbolic(_) if i == 0 => Some(n),
            DimView::Symbolic(_) => None,
        })
}

/// Inputs of at most this many elements get a grid of number fields in the call form.
const GRID_MAX: u64 = 64;

/// `/m/{id}`: a model's page. `offers` are the providers heard of (any may run it; those
/// listing it hold it).
pub fn model(m: &ModelView, history: &History, offers: &OfferList, csrf: &str) -> Markup {
    let providers = offers
        .offers
        .iter()
        .filter(|o| o.models.contains(&m.model_id))
        .count();
    let lm = m.runtime.language_model.as_ref();
    let metrics: Vec<&String> = {
        let mut names: Vec<&String> = history
            .snapshots
            .iter()
            .flat_map(|s| s.metrics.keys())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let chart_data = json!({
        "steps": history.snapshots.iter().map(|s| s.step).collect::<Vec<_>>(),
        "metrics": metrics.iter().map(|name| {
            let values: Vec<Option<f64>> = history.snapshots.iter().map(|s| s.metrics.get(*name).copied()).collect();
            json!({ "name": name, "values": values })
        }).collect::<Vec<_>>(),
    });
    let interface = json!({
        "inputs": m.interface.inputs.iter().map(|t| json!({
            "name": t.name, "datatype": t.datatype,
            "shape": t.shape.iter().map(|d| match d { DimView::Fixed(n) => json!(n), DimView::Symbolic(s) => json!(s) }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let body = html! {
        div.grid2 {
            div {
                h1 { (m.name) " " span.muted { (m.version) } }
                div { @for t in &m.tags { a.chip href={ "/?tag=" (encode(t)) } { (t) } } }
                @if !m.description.is_empty() { p.description { (m.description) } }
                dl.facts {
                    dt { "Model id" } dd.mono { (m.model_id) }
                    dt { "Author" } dd { span.mono { (m.author) } br; span.yes { "✓ signature verified" } " (ed25519, checked when the manifest arrived)" }
                    @if !m.authors.is_empty() { dt { "Authors" } dd { (m.authors.join(", ")) } }
                    dt { "Licence" } dd { @if m.license.is_empty() { span.muted { "none stated" } } @else { (m.license) } }
                    dt { "Runtime" } dd {
                        (m.runtime.kind)
                        @if let Some(e) = &m.runtime.entry { " · " code { (e) } }
                        @if let Some(mem) = m.runtime.memory_mib { " · " (mem) " MiB" }
                    }
                    @if let Some(lm) = lm {
                        dt { "Language model" } dd {
                            (lm.architecture) " · " (lm.parameters) " parameters · context " (lm.context_length) " · " (lm.quantisation)
                        }
                    }
                    dt { "Parent" } dd { @if let Some(p) = &m.parent { a.mono href={ "/m/" (p) } { (p) } } @else { span.muted { "none" } } }
                    @if !m.children.is_empty() {
                        dt { "Derived models" } dd id="children" { @for c in &m.children { a.mono.id href={ "/m/" (c) } title=(c) { (short(c)) } " " } }
                    }
                    @if let Some(r) = &m.royalty { dt { "Royalty" } dd { (f64::from(r.bps) / 100.0) "% to " span.mono { (short(&r.payee)) } } }
                    dt { "Providers" } dd { (providers) " offer it" }
                }
            }
            div.panel id="votes" {
                @let v = m.votes.as_ref();
                div.muted { "Score here" }
                div.score id="score" { (v.map_or("—".to_string(), |v| score(v.score))) }
                @if let Some(v) = v {
                    p.muted {
                        "▲ " (v.up) " (weight " (format!("{:.2}", v.up_weight)) ") · ▼ " (v.down) " (weight " (format!("{:.2}", v.down_weight)) ")"
                        br; (v.paying_voters) " paying voters · usage " (v.usage) " credits"
                        @if v.retracted > 0 { br; (v.retracted) " retracted" }
                    }
                }
                div.votes {
                    @for (choice, label) in [("up", "▲ Up"), ("down", "▼ Down"), ("retract", "Retract")] {
                        form method="post" action={ "/ui/vote/" (m.model_id) } {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="choice" value=(choice);
                            button.quiet[choice == "retract"] type="submit" name="vote" value=(choice) { (label) }
                        }
                    }
                }
                p.muted { "A vote is signed by this node with the receipts of its paid calls of the model, and gossiped." }
            }
        }

        h2 { "Interface" }
        div.panel.table-wrap {
            table id="interface" {
                thead { tr { th { "Direction" } th { "Name" } th { "Type" } th { "Shape" } } }
                tbody {
                    @for t in &m.interface.inputs { tr { td { "input" } td.mono { (t.name) } td { (t.datatype) } td.mono { (shape(t)) } } }
                    @for t in &m.interface.outputs { tr { td { "output" } td.mono { (t.name) } td { (t.datatype) } td.mono { (shape(t)) } } }
                }
            }
        }

        h2 { "Training history" }
        @if history.snapshots.is_empty() {
            p.muted { "No snapshots." }
        } @else {
            (json_block("history-data", &chart_data))
            div.charts id="charts" {}
            details {
                summary { (history.snapshots.len()) " snapshots" }
                div.table-wrap {
                    table id="history" {
                        thead { tr { th.num { "Step" } @for name in &metrics { th.num { (name) } } th { "Snapshot" } } }
                        tbody {
                            @for s in &history.snapshots {
                                tr {
                                    td.num { (s.step) }
                                    @for name in &metrics { td.num { @if let Some(v) = s.metrics.get(*name) { (format!("{v:.6}")) } } }
                                    td.mono.id title=(s.snapshot) { (short(&s.snapshot)) }
                                }
                            }
                        }
                    }
                }
            }
        }

        @if lm.is_some() {
            h2 { "Chat" }
            div.panel id="chat" data-model=(m.model_id) {
                div.chat-log id="chat-log" {}
                form id="chat-form" {
                    textarea name="message" rows="3" placeholder="Say something…" aria-label="Message" {}
                    p { button type="submit" { "Send" } " " span.muted id="chat-status" {} }
                }
                noscript { p.muted { "The chat needs JavaScript; `moxnet chat " (m.model_id) "` works in a terminal." } }
            }
        } @else if !m.interface.inputs.is_empty() {
            h2 { "Call" }
            div.panel id="call" data-model=(m.model_id) {
                (json_block("interface-data", &interface))
                form id="call-form" {
                    @for t in &m.interface.inputs {
                        div.field {
                            label for={ "in-" (t.name) } { (t.name) " " span.muted { (t.datatype) " " (shape(t)) } }
                            @if t.datatype == "BYTES" {
                                textarea id={ "in-" (t.name) } name=(t.name) data-kind="bytes" rows="2" placeholder="Text (one item per line)" {}
                            } @else if let Some(n) = elements(t).filter(|n| *n <= GRID_MAX) {
                                div.cell-grid id={ "in-" (t.name) } data-kind="grid" data-name=(t.name) {
                                    @for i in 0..n { input type="number" step="any" value="0" aria-label={ (t.name) "[" (i) "]" }; }
                                }
                            } @else {
                                textarea id={ "in-" (t.name) } name=(t.name) data-kind="json" rows="3" placeholder="JSON: nested arrays of numbers" {}
                            }
                        }
                    }
                    p {
                        label { "Run " select name="on" aria-label="Where to run" {
                            option value="" { "here, or on the best provider" }
                            @for o in &offers.offers {
                                option value=(o.peer_id) { "on " (short(&o.peer_id)) @if o.models.contains(&m.model_id) { " (holds it)" } }
                            }
                        } } " "
                        label { input type="checkbox" name="verify"; " verify on two providers" } " "
                        button type="submit" { "Call" }
                    }
                }
                div id="call-result" {}
                noscript { p.muted { "The call form needs JavaScript; `moxnet call " (m.model_id) " --input …` works in a terminal." } }
            }
        }

        h2 { "Files" }
        div.panel.table-wrap {
            table id="files" {
                thead { tr { th { "Path" } th.num { "Size" } th { "BLAKE3" } } }
                tbody {
                    @for f in &m.files { tr { td.mono { (f.path) } td.num { (size(f.size)) } td.mono { (f.hash) } } }
                }
            }
        }
        @if !m.datasets.is_empty() {
            h2 { "Datasets" }
            div.panel.table-wrap {
                table id="datasets" {
                    thead { tr { th { "Description" } th { "BLAKE3" } } }
                    tbody { @for d in &m.datasets { tr { td { (d.description) } td.mono { (d.hash) } } } }
                }
            }
        }
        @if let Some(v) = m.votes.as_ref().filter(|v| !v.voters.is_empty()) {
            h2 { "Voters" }
            div.panel.table-wrap {
                table id="voters" {
                    thead { tr { th { "Voter" } th { "Vote" } th.num { "Trust" } th.num { "Usage" } th.num { "Weight" } } }
                    tbody {
                        @for voter in &v.voters {
                            tr { td.mono.id title=(voter.node_id) { (short(&voter.node_id)) } td { (voter.choice) } td.num { (format!("{:.3}", voter.trust)) } td.num { (voter.usage) } td.num { (format!("{:.3}", voter.weight)) } }
                        }
                    }
                }
            }
        }
    };
    page(&m.name, "/", body, !history.snapshots.is_empty())
}

/// `/network`: peers, compute offers, fetches.
pub fn network(info: &NodeInfo, offers: &OfferList, fetches: &[FetchProgress]) -> Markup {
    let body = html! {
        h1 { "Network" }
        h2 { "Fetches (" (fetches.len()) ")" }
        div.panel.table-wrap {
            table.cards id="fetches" data-live="2000" {
                thead { tr { th { "Model or blob" } th { "State" } th { "Progress" } th.num { "Peers" } th.num { "Time" } } }
                tbody {
                    @for f in fetches {
                        tr {
                            td.mono.id title=(f.id) { a href={ "/m/" (f.id) } { (short(&f.id)) } }
                            td data-label="State" {
                                (format!("{:?}", f.state).to_lowercase())
                                @if let Some(e) = &f.error { br; span.bad { (e) } }
                            }
                            td data-label="Progress" {
                                progress value=(f.bytes_done) max=(f.bytes_total.max(1)) {}
                                " " (size(f.bytes_done)) " of " (size(f.bytes_total))
                            }
                            td.num data-label="Peers" { (f.peers_used) @if f.peers_banned > 0 { " (" span.bad { (f.peers_banned) " banned" } ")" } }
                            td.num data-label="Time" { (format!("{:.1} s", f.elapsed_ms as f64 / 1000.0)) }
                        }
                    }
                    @if fetches.is_empty() { tr { td.muted colspan="5" { "No fetch since the node started." } } }
                }
            }
        }
        h2 { "Peers connected (" (info.peers.len()) ")" }
        div.panel.table-wrap {
            table id="peers" data-live="5000" {
                tbody {
                    @for p in &info.peers { tr { td.mono { (p) } } }
                    @if info.peers.is_empty() { tr { td.muted { "No peer is connected." } } }
                }
            }
        }
        h2 { "Compute offers (" (offers.offers.len()) ")" }
        p.muted { @if offers.serving { "This node serves calls for peers too." } @else { "This node does not serve calls for peers (moxnet node --serve)." } }
        div.panel.table-wrap {
            table.cards id="offers" data-live="5000" {
                thead { tr {
                    th { "Provider" } th { "Engines" } th { "Hardware" } th.num { "Price / M fuel" } th.num { "Price / M tokens" }
                    th.num { "Latency" } th.num { "Load" } th.num { "Failures" } th.num { "Models" } th.num { "Expires" }
                } }
                tbody {
                    @for o in &offers.offers {
                        tr data-peer=(o.peer_id) {
                            td.mono.id title=(o.peer_id) { (short(&o.peer_id)) }
                            td data-label="Engines" { @for b in &o.backends { span.chip { (b) } } }
                            td data-label="Hardware" { (o.cores) " cores · " (size(o.memory_mib << 20)) @for g in &o.gpus { br; (g) } }
                            td.num data-label="Price / M fuel" { (o.price_per_mfuel) }
                            td.num data-label="Price / M tokens" { @if let Some(p) = o.price_per_mtoken { (p) } @else { span.muted { "—" } } }
                            td.num data-label="Latency" { @if let Some(l) = o.latency_ms { (format!("{l:.0} ms")) } @else { span.muted { "—" } } }
                            td.num data-label="Load" { (o.in_flight) " / " (o.max_concurrent) }
                            td.num data-label="Failures" { (o.failures) }
                            td.num data-label="Models" { (o.models.len()) }
                            td.num data-label="Expires" { (o.expires_in_s) " s" }
                        }
                    }
                    @if offers.offers.is_empty() { tr { td.muted colspan="10" { "No offer heard yet." } } }
                }
            }
        }
    };
    page("Network", "/network", body, false)
}

/// The most points a balance chart has (a longer history is thinned, keeping its last point).
pub const BALANCE_POINTS: usize = 2000;

/// The balance over time from its moves (`(ms, credits)`, any order): `(seconds, balance)`
/// after each, at most [`BALANCE_POINTS`].
pub fn balance(mut moves: Vec<(u64, i64)>) -> Vec<(f64, i64)> {
    moves.sort_by_key(|(t, _)| *t);
    let mut sum = 0i64;
    let all: Vec<(f64, i64)> = moves
        .into_iter()
        .map(|(t, c)| {
            sum = sum.saturating_add(c);
            (t as f64 / 1000.0, sum)
        })
        .collect();
    let step = all.len().div_ceil(BALANCE_POINTS).max(1);
    let mut out: Vec<(f64, i64)> = all.iter().step_by(step).copied().collect();
    if let (Some(last), Some(kept)) = (all.last(), out.last())
        && kept != last
    {
        out.push(*last);
    }
    out
}

/// `/credits`: the ledger with every peer, and the balance over time.
pub fn credits(c: &CreditsView, balance: &[(f64, i64)]) -> Markup {
    let chart = json!({
        "t": balance.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        "v": balance.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
    });
    let body = html! {
        h1 { "Credits" }
        @if !balance.is_empty() {
            h2 { "Balance over time" }
            p.muted { "Credits earned serving peers minus credits owed for calls on them, after each receipt (before cheques settle them)." }
            (json_block("balance-data", &chart))
            div.panel.chart id="balance-chart" {}
        }
        div.panel {
            dl.facts {
                dt { "Payment threshold" } dd { (c.payment_threshold) " credits" }
                dt { "Disconnect threshold" } dd { (c.disconnect_threshold) " credits" }
                dt { "Free allowance" } dd { (c.free_left) " of " (c.free_cap) " left (" (c.free_per_sec) " a second)" }
                dt { "Spend limit" } dd { (c.spend_limit) " credits per peer" }
            }
        }
        h2 { "Peers (" (c.peers.len()) ")" }
        div.panel.table-wrap {
            table.cards id="credits" data-live="5000" {
                thead { tr {
                    th { "Peer" } th.num { "Served (calls)" } th.num { "Billed" } th.num { "Forgiven" } th.num { "Used (calls)" }
                    th.num { "Owed" } th.num { "Paid in" } th.num { "Paid out" } th.num { "Balance" } th.num { "Royalties owed / paid / received" }
                } }
                tbody {
                    @for p in &c.peers {
                        tr {
                            td.mono.id title=(p.peer_id) { (short(&p.peer_id)) }
                            td.num data-label="Served (calls)" { (p.served_calls) }
                            td.num data-label="Billed" { (p.served) }
                            td.num data-label="Forgiven" { (p.forgiven) }
                            td.num data-label="Used (calls)" { (p.used_calls) }
                            td.num data-label="Owed" { (p.used) }
                            td.num data-label="Paid in" { (p.paid_in) }
                            td.num data-label="Paid out" { (p.paid_out) }
                            td.num data-label="Balance" class=[(p.net < 0).then_some("bad")] { (p.net) }
                            td.num data-label="Royalties owed / paid / received" { (p.royalties_owed) " / " (p.royalties_paid) " / " (p.royalties_received) }
                        }
                    }
                    @if c.peers.is_empty() { tr { td.muted colspan="10" { "No account with any peer yet." } } }
                }
            }
        }
    };
    page("Credits", "/credits", body, !balance.is_empty())
}

/// `/node`: identity, addresses, store.
pub fn node(info: &NodeInfo, blobs: Option<&BlobList>) -> Markup {
    let body = html! {
        h1 { "Node" }
        div.panel {
            dl.facts {
                dt { "Node id" } dd.mono id="node-id" { (info.node_id) }
                dt { "Peer id" } dd.mono { (info.peer_id) }
                dt { "Version" } dd { "moxnet " (env!("CARGO_PKG_VERSION")) }
                dt { "Listening" } dd { @for a in &info.listen { div.mono { (a) } } }
                dt { "Peers" } dd { (info.peers.len()) " connected" }
                dt { "Store" } dd {
                    @if let Some(blobs) = blobs {
                        (blobs.blobs.len()) " blobs, " (size(blobs.blobs.iter().map(|b| b.size).sum())) " ("
                        (blobs.blobs.iter().filter(|b| b.pinned).count()) " pinned)"
                    } @else { span.muted { "unknown" } }
                }
                dt { "Metrics" } dd { a href="/metrics" { "/metrics" } " (OpenMetrics text)" }
            }
        }
        @if !info.limits.is_empty() {
            h2 { "Limits" }
            div.panel {
                dl.facts id="limits" {
                    @for (what, value) in &info.limits { dt { (what) } dd { (value) } }
                }
            }
        }
    };
    page("Node", "/node", body, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balance_adds_moves_in_time_order_and_thins_a_long_history() {
        assert_eq!(
            balance(vec![(3000, -5), (1000, 10), (2000, 7)]),
            vec![(1.0, 10), (2.0, 17), (3.0, 12)]
        );
        assert!(balance(vec![]).is_empty());
        let long: Vec<(u64, i64)> = (0..10_001).map(|i| (i, 1)).collect();
        let thinned = balance(long);
        assert!(thinned.len() <= BALANCE_POINTS + 1, "{}", thinned.len());
        assert_eq!(
            thinned.last(),
            Some(&(10.0, 10_001)),
            "the last point is kept"
        );
    }

    #[test]
    fn urls_are_encoded_and_keep_the_query() {
        assert_eq!(encode("a b/ü&"), "a%20b%2F%C3%BC%26");
        let q = CatalogueQuery {
            q: "two words".into(),
            sort: Some("usage".into()),
            tag: Some("nlp".into()),
            page: 2,
        };
        assert_eq!(q.sort(), "usage");
        assert_eq!(
            q.url("new", q.tag(), 3),
            "/?q=two%20words&sort=new&tag=nlp&page=3"
        );
        let bad = CatalogueQuery {
            sort: Some("<script>".into()),
            ..CatalogueQuery::default()
        };
        assert_eq!(bad.sort(), "score", "an unknown order falls back");
    }
}
