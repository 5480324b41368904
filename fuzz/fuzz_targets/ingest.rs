//! Fuzz ingesting an untrusted bao stream: never panic, never complete a blob whose bytes do not
//! hash to the requested hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::BlobHash;
use store::{ChunkRanges, Store};

fuzz_target!(|data: &[u8]| {
    let Some((&size_byte, stream)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let hash = BlobHash::of(&[7u8; 40_000][..(size_byte as usize * 150).min(40_000)]);
    let size = (size_byte as u64) * 150;
    let _ = store.ingest(hash, size, &ChunkRanges::all(), stream);
    if store.has(hash).expect("has") {
        let mut out = Vec::new();
        store
            .read_to(hash, &mut out)
            .expect("complete blobs verify");
    }
});
