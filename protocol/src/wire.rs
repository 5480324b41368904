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

use crate::cbor::{MapReader, Value, as_array, as_list, as_u64};
use crate::{BlobHash, DecodeError, ModelId, Object};

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
/// gossipsub topic of signed votes ([`crate::vote::Vote`]).
pub const VOTE_TOPIC: &str = "/moxnet/votes/1";
/// Request-response protocol for inference calls between peers
/// ([`crate::compute::InferCall`] → [`crate::compute::InferReply`]).
pub const INFER_PROTOCOL: &str = "/moxnet/infer/1";
/// Request-response protocol for settling credits between two peers
/// ([`crate::credits::CreditsRequest`] → [`crate::credits::CreditsAnswer`]).
pub const CREDITS_PROTOCOL: &str = "/moxnet/credits/1";

/// Largest [`BlobRequest`] frame.
pub const MAX_BLOB_REQUEST_BYTES: usize = 64 * 1024;
/// Largest [`BlobResponseHeader`] frame: room for [`MAX_HAVE_RANGES`] ranges.
pub const MAX_BLOB_HEADER_BYTES: usize = 8 * 1024;
/// Most ranges in the [`BlobResponseHeader::have`] of a provider that holds part of a blob; one
/// whose groups are more scattered states its longest runs only.
pub const MAX_HAVE_RANGES: usize = 256;
/// Most ranges in one [`BlobRequest`].
pub const MAX_REQUEST_RANGES: usize = 1024;
/// Most chunk groups one [`BlobRequest`] may ask for (64 MiB).
pub const MAX_REQUEST_GROUPS: u64 = 4096;
/// Largest [`CatalogRequest`] frame: room for [`MAX_CATALOG_PAGE`] wanted ids.
pub const MAX_CATALOG_REQUEST_BYTES: usize = 64 * 1024;
/// The most ids in one [`CatalogResponse`] page of ids (34 bytes each on the wire: 272 KiB).
pub const MAX_CATALOG_IDS: usize = 8192;
/// The most manifest bytes a provider puts in one [`CatalogResponse`] page (a page always holds
/// at least one manifest: one is at most [`crate::MAX_MANIFEST_BYTES`]).
pub const CATALOG_PAGE_BYTES: usize = 4 << 20;
/// The most manifests in one [`CatalogResponse`] page: bounds the signatures a receiver verifies
/// per answer.
pub const MAX_CATALOG_PAGE: usize = 1024;
/// Largest [`CatalogResponse`] frame: a full page plus the CBOR around it.
pub const MAX_CATALOG_RESPONSE_BYTES: usize =
    CATALOG_PAGE_BYTES + crate::MAX_MANIFEST_BYTES + 64 * 1024;
/// Wire messages version.
pub const WIRE_VERSION: u64 = 1;

/// Status of a blob response. Discriminants are wire values and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    /// The encoded ranges follow.
    Ok = 0,
    /// The provider has none of the blob.
    NotFound = 1,
    /// The provider is at capacity; retry later or elsewhere.
    Busy = 2,
    /// The request was malformed or over a limit.
    BadRequest = 3,
    /// The provider failed locally (its copy may be corrupt).
    Internal = 4,
    /// The provider is receiving the blob and lacks some of the groups asked for; its
    /// [`BlobResponseHeader::have`] says which it holds (ask for those, or later).
    Partial = 5,
}

