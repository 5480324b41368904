//! The provider's checks of an inbound call, before it runs anything: [`check_call`] decodes
//! the [`InferCall`] and its signed [`InferRequest`] and checks that the request was signed by
//! the peer that sent it, is addressed to this provider, that this provider serves, that the
//! request's price covers this provider's, and that the inputs hash to the signed input hash.
//! The request window and nonce ([`Nonces`](crate::Nonces)) and the caller's slots
//! ([`CallerSlots`](crate::CallerSlots)) come after, in that order.
//!
//! Every refusal is a [`RequestError`] whose message is what the caller sees and whose
//! [`status`](RequestError::status) is the wire status to answer with.

use protocol::compute::{InferCall, InferRequest, InferResult, InferStatus};
use protocol::{BlobHash, DecodeError, NodeId, Object, Signed};

/// What this provider requires of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeTerms {
    /// This provider's node id: requests must be addressed to it.
    pub provider: NodeId,
    /// Whether it serves calls for peers at all.
    pub serve: bool,
    /// Its price per million fuel units: requests must allow at least this much.
    pub price_per_mfuel: u64,
}

/// Why a provider refuses a call. Each variant's message is sent to the caller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The call frame does not decode: answer `BadRequest`.
    #[error("malformed call: {0}")]
    MalformedCall(DecodeError),
    /// The signed request does not decode or its signature does not verify: refuse.
    #[error("request: {0}")]
    InvalidRequest(DecodeError),
    /// The request was signed by someone else than the peer that sent it (a relayed or stolen
    /// request): refuse.
    #[error("the request is signed by {signer}, not by the peer that sent it")]
    NotBySender {
        /// Who signed it.
        signer: NodeId,
    },
    /// The request names another provider: refuse.
    #[error("the request is addressed to another provider")]
    OtherProvider,
    /// This node does not serve calls for peers: refuse.
    #[error("this node does not serve calls for peers")]
    NotServing,
    /// The request allows less than this provider charges: refuse.
    #[error("price: this provider charges {charges} per million fuel, the request allows {allows}")]
    Underpriced {
        /// This provider's price per million fuel units.
        charges: u64,
        /// The request's highest price.
        allows: u64,
    },
    /// The inputs sent are not those the request signed: answer `BadRequest`.
    #[error("the inputs do not match the signed input hash")]
    InputMismatch,
    /// The request was made too far from this provider's clock: refuse.
    #[error(
        "the request was made {skew_s} s from this provider's clock (at most {window_s} s allowed)"
    )]
    Stale {
        /// How far from this provider's clock, seconds.
        skew_s: u64,
        /// The most allowed, seconds.
        window_s: u64,
    },
    /// The request's nonce was used already: refuse (a provider runs a request at most once).
    #[error("replayed request: this nonce was used already")]
    Replayed,
    /// The request was made before this provider (re)started, so its nonce may have been used
    /// in the previous run: refuse (a caller makes a fresh request).
    #[error("the request was made {early_ms} ms before this provider started; make a new one")]
    BeforeStart {
        /// How long before the start, ms.
        early_ms: u64,
    },
}

impl RequestError {
    /// The status to answer the caller with.
    pub fn status(&self) -> InferStatus {
        match self {
            RequestError::MalformedCall(_) | RequestError::InputMismatch => InferStatus::BadRequest,
            RequestError::InvalidRequest(_)
            | RequestError::NotBySender { .. }
            | RequestError::OtherProvider
            | RequestError::NotServing
            | RequestError::Underpriced { .. }
            | RequestError::Stale { .. }
            | RequestError::Replayed
            | RequestError::BeforeStart { .. } => InferStatus::Refused,
        }
    }
}

/// A call that passed [`check_call`]: still to pass the nonce window and the caller's slots.
#[derive(Debug, Clone)]
pub struct CheckedCall {
    /// The signed request.
    pub request: Signed<InferRequest>,
    /// BLAKE3 of the signed request's envelope, as sent (the result names it).
    pub request_hash: BlobHash,
    /// The inputs (an OIP v2 request, JSON), which hash to the request's `input_hash`.
    pub input: Vec<u8>,
    /// A cheque that came with the call (a `Signed<Cheque>` envelope, not yet checked).
    pub cheque: Option<Vec<u8>>,
}

impl CheckedCall {
    /// The caller (the request's signer, who sent it).
    pub fn caller(&self) -> NodeId {
        self.request.signer()
    }

    /// The result to sign for this call once it ran: `output` (encoded outputs) with `fuel`
    /// used, at `price_per_mfuel`, on `backend`.
    pub fn result(
        &self,
        output: &[u8],
        fuel: u64,
        price_per_mfuel: u64,
        backend: String,
    ) -> InferResult {
        InferResult {
            request: self.request_hash,
            model: self.request.body().model,
            output_hash: BlobHash::of(output),
            fuel,
            price_per_mfuel,
            backend,
        }
    }
}

