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
use protocol::vote::{
    CheckedRevocation, CheckedVote, Choice, MAX_VOTE_RECEIPTS, Revocation, Vote, VoteMessage,
};
use protocol::{BlobHash, ModelId, NodeId, SecretKey};
use votes::{Applied, Revoked, Trust, TrustGraph, USAGE_FULL, VoteBook};

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
        // Keys of envelopes that no longer stand (damaged, or dropped by a revocation read
        // later).
        let mut gone: Vec<Vec<u8>> = Vec::new();
        for item in tree.iter() {
            let (key, envelope) = item?;
            match VoteMessage::from_bytes(&envelope) {
                Ok(VoteMessage::Vote(vote)) => {
                    if book.apply(&vote) == Applied::Revoked {
                        gone.push(key.to_vec());
                    }
                }
                Ok(VoteMessage::Revocation(r)) => match book.revoke(&r) {
                    Revoked::New(dropped) => {
                        gone.extend(dropped.iter().map(|id| id.as_bytes().to_vec()))
                    }
                    Revoked::Replaced(old) => gone.push(old.as_bytes().to_vec()),
                    Revoked::Same | Revoked::Full => gone.push(key.to_vec()),
                },
                Err(e) => {
                    tracing::warn!("votes: a kept vote no longer checks, dropped: {e}");
                    gone.push(key.to_vec());
                }
            }
        }
        for key in gone {
            tree.remove(key)?;
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

    /// Takes a checked vote or revocation from a peer (gossip or a sync).
    pub fn heard_message(&self, envelope: &[u8], message: &VoteMessage) {
        match message {
            VoteMessage::Vote(vote) => {
                self.heard(envelope, vote);
            }
            VoteMessage::Revocation(r) => {
                self.heard_revocation(envelope, r);
            }
        }
    }

    /// Takes a key revocation: the key's standing votes are dropped (their envelopes deleted)
    /// and the revocation kept, so that it is passed on in syncs and survives a restart.
    pub fn heard_revocation(&self, envelope: &[u8], revocation: &CheckedRevocation) -> Revoked {
        let mut book = self.book();
        let revoked = book.revoke(revocation);
        let (outcome, kept) = match &revoked {
            Revoked::New(dropped) => {
                let mut batch = sled::Batch::default();
                for id in dropped {
                    batch.remove(id.as_bytes().as_slice());
                }
                batch.insert(revocation.id.as_bytes().as_slice(), envelope);
                ("revocation", self.tree.apply_batch(batch))
            }
            Revoked::Replaced(old) => {
                let mut batch = sled::Batch::default();
                batch.remove(old.as_bytes().as_slice());
                batch.insert(revocation.id.as_bytes().as_slice(), envelope);
                ("revocation", self.tree.apply_batch(batch))
            }
            Revoked::Same => ("same", Ok(())),
            Revoked::Full => ("full", Ok(())),
        };
        if matches!(revoked, Revoked::New(_) | Revoked::Replaced(_)) {
            self.changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(node = %revocation.node, reason = %revocation.reason, "votes: a key was revoked");
        }
        self.metrics
            .votes
            .get_or_create(&VoteLabels { outcome })
            .inc();
        if let Err(e) = kept {
            tracing::error!("votes: keeping a revocation: {e}");
        }
        revoked
    }

    /// Signs and takes a revocation of this node's own key, and publishes it: its votes stop
    /// counting everywhere, and it can vote no more. Returns the revocation's id and how many
    /// standing votes it dropped here.
    pub async fn revoke(&self, reason: String) -> ApiResult<(BlobHash, usize)> {
        if reason.len() > protocol::vote::MAX_REVOCATION_REASON {
            return Err(ApiError::bad_request(format!(
                "the reason is {} bytes; at most {}",
                reason.len(),
                protocol::vote::MAX_REVOCATION_REASON
            )));
        }
        let signed = self.key.sign(Revocation {
            issued_ms: crate::compute::now_ms(),
            reason,
        });
        let envelope = signed.to_bytes();
        let revocation = CheckedRevocation::of(&signed, BlobHash::of(&envelope));
        let dropped =
            match tokio::task::block_in_place(|| self.heard_revocation(&envelope, &revocation)) {
                Revoked::New(dropped) => dropped.len(),
                Revoked::Replaced(_) | Revoked::Same => 0,
                Revoked::Full => {
                    return Err(ApiError::internal(
                        "this node holds the most revocations it keeps; not revoked",
                    ));
                }
            };
        if let Err(e) = self.net.publish_vote(envelope).await {
            // Kept here; peers get it when they sync (it is recent, so pushed then too).
            tracing::info!("votes: publishing the revocation: {e}");
        }
        Ok((revocation.id, dropped))
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
            Applied::Revoked => "revoked",
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
            Applied::Older | Applied::Same | Applied::Full | Applied::Revoked => Ok(()),
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
        if self.book().is_revoked(&self.key.node_id()) {
            return Err(ApiError::bad_request(
                "this node's key is revoked: its votes count nowhere; vote from a new home (moxnet init)",
            ));
        }
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