impl Status {
    fn from_u64(n: u64) -> Result<Self, DecodeError> {
        Ok(match n {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::Busy,
            3 => Status::BadRequest,
            4 => Status::Internal,
            5 => Status::Partial,
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
            (Value::text("groups"), ranges_to_cbor(&self.groups)),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("blob request", v)?;
        m.version(WIRE_VERSION)?;
        let hash = BlobHash::from_cbor("blob request hash", m.required("hash")?)?;
        let groups = ranges_from_cbor(
            "blob request groups",
            m.required("groups")?,
            MAX_REQUEST_RANGES,
        )?;
        m.finish()?;
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
    /// The blob's size in bytes (with [`Status::Ok`] and [`Status::Partial`]); the requester
    /// checks it against what it expects, and the bao encoding proves it.
    pub size: Option<u64>,
    /// The chunk groups a provider that is still receiving the blob holds (`[start, end)`,
    /// sorted, non-empty, neither overlapping nor touching, at most [`MAX_HAVE_RANGES`]):
    /// present with [`Status::Partial`], and with [`Status::Ok`] from such a provider; absent
    /// from a provider of the whole blob. A hint for choosing whom to ask next, never trusted
    /// for more: every group is verified as it arrives.
    pub have: Option<Vec<(u64, u64)>>,
}

impl BlobResponseHeader {
    /// An answer without data or size.
    pub fn status(status: Status) -> Self {
        BlobResponseHeader {
            status,
            size: None,
            have: None,
        }
    }
}

fn ranges_to_cbor(ranges: &[(u64, u64)]) -> Value {
    Value::Array(
        ranges
            .iter()
            .map(|(s, e)| Value::Array(vec![Value::Uint(*s), Value::Uint(*e)]))
            .collect(),
    )
}

/// Decodes at most `max` group ranges `[start, end)` that are non-empty, sorted, and neither
/// overlap nor touch.
fn ranges_from_cbor(
    what: &'static str,
    v: Value,
    max: usize,
) -> Result<Vec<(u64, u64)>, DecodeError> {
    let ranges = as_list(what, v, max, |r| match r {
        Value::Array(pair) if pair.len() == 2 => {
            let mut it = pair.into_iter();
            let s = as_u64("group start", it.next().unwrap_or(Value::Null))?;
            let e = as_u64("group end", it.next().unwrap_or(Value::Null))?;
            Ok((s, e))
        }
        _ => Err(DecodeError::invalid(what, "expected [start, end]")),
    })?;
    let mut previous_end: Option<u64> = None;
    for (s, e) in &ranges {
        if s >= e || previous_end.is_some_and(|p| *s <= p) {
            return Err(DecodeError::invalid(
                what,
                "ranges must be non-empty, sorted, and neither overlap nor touch",
            ));
        }
        previous_end = Some(*e);
    }
    Ok(ranges)
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
        if let Some(have) = &self.have {
            entries.push((Value::text("have"), ranges_to_cbor(have)));
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
        let have = m
            .optional("have")
            .map(|v| ranges_from_cbor("blob have", v, MAX_HAVE_RANGES))
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
        let with_size = matches!(status, Status::Ok | Status::Partial);
        if with_size != size.is_some() {
            return Err(DecodeError::invalid(
                "blob response",
                "size is present exactly when the status is ok or partial",
            ));
        }
        if (status == Status::Partial && have.is_none()) || (!with_size && have.is_some()) {
            return Err(DecodeError::invalid(
                "blob response",
                "have is present with a partial status, may be with ok, and never otherwise",
            ));
        }
        if let (Some(size), Some(have)) = (size, &have) {
            let groups = size.div_ceil(crate::CHUNK_GROUP_BYTES).max(1);
            if have.last().is_some_and(|(_, end)| *end > groups) {
                return Err(DecodeError::invalid(
                    "blob have",
                    format!("ranges past the blob's {groups} groups"),
                ));
            }
        }
        Ok(BlobResponseHeader { status, size, have })
    }
}

/// Asks a peer about the models it knows (catalogue sync). Three kinds of request:
/// - a page of manifests (`ids` false, `want` empty): the signed manifests whose id is greater
///   than `after`, in model id order (the 32 id bytes compared as unsigned bytes);
/// - a page of ids (`ids` true, `want` empty): the same walk, ids only, at most
///   [`MAX_CATALOG_IDS`] a page, so that a node reconciles by id and fetches only what it lacks;
/// - the manifests of given ids (`want`, at most [`MAX_CATALOG_PAGE`], `after` absent and
///   `ids` false): those the peer knows, in the order asked, as many as fit a page.
///
/// A walk's first page has no `after`; each next one names [`CatalogResponse::next`].
///
/// With `votes`, the same three kinds walk the peer's standing votes (protocol §13) instead:
/// the ids are vote ids (the BLAKE3 hash of a vote's envelope, carried in the same
/// [`ModelId`]-typed fields) and the envelopes come back in [`CatalogResponse::votes`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogRequest {
    /// Only models (or votes) whose id is greater than this one.
    pub after: Option<ModelId>,
    /// Ids only, no envelopes.
    pub ids: bool,
    /// Exactly these models' manifests (or these votes).
    pub want: Vec<ModelId>,
    /// Votes, not models.
    pub votes: bool,
}

impl Object for CatalogRequest {
    const WHAT: &'static str = "catalog request";
    const MAX_BYTES: usize = MAX_CATALOG_REQUEST_BYTES;

    fn to_cbor(&self) -> Value {
        let mut map = vec![(Value::text("v"), Value::Uint(WIRE_VERSION))];
        if let Some(after) = self.after {
            map.push((Value::text("after"), id_value(&after)));
        }
        if self.ids {
            map.push((Value::text("ids"), Value::Bool(true)));
        }
        if !self.want.is_empty() {
            map.push((
                Value::text("want"),
                Value::Array(self.want.iter().map(id_value).collect()),
            ));
        }
        if self.votes {
            map.push((Value::text("votes"), Value::Bool(true)));
        }
        Value::Map(map)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("catalog request", v)?;
        m.version(WIRE_VERSION)?;
        let after = m
            .optional("after")
            .map(|v| as_array::<32>("catalog request after", v))
            .transpose()?
            .map(|b| ModelId(BlobHash::from_bytes(b)));
        let ids = flag(m.optional("ids"), "catalog request ids")?;
        let want = m
            .optional("want")
            .map(|v| id_list("catalog request want", v, MAX_CATALOG_PAGE))
            .transpose()?
            .unwrap_or_default();
        let votes = flag(m.optional("votes"), "catalog request votes")?;
        m.finish()?;
        if !want.is_empty() && (after.is_some() || ids) {
            return Err(DecodeError::invalid(
                "catalog request",
                "want is asked alone (no after, no ids)",
            ));
        }
        Ok(CatalogRequest {
            after,
            ids,
            want,
            votes,
        })
    }
}

/// A flag key: `true`, or absent for false.
fn flag(v: Option<Value>, what: &'static str) -> Result<bool, DecodeError> {
    match v {
        None => Ok(false),
        Some(Value::Bool(true)) => Ok(true),
        Some(_) => Err(DecodeError::invalid(what, "expected true (or no key)")),
    }
}

fn id_value(id: &ModelId) -> Value {
    Value::Bytes(id.blob().as_bytes().to_vec())
}

fn id_list(what: &'static str, v: Value, max: usize) -> Result<Vec<ModelId>, DecodeError> {
    as_list(what, v, max, |v| {
        as_array::<32>(what, v).map(|b| ModelId(BlobHash::from_bytes(b)))
    })
}

/// An answer to a [`CatalogRequest`]: signed manifest envelopes (each verified by the receiver
/// before use; at most [`MAX_CATALOG_PAGE`]) or, for a page of ids, ids (at most
/// [`MAX_CATALOG_IDS`]), in model id order for a walk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogResponse {
    /// Envelope bytes, each a `Signed<Manifest>`.
    pub manifests: Vec<Vec<u8>>,
    /// Envelope bytes, each a `Signed<Vote>` (a votes request's answer; at most
    /// [`MAX_CATALOG_PAGE`], and `manifests` is empty).
    pub votes: Vec<Vec<u8>>,
    /// Model ids (a page of ids).
    pub ids: Vec<ModelId>,
    /// Present when the walk goes on: ask again with this as `after` (the last id of this
    /// page).
    pub next: Option<ModelId>,
}

impl Object for CatalogResponse {
    const WHAT: &'static str = "catalog response";
    const MAX_BYTES: usize = MAX_CATALOG_RESPONSE_BYTES;

