//! How much one node trusts the others, and what their votes weigh to it.
//!
//! **The graph.** Nodes are linked by credit that changed hands: each receipt a node knows of
//! (its own ledger's, and those in the votes it holds) links caller and provider, and the
//! link's weight is `ln(1 + credits)` of everything billed between the two, so a thousand small
//! calls or one large one count alike and nobody buys trust linearly. A node may also follow
//! another: a link from it alone, as strong as [`FOLLOW_CREDITS`] billed.
//!
//! **Trust** is personalized PageRank from this node: a walk that starts here, follows links
//! in proportion to their weight and jumps back here with probability [`RESTART`] at each step,
//! stopped after `ceil(log2(nodes + 1)) + 2` steps (as SybilRank: the honest region, where this
//! node is, mixes quickly; a region joined to it by few links fills slowly, so what it gets is
//! bounded by those links). A node no walk reaches has trust 0.
//!
//! **Trusted providers.** Trust divided by the node's total link weight (SybilRank's degree
//! normalization) is high for nodes reached from here by many links and low for a hub that
//! many identities hang on but few links from here reach. A provider is trusted when that
//! figure is at least 1/[`TRUSTED_RATIO`] of this node's own.
//!
//! **Weight of a vote** (`weight`): `trust(voter) × min(1, used / USAGE_FULL)`, where `used` is
//! what the voter paid for calls of the model on trusted providers other than itself. A vote
//! with no such usage weighs nothing: an identity that never paid a trusted provider for the
//! model has no say on it, however many there are. A model's score is the sum of `+weight` for
//! votes up and `−weight` for votes down.

use std::collections::{BTreeMap, HashMap, HashSet};

use protocol::vote::Choice;
use protocol::{ModelId, NodeId};

use crate::VoteBook;

/// The probability that the trust walk jumps back to this node at each step (PageRank's
/// 1 − damping).
pub const RESTART: f64 = 0.15;
/// A follow links as strongly as this many credits billed.
pub const FOLLOW_CREDITS: u64 = 1_000_000;
/// A provider is trusted when its trust per unit of link weight is at least this fraction⁻¹
/// of this node's own.
pub const TRUSTED_RATIO: f64 = 64.0;
/// Usage (credits paid for calls of the model on trusted providers) at which a vote weighs its
/// voter's whole trust.
pub const USAGE_FULL: u64 = 1_000;

/// Who is linked to whom by credit and follows; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct TrustGraph {
    /// Credits billed between two nodes, by the pair (smaller id first).
    credit: BTreeMap<(NodeId, NodeId), u64>,
    /// Follows: (follower, followed).
    follows: BTreeMap<NodeId, Vec<NodeId>>,
    /// Revoked keys: no link to or from them counts.
    revoked: std::collections::BTreeSet<NodeId>,
}

impl TrustGraph {
    /// An empty graph.
    pub fn new() -> TrustGraph {
        TrustGraph::default()
    }

    /// Adds `credits` billed between `a` and `b` (a call one made on the other).
    pub fn add_credit(&mut self, a: NodeId, b: NodeId, credits: u64) {
        if a == b || credits == 0 {
            return;
        }
        let pair = if a < b { (a, b) } else { (b, a) };
        let total = self.credit.entry(pair).or_default();
        *total = total.saturating_add(credits);
    }

    /// `follower` follows `followed`.
    pub fn follow(&mut self, follower: NodeId, followed: NodeId) {
        if follower == followed {
            return;
        }
        let list = self.follows.entry(follower).or_default();
        if !list.contains(&followed) {
            list.push(followed);
        }
    }

    /// The links of the votes' receipts: every standing vote's usage links voter and provider.
    /// The book's revoked keys are left out of the graph (see [`TrustGraph::revoke`]).
    pub fn add_votes(&mut self, book: &VoteBook) {
        for (voter, provider, cost) in book.usage_links() {
            self.add_credit(voter, provider, cost);
        }
        for node in book.revoked() {
            self.revoke(*node);
        }
    }

    /// Leaves `node` out of the graph, whenever its links were or are added: a revoked key
    /// gets no trust and passes none on, and so is no trusted provider either.
    pub fn revoke(&mut self, node: NodeId) {
        self.revoked.insert(node);
    }

