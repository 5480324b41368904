//! Integrity: corrupt bytes are found and never exported; untrusted ranges are verified before
//! they are written; partial blobs resume; safetensors snapshots share tensor storage.

use std::fs;
use std::path::Path;

use bao_tree::io::outboard::PostOrderMemOutboard;
use bao_tree::{ChunkNum, ChunkRanges};
use protocol::BlobHash;
use store::{BLOCK_SIZE, IngestError, Problem, Store, StoreError};

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Encodes `ranges` of `sent` with the proofs (outboard) of `honest`: a peer that has the right
/// tree but sends `sent`'s bytes.
fn encode_as(honest: &[u8], sent: &[u8], ranges: &ChunkRanges) -> Vec<u8> {
    let ob = PostOrderMemOutboard::create(honest, BLOCK_SIZE);
    let mut out = Vec::new();
    bao_tree::io::sync::encode_ranges(sent, &ob, ranges, &mut out).expect("encode");
    out
}

fn encode(data: &[u8], ranges: &ChunkRanges) -> Vec<u8> {
    encode_as(data, data, ranges)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let m = e.metadata().expect("metadata");
        total += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

#[test]
fn flipped_byte_is_named_by_verify_and_never_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("open");
    let good = store
        .import_bytes(&pseudo_random(100_000, 1), "raw", vec![])
        .expect("import");
    let bad = store
        .import_bytes(&pseudo_random(50_000, 2), "raw", vec![])
        .expect("import");
    let path = dir
        .path()
        .join("store/blobs")
        .join(format!("{}.data", bad.hash));
    let mut bytes = fs::read(&path).expect("read");
    bytes[12_345] ^= 0x01;
    fs::write(&path, bytes).expect("write");

    let report = store.verify(None).expect("verify");
    assert_eq!(report.checked, 2);
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].0, bad.hash);
    assert!(matches!(report.problems[0].1, Problem::Corrupt(_)));

    let dest = dir.path().join("out.bin");
    match store.export(bad.hash, &dest) {
        Err(StoreError::Corrupt { hash, .. }) => assert_eq!(hash, bad.hash),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(!dest.exists(), "corrupt bytes reached the destination");
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("moxnet"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // Serving it to a peer is refused too.
    assert!(matches!(
        store.read_ranges(bad.hash, &ChunkRanges::all(), &mut Vec::new()),
        Err(StoreError::Corrupt { .. })
    ));
    store.export(good.hash, &dest).expect("intact blob exports");
    assert_eq!(BlobHash::of(&fs::read(&dest).expect("read")), good.hash);
}

#[test]
fn missing_data_file_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let b = store
        .import_bytes(b"gone soon", "raw", vec![])
        .expect("import");
    fs::remove_file(dir.path().join("blobs").join(format!("{}.data", b.hash))).expect("rm");
    let report = store.verify(Some(b.hash)).expect("verify");
    assert!(matches!(report.problems.as_slice(), [(h, Problem::Missing(_))] if *h == b.hash));
}

#[test]
fn corrupted_group_from_untrusted_source_is_rejected_and_not_written() {
    let data = pseudo_random(20 * 16 * 1024 + 777, 3);
    let hash = BlobHash::of(&data);
    let mut evil = data.clone();
    let bad_group = 7u64;
    evil[(bad_group * 16 * 1024 + 100) as usize] ^= 0x80;
    let encoded = encode_as(&data, &evil, &ChunkRanges::all());

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // The last group first: it proves the size.
    let last = ChunkRanges::from(ChunkNum(20 * 16)..);
    store
        .ingest(hash, data.len() as u64, &last, &encode(&data, &last)[..])
        .expect("the last group proves the size");
    let err = store
        .ingest(hash, data.len() as u64, &ChunkRanges::all(), &encoded[..])
        .expect_err("corrupt group must be rejected");
    let IngestError::PeerMisbehaved { outcome, .. } = err else {
        panic!("expected PeerMisbehaved, got {err:?}");
    };
    assert_eq!(
        outcome.groups_present,
        bad_group + 1,
        "groups before the bad one are kept (and the last one)"
    );
    assert!(!store.has(hash).expect("has"));
    let partial = store.partial(hash).expect("partial").expect("record");
    assert!(!partial.has(bad_group));
    // Nothing of the bad group reached the disk.
    let on_disk = fs::read(dir.path().join("partial").join(format!("{hash}.data"))).expect("read");
    let start = (bad_group * 16 * 1024) as usize;
    let written = on_disk.get(start..start + 16 * 1024).unwrap_or(&[]);
    assert!(
        written.iter().all(|b| *b == 0),
        "bytes of the bad group were written"
    );

    // An honest source completes it, sending only what is missing, even after a restart.
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    let missing = store.missing(hash, data.len() as u64).expect("missing");
    assert_eq!(
        missing,
        ChunkRanges::from(ChunkNum(bad_group * 16)..ChunkNum(20 * 16)),
        "resume asks only for what is missing"
    );
    let honest = encode(&data, &missing);
    let outcome = store
        .ingest(hash, data.len() as u64, &missing, &honest[..])
        .expect("honest ingest");
    assert!(outcome.complete);
    assert_eq!(outcome.groups_written, 20 - bad_group);
    let mut out = Vec::new();
    store.read_to(hash, &mut out).expect("read");
    assert_eq!(out, data);
    assert!(store.verify(None).expect("verify").is_ok());
}

