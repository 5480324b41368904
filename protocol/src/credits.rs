//! Credits: what a call costs and how it is paid. Byte-level spec: `docs/protocol.md` §12.
//!
//! - A **receipt** ([`Receipt`]) is the pair of signed messages every call already produces:
//!   the caller's [`InferRequest`] and the provider's [`InferResult`]. Its cost is fixed by the
//!   two signatures ([`cost`]): the fuel used times the price charged, which the result can only
//!   state within the request's `max_fuel` and `max_price_per_mfuel`.
//! - A **cheque** ([`Cheque`], domain `moxnet/v1/cheque`) is the payer's signed, cumulative
//!   statement of everything it has paid one payee: for calls the payee served it, and in
//!   royalties for the payee's models it served others. A newer cheque (higher `seq`) replaces
//!   an older one; neither total ever goes down.
//! - A provider states its **credit terms** ([`CreditTerms`]) in its signed compute offer.
//! - A manifest may name a **royalty** ([`Royalty`]): a share of the cost of every call of the
//!   model, owed by the provider that ran it to the payee.

use crate::cbor::{MapReader, Value, as_array, as_u64};
pub use crate::compute::{CreditTerms, MAX_CHEQUE_BYTES};
use crate::compute::{InferRequest, InferResult, MAX_INFER_SIGNED_BYTES};
use crate::{BlobHash, DecodeError, ModelId, NodeId, Object, Signable, Signed};

/// Domain tag of signed cheques.
pub const DOMAIN_CHEQUE: &str = "moxnet/v1/cheque";
/// Version of the credit messages.
pub const CREDITS_VERSION: u64 = 1;
/// Largest encoded [`Receipt`].
pub const MAX_RECEIPT_BYTES: usize = 2 * (MAX_INFER_SIGNED_BYTES + crate::ENVELOPE_OVERHEAD) + 64;
/// A royalty's share is in basis points: 10,000 is the whole cost.
pub const BPS_WHOLE: u64 = 10_000;
/// Fuel units a price is quoted per.
pub const FUEL_PER_PRICE_UNIT: u128 = 1_000_000;

/// What a call that used `fuel` costs at `price_per_mfuel` credits per million fuel units:
/// `ceil(fuel × price / 1,000,000)`, saturating at `u64::MAX`.
pub fn cost(fuel: u64, price_per_mfuel: u64) -> u64 {
    let product = fuel as u128 * price_per_mfuel as u128;
    u64::try_from(product.div_ceil(FUEL_PER_PRICE_UNIT)).unwrap_or(u64::MAX)
}

/// The royalty owed on a call that cost `cost`: `floor(cost × bps / 10,000)`.
pub fn royalty_of(cost: u64, bps: u16) -> u64 {
    (cost as u128 * bps.min(BPS_WHOLE as u16) as u128 / BPS_WHOLE as u128) as u64
}

/// A payer's signed, cumulative statement of what it has paid one payee. The payer is the
/// envelope's signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cheque {
    /// Who is paid.
    pub payee: NodeId,
    /// The ledger epoch: set by the payer's first cheque to this payee, the same in every later
    /// one (a payee refuses another).
    pub epoch: u64,
    /// Strictly increasing, per (payer, payee).
    pub seq: u64,
    /// Credits paid in all for calls the payee served the payer.
    pub calls: u64,
    /// Credits paid in all as royalties on the payee's models the payer served.
    pub royalties: u64,
    /// The newest receipt (its id) the call total covers; absent before any.
    pub receipt: Option<BlobHash>,
    /// When it was signed, milliseconds since the Unix epoch.
    pub issued_ms: u64,
}