    /// Personalized PageRank from `me` (see the module docs).
    pub fn rank(&self, me: NodeId) -> Trust {
        let mut index: HashMap<NodeId, usize> = HashMap::new();
        let mut ids = Vec::new();
        let mut id = |n: NodeId, ids: &mut Vec<NodeId>| {
            *index.entry(n).or_insert_with(|| {
                ids.push(n);
                ids.len() - 1
            })
        };
        let me_i = id(me, &mut ids);
        let mut links: Vec<Vec<(usize, f64)>> = Vec::new();
        fn link(from: usize, to: usize, w: f64, links: &mut Vec<Vec<(usize, f64)>>) {
            if links.len() <= from.max(to) {
                links.resize(from.max(to) + 1, Vec::new());
            }
            links[from].push((to, w));
        }
        for (&(a, b), &credits) in &self.credit {
            if self.revoked.contains(&a) || self.revoked.contains(&b) {
                continue;
            }
            let (a, b) = (id(a, &mut ids), id(b, &mut ids));
            let w = (credits as f64).ln_1p();
            link(a, b, w, &mut links);
            link(b, a, w, &mut links);
        }
        for (follower, followed) in &self.follows {
            if self.revoked.contains(follower) {
                continue;
            }
            let f = id(*follower, &mut ids);
            for g in followed.iter().filter(|g| !self.revoked.contains(*g)) {
                let g = id(*g, &mut ids);
                link(f, g, (FOLLOW_CREDITS as f64).ln_1p(), &mut links);
            }
        }
        let n = ids.len();
        links.resize(n, Vec::new());
        let out: Vec<f64> = links
            .iter()
            .map(|l| l.iter().map(|(_, w)| w).sum())
            .collect();
        let steps = (usize::BITS - n.leading_zeros()) as usize + 2;
        let mut trust = vec![0.0; n];
        trust[me_i] = 1.0;
        for _ in 0..steps {
            let mut next = vec![0.0; n];
            next[me_i] += RESTART;
            for (from, t) in trust.iter().enumerate() {
                if *t == 0.0 {
                    continue;
                }
                if out[from] == 0.0 {
                    // A node linked to nobody sends its walk home.
                    next[me_i] += (1.0 - RESTART) * t;
                    continue;
                }
                for &(to, w) in &links[from] {
                    next[to] += (1.0 - RESTART) * t * w / out[from];
                }
            }
            trust = next;
        }
        // Trust per unit of link weight (SybilRank's degree normalization): a hub that many
        // identities hang on but few links reach from here has little of it.
        let per_link = |i: usize| trust[i] / out[i].max(std::f64::consts::LN_2);
        let trusted_from = per_link(me_i) / TRUSTED_RATIO;
        let providers = (0..n)
            .filter(|&i| trust[i] > 0.0 && per_link(i) >= trusted_from)
            .map(|i| ids[i])
            .collect();
        Trust {
            me,
            of: ids
                .iter()
                .zip(&trust)
                .filter(|(_, t)| **t > 0.0)
                .map(|(id, t)| (*id, *t))
                .collect(),
            providers,
        }
    }
}

/// Trust as one node sees it: a share of 1 per node (see [`TrustGraph::rank`]).
#[derive(Debug, Clone)]
pub struct Trust {
    me: NodeId,
    of: HashMap<NodeId, f64>,
    /// The nodes whose receipts count as usage: see [`Trust::trusts_provider`].
    providers: HashSet<NodeId>,
}

impl Trust {
    /// The node it is seen from.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Whether receipts of calls `provider` served count as usage: its trust per unit of link
    /// weight is at least [`TRUSTED_RATIO`]⁻¹ of this node's own (see the module docs).
    pub fn trusts_provider(&self, provider: &NodeId) -> bool {
        self.providers.contains(provider)
    }

    /// `node`'s trust (0 if no walk reaches it).
    pub fn of(&self, node: &NodeId) -> f64 {
        self.of.get(node).copied().unwrap_or(0.0)
    }

    /// What `voter`'s standing vote on `model` weighs (0 without one; see the module docs):
    /// its sign, its weight, and the usage on trusted providers behind it.
    pub fn weight(&self, book: &VoteBook, model: &ModelId, voter: &NodeId) -> (Choice, f64, u64) {
        let Some(vote) = book.get(model, voter) else {
            return (Choice::Retract, 0.0, 0);
        };
        let used: u64 = vote
            .usage
            .iter()
            .filter(|u| u.provider != *voter && self.trusts_provider(&u.provider))
            .map(|u| u.cost)
            .fold(0, u64::saturating_add);
        let share = (used as f64 / USAGE_FULL as f64).min(1.0);
        (vote.choice, self.of(voter) * share, used)
    }

    /// A model's score and its parts, as this node sees them.
    pub fn score(&self, book: &VoteBook, model: &ModelId) -> Score {
        let mut s = Score::default();
        for (voter, _) in book.on(model) {
            let (choice, w, used) = self.weight(book, model, voter);
            match choice {
                Choice::Up => s.up += w,
                Choice::Down => s.down += w,
                Choice::Retract => continue,
            }
            if w > 0.0 {
                s.paying_voters += 1;
                s.usage = s.usage.saturating_add(used);
            }
        }
        s.score = s.up - s.down;
        s
    }
}

impl Score {
    /// The ranking order, best first: models with a vote that weighs something (rated) before
    /// the rest, then by score. An unrated model (new, or voted on only by identities this node
    /// does not trust) so never moves a rated one, whatever its votes.
    pub fn rank_cmp(&self, other: &Score) -> std::cmp::Ordering {
        (other.paying_voters > 0)
            .cmp(&(self.paying_voters > 0))
            .then(other.score.total_cmp(&self.score))
    }
}

/// A model's score as one node sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// `up − down`.
    pub score: f64,
    /// The weight of the votes up.
    pub up: f64,
    /// The weight of the votes down.
    pub down: f64,
    /// Voters whose vote weighs something (paid, on trusted providers).
    pub paying_voters: u64,
    /// What they paid for calls of the model on trusted providers.
    pub usage: u64,
}