#[test]
fn a_claimed_size_is_proven_before_anything_is_recorded() {
    // 300,000 and 299,000 bytes give BLAKE3 trees of the same shape: a proof of the first
    // groups verifies under either size. Only the last group tells them apart.
    let data = pseudo_random(300_000, 9);
    let size = data.len() as u64;
    let lie = 299_000u64;
    assert_eq!(store::groups(size), store::groups(lie));
    let hash = BlobHash::of(&data);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");

    // The first groups alone prove nothing: refused before anything is written.
    let first = ChunkRanges::from(..ChunkNum(16));
    let err = store
        .ingest(hash, lie, &first, &encode(&data, &first)[..])
        .expect_err("unproven size");
    assert!(matches!(err, IngestError::SizeUnproven { .. }), "{err:?}");
    assert!(store.partial(hash).expect("partial").is_none());

    // The whole blob under the wrong size: every group but the last verifies, the last does
    // not, and nothing is recorded, so the blob is not stuck at the wrong size.
    let err = store
        .ingest(
            hash,
            lie,
            &ChunkRanges::all(),
            &encode(&data, &ChunkRanges::all())[..],
        )
        .expect_err("the last group refutes the size");
    assert!(matches!(err, IngestError::PeerMisbehaved { .. }), "{err:?}");
    assert!(store.partial(hash).expect("partial").is_none());

    // An absurd size is refused before a bitmap for it is allocated.
    let err = store
        .ingest(hash, 1 << 62, &ChunkRanges::all(), &[][..])
        .expect_err("absurd size");
    assert!(err.to_string().contains("limit"), "{err}");

    // The true size, proven by the last group; after that, any other claim is a lie.
    let last = ChunkRanges::from(ChunkNum((store::groups(size) - 1) * 16)..);
    store
        .ingest(hash, size, &last, &encode(&data, &last)[..])
        .expect("honest last group");
    let err = store
        .ingest(hash, lie, &first, &encode(&data, &first)[..])
        .expect_err("a different size after the proof");
    assert!(
        matches!(&err, IngestError::PeerMisbehaved { reason, .. } if reason.contains("proven size")),
        "{err:?}"
    );
    let rest = store.missing(hash, size).expect("missing");
    let outcome = store
        .ingest(hash, size, &rest, &encode(&data, &rest)[..])
        .expect("honest rest");
    assert!(outcome.complete);
    let mut out = Vec::new();
    store.read_to(hash, &mut out).expect("read");
    assert_eq!(out, data);
    // Complete now: a late answer claiming another size is a lie too, not a proof (two peers
    // asked at once; the honest one finished the blob first). Found by the attack suite with a
    // blob of one group.
    let err = store
        .ingest(hash, lie, &last, &encode(&data, &last)[..])
        .expect_err("a different size once complete");
    assert!(
        matches!(&err, IngestError::PeerMisbehaved { reason, .. } if reason.contains("the blob here has")),
        "{err:?}"
    );
    let again = store
        .ingest(hash, size, &last, &encode(&data, &last)[..])
        .expect("the true size once complete");
    assert!(again.complete);
}

#[test]
fn ranges_served_by_one_store_complete_another() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let b_dir = tempfile::tempdir().expect("tempdir");
    let a = Store::open(a_dir.path()).expect("open a");
    let b = Store::open(b_dir.path()).expect("open b");
    for len in [0usize, 1, 1024, 16 * 1024, 16 * 1024 + 1, 300_000] {
        let data = pseudo_random(len, len as u64);
        let imported = a.import_bytes(&data, "raw", vec![]).expect("import");
        let size = len as u64;
        // Second half first, then the first half: out-of-order ranges, as from two peers.
        let half = ChunkNum(store::groups(size) / 2 * 16);
        for ranges in [ChunkRanges::from(half..), ChunkRanges::from(..half)] {
            let mut encoded = Vec::new();
            a.read_ranges(imported.hash, &ranges, &mut encoded)
                .expect("serve");
            b.ingest(imported.hash, size, &ranges, &encoded[..])
                .expect("ingest");
        }
        assert!(b.has(imported.hash).expect("has"), "len {len} incomplete");
        let mut out = Vec::new();
        b.read_to(imported.hash, &mut out).expect("read");
        assert_eq!(out, data);
    }
    assert!(b.verify(None).expect("verify").is_ok());
}

