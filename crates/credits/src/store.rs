//! The ledger on disk: a sled database with the accounts, the receipts behind them and the free
//! allowance, in front of it a journal. Each change is one record appended to the journal
//! (`write(2)`, so in the OS's hands: a killed process loses none of it) before
//! [`LedgerStore::apply`] returns, so before the caller sends anything that depends on it (a
//! reply with a signed result, a cheque, the acknowledgement of a cheque), and is kept in memory
//! where every read sees it. A kill at any point therefore loses no credit and counts none twice:
//! a receipt is written once (its id is its key), and cheques are cumulative.
//!
//! A checkpointer thread moves the changes to sled every [`CHECKPOINT_EVERY`] (sooner after
//! [`CHECKPOINT_BYTES`] of journal): it switches the journal to a new generation (`journal.N+1`),
//! writes the previous generation's changes to sled as one batch, flushes sled (an fsync) and
//! deletes that journal. No change waits for sled or a disk flush; one fsync a second is shared
//! by all of them; a power cut (not a kill) may lose the last second. A start replays the
//! journals left, oldest first (records are absolute values: replaying one twice changes
//! nothing), each up to its first torn record.
//!
//! Keys (one tree, `credits`):
//! - `a` ‖ node id (32) → the [`Account`] (deterministic CBOR, see [`encode_account`]);
//! - `r` ‖ node id (32) ‖ `s`|`u` ‖ n (u64 BE) → a [`Receipt`] of a call this node served the
//!   peer (`s`) or the peer served this node (`u`), the n-th of its kind (from 0);
//! - `i` ‖ receipt id (32) → empty: the receipt is recorded;
//! - `y` ‖ payee node id (32) ‖ n (u64 BE) → a [`Receipt`] of a call this node served of a model
//!   whose royalty `payee` is owed, the n-th (from 0): what the payee audits;
//! - `m` → the free [`Allowance`] (tokens, at_ms).

use std::collections::BTreeMap;
use std::path::Path;

use protocol::cbor::{self, MapReader, Value, as_array, as_u64};
use protocol::credits::Receipt;
use protocol::{BlobHash, DecodeError, NodeId, Object};

use crate::ledger::{Account, Allowance, ChequeState};

/// A ledger store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (disk full, I/O error, …).
    #[error("credits database: {0}")]
    Db(#[from] sled::Error),
    /// A stored value does not decode: the database was damaged or written by another version.
    #[error("credits database: a stored {what} does not decode: {why}")]
    Damaged {
        /// What.
        what: &'static str,
        /// Why.
        why: String,
    },
}

/// Which side of a call a receipt is from, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This node served the peer.
    Served,
    /// The peer served this node.
    Used,
}

impl Side {
    fn tag(self) -> u8 {
        match self {
            Side::Served => b's',
            Side::Used => b'u',
        }
    }
}

/// One change to write atomically.
#[derive(Debug, Default)]
pub struct Change {
    accounts: Vec<(NodeId, Vec<u8>)>,
    receipts: Vec<(NodeId, Side, u64, BlobHash, Vec<u8>)>,
    royalty_receipts: Vec<(NodeId, u64, Vec<u8>)>,
    allowance: Option<Allowance>,
}

impl Change {
    /// Writes `account` for `peer`.
    pub fn account(mut self, peer: NodeId, account: &Account) -> Change {
        self.accounts.push((peer, encode_account(account)));
        self
    }

    /// Writes a receipt with `peer`, the `n`-th of its side.
    pub fn receipt(
        mut self,
        peer: NodeId,
        side: Side,
        n: u64,
        id: BlobHash,
        receipt: &Receipt,
    ) -> Change {
        self.receipts.push((peer, side, n, id, receipt.to_bytes()));
        self
    }

    /// Writes a receipt behind a royalty owed to `payee`, the `n`-th.
    pub fn royalty_receipt(mut self, payee: NodeId, n: u64, receipt: &Receipt) -> Change {
        self.royalty_receipts.push((payee, n, receipt.to_bytes()));
        self
    }

