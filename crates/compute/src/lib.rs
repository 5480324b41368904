//! The I/O-free core of moxnet's compute sharing: which provider a call goes to, and what a
//! provider and a caller check before they trust each other's messages.
//!
//! It does no I/O and reads no clock: the time is passed in (`now_ms`, milliseconds since the
//! Unix epoch) and peers are named by their [`NodeId`](protocol::NodeId). The `node` binary
//! drives it with real messages from the network, real calls in the sandbox and the real clock;
//! the crate depends on `protocol` alone, so it builds and tests in seconds.
//!
//! # Example
//!
//! One call, from the offer a caller hears to the verified outputs it hands on:
//!
//! ```
//! use std::time::Duration;
//!
//! use compute::{CallerSlots, Nonces, Offers, Outcome, ServeTerms, check_call, check_reply};
//! use protocol::compute::{ComputeOffer, InferCall, InferReply, InferRequest, InferStatus, Outputs};
//! use protocol::{BlobHash, ModelId, Object, SecretKey};
//!
//! let now_ms = 1_700_000_000_000;
//! let model = ModelId(BlobHash::of(b"a model"));
//! let caller = SecretKey::from_seed(&[1; 32]);
//! let provider = SecretKey::from_seed(&[2; 32]);
//!
//! // The caller heard the provider's signed offer on gossip; it ranks providers for the model.
//! let mut offers = Offers::default();
//! offers.insert(
//!     provider.sign(ComputeOffer {
//!         issued_ms: now_ms,
//!         expires_ms: now_ms + 60_000,
//!         max_concurrent: 4,
//!         price_per_mfuel: 2,
//!         models: vec![model],
//!         ..ComputeOffer::default()
//!     }),
//!     now_ms,
//! );
//! let best = offers.candidates(model, 10, now_ms)[0].clone();
//! assert_eq!(best.node, provider.node_id());
//!
//! // It signs a request addressed to that provider, capped at the offered price.
//! let input = br#"{"inputs": []}"#.to_vec();
//! let request = caller.sign(InferRequest {
//!     model,
//!     input_hash: BlobHash::of(&input),
//!     max_fuel: 1_000_000,
//!     max_price_per_mfuel: best.price_per_mfuel.unwrap_or(10),
//!     nonce: [7; 16],
//!     issued_ms: now_ms,
//!     provider: best.node,
//! });
//! let call = InferCall { request: request.to_bytes(), input, cheque: None }.to_bytes();
//! offers.started(&best.node);
//!
//! // The provider checks the call (sent by the caller's peer), its nonce, and the caller's slots.
//! let terms = ServeTerms { provider: provider.node_id(), serve: true, price_per_mfuel: 2 };
//! let mut nonces = Nonces::default();
//! let slots = CallerSlots::new(4);
//! let checked = check_call(&call, Some(caller.node_id()), &terms)?;
//! let asked = checked.request.body();
//! nonces.accept(checked.caller(), asked.nonce, asked.issued_ms, now_ms)?;
//! let _slot = slots.take(checked.caller())?;
//! // ... it runs the model in its sandbox (I/O), then signs the result.
//! let output = Outputs::default().to_bytes();
//! let result = provider.sign(checked.result(&output, 1234, terms.price_per_mfuel, "wasm".into()));
//! let reply = InferReply {
//!     status: InferStatus::Ok,
//!     result: Some(result.to_bytes()),
//!     output: Some(output),
//!     message: None,
//!     cheque: None,
//! }
//! .to_bytes();
//!
//! // A replay of the same request is refused.
//! assert!(nonces.accept(checked.caller(), asked.nonce, asked.issued_ms, now_ms).is_err());
//!
//! // The caller accepts the outputs only once the signed result checks out.
//! let verified = check_reply(&reply, &request)?;
//! offers.finished(&best.node, Outcome::Ok(Duration::from_millis(40)), now_ms);
//! assert_eq!(verified.result.body().fuel, 1234);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Concepts
//!
//! - **Offers** ([`Offers`], in `offers.rs`): the signed [`ComputeOffer`](protocol::compute::ComputeOffer)s
//!   a caller heard, one per provider (the newest), with what it measured of each ([`Stats`]:
//!   latency, calls in flight, failures). [`Offers::candidates`] ranks the providers of a model
//!   by [`score`]; [`Offers::finished`] records each call's [`Outcome`]: a provider that lied is
//!   distrusted for good, one that keeps failing is dropped.
//! - **Request checks** ([`check_call`], in `request.rs`): what a provider checks before it runs
//!   anything; a refusal is a [`RequestError`] that carries its wire status.
//! - **The request window** ([`Nonces`], in `nonces.rs`): a request is run only within
//!   [`REQUEST_WINDOW_MS`] of the provider's clock, and only once.
//! - **Caller slots** ([`CallerSlots`], in `slots.rs`): each caller has at most a fixed number of
//!   calls running on a provider.
//! - **Reply checks** ([`check_reply`], in `reply.rs`): what a caller checks before it trusts
//!   outputs; a [`ReplyError`] says whether to try another provider, wait, or stop.
//! - **Agreement** ([`tolerance::agree`]): when two providers' outputs agree, bit for bit for
//!   pure wasm, within a documented tolerance when a native engine ran either.

mod nonces;
mod offers;
mod reply;
mod request;
mod slots;
pub mod tolerance;

pub use nonces::{Nonces, REQUEST_WINDOW_MS};
pub use offers::{
    Candidate, FAILURE_MEMORY_MS, MAX_FAILURES, MAX_OFFER_SKEW_MS, MAX_OFFER_TTL_MS, MAX_OFFERS,
    Needs, OfferView, Offers, Outcome, Stats, score,
};
pub use reply::{
    Misbehavior, ReplyError, VerifiedGeneration, VerifiedReply, check_generation, check_reply,
};
pub use request::{CheckedCall, RequestError, ServeTerms, check_call};
pub use slots::{CallerBusy, CallerSlot, CallerSlots};
