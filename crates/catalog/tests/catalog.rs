//! The catalogue against a real sled-backed store on disk: manifests verified once and kept
//! across a restart, local models tracked as blobs arrive and leave, forged bytes refused,
//! snapshot chains and lineage.

use std::sync::Arc;

use catalog::{Catalog, CatalogError};
use protocol::{BlobHash, FileEntry, Manifest, ModelId, Runtime, SecretKey, Snapshot};
use store::Store;

fn key() -> SecretKey {
    SecretKey::from_seed(&[9; 32])
}

fn manifest(name: &str, files: &[(&str, &[u8])], guest: Option<BlobHash>) -> Manifest {
    Manifest {
        name: name.into(),
        version: "1".into(),
        runtime: Runtime {
            kind: "onnx".into(),
            entry: None,
            guest,
            memory_mib: None,
            language_model: None,
        },
        files: files
            .iter()
            .map(|(p, b)| FileEntry {
                path: (*p).into(),
                hash: BlobHash::of(b),
                size: b.len() as u64,
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn a_model_becomes_local_as_its_blobs_arrive_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = BlobHash::of(b"guest");
    let id;
    {
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let catalog = Catalog::open(store.clone()).expect("catalog");
        let m = manifest("m", &[("a.bin", b"aaa"), ("b.bin", b"bbb")], Some(guest));
        id = catalog.insert(key().sign(m)).expect("insert");
        assert!(!catalog.is_local(id));
        assert_eq!(catalog.missing(id).len(), 3, "two files and the guest");
        for (bytes, expect_local) in [(&b"aaa"[..], false), (b"guest", false), (b"bbb", true)] {
            let h = store
                .import_bytes(bytes, "raw", Vec::new())
                .expect("import")
                .hash;
            let now = catalog.blob_added(h);
            assert_eq!(now == vec![id], expect_local, "after {bytes:?}");
        }
        assert!(catalog.is_local(id));
        assert_eq!(catalog.local_models(), vec![id]);
        assert_eq!(catalog.counts(), (1, 1));
        // The manifest itself is a blob peers can fetch.
        assert!(store.has(id.blob()).expect("has"));
    }
    // After a restart the entry is decoded from the index (no re-verification needed) and
    // still local.
    let store = Arc::new(Store::open(dir.path()).expect("reopen"));
    let catalog = Catalog::open(store.clone()).expect("catalog again");
    assert!(catalog.is_local(id));
    assert_eq!(catalog.get(id).expect("known").body().name, "m");
    // A gc that removes its files: the model is no longer local once refreshed, and still
    // known (gc keeps manifests: it must not make the node forget the network).
    store.unpin(id.blob()).expect("unpin");
    let report = store.gc().expect("gc");
    assert!(report.blobs_removed >= 1, "{report:?}");
    catalog.refresh_all().expect("refresh");
    assert!(!catalog.is_local(id), "its files were collected");
    assert_eq!(catalog.get(id).expect("still known").body().name, "m");
    assert!(store.has(id.blob()).expect("has"), "the manifest is kept");
    assert_eq!(catalog.counts(), (1, 0));
    // Known after a restart too.
    drop(catalog);
    let catalog = Catalog::open(store).expect("catalog after gc");
    assert!(catalog.get(id).is_some());
}

#[test]
fn gc_keeps_learnt_manifests_but_not_the_files_they_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let catalog = Catalog::open(store.clone()).expect("catalog");
    let learnt: Vec<_> = (0..20)
        .map(|i| key().sign(manifest(&format!("learnt-{i}"), &[("w", b"weights")], None)))
        .collect();
    let results = catalog
        .insert_learnt_many(learnt, catalog::Quota::default())
        .expect("learn");
    let ids: Vec<ModelId> = results.into_iter().map(|r| r.expect("admitted")).collect();
    // An unpinned blob nothing references, and the (unpinned) file the manifests link: gc
    // takes both; a manifest is kept, what it links is not.
    let stray = store
        .import_bytes(b"stray", "raw", Vec::new())
        .expect("stray");
    let weights = store
        .import_bytes(b"weights", "raw", Vec::new())
        .expect("weights");
    let report = store.gc().expect("gc");
    assert_eq!(report.blobs_removed, 2, "{report:?}");
    assert!(!store.has(stray.hash).expect("has"));
    assert!(!store.has(weights.hash).expect("has"));
    catalog.refresh_all().expect("refresh");
    for id in &ids {
        assert!(store.has(id.blob()).expect("has"), "manifest {id} kept");
        assert!(catalog.get(*id).is_some(), "model {id} still known");
    }
    // A gc with nothing to collect changes nothing.
    assert_eq!(store.gc().expect("gc"), store::GcReport::default());
}

#[test]
fn forged_and_foreign_bytes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let catalog = Catalog::open(store).expect("catalog");
    let signed = key().sign(manifest("m", &[("a", b"a")], None));
    let mut bytes = signed.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // the signature
    assert!(matches!(
        catalog.insert_bytes(&bytes),
        Err(CatalogError::Invalid {
            what: "manifest",
            ..
        })
    ));
    assert!(catalog.insert_bytes(b"not cbor").is_err());
    // A snapshot envelope is not a manifest, even with a valid signature.
    let snap = key().sign(Snapshot {
        model: "m".into(),
        step: 1,
        time_ms: 0,
        metrics: Default::default(),
        weights: vec![],
        parent: None,
    });
    assert!(catalog.insert_bytes(&snap.to_bytes()).is_err());
    assert!(catalog.is_empty());
    let id = catalog
        .insert_bytes(&signed.to_bytes())
        .expect("the genuine one");
    assert_eq!(id, protocol::model_id(&signed.to_bytes()));
}

#[test]
fn a_store_from_before_the_catalogue_is_adopted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signed = key().sign(manifest("old", &[], None));
    let id = {
        let store = Store::open(dir.path()).expect("store");
        let bytes = signed.to_bytes();
        let id = protocol::model_id(&bytes);
        store
            .import_manifests(&[(&bytes, Vec::new())])
            .expect("import");
        id
    };
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let catalog = Catalog::open(store).expect("catalog");
    assert!(catalog.is_local(id), "no files: local");
    assert_eq!(catalog.entries().len(), 1);
}

