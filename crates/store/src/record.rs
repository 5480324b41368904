//! What the `blobs` and `partial` sled trees hold, encoded as deterministic CBOR.

use protocol::cbor::{MapReader, Value, as_array, as_list, as_u64};
use protocol::{BlobHash, DecodeError};

/// Longest record accepted from the index (a composite of many tensors, or a large bitmap).
const MAX_RECORD_BYTES: usize = 64 << 20;
const RECORD_VERSION: u64 = 1;

/// How a complete blob's bytes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One data file, `blobs/<hash>.data`.
    File,
    /// The concatenation of other blobs (tensor-level dedup of `.safetensors`), in order.
    Parts(Vec<(BlobHash, u64)>),
}

/// A complete blob in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// Length in bytes.
    pub size: u64,
    /// Where its bytes are.
    pub layout: Layout,
    /// Blobs this one keeps alive through garbage collection (parts, files of a manifest, the
    /// parent snapshot, …).
    pub links: Vec<BlobHash>,
    /// What it is, for listings: `raw`, `safetensors`, `collection`, `manifest`, `snapshot`.
    pub kind: String,
}

fn hashes(v: &[BlobHash]) -> Value {
    Value::Array(
        v.iter()
            .map(|h| Value::Bytes(h.as_bytes().to_vec()))
            .collect(),
    )
}

fn hash(what: &'static str, v: Value) -> Result<BlobHash, DecodeError> {
    as_array(what, v).map(BlobHash::from_bytes)
}

impl BlobRecord {
    /// Every blob whose bytes this one needs or keeps alive.
    pub fn children(&self) -> impl Iterator<Item = BlobHash> + '_ {
        let parts: &[(BlobHash, u64)] = match &self.layout {
            Layout::File => &[],
            Layout::Parts(p) => p,
        };
        parts
            .iter()
            .map(|(h, _)| *h)
            .chain(self.links.iter().copied())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(RECORD_VERSION)),
            (Value::text("size"), Value::Uint(self.size)),
            (Value::text("links"), hashes(&self.links)),
            (Value::text("kind"), Value::text(&self.kind)),
        ];
        if let Layout::Parts(parts) = &self.layout {
            entries.push((
                Value::text("parts"),
                Value::Array(
                    parts
                        .iter()
                        .map(|(h, n)| {
                            Value::Array(vec![Value::Bytes(h.as_bytes().to_vec()), Value::Uint(*n)])
                        })
                        .collect(),
                ),
            ));
        }
        Value::Map(entries).encode()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("blob record", Value::decode(bytes, MAX_RECORD_BYTES)?)?;
        m.version(RECORD_VERSION)?;
        let size = as_u64("blob size", m.required("size")?)?;
        let links = as_list("blob links", m.required("links")?, usize::MAX, |v| {
            hash("blob link", v)
        })?;
        let kind = protocol::cbor::as_text("blob kind", m.required("kind")?, 64)?;
        let layout = match m.optional("parts") {
            None => Layout::File,
            Some(v) => Layout::Parts(as_list("blob parts", v, usize::MAX, |p| match p {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let n = as_u64("part size", pair.pop().unwrap_or(Value::Null))?;
                    let h = hash("part hash", pair.pop().unwrap_or(Value::Null))?;
                    Ok((h, n))
                }
                _ => Err(DecodeError::Invalid {
                    what: "blob part",
                    reason: "expected [hash, size]".into(),
                }),
            })?),
        };
        m.finish()?;
        Ok(BlobRecord {
            size,
            layout,
            links,
            kind,
        })
    }
}

/// A blob being received from untrusted peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialRecord {
    /// The blob's claimed length; the root hash check proves it as groups arrive.
    pub size: u64,
    /// One bit per 16 KiB chunk group: set once that group verified and is durably on disk.
    pub present: Vec<u8>,
}

impl PartialRecord {
    pub(crate) fn new(size: u64) -> Self {
        let groups = crate::groups(size);
        PartialRecord {
            size,
            present: vec![0; groups.div_ceil(8) as usize],
        }
    }

    /// Whether chunk group `g` is present.
    pub fn has(&self, g: u64) -> bool {
        self.present
            .get((g / 8) as usize)
            .is_some_and(|b| b & (1 << (g % 8)) != 0)
    }

    pub(crate) fn set(&mut self, g: u64) {
        if let Some(b) = self.present.get_mut((g / 8) as usize) {
            *b |= 1 << (g % 8);
        }
    }

    /// How many groups are present.
    pub fn count(&self) -> u64 {
        self.present.iter().map(|b| b.count_ones() as u64).sum()
    }

    /// The runs of present groups, `[start, end)`, in order.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let total = crate::groups(self.size);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for g in (0..total).filter(|g| self.has(*g)) {
            match out.last_mut() {
                Some(last) if last.1 == g => last.1 = g + 1,
                _ => out.push((g, g + 1)),
            }
        }
        out
    }

    /// Whether every group is present.
    pub fn is_complete(&self) -> bool {
        self.count() == crate::groups(self.size)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(RECORD_VERSION)),
            (Value::text("size"), Value::Uint(self.size)),
            (Value::text("present"), Value::Bytes(self.present.clone())),
        ])
        .encode()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("partial record", Value::decode(bytes, MAX_RECORD_BYTES)?)?;
        m.version(RECORD_VERSION)?;
        let size = as_u64("partial size", m.required("size")?)?;
        let present = match m.required("present")? {
            Value::Bytes(b) if b.len() as u64 == crate::groups(size).div_ceil(8) => b,
            _ => {
                return Err(DecodeError::Invalid {
                    what: "partial record",
                    reason: "bitmap does not match the size".into(),
                });
            }
        };
        m.finish()?;
        Ok(PartialRecord { size, present })
    }
}
