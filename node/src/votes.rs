//! Votes, wired: this node's vote book, kept on disk and fed by gossip; its own votes signed
//! with the receipts of its paid calls; scores weighed by the trust this node has in each voter
//! (`votes::TrustGraph`: its own ledger, the receipts in the votes it holds).
//!
//! - **Heard** ([`Votes::heard`]): a vote from gossip was checked before it got here (envelope
//!   and receipts, `protocol::vote::CheckedVote`); the book takes it by the merge rule, and the
//!   standing vote's envelope is kept in the store's `votes` tree (the one it replaced deleted),
//!   so a restart loads the same book.
//! - **Cast** ([`Votes::cast`]): the next clock for (this node, model), up to
//!   [`MAX_VOTE_RECEIPTS`] receipts of this node's newest paid calls of the model on other
//!   nodes, signed, kept and published on `/moxnet/votes/1`.
//! - **Scores** ([`Votes::view`]): the trust graph from this node's ledger and the votes'
//!   receipts, ranked from this node; the model's score and each voter's part.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api::dto::{VoterView, VotesView};
use api::{ApiError, ApiResult};
use credits::{Credits, Side};
use protocol::credits::Receipt;
use protocol::vote::{CheckedVote, Choice, MAX_VOTE_RECEIPTS, Vote};
use protocol::{BlobHash, ModelId, NodeId, SecretKey};
use votes::{Applied, Trust, TrustGraph, USAGE_FULL, VoteBook};

use crate::metrics::{Metrics, VoteLabels};

/// Voters listed in a [`VotesView`], heaviest first.
const MAX_VOTERS_SHOWN: usize = 100;

/// The node's votes: see the module docs.
pub struct Votes {
    key: Arc<SecretKey>,
    net: net::Client,
    credits: Arc<Credits>,
    /// Standing votes' envelopes by id.
    tree: sled::Tree,
    /// The nodes this node follows (keys: node ids).
    follows: sled::Tree,
    book: Mutex<VoteBook>,
    /// Bumped whenever the book changes.
    changes: AtomicU64,
    /// The last [`Votes::signals`]: when, at which `changes`, what.
    signals: Mutex<Option<SignalsCache>>,
    metrics: Arc<Metrics>,
}

type SignalsCache = (Instant, u64, Arc<HashMap<ModelId, search::Signals>>);

/// How long [`Votes::signals`] are reused while no vote changes.
const SIGNALS_FOR: Duration = Duration::from_secs(2);

