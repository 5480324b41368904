//! The ledger on disk: a sled database with the accounts, the receipts behind them and the free
//! allowance. Each change is one atomic batch ([`LedgerStore::write`]), made durable
//! ([`LedgerStore::durable`]) before the caller sends anything that depends on it (a reply with
//! a signed result, a cheque, the acknowledgement of a cheque), so a kill at any point loses no
//! credit and counts none twice: a receipt is written once (its id is its key), and cheques are
//! cumulative. Durability is a group commit: one flush (an fsync) covers every change written
//! before it started, so concurrent calls share flushes instead of queueing for one each.
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
}

/// A change written but perhaps not yet durable: wait for it with [`LedgerStore::durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a written change is durable only once `durable` returns"]
pub struct Ticket(u64);

#[derive(Debug, Default)]
struct Flushes {
    /// Changes written.
    written: u64,
    /// Changes known durable.
    flushed: u64,
    /// A flush is running.
    flushing: bool,
}

/// The ledger's sled database.
pub struct LedgerStore {
    db: sled::Db,
    tree: sled::Tree,
    flushes: std::sync::Mutex<Flushes>,
    flushed: std::sync::Condvar,
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
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<LedgerStore, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree("credits")?;
        Ok(LedgerStore {
            db,
            tree,
            flushes: std::sync::Mutex::default(),
            flushed: std::sync::Condvar::new(),
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
        let prefix = receipt_prefix(peer, side);
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
        let prefix = royalty_prefix(payee);
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

    /// Writes `change` atomically and waits until it is durable.
    pub fn apply(&self, change: Change) -> Result<(), StoreError> {
        let ticket = self.write(change)?;
        self.durable(ticket)
    }

    /// Waits until the change of `ticket` (and every one written before it) is on disk: joins
    /// the flush that will cover it, or runs one.
    pub fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        let lock = || self.flushes.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = lock();
        loop {
            if state.flushed >= ticket.0 {
                return Ok(());
            }
            if !state.flushing {
                state.flushing = true;
                let target = state.written;
                drop(state);
                let flushed = self.db.flush();
                state = lock();
                state.flushing = false;
                if flushed.is_ok() {
                    state.flushed = state.flushed.max(target);
                }
                self.flushed.notify_all();
                flushed?;
                continue;
            }
            state = self.flushed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Writes `change` atomically (not yet durable: see [`LedgerStore::durable`]).
    pub fn write(&self, change: Change) -> Result<Ticket, StoreError> {
        let mut batch = sled::Batch::default();
        for (peer, account) in &change.accounts {
            batch.insert(account_key(peer), encode_account(account));
        }
        for (peer, side, n, id, bytes) in &change.receipts {
            let mut key = receipt_prefix(peer, *side);
            key.extend_from_slice(&n.to_be_bytes());
            batch.insert(key, bytes.as_slice());
            batch.insert(index_key(id), &[][..]);
        }
        for (payee, n, bytes) in &change.royalty_receipts {
            let mut key = royalty_prefix(payee);
            key.extend_from_slice(&n.to_be_bytes());
            batch.insert(key, bytes.as_slice());
        }
        if let Some(a) = change.allowance {
            let v = Value::Map(vec![
                (Value::text("tokens"), Value::Uint(a.tokens)),
                (Value::text("at_ms"), Value::Uint(a.at_ms)),
            ]);
            batch.insert(&b"m"[..], v.encode());
        }
        self.tree.apply_batch(batch)?;
        let mut state = self.flushes.lock().unwrap_or_else(|p| p.into_inner());
        state.written += 1;
        Ok(Ticket(state.written))
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
