//! Fuzz the strict deterministic-CBOR decoder: never panic; whatever it accepts re-encodes to
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::cbor::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = Value::decode(data, 1 << 20) {
        assert_eq!(v.encode(), data);
    }
});
