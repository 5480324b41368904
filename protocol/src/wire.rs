//! Network messages and protocol ids (moxnet protocol v1). Byte-level spec: `docs/protocol.md` §9.
//!
//! - `/moxnet/blob/1` (a libp2p stream per request): the requester writes one framed
//!   [`BlobRequest`]; the provider writes one framed [`BlobResponseHeader`] and, when the status is
//!   [`Status::Ok`], the bao encoding of the requested chunk groups (§5), then closes the stream.
//! - `/moxnet/catalog/1` (libp2p request-response): a framed [`CatalogRequest`] is answered by a
//!   framed [`CatalogResponse`] listing signed manifest envelopes.
//! - gossipsub topic [`ANNOUNCE_TOPIC`]: each message is one signed manifest envelope.
//! - gossipsub topic [`OFFER_TOPIC`]: each message is one signed compute offer envelope.
//! - `/moxnet/infer/1` (libp2p request-response): a framed [`crate::compute::InferCall`] is
//!   answered by a framed [`crate::compute::InferReply`].
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of deterministic CBOR.

use crate::cbor::{MapReader, Value, as_list, as_u64};
use crate::{BlobHash, DecodeError, Object};

/// Stream protocol for verified blob ranges.
pub const BLOB_PROTOCOL: &str = "/moxnet/blob/1";
/// Request-response protocol for catalogue sync.
pub const CATALOG_PROTOCOL: &str = "/moxnet/catalog/1";
/// Kademlia protocol name (moxnet's own DHT, not the IPFS one).
pub const KAD_PROTOCOL: &str = "/moxnet/kad/1.0.0";
/// identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/moxnet/1.0.0";
/// gossipsub topic of model announcements.
pub const ANNOUNCE_TOPIC: &str = "/moxnet/announce/1";
/// gossipsub topic of signed compute offers ([`crate::compute::ComputeOffer`]).
pub const OFFER_TOPIC: &str = "/moxnet/compute/1";
/// Request-response protocol for inference calls between peers
/// ([`crate::compute::InferCall`] → [`crate::compute::InferReply`]).
pub const INFER_PROTOCOL: &str = "/moxnet/infer/1";

/// Largest [`BlobRequest`] frame.
pub const MAX_BLOB_REQUEST_BYTES: usize = 64 * 1024;
/// Largest [`BlobResponseHeader`] frame.
pub const MAX_BLOB_HEADER_BYTES: usize = 1024;
/// Most ranges in one [`BlobRequest`].
pub const MAX_REQUEST_RANGES: usize = 1024;
/// Most chunk groups one [`BlobRequest`] may ask for (64 MiB).
pub const MAX_REQUEST_GROUPS: u64 = 4096;
/// Largest [`CatalogRequest`] frame.
pub const MAX_CATALOG_REQUEST_BYTES: usize = 1024;
/// Largest [`CatalogResponse`] frame.
pub const MAX_CATALOG_RESPONSE_BYTES: usize = 16 << 20;
/// Wire messages version.
pub const WIRE_VERSION: u64 = 1;

/// Status of a blob response. Discriminants are wire values and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    /// The encoded ranges follow.
    Ok = 0,
    /// The provider does not have the complete blob.
    NotFound = 1,
    /// The provider is at capacity; retry later or elsewhere.
    Busy = 2,
    /// The request was malformed or over a limit.
    BadRequest = 3,
    /// The provider failed locally (its copy may be corrupt).
    Internal = 4,
}

impl Status {
    fn from_u64(n: u64) -> Result<Self, DecodeError> {
        Ok(match n {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::Busy,
            3 => Status::BadRequest,
            4 => Status::Internal,
            _ => return Err(DecodeError::invalid("blob status", format!("unknown {n}"))),
        })
    }
}

/// Asks for chunk groups (16 KiB each) of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRequest {
    /// The blob.
    pub hash: BlobHash,
    /// Group ranges `[start, end)`, sorted, non-empty, non-overlapping, not adjacent.
    pub groups: Vec<(u64, u64)>,
}

impl BlobRequest {
    /// Total groups requested.
    pub fn group_count(&self) -> u64 {
        self.groups.iter().map(|(s, e)| e - s).sum()
    }
}