#[test]
fn snapshot_chains_and_lineage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let catalog = Catalog::open(store.clone()).expect("catalog");
    let mut parent = None;
    let mut hashes = Vec::new();
    for step in 1..=3 {
        let s = key().sign(Snapshot {
            model: "run".into(),
            step,
            time_ms: step * 10,
            metrics: Default::default(),
            weights: vec![],
            parent,
        });
        let h = store
            .import_bytes(&s.to_bytes(), "snapshot", parent.into_iter().collect())
            .expect("import")
            .hash;
        hashes.push(h);
        parent = Some(h);
    }
    let chain = catalog.snapshot_chain(parent).expect("chain");
    let steps: Vec<u64> = chain.iter().map(|(_, s)| s.body().step).collect();
    assert_eq!(steps, vec![1, 2, 3]);
    assert_eq!(chain.iter().map(|(h, _)| *h).collect::<Vec<_>>(), hashes);
    assert!(catalog.snapshot_chain(None).expect("empty").is_empty());

    let base = catalog
        .insert(key().sign(manifest("base", &[], None)))
        .expect("base");
    let mut tuned = manifest("tuned", &[], None);
    tuned.parent = Some(base);
    let tuned = catalog.insert(key().sign(tuned)).expect("tuned");
    let mut again = manifest("tuned-again", &[], None);
    again.parent = Some(tuned);
    let again = catalog.insert(key().sign(again)).expect("again");
    assert_eq!(catalog.lineage(again), vec![tuned, base]);
    assert_eq!(catalog.derived(base), vec![tuned]);
    // A parent this node has never seen ends the lineage.
    let mut orphan = manifest("orphan", &[], None);
    orphan.parent = Some(ModelId(BlobHash::of(b"unknown")));
    let orphan = catalog.insert(key().sign(orphan)).expect("orphan");
    assert_eq!(
        catalog.lineage(orphan),
        vec![ModelId(BlobHash::of(b"unknown"))]
    );
}