    /// Writes the free allowance.
    pub fn allowance(mut self, allowance: Allowance) -> Change {
        self.allowance = Some(allowance);
        self
    }

    /// The (key, value) pairs it writes.
    fn into_pairs(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut pairs = Vec::with_capacity(
            self.accounts.len() + 2 * self.receipts.len() + self.royalty_receipts.len() + 1,
        );
        for (peer, account) in self.accounts {
            pairs.push((account_key(&peer), account));
        }
        for (peer, side, n, id, bytes) in self.receipts {
            let mut key = receipt_prefix(&peer, side);
            key.extend_from_slice(&n.to_be_bytes());
            pairs.push((key, bytes));
            pairs.push((index_key(&id), Vec::new()));
        }
        for (payee, n, bytes) in self.royalty_receipts {
            let mut key = royalty_prefix(&payee);
            key.extend_from_slice(&n.to_be_bytes());
            pairs.push((key, bytes));
        }
        if let Some(a) = self.allowance {
            let v = Value::Map(vec![
                (Value::text("tokens"), Value::Uint(a.tokens)),
                (Value::text("at_ms"), Value::Uint(a.at_ms)),
            ]);
            pairs.push((b"m".to_vec(), v.encode()));
        }
        pairs
    }
}

/// A key and its value.
type Pair = (Vec<u8>, Vec<u8>);

/// A journal record: length (u32 LE) ‖ the first 8 bytes of BLAKE3 of the payload ‖ the
/// payload, a CBOR array of `[key, value]` byte-string pairs.
fn record(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 19).sum();
    let mut out = Vec::with_capacity(12 + 9 + size);
    out.extend_from_slice(&[0; 12]);
    cbor::head(&mut out, 4, pairs.len() as u64);
    for (k, v) in pairs {
        cbor::head(&mut out, 4, 2);
        cbor::head(&mut out, 2, k.len() as u64);
        out.extend_from_slice(k);
        cbor::head(&mut out, 2, v.len() as u64);
        out.extend_from_slice(v);
    }
    let len = (out.len() - 12) as u32;
    let check = BlobHash::of(&out[12..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..12].copy_from_slice(&check.as_bytes()[..8]);
    out
}

/// Reads the whole records of one journal file into `into`, in order; stops at the first torn
/// or damaged one (a crash mid-write: what follows it was never acknowledged). Returns how
/// many.
fn replay(path: &Path, into: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Result<usize, StoreError> {
    let bytes = std::fs::read(path).map_err(|e| StoreError::Db(e.into()))?;
    let (mut at, mut count) = (0usize, 0usize);
    while bytes.len() >= at + 12 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4])) as usize;
        let end = at + 12 + len;
        if len > MAX_RECORD_BYTES || end > bytes.len() {
            break;
        }
        let payload = &bytes[at + 12..end];
        if BlobHash::of(payload).as_bytes()[..8] != bytes[at + 4..at + 12] {
            break;
        }
        let Ok(Value::Array(items)) = Value::decode(payload, MAX_RECORD_BYTES) else {
            break;
        };
        for item in items {
            if let Value::Array(kv) = item
                && let [Value::Bytes(k), Value::Bytes(v)] = kv.as_slice()
            {
                into.insert(k.clone(), v.clone());
            }
        }
        at = end;
        count += 1;
    }
    Ok(count)
}

/// How often, at most, the changes journaled since the last checkpoint are written to sled,
/// sled flushed to disk and their journal deleted (in the background: no change waits for it).
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Journal bytes after which a checkpoint starts at once, whatever the time: with what a
/// checkpoint in progress holds, the changes kept in memory until they are in sled stay near
/// twice this.
pub const CHECKPOINT_BYTES: u64 = 8 << 20;
/// The largest journal record (a change is a few accounts and receipts).
const MAX_RECORD_BYTES: usize = 1 << 20;

