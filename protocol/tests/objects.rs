//! Signed envelopes, manifests and snapshots: round trips, domain separation, tampering, and
//! decoders that never panic on arbitrary bytes.

use std::collections::BTreeMap;

use proptest::prelude::*;
use protocol::{
    BlobHash, Collection, DType, DecodeError, Dim, FileEntry, Interface, Manifest, ModelId, Object,
    Runtime, SecretKey, Signed, Snapshot, TensorSpec,
};

fn sample_manifest() -> Manifest {
    Manifest {
        name: "minilm-l6".into(),
        version: "1.0.0".into(),
        description: "Sentence embeddings".into(),
        license: "Apache-2.0".into(),
        tags: vec!["text".into(), "embeddings".into()],
        authors: vec!["Ada".into()],
        interface: Interface {
            inputs: vec![TensorSpec {
                name: "text".into(),
                dtype: DType::Bytes,
                shape: vec![Dim::Symbolic("batch".into())],
            }],
            outputs: vec![TensorSpec {
                name: "embedding".into(),
                dtype: DType::F32,
                shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(384)],
            }],
        },
        runtime: Runtime {
            kind: "onnx".into(),
            entry: Some("model.onnx".into()),
            guest: None,
            memory_mib: Some(512),
            language_model: None,
        },
        files: vec![
            FileEntry {
                path: "model.onnx".into(),
                hash: BlobHash::of(b"model"),
                size: 5,
            },
            FileEntry {
                path: "vocab/vocab.txt".into(),
                hash: BlobHash::of(b"vocab"),
                size: 5,
            },
        ],
        datasets: vec![],
        parent: Some(ModelId(BlobHash::of(b"base"))),
        snapshots: vec![BlobHash::of(b"snap")],
        royalty: Some(protocol::credits::Royalty {
            payee: protocol::SecretKey::from_seed(&[9; 32]).node_id(),
            bps: 1_000,
        }),
    }
}

fn sample_snapshot() -> Snapshot {
    Snapshot {
        model: "minilm-l6".into(),
        step: 1000,
        time_ms: 1_764_000_000_000,
        metrics: BTreeMap::from([("loss".to_string(), 0.25), ("acc".to_string(), 0.9)]),
        weights: vec![FileEntry {
            path: "model.safetensors".into(),
            hash: BlobHash::of(b"w"),
            size: 1,
        }],
        parent: None,
    }
}

#[test]
fn signed_manifest_round_trips_byte_for_byte() {
    let key = SecretKey::from_seed(&[1; 32]);
    let signed = key.sign(sample_manifest());
    let bytes = signed.to_bytes();
    let back = Signed::<Manifest>::from_bytes(&bytes).expect("decodes");
    assert_eq!(back.body(), &sample_manifest());
    assert_eq!(back.to_bytes(), bytes);
    assert_eq!(back.signer(), key.node_id());
}

/// The envelope is written directly (not through a `Value` map): it must be exactly the
/// deterministic CBOR map of §2.
#[test]
fn the_envelope_is_the_canonical_map() {
    use protocol::cbor::Value;
    let key = SecretKey::from_seed(&[1; 32]);
    let signed = key.sign(sample_manifest());
    let map = Value::Map(vec![
        (Value::text("v"), Value::Uint(1)),
        (
            Value::text("domain"),
            Value::text(protocol::DOMAIN_MANIFEST),
        ),
        (
            Value::text("signer"),
            Value::Bytes(key.node_id().as_bytes().to_vec()),
        ),
        (
            Value::text("body"),
            Value::Bytes(signed.body_bytes().to_vec()),
        ),
        (
            Value::text("sig"),
            Value::Bytes(signed.signature().to_vec()),
        ),
    ]);
    assert_eq!(signed.to_bytes(), map.encode());
}

