//! moxnet's votes on models, I/O-free. The wire format and the merge rule are
//! `protocol::vote` (`docs/protocol.md` §13); this crate keeps what they decide.
//!
//! [`VoteBook`] holds, per (model, voter), the one vote that stands: the one that
//! [`protocol::vote::supersedes`] every other it has seen from that voter on that model. So any
//! order of arrival, with any duplicates, leaves every node that saw the same votes in the same
//! state. A retraction stands like any vote (it counts nothing, and keeps an older vote from
//! coming back). A voter has at most [`MAX_VOTES_PER_VOTER`] standing votes and a book at most
//! [`MAX_VOTES`], so identities voting on made-up model ids cannot fill memory. [`VoteBook::tally`] counts a model's standing votes, with and without usage
//! receipts behind them. A key revocation ([`VoteBook::revoke`]) drops the key's votes and
//! ignores its later ones. [`TrustGraph`] and [`Trust`] decide what each vote weighs to the node
//! that counts: from the receipts behind it and that node's trust in the voter.

mod trust;

use std::collections::BTreeMap;

use protocol::vote::{CheckedRevocation, CheckedVote, Choice};
use protocol::{BlobHash, ModelId, NodeId};

pub use trust::{FOLLOW_CREDITS, RESTART, Score, TRUSTED_RATIO, Trust, TrustGraph, USAGE_FULL};

/// A call of the model the voter paid for, from a receipt in its vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The receipt's id.
    pub receipt: BlobHash,
    /// Who served the call.
    pub provider: NodeId,
    /// What it cost.
    pub cost: u64,
}

/// The vote that stands for one (model, voter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Its id (BLAKE3 of the envelope).
    pub id: BlobHash,
    /// The voter's clock.
    pub clock: u64,
    /// Up, down or retracted.
    pub choice: Choice,
    /// When the voter signed it.
    pub issued_ms: u64,
    /// The calls its receipts prove.
    pub usage: Vec<Usage>,
}

impl Standing {
    fn of(vote: &CheckedVote) -> Standing {
        Standing {
            id: vote.id,
            clock: vote.clock,
            choice: vote.choice,
            issued_ms: vote.issued_ms,
            usage: vote
                .receipts
                .iter()
                .map(|r| Usage {
                    receipt: r.id,
                    provider: r.provider,
                    cost: r.cost,
                })
                .collect(),
        }
    }
}

/// Standing votes one voter may have in a book: beyond, its votes on further models are
/// refused ([`Applied::Full`]); votes replacing its standing ones still count.
pub const MAX_VOTES_PER_VOTER: usize = 10_000;
/// Standing votes a book holds in all (about 200 bytes each, plus 40 a receipt).
pub const MAX_VOTES: usize = 1_000_000;

/// What [`VoteBook::apply`] did with a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The voter's first vote on the model.
    New,
    /// It replaced the vote with this id.
    Replaced(BlobHash),
    /// The standing vote supersedes it: ignored.
    Older,
    /// It is the standing vote: ignored.
    Same,
    /// A first vote on a model from a voter already at [`MAX_VOTES_PER_VOTER`], or with the
    /// book at [`MAX_VOTES`]: refused.
    Full,
    /// The voter's key is revoked: ignored.
    Revoked,
}

/// Revoked keys a book remembers at most (a revocation costs only a fresh key, so they are
/// bounded like votes; about 70 bytes each).
pub const MAX_REVOKED: usize = 100_000;

/// What [`VoteBook::revoke`] did with a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The key's first revocation: the votes it had standing (these ids) were dropped.
    New(Vec<BlobHash>),
    /// It replaced the key's revocation with this id (the greater id stands, so every node
    /// keeps the same envelope).
    Replaced(BlobHash),
    /// The key's standing revocation is this one, or one with a greater id: ignored.
    Same,
    /// The book holds [`MAX_REVOKED`] revocations: refused.
    Full,
}

impl Applied {
    /// Whether the book changed (the vote is worth forwarding and keeping).
    pub fn changed(self) -> bool {
        matches!(self, Applied::New | Applied::Replaced(_))
    }
}

/// A model's standing votes, counted one per voter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Voters up.
    pub up: u64,
    /// Voters down.
    pub down: u64,
    /// Voters whose standing vote is a retraction.
    pub retracted: u64,
    /// Of `up` and `down`, voters whose vote carries receipts of calls they paid.
    pub paying: u64,
}

/// The standing vote per (model, voter): see the crate docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoteBook {
    standing: BTreeMap<ModelId, BTreeMap<NodeId, Standing>>,
    /// Standing votes per voter.
    per_voter: BTreeMap<NodeId, usize>,
    /// Standing votes in all.
    total: usize,
    /// Revoked keys, with the id of the revocation that stands for each.
    revoked: BTreeMap<NodeId, BlobHash>,
}

