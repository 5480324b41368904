//! Fuzz compute sharing's frames (`/moxnet/infer/1` and offers on gossip): the call a provider
//! reads, the reply a caller reads, the outputs inside it, and the signed request, result and
//! offer envelopes, and the credit messages (cheques, receipts); generation's frames
//! (`/moxnet/generate/1`: input, streamed frames, output). Whatever decodes re-encodes to the
//! same bytes, and a provider's checks (`compute::check_call`) and a caller's
//! (`compute::check_reply`, `compute::check_generation`) never panic on it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::compute::{ComputeOffer, InferCall, InferReply, InferRequest, InferResult, Outputs};
use protocol::credits::{Cheque, Receipt};
use protocol::generate::{GenerateFrame, GenerateInput, GenerateOutput};
use std::sync::OnceLock;

use protocol::{BlobHash, ModelId, NodeId, Object, SecretKey, Signable, Signed};

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

/// The provider's terms, the caller's node id and a request from it (signed once: signing per
/// input would be most of the target's time).
fn keys() -> &'static (compute::ServeTerms, NodeId, Signed<InferRequest>) {
    static KEYS: OnceLock<(compute::ServeTerms, NodeId, Signed<InferRequest>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let provider = SecretKey::from_seed(&[1; 32]);
        let caller = SecretKey::from_seed(&[2; 32]);
        let terms = compute::ServeTerms {
            provider: provider.node_id(),
            serve: true,
            price_per_mfuel: 1,
        };
        let request = caller.sign(InferRequest {
            model: ModelId(BlobHash::of(b"model")),
            input_hash: BlobHash::of(b"{}"),
            max_fuel: 1_000_000,
            max_price_per_mfuel: 10,
            nonce: [7; 16],
            issued_ms: 1,
            provider: provider.node_id(),
        });
        (terms, caller.node_id(), request)
    })
}

fuzz_target!(|data: &[u8]| {
    round_trip::<InferCall>(data);
    round_trip::<InferReply>(data);
    round_trip::<Outputs>(data);
    signed_round_trip::<InferRequest>(data);
    signed_round_trip::<InferResult>(data);
    signed_round_trip::<ComputeOffer>(data);
    signed_round_trip::<Cheque>(data);
    round_trip::<Receipt>(data);
    round_trip::<GenerateInput>(data);
    round_trip::<GenerateFrame>(data);
    round_trip::<GenerateOutput>(data);
    if let Ok(receipt) = Receipt::from_bytes(data) {
        let _ = receipt.verify();
    }

    let (terms, caller, request) = keys();
    let _ = compute::check_call(data, Some(*caller), terms);
    let _ = compute::check_reply(data, request);
    if let Ok(GenerateFrame::End(reply, _)) = GenerateFrame::from_bytes(data) {
        let _ = compute::check_generation(reply, request, "streamed");
    }
});
