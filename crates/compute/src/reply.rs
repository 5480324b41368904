//! The caller's checks of a provider's reply: [`check_reply`] decodes the [`InferReply`], turns
//! a refusal into what to do next, and otherwise accepts the outputs only when the result is
//! signed by the provider the request was addressed to, answers that request (by the hash of its
//! envelope) for that model, the outputs hash to the signed output hash, and the fuel and price
//! claimed are within the request's limits.
//!
//! **Invariant:** a remote answer reaches the user only through [`VerifiedReply`]; a provider
//! whose reply fails a check is reported as [`ReplyError::Misbehaved`] and never trusted again.

use protocol::compute::{InferReply, InferRequest, InferResult, InferStatus, Outputs};
use protocol::generate::GenerateOutput;
use protocol::{BlobHash, DecodeError, NodeId, Object, Signed};

use crate::Outcome;

/// How a provider broke the protocol or lied in a reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Misbehavior {
    /// The reply does not decode.
    #[error("reply: {0}")]
    MalformedReply(DecodeError),
    /// A reply with status ok but no signed result (cannot happen with a decoded reply; kept so
    /// the check never panics).
    #[error("an ok reply without a result")]
    MissingResult,
    /// The signed result does not decode or its signature does not verify.
    #[error("signed result: {0}")]
    InvalidResult(DecodeError),
    /// The result is signed by another key than the provider's.
    #[error("the result is signed by {signer}, not by the provider")]
    WrongSigner {
        /// Who signed it.
        signer: NodeId,
    },
    /// The result names another request or another model.
    #[error("the signed result answers another request")]
    OtherRequest,
    /// The outputs sent are not those the result signed.
    #[error("the outputs do not match the signed output hash")]
    OutputMismatch,
    /// The result claims more fuel or a higher price than the request allowed.
    #[error("the result claims fuel {fuel} at price {price}, above the request's limits")]
    OverLimits {
        /// The fuel claimed.
        fuel: u64,
        /// The price per million fuel units claimed.
        price: u64,
    },
    /// The outputs, though they match the signed hash, do not decode.
    #[error("outputs: {0}")]
    MalformedOutputs(DecodeError),
    /// A generation's streamed text is not the text its signed output holds.
    #[error("the text streamed is not the text of the signed output")]
    StreamMismatch,
    /// A generation's signed fuel is not its prompt and generated tokens together.
    #[error(
        "the result states {fuel} tokens, the output {prompt} prompt and {generated} generated"
    )]
    TokensMismatch {
        /// The fuel the result states.
        fuel: u64,
        /// The output's prompt tokens.
        prompt: u64,
        /// The output's generated tokens.
        generated: u64,
    },
}

/// Why a reply brings no answer. Each variant says what the caller does next; the message is
/// the provider's own for refusals, the broken check for [`ReplyError::Misbehaved`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    /// The provider is at capacity: try another provider, or this one again later.
    #[error("{0}")]
    Busy(String),
    /// The provider cannot run the call now (it lacks the model, refused the request, or failed
    /// on its side): try another provider.
    #[error("{0}")]
    Unavailable(String),
    /// The inputs do not fit the model: the call fails on every provider, stop.
    #[error("{0}")]
    BadRequest(String),
    /// The model failed on these inputs (out of fuel, a trap): deterministic, so it fails on
    /// every provider, stop.
    #[error("{0}")]
    Failed(String),
    /// The provider wants to be paid before it runs more calls: pay (a cheque with the next
    /// call) and try again, or try another provider. `cheque` is the newest cheque from this
    /// caller the provider holds, if any.
    #[error("{message}")]
    PaymentRequired {
        /// The provider's message (how much is owed).
        message: String,
        /// A `Signed<Cheque>` envelope, unverified.
        cheque: Option<Vec<u8>>,
    },
    /// The provider broke the protocol or lied: distrust it for good and try another.
    #[error(transparent)]
    Misbehaved(#[from] Misbehavior),
}