/// Manifests from peers are held to a quota: per author, and in all (counted again after a
/// restart); the node's own publishes are not. Pages walk the catalogue in id order.
#[test]
fn learnt_manifests_are_held_to_a_quota_and_pages_cover_the_catalogue() {
    use catalog::{Quota, Refused};
    let dir = tempfile::tempdir().expect("tempdir");
    let quota = Quota {
        max_models: 5,
        max_per_author: 2,
    };
    let spammer = SecretKey::from_seed(&[1; 32]);
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let catalog = Catalog::open(store.clone()).expect("catalog");
    for i in 0..2 {
        let m = spammer.sign(manifest(&format!("spam-{i}"), &[], None));
        catalog
            .insert_learnt(m, quota)
            .expect("store")
            .expect("under quota");
    }
    let third = spammer.sign(manifest("spam-2", &[], None));
    assert_eq!(
        catalog.insert_learnt(third, quota).expect("store"),
        Err(Refused::AuthorQuota(2))
    );
    // Another author still gets in, until the catalogue is full.
    for seed in 2..5u8 {
        let m = SecretKey::from_seed(&[seed; 32]).sign(manifest("other", &[], None));
        catalog
            .insert_learnt(m, quota)
            .expect("store")
            .expect("room left");
    }
    let late = SecretKey::from_seed(&[6; 32]).sign(manifest("late", &[], None));
    assert_eq!(
        catalog.insert_learnt(late.clone(), quota).expect("store"),
        Err(Refused::Full(5))
    );
    // The node's own publish is not refused.
    catalog
        .insert(key().sign(manifest("mine", &[], None)))
        .expect("own");
    drop(catalog);
    let catalog = Catalog::open(store).expect("reopen");
    assert_eq!(catalog.len(), 6);
    assert_eq!(
        catalog.insert_learnt(late, quota).expect("store"),
        Err(Refused::Full(6)),
        "the quota counts what was kept across a restart"
    );
    // Pages of ids, two at a time, walk all six in id order, each ending where the next begins;
    // every id listed has its manifest.
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let ids = catalog.ids(after, 2);
        assert!(ids.len() <= 2);
        for id in &ids {
            assert!(catalog.contains(*id));
            let envelope = catalog.get(*id).expect("listed, so known").to_bytes();
            assert_eq!(protocol::model_id(&envelope), *id);
        }
        seen.extend(ids.iter().copied());
        match ids.last() {
            Some(last) if ids.len() == 2 => after = Some(*last),
            _ => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in id order, none twice");
    assert_eq!(seen.len(), 6);
}

/// A manifest learnt from a peer that needs no blobs is local (callable), but the node does not
/// hold it: only pinned models are announced and offered.
#[test]
fn only_pinned_models_are_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let catalog = Catalog::open(store.clone()).expect("catalog");
    let stranger = SecretKey::from_seed(&[3; 32]);
    let learnt = catalog
        .insert_learnt(
            stranger.sign(manifest("empty", &[], None)),
            Default::default(),
        )
        .expect("store")
        .expect("admitted");
    assert!(catalog.is_local(learnt), "nothing to fetch: local");
    assert!(catalog.held_models().is_empty(), "but not held");
    let mine = catalog
        .insert(key().sign(manifest("mine", &[], None)))
        .expect("insert");
    store.pin(mine.blob()).expect("pin");
    assert_eq!(catalog.held_models(), vec![mine]);
}