/// A store still receiving a blob serves the groups it holds (a swarm: fetchers serve each
/// other), refuses those it lacks, and the groups it serves verify and complete a third store.
#[test]
fn a_blob_being_received_serves_the_groups_it_holds() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let [seed, middle, last] = [0, 1, 2].map(|i| Store::open(dirs[i].path()).expect("open"));
    let data = pseudo_random(40 * 16 * 1024 + 5, 9); // 41 groups
    let hash = seed
        .import_bytes(&data, "raw", vec![])
        .expect("import")
        .hash;
    let size = data.len() as u64;
    // The middle store receives the last group (which proves the size), then groups 3..10.
    for groups in [[(40, 41)], [(3, 10)]] {
        let mut encoded = Vec::new();
        seed.read_groups(hash, &groups, &mut encoded)
            .expect("serve");
        middle
            .ingest(hash, size, &store::chunk_ranges(&groups), &encoded[..])
            .expect("ingest");
    }
    let record = middle.partial(hash).expect("partial").expect("receiving");
    assert_eq!(
        (record.size, record.runs()),
        (size, vec![(3, 10), (40, 41)])
    );
    // What it lacks, it refuses to serve: a group before, after, or straddling what it has.
    for lacking in [[(0, 1)], [(9, 11)], [(10, 40)]] {
        let err = middle
            .read_groups(hash, &lacking, &mut Vec::new())
            .expect_err("served a group it lacks");
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }
    // What it holds, the third store verifies and keeps.
    for groups in [vec![(40, 41)], vec![(3, 6), (8, 10)]] {
        let mut encoded = Vec::new();
        middle
            .read_groups(hash, &groups, &mut encoded)
            .expect("serve from a partial");
        let outcome = last
            .ingest(hash, size, &store::chunk_ranges(&groups), &encoded[..])
            .expect("a partial's groups verify");
        assert_eq!(
            outcome.groups_written,
            groups.iter().map(|(s, e)| e - s).sum::<u64>()
        );
    }
    // The rest from the seed completes the third; the middle completes too and then serves
    // everything from its complete copy.
    let rest = [(0, 3), (6, 8), (10, 40)];
    let mut encoded = Vec::new();
    seed.read_groups(hash, &rest, &mut encoded).expect("serve");
    assert!(
        last.ingest(hash, size, &store::chunk_ranges(&rest), &encoded[..])
            .expect("ingest")
            .complete
    );
    let mut out = Vec::new();
    last.read_to(hash, &mut out).expect("read");
    assert_eq!(out, data);
    let mut encoded = Vec::new();
    seed.read_groups(hash, &[(0, 41)], &mut encoded)
        .expect("serve");
    assert!(
        middle
            .ingest(hash, size, &ChunkRanges::all(), &encoded[..])
            .expect("ingest")
            .complete
    );
    assert_eq!(middle.partial(hash).expect("partial"), None);
    let mut whole = Vec::new();
    middle
        .read_groups(hash, &[(0, 41)], &mut whole)
        .expect("a completed blob serves everything");
    assert_eq!(whole, encoded);
}

/// Writes a safetensors file with one F32 tensor per entry of `tensors`.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": "F32",
                "shape": [bytes.len() / 4],
                "data_offsets": [offset, offset + bytes.len()],
            }),
        );
        offset += bytes.len();
    }
    let mut json = serde_json::to_vec(&header).expect("json");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    for (_, bytes) in tensors {
        file.extend_from_slice(bytes);
    }
    fs::write(path, file).expect("write");
}