impl Object for Cheque {
    const WHAT: &'static str = "cheque";
    const MAX_BYTES: usize = MAX_CHEQUE_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(CREDITS_VERSION)),
            (
                Value::text("payee"),
                Value::Bytes(self.payee.as_bytes().to_vec()),
            ),
            (Value::text("epoch"), Value::Uint(self.epoch)),
            (Value::text("seq"), Value::Uint(self.seq)),
            (Value::text("calls"), Value::Uint(self.calls)),
            (Value::text("royalties"), Value::Uint(self.royalties)),
            (Value::text("issued_ms"), Value::Uint(self.issued_ms)),
        ];
        if let Some(r) = &self.receipt {
            entries.push((Value::text("receipt"), r.to_cbor()));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("cheque", v)?;
        m.version(CREDITS_VERSION)?;
        let cheque = Cheque {
            payee: NodeId::from_bytes(as_array("cheque payee", m.required("payee")?)?)?,
            epoch: as_u64("cheque epoch", m.required("epoch")?)?,
            seq: as_u64("cheque seq", m.required("seq")?)?,
            calls: as_u64("cheque calls", m.required("calls")?)?,
            royalties: as_u64("cheque royalties", m.required("royalties")?)?,
            receipt: m
                .optional("receipt")
                .map(|v| BlobHash::from_cbor("cheque receipt", v))
                .transpose()?,
            issued_ms: as_u64("cheque issued_ms", m.required("issued_ms")?)?,
        };
        m.finish()?;
        if cheque.seq == 0 {
            return Err(DecodeError::invalid("cheque", "seq starts at 1"));
        }
        Ok(cheque)
    }
}

impl Signable for Cheque {
    const DOMAIN: &'static str = DOMAIN_CHEQUE;
}

/// A share of every call's cost owed to `payee`, named by the author in a signed manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Royalty {
    /// Who is paid (usually the author).
    pub payee: NodeId,
    /// The share, in basis points (1..=10,000).
    pub bps: u16,
}

impl Royalty {
    /// The royalty as the CBOR map of a manifest's `royalty` key.
    pub fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (
                Value::text("payee"),
                Value::Bytes(self.payee.as_bytes().to_vec()),
            ),
            (Value::text("bps"), Value::Uint(self.bps as u64)),
        ])
    }

    /// Decodes and checks a manifest's `royalty` map.
    pub fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("royalty", v)?;
        let payee = NodeId::from_bytes(as_array("royalty payee", m.required("payee")?)?)?;
        let bps = as_u64("royalty bps", m.required("bps")?)?;
        m.finish()?;
        if bps == 0 || bps > BPS_WHOLE {
            return Err(DecodeError::invalid(
                "royalty",
                format!("bps {bps} is not within 1..=10000"),
            ));
        }
        Ok(Royalty {
            payee,
            bps: bps as u16,
        })
    }
}

/// A receipt: a caller's signed request and the provider's signed result for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The `Signed<InferRequest>` envelope.
    pub request: Vec<u8>,
    /// The `Signed<InferResult>` envelope.
    pub result: Vec<u8>,
}

impl Object for Receipt {
    const WHAT: &'static str = "receipt";
    const MAX_BYTES: usize = MAX_RECEIPT_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(CREDITS_VERSION)),
            (Value::text("request"), Value::Bytes(self.request.clone())),
            (Value::text("result"), Value::Bytes(self.result.clone())),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("receipt", v)?;
        m.version(CREDITS_VERSION)?;
        let bytes = |what: &'static str, v: Value| match v {
            Value::Bytes(b) if b.len() <= MAX_INFER_SIGNED_BYTES + crate::ENVELOPE_OVERHEAD => {
                Ok(b)
            }
            Value::Bytes(b) => Err(DecodeError::TooLarge {
                limit: MAX_INFER_SIGNED_BYTES + crate::ENVELOPE_OVERHEAD,
                actual: b.len(),
            }),
            _ => Err(DecodeError::invalid(what, "expected bytes")),
        };
        let receipt = Receipt {
            request: bytes("receipt request", m.required("request")?)?,
            result: bytes("receipt result", m.required("result")?)?,
        };
        m.finish()?;
        Ok(receipt)
    }
}

