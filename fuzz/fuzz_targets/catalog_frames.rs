//! Fuzz the catalogue sync's frames (`/moxnet/catalog/1`): the request and the response of up
//! to 16 MiB of signed manifests, each of which must verify. Whatever decodes re-encodes to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::Object;
use protocol::wire::{CatalogRequest, CatalogResponse};

fn round_trip<T: Object>(data: &[u8]) {
    if let Ok(v) = T::from_bytes(data) {
        assert_eq!(v.to_bytes(), data, "{} is not canonical", T::WHAT);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<CatalogRequest>(data);
    round_trip::<CatalogResponse>(data);
});