impl Object for BlobRequest {
    const WHAT: &'static str = "blob request";
    const MAX_BYTES: usize = MAX_BLOB_REQUEST_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(WIRE_VERSION)),
            (Value::text("hash"), self.hash.to_cbor()),
            (
                Value::text("groups"),
                Value::Array(
                    self.groups
                        .iter()
                        .map(|(s, e)| Value::Array(vec![Value::Uint(*s), Value::Uint(*e)]))
                        .collect(),
                ),
            ),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("blob request", v)?;
        m.version(WIRE_VERSION)?;
        let hash = BlobHash::from_cbor("blob request hash", m.required("hash")?)?;
        let groups = as_list(
            "blob request groups",
            m.required("groups")?,
            MAX_REQUEST_RANGES,
            |r| match r {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut it = pair.into_iter();
                    let s = as_u64("group start", it.next().unwrap_or(Value::Null))?;
                    let e = as_u64("group end", it.next().unwrap_or(Value::Null))?;
                    Ok((s, e))
                }
                _ => Err(DecodeError::invalid(
                    "blob request groups",
                    "expected [start, end]",
                )),
            },
        )?;
        m.finish()?;
        let mut previous_end: Option<u64> = None;
        for (s, e) in &groups {
            if s >= e || previous_end.is_some_and(|p| *s <= p) {
                return Err(DecodeError::invalid(
                    "blob request groups",
                    "ranges must be non-empty, sorted, and neither overlap nor touch",
                ));
            }
            previous_end = Some(*e);
        }
        let request = BlobRequest { hash, groups };
        if request.group_count() > MAX_REQUEST_GROUPS {
            return Err(DecodeError::invalid(
                "blob request groups",
                format!("more than {MAX_REQUEST_GROUPS} groups"),
            ));
        }
        Ok(request)
    }
}

/// The provider's answer before the encoded data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobResponseHeader {
    /// Whether data follows.
    pub status: Status,
    /// The blob's size in bytes (with [`Status::Ok`]); the requester checks it against what it
    /// expects, and the bao encoding proves it.
    pub size: Option<u64>,
}

impl Object for BlobResponseHeader {
    const WHAT: &'static str = "blob response";
    const MAX_BYTES: usize = MAX_BLOB_HEADER_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(WIRE_VERSION)),
            (
                Value::text("status"),
                Value::Uint(self.status as u16 as u64),
            ),
        ];
        if let Some(size) = self.size {
            entries.push((Value::text("size"), Value::Uint(size)));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("blob response", v)?;
        m.version(WIRE_VERSION)?;
        let status = Status::from_u64(as_u64("blob status", m.required("status")?)?)?;
        let size = m
            .optional("size")
            .map(|v| as_u64("blob size", v))
            .transpose()?;
        m.finish()?;
        if let Some(size) = size.filter(|s| *s > crate::MAX_BLOB_BYTES) {
            return Err(DecodeError::invalid(
                "blob size",
                format!(
                    "{size} bytes is over the {}-byte limit",
                    crate::MAX_BLOB_BYTES
                ),
            ));
        }
        if (status == Status::Ok) != size.is_some() {
            return Err(DecodeError::invalid(
                "blob response",
                "size is present exactly when the status is ok",
            ));
        }
        Ok(BlobResponseHeader { status, size })
    }
}

/// Asks a peer for the signed manifests it knows (catalogue sync on join).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CatalogRequest;

impl Object for CatalogRequest {
    const WHAT: &'static str = "catalog request";
    const MAX_BYTES: usize = MAX_CATALOG_REQUEST_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![(Value::text("v"), Value::Uint(WIRE_VERSION))])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("catalog request", v)?;
        m.version(WIRE_VERSION)?;
        m.finish()?;
        Ok(CatalogRequest)
    }
}

/// Signed manifest envelopes (each verified by the receiver before use).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogResponse {
    /// Envelope bytes, each a `Signed<Manifest>`.
    pub manifests: Vec<Vec<u8>>,
}

impl Object for CatalogResponse {
    const WHAT: &'static str = "catalog response";
    const MAX_BYTES: usize = MAX_CATALOG_RESPONSE_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(WIRE_VERSION)),
            (
                Value::text("manifests"),
                Value::Array(
                    self.manifests
                        .iter()
                        .map(|m| Value::Bytes(m.clone()))
                        .collect(),
                ),
            ),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("catalog response", v)?;
        m.version(WIRE_VERSION)?;
        let manifests = as_list(
            "catalog manifests",
            m.required("manifests")?,
            100_000,
            |v| match v {
                Value::Bytes(b) => Ok(b),
                _ => Err(DecodeError::invalid(
                    "catalog manifests",
                    "expected byte strings",
                )),
            },
        )?;
        m.finish()?;
        Ok(CatalogResponse { manifests })
    }
}

/// Frames `payload` as a 4-byte big-endian length followed by the bytes.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a frame length read from a peer against a limit.
pub fn check_frame_len(len: u32, max: usize) -> Result<usize, DecodeError> {
    let len = len as usize;
    if len > max {
        return Err(DecodeError::TooLarge {
            limit: max,
            actual: len,
        });
    }
    Ok(len)
}