/// A receipt whose two signatures verified and agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// Its id: BLAKE3 of the result envelope.
    pub id: BlobHash,
    /// The caller (who owes).
    pub caller: NodeId,
    /// The provider (who is owed).
    pub provider: NodeId,
    /// The model run.
    pub model: ModelId,
    /// Fuel used.
    pub fuel: u64,
    /// Price charged per million fuel units.
    pub price_per_mfuel: u64,
    /// What it costs: [`cost`] of the two.
    pub cost: u64,
    /// When the request was made, milliseconds since the Unix epoch.
    pub issued_ms: u64,
}

/// Why a receipt does not hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReceiptError {
    /// One of the envelopes does not decode or verify.
    #[error("receipt: {0}")]
    Decode(#[from] DecodeError),
    /// The result does not answer this request, or is not signed by the request's provider.
    #[error("receipt: {0}")]
    Mismatch(&'static str),
}

impl Receipt {
    /// The pair, from the two signed messages.
    pub fn of(request: &Signed<InferRequest>, result: &Signed<InferResult>) -> Receipt {
        Receipt {
            request: request.to_bytes(),
            result: result.to_bytes(),
        }
    }

    /// Verifies both signatures and that they agree: the result names the request's envelope
    /// hash and model, is signed by the provider the request is addressed to, and states fuel
    /// and a price within the request's limits.
    pub fn verify(&self) -> Result<VerifiedReceipt, ReceiptError> {
        let request = Signed::<InferRequest>::from_bytes(&self.request)?;
        let result = Signed::<InferResult>::from_bytes(&self.result)?;
        Self::check(&request, &result, &self.result)
    }

    /// As [`Receipt::verify`], for envelopes this node verified and stored itself (the
    /// structure and the agreement are checked, not the signatures).
    pub fn verify_trusted(&self) -> Result<VerifiedReceipt, ReceiptError> {
        let request = Signed::<InferRequest>::from_trusted_bytes(&self.request)?;
        let result = Signed::<InferResult>::from_trusted_bytes(&self.result)?;
        Self::check(&request, &result, &self.result)
    }

    fn check(
        request: &Signed<InferRequest>,
        result: &Signed<InferResult>,
        result_bytes: &[u8],
    ) -> Result<VerifiedReceipt, ReceiptError> {
        let (q, r) = (request.body(), result.body());
        if r.request != BlobHash::of(&request.to_bytes()) {
            return Err(ReceiptError::Mismatch("the result answers another request"));
        }
        if result.signer() != q.provider {
            return Err(ReceiptError::Mismatch(
                "the result is not signed by the provider the request names",
            ));
        }
        if r.model != q.model {
            return Err(ReceiptError::Mismatch("the result names another model"));
        }
        if r.fuel > q.max_fuel {
            return Err(ReceiptError::Mismatch(
                "the result states more fuel than allowed",
            ));
        }
        if r.price_per_mfuel > q.max_price_per_mfuel {
            return Err(ReceiptError::Mismatch(
                "the result charges more than the request accepts",
            ));
        }
        Ok(VerifiedReceipt {
            id: BlobHash::of(result_bytes),
            caller: request.signer(),
            provider: result.signer(),
            model: q.model,
            fuel: r.fuel,
            price_per_mfuel: r.price_per_mfuel,
            cost: cost(r.fuel, r.price_per_mfuel),
            issued_ms: q.issued_ms,
        })
    }
}

/// Most receipts in one [`CreditsAnswer`].
pub const MAX_RECEIPTS_PER_ANSWER: usize = 64;
/// Largest [`CreditsRequest`] frame.
pub const MAX_CREDITS_REQUEST_BYTES: usize = 4096;
/// Largest [`CreditsAnswer`] frame.
pub const MAX_CREDITS_ANSWER_BYTES: usize =
    MAX_RECEIPTS_PER_ANSWER * (MAX_RECEIPT_BYTES + 16) + 8192;

fn cheque_bytes(what: &'static str, v: Value) -> Result<Vec<u8>, DecodeError> {
    match v {
        Value::Bytes(b) if b.len() <= MAX_CHEQUE_BYTES + crate::ENVELOPE_OVERHEAD => Ok(b),
        Value::Bytes(b) => Err(DecodeError::TooLarge {
            limit: MAX_CHEQUE_BYTES + crate::ENVELOPE_OVERHEAD,
            actual: b.len(),
        }),
        _ => Err(DecodeError::invalid(
            what,
            "expected a cheque envelope's bytes",
        )),
    }
}

/// What a peer sends on `/moxnet/credits/1` (when it connects, and now and then): its newest
/// cheque to the responder, and optionally a request for receipts of calls the responder served
/// it, from an index of the responder's list on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreditsRequest {
    /// The requester's newest cheque to the responder (a payment, or the same one again).
    pub cheque: Option<Vec<u8>>,
    /// Receipts of calls the responder served the requester, from this index on (the
    /// responder's order, from 0), at most [`MAX_RECEIPTS_PER_ANSWER`].
    pub receipts_from: Option<u64>,
    /// Receipts of calls the responder ran of models whose royalty the requester is owed, from
    /// this index on (an author's audit), at most [`MAX_RECEIPTS_PER_ANSWER`].
    pub royalties_from: Option<u64>,
}

