//! The committed test vectors (`docs/test-vectors/v1.json`) are what this code produces, byte
//! for byte, and an independent Python implementation (cbor2 + blake3 + cryptography, run by
//! `docs/test-vectors/check.py`) decodes and verifies them.
//!
//! Regenerate after an intended format change with `MOXNET_BLESS=1 cargo test -p protocol --test vectors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protocol::cbor::Value;
use protocol::compute::{
    ComputeOffer, CreditTerms, InferCall, InferReply, InferRequest, InferResult, InferStatus,
};
use protocol::credits::{Cheque, CreditsAnswer, CreditsRequest, Receipt, Royalty, royalty_of};
use protocol::vote::{Choice, Revocation, Vote};
use protocol::{
    BlobHash, Collection, DType, DatasetRef, Dim, FileEntry, Interface, Manifest, ModelId, Object,
    Runtime, SecretKey, Signable, Snapshot, TensorSpec,
};
use serde_json::{Map, json};

fn vectors_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors/v1.json")
}

/// A CBOR value as JSON: byte strings become `"h'<hex>'"`, floats stay numbers.
fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Uint(n) => json!(n),
        Value::Nint(n) => json!(-1 - (*n as i128)),
        Value::Bytes(b) => json!(format!("h'{}'", hex::encode(b))),
        Value::Text(s) => json!(s),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let key = match k {
                    Value::Text(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                m.insert(key, to_json(v));
            }
            serde_json::Value::Object(m)
        }
        Value::Bool(b) => json!(b),
        Value::Null => serde_json::Value::Null,
        Value::Float(x) => json!(x),
    }
}

fn signed_vector<T: Signable>(name: &str, seed: [u8; 32], body: T) -> serde_json::Value {
    let key = SecretKey::from_seed(&seed);
    let signed = key.sign(body);
    let envelope = signed.to_bytes();
    json!({
        "name": name,
        "domain": T::DOMAIN,
        "secret_seed": hex::encode(seed),
        "public_key": hex::encode(key.node_id().as_bytes()),
        "body": hex::encode(signed.body_bytes()),
        "signature": hex::encode(signed.signature()),
        "envelope": hex::encode(&envelope),
        "id": BlobHash::of(&envelope).to_hex(),
        "fields": to_json(&signed.body().to_cbor()),
    })
}