#[test]
fn a_snapshot_signature_never_verifies_as_a_manifest() {
    let key = SecretKey::from_seed(&[2; 32]);
    let snap = key.sign(sample_snapshot()).to_bytes();
    match Signed::<Manifest>::from_bytes(&snap) {
        Err(DecodeError::WrongDomain { .. }) => {}
        other => panic!("expected WrongDomain, got {other:?}"),
    }
    // Rewriting the domain field does not help: the signature covers the domain tag.
    let forged = String::from_utf8_lossy(&snap)
        .replace("moxnet/v1/snapshot", "moxnet/v1/manifest")
        .into_bytes();
    assert_ne!(forged, snap);
    assert!(Signed::<Manifest>::from_bytes(&forged).is_err());
}

#[test]
fn any_flipped_bit_is_rejected() {
    let key = SecretKey::from_seed(&[3; 32]);
    let bytes = key.sign(sample_manifest()).to_bytes();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[i] ^= bit;
            assert!(
                Signed::<Manifest>::from_bytes(&bad).is_err(),
                "flipping bit {bit:#x} of byte {i} was accepted"
            );
        }
    }
}

#[test]
fn unknown_versions_and_fields_are_rejected() {
    use protocol::cbor::Value;
    let mut v = sample_manifest().to_cbor();
    if let Value::Map(entries) = &mut v {
        for (k, val) in entries.iter_mut() {
            if *k == Value::text("v") {
                *val = Value::Uint(2);
            }
        }
    }
    assert!(matches!(
        Manifest::from_bytes(&v.encode()),
        Err(DecodeError::UnsupportedVersion { found: 2, .. })
    ));
    let mut v = sample_manifest().to_cbor();
    if let Value::Map(entries) = &mut v {
        entries.push((Value::text("zzz"), Value::Null));
    }
    assert!(matches!(
        Manifest::from_bytes(&v.encode()),
        Err(DecodeError::Invalid { .. })
    ));
}

