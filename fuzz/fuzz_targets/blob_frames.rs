//! Fuzz the blob protocol's frames (`/moxnet/blob/1`): the request a provider reads and the
//! response header a requester reads. Whatever decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::Object;
use protocol::wire::{BlobRequest, BlobResponseHeader};

fn round_trip<T: Object>(data: &[u8]) {
    if let Ok(v) = T::from_bytes(data) {
        assert_eq!(v.to_bytes(), data, "{} is not canonical", T::WHAT);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<BlobRequest>(data);
    round_trip::<BlobResponseHeader>(data);
});