    fn to_cbor(&self) -> Value {
        let mut map = vec![
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
        ];
        if !self.ids.is_empty() {
            map.push((
                Value::text("ids"),
                Value::Array(self.ids.iter().map(id_value).collect()),
            ));
        }
        if let Some(next) = self.next {
            map.push((Value::text("next"), id_value(&next)));
        }
        if !self.votes.is_empty() {
            map.push((
                Value::text("votes"),
                Value::Array(self.votes.iter().map(|v| Value::Bytes(v.clone())).collect()),
            ));
        }
        Value::Map(map)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("catalog response", v)?;
        m.version(WIRE_VERSION)?;
        let manifests = as_list(
            "catalog manifests",
            m.required("manifests")?,
            MAX_CATALOG_PAGE,
            |v| match v {
                Value::Bytes(b) => Ok(b),
                _ => Err(DecodeError::invalid(
                    "catalog manifests",
                    "expected byte strings",
                )),
            },
        )?;
        let ids = m
            .optional("ids")
            .map(|v| id_list("catalog response ids", v, MAX_CATALOG_IDS))
            .transpose()?
            .unwrap_or_default();
        let next = m
            .optional("next")
            .map(|v| as_array::<32>("catalog response next", v))
            .transpose()?
            .map(|b| ModelId(BlobHash::from_bytes(b)));
        let votes = m
            .optional("votes")
            .map(|v| {
                as_list("catalog votes", v, MAX_CATALOG_PAGE, |v| match v {
                    Value::Bytes(b) => Ok(b),
                    _ => Err(DecodeError::invalid(
                        "catalog votes",
                        "expected byte strings",
                    )),
                })
            })
            .transpose()?
            .unwrap_or_default();
        m.finish()?;
        if !votes.is_empty() && !manifests.is_empty() {
            return Err(DecodeError::invalid(
                "catalog response",
                "manifests and votes in one answer",
            ));
        }
        Ok(CatalogResponse {
            manifests,
            votes,
            ids,
            next,
        })
    }
}

impl CatalogResponse {
    /// Builds one page of ids from `ids` (in increasing order, after the requested id): at
    /// most `max` (at least one), with `next` set when more remain. Reads one id past the page.
    pub fn id_page(ids: impl IntoIterator<Item = ModelId>, max: usize) -> CatalogResponse {
        let mut page = CatalogResponse::default();
        for id in ids {
            if page.ids.len() >= max.max(1) {
                page.next = page.ids.last().copied();
                return page;
            }
            page.ids.push(id);
        }
        page
    }