impl ReplyError {
    /// What the reply means for the provider's stats ([`Offers::finished`](crate::Offers::finished)).
    pub fn outcome(&self) -> Outcome {
        match self {
            ReplyError::Busy(_) | ReplyError::PaymentRequired { .. } => Outcome::Busy,
            ReplyError::Unavailable(_) => Outcome::Unavailable,
            ReplyError::Misbehaved(_) => Outcome::Misbehaved,
            ReplyError::BadRequest(_) | ReplyError::Failed(_) => Outcome::Failed,
        }
    }

    /// Whether the same call would fail on every provider, so trying another is pointless.
    pub fn is_final(&self) -> bool {
        matches!(self, ReplyError::BadRequest(_) | ReplyError::Failed(_))
    }
}

/// A reply that passed [`check_reply`]: the outputs are the ones the provider signed for the
/// request.
#[derive(Debug, Clone)]
pub struct VerifiedReply {
    /// The provider's signed result (with a later request, a receipt).
    pub result: Signed<InferResult>,
    /// The outputs, decoded.
    pub outputs: Outputs,
}

/// Checks `reply` (its bytes) from the provider that `request` (as sent) was addressed to; see
/// the module docs.
pub fn check_reply(
    reply: &[u8],
    request: &Signed<InferRequest>,
) -> Result<VerifiedReply, ReplyError> {
    let reply = InferReply::from_bytes(reply).map_err(Misbehavior::MalformedReply)?;
    let (result, output) = signed_output(reply, request)?;
    let outputs = Outputs::from_bytes(&output).map_err(Misbehavior::MalformedOutputs)?;
    Ok(VerifiedReply { result, outputs })
}

/// A generation that passed [`check_generation`]: the text streamed is the text the provider
/// signed for the request.
#[derive(Debug, Clone)]
pub struct VerifiedGeneration {
    /// The provider's signed result (with a later request, a receipt).
    pub result: Signed<InferResult>,
    /// The output it signed.
    pub output: GenerateOutput,
}

/// Checks the reply that ended a generation stream from the provider that `request` (as sent)
/// was addressed to, given the text its frames streamed: as [`check_reply`], and the output is a
/// [`GenerateOutput`] whose text is exactly `streamed` and whose token counts add up to the
/// fuel the result states.
pub fn check_generation(
    reply: InferReply,
    request: &Signed<InferRequest>,
    streamed: &str,
) -> Result<VerifiedGeneration, ReplyError> {
    let (result, output) = signed_output(reply, request)?;
    let output = GenerateOutput::from_bytes(&output).map_err(Misbehavior::MalformedOutputs)?;
    if output.text != streamed {
        return Err(Misbehavior::StreamMismatch.into());
    }
    if output.tokens() != Some(result.body().fuel) {
        return Err(Misbehavior::TokensMismatch {
            fuel: result.body().fuel,
            prompt: output.prompt_tokens,
            generated: output.generated_tokens,
        }
        .into());
    }
    Ok(VerifiedGeneration { result, output })
}

