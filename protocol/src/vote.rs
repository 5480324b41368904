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

use crate::cbor::{MapReader, Value, as_text, as_u64};
use crate::credits::{MAX_RECEIPT_BYTES, Receipt, ReceiptError, VerifiedReceipt};
use crate::{BlobHash, DOMAIN_VOTE, DecodeError, ModelId, NodeId, Object, Signable, Signed};

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
