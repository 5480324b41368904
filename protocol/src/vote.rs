//! Votes: a node's signed opinion of one model. Byte-level spec: `docs/protocol.md` §13.
//!
//! A [`Vote`] (domain `moxnet/v1/vote`) says up, down, or retracted about one model, with the
//! voter's logical clock for that model, and optionally the receipts of calls of the model the
//! voter paid for: what its vote weighs depends on them (and on how much the node that counts
//! trusts the voter), never on the vote alone.
//!
//! **Merge rule.** Per (voter, model) one vote stands: the one with the greatest `clock`, and
//! among equal clocks the greatest id (BLAKE3 of the envelope, compared as bytes) —
//! [`supersedes`]. Every node that holds the same votes therefore holds the same state,
//! whatever order and how many times they arrived. A retraction is a vote too: it counts
//! nothing and keeps an older vote from coming back.
//!
//! **Revocation.** A [`Revocation`] (domain `moxnet/v1/revocation`), signed by a node's own key,
//! says that key must no longer be believed (it leaked, or the node is gone): every vote it
//! signed, before or after, stops counting, and receipts of calls it served prove no usage.
//! Anyone holding the key can sign one, which only ever takes the key's say away. Revocations
//! travel with votes ([`VoteMessage`]).

use crate::cbor::{MapReader, Value, as_text, as_u64};
use crate::credits::{MAX_RECEIPT_BYTES, Receipt, ReceiptError, VerifiedReceipt};
use crate::{
    BlobHash, DOMAIN_REVOCATION, DOMAIN_VOTE, DecodeError, ModelId, NodeId, Object, Signable,
    Signed,
};

/// Version of the vote message.
pub const VOTE_VERSION: u64 = 1;
/// At most this many receipts in one vote.
pub const MAX_VOTE_RECEIPTS: usize = 8;
/// Largest encoded vote body: its receipts and a few fields.
pub const MAX_VOTE_BYTES: usize = MAX_VOTE_RECEIPTS * (MAX_RECEIPT_BYTES + 5) + 256;

/// What a vote says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Choice {
    /// The voter recommends the model.
    Up,
    /// The voter advises against it.
    Down,
    /// The voter takes back its earlier vote.
    Retract,
}

impl Choice {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Up => "up",
            Choice::Down => "down",
            Choice::Retract => "retract",
        }
    }

    /// +1, -1 or 0.
    pub fn sign(self) -> i64 {
        match self {
            Choice::Up => 1,
            Choice::Down => -1,
            Choice::Retract => 0,
        }
    }
}

impl std::str::FromStr for Choice {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(Choice::Up),
            "down" => Ok(Choice::Down),
            "retract" => Ok(Choice::Retract),
            other => Err(DecodeError::invalid(
                "vote choice",
                format!("{other:?} is not up, down or retract"),
            )),
        }
    }
}

/// A voter's signed opinion of one model. The voter is the envelope's signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The model voted on.
    pub model: ModelId,
    /// Up, down or retracted.
    pub choice: Choice,
    /// The voter's logical clock for this model, from 1: a new vote takes one more than the
    /// greatest it has seen for (itself, this model).
    pub clock: u64,
    /// When it was signed, milliseconds since the Unix epoch (informational: the clock orders).
    pub issued_ms: u64,
    /// Receipts of calls of this model the voter made and paid, distinct, at most
    /// [`MAX_VOTE_RECEIPTS`].
    pub receipts: Vec<Receipt>,
}

