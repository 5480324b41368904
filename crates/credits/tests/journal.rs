//! The journal in front of sled: what was written is read back before it reaches sled and after;
//! what a killed node had written is replayed at start (sled may not have it), generation by
//! generation in order, and a torn last record is dropped.

use std::path::{Path, PathBuf};

use credits::{Account, Change, LedgerStore, Side};
use protocol::compute::{InferRequest, InferResult};
use protocol::credits::Receipt;
use protocol::{BlobHash, ModelId, SecretKey};

fn receipt(n: u8) -> (BlobHash, Receipt) {
    let caller = SecretKey::from_seed(&[1; 32]);
    let provider = SecretKey::from_seed(&[2; 32]);
    let request = caller.sign(InferRequest {
        model: ModelId(BlobHash::of(b"model")),
        input_hash: BlobHash::of(b"{}"),
        max_fuel: 1_000,
        max_price_per_mfuel: 1,
        nonce: [n; 16],
        issued_ms: 1,
        provider: provider.node_id(),
    });
    let result = provider.sign(InferResult {
        request: BlobHash::of(&request.to_bytes()),
        model: request.body().model,
        output_hash: BlobHash::of(b"out"),
        fuel: 1_000,
        price_per_mfuel: 1,
        backend: "wasm".into(),
    });
    (
        BlobHash::of(&result.to_bytes()),
        Receipt::of(&request, &result),
    )
}

/// The journal files in `dir` with their contents, by name.
fn journals(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal"))
        })
        .map(|p| {
            let bytes = std::fs::read(&p).expect("journal");
            (p, bytes)
        })
        .collect();
    found.sort();
    found
}

/// Writes the `n`-th call's receipt and `peer`'s account after it.
fn write_call(store: &LedgerStore, peer: protocol::NodeId, n: u8) {
    let (id, r) = receipt(n);
    let account = Account {
        served: u64::from(n) + 1,
        served_calls: u64::from(n) + 1,
        ..Account::default()
    };
    store
        .apply(Change::default().account(peer, &account).receipt(
            peer,
            Side::Served,
            u64::from(n),
            id,
            &r,
        ))
        .expect("apply");
}

#[test]
fn a_journal_alone_rebuilds_what_it_holds_and_a_torn_tail_is_dropped() {
    let peer = SecretKey::from_seed(&[7; 32]).node_id();
    let dir = tempfile::tempdir().expect("tmp");
    let store = LedgerStore::open(dir.path()).expect("open");
    for n in 0..3u8 {
        write_call(&store, peer, n);
    }
    // Within a second of opening nothing was checkpointed: the journal holds all three, and
    // every read sees them before they are in sled.
    let written = journals(dir.path());
    assert_eq!(written.len(), 1, "{written:?}");
    let journal = written[0].1.clone();
    assert!(!journal.is_empty());
    assert_eq!(
        store.receipts(&peer, Side::Served).expect("receipts").len(),
        3
    );
    assert_eq!(
        store
            .receipts_range(&peer, Side::Served, 1, 10)
            .expect("range")
            .len(),
        2
    );
    assert!(store.has_receipt(&receipt(1).0).expect("index"));
    assert_eq!(
        store
            .accounts()
            .expect("accounts")
            .get(&peer)
            .map(|a| a.served),
        Some(3)
    );
    // A clean close checkpoints: sled has everything and no journal is left with data.
    drop(store);
    assert!(journals(dir.path()).iter().all(|(_, b)| b.is_empty()));
    let store = LedgerStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.receipts(&peer, Side::Served).expect("receipts").len(),
        3
    );
    drop(store);

    // A node whose sled lost everything since its last flush: only the journal survived, and
    // its last record was being written when the node died.
    let other = tempfile::tempdir().expect("tmp");
    let first = 12 + u32::from_le_bytes(journal[..4].try_into().expect("length")) as usize;
    assert!(first < journal.len());
    let mut torn = journal.clone();
    // Half of a record (as a record of the first's size would be cut by the kill).
    torn.extend_from_slice(&journal[..first / 2]);
    std::fs::write(other.path().join("journal.4"), &torn).expect("write");
    let store = LedgerStore::open(other.path()).expect("reopen");
    let accounts = store.accounts().expect("accounts");
    assert_eq!(accounts.get(&peer).map(|a| a.served_calls), Some(3));
    let receipts = store.receipts(&peer, Side::Served).expect("receipts");
    assert_eq!(receipts.len(), 3);
    assert!(store.has_receipt(&receipt(2).0).expect("index"));
    // Replayed into sled and flushed; the old journal gone, a newer generation started.
    let left = journals(other.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].0.ends_with("journal.5") && left[0].1.is_empty());
    drop(store);
    let again = LedgerStore::open(other.path()).expect("reopen again");
    assert_eq!(
        again
            .accounts()
            .expect("accounts")
            .get(&peer)
            .map(|a| a.served),
        Some(3)
    );
}