/// The checks every reply passes: the status, then the signed result against the request and
/// the output's hash.
fn signed_output(
    reply: InferReply,
    request: &Signed<InferRequest>,
) -> Result<(Signed<InferResult>, Vec<u8>), ReplyError> {
    let message = reply.message.unwrap_or_default();
    match reply.status {
        InferStatus::Ok => {}
        InferStatus::Busy => return Err(ReplyError::Busy(message)),
        InferStatus::NotFound | InferStatus::Internal | InferStatus::Refused => {
            return Err(ReplyError::Unavailable(message));
        }
        InferStatus::BadRequest => return Err(ReplyError::BadRequest(message)),
        InferStatus::Failed => return Err(ReplyError::Failed(message)),
        InferStatus::PaymentRequired => {
            return Err(ReplyError::PaymentRequired {
                message,
                cheque: reply.cheque,
            });
        }
    }
    let (Some(result), Some(output)) = (reply.result, reply.output) else {
        return Err(Misbehavior::MissingResult.into());
    };
    let result = Signed::<InferResult>::from_bytes(&result).map_err(Misbehavior::InvalidResult)?;
    let asked = request.body();
    let r = result.body();
    if result.signer() != asked.provider {
        return Err(Misbehavior::WrongSigner {
            signer: result.signer(),
        }
        .into());
    }
    if r.request != BlobHash::of(&request.to_bytes()) || r.model != asked.model {
        return Err(Misbehavior::OtherRequest.into());
    }
    if r.output_hash != BlobHash::of(&output) {
        return Err(Misbehavior::OutputMismatch.into());
    }
    if r.fuel > asked.max_fuel || r.price_per_mfuel > asked.max_price_per_mfuel {
        return Err(Misbehavior::OverLimits {
            fuel: r.fuel,
            price: r.price_per_mfuel,
        }
        .into());
    }
    Ok((result, output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::compute::WireTensor;
    use protocol::{ModelId, SecretKey};

    fn provider() -> SecretKey {
        SecretKey::from_seed(&[2; 32])
    }

    fn request() -> Signed<InferRequest> {
        SecretKey::from_seed(&[1; 32]).sign(InferRequest {
            model: ModelId(BlobHash::of(b"m")),
            input_hash: BlobHash::of(b"{}"),
            max_fuel: 1000,
            max_price_per_mfuel: 5,
            nonce: [3; 16],
            issued_ms: 1,
            provider: provider().node_id(),
        })
    }

    fn outputs() -> Vec<u8> {
        Outputs {
            tensors: vec![WireTensor {
                name: "y".into(),
                dtype: "FP32".into(),
                shape: vec![1],
                data: 1.5f32.to_le_bytes().to_vec(),
            }],
        }
        .to_bytes()
    }

    fn honest(request: &Signed<InferRequest>, output: &[u8]) -> InferResult {
        InferResult {
            request: BlobHash::of(&request.to_bytes()),
            model: request.body().model,
            output_hash: BlobHash::of(output),
            fuel: 1000,
            price_per_mfuel: 5,
            backend: "wasm".into(),
        }
    }

    fn ok(result: &Signed<InferResult>, output: Vec<u8>) -> Vec<u8> {
        InferReply {
            status: InferStatus::Ok,
            result: Some(result.to_bytes()),
            output: Some(output),
            message: None,
            cheque: None,
        }
        .to_bytes()
    }

    #[test]
    fn an_honest_reply_is_verified() {
        let request = request();
        let output = outputs();
        let result = provider().sign(honest(&request, &output));
        let verified = check_reply(&ok(&result, output.clone()), &request).expect("honest");
        assert_eq!(verified.result, result);
        assert_eq!(verified.outputs.to_bytes(), output);
    }

    #[test]
    fn refusals_say_what_to_do_with_the_providers_message() {
        let request = request();
        for (status, outcome, is_final) in [
            (InferStatus::Busy, Outcome::Busy, false),
            (InferStatus::NotFound, Outcome::Unavailable, false),
            (InferStatus::Internal, Outcome::Unavailable, false),
            (InferStatus::Refused, Outcome::Unavailable, false),
            (InferStatus::BadRequest, Outcome::Failed, true),
            (InferStatus::Failed, Outcome::Failed, true),
        ] {
            let reply = InferReply::error(status, "the provider's words").to_bytes();
            let e = check_reply(&reply, &request).expect_err("a refusal");
            assert_eq!(e.to_string(), "the provider's words");
            assert_eq!(
                (e.outcome(), e.is_final()),
                (outcome, is_final),
                "{status:?}"
            );
        }
    }

    #[test]
    fn every_lie_is_misbehaviour() {
        let request = request();
        let output = outputs();
        let lie = |reply: Vec<u8>, says: &str| {
            let e = check_reply(&reply, &request).expect_err(says);
            assert!(matches!(e, ReplyError::Misbehaved(_)), "{e}");
            assert_eq!(e.outcome(), Outcome::Misbehaved);
            assert!(!e.is_final());
            assert!(e.to_string().contains(says), "{e}");
        };
        lie(b"junk".to_vec(), "reply: ");
        // Signed by someone else.
        let stranger = SecretKey::from_seed(&[9; 32]);
        lie(
            ok(&stranger.sign(honest(&request, &output)), output.clone()),
            "not by the provider",
        );
        // For another request, or another model.
        let other = InferResult {
            request: BlobHash::of(b"another"),
            ..honest(&request, &output)
        };
        lie(
            ok(&provider().sign(other), output.clone()),
            "another request",
        );
        let other = InferResult {
            model: ModelId(BlobHash::of(b"another")),
            ..honest(&request, &output)
        };
        lie(
            ok(&provider().sign(other), output.clone()),
            "another request",
        );
        // Altered outputs under the true hash (the liar's `bad-hash`).
        let mut altered = output.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        lie(
            ok(&provider().sign(honest(&request, &output)), altered),
            "signed output hash",
        );
        // More fuel or a higher price than allowed.
        for (fuel, price) in [(1001, 5), (1000, 6)] {
            let dear = InferResult {
                fuel,
                price_per_mfuel: price,
                ..honest(&request, &output)
            };
            lie(
                ok(&provider().sign(dear), output.clone()),
                &format!(
                    "the result claims fuel {fuel} at price {price}, above the request's limits"
                ),
            );
        }
        // Consistently signed outputs that are not outputs.
        let junk = b"not outputs".to_vec();
        lie(
            ok(&provider().sign(honest(&request, &junk)), junk),
            "outputs: ",
        );
    }

    fn generation(text: &str, prompt: u64, generated: u64) -> Vec<u8> {
        GenerateOutput {
            text: text.into(),
            finish: protocol::generate::GenerateFinish::Stop,
            prompt_tokens: prompt,
            generated_tokens: generated,
        }
        .to_bytes()
    }

    fn generated_reply(output: &[u8], fuel: u64) -> InferReply {
        let result = provider().sign(InferResult {
            fuel,
            ..honest(&request(), output)
        });
        InferReply::from_bytes(&ok(&result, output.to_vec())).expect("reply")
    }

    #[test]
    fn a_generation_is_verified_against_the_text_streamed_and_its_token_counts() {
        let request = request();
        let output = generation("Hello there", 12, 3);
        let verified =
            check_generation(generated_reply(&output, 15), &request, "Hello there").expect("ok");
        assert_eq!(verified.output.generated_tokens, 3);
        assert_eq!(verified.result.body().fuel, 15);
        // Streamed text other than the signed text.
        let e = check_generation(generated_reply(&output, 15), &request, "Hello")
            .expect_err("stream mismatch");
        assert!(matches!(
            e,
            ReplyError::Misbehaved(Misbehavior::StreamMismatch)
        ));
        // Fuel other than the tokens.
        let e = check_generation(generated_reply(&output, 16), &request, "Hello there")
            .expect_err("tokens mismatch");
        assert!(matches!(
            e,
            ReplyError::Misbehaved(Misbehavior::TokensMismatch { fuel: 16, .. })
        ));
        // More tokens than the request pays for.
        let big = generation("x", 999, 2);
        let e =
            check_generation(generated_reply(&big, 1001), &request, "x").expect_err("over limits");
        assert!(matches!(
            e,
            ReplyError::Misbehaved(Misbehavior::OverLimits { .. })
        ));
        // Inference outputs are not a generation.
        let tensors = outputs();
        let e = check_generation(generated_reply(&tensors, 1000), &request, "")
            .expect_err("not a generation");
        assert!(matches!(
            e,
            ReplyError::Misbehaved(Misbehavior::MalformedOutputs(_))
        ));
    }
}
