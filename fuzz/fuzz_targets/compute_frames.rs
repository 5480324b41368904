//! Fuzz compute sharing's frames (`/moxnet/infer/1` and offers on gossip): the call a provider
//! reads, the reply a caller reads, the outputs inside it, and the signed request, result and
//! offer envelopes. Whatever decodes re-encodes to the same bytes, and a provider's checks
//! (`compute::check_call`) and a caller's (`compute::check_reply`) never panic on it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::compute::{ComputeOffer, InferCall, InferReply, InferRequest, InferResult, Outputs};
use protocol::{BlobHash, ModelId, Object, SecretKey, Signable, Signed};

fn round_trip<T: Object>(data: &[u8]) {
    if let Ok(v) = T::from_bytes(data) {
        assert_eq!(v.to_bytes(), data, "{} is not canonical", T::WHAT);
    }
}

fn signed_round_trip<T: Signable>(data: &[u8]) {
    if let Ok(v) = Signed::<T>::from_bytes(data) {
        assert_eq!(v.to_bytes(), data, "a signed {} is not canonical", T::WHAT);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<InferCall>(data);
    round_trip::<InferReply>(data);
    round_trip::<Outputs>(data);
    signed_round_trip::<InferRequest>(data);
    signed_round_trip::<InferResult>(data);
    signed_round_trip::<ComputeOffer>(data);

    let provider = SecretKey::from_seed(&[1; 32]);
    let caller = SecretKey::from_seed(&[2; 32]);
    let terms = compute::ServeTerms {
        provider: provider.node_id(),
        serve: true,
        price_per_mfuel: 1,
    };
    let _ = compute::check_call(data, Some(caller.node_id()), &terms);
    let request = caller.sign(InferRequest {
        model: ModelId(BlobHash::of(b"model")),
        input_hash: BlobHash::of(b"{}"),
        max_fuel: 1_000_000,
        max_price_per_mfuel: 10,
        nonce: [7; 16],
        issued_ms: 1,
        provider: provider.node_id(),
    });
    let _ = compute::check_reply(data, &request);
});
