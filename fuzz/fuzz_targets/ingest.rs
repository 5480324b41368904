//! Fuzz ingesting an untrusted bao stream: never panic, never complete a blob whose bytes do not
//! hash to the requested hash, never under a size other than its real one.
//!
//! Two modes, by the top bit of the first byte:
//! - **raw** (`0x00..=0x7f`): the rest is the stream for a blob of `first × 300` bytes (random
//!   bytes rarely verify: this covers the framing and the rejection paths);
//! - **edited** (`0x80..`): a *valid* stream for a blob whose size the next two bytes give,
//!   made by a source store, then edited as the rest says (bytes flipped, the stream cut short,
//!   the size claimed differently), so the fuzzer works on streams that verify up to a point.
//!
//! Each input gets a fresh store (on `/dev/shm` where there is one: the store fsyncs).
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use protocol::BlobHash;
use store::{ChunkRanges, Store};

fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// The bytes of the blob of `size` bytes the edited mode uses.
fn content(size: u64) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 10) as u8)
        .collect()
}

/// A source store (kept for the whole run, only read after a blob is added) and the valid
/// stream of every blob size asked for so far.
struct Source {
    _dir: tempfile::TempDir,
    store: Store,
    streams: HashMap<u64, (BlobHash, Vec<u8>)>,
}

fn valid_stream(size: u64) -> (BlobHash, Vec<u8>) {
    static SOURCE: OnceLock<Mutex<Source>> = OnceLock::new();
    let source = SOURCE.get_or_init(|| {
        let dir = tempfile::tempdir_in(scratch()).expect("tempdir");
        let store = Store::open(dir.path()).expect("source store");
        Mutex::new(Source {
            _dir: dir,
            store,
            streams: HashMap::new(),
        })
    });
    let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = source.streams.get(&size) {
        return found.clone();
    }
    let bytes = content(size);
    let hash = source
        .store
        .import_bytes(&bytes, "raw", Vec::new())
        .expect("import")
        .hash;
    let mut stream = Vec::new();
    source
        .store
        .read_ranges(hash, &ChunkRanges::all(), &mut stream)
        .expect("encode");
    source.streams.insert(size, (hash, stream.clone()));
    (hash, stream)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir_in(scratch()).expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    if first & 0x80 == 0 {
        let size = first as u64 * 300;
        let hash = BlobHash::of(&content(size));
        let _ = store.ingest(hash, size, &ChunkRanges::all(), rest);
        if store.has(hash).expect("has") {
            let mut out = Vec::new();
            store.read_to(hash, &mut out).expect("complete blobs verify");
            assert_eq!(out.len() as u64, size);
        }
        return;
    }
    let [a, b, claim, edits @ ..] = rest else {
        return;
    };
    // Up to about 256 KiB: one group, several, and partial last groups.
    let size = u16::from_le_bytes([*a, *b]) as u64 * 4;
    let (hash, mut stream) = valid_stream(size);
    // The claimed size: the real one, or off by a small amount either way.
    let claimed = match claim % 4 {
        0 | 1 => size,
        2 => size + (*claim as u64 >> 2) + 1,
        _ => size.saturating_sub((*claim as u64 >> 2) + 1),
    };
    for edit in edits.chunks_exact(4) {
        if stream.is_empty() {
            break;
        }
        let at = u16::from_le_bytes([edit[1], edit[2]]) as usize % stream.len();
        match edit[0] % 4 {
            0 | 1 => stream[at] ^= edit[3] | 1,
            2 => stream.truncate(at),
            _ => {}
        }
    }
    let _ = store.ingest(hash, claimed, &ChunkRanges::all(), &stream[..]);
    if store.has(hash).expect("has") {
        let mut out = Vec::new();
        store.read_to(hash, &mut out).expect("complete blobs verify");
        assert_eq!(out, content(size), "a completed blob holds the real bytes");
        assert_eq!(claimed, size, "a blob completed under a size it does not have");
    }
});