/// The journal generations in `dir`, oldest first: `journal.N` is generation N; a `journal`
/// without a number (written by an older version) is generation 0.
fn journals(dir: &Path) -> Result<Vec<(u64, std::path::PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::Db(e.into()))? {
        let entry = entry.map_err(|e| StoreError::Db(e.into()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let generation = match name.strip_prefix("journal") {
            Some("") => 0,
            Some(n) => match n.strip_prefix('.').and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => n,
                None => continue,
            },
            None => continue,
        };
        found.push((generation, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Creates the (empty) journal of generation `generation` in `dir`, for appending.
fn create_journal(dir: &Path, generation: u64) -> Result<std::fs::File, StoreError> {
    let path = dir.join(format!("journal.{generation}"));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Db(e.into())),
    }
    std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| StoreError::Db(e.into()))
}

/// Changes that are journaled but not yet in sled, and the journal they go to.
struct Journal {
    /// The journal file changes are appended to, of generation `generation`.
    file: std::fs::File,
    generation: u64,
    /// Its length (the end of the last whole record).
    bytes: u64,
    /// What was journaled since the last checkpoint began (its newest value per key).
    pending: BTreeMap<Vec<u8>, Vec<u8>>,
    /// What a checkpoint is writing to sled (journaled in generation `generation - 1`).
    flushing: Option<std::sync::Arc<BTreeMap<Vec<u8>, Vec<u8>>>>,
    /// The store is closing: the checkpointer's last round.
    closing: bool,
}

/// What the store and its checkpointer share.
struct Shared {
    dir: std::path::PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    journal: std::sync::Mutex<Journal>,
    /// Wakes the checkpointer early (journal full, closing).
    wake: std::sync::Condvar,
    /// Held through a checkpoint: one at a time, so an older generation's batch never lands
    /// in sled after a newer one's.
    checkpointing: std::sync::Mutex<()>,
}

impl Shared {
    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what was journaled to sled, flushes sled and deletes its journal. The journal
    /// is switched to a new generation first, so changes go on meanwhile; a failed checkpoint
    /// keeps its changes (in memory and in their journal) and the next one retries them.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let (changes, generation) = {
            let mut journal = self.journal();
            match &journal.flushing {
                Some(changes) => (changes.clone(), journal.generation - 1),
                None if journal.pending.is_empty() => return Ok(()),
                None => {
                    let next = create_journal(&self.dir, journal.generation + 1)?;
                    let changes = std::sync::Arc::new(std::mem::take(&mut journal.pending));
                    journal.flushing = Some(changes.clone());
                    journal.file = next;
                    journal.generation += 1;
                    journal.bytes = 0;
                    (changes, journal.generation - 1)
                }
            }
        };
        let mut batch = sled::Batch::default();
        for (k, v) in changes.iter() {
            batch.insert(k.as_slice(), v.as_slice());
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        self.journal().flushing = None;
        let old = self.dir.join(format!("journal.{generation}"));
        if let Err(e) = std::fs::remove_file(&old)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            // Replaying it again changes nothing (its records are absolute values).
            tracing::warn!("credits: deleting {}: {e}", old.display());
        }
        Ok(())
    }

    /// The checkpointer: a checkpoint every [`CHECKPOINT_EVERY`], or sooner when woken, until
    /// the store closes (then a last one).
    fn checkpoints(&self) {
        loop {
            let closing = {
                let journal = self.journal();
                let (journal, _) = self
                    .wake
                    .wait_timeout_while(journal, CHECKPOINT_EVERY, |j| {
                        !j.closing && j.bytes < CHECKPOINT_BYTES
                    })
                    .unwrap_or_else(|p| p.into_inner());
                journal.closing
            };
            if let Err(e) = self.checkpoint() {
                tracing::warn!("credits: checkpoint failed (the journal keeps the changes): {e}");
                if !closing {
                    // Not again at once, whatever the journal's size.
                    let journal = self.journal();
                    drop(
                        self.wake
                            .wait_timeout_while(journal, CHECKPOINT_EVERY, |j| !j.closing)
                            .unwrap_or_else(|p| p.into_inner()),
                    );
                }
            }
            // A change made while the last round ran is in the next generation: once more.
            if closing {
                if let Err(e) = self.checkpoint() {
                    tracing::warn!(
                        "credits: last checkpoint failed (the journal keeps the changes): {e}"
                    );
                }
                return;
            }
        }
    }
}