/// A node killed in the middle of a checkpoint leaves two generations: the one being written
/// to sled and the one changes went to meanwhile. Both are replayed, older first, so the newer
/// value of an account wins; an unnumbered `journal` (an older version's) counts as the oldest.
#[test]
fn generations_replay_oldest_first_and_the_newest_value_wins() {
    let peer = SecretKey::from_seed(&[7; 32]).node_id();
    let one = tempfile::tempdir().expect("tmp");
    let store = LedgerStore::open(one.path()).expect("open");
    write_call(&store, peer, 0);
    write_call(&store, peer, 1);
    let old = journals(one.path()).remove(0).1;
    drop(store);
    let two = tempfile::tempdir().expect("tmp");
    let store = LedgerStore::open(two.path()).expect("open");
    write_call(&store, peer, 2);
    let new = journals(two.path()).remove(0).1;
    drop(store);

    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("journal"), &old).expect("write");
    std::fs::write(dir.path().join("journal.9"), &new).expect("write");
    let store = LedgerStore::open(dir.path()).expect("open");
    let account = store.accounts().expect("accounts").remove(&peer);
    assert_eq!(account.map(|a| a.served_calls), Some(3));
    assert_eq!(
        store.receipts(&peer, Side::Served).expect("receipts").len(),
        3
    );
    // The other order would leave the older account (served_calls 2) on top.
    drop(store);
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("journal.1"), &new).expect("write");
    std::fs::write(dir.path().join("journal.2"), &old).expect("write");
    let store = LedgerStore::open(dir.path()).expect("open");
    let account = store.accounts().expect("accounts").remove(&peer);
    assert_eq!(account.map(|a| a.served_calls), Some(2));
}

/// Changes made while the checkpointer runs are neither lost nor hidden: a writer and a reader
/// go on through many checkpoints, and every receipt written is found at once and after a
/// reopen.
#[test]
fn reads_see_every_change_across_checkpoints() {
    let peer = SecretKey::from_seed(&[7; 32]).node_id();
    let dir = tempfile::tempdir().expect("tmp");
    let store = LedgerStore::open(dir.path()).expect("open");
    for n in 0..60u8 {
        write_call(&store, peer, n);
        assert!(store.has_receipt(&receipt(n).0).expect("index"), "{n}");
        assert_eq!(
            store
                .receipts_range(&peer, Side::Served, 0, 1000)
                .expect("range")
                .len(),
            usize::from(n) + 1
        );
        if n % 20 == 19 {
            store.checkpoint().expect("checkpoint");
            assert!(journals(dir.path()).iter().all(|(_, b)| b.is_empty()));
        }
    }
    drop(store);
    let store = LedgerStore::open(dir.path()).expect("reopen");
    assert_eq!(store.receipts(&peer, Side::Served).expect("all").len(), 60);
}