impl Object for CreditsRequest {
    const WHAT: &'static str = "credits request";
    const MAX_BYTES: usize = MAX_CREDITS_REQUEST_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![(Value::text("v"), Value::Uint(CREDITS_VERSION))];
        if let Some(c) = &self.cheque {
            entries.push((Value::text("cheque"), Value::Bytes(c.clone())));
        }
        if let Some(from) = self.receipts_from {
            entries.push((Value::text("receipts_from"), Value::Uint(from)));
        }
        if let Some(from) = self.royalties_from {
            entries.push((Value::text("royalties_from"), Value::Uint(from)));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("credits request", v)?;
        m.version(CREDITS_VERSION)?;
        let request = CreditsRequest {
            cheque: m
                .optional("cheque")
                .map(|v| cheque_bytes("request cheque", v))
                .transpose()?,
            receipts_from: m
                .optional("receipts_from")
                .map(|v| as_u64("receipts_from", v))
                .transpose()?,
            royalties_from: m
                .optional("royalties_from")
                .map(|v| as_u64("royalties_from", v))
                .transpose()?,
        };
        m.finish()?;
        Ok(request)
    }
}

/// What a peer answers on `/moxnet/credits/1`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreditsAnswer {
    /// Why the requester's cheque was refused, if it was (it changed nothing then).
    pub refused: Option<String>,
    /// The responder's newest cheque to the requester (it may pay what it owes now).
    pub cheque: Option<Vec<u8>>,
    /// The newest cheque from the requester the responder holds (a requester that lost its
    /// own copy adopts it).
    pub held: Option<Vec<u8>>,
    /// How many calls the responder has served the requester.
    pub served_calls: u64,
    /// The receipts asked for, in the responder's order from `receipts_from`.
    pub receipts: Vec<Vec<u8>>,
    /// How many calls of models whose royalty the requester is owed the responder ran.
    pub royalty_calls: u64,
    /// The receipts of those asked for (`royalties_from`), in the responder's order.
    pub royalty_receipts: Vec<Vec<u8>>,
}