    /// Builds one page from `entries`: (id, envelope) pairs in increasing id order, starting
    /// after the requested id. Takes at most `max_items` and `max_bytes` of envelopes (but at
    /// least one if any), and sets `next` when entries remain. Reads one entry past the page.
    pub fn page(
        entries: impl IntoIterator<Item = (ModelId, Vec<u8>)>,
        max_items: usize,
        max_bytes: usize,
    ) -> CatalogResponse {
        let mut page = CatalogResponse::default();
        let mut bytes = 0;
        let mut last = None;
        for (id, envelope) in entries {
            if !page.manifests.is_empty()
                && (page.manifests.len() >= max_items || bytes + envelope.len() > max_bytes)
            {
                page.next = last;
                return page;
            }
            bytes += envelope.len();
            page.manifests.push(envelope);
            last = Some(id);
        }
        page
    }

    /// As [`CatalogResponse::page`], for a votes request: the envelopes go in `votes`.
    pub fn vote_page(
        entries: impl IntoIterator<Item = (ModelId, Vec<u8>)>,
        max_items: usize,
        max_bytes: usize,
    ) -> CatalogResponse {
        let mut page = CatalogResponse::page(entries, max_items, max_bytes);
        page.votes = std::mem::take(&mut page.manifests);
        page
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
