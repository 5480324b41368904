//! What a hostile frame makes the decoder allocate: bounded by the frame's size, not by the
//! counts written in it. The whole test binary runs under a capped allocator, so a decoder that
//! reserves what a count claims aborts the process (and fails the test) instead of passing.

use std::alloc::System;

use cap::Cap;
use protocol::wire::CatalogResponse;
use protocol::{DecodeError, Object};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// The most a decode may use beyond what was allocated before it.
const HEADROOM: usize = 96 << 20;

fn capped<T>(f: impl FnOnce() -> T) -> T {
    let before = ALLOCATOR.allocated();
    ALLOCATOR
        .set_limit(before + HEADROOM)
        .expect("limit above what is allocated");
    let out = f();
    ALLOCATOR.set_limit(usize::MAX).expect("lift the limit");
    out
}

/// An array head claiming `n` items (`0x9a` + 4-byte length).
fn array_head(n: u32) -> Vec<u8> {
    let mut head = vec![0x9a];
    head.extend_from_slice(&n.to_be_bytes());
    head
}

#[test]
fn counts_claimed_by_a_frame_are_not_reserved() {
    // 16 nested arrays, each claiming as many items as bytes remain, then zeros: reserving
    // what each head claims would take 16 x 4 Mi x 32 bytes = 2 GiB.
    let len = 4 << 20;
    let mut frame = Vec::with_capacity(len);
    while frame.len() + 5 < 16 * 5 {
        let remaining = (len - frame.len() - 5) as u32;
        frame.extend(array_head(remaining));
    }
    frame.resize(len, 0);
    let result = capped(|| CatalogResponse::from_bytes(&frame));
    assert!(result.is_err());
}

#[test]
fn a_frame_of_tiny_items_is_refused_before_it_becomes_huge() {
    // About 5 Mi one-byte integers in one array: as decoded values, at least 160 MiB.
    let len = protocol::wire::MAX_CATALOG_RESPONSE_BYTES;
    let mut frame = array_head((len - 5) as u32);
    frame.resize(len, 0);
    let result = capped(|| CatalogResponse::from_bytes(&frame));
    assert!(
        matches!(result, Err(DecodeError::TooManyItems { .. })),
        "{result:?}"
    );
}