impl Votes {
    /// Loads the standing votes kept in `tree` (each checked again; one that no longer checks is
    /// dropped with a warning).
    pub fn open(
        key: Arc<SecretKey>,
        net: net::Client,
        credits: Arc<Credits>,
        tree: sled::Tree,
        follows: sled::Tree,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Votes> {
        let mut book = VoteBook::new();
        let mut damaged = Vec::new();
        for item in tree.iter() {
            let (id, envelope) = item?;
            match CheckedVote::from_bytes(&envelope) {
                Ok(vote) => {
                    book.apply(&vote);
                }
                Err(e) => {
                    tracing::warn!("votes: a kept vote no longer checks, dropped: {e}");
                    damaged.push(id);
                }
            }
        }
        for id in damaged {
            tree.remove(id)?;
        }
        if !book.is_empty() {
            tracing::info!(votes = book.len(), "votes: loaded");
        }
        Ok(Votes {
            key,
            net,
            credits,
            tree,
            follows,
            book: Mutex::new(book),
            changes: AtomicU64::new(0),
            signals: Mutex::new(None),
            metrics,
        })
    }

    fn book(&self) -> MutexGuard<'_, VoteBook> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a checked vote (from gossip, or this node's own); keeps it if it now stands.
    /// Returns what the book did.
    pub fn heard(&self, envelope: &[u8], vote: &CheckedVote) -> Applied {
        let mut book = self.book();
        let applied = book.apply(vote);
        if applied.changed() {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = match applied {
            Applied::New => "new",
            Applied::Replaced(_) => "replaced",
            Applied::Older => "older",
            Applied::Same => "same",
            Applied::Full => "full",
        };
        self.metrics
            .votes
            .get_or_create(&VoteLabels { outcome })
            .inc();
        let kept = match applied {
            Applied::New => self.tree.insert(vote.id.as_bytes(), envelope).map(|_| ()),
            Applied::Replaced(old) => {
                let mut batch = sled::Batch::default();
                batch.remove(old.as_bytes().as_slice());
                batch.insert(vote.id.as_bytes().as_slice(), envelope);
                self.tree.apply_batch(batch)
            }
            Applied::Older | Applied::Same | Applied::Full => Ok(()),
        };
        if let Err(e) = kept {
            // The book holds it; the next start will not (until a peer sends it again).
            tracing::error!("votes: keeping a vote: {e}");
        }
        applied
    }

    /// Up to [`MAX_VOTE_RECEIPTS`] receipts of this node's newest calls of `model` that other
    /// nodes served it.
    fn receipts_for(&self, model: ModelId) -> Vec<Receipt> {
        let mut found: Vec<(u64, Receipt)> = Vec::new();
        for balance in self.credits.balances() {
            if balance.account.used_calls == 0 {
                continue;
            }
            let receipts = match self.credits.receipts(&balance.peer, Side::Used) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("votes: reading receipts with {}: {e}", balance.peer);
                    continue;
                }
            };
            for receipt in receipts {
                if let Ok(v) = receipt.verify_trusted()
                    && v.model == model
                    && v.provider != self.key.node_id()
                {
                    found.push((v.issued_ms, receipt));
                }
            }
        }
        found.sort_by_key(|(issued_ms, _)| std::cmp::Reverse(*issued_ms));
        found
            .into_iter()
            .take(MAX_VOTE_RECEIPTS)
            .map(|(_, r)| r)
            .collect()
    }

    /// Signs, keeps and publishes this node's vote on `model`.
    pub async fn cast(&self, model: ModelId, choice: Choice) -> ApiResult<VotesView> {
        let receipts = tokio::task::block_in_place(|| self.receipts_for(model));
        let clock = self.book().next_clock(&model, &self.key.node_id());
        let signed = self.key.sign(Vote {
            model,
            choice,
            clock,
            issued_ms: crate::compute::now_ms(),
            receipts,
        });
        let envelope = signed.to_bytes();
        let vote = CheckedVote::of(&signed, BlobHash::of(&envelope))
            .map_err(|e| ApiError::internal(format!("this node's own vote: {e}")))?;
        if tokio::task::block_in_place(|| self.heard(&envelope, &vote)) == Applied::Full {
            return Err(ApiError::bad_request(format!(
                "this node already has {} standing votes, the most a voter may have; retract some first",
                votes::MAX_VOTES_PER_VOTER
            )));
        }
        if let Err(e) = self.net.publish_vote(envelope).await {
            // Kept here; peers get it when they catch up.
            tracing::info!("votes: publishing a vote: {e}");
        }
        Ok(self.view(model))
    }

    /// The nodes this node follows.
    pub fn followed(&self) -> anyhow::Result<Vec<NodeId>> {
        let mut out = Vec::new();
        for item in self.follows.iter() {
            let (k, _) = item?;
            let bytes: [u8; 32] = k
                .as_ref()
                .try_into()
                .map_err(|_| anyhow::anyhow!("a damaged follow ({} bytes)", k.len()))?;
            out.push(NodeId::from_bytes(bytes)?);
        }
        Ok(out)
    }

    /// Follows `node` (or stops); returns the nodes followed.
    pub fn follow(&self, node: NodeId, follow: bool) -> anyhow::Result<Vec<NodeId>> {
        if follow {
            self.follows.insert(node.as_bytes(), &[])?;
        } else {
            self.follows.remove(node.as_bytes())?;
        }
        self.follows.flush()?;
        self.followed()
    }

    /// The trust this node has in every node it knows of: the graph from its ledger, the
    /// votes' receipts and its follows, ranked from this node.
    fn trust(&self, book: &VoteBook) -> Trust {
        let me = self.key.node_id();
        let mut graph = TrustGraph::new();
        for balance in self.credits.balances() {
            let a = &balance.account;
            graph.add_credit(me, balance.peer, a.served.saturating_add(a.used));
        }
        graph.add_votes(book);
        match self.followed() {
            Ok(followed) => {
                for node in followed {
                    graph.follow(me, node);
                }
            }
            Err(e) => tracing::error!("votes: reading the follows: {e}"),
        }
        graph.rank(me)
    }

    /// Every voted model's score and usage as this node sees them, for ranking searches:
    /// computed at most every [`SIGNALS_FOR`] (or sooner when a vote changed), since trust moves
    /// with the ledger too. Models absent have no standing vote.
    pub fn signals(&self) -> Arc<HashMap<ModelId, search::Signals>> {
        let changes = self.changes.load(Ordering::Relaxed);
        let mut cache = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, seen, signals)) = cache.as_ref()
            && *seen == changes
            && at.elapsed() < SIGNALS_FOR
        {
            return signals.clone();
        }
        let book = self.book();
        let trust = self.trust(&book);
        let signals: HashMap<ModelId, search::Signals> = book
            .models()
            .map(|model| {
                let s = trust.score(&book, model);
                let signals = search::Signals {
                    score: s.score,
                    rated: s.paying_voters > 0,
                    usage: s.usage,
                    paying_voters: s.paying_voters,
                };
                (*model, signals)
            })
            .collect();
        drop(book);
        let signals = Arc::new(signals);
        *cache = Some((Instant::now(), changes, signals.clone()));
        signals
    }

    /// The model's score as this node sees it, and each standing vote's part.
    pub fn view(&self, model: ModelId) -> VotesView {
        let book = self.book();
        let trust = self.trust(&book);
        let score = trust.score(&book, &model);
        let tally = book.tally(&model);
        let mut voters: Vec<VoterView> = book
            .on(&model)
            .map(|(voter, s)| {
                let (_, weight, usage) = trust.weight(&book, &model, voter);
                VoterView {
                    node_id: voter.to_string(),
                    choice: s.choice.as_str().into(),
                    clock: s.clock,
                    vote_id: s.id.to_string(),
                    trust: trust.of(voter),
                    weight,
                    usage,
                    receipts: s.usage.len() as u64,
                }
            })
            .collect();
        voters.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        voters.truncate(MAX_VOTERS_SHOWN);
        VotesView {
            model: model.to_string(),
            score: score.score,
            up_weight: score.up,
            down_weight: score.down,
            up: tally.up,
            down: tally.down,
            retracted: tally.retracted,
            paying_voters: score.paying_voters,
            usage: score.usage,
            usage_full: USAGE_FULL,
            voters,
        }
    }
}