impl VoteBook {
    /// An empty book.
    pub fn new() -> VoteBook {
        VoteBook::default()
    }

    /// Takes a checked vote by the merge rule.
    pub fn apply(&mut self, vote: &CheckedVote) -> Applied {
        if self.revoked.contains_key(&vote.voter) {
            return Applied::Revoked;
        }
        let known = self
            .standing
            .get(&vote.model)
            .is_some_and(|voters| voters.contains_key(&vote.voter));
        if !known {
            let mine = self.per_voter.get(&vote.voter).copied().unwrap_or(0);
            if mine >= MAX_VOTES_PER_VOTER || self.total >= MAX_VOTES {
                return Applied::Full;
            }
        }
        let voters = self.standing.entry(vote.model).or_default();
        match voters.get_mut(&vote.voter) {
            None => {
                voters.insert(vote.voter, Standing::of(vote));
                *self.per_voter.entry(vote.voter).or_default() += 1;
                self.total += 1;
                Applied::New
            }
            Some(s) if s.id == vote.id => Applied::Same,
            Some(s) if protocol::vote::supersedes(vote.clock, &vote.id, s.clock, &s.id) => {
                let old = s.id;
                *s = Standing::of(vote);
                Applied::Replaced(old)
            }
            Some(_) => Applied::Older,
        }
    }

    /// Takes a key revocation: the key's standing votes are dropped and its later votes
    /// ignored, whatever the order they arrive in.
    pub fn revoke(&mut self, revocation: &CheckedRevocation) -> Revoked {
        let node = revocation.node;
        match self.revoked.get(&node) {
            Some(id) if *id == revocation.id || id.as_bytes() > revocation.id.as_bytes() => {
                return Revoked::Same;
            }
            Some(id) => {
                let old = *id;
                self.revoked.insert(node, revocation.id);
                return Revoked::Replaced(old);
            }
            None if self.revoked.len() >= MAX_REVOKED => return Revoked::Full,
            None => {}
        }
        self.revoked.insert(node, revocation.id);
        let mut dropped = Vec::new();
        if self.per_voter.remove(&node).is_some() {
            self.standing.retain(|_, voters| {
                if let Some(s) = voters.remove(&node) {
                    dropped.push(s.id);
                }
                !voters.is_empty()
            });
            self.total -= dropped.len();
        }
        Revoked::New(dropped)
    }

    /// Whether `node`'s key is revoked.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.revoked.contains_key(node)
    }

    /// The revoked keys.
    pub fn revoked(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.revoked.keys()
    }

    /// The vote standing for `voter` on `model`.
    pub fn get(&self, model: &ModelId, voter: &NodeId) -> Option<&Standing> {
        self.standing.get(model)?.get(voter)
    }

    /// The clock a new vote by `voter` on `model` takes: one more than the standing one's.
    pub fn next_clock(&self, model: &ModelId, voter: &NodeId) -> u64 {
        self.get(model, voter)
            .map_or(1, |s| s.clock.saturating_add(1))
    }

    /// The standing votes on `model`, by voter.
    pub fn on(&self, model: &ModelId) -> impl Iterator<Item = (&NodeId, &Standing)> {
        self.standing.get(model).into_iter().flatten()
    }

    /// A model's standing votes, one per voter.
    pub fn tally(&self, model: &ModelId) -> Tally {
        let mut t = Tally::default();
        for (_, s) in self.on(model) {
            match s.choice {
                Choice::Up => t.up += 1,
                Choice::Down => t.down += 1,
                Choice::Retract => t.retracted += 1,
            }
            if s.choice != Choice::Retract && !s.usage.is_empty() {
                t.paying += 1;
            }
        }
        t
    }

    /// The models with at least one standing vote.
    pub fn models(&self) -> impl Iterator<Item = &ModelId> + '_ {
        self.standing.keys()
    }

    /// Every standing vote's and revocation's id (what two nodes compare to catch up).
    pub fn ids(&self) -> impl Iterator<Item = BlobHash> + '_ {
        self.standing
            .values()
            .flat_map(|v| v.values().map(|s| s.id))
            .chain(self.revoked.values().copied())
    }

    /// (voter, provider, cost) of every receipt behind a standing vote: who paid whom.
    pub fn usage_links(&self) -> impl Iterator<Item = (NodeId, NodeId, u64)> + '_ {
        self.standing.values().flat_map(|voters| {
            voters
                .iter()
                .flat_map(|(voter, s)| s.usage.iter().map(|u| (*voter, u.provider, u.cost)))
        })
    }

    /// How many (model, voter) pairs have a standing vote.
    pub fn len(&self) -> usize {
        self.total
    }

    /// How many standing votes `voter` has.
    pub fn votes_of(&self, voter: &NodeId) -> usize {
        self.per_voter.get(voter).copied().unwrap_or(0)
    }

    /// Whether no vote stands.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}
