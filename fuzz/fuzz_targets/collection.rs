//! Fuzz the folder-listing decoder; accepted paths must be safe to export.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Collection, Object};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Collection::from_bytes(data) {
        for e in &c.entries {
            assert!(protocol::validate_path(&e.path).is_ok());
        }
    }
});