#[test]
fn safetensors_snapshots_share_unchanged_tensors() {
    let work = tempfile::tempdir().expect("tempdir");
    let tensor_len = 1 << 20;
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let mut tensors: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, pseudo_random(tensor_len, i as u64 + 10)))
        .collect();
    let first = work.path().join("step1.safetensors");
    write_safetensors(&first, &tensors);
    tensors[3].1 = pseudo_random(tensor_len, 99);
    let second = work.path().join("step2.safetensors");
    write_safetensors(&second, &tensors);

    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).expect("open");
    let one = store.import_file(&first, &mut |_| {}).expect("import 1");
    let after_one = dir_size(&store_dir.join("blobs"));
    let two = store.import_file(&second, &mut |_| {}).expect("import 2");
    let after_two = dir_size(&store_dir.join("blobs"));
    // The hash is the plain BLAKE3 of the file, as b3sum prints it.
    assert_eq!(one.hash, BlobHash::of(&fs::read(&first).expect("read")));
    assert_eq!(two.hash, BlobHash::of(&fs::read(&second).expect("read")));
    let file_len = fs::metadata(&second).expect("meta").len();
    let growth = after_two - after_one;
    assert!(
        growth < tensor_len as u64 + tensor_len as u64 / 10 && growth >= tensor_len as u64,
        "second snapshot grew the store by {growth} bytes; one tensor is {tensor_len}, the file {file_len}"
    );
    // Export rebuilds the exact original bytes.
    for (imported, original) in [(one, &first), (two, &second)] {
        let out = work.path().join(format!("out-{}", imported.hash.short()));
        store.export(imported.hash, &out).expect("export");
        assert_eq!(
            fs::read(&out).expect("read"),
            fs::read(original).expect("read")
        );
    }
    assert!(store.verify(None).expect("verify").is_ok());
    // Serving a range across tensor boundaries works on the composite.
    let mut encoded = Vec::new();
    store
        .read_ranges(
            two.hash,
            &ChunkRanges::from(ChunkNum(1000)..ChunkNum(3000)),
            &mut encoded,
        )
        .expect("serve composite ranges");
    // Unpinned tensors of a pinned snapshot survive gc; the other snapshot's unique tensor goes.
    store.pin(two.hash).expect("pin");
    let report = store.gc().expect("gc");
    assert_eq!(report.blobs_removed, 2, "snapshot 1 and its unique tensor");
    assert!(store.verify(None).expect("verify").is_ok());
    let out = work.path().join("after-gc");
    store.export(two.hash, &out).expect("export after gc");
    assert_eq!(
        fs::read(&out).expect("read"),
        fs::read(&second).expect("read")
    );
}

#[test]
fn folders_export_byte_identical() {
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
    fs::write(src.join("a.txt"), b"alpha").expect("write");
    fs::write(src.join("sub/b.bin"), pseudo_random(70_000, 5)).expect("write");
    fs::write(src.join("sub/deeper/c"), b"").expect("write");
    fs::write(src.join("dup.txt"), b"alpha").expect("write");
    let store = Store::open(work.path().join("store")).expect("open");
    let (imported, collection) = store.import_dir(&src, &mut |_| {}).expect("import dir");
    assert_eq!(collection.entries.len(), 4);
    assert_eq!(collection.entries[0].path, "a.txt");
    let dest = work.path().join("dest");
    store
        .export_files(&collection.entries, &dest)
        .expect("export");
    for rel in ["a.txt", "dup.txt", "sub/b.bin", "sub/deeper/c"] {
        assert_eq!(
            fs::read(dest.join(rel)).expect("read exported"),
            fs::read(src.join(rel)).expect("read source"),
            "{rel}"
        );
    }
    // Re-importing the same folder stores nothing new.
    let (again, _) = store.import_dir(&src, &mut |_| {}).expect("again");
    assert_eq!(again.hash, imported.hash);
    assert!(!again.new);
    // Exporting over an existing path is refused.
    assert!(matches!(
        store.export_files(&collection.entries, &dest),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn a_second_process_handle_is_refused_while_the_store_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Store::open(dir.path()).expect("open");
    match Store::open(dir.path()) {
        Err(StoreError::Locked { .. }) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
}

mod untrusted_streams {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Arbitrary bytes as a bao stream: never a panic, never a completed blob with wrong bytes.
        #[test]
        fn arbitrary_streams_never_panic_or_complete_wrongly(
            stream in proptest::collection::vec(any::<u8>(), 0..70_000),
            len in 0usize..50_000,
        ) {
            let data = pseudo_random(len, 11);
            let hash = BlobHash::of(&data);
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path()).expect("open");
            let _ = store.ingest(hash, len as u64, &ChunkRanges::all(), &stream[..]);
            if store.has(hash).expect("has") {
                let mut out = Vec::new();
                store.read_to(hash, &mut out).expect("complete blobs verify");
                prop_assert_eq!(out, data);
            }
        }

        /// An honest stream with one flipped byte anywhere: ingest fails or the blob is right.
        #[test]
        fn flipped_stream_bytes_are_caught(idx in any::<prop::sample::Index>(), len in 1usize..80_000) {
            let data = pseudo_random(len, 12);
            let hash = BlobHash::of(&data);
            let mut stream = encode(&data, &ChunkRanges::all());
            let i = idx.index(stream.len());
            stream[i] ^= 0x20;
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path()).expect("open");
            let result = store.ingest(hash, len as u64, &ChunkRanges::all(), &stream[..]);
            prop_assert!(result.is_err(), "a corrupted stream was accepted");
            prop_assert!(!store.has(hash).expect("has"));
        }
    }
}