/// Checks an inbound call (its bytes) sent by `sent_by` (the node id in the sending peer's id,
/// if it has one) against this provider's `terms`; see the module docs for the checks and their
/// order.
pub fn check_call(
    call: &[u8],
    sent_by: Option<NodeId>,
    terms: &ServeTerms,
) -> Result<CheckedCall, RequestError> {
    let call = InferCall::from_bytes(call).map_err(RequestError::MalformedCall)?;
    let request =
        Signed::<InferRequest>::from_bytes(&call.request).map_err(RequestError::InvalidRequest)?;
    let signer = request.signer();
    if sent_by != Some(signer) {
        return Err(RequestError::NotBySender { signer });
    }
    let r = request.body();
    if r.provider != terms.provider {
        return Err(RequestError::OtherProvider);
    }
    if !terms.serve {
        return Err(RequestError::NotServing);
    }
    if r.max_price_per_mfuel < terms.price_per_mfuel {
        return Err(RequestError::Underpriced {
            charges: terms.price_per_mfuel,
            allows: r.max_price_per_mfuel,
        });
    }
    if BlobHash::of(&call.input) != r.input_hash {
        return Err(RequestError::InputMismatch);
    }
    Ok(CheckedCall {
        request_hash: BlobHash::of(&call.request),
        request,
        input: call.input,
        cheque: call.cheque,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ModelId, SecretKey};

    fn caller() -> SecretKey {
        SecretKey::from_seed(&[1; 32])
    }

    fn terms() -> ServeTerms {
        ServeTerms {
            provider: SecretKey::from_seed(&[2; 32]).node_id(),
            serve: true,
            price_per_mfuel: 5,
        }
    }

    fn request(input: &[u8]) -> InferRequest {
        InferRequest {
            model: ModelId(BlobHash::of(b"m")),
            input_hash: BlobHash::of(input),
            max_fuel: 1000,
            max_price_per_mfuel: 5,
            nonce: [3; 16],
            issued_ms: 1,
            provider: terms().provider,
        }
    }

    fn call_of(request: &Signed<InferRequest>, input: &[u8]) -> Vec<u8> {
        InferCall {
            request: request.to_bytes(),
            input: input.to_vec(),
            cheque: None,
        }
        .to_bytes()
    }

    fn check(
        request: InferRequest,
        input: &[u8],
        terms: &ServeTerms,
    ) -> Result<CheckedCall, RequestError> {
        let signed = caller().sign(request);
        check_call(&call_of(&signed, input), Some(caller().node_id()), terms)
    }

    #[test]
    fn a_good_call_passes_and_its_result_names_it() {
        let input = b"{}";
        let signed = caller().sign(request(input));
        let checked = check_call(&call_of(&signed, input), Some(caller().node_id()), &terms())
            .expect("a good call");
        assert_eq!(checked.caller(), caller().node_id());
        assert_eq!(checked.input, input);
        assert_eq!(checked.request_hash, BlobHash::of(&signed.to_bytes()));
        let result = checked.result(b"out", 7, 5, "wasm".into());
        assert_eq!(result.request, checked.request_hash);
        assert_eq!(result.model, signed.body().model);
        assert_eq!(result.output_hash, BlobHash::of(b"out"));
        assert_eq!((result.fuel, result.price_per_mfuel), (7, 5));
    }

    #[test]
    fn each_refusal_says_why_with_its_status() {
        let input = b"{}";
        let refuse = |r: Result<CheckedCall, RequestError>, says: &str, status: InferStatus| {
            let e = r.expect_err(says);
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(e.status(), status, "{e}");
        };
        refuse(
            check_call(b"junk", Some(caller().node_id()), &terms()),
            "malformed call",
            InferStatus::BadRequest,
        );
        // Sent by another peer than the signer, or by a peer with no node id.
        let signed = caller().sign(request(input));
        let other = SecretKey::from_seed(&[9; 32]).node_id();
        for sender in [Some(other), None] {
            refuse(
                check_call(&call_of(&signed, input), sender, &terms()),
                "not by the peer",
                InferStatus::Refused,
            );
        }
        // A forged signature.
        let mut bytes = signed.to_bytes();
        let at = bytes
            .windows(64)
            .position(|w| w == signed.signature())
            .expect("signature bytes");
        bytes[at] ^= 1;
        let forged = InferCall {
            request: bytes,
            input: input.to_vec(),
            cheque: None,
        }
        .to_bytes();
        refuse(
            check_call(&forged, Some(caller().node_id()), &terms()),
            "signature",
            InferStatus::Refused,
        );
        let elsewhere = InferRequest {
            provider: other,
            ..request(input)
        };
        refuse(
            check(elsewhere, input, &terms()),
            "another provider",
            InferStatus::Refused,
        );
        let off = ServeTerms {
            serve: false,
            ..terms()
        };
        refuse(
            check(request(input), input, &off),
            "does not serve",
            InferStatus::Refused,
        );
        let cheap = InferRequest {
            max_price_per_mfuel: 4,
            ..request(input)
        };
        refuse(
            check(cheap, input, &terms()),
            "price: this provider charges 5 per million fuel, the request allows 4",
            InferStatus::Refused,
        );
        refuse(
            check(request(input), b"{ }", &terms()),
            "input hash",
            InferStatus::BadRequest,
        );
    }
}
