//! Content and identity names: [`BlobHash`], [`ModelId`], [`NodeId`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use crate::cbor::{Value, as_array};
use crate::{DecodeError, ParseHashError};

/// BLAKE3 hash of a blob's bytes. Shown as 64 lowercase hex characters, so a raw file's
/// `BlobHash` equals what `b3sum` prints for it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        BlobHash(bytes)
    }

    /// The raw hash bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 bytes as hex, for compact human output only.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }

    pub(crate) fn to_cbor(self) -> Value {
        Value::Bytes(self.0.to_vec())
    }

    pub(crate) fn from_cbor(what: &'static str, v: Value) -> Result<Self, DecodeError> {
        Ok(BlobHash(as_array(what, v)?))
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(h: blake3::Hash) -> Self {
        BlobHash(*h.as_bytes())
    }
}

impl From<BlobHash> for blake3::Hash {
    fn from(h: BlobHash) -> Self {
        blake3::Hash::from_bytes(h.0)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.short())
    }
}

impl FromStr for BlobHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(ParseHashError::Length { len: s.len() });
        }
        if let Some(pos) = s.find(|c: char| !c.is_ascii_hexdigit()) {
            return Err(ParseHashError::NotHex { pos });
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseHashError::NotHex { pos: 0 })?;
        Ok(BlobHash(out))
    }
}

/// The name of a published model: the [`BlobHash`] of its signed manifest envelope's bytes.
///
/// The envelope is itself stored and transferred as a blob, so fetching a model starts by
/// fetching the blob named by its `ModelId`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelId(pub BlobHash);

impl ModelId {
    /// The blob holding the signed manifest.
    pub const fn blob(&self) -> BlobHash {
        self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({})", self.0.short())
    }
}

impl FromStr for ModelId {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(ModelId)
    }
}

/// How many decompressed public keys [`decompress`] keeps (about 250 bytes each): when full, it
/// starts over, so a peer that sends many fresh keys costs a decompression each, as without it.
pub const KEY_CACHE_ENTRIES: usize = 4096;

/// Decompressed public keys by their bytes. Checking that 32 bytes are a key and verifying a
/// signature both need the decompressed point (a square root, about a quarter of a verify), and
/// the same few peers sign almost everything a node checks.
static KEYS: Mutex<Option<HashMap<[u8; 32], ed25519_dalek::VerifyingKey>>> = Mutex::new(None);

/// The ed25519 public key `bytes` decompresses to, from [`KEYS`] when it is there.
fn decompress(bytes: &[u8; 32]) -> Result<ed25519_dalek::VerifyingKey, DecodeError> {
    let cached = KEYS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|keys| keys.get(bytes).copied());
    if let Some(key) = cached {
        return Ok(key);
    }
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .map_err(|_| DecodeError::invalid("node id", "not a valid ed25519 public key"))?;
    let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    let keys = keys.get_or_insert_with(HashMap::new);
    if keys.len() >= KEY_CACHE_ENTRIES {
        keys.clear();
    }
    keys.insert(*bytes, key);
    Ok(key)
}

/// A node's (or author's) identity: an ed25519 public key, the same key as its libp2p identity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Checks that `bytes` is a valid ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, DecodeError> {
        decompress(&bytes)?;
        Ok(NodeId(bytes))
    }

    /// The raw public key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, DecodeError> {
        decompress(&self.0)
    }

    pub(crate) fn from_verifying_key(key: &ed25519_dalek::VerifyingKey) -> Self {
        NodeId(key.to_bytes())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", hex::encode(&self.0[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_hash_matches_b3sum_of_empty_and_abc() {
        // b3sum of the empty input and of "abc", from the BLAKE3 reference test vectors.
        assert_eq!(
            BlobHash::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            BlobHash::of(b"abc").to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn parse_rejects_bad_hashes_with_reason() {
        assert_eq!(
            "abc".parse::<BlobHash>(),
            Err(ParseHashError::Length { len: 3 })
        );
        let mut s = "0".repeat(64);
        s.replace_range(10..11, "g");
        assert_eq!(
            s.parse::<BlobHash>(),
            Err(ParseHashError::NotHex { pos: 10 })
        );
        let h = BlobHash::of(b"x");
        assert_eq!(h.to_hex().to_uppercase().parse::<BlobHash>(), Ok(h));
    }
}