#[test]
fn a_damaged_index_or_layout_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        store
            .import_bytes(&pseudo_random(50_000, 8), "raw", vec![])
            .expect("import");
    }
    // An unknown layout version is refused with a reason.
    fs::write(dir.path().join("VERSION"), "99\n").expect("write");
    match Store::open(dir.path()) {
        Err(StoreError::NotAStore { reason, .. }) => assert!(reason.contains("99"), "{reason}"),
        other => panic!("expected NotAStore, got {other:?}"),
    }
    fs::write(dir.path().join("VERSION"), "1\n").expect("write");
    // Garbage over every index file: opening fails with an error (or recovers), never panics.
    for entry in fs::read_dir(dir.path().join("meta")).expect("meta") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            fs::write(&path, pseudo_random(4096, 9)).expect("write");
        }
    }
    let opened =
        std::panic::catch_unwind(|| Store::open(dir.path()).map(|s| s.list().map(|l| l.len())));
    eprintln!("damaged index: {opened:?}");
    assert!(opened.is_ok(), "opening a damaged index panicked");
}

#[test]
fn a_lost_index_costs_nothing_gc_keeps_the_files_and_reindex_adopts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pseudo_random(200_000, 21);
    let (kept, other) = {
        let store = Store::open(dir.path()).expect("open");
        let kept = store
            .import_bytes(&data, "raw", vec![])
            .expect("import")
            .hash;
        let other = store
            .import_bytes(b"small", "raw", vec![])
            .expect("import")
            .hash;
        store.pin(kept).expect("pin");
        (kept, other)
    };
    // The index is lost (a bad disk, a restore of blobs/ without meta/).
    fs::remove_dir_all(dir.path().join("meta")).expect("rm meta");
    // A file whose bytes do not match its name sits there too.
    let liar = BlobHash::of(b"not these bytes");
    fs::write(
        dir.path().join("blobs").join(format!("{liar}.data")),
        b"other bytes",
    )
    .expect("write");
    let store = Store::open(dir.path()).expect("reopen");
    assert!(!store.has(kept).expect("has"));
    let report = store.gc().expect("gc");
    assert_eq!(report.blobs_removed, 0);
    assert_eq!(report.orphans, 3, "{report:?}");
    assert!(
        dir.path()
            .join("blobs")
            .join(format!("{kept}.data"))
            .exists(),
        "gc deleted a file it could not account for"
    );
    let adopted = store.reindex().expect("reindex");
    assert_eq!((adopted.adopted, adopted.removed), (2, 1), "{adopted:?}");
    assert!(store.is_pinned(kept).expect("pinned") && store.is_pinned(other).expect("pinned"));
    assert_eq!(store.gc().expect("gc").orphans, 0);
    let mut out = Vec::new();
    store.read_to(kept, &mut out).expect("read");
    assert_eq!(out, data);
    assert!(store.verify(None).expect("verify").is_ok());
}

#[test]
fn gc_collects_abandoned_partial_blobs_and_keeps_fresh_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let data = pseudo_random(100_000, 4);
    let hash = BlobHash::of(&data);
    let size = data.len() as u64;
    let last = ChunkRanges::from(ChunkNum((store::groups(size) - 1) * 16)..);
    store
        .ingest(hash, size, &last, &encode(&data, &last)[..])
        .expect("a fetch begins");
    // Being fetched: kept.
    assert_eq!(store.gc().expect("gc").partials_removed, 0);
    assert!(store.partial(hash).expect("partial").is_some());
    // Abandoned for longer than the limit: removed with its files.
    let data_file = dir.path().join("partial").join(format!("{hash}.data"));
    let old =
        std::time::SystemTime::now() - store::PARTIAL_MAX_IDLE - std::time::Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(&data_file)
        .expect("open")
        .set_modified(old)
        .expect("age it");
    assert_eq!(store.gc().expect("gc").partials_removed, 1);
    assert!(store.partial(hash).expect("partial").is_none());
    assert!(!data_file.exists());
}
