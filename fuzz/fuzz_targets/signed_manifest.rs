//! Fuzz the signed-manifest decoder (envelope, signature check, manifest body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Manifest, Object, Signed};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Signed::<Manifest>::from_bytes(data) {
        assert_eq!(m.to_bytes(), data);
    }
    if let Ok(m) = Manifest::from_bytes(data) {
        assert_eq!(m.to_bytes(), data);
    }
});