/// The ledger's sled database, its journal, and the changes not yet in sled.
pub struct LedgerStore {
    shared: std::sync::Arc<Shared>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

fn account_key(peer: &NodeId) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(b'a');
    k.extend_from_slice(peer.as_bytes());
    k
}

fn receipt_prefix(peer: &NodeId, side: Side) -> Vec<u8> {
    let mut k = Vec::with_capacity(42);
    k.push(b'r');
    k.extend_from_slice(peer.as_bytes());
    k.push(side.tag());
    k
}

fn royalty_prefix(payee: &NodeId) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(b'y');
    k.extend_from_slice(payee.as_bytes());
    k
}

fn index_key(id: &BlobHash) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(b'i');
    k.extend_from_slice(id.as_bytes());
    k
}

/// At most `limit` entries of `map` from `start` on whose keys begin with `prefix`.
fn overlay_scan(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    prefix: &[u8],
    limit: usize,
    into: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) {
    use std::ops::Bound;
    for (k, v) in map
        .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .take(limit)
    {
        into.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

impl LedgerStore {
    /// Opens (or creates) the ledger in `dir` (`dir/db`, sled; `dir/journal.N`), replaying what
    /// the journals hold, and starts its checkpointer.
    pub fn open(dir: &Path) -> Result<LedgerStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(e.into()))?;
        // Flushed by the checkpoints, not on sled's own timer.
        let db = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("credits")?;
        let found = journals(dir)?;
        let mut replayed = BTreeMap::new();
        let mut records = 0;
        for (_, path) in &found {
            records += replay(path, &mut replayed)?;
        }
        if !replayed.is_empty() {
            let mut batch = sled::Batch::default();
            for (k, v) in &replayed {
                batch.insert(k.as_slice(), v.as_slice());
            }
            tree.apply_batch(batch)?;
        }
        db.flush()?;
        for (_, path) in &found {
            std::fs::remove_file(path).map_err(|e| StoreError::Db(e.into()))?;
        }
        if records > 0 {
            tracing::info!(records, "credits: replayed changes from the journal");
        }
        let generation = found.last().map_or(1, |(g, _)| g + 1);
        let file = create_journal(dir, generation)?;
        let shared = std::sync::Arc::new(Shared {
            dir: dir.to_path_buf(),
            db,
            tree,
            journal: std::sync::Mutex::new(Journal {
                file,
                generation,
                bytes: 0,
                pending: BTreeMap::new(),
                flushing: None,
                closing: false,
            }),
            wake: std::sync::Condvar::new(),
            checkpointing: std::sync::Mutex::new(()),
        });
        let checkpointer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("credits-checkpoint".into())
                .spawn(move || shared.checkpoints())
                .map_err(|e| StoreError::Db(e.into()))?
        };
        Ok(LedgerStore {
            shared,
            checkpointer: Some(checkpointer),
        })
    }

    /// The value of `key`: the newest journaled one, else sled's.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        {
            let journal = self.shared.journal();
            if let Some(v) = journal.pending.get(key).or_else(|| {
                journal
                    .flushing
                    .as_ref()
                    .and_then(|changes| changes.get(key))
            }) {
                return Ok(Some(v.clone()));
            }
        }
        Ok(self.shared.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// At most `limit` entries from `start` on whose keys begin with `prefix`, in key order:
    /// the newest journaled values over sled's. (The journaled ones are read first: what a
    /// checkpoint moves to sled meanwhile was already found.)
    fn scan(&self, start: &[u8], prefix: &[u8], limit: usize) -> Result<Vec<Pair>, StoreError> {
        let mut found = BTreeMap::new();
        {
            let journal = self.shared.journal();
            overlay_scan(&journal.pending, start, prefix, limit, &mut found);
            if let Some(changes) = &journal.flushing {
                overlay_scan(changes, start, prefix, limit, &mut found);
            }
        }
        for item in self.shared.tree.range(start..).take(limit) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            found.entry(k.to_vec()).or_insert_with(|| v.to_vec());
        }
        Ok(found.into_iter().take(limit).collect())
    }

    /// Every account kept.
    pub fn accounts(&self) -> Result<BTreeMap<NodeId, Account>, StoreError> {
        let mut out = BTreeMap::new();
        for (k, v) in self.scan(b"a", b"a", usize::MAX)? {
            let id: [u8; 32] = k[1..].try_into().map_err(|_| StoreError::Damaged {
                what: "account key",
                why: format!("{} bytes", k.len()),
            })?;
            let peer = NodeId::from_bytes(id).map_err(|e| StoreError::Damaged {
                what: "account key",
                why: e.to_string(),
            })?;
            let account = decode_account(&v).map_err(|e| StoreError::Damaged {
                what: "account",
                why: e.to_string(),
            })?;
            out.insert(peer, account);
        }
        Ok(out)
    }

    /// The free allowance kept, if any.
    pub fn allowance(&self) -> Result<Option<Allowance>, StoreError> {
        let Some(v) = self.get(b"m")? else {
            return Ok(None);
        };
        let damaged = |why: String| StoreError::Damaged {
            what: "allowance",
            why,
        };
        let value = Value::decode(&v, 256).map_err(|e| damaged(e.to_string()))?;
        let mut m = MapReader::new("allowance", value).map_err(|e| damaged(e.to_string()))?;
        let mut get = |k: &'static str| {
            m.required(k)
                .and_then(|v| as_u64(k, v))
                .map_err(|e| damaged(e.to_string()))
        };
        Ok(Some(Allowance {
            tokens: get("tokens")?,
            at_ms: get("at_ms")?,
            reserved: 0,
        }))
    }

    /// Whether the receipt `id` is recorded.
    pub fn has_receipt(&self, id: &BlobHash) -> Result<bool, StoreError> {
        Ok(self.get(&index_key(id))?.is_some())
    }

    /// The receipts with `peer` on one side, oldest first.
    pub fn receipts(&self, peer: &NodeId, side: Side) -> Result<Vec<Receipt>, StoreError> {
        let prefix = receipt_prefix(peer, side);
        self.scan(&prefix, &prefix, usize::MAX)?
            .into_iter()
            .map(|(_, v)| {
                Receipt::from_bytes(&v).map_err(|e| StoreError::Damaged {
                    what: "receipt",
                    why: e.to_string(),
                })
            })
            .collect()
    }

    /// At most `limit` receipts with `peer` on one side, from the `from`-th on, with their
    /// bytes as stored.
    pub fn receipts_range(
        &self,
        peer: &NodeId,
        side: Side,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.numbered(receipt_prefix(peer, side), from, limit)
    }

    /// At most `limit` values under `prefix` ‖ n (u64 BE), from n = `from` on.
    fn numbered(
        &self,
        prefix: Vec<u8>,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut start = prefix.clone();
        start.extend_from_slice(&from.to_be_bytes());
        Ok(self
            .scan(&start, &prefix, limit)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// At most `limit` receipts behind royalties owed to `payee`, from the `from`-th on.
    pub fn royalty_receipts(
        &self,
        payee: &NodeId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.numbered(royalty_prefix(payee), from, limit)
    }

    /// Writes `change`: one journal record, handed to the OS before this returns (a killed
    /// process loses none of it), and seen by every read from then on; the checkpointer moves
    /// it to sled. On an error nothing of it stays.
    pub fn apply(&self, change: Change) -> Result<(), StoreError> {
        let pairs = change.into_pairs();
        let record = record(&pairs);
        let mut journal = self.shared.journal();
        let before = journal.bytes;
        use std::io::Write;
        if let Err(e) = journal.file.write_all(&record) {
            if let Err(cut) = journal.file.set_len(before) {
                tracing::error!("credits: cutting a failed record off the journal: {cut}");
            }
            return Err(StoreError::Db(e.into()));
        }
        journal.bytes = before + record.len() as u64;
        journal.pending.extend(pairs);
        if journal.bytes >= CHECKPOINT_BYTES {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Writes every change to sled and flushes it now (as the checkpointer does each
    /// [`CHECKPOINT_EVERY`]); for a clean shutdown, a backup, or a test.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        // Twice: the first may only retry one that failed before.
        self.shared.checkpoint()?;
        self.shared.checkpoint()
    }
}

impl Drop for LedgerStore {
    /// Stops the checkpointer after a last checkpoint.
    fn drop(&mut self) {
        self.shared.journal().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.checkpointer.take()
            && thread.join().is_err()
        {
            tracing::error!("credits: the checkpointer panicked (the journal keeps the changes)");
        }
    }
}

fn cheque_to_cbor(c: &ChequeState) -> Value {
    Value::Map(vec![
        (Value::text("epoch"), Value::Uint(c.epoch)),
        (Value::text("seq"), Value::Uint(c.seq)),
        (Value::text("calls"), Value::Uint(c.calls)),
        (Value::text("royalties"), Value::Uint(c.royalties)),
        (Value::text("envelope"), Value::Bytes(c.envelope.clone())),
    ])
}

fn cheque_from_cbor(v: Value) -> Result<ChequeState, DecodeError> {
    let mut m = MapReader::new("kept cheque", v)?;
    let state = ChequeState {
        epoch: as_u64("epoch", m.required("epoch")?)?,
        seq: as_u64("seq", m.required("seq")?)?,
        calls: as_u64("calls", m.required("calls")?)?,
        royalties: as_u64("royalties", m.required("royalties")?)?,
        envelope: match m.required("envelope")? {
            Value::Bytes(b) => b,
            _ => return Err(DecodeError::invalid("kept cheque", "envelope is not bytes")),
        },
    };
    m.finish()?;
    Ok(state)
}

/// An account as stored: a deterministic CBOR map.
pub fn encode_account(a: &Account) -> Vec<u8> {
    let mut entries = vec![
        (Value::text("served"), Value::Uint(a.served)),
        (Value::text("served_calls"), Value::Uint(a.served_calls)),
        (Value::text("used"), Value::Uint(a.used)),
        (Value::text("used_calls"), Value::Uint(a.used_calls)),
        (Value::text("forgiven"), Value::Uint(a.forgiven)),
        (Value::text("royalties_owed"), Value::Uint(a.royalties_owed)),
        (Value::text("royalty_calls"), Value::Uint(a.royalty_calls)),
    ];
    if let Some(c) = &a.cheque_in {
        entries.push((Value::text("cheque_in"), cheque_to_cbor(c)));
    }
    if let Some(c) = &a.cheque_out {
        entries.push((Value::text("cheque_out"), cheque_to_cbor(c)));
    }
    if let Some(r) = &a.last_served {
        entries.push((
            Value::text("last_served"),
            Value::Bytes(r.as_bytes().to_vec()),
        ));
    }
    if let Some(r) = &a.last_used {
        entries.push((
            Value::text("last_used"),
            Value::Bytes(r.as_bytes().to_vec()),
        ));
    }
    Value::Map(entries).encode()
}

/// Decodes a stored account.
pub fn decode_account(bytes: &[u8]) -> Result<Account, DecodeError> {
    let mut m = MapReader::new("account", Value::decode(bytes, 4096)?)?;
    let hash = |v: Value| as_array::<32>("receipt id", v).map(BlobHash::from_bytes);
    let account = Account {
        served: as_u64("served", m.required("served")?)?,
        served_calls: as_u64("served_calls", m.required("served_calls")?)?,
        used: as_u64("used", m.required("used")?)?,
        used_calls: as_u64("used_calls", m.required("used_calls")?)?,
        forgiven: as_u64("forgiven", m.required("forgiven")?)?,
        royalties_owed: as_u64("royalties_owed", m.required("royalties_owed")?)?,
        royalty_calls: as_u64("royalty_calls", m.required("royalty_calls")?)?,
        cheque_in: m.optional("cheque_in").map(cheque_from_cbor).transpose()?,
        cheque_out: m.optional("cheque_out").map(cheque_from_cbor).transpose()?,
        last_served: m.optional("last_served").map(hash).transpose()?,
        last_used: m.optional("last_used").map(hash).transpose()?,
    };
    m.finish()?;
    Ok(account)
}