impl Object for CreditsAnswer {
    const WHAT: &'static str = "credits answer";
    const MAX_BYTES: usize = MAX_CREDITS_ANSWER_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(CREDITS_VERSION)),
            (Value::text("served_calls"), Value::Uint(self.served_calls)),
            (
                Value::text("receipts"),
                Value::Array(
                    self.receipts
                        .iter()
                        .map(|r| Value::Bytes(r.clone()))
                        .collect(),
                ),
            ),
            (
                Value::text("royalty_calls"),
                Value::Uint(self.royalty_calls),
            ),
            (
                Value::text("royalty_receipts"),
                Value::Array(
                    self.royalty_receipts
                        .iter()
                        .map(|r| Value::Bytes(r.clone()))
                        .collect(),
                ),
            ),
        ];
        if let Some(r) = &self.refused {
            entries.push((Value::text("refused"), Value::text(r)));
        }
        if let Some(c) = &self.cheque {
            entries.push((Value::text("cheque"), Value::Bytes(c.clone())));
        }
        if let Some(c) = &self.held {
            entries.push((Value::text("held"), Value::Bytes(c.clone())));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("credits answer", v)?;
        m.version(CREDITS_VERSION)?;
        let receipts = |what: &'static str, v: Value| {
            crate::cbor::as_list(what, v, MAX_RECEIPTS_PER_ANSWER, |v| match v {
                Value::Bytes(b) if b.len() <= MAX_RECEIPT_BYTES => Ok(b),
                _ => Err(DecodeError::invalid(
                    "receipt",
                    "expected a receipt's bytes",
                )),
            })
        };
        let answer = CreditsAnswer {
            served_calls: as_u64("served_calls", m.required("served_calls")?)?,
            receipts: receipts("receipts", m.required("receipts")?)?,
            royalty_calls: as_u64("royalty_calls", m.required("royalty_calls")?)?,
            royalty_receipts: receipts("royalty_receipts", m.required("royalty_receipts")?)?,
            refused: m
                .optional("refused")
                .map(|v| crate::cbor::as_text("refused", v, crate::compute::MAX_ERROR_TEXT))
                .transpose()?,
            cheque: m
                .optional("cheque")
                .map(|v| cheque_bytes("answer cheque", v))
                .transpose()?,
            held: m
                .optional("held")
                .map(|v| cheque_bytes("answer held", v))
                .transpose()?,
        };
        m.finish()?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;
    use proptest::prelude::*;

    fn pair(fuel: u64, price: u64) -> (Signed<InferRequest>, Signed<InferResult>) {
        let caller = SecretKey::from_seed(&[1; 32]);
        let provider = SecretKey::from_seed(&[2; 32]);
        let request = caller.sign(InferRequest {
            model: ModelId(BlobHash::of(b"model")),
            input_hash: BlobHash::of(b"{}"),
            max_fuel: 1_000_000_000,
            max_price_per_mfuel: 5,
            nonce: [3; 16],
            issued_ms: 1_700_000_000_000,
            provider: provider.node_id(),
        });
        let result = provider.sign(InferResult {
            request: BlobHash::of(&request.to_bytes()),
            model: request.body().model,
            output_hash: BlobHash::of(b"out"),
            fuel,
            price_per_mfuel: price,
            backend: "wasm".into(),
        });
        (request, result)
    }

    #[test]
    fn cost_rounds_up_and_saturates() {
        assert_eq!(cost(0, 7), 0);
        assert_eq!(cost(1, 1), 1);
        assert_eq!(cost(1_000_000, 1), 1);
        assert_eq!(cost(1_000_001, 1), 2);
        assert_eq!(cost(2_500_000, 3), 8);
        assert_eq!(cost(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(royalty_of(1000, 1000), 100);
        assert_eq!(royalty_of(999, 1000), 99);
        assert_eq!(royalty_of(u64::MAX, 10_000), u64::MAX);
    }

    #[test]
    fn a_receipt_verifies_and_costs_what_its_signatures_say() {
        let (request, result) = pair(2_500_000, 3);
        let receipt = Receipt::of(&request, &result);
        let back = Receipt::from_bytes(&receipt.to_bytes()).expect("decode");
        let v = back.verify().expect("verify");
        assert_eq!(v.cost, 8);
        assert_eq!(v.caller, request.signer());
        assert_eq!(v.provider, result.signer());
        assert_eq!(v.id, BlobHash::of(&result.to_bytes()));
        assert_eq!(back.verify_trusted().expect("trusted"), v);
    }

    #[test]
    fn a_receipt_whose_halves_disagree_or_overcharge_is_refused() {
        let (request, result) = pair(2_000_000_000, 3);
        assert!(matches!(
            Receipt::of(&request, &result).verify(),
            Err(ReceiptError::Mismatch(_))
        ));
        let (request, result) = pair(1, 6);
        assert!(Receipt::of(&request, &result).verify().is_err());
        // A result for another request.
        let (request, _) = pair(1, 1);
        let (_, other) = {
            let caller = SecretKey::from_seed(&[4; 32]);
            let provider = SecretKey::from_seed(&[2; 32]);
            let r2 = caller.sign(InferRequest {
                nonce: [9; 16],
                ..request.body().clone()
            });
            let res = provider.sign(InferResult {
                request: BlobHash::of(&r2.to_bytes()),
                model: r2.body().model,
                output_hash: BlobHash::of(b"out"),
                fuel: 1,
                price_per_mfuel: 1,
                backend: "wasm".into(),
            });
            (r2, res)
        };
        assert!(Receipt::of(&request, &other).verify().is_err());
        // The request's envelope presented as the result (relabelled): a domain error.
        let relabelled = Receipt {
            request: request.to_bytes(),
            result: request.to_bytes(),
        };
        assert!(matches!(
            relabelled.verify(),
            Err(ReceiptError::Decode(DecodeError::WrongDomain { .. }))
        ));
    }

    #[test]
    fn terms_and_royalties_are_checked() {
        let terms = CreditTerms::default();
        assert_eq!(CreditTerms::from_cbor(terms.to_cbor()), Ok(terms));
        let bad = CreditTerms {
            disconnect_threshold: 1,
            ..terms
        };
        assert!(CreditTerms::from_cbor(bad.to_cbor()).is_err());
        let payee = SecretKey::from_seed(&[5; 32]).node_id();
        let r = Royalty { payee, bps: 1000 };
        assert_eq!(Royalty::from_cbor(r.to_cbor()), Ok(r));
        for bps in [0, 10_001] {
            let bad = Royalty { payee, bps };
            assert!(Royalty::from_cbor(bad.to_cbor()).is_err(), "{bps}");
        }
    }

    proptest! {
        #[test]
        fn cheques_round_trip(epoch in any::<u64>(), seq in 1u64.., calls in any::<u64>(), royalties in any::<u64>(), with_receipt in any::<bool>(), issued_ms in any::<u64>()) {
            let key = SecretKey::from_seed(&[7; 32]);
            let cheque = Cheque {
                payee: SecretKey::from_seed(&[8; 32]).node_id(),
                epoch, seq, calls, royalties,
                receipt: with_receipt.then(|| BlobHash::of(b"r")),
                issued_ms,
            };
            let signed = key.sign(cheque.clone());
            let back = Signed::<Cheque>::from_bytes(&signed.to_bytes()).expect("cheque");
            prop_assert_eq!(back.body(), &cheque);
        }

        #[test]
        fn credit_frames_round_trip(cheque in prop::option::of(prop::collection::vec(any::<u8>(), 0..700)), from in prop::option::of(any::<u64>()), served in any::<u64>(), receipts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..4)) {
                        let request = CreditsRequest { cheque: cheque.clone(), receipts_from: from, royalties_from: from.map(|f| f / 2) };
            prop_assert_eq!(CreditsRequest::from_bytes(&request.to_bytes()), Ok(request));
                        let answer = CreditsAnswer { refused: Some("no".into()), cheque: cheque.clone(), held: cheque, served_calls: served, receipts: receipts.clone(), royalty_calls: served / 3, royalty_receipts: receipts };
            prop_assert_eq!(CreditsAnswer::from_bytes(&answer.to_bytes()), Ok(answer));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = CreditsRequest::from_bytes(&bytes);
            let _ = CreditsAnswer::from_bytes(&bytes);
            let _ = Signed::<Cheque>::from_bytes(&bytes);
            if let Ok(r) = Receipt::from_bytes(&bytes) {
                let _ = r.verify();
            }
        }
    }
}
