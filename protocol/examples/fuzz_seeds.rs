//! Writes the fuzzers' seed corpus: one valid encoding of every frame and object a peer can
//! send, so that libFuzzer starts from inputs that reach deep into each decoder.
//!
//! ```text
//! cargo run -p protocol --example fuzz_seeds -- fuzz/corpus
//! ```
//! Each seed goes to `<dir>/<target>/<name>`; the keys match those `compute_frames` checks
//! calls and replies with (seeds `[1; 32]` for the provider, `[2; 32]` for the caller).

use std::path::{Path, PathBuf};

use protocol::compute::{
    ComputeOffer, InferCall, InferReply, InferRequest, InferResult, InferStatus, Outputs,
    WireTensor,
};
use protocol::wire::{BlobRequest, BlobResponseHeader, CatalogRequest, CatalogResponse, Status};
use protocol::{
    BlobHash, Collection, DType, Dim, FileEntry, Interface, Manifest, ModelId, Object, Runtime,
    SecretKey, Snapshot, TensorSpec,
};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let author = SecretKey::from_seed(&[9; 32]);
    let provider = SecretKey::from_seed(&[1; 32]);
    let caller = SecretKey::from_seed(&[2; 32]);
    let file = |path: &str, size| FileEntry {
        path: path.into(),
        hash: BlobHash::of(path.as_bytes()),
        size,
    };
    let manifest = Manifest {
        name: "iris".into(),
        version: "1.0.0".into(),
        description: "seed".into(),
        license: "CC0-1.0".into(),
        tags: vec!["tabular".into()],
        authors: vec!["Ada".into()],
        interface: Interface {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DType::F32,
                shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)],
            }],
            outputs: vec![TensorSpec {
                name: "y".into(),
                dtype: DType::Bytes,
                shape: vec![Dim::Fixed(1)],
            }],
        },
        runtime: Runtime {
            kind: "onnx".into(),
            entry: Some("model.onnx".into()),
            guest: Some(BlobHash::of(b"guest")),
            memory_mib: Some(64),
            language_model: None,
        },
        files: vec![file("model.onnx", 1 << 20), file("sub/vocab.txt", 0)],
        datasets: vec![],
        parent: Some(ModelId(BlobHash::of(b"parent"))),
        snapshots: vec![BlobHash::of(b"snapshot")],
        royalty: Some(protocol::credits::Royalty {
            payee: author.node_id(),
            bps: 250,
        }),
    };
    let signed_manifest = author.sign(manifest.clone()).to_bytes();
    write(&dir, "signed_manifest", "manifest", &signed_manifest)?;
    write(&dir, "signed_manifest", "body", &manifest.to_bytes())?;
    write(&dir, "cbor_value", "manifest", &signed_manifest)?;
    let snapshot = Snapshot {
        model: "iris".into(),
        step: 7,
        time_ms: 1_764_300_000_000,
        metrics: [("loss".to_string(), 0.25)].into(),
        weights: vec![file("w.safetensors", 4096)],
        parent: None,
    };
    write(
        &dir,
        "signed_snapshot",
        "snapshot",
        &author.sign(snapshot).to_bytes(),
    )?;
    let collection = Collection {
        entries: vec![file("a.txt", 5), file("b/c.bin", 70_000)],
    };
    write(&dir, "collection", "collection", &collection.to_bytes())?;
    write(&dir, "cbor_value", "collection", &collection.to_bytes())?;

    let request = BlobRequest {
        hash: BlobHash::of(b"blob"),
        groups: vec![(0, 4), (9, 10)],
    };
    write(&dir, "blob_frames", "request", &request.to_bytes())?;
    for (name, status, size, have) in [
        ("ok", Status::Ok, Some(300_000), None),
        ("busy", Status::Busy, None, None),
        (
            "partial",
            Status::Partial,
            Some(300_000),
            Some(vec![(0, 3), (10, 19)]),
        ),
    ] {
        write(
            &dir,
            "blob_frames",
            name,
            &BlobResponseHeader { status, size, have }.to_bytes(),
        )?;
    }
    write(
        &dir,
        "catalog_frames",
        "request",
        &CatalogRequest::default().to_bytes(),
    )?;
    let after = CatalogRequest {
        after: Some(ModelId(BlobHash::of(b"after"))),
        ..CatalogRequest::default()
    };
    write(&dir, "catalog_frames", "request-after", &after.to_bytes())?;
    let ids = CatalogRequest {
        ids: true,
        ..after.clone()
    };
    write(&dir, "catalog_frames", "request-ids", &ids.to_bytes())?;
    let want = CatalogRequest {
        want: vec![ModelId(BlobHash::of(b"a")), ModelId(BlobHash::of(b"b"))],
        ..CatalogRequest::default()
    };
    write(&dir, "catalog_frames", "request-want", &want.to_bytes())?;
    let votes = CatalogRequest {
        votes: true,
        ..ids.clone()
    };
    write(
        &dir,
        "catalog_frames",
        "request-vote-ids",
        &votes.to_bytes(),
    )?;
    let catalog = CatalogResponse {
        manifests: vec![signed_manifest.clone(), signed_manifest],
        next: Some(ModelId(BlobHash::of(b"next"))),
        ..CatalogResponse::default()
    };
    write(&dir, "catalog_frames", "response", &catalog.to_bytes())?;
    let id_page = CatalogResponse::id_page((0..3u8).map(|i| ModelId(BlobHash::of(&[i]))), 2);
    write(&dir, "catalog_frames", "response-ids", &id_page.to_bytes())?;

    let input = br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}"#;
    let infer_request = caller.sign(InferRequest {
        model: ModelId(BlobHash::of(b"model")),
        input_hash: BlobHash::of(input),
        max_fuel: 1_000_000,
        max_price_per_mfuel: 10,
        nonce: [7; 16],
        issued_ms: 1,
        provider: provider.node_id(),
    });
    let cheque = caller.sign(protocol::credits::Cheque {
        payee: provider.node_id(),
        epoch: 1,
        seq: 2,
        calls: 1_000,
        royalties: 10,
        receipt: Some(BlobHash::of(b"receipt")),
        issued_ms: 2,
    });
    write(&dir, "compute_frames", "cheque", &cheque.to_bytes())?;
    let call = InferCall {
        request: infer_request.to_bytes(),
        input: input.to_vec(),
        cheque: Some(cheque.to_bytes()),
    };
    write(&dir, "compute_frames", "call", &call.to_bytes())?;
    let outputs = Outputs {
        tensors: vec![WireTensor {
            name: "y".into(),
            dtype: "FP32".into(),
            shape: vec![1, 2],
            data: vec![0; 8],
        }],
    };
    let output = outputs.to_bytes();
    write(&dir, "compute_frames", "outputs", &output)?;
    let result = provider.sign(InferResult {
        request: BlobHash::of(&infer_request.to_bytes()),
        model: infer_request.body().model,
        output_hash: BlobHash::of(&output),
        fuel: 1000,
        price_per_mfuel: 1,
        backend: "wasm".into(),
    });
    let reply = InferReply {
        status: InferStatus::Ok,
        result: Some(result.to_bytes()),
        output: Some(output),
        message: None,
        cheque: None,
    };
    write(&dir, "compute_frames", "reply", &reply.to_bytes())?;
    let refusal = InferReply::error(InferStatus::Busy, "all slots taken");
    write(&dir, "compute_frames", "busy", &refusal.to_bytes())?;
    let offer = provider.sign(ComputeOffer {
        issued_ms: 1,
        expires_ms: 120_001,
        cores: 16,
        memory_mib: 131_072,
        gpus: vec!["NVIDIA H200".into()],
        backends: vec!["wasm".into(), "tract".into()],
        models: vec![ModelId(BlobHash::of(b"model"))],
        max_concurrent: 4,
        price_per_mfuel: 1,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        credit: protocol::credits::CreditTerms::default(),
        price_per_mtoken: None,
    });
    write(&dir, "compute_frames", "offer", &offer.to_bytes())?;
    println!("seeds written to {}", dir.display());
    Ok(())
}
