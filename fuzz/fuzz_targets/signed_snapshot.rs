//! Fuzz the signed-snapshot decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Object, Signed, Snapshot};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Signed::<Snapshot>::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
    }
    if let Ok(s) = Snapshot::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
    }
});