impl Object for Vote {
    const WHAT: &'static str = "vote";
    const MAX_BYTES: usize = MAX_VOTE_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(VOTE_VERSION)),
            (
                Value::text("model"),
                Value::Bytes(self.model.0.as_bytes().to_vec()),
            ),
            (Value::text("choice"), Value::text(self.choice.as_str())),
            (Value::text("clock"), Value::Uint(self.clock)),
            (Value::text("issued_ms"), Value::Uint(self.issued_ms)),
        ];
        if !self.receipts.is_empty() {
            entries.push((
                Value::text("receipts"),
                Value::Array(
                    self.receipts
                        .iter()
                        .map(|r| Value::Bytes(r.to_bytes()))
                        .collect(),
                ),
            ));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("vote", v)?;
        m.version(VOTE_VERSION)?;
        let model = ModelId(BlobHash::from_cbor("vote model", m.required("model")?)?);
        let choice = as_text("vote choice", m.required("choice")?, 16)?.parse()?;
        let clock = as_u64("vote clock", m.required("clock")?)?;
        let issued_ms = as_u64("vote issued_ms", m.required("issued_ms")?)?;
        let receipts = match m.optional("receipts") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                if items.is_empty() || items.len() > MAX_VOTE_RECEIPTS {
                    return Err(DecodeError::invalid(
                        "vote receipts",
                        format!("{} receipts; 1 to {MAX_VOTE_RECEIPTS}", items.len()),
                    ));
                }
                let mut receipts = Vec::with_capacity(items.len());
                for item in items {
                    let Value::Bytes(b) = item else {
                        return Err(DecodeError::invalid("vote receipts", "expected bytes"));
                    };
                    let receipt = Receipt::from_bytes(&b)?;
                    if receipts.contains(&receipt) {
                        return Err(DecodeError::invalid("vote receipts", "a receipt twice"));
                    }
                    receipts.push(receipt);
                }
                receipts
            }
            Some(_) => return Err(DecodeError::invalid("vote receipts", "expected an array")),
        };
        m.finish()?;
        if clock == 0 {
            return Err(DecodeError::invalid("vote", "clock starts at 1"));
        }
        Ok(Vote {
            model,
            choice,
            clock,
            issued_ms,
            receipts,
        })
    }
}

impl Signable for Vote {
    const DOMAIN: &'static str = DOMAIN_VOTE;
}

/// Whether a vote with (`clock`, `id`) replaces one with (`other_clock`, `other_id`) from the
/// same voter on the same model: a greater clock, or the same clock and a greater id.
pub fn supersedes(clock: u64, id: &BlobHash, other_clock: u64, other_id: &BlobHash) -> bool {
    (clock, id.as_bytes()) > (other_clock, other_id.as_bytes())
}

/// A vote whose envelope verified, with its receipts checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedVote {
    /// Its id: BLAKE3 of the envelope.
    pub id: BlobHash,
    /// The voter.
    pub voter: NodeId,
    /// The model.
    pub model: ModelId,
    /// Up, down or retracted.
    pub choice: Choice,
    /// The voter's clock.
    pub clock: u64,
    /// When it was signed.
    pub issued_ms: u64,
    /// Its receipts, verified: each of a call of this model made by the voter, on a provider
    /// other than the voter.
    pub receipts: Vec<VerifiedReceipt>,
}

/// Why a vote does not count.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VoteError {
    /// The envelope or body does not decode or verify.
    #[error("vote: {0}")]
    Decode(#[from] DecodeError),
    /// A receipt does not verify.
    #[error("vote: {0}")]
    Receipt(#[from] ReceiptError),
    /// A receipt is not of a call of this model made by the voter on another node.
    #[error("vote: a receipt {0}")]
    Foreign(&'static str),
}

impl CheckedVote {
    /// Decodes and verifies a vote envelope and every receipt in it.
    pub fn from_bytes(envelope: &[u8]) -> Result<CheckedVote, VoteError> {
        let signed = Signed::<Vote>::from_bytes(envelope)?;
        CheckedVote::of(&signed, BlobHash::of(envelope))
    }

    /// Checks a verified vote's receipts; `id` is BLAKE3 of its envelope.
    pub fn of(signed: &Signed<Vote>, id: BlobHash) -> Result<CheckedVote, VoteError> {
        let vote = signed.body();
        let voter = signed.signer();
        let mut receipts = Vec::with_capacity(vote.receipts.len());
        for receipt in &vote.receipts {
            let r = receipt.verify()?;
            if r.caller != voter {
                return Err(VoteError::Foreign("was made by another caller"));
            }
            if r.model != vote.model {
                return Err(VoteError::Foreign("is of another model"));
            }
            if r.provider == voter {
                return Err(VoteError::Foreign("is of a call the voter served itself"));
            }
            receipts.push(r);
        }
        Ok(CheckedVote {
            id,
            voter,
            model: vote.model,
            choice: vote.choice,
            clock: vote.clock,
            issued_ms: vote.issued_ms,
            receipts,
        })
    }

    /// Whether this vote replaces `other` (same voter and model; see [`supersedes`]).
    pub fn supersedes(&self, other: &CheckedVote) -> bool {
        supersedes(self.clock, &self.id, other.clock, &other.id)
    }
}

/// Version of the revocation message.
pub const REVOCATION_VERSION: u64 = 1;
/// Longest reason in a revocation, bytes.
pub const MAX_REVOCATION_REASON: usize = 256;
/// Largest encoded revocation body.
pub const MAX_REVOCATION_BYTES: usize = MAX_REVOCATION_REASON + 64;

/// A node's notice that its own key must no longer be believed (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// When it was signed, milliseconds since the Unix epoch (informational).
    pub issued_ms: u64,
    /// Why, for people (at most [`MAX_REVOCATION_REASON`] bytes; may be empty).
    pub reason: String,
}

impl Object for Revocation {
    const WHAT: &'static str = "revocation";
    const MAX_BYTES: usize = MAX_REVOCATION_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(REVOCATION_VERSION)),
            (Value::text("issued_ms"), Value::Uint(self.issued_ms)),
        ];
        if !self.reason.is_empty() {
            entries.push((Value::text("reason"), Value::text(&self.reason)));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("revocation", v)?;
        m.version(REVOCATION_VERSION)?;
        let issued_ms = as_u64("revocation issued_ms", m.required("issued_ms")?)?;
        let reason = m
            .optional("reason")
            .map(|v| as_text("revocation reason", v, MAX_REVOCATION_REASON))
            .transpose()?
            .unwrap_or_default();
        m.finish()?;
        Ok(Revocation { issued_ms, reason })
    }
}

