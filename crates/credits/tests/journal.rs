//! The journal in front of sled: what a killed node had written is replayed at start (sled may
//! not have flushed it), in order, and a torn last record is dropped.

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

#[test]
fn a_journal_alone_rebuilds_what_it_holds_and_a_torn_tail_is_dropped() {
    let peer = SecretKey::from_seed(&[7; 32]).node_id();
    let dir = tempfile::tempdir().expect("tmp");
    let store = LedgerStore::open(dir.path()).expect("open");
    for n in 0..3u8 {
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
    // Within a second of opening nothing was checkpointed: the journal holds all three.
    let journal = std::fs::read(dir.path().join("journal")).expect("journal");
    assert!(!journal.is_empty());
    drop(store);

    // A node whose sled lost everything since its last flush: only the journal survived, and
    // its last record was being written when the node died.
    let other = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(other.path()).expect("dir");
    let first = 12 + u32::from_le_bytes(journal[..4].try_into().expect("length")) as usize;
    assert!(first < journal.len());
    let mut torn = journal.clone();
    // Half of a record (as a record of the first's size would be cut by the kill).
    torn.extend_from_slice(&journal[..first / 2]);
    std::fs::write(other.path().join("journal"), &torn).expect("write");
    let store = LedgerStore::open(other.path()).expect("reopen");
    let accounts = store.accounts().expect("accounts");
    assert_eq!(accounts.get(&peer).map(|a| a.served_calls), Some(3));
    let receipts = store.receipts(&peer, Side::Served).expect("receipts");
    assert_eq!(receipts.len(), 3);
    assert!(store.has_receipt(&receipt(2).0).expect("index"));
    // Replayed into sled, flushed, and the journal emptied.
    assert_eq!(
        std::fs::metadata(other.path().join("journal"))
            .expect("journal")
            .len(),
        0
    );
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