fn generate() -> serde_json::Value {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = i as u8;
    }
    let manifest = Manifest {
        name: "examples/iris-linear".into(),
        version: "1.0.0".into(),
        description: "Softmax regression over iris measurements".into(),
        license: "CC0-1.0".into(),
        tags: vec!["tabular".into(), "classification".into()],
        authors: vec!["Ada".into()],
        interface: Interface {
            inputs: vec![TensorSpec {
                name: "features".into(),
                dtype: DType::F32,
                shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)],
            }],
            outputs: vec![TensorSpec {
                name: "probabilities".into(),
                dtype: DType::F32,
                shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(3)],
            }],
        },
        runtime: Runtime {
            kind: "onnx".into(),
            entry: Some("model.onnx".into()),
            guest: None,
            memory_mib: Some(16),
            language_model: None,
        },
        files: vec![
            FileEntry {
                path: "model.onnx".into(),
                hash: BlobHash::of(b"model bytes"),
                size: 11,
            },
            FileEntry {
                path: "moxnet.toml".into(),
                hash: BlobHash::of(b"toml bytes"),
                size: 10,
            },
        ],
        datasets: vec![DatasetRef {
            hash: BlobHash::of(b"iris.csv"),
            description: "Fisher's iris data".into(),
        }],
        parent: Some(ModelId(BlobHash::of(b"base model"))),
        snapshots: vec![BlobHash::of(b"snapshot 1"), BlobHash::of(b"snapshot 2")],
        royalty: Some(Royalty {
            payee: SecretKey::from_seed(&seed).node_id(),
            bps: 1_000,
        }),
    };
    // A call from the caller (seed 0x11…) to the provider (seed 0x22…), its receipt, and the
    // caller's cheque paying for it.
    let (caller, provider) = ([0x11; 32], [0x22; 32]);
    let request = SecretKey::from_seed(&caller).sign(InferRequest {
        model: ModelId(BlobHash::of(b"model")),
        input_hash: BlobHash::of(br#"{"inputs":[]}"#),
        max_fuel: 5_000_000_000,
        max_price_per_mfuel: 3,
        nonce: [7; 16],
        issued_ms: 1_764_300_000_000,
        provider: SecretKey::from_seed(&provider).node_id(),
    });
    let result = InferResult {
        request: BlobHash::of(&request.to_bytes()),
        model: request.body().model,
        output_hash: BlobHash::of(b"outputs"),
        fuel: 1_234_567_891,
        price_per_mfuel: 2,
        backend: "wasm".into(),
    };
    let signed_result = SecretKey::from_seed(&provider).sign(result.clone());
    let receipt = Receipt::of(&request, &signed_result);
    let verified = receipt.verify().expect("the vector's receipt verifies");
    let cheque = Cheque {
        payee: SecretKey::from_seed(&provider).node_id(),
        epoch: 1_764_300_000_000,
        seq: 3,
        calls: verified.cost,
        royalties: 0,
        receipt: Some(verified.id),
        issued_ms: 1_764_300_001_000,
    };
    let receipt_bytes = receipt.to_bytes();
    // The caller votes the model up with the receipt of its paid call, and retracts it later.
    let vote = Vote {
        model: request.body().model,
        choice: Choice::Up,
        clock: 1,
        issued_ms: 1_764_300_002_000,
        receipts: vec![receipt.clone()],
    };
    let retraction = Vote {
        model: request.body().model,
        choice: Choice::Retract,
        clock: 2,
        issued_ms: 1_764_300_003_000,
        receipts: vec![],
    };
    // Later still, the caller revokes its key: both votes stop counting.
    let revocation = Revocation {
        issued_ms: 1_764_300_004_000,
        reason: "the key leaked".into(),
    };
    let signed_cheque = SecretKey::from_seed(&caller).sign(cheque.clone());
    let offer = ComputeOffer {
        issued_ms: 1_764_300_000_000,
        expires_ms: 1_764_300_120_000,
        cores: 16,
        memory_mib: 65_536,
        gpus: vec![],
        backends: vec!["wasm".into()],
        models: vec![ModelId(BlobHash::of(b"model"))],
        max_concurrent: 4,
        price_per_mfuel: 2,
        addrs: vec!["/ip4/192.0.2.1/tcp/4001".into()],
        credit: CreditTerms::default(),
        price_per_mtoken: None,
    };
    // The frames that carry credits: a call paying with a cheque, a refusal for payment
    // returning the caller's newest cheque, and settling.
    let frames: Vec<(&str, Vec<u8>, Value)> = {
        let call = InferCall {
            request: request.to_bytes(),
            input: br#"{"inputs":[]}"#.to_vec(),
            cheque: Some(signed_cheque.to_bytes()),
        };
        let refusal = InferReply {
            cheque: Some(signed_cheque.to_bytes()),
            ..InferReply::error(InferStatus::PaymentRequired, "payment required")
        };
        let settle = CreditsRequest {
            cheque: Some(signed_cheque.to_bytes()),
            receipts_from: Some(0),
            royalties_from: None,
        };
        let settled = CreditsAnswer {
            refused: None,
            cheque: None,
            held: Some(signed_cheque.to_bytes()),
            served_calls: 1,
            receipts: vec![receipt_bytes.clone()],
            royalty_calls: 0,
            royalty_receipts: vec![],
        };
        vec![
            ("infer-call-paying", call.to_bytes(), call.to_cbor()),
            (
                "infer-reply-payment-required",
                refusal.to_bytes(),
                refusal.to_cbor(),
            ),
            ("credits-request", settle.to_bytes(), settle.to_cbor()),
            ("credits-answer", settled.to_bytes(), settled.to_cbor()),
        ]
    };
    let snapshot = Snapshot {
        model: "examples/iris-linear".into(),
        step: 200,
        time_ms: 1_764_300_000_000,
        // 0.5 fits a half float, 100000.0 a single, 0.1 needs a double.
        metrics: BTreeMap::from([
            ("accuracy".to_string(), 0.5),
            ("examples".to_string(), 100000.0),
            ("loss".to_string(), 0.1),
        ]),
        weights: vec![FileEntry {
            path: "checkpoints/step-200.safetensors".into(),
            hash: BlobHash::of(b"weights"),
            size: 180,
        }],
        parent: Some(BlobHash::of(b"snapshot 1")),
    };
    let minimal = Manifest {
        name: "tiny".into(),
        version: "0".into(),
        ..Manifest::default()
    };
    let collection = Collection {
        entries: vec![
            FileEntry {
                path: "a.txt".into(),
                hash: BlobHash::of(b"alpha"),
                size: 5,
            },
            FileEntry {
                path: "sub/b.bin".into(),
                hash: BlobHash::of(b""),
                size: 0,
            },
        ],
    };
    let collection_bytes = collection.to_bytes();
    let invalid: &[(&str, &str)] = &[
        ("1817", "integer 23 not in shortest form"),
        ("5f4101ff", "indefinite-length byte string"),
        ("a2616202616101", "map keys not in ascending order"),
        ("a2616101616102", "duplicate map key"),
        ("fa3fc00000", "float 1.5 as single; must be half"),
        ("f97e01", "NaN other than f97e00"),
        ("c11a514b67b0", "tags are not used"),
        ("f7", "undefined is not used"),
        ("62c328", "invalid UTF-8"),
        ("0000", "trailing bytes"),
    ];
    let mut objects = vec![json!({
        "name": "collection",
        "bytes": hex::encode(&collection_bytes),
        "id": BlobHash::of(&collection_bytes).to_hex(),
        "fields": to_json(&collection.to_cbor()),
    })];
    for (name, bytes, fields) in frames {
        objects.push(json!({
            "name": name,
            "bytes": hex::encode(&bytes),
            "id": BlobHash::of(&bytes).to_hex(),
            "fields": to_json(&fields),
        }));
    }
    json!({
        "description": "moxnet protocol v1 test vectors. Hex strings are lowercase. A signature is ed25519 over domain || 0x00 || body; an envelope is the deterministic CBOR map {v, domain, signer, body, sig}; id is BLAKE3 of the envelope bytes (for a manifest, its ModelId). In `fields`, byte strings are written h'<hex>'. See docs/protocol.md.",
        "signed": [
            signed_vector("manifest-full", seed, manifest),
            signed_vector("manifest-minimal", [0x42; 32], minimal),
            signed_vector("snapshot", seed, snapshot),
            signed_vector("infer-request", caller, request.body().clone()),
            signed_vector("infer-result", provider, result),
                        signed_vector("cheque", caller, cheque),
            signed_vector("compute-offer", provider, offer),
            signed_vector("vote-up-with-receipt", caller, vote),
            signed_vector("vote-retract", caller, retraction),
            signed_vector("revocation", caller, revocation),
        ],
                "objects": objects,
        "receipts": [{
            "name": "receipt",
            "bytes": hex::encode(&receipt_bytes),
            "id": verified.id.to_hex(),
            "caller": hex::encode(verified.caller.as_bytes()),
            "provider": hex::encode(verified.provider.as_bytes()),
            "fuel": verified.fuel,
            "price_per_mfuel": verified.price_per_mfuel,
            "cost": verified.cost,
            "royalty_bps": 1_000,
            "royalty": royalty_of(verified.cost, 1_000),
        }],
        "invalid_cbor": invalid.iter().map(|(h, why)| json!({ "hex": h, "reason": why })).collect::<Vec<_>>(),
    })
}