impl Signable for Revocation {
    const DOMAIN: &'static str = DOMAIN_REVOCATION;
}

/// A revocation whose envelope verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRevocation {
    /// Its id: BLAKE3 of the envelope.
    pub id: BlobHash,
    /// The node whose key it revokes (its signer).
    pub node: NodeId,
    /// When it was signed.
    pub issued_ms: u64,
    /// Why.
    pub reason: String,
}

impl CheckedRevocation {
    /// Decodes and verifies a revocation envelope.
    pub fn from_bytes(envelope: &[u8]) -> Result<CheckedRevocation, DecodeError> {
        let signed = Signed::<Revocation>::from_bytes(envelope)?;
        Ok(CheckedRevocation::of(&signed, BlobHash::of(envelope)))
    }

    /// A verified revocation; `id` is BLAKE3 of its envelope.
    pub fn of(signed: &Signed<Revocation>, id: BlobHash) -> CheckedRevocation {
        CheckedRevocation {
            id,
            node: signed.signer(),
            issued_ms: signed.body().issued_ms,
            reason: signed.body().reason.clone(),
        }
    }
}

/// What the vote topic and vote syncs carry: a vote or a key revocation, told apart by the
/// envelope's domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteMessage {
    /// A vote, its receipts checked.
    Vote(CheckedVote),
    /// A key revocation.
    Revocation(CheckedRevocation),
}

impl VoteMessage {
    /// Decodes and checks a vote or revocation envelope.
    pub fn from_bytes(envelope: &[u8]) -> Result<VoteMessage, VoteError> {
        if envelope_domain(envelope).as_deref() == Some(DOMAIN_REVOCATION) {
            return Ok(VoteMessage::Revocation(CheckedRevocation::from_bytes(
                envelope,
            )?));
        }
        Ok(VoteMessage::Vote(CheckedVote::from_bytes(envelope)?))
    }

    /// Its id (BLAKE3 of the envelope).
    pub fn id(&self) -> BlobHash {
        match self {
            VoteMessage::Vote(v) => v.id,
            VoteMessage::Revocation(r) => r.id,
        }
    }

    /// When it was signed, by its own word, without checking anything else (for deciding
    /// what is recent); `None` if it is neither a vote nor a revocation.
    pub fn issued_ms_of(envelope: &[u8]) -> Option<u64> {
        if envelope_domain(envelope).as_deref() == Some(DOMAIN_REVOCATION) {
            return Signed::<Revocation>::from_bytes(envelope)
                .ok()
                .map(|r| r.body().issued_ms);
        }
        Signed::<Vote>::from_bytes(envelope)
            .ok()
            .map(|v| v.body().issued_ms)
    }
}

/// The domain an envelope claims (unverified), if it decodes as an envelope map at all.
fn envelope_domain(envelope: &[u8]) -> Option<String> {
    let Ok(Value::Map(entries)) = Value::decode(envelope, Signed::<Vote>::MAX_BYTES) else {
        return None;
    };
    entries.into_iter().find_map(|(k, v)| match (k, v) {
        (Value::Text(k), Value::Text(d)) if k == "domain" => Some(d),
        _ => None,
    })
}