#[test]
fn hostile_paths_are_rejected() {
    for path in ["../etc/passwd", "/abs", "a//b", "a/./b", "a\\b", ""] {
        let c = Collection {
            entries: vec![FileEntry {
                path: path.into(),
                hash: BlobHash::of(b""),
                size: 0,
            }],
        };
        assert!(
            Collection::from_bytes(&c.to_bytes()).is_err(),
            "accepted path {path:?}"
        );
    }
    let both = Collection {
        entries: vec![
            FileEntry {
                path: "a".into(),
                hash: BlobHash::of(b""),
                size: 0,
            },
            FileEntry {
                path: "a/b".into(),
                hash: BlobHash::of(b""),
                size: 0,
            },
        ],
    };
    assert!(Collection::from_bytes(&both.to_bytes()).is_err());
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    let huge = vec![0u8; Signed::<Manifest>::MAX_BYTES + 1];
    assert!(matches!(
        Signed::<Manifest>::from_bytes(&huge),
        Err(DecodeError::TooLarge { .. })
    ));
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Signed::<Manifest>::from_bytes(&bytes);
        let _ = Signed::<Snapshot>::from_bytes(&bytes);
        let _ = Manifest::from_bytes(&bytes);
        let _ = Snapshot::from_bytes(&bytes);
        let _ = Collection::from_bytes(&bytes);
        let _ = protocol::wire::BlobRequest::from_bytes(&bytes);
        let _ = protocol::wire::BlobResponseHeader::from_bytes(&bytes);
        let _ = protocol::wire::CatalogRequest::from_bytes(&bytes);
        let _ = protocol::wire::CatalogResponse::from_bytes(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic(idx in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let key = SecretKey::from_seed(&[4; 32]);
        let mut bytes = key.sign(sample_manifest()).to_bytes();
        let i = idx.index(bytes.len());
        bytes[i] = byte;
        let decoded = Signed::<Manifest>::from_bytes(&bytes);
        if let Ok(d) = &decoded {
            prop_assert_eq!(d.to_bytes(), bytes.clone());
        }
        let n = cut.index(bytes.len());
        prop_assert!(Signed::<Manifest>::from_bytes(&bytes[..n]).is_err());
    }

    #[test]
    fn snapshots_round_trip(step in any::<u64>(), loss in any::<f64>(), seed in any::<[u8; 32]>()) {
        let mut s = sample_snapshot();
        s.step = step;
        s.metrics.insert("loss".into(), loss);
        let key = SecretKey::from_seed(&seed);
        let bytes = key.sign(s).to_bytes();
        let back = Signed::<Snapshot>::from_bytes(&bytes).expect("own snapshot decodes");
        prop_assert_eq!(back.to_bytes(), bytes);
    }
}

#[test]
fn blob_requests_must_be_sorted_disjoint_and_bounded() {
    use protocol::wire::{BlobRequest, MAX_REQUEST_GROUPS};
    let hash = BlobHash::of(b"x");
    let ok = BlobRequest {
        hash,
        groups: vec![(0, 2), (5, 9)],
    };
    assert_eq!(BlobRequest::from_bytes(&ok.to_bytes()), Ok(ok));
    for groups in [
        vec![(3, 3)],
        vec![(5, 9), (0, 2)],
        vec![(0, 5), (5, 6)],
        vec![(0, MAX_REQUEST_GROUPS + 1)],
    ] {
        let bad = BlobRequest {
            hash,
            groups: groups.clone(),
        };
        assert!(
            BlobRequest::from_bytes(&bad.to_bytes()).is_err(),
            "accepted {groups:?}"
        );
    }
}

#[test]
fn a_partial_providers_have_list_is_checked_and_fits_the_header_limit() {
    use protocol::wire::{BlobResponseHeader, MAX_BLOB_HEADER_BYTES, MAX_HAVE_RANGES, Status};
    let size = 64 << 20; // 4096 groups
    let header = |status, size, have| BlobResponseHeader { status, size, have };
    // The most scattered list allowed, with the largest numbers a blob of the limit can have,
    // fits the frame limit.
    let widest: Vec<(u64, u64)> = (0..MAX_HAVE_RANGES as u64)
        .map(|i| {
            let base = (1 << 25) + 4 * i;
            (base, base + 1)
        })
        .collect();
    let big = header(
        Status::Partial,
        Some(protocol::MAX_BLOB_BYTES),
        Some(widest),
    );
    let bytes = big.to_bytes();
    assert!(
        bytes.len() <= MAX_BLOB_HEADER_BYTES,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(BlobResponseHeader::from_bytes(&bytes), Ok(big));
    for good in [
        header(
            Status::Partial,
            Some(size),
            Some(vec![(0, 3), (4095, 4096)]),
        ),
        header(Status::Ok, Some(size), Some(vec![(10, 20)])),
        header(Status::Ok, Some(size), None),
        header(Status::Busy, None, None),
    ] {
        assert_eq!(
            BlobResponseHeader::from_bytes(&good.to_bytes()),
            Ok(good.clone()),
            "{good:?}"
        );
    }
    let too_many: Vec<(u64, u64)> = (0..=MAX_HAVE_RANGES as u64)
        .map(|i| (2 * i, 2 * i + 1))
        .collect();
    for bad in [
        // Partial without the list, or without the size.
        header(Status::Partial, Some(size), None),
        header(Status::Partial, None, Some(vec![(0, 1)])),
        // A list where no data is answered.
        header(Status::NotFound, None, Some(vec![(0, 1)])),
        header(Status::Busy, None, Some(vec![(0, 1)])),
        // Unsorted, touching, empty, past the end, too many.
        header(Status::Partial, Some(size), Some(vec![(5, 9), (0, 2)])),
        header(Status::Partial, Some(size), Some(vec![(0, 5), (5, 6)])),
        header(Status::Partial, Some(size), Some(vec![(3, 3)])),
        header(Status::Partial, Some(size), Some(vec![(4000, 4097)])),
        header(Status::Partial, Some(size), Some(too_many)),
    ] {
        assert!(
            BlobResponseHeader::from_bytes(&bad.to_bytes()).is_err(),
            "accepted {bad:?}"
        );
    }
}

#[test]
fn sizes_over_the_blob_limit_are_refused_at_decode() {
    use protocol::MAX_BLOB_BYTES;
    use protocol::wire::{BlobResponseHeader, Status};
    let key = SecretKey::from_seed(&[3; 32]);
    // A file of 2^62 bytes: the signature is genuine, the claim is not acceptable.
    let mut m = sample_manifest();
    m.files[0].size = 1 << 62;
    let bytes = key.sign(m.clone()).to_bytes();
    let err = Signed::<Manifest>::from_bytes(&bytes).expect_err("a 2^62-byte file");
    assert!(err.to_string().contains("limit"), "{err}");
    // At the limit is fine, and the total of many such files does not overflow.
    m.files[0].size = MAX_BLOB_BYTES;
    m.files[1].size = MAX_BLOB_BYTES;
    let signed = Signed::<Manifest>::from_bytes(&key.sign(m).to_bytes()).expect("at the limit");
    assert_eq!(signed.body().total_size(), 2 * MAX_BLOB_BYTES);
    // Snapshot weights and folder entries use the same entry.
    let mut s = sample_snapshot();
    s.weights[0].size = MAX_BLOB_BYTES + 1;
    assert!(Signed::<Snapshot>::from_bytes(&key.sign(s).to_bytes()).is_err());
    let c = Collection {
        entries: vec![FileEntry {
            path: "big".into(),
            hash: BlobHash::of(b"big"),
            size: u64::MAX,
        }],
    };
    assert!(Collection::from_bytes(&c.to_bytes()).is_err());
    // A provider claiming such a size is refused before its data is read.
    let header = BlobResponseHeader {
        status: Status::Ok,
        size: Some(MAX_BLOB_BYTES + 1),
        have: None,
    };
    assert!(BlobResponseHeader::from_bytes(&header.to_bytes()).is_err());
}

proptest! {
    /// Every kind of catalogue request and answer decodes to what was encoded.
    #[test]
    fn catalogue_requests_and_answers_round_trip(
        after in proptest::option::of(any::<[u8; 32]>()),
        ids in any::<bool>(),
        want in proptest::collection::vec(any::<[u8; 32]>(), 0..40),
        listed in proptest::collection::vec(any::<[u8; 32]>(), 0..40),
        max in 1usize..50,
        votes in any::<bool>(),
    ) {
        use protocol::wire::{CatalogRequest, CatalogResponse};
        let id = |b: &[u8; 32]| ModelId(BlobHash::from_bytes(*b));
        let walk = CatalogRequest { after: after.as_ref().map(id), ids, want: Vec::new(), votes };
        prop_assert_eq!(CatalogRequest::from_bytes(&walk.to_bytes()).expect("walk"), walk);
        let wanted = CatalogRequest { want: want.iter().map(id).collect(), votes, ..CatalogRequest::default() };
        prop_assert_eq!(CatalogRequest::from_bytes(&wanted.to_bytes()).expect("want"), wanted);
        let envelopes = want.iter().map(|b| (id(b), b.to_vec()));
        let page = if votes {
            CatalogResponse::vote_page(envelopes, max, 1 << 20)
        } else {
            CatalogResponse::page(envelopes, max, 1 << 20)
        };
        prop_assert_eq!(page.votes.len() + page.manifests.len(), want.len().min(max));
        prop_assert_eq!(CatalogResponse::from_bytes(&page.to_bytes()).expect("page"), page);
        let mut sorted: Vec<ModelId> = listed.iter().map(id).collect();
        sorted.sort();
        sorted.dedup();
        let page = CatalogResponse::id_page(sorted.iter().copied(), max);
        prop_assert_eq!(page.ids.len(), sorted.len().min(max));
        prop_assert_eq!(page.next.is_some(), sorted.len() > max);
        prop_assert_eq!(CatalogResponse::from_bytes(&page.to_bytes()).expect("ids"), page);
    }
}

#[test]
fn a_want_request_is_asked_alone() {
    use protocol::wire::CatalogRequest;
    let bad = CatalogRequest {
        ids: true,
        want: vec![ModelId(BlobHash::of(b"x"))],
        ..CatalogRequest::default()
    };
    assert!(CatalogRequest::from_bytes(&bad.to_bytes()).is_err());
}
