//! Signed envelopes: a body, its author, and a domain-separated ed25519 signature.
//!
//! The signature covers `domain || 0x00 || body`, where `domain` is the body type's
//! [`Signable::DOMAIN`] (e.g. `moxnet/v1/manifest`). A signature made for one kind of object
//! therefore never verifies as another kind, even if the body bytes happened to decode as both.

use crate::cbor::{self, MapReader, Value, as_array, as_text};
use crate::{DecodeError, NodeId, Object};

/// Version of the envelope layout.
pub const ENVELOPE_VERSION: u64 = 1;
/// Bytes an envelope adds around its body, at most.
pub const ENVELOPE_OVERHEAD: usize = 256;

/// An [`Object`] that is signed by its author.
pub trait Signable: Object {
    /// The domain tag of this kind; no two kinds share one.
    const DOMAIN: &'static str;
}

/// The message an ed25519 signature covers.
fn signing_message(domain: &str, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + 1 + body.len());
    msg.extend_from_slice(domain.as_bytes());
    msg.push(0);
    msg.extend_from_slice(body);
    msg
}

/// An ed25519 signing key: a node's or an author's identity.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl SecretKey {
    /// The key with the given 32-byte seed (the RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for writing the key to a file.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_verifying_key(&self.0.verifying_key())
    }

    /// Signs `body` as its author.
    pub fn sign<T: Signable>(&self, body: T) -> Signed<T> {
        use ed25519_dalek::Signer;
        let body_bytes = body.to_bytes();
        let signature = self
            .0
            .sign(&signing_message(T::DOMAIN, &body_bytes))
            .to_bytes();
        Signed {
            body,
            body_bytes,
            signer: self.node_id(),
            signature,
        }
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public: {:?})", self.node_id())
    }
}

/// A body of type `T` with its author's verified signature.
///
/// A `Signed<T>` can only be made by [`SecretKey::sign`] or by [`Signed::from_bytes`], which
/// checks the signature, so holding one means the signature verifies (or, through
/// [`Signed::from_trusted_bytes`], that this node verified it before and kept it).
#[derive(Debug, Clone, PartialEq)]
pub struct Signed<T> {
    body: T,
    body_bytes: Vec<u8>,
    signer: NodeId,
    signature: [u8; 64],
}

impl<T: Signable> Signed<T> {
    /// The signed body.
    pub fn body(&self) -> &T {
        &self.body
    }

    /// The body's canonical bytes, exactly as signed.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body_bytes
    }

    /// Who signed it.
    pub fn signer(&self) -> NodeId {
        self.signer
    }

    /// The 64-byte ed25519 signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The largest envelope of this kind that is decoded.
    pub const MAX_BYTES: usize = T::MAX_BYTES + ENVELOPE_OVERHEAD;

    /// The envelope's canonical bytes: the map of §2 written directly (it is hashed and sent
    /// with every call), its keys in canonical order (shorter first, then bytewise).
    pub fn to_bytes(&self) -> Vec<u8> {
        fn text(out: &mut Vec<u8>, s: &str) {
            cbor::head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            cbor::head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        let mut out = Vec::with_capacity(self.body_bytes.len() + T::DOMAIN.len() + 160);
        cbor::head(&mut out, 5, 5);
        text(&mut out, "v");
        cbor::head(&mut out, 0, ENVELOPE_VERSION);
        text(&mut out, "sig");
        bytes(&mut out, &self.signature);
        text(&mut out, "body");
        bytes(&mut out, &self.body_bytes);
        text(&mut out, "domain");
        text(&mut out, T::DOMAIN);
        text(&mut out, "signer");
        bytes(&mut out, self.signer.as_bytes());
        out
    }

    /// Decodes an envelope, checks its domain, verifies its signature, then decodes its body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes, true)
    }

    /// Decodes an envelope that this node verified with [`Signed::from_bytes`] before and kept
    /// in its own index (e.g. the catalogue after a restart): every structural check, but not
    /// the signature. **Never** use it on bytes from a peer or any file this node did not
    /// write itself.
    pub fn from_trusted_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes, false)
    }

    fn decode(bytes: &[u8], verify: bool) -> Result<Self, DecodeError> {
        let value = Value::decode(bytes, Self::MAX_BYTES)?;
        let mut map = MapReader::new("signed envelope", value)?;
        map.version(ENVELOPE_VERSION)?;
        let domain = as_text("envelope domain", map.required("domain")?, 64)?;
        let signer = NodeId::from_bytes(as_array("envelope signer", map.required("signer")?)?)?;
        let body_bytes = match map.required("body")? {
            Value::Bytes(b) => b,
            _ => {
                return Err(DecodeError::invalid(
                    "envelope body",
                    "expected a byte string",
                ));
            }
        };
        let signature: [u8; 64] = as_array("envelope signature", map.required("sig")?)?;
        map.finish()?;
        if domain != T::DOMAIN {
            return Err(DecodeError::WrongDomain {
                expected: T::DOMAIN,
                found: domain,
            });
        }
        if verify {
            let key = signer.verifying_key()?;
            let sig = ed25519_dalek::Signature::from_bytes(&signature);
            key.verify_strict(&signing_message(T::DOMAIN, &body_bytes), &sig)
                .map_err(|_| DecodeError::BadSignature { signer })?;
        }
        let body = T::from_bytes(&body_bytes)?;
        let envelope = Signed {
            body,
            body_bytes,
            signer,
            signature,
        };
        if envelope.to_bytes() != bytes {
            return Err(DecodeError::NotCanonical("envelope re-encodes differently"));
        }
        Ok(envelope)
    }
}
