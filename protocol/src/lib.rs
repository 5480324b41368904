//! moxnet's wire and on-disk types. **Invariant:** this crate does no I/O.
//!
//! ```
//! use protocol::{Manifest, Object, SecretKey, Signed};
//!
//! let author = SecretKey::from_seed(&[7; 32]);
//! let manifest = Manifest { name: "tiny".into(), version: "1.0.0".into(), ..Default::default() };
//! let signed = author.sign(manifest);
//! let bytes = signed.to_bytes();
//! let model_id = protocol::model_id(&bytes);
//!
//! // A peer decodes with size limits and gets an error, never a panic, for bad bytes.
//! let back = Signed::<Manifest>::from_bytes(&bytes).expect("valid envelope");
//! assert_eq!(back.body().name, "tiny");
//! assert_eq!(back.signer(), author.node_id());
//! assert_eq!(model_id.to_string().len(), 64);
//! ```
//!
//! # Concepts
//! - [`BlobHash`]: BLAKE3 of a blob's bytes, shown as 64 lowercase hex (a raw file's id is its
//!   `b3sum`). [`NodeId`]: an ed25519 public key. [`ModelId`]: the hash of a signed manifest.
//! - Everything hashed or signed is **deterministic CBOR** ([`cbor`], RFC 8949 §4.2.1). Decoders
//!   are strict (they accept only canonical bytes, so decode→encode is the identity), bounded by
//!   the `MAX_*` constants below, and refuse unknown versions and unknown fields.
//! - [`Signed<T>`]: an envelope whose ed25519 signature covers a per-kind domain tag
//!   ([`DOMAIN_MANIFEST`], [`DOMAIN_SNAPSHOT`], …) and the body bytes, so a signature for one
//!   kind never verifies as another.
//! - [`Manifest`]: a model package (files, interface, runtime, datasets, parent model,
//!   snapshots). [`Snapshot`]: one training step with metrics and weights, linked by parent.
//!   [`Collection`]: the listing of a plain folder.
//! - [`compute`]: compute offers and the signed inference call between peers.
//! - [`generate`]: generation by language models between peers, streamed.
//! - [`credits`]: receipts, cheques and royalties.
//! - [`vote`]: votes on models and their merge rule.
//!
//! The byte-level specification, with test vectors, is `docs/protocol.md`.

pub mod cbor;
pub mod compute;
pub mod credits;
pub mod generate;
mod hash;
mod manifest;
mod signed;
mod snapshot;
pub mod vote;
pub mod wire;

pub use hash::{BlobHash, ModelId, NodeId};
pub use manifest::{
    COLLECTION_VERSION, Collection, DType, DatasetRef, Dim, FileEntry, Interface, LanguageModel,
    MANIFEST_VERSION, MAX_BLOB_BYTES, MAX_CHAT_TEMPLATE, MAX_COLLECTION_BYTES, MAX_DESCRIPTION,
    MAX_FILES, MAX_LIST, MAX_MANIFEST_BYTES, MAX_PATH_BYTES, MAX_SHORT_TEXT, MAX_SNAPSHOTS,
    Manifest, Runtime, TensorSpec, check_files, validate_name, validate_path,
};
pub use signed::{ENVELOPE_OVERHEAD, ENVELOPE_VERSION, SecretKey, Signable, Signed};
pub use snapshot::{MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_WEIGHTS, SNAPSHOT_VERSION, Snapshot};

use cbor::Value;

/// Domain tag of signed manifests.
pub const DOMAIN_MANIFEST: &str = "moxnet/v1/manifest";
/// Domain tag of signed training snapshots.
pub const DOMAIN_SNAPSHOT: &str = "moxnet/v1/snapshot";
/// Domain tag of signed votes ([`vote::Vote`]).
pub const DOMAIN_VOTE: &str = "moxnet/v1/vote";
/// Signature domain of a key revocation (`vote::Revocation`).
pub const DOMAIN_REVOCATION: &str = "moxnet/v1/revocation";
/// Domain tag reserved for receipts (a later protocol version uses it).
pub const DOMAIN_RECEIPT: &str = "moxnet/v1/receipt";

/// Size of a chunk group, the unit of verified streaming: 16 KiB (BLAKE3 chunk log 4).
pub const CHUNK_GROUP_BYTES: u64 = 16 * 1024;
/// `log2(CHUNK_GROUP_BYTES / 1024)`: the bao-tree block size.
pub const CHUNK_GROUP_LOG: u8 = 4;

/// The [`ModelId`] of a signed manifest envelope's bytes.
pub fn model_id(envelope_bytes: &[u8]) -> ModelId {
    ModelId(BlobHash::of(envelope_bytes))
}

/// A value with one canonical CBOR encoding and a size limit.
pub trait Object: Sized {
    /// What it is, for errors.
    const WHAT: &'static str;
    /// The longest encoding that is decoded.
    const MAX_BYTES: usize;

    /// The CBOR value.
    fn to_cbor(&self) -> Value;
    /// From a decoded CBOR value, validating every field.
    fn from_cbor(value: Value) -> Result<Self, DecodeError>;

    /// Canonical bytes.
    fn to_bytes(&self) -> Vec<u8> {
        self.to_cbor().encode()
    }

    /// Decodes canonical bytes no longer than [`Object::MAX_BYTES`].
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let object = Self::from_cbor(Value::decode(bytes, Self::MAX_BYTES)?)?;
        if object.to_bytes() != bytes {
            return Err(DecodeError::NotCanonical("object re-encodes differently"));
        }
        Ok(object)
    }
}

/// Why bytes from a peer or a file were refused. Decoding never panics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than this kind of object may be; the sender is misbehaving.
    #[error("{actual} bytes exceed the limit of {limit}")]
    TooLarge {
        /// The limit.
        limit: usize,
        /// The input's length.
        actual: usize,
    },
    /// The input ends in the middle of an item.
    #[error("input ends in the middle of an item")]
    Truncated,
    /// Bytes follow the single top-level item.
    #[error("{extra} bytes after the end of the item")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// Nesting deeper than the limit.
    #[error("nesting deeper than {limit}")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// More items than one decode builds.
    #[error("more than {limit} items")]
    TooManyItems {
        /// The limit.
        limit: usize,
    },
    /// Valid CBOR, but not the one deterministic encoding.
    #[error("not deterministic CBOR: {0}")]
    NotCanonical(&'static str),
    /// A CBOR feature moxnet never uses.
    #[error("unsupported CBOR: {0}")]
    Unsupported(&'static str),
    /// A text string is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A field is missing, of the wrong type, out of range, or unknown.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which object or field.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The object's version is not one this code understands; upgrade moxnet.
    #[error("{what} version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Which object.
        what: &'static str,
        /// The version found.
        found: u64,
        /// The version supported.
        supported: u64,
    },
    /// The envelope is of another kind than expected.
    #[error("envelope domain is {found:?}, expected {expected:?}")]
    WrongDomain {
        /// The expected domain tag.
        expected: &'static str,
        /// The one found.
        found: String,
    },
    /// The signature does not verify for the claimed signer: forged or corrupted.
    #[error("signature by {signer} does not verify")]
    BadSignature {
        /// The claimed signer.
        signer: NodeId,
    },
}

impl DecodeError {
    /// A value that decodes but breaks a rule of `what`.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

/// Why a string is not a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseHashError {
    /// Not 64 characters.
    #[error("a hash is 64 hex characters, this is {len}")]
    Length {
        /// The length given.
        len: usize,
    },
    /// A character that is not a hex digit.
    #[error("character {pos} is not a hex digit")]
    NotHex {
        /// Its position.
        pos: usize,
    },
}