#[test]
fn committed_vectors_match_this_implementation() {
    let generated = serde_json::to_string_pretty(&generate()).expect("json") + "\n";
    let path = vectors_path();
    if std::env::var_os("MOXNET_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write vectors");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date; regenerate with MOXNET_BLESS=1 cargo test -p protocol --test vectors",
        path.display()
    );
    // And every committed vector decodes here.
    let v: serde_json::Value = serde_json::from_str(&committed).expect("json");
    for s in v["signed"].as_array().expect("signed") {
        let bytes = hex::decode(s["envelope"].as_str().expect("envelope")).expect("hex");
        let ok = match s["domain"].as_str() {
            Some(protocol::DOMAIN_MANIFEST) => {
                protocol::Signed::<Manifest>::from_bytes(&bytes).map(|_| ())
            }
            Some(protocol::compute::DOMAIN_INFER_REQUEST) => {
                protocol::Signed::<InferRequest>::from_bytes(&bytes).map(|_| ())
            }
            Some(protocol::compute::DOMAIN_INFER_RESULT) => {
                protocol::Signed::<InferResult>::from_bytes(&bytes).map(|_| ())
            }
            Some(protocol::compute::DOMAIN_COMPUTE_OFFER) => {
                protocol::Signed::<ComputeOffer>::from_bytes(&bytes).map(|_| ())
            }
            Some(protocol::credits::DOMAIN_CHEQUE) => {
                protocol::Signed::<Cheque>::from_bytes(&bytes).map(|_| ())
            }
            Some(protocol::DOMAIN_REVOCATION) => {
                protocol::vote::CheckedRevocation::from_bytes(&bytes).map(|_| ())
            }
            Some(protocol::DOMAIN_VOTE) => protocol::vote::CheckedVote::from_bytes(&bytes)
                .map(|_| ())
                .map_err(|e| protocol::DecodeError::invalid("vote", e.to_string())),
            _ => protocol::Signed::<Snapshot>::from_bytes(&bytes).map(|_| ()),
        };
        ok.expect("committed vector decodes");
    }
    for bad in v["invalid_cbor"].as_array().expect("invalid") {
        let bytes = hex::decode(bad["hex"].as_str().expect("hex")).expect("hex");
        assert!(Value::decode(&bytes, 1024).is_err(), "{bad}");
    }
}

#[test]
fn an_independent_python_implementation_verifies_the_vectors() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors/check.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(vectors_path())
        .output()
        .expect("python3 must be installed (.ci/run installs it with cbor2, blake3, cryptography)");
    assert!(
        out.status.success(),
        "{} failed (needs `pip install cbor2 blake3 cryptography`):\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
