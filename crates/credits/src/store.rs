//! The ledger on disk: a sled database with the accounts, the receipts behind them and the free
//! allowance, in front of it a journal. Each change is one record appended to the journal
//! (`write(2)`, so in the OS's hands: a killed process loses none of it) and one atomic sled
//! batch, both before [`LedgerStore::apply`] returns, so before the caller sends anything that
//! depends on it (a reply with a signed result, a cheque, the acknowledgement of a cheque). A
//! kill at any point therefore loses no credit and counts none twice: a receipt is written once
//! (its id is its key), and cheques are cumulative. At most every [`CHECKPOINT_EVERY`] (or
//! [`CHECKPOINT_BYTES`] of journal) sled is flushed to disk (an fsync) and the journal emptied;
//! a start replays what the journal still holds (records are absolute values: replaying one
//! twice changes nothing), up to the first torn record. So one fsync a second is shared by every
//! change, instead of one per change; a power cut (not a kill) may lose the last second.
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

use protocol::cbor::{MapReader, Value, as_array, as_u64};
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
    accounts: Vec<(NodeId, Account)>,
    receipts: Vec<(NodeId, Side, u64, BlobHash, Vec<u8>)>,
    royalty_receipts: Vec<(NodeId, u64, Vec<u8>)>,
    allowance: Option<Allowance>,
}

impl Change {
    /// Writes `account` for `peer`.
    pub fn account(mut self, peer: NodeId, account: &Account) -> Change {
        self.accounts.push((peer, account.clone()));
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
    fn pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut pairs = Vec::new();
        for (peer, account) in &self.accounts {
            pairs.push((account_key(peer), encode_account(account)));
        }
        for (peer, side, n, id, bytes) in &self.receipts {
            let mut key = receipt_prefix(peer, *side);
            key.extend_from_slice(&n.to_be_bytes());
            pairs.push((key, bytes.clone()));
            pairs.push((index_key(id), Vec::new()));
        }
        for (payee, n, bytes) in &self.royalty_receipts {
            let mut key = royalty_prefix(payee);
            key.extend_from_slice(&n.to_be_bytes());
            pairs.push((key, bytes.clone()));
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

/// A journal record: length (u32 LE) ‖ the first 8 bytes of BLAKE3 of the payload ‖ the
/// payload, a CBOR array of `[key, value]` byte-string pairs.
fn record(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let payload = Value::Array(
        pairs
            .iter()
            .map(|(k, v)| Value::Array(vec![Value::Bytes(k.clone()), Value::Bytes(v.clone())]))
            .collect(),
    )
    .encode();
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&BlobHash::of(&payload).as_bytes()[..8]);
    out.extend_from_slice(&payload);
    out
}

/// Applies the journal's whole records to `tree`, in order; stops at the first torn or damaged
/// one (a crash mid-write: what follows it was never acknowledged). Returns how many.
fn replay(file: &mut std::fs::File, tree: &sled::Tree) -> Result<usize, StoreError> {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    file.seek(std::io::SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| StoreError::Db(e.into()))?;
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
        let mut batch = sled::Batch::default();
        for item in items {
            if let Value::Array(kv) = item
                && let [Value::Bytes(k), Value::Bytes(v)] = kv.as_slice()
            {
                batch.insert(k.as_slice(), v.as_slice());
            }
        }
        tree.apply_batch(batch)?;
        at = end;
        count += 1;
    }
    Ok(count)
}

/// How often, at most, sled is flushed and the journal emptied.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Journal bytes after which sled is flushed and the journal emptied, whatever the time.
pub const CHECKPOINT_BYTES: u64 = 8 << 20;
/// The largest journal record (a change is a few accounts and receipts).
const MAX_RECORD_BYTES: usize = 1 << 20;

/// The journal: changes written since sled's last flush.
struct Journal {
    file: std::fs::File,
    /// Its length (the end of the last whole record).
    bytes: u64,
    last_checkpoint: std::time::Instant,
}

/// The ledger's sled database and its journal.
pub struct LedgerStore {
    db: sled::Db,
    tree: sled::Tree,
    journal: std::sync::Mutex<Journal>,
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

impl LedgerStore {
    /// Opens (or creates) the ledger in `dir` (`dir/db`, sled; `dir/journal`), replaying what
    /// the journal holds.
    pub fn open(dir: &Path) -> Result<LedgerStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(e.into()))?;
        let db = sled::Config::new().path(dir.join("db")).open()?;
        let tree = db.open_tree("credits")?;
        let path = dir.join("journal");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::Db(e.into()))?;
        let replayed = replay(&mut file, &tree)?;
        db.flush()?;
        file.set_len(0).map_err(|e| StoreError::Db(e.into()))?;
        if replayed > 0 {
            tracing::info!(replayed, "credits: replayed changes from the journal");
        }
        Ok(LedgerStore {
            db,
            tree,
            journal: std::sync::Mutex::new(Journal {
                file,
                bytes: 0,
                last_checkpoint: std::time::Instant::now(),
            }),
        })
    }

    /// Every account kept.
    pub fn accounts(&self) -> Result<BTreeMap<NodeId, Account>, StoreError> {
        let mut out = BTreeMap::new();
        for item in self.tree.scan_prefix(b"a") {
            let (k, v) = item?;
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
        let Some(v) = self.tree.get(b"m")? else {
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
        Ok(self.tree.contains_key(index_key(id))?)
    }

    /// The receipts with `peer` on one side, oldest first.
    pub fn receipts(&self, peer: &NodeId, side: Side) -> Result<Vec<Receipt>, StoreError> {
        self.tree
            .scan_prefix(receipt_prefix(peer, side))
            .map(|item| {
                let (_, v) = item?;
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
        let mut end = prefix;
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        self.tree
            .range(start..=end)
            .take(limit)
            .map(|item| Ok(item?.1.to_vec()))
            .collect()
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

    /// Writes `change`: one journal record (handed to the OS before this returns) and one
    /// atomic sled batch. On an error nothing of it stays.
    pub fn apply(&self, change: Change) -> Result<(), StoreError> {
        let pairs = change.pairs();
        let record = record(&pairs);
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let before = journal.bytes;
        let undo = |journal: &mut Journal| {
            if let Err(e) = journal.file.set_len(before) {
                tracing::error!("credits: cutting a failed record off the journal: {e}");
            }
        };
        use std::io::Write;
        if let Err(e) = journal.file.write_all(&record) {
            undo(&mut journal);
            return Err(StoreError::Db(e.into()));
        }
        let mut batch = sled::Batch::default();
        for (k, v) in &pairs {
            batch.insert(k.as_slice(), v.as_slice());
        }
        if let Err(e) = self.tree.apply_batch(batch) {
            undo(&mut journal);
            return Err(e.into());
        }
        journal.bytes = before + record.len() as u64;
        if journal.bytes >= CHECKPOINT_BYTES
            || journal.last_checkpoint.elapsed() >= CHECKPOINT_EVERY
        {
            // Everything journaled is in sled (both happen under this lock): once sled is on
            // disk the journal can go.
            match self.db.flush() {
                Ok(_) => match journal.file.set_len(0) {
                    Ok(()) => {
                        journal.bytes = 0;
                        journal.last_checkpoint = std::time::Instant::now();
                    }
                    Err(e) => tracing::warn!("credits: emptying the journal: {e}"),
                },
                Err(e) => {
                    tracing::warn!("credits: flushing the ledger (the journal keeps it): {e}")
                }
            }
        }
        Ok(())
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
