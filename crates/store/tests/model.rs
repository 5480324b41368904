//! The sled-backed store against a `BTreeMap` model: random sequences of add, get, pin, unpin
//! (by the user and by the call cache), gc and restart (drop and reopen) must agree at every
//! step.

use std::collections::BTreeMap;

use proptest::prelude::*;
use protocol::BlobHash;
use store::{Holder, Store, StoreError};

#[derive(Debug, Clone)]
enum Op {
    /// Add content number `n` (sizes span one and several chunk groups), pinning it or not.
    Add {
        n: u8,
        pin: bool,
    },
    Get {
        n: u8,
    },
    Pin {
        n: u8,
        cache: bool,
    },
    Unpin {
        n: u8,
        cache: bool,
    },
    Gc,
    Restart,
}

fn content(n: u8) -> Vec<u8> {
    let len = match n % 4 {
        0 => 0,
        1 => 100,
        2 => 16 * 1024,
        _ => 40_000 + n as usize,
    };
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(n))
        .collect()
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0u8..8;
    prop_oneof![
        4 => (n.clone(), any::<bool>()).prop_map(|(n, pin)| Op::Add { n, pin }),
        3 => n.clone().prop_map(|n| Op::Get { n }),
        2 => (n.clone(), any::<bool>()).prop_map(|(n, cache)| Op::Pin { n, cache }),
        2 => (n, any::<bool>()).prop_map(|(n, cache)| Op::Unpin { n, cache }),
        1 => Just(Op::Gc),
        1 => Just(Op::Restart),
    ]
}

/// The model: what is stored, and who pinned it (bit 0: the user, bit 1: the call cache).
#[derive(Default)]
struct Model {
    blobs: BTreeMap<BlobHash, (Vec<u8>, u8)>,
}

fn holder(cache: bool) -> (Holder, u8) {
    if cache {
        (Holder::CallCache, 2)
    } else {
        (Holder::User, 1)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Add { n, pin } => {
                    let bytes = content(n);
                    let imported = store.import_bytes(&bytes, "raw", Vec::new()).expect("import");
                    prop_assert_eq!(imported.hash, BlobHash::of(&bytes));
                    prop_assert_eq!(imported.new, !model.blobs.contains_key(&imported.hash));
                    let entry = model.blobs.entry(imported.hash).or_insert((bytes, 0));
                    if pin {
                        store.pin(imported.hash).expect("pin");
                        entry.1 |= 1;
                    }
                }
                Op::Get { n } => {
                    let hash = BlobHash::of(&content(n));
                    let mut out = Vec::new();
                    match (store.read_to(hash, &mut out), model.blobs.get(&hash)) {
                        (Ok(_), Some((bytes, _))) => prop_assert_eq!(&out, bytes),
                        (Err(StoreError::NotFound { .. }), None) => {}
                        (got, want) => prop_assert!(false, "get {}: store {:?}, model has it: {}", n, got, want.is_some()),
                    }
                }
                Op::Pin { n, cache } => {
                    let hash = BlobHash::of(&content(n));
                    let (who, bit) = holder(cache);
                    match (store.pin_for(hash, who), model.blobs.get_mut(&hash)) {
                        (Ok(()), Some(entry)) => entry.1 |= bit,
                        (Err(StoreError::NotFound { .. }), None) => {}
                        (got, _) => prop_assert!(false, "pin {}: {:?}", n, got),
                    }
                }
                Op::Unpin { n, cache } => {
                    let hash = BlobHash::of(&content(n));
                    let (who, bit) = holder(cache);
                    let was = store.unpin_for(hash, who).expect("unpin");
                    let model_was = model.blobs.get(&hash).is_some_and(|e| e.1 & bit != 0);
                    prop_assert_eq!(was, model_was);
                    if let Some(entry) = model.blobs.get_mut(&hash) {
                        entry.1 &= !bit;
                    }
                }
                Op::Gc => {
                    let report = store.gc().expect("gc");
                    let before = model.blobs.len();
                    model.blobs.retain(|_, (_, holders)| *holders != 0);
                    prop_assert_eq!(report.blobs_removed as usize, before - model.blobs.len());
                }
                Op::Restart => {
                    drop(store);
                    store = Store::open(dir.path()).expect("reopen");
                }
            }
            let listed: Vec<BlobHash> = store.list().expect("list").into_iter().map(|(h, _)| h).collect();
            let expected: Vec<BlobHash> = model.blobs.keys().copied().collect();
            prop_assert_eq!(listed, expected);
            let pins = store.pins().expect("pins");
            let expected_pins: Vec<BlobHash> = model.blobs.iter().filter(|(_, e)| e.1 != 0).map(|(h, _)| *h).collect();
            prop_assert_eq!(pins, expected_pins);
            let cached = store.pinned_by(Holder::CallCache).expect("pinned by");
            let expected_cached: Vec<BlobHash> = model.blobs.iter().filter(|(_, e)| e.1 & 2 != 0).map(|(h, _)| *h).collect();
            prop_assert_eq!(cached, expected_cached);
            for (h, e) in &model.blobs {
                prop_assert_eq!(store.is_pinned_by(*h, Holder::User).expect("held"), e.1 & 1 != 0);
            }
        }
        prop_assert!(store.verify(None).expect("verify").is_ok());
    }
}
