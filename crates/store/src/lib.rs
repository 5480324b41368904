//! moxnet's content-addressed blob store.
//!
//! ```
//! # fn main() -> Result<(), store::StoreError> {
//! let dir = tempfile::tempdir().expect("tempdir");
//! let store = store::Store::open(dir.path())?;
//! let imported = store.import_bytes(b"hello", "raw", Vec::new())?;
//! // A raw blob's hash is its BLAKE3 hash, as printed by `b3sum`.
//! assert_eq!(imported.hash, protocol::BlobHash::of(b"hello"));
//! store.pin(imported.hash)?;
//! let mut out = Vec::new();
//! store.read_to(imported.hash, &mut out)?;
//! assert_eq!(out, b"hello");
//! # Ok(()) }
//! ```
//!
//! # Concepts
//! - A **blob** is named by the BLAKE3 hash of its bytes ([`protocol::BlobHash`]). Its bytes
//!   live in `blobs/<hash>.data`, or, for a `.safetensors` file, as the concatenation of one
//!   blob per tensor plus the header ([`Layout::Parts`]): two training snapshots that share
//!   tensors share storage. Every blob has a post-order BLAKE3 **outboard**
//!   (`blobs/<hash>.obao`, bao-tree, 16 KiB chunk groups), so any range can be served with its
//!   proof ([`Store::read_ranges`]).
//! - **Indexes** are sled trees under `meta/`: `blobs` (hash → [`BlobRecord`]), `pins`,
//!   `partial` (blobs being received), `manifests`, `heads` (snapshot chain heads).
//! - **Partial blobs** receive proven ranges from untrusted peers ([`Store::ingest`]); each
//!   16 KiB group is verified against the root hash *before* it is written, and the blob
//!   becomes visible only once every group verified.
//! - **Invariant:** a blob is never visible before it is whole. Data is written to `tmp/`,
//!   fsynced, renamed into `blobs/`, the directory fsynced, and only then indexed (and the index
//!   flushed). A crash at any point leaves either no trace or an unindexed file that
//!   [`Store::gc`] removes.
//! - **Pins and GC**: [`Store::gc`] deletes every blob not reachable from a pin through
//!   [`BlobRecord::links`] and parts. [`Store::verify`] re-hashes blobs and reports every
//!   corrupt or missing one.

mod export;
mod import;
mod partial;
mod reader;
mod record;
mod safetensors;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bao_tree::{BaoTree, BlockSize};
use protocol::{BlobHash, DecodeError};

pub use bao_tree::ChunkRanges;
pub use export::{Problem, VerifyReport};
pub use import::{Imported, walk};
pub use partial::{IngestError, IngestOutcome};
pub use reader::BlobReader;
pub use record::{BlobRecord, Layout, PartialRecord};

/// bao-tree block size: 16 KiB chunk groups.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(protocol::CHUNK_GROUP_LOG);
/// On-disk layout version of a store; a store with another version is refused.
pub const STORE_VERSION: u32 = 1;

/// Number of 16 KiB chunk groups of a blob of `size` bytes (an empty blob has one, empty).
pub fn groups(size: u64) -> u64 {
    size.div_ceil(protocol::CHUNK_GROUP_BYTES).max(1)
}

/// The chunk ranges (1 KiB chunks) covering chunk-group ranges `[start, end)` (16 KiB groups),
/// as the blob protocol's requests name them.
pub fn chunk_ranges(groups: &[(u64, u64)]) -> ChunkRanges {
    let per_group = protocol::CHUNK_GROUP_BYTES / 1024;
    let mut ranges = ChunkRanges::empty();
    for (start, end) in groups {
        ranges |= ChunkRanges::from(
            bao_tree::ChunkNum(start * per_group)..bao_tree::ChunkNum(end * per_group),
        );
    }
    ranges
}

/// The chunk-group ranges of a blob of `size` bytes that `ranges` (from [`Store::missing`])
/// touch: what to ask peers for.
pub fn group_ranges(ranges: &ChunkRanges, size: u64) -> Vec<(u64, u64)> {
    let per_group = protocol::CHUNK_GROUP_BYTES / 1024;
    let total = groups(size);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in ranges.iter() {
        let (start, end) = match r {
            range_collections::range_set::RangeSetRange::Range(r) => (r.start.0, r.end.0),
            range_collections::range_set::RangeSetRange::RangeFrom(r) => (r.start.0, u64::MAX),
        };
        let g_start = (start / per_group).min(total);
        let g_end = end.div_ceil(per_group).min(total);
        if g_start < g_end {
            match out.last_mut() {
                Some(last) if last.1 >= g_start => last.1 = last.1.max(g_end),
                _ => out.push((g_start, g_end)),
            }
        }
    }
    out
}

pub(crate) fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BLOCK_SIZE)
}

/// What went wrong, and what the caller should do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The blob is not in this store (or not complete yet): add or fetch it first.
    #[error("blob {hash} is not in the store")]
    NotFound {
        /// The blob.
        hash: BlobHash,
    },
    /// Stored bytes do not match their hash: run `verify`, then re-add or re-fetch the blob.
    #[error("blob {hash} is corrupt: {reason}")]
    Corrupt {
        /// The blob.
        hash: BlobHash,
        /// What is wrong.
        reason: String,
    },
    /// The disk is full; nothing partial was left visible. Free space and retry.
    #[error("disk full while {context}; nothing was stored")]
    DiskFull {
        /// What was being done.
        context: String,
    },
    /// Another process has this store open (sled holds a lock); stop it or wait.
    #[error("the store at {path} is in use by another moxnet process")]
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// The directory is not a moxnet store, or one of an unsupported layout version.
    #[error("{path} is not a moxnet store: {reason}")]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Bad input from the user (a path that cannot be imported or exported).
    #[error("{0}")]
    Invalid(String),
    /// An index record or object could not be decoded: the index is damaged.
    #[error("damaged index record: {0}")]
    Record(#[from] DecodeError),
    /// Filesystem error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The sled index failed.
    #[error("index error: {0}")]
    Db(#[from] sled::Error),
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds what was being done to an I/O error, turning ENOSPC into [`StoreError::DiskFull`].
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| io_error(context(), source))
    }
}

pub(crate) fn io_error(context: String, source: io::Error) -> StoreError {
    if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(libc_enospc()) {
        StoreError::DiskFull { context }
    } else {
        StoreError::Io { context, source }
    }
}

const fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux and macOS
}

/// A content-addressed store rooted at one directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    db: sled::Db,
    blobs: sled::Tree,
    pins: sled::Tree,
    partial: sled::Tree,
    manifests: sled::Tree,
    heads: sled::Tree,
    /// Blobs `gc` took out of the index whose files may still be on disk (a crash between the
    /// two): the next `gc` deletes their files. No other unindexed file is ever deleted.
    doomed: sled::Tree,
    /// Serialises making blobs visible (rename + index) against [`Store::gc`].
    commit: std::sync::Mutex<()>,
    /// Serialises updates of partial-blob records between concurrent ingests.
    partial_lock: std::sync::Mutex<()>,
    // Lock order: `partial_lock`, then `commit` (an ingest completes a blob holding both).
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        for sub in ["blobs", "partial", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        let version_file = root.join("VERSION");
        match fs::read_to_string(&version_file) {
            Ok(v) if v.trim() == STORE_VERSION.to_string() => {}
            Ok(v) => {
                return Err(StoreError::NotAStore {
                    path: root,
                    reason: format!(
                        "layout version {:?}, this build reads {STORE_VERSION}",
                        v.trim()
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_durably(&version_file, format!("{STORE_VERSION}\n").as_bytes())?;
            }
            Err(e) => return Err(io_error(format!("reading {}", version_file.display()), e)),
        }
        let db = open_index(&root)?;
        let store = Store {
            blobs: db.open_tree("blobs")?,
            pins: db.open_tree("pins")?,
            partial: db.open_tree("partial")?,
            manifests: db.open_tree("manifests")?,
            heads: db.open_tree("heads")?,
            doomed: db.open_tree("doomed")?,
            commit: std::sync::Mutex::new(()),
            partial_lock: std::sync::Mutex::new(()),
            db,
            root,
        };
        // Temp files of an interrupted write are garbage: nothing refers to them.
        let tmp = store.root.join("tmp");
        for entry in fs::read_dir(&tmp).ctx(|| format!("listing {}", tmp.display()))? {
            let entry = entry.ctx(|| format!("listing {}", tmp.display()))?;
            let _ = fs::remove_file(entry.path());
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes this user may still write on the store's filesystem.
    pub fn available_bytes(&self) -> Result<u64> {
        fs2::available_space(&self.root)
            .ctx(|| format!("reading the free space of {}", self.root.display()))
    }

    pub(crate) fn commit_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.commit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn data_path(&self, hash: &BlobHash) -> PathBuf {
        self.root.join("blobs").join(format!("{hash}.data"))
    }

    pub(crate) fn outboard_path(&self, hash: &BlobHash) -> PathBuf {
        self.root.join("blobs").join(format!("{hash}.obao"))
    }

    pub(crate) fn temp_path(&self, suffix: &str) -> TempPath {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        TempPath::new(
            self.root
                .join("tmp")
                .join(format!("{}-{n}.{suffix}", std::process::id())),
        )
    }

    /// The index record of a complete blob.
    pub fn record(&self, hash: BlobHash) -> Result<Option<BlobRecord>> {
        self.blobs
            .get(hash.as_bytes())?
            .map(|v| BlobRecord::decode(&v).map_err(StoreError::from))
            .transpose()
    }

    pub(crate) fn require(&self, hash: BlobHash) -> Result<BlobRecord> {
        self.record(hash)?.ok_or(StoreError::NotFound { hash })
    }

    /// Whether a complete blob is present.
    pub fn has(&self, hash: BlobHash) -> Result<bool> {
        Ok(self.blobs.contains_key(hash.as_bytes())?)
    }

    /// Every complete blob with its record, in hash order.
    pub fn list(&self) -> Result<Vec<(BlobHash, BlobRecord)>> {
        self.blobs
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((key_hash(&k)?, BlobRecord::decode(&v)?))
            })
            .collect()
    }

    /// The one file holding a complete blob's bytes, or `None` when the blob is stored in
    /// parts: for engines that map a model read-only instead of copying it (llama.cpp maps a
    /// GGUF file). Nothing may write to it.
    pub fn data_file(&self, hash: BlobHash) -> Result<Option<PathBuf>> {
        let record = self.require(hash)?;
        Ok(match record.layout {
            Layout::File => Some(self.data_path(&hash)),
            Layout::Parts(_) => None,
        })
    }

    /// Opens a complete blob's bytes for reading (without verifying them).
    pub fn open_blob(&self, hash: BlobHash) -> Result<BlobReader> {
        let record = self.require(hash)?;
        self.open_record(hash, &record)
    }

    pub(crate) fn open_record(&self, hash: BlobHash, record: &BlobRecord) -> Result<BlobReader> {
        let open = |h: &BlobHash| {
            let p = self.data_path(h);
            File::open(&p).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    StoreError::Corrupt {
                        hash,
                        reason: format!("data file {} is missing", p.display()),
                    }
                } else {
                    io_error(format!("opening {}", p.display()), e)
                }
            })
        };
        match &record.layout {
            Layout::File => Ok(BlobReader::File(open(&hash)?)),
            Layout::Parts(parts) => {
                let mut files = Vec::with_capacity(parts.len());
                for (h, len) in parts {
                    files.push((open(h)?, *len));
                }
                Ok(BlobReader::parts(files))
            }
        }
    }

    /// Pins a blob for the user so that [`Store::gc`] keeps it and everything it links.
    pub fn pin(&self, hash: BlobHash) -> Result<()> {
        self.pin_for(hash, Holder::User)
    }

    /// Pins a blob for `holder` (a blob stays pinned while any holder keeps it).
    pub fn pin_for(&self, hash: BlobHash, holder: Holder) -> Result<()> {
        // Under the commit lock: a gc cannot delete the blob between the check and the pin.
        let _guard = self.commit_lock();
        self.require(hash)?;
        let held = self.holders(hash)?;
        if held & holder.bit() == 0 {
            self.pins.insert(hash.as_bytes(), &[held | holder.bit()])?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Takes the user's pin off a blob; returns whether the user had pinned it. Another
    /// holder's pin (see [`Holder`]) still keeps it.
    pub fn unpin(&self, hash: BlobHash) -> Result<bool> {
        self.unpin_for(hash, Holder::User)
    }

    /// Takes `holder`'s pin off a blob; returns whether `holder` had pinned it.
    pub fn unpin_for(&self, hash: BlobHash, holder: Holder) -> Result<bool> {
        let _guard = self.commit_lock();
        let held = self.holders(hash)?;
        if held & holder.bit() == 0 {
            return Ok(false);
        }
        let left = held & !holder.bit();
        if left == 0 {
            self.pins.remove(hash.as_bytes())?;
        } else {
            self.pins.insert(hash.as_bytes(), &[left])?;
        }
        self.db.flush()?;
        Ok(true)
    }

    /// Whether a blob is pinned (by anyone).
    pub fn is_pinned(&self, hash: BlobHash) -> Result<bool> {
        Ok(self.pins.contains_key(hash.as_bytes())?)
    }

    /// Whether `holder` pinned a blob.
    pub fn is_pinned_by(&self, hash: BlobHash, holder: Holder) -> Result<bool> {
        Ok(self.holders(hash)? & holder.bit() != 0)
    }

    /// Blobs `holder` pinned.
    pub fn pinned_by(&self, holder: Holder) -> Result<Vec<BlobHash>> {
        let mut out = Vec::new();
        for kv in self.pins.iter() {
            let (k, v) = kv?;
            if Holder::decode(&v) & holder.bit() != 0 {
                out.push(key_hash(&k)?);
            }
        }
        Ok(out)
    }

    /// The holders' bits of a blob's pin (0: not pinned).
    fn holders(&self, hash: BlobHash) -> Result<u8> {
        Ok(self
            .pins
            .get(hash.as_bytes())?
            .map_or(0, |v| Holder::decode(&v)))
    }

    /// All pins.
    pub fn pins(&self) -> Result<Vec<BlobHash>> {
        self.pins.iter().keys().map(|k| key_hash(&k?)).collect()
    }

    /// Deletes every blob not reachable from a pin, and partial blobs no fetch touched for
    /// [`PARTIAL_MAX_IDLE`].
    ///
    /// Model manifests the store indexes ([`Store::import_manifests`]) are kept, pinned or not:
    /// they are the catalogue of models this node knows (bounded by the catalogue's quota), and
    /// a gc that frees disk must not make the node forget the network. Only the manifest itself
    /// is kept, not what it links: an unpinned model's files go.
    ///
    /// Blob files the index does not name are **not** deleted: after the index (`meta/`) is
    /// lost, every file is unindexed, and after a crash between a file's rename and its record
    /// the file is a whole, valid blob. They are counted in [`GcReport::orphans`];
    /// [`Store::reindex`] adopts those whose bytes match their name.
    pub fn gc(&self) -> Result<GcReport> {
        let mut report = self.collect_blobs()?;
        // Outside the commit lock: an ingest takes the partial lock, then the commit lock.
        report.orphans = self.orphans()?.len() as u64;
        report.partials_removed = self.collect_partials(PARTIAL_MAX_IDLE)?;
        Ok(report)
    }

    /// Deletes every blob not reachable from a pin, and the files of blobs an earlier gc took
    /// out of the index.
    fn collect_blobs(&self) -> Result<GcReport> {
        let _guard = self.commit_lock();
        let mut live = std::collections::BTreeSet::new();
        let mut stack = self.pins()?;
        while let Some(h) = stack.pop() {
            if !live.insert(h) {
                continue;
            }
            if let Some(record) = self.record(h)? {
                stack.extend(record.children());
            }
        }
        // Manifests are kept but not followed (see `gc`): marked after the pins, so a pinned
        // manifest's links were followed above.
        for key in self.manifests.iter().keys() {
            live.insert(key_hash(&key?)?);
        }
        let mut report = GcReport::default();
        let mut dead = Vec::new();
        for (hash, record) in self.list()? {
            if !live.contains(&hash) {
                dead.push(hash);
                report.blobs_removed += 1;
                if record.layout == Layout::File {
                    report.bytes_freed += record.size;
                }
            }
        }
        // Journal first, then the index, then the files: a crash at any point leaves either
        // indexed blobs or doomed files that the next gc deletes, never a record pointing at a
        // deleted file, and never an unindexed file that gc may not delete.
        if dead.is_empty() && self.doomed.is_empty() {
            // Nothing to delete: no write, no flush (a gc loop costs ingests nothing).
            return Ok(report);
        }
        let mut doomed = sled::Batch::default();
        let mut batch = sled::Batch::default();
        let mut manifests = sled::Batch::default();
        for h in &dead {
            doomed.insert(h.as_bytes(), &[]);
            batch.remove(h.as_bytes());
            manifests.remove(h.as_bytes());
        }
        self.doomed.apply_batch(doomed)?;
        self.db.flush()?;
        self.blobs.apply_batch(batch)?;
        self.manifests.apply_batch(manifests)?;
        self.db.flush()?;
        for key in self.doomed.iter().keys() {
            let key = key?;
            let hash = key_hash(&key)?;
            if !self.blobs.contains_key(hash.as_bytes())? {
                for path in [self.data_path(&hash), self.outboard_path(&hash)] {
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error(format!("removing {}", path.display()), e)),
                    }
                }
            }
            self.doomed.remove(&key)?;
        }
        self.db.flush()?;
        Ok(report)
    }

    /// Blob files (`blobs/<hash>.data`) that the index does not name.
    fn orphans(&self) -> Result<Vec<BlobHash>> {
        let dir = self.root.join("blobs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".data")) else {
                continue;
            };
            if let Ok(hash) = stem.parse::<BlobHash>()
                && !self.blobs.contains_key(hash.as_bytes())?
            {
                out.push(hash);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes partial blobs whose data no ingest wrote for `idle` (abandoned fetches); returns
    /// how many. One being fetched is written every few seconds and is kept. Takes the partial
    /// lock only (never while holding the commit lock: an ingest takes them in that order).
    fn collect_partials(&self, idle: std::time::Duration) -> Result<u64> {
        let _guard = self.partial_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut removed = 0;
        for key in self.partial.iter().keys() {
            let key = key?;
            let hash = key_hash(&key)?;
            let (data, outboard) = self.partial_paths(&hash);
            let touched = fs::metadata(&data)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if touched.is_some_and(|age| age < idle) {
                continue;
            }
            self.partial.remove(&key)?;
            for path in [data, outboard] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(format!("removing {}", path.display()), e)),
                }
            }
            removed += 1;
        }
        if removed > 0 {
            self.db.flush()?;
        }
        Ok(removed)
    }

    /// Adopts the blob files the index does not name (see [`Store::gc`]): each is hashed, and
    /// when its bytes match its name it is imported again (a fresh outboard) and **pinned**, so
    /// nothing the user had is lost to the next gc (unpin what is not wanted); a file whose
    /// bytes do not match is removed. Run it after the index was lost or restored from an
    /// older backup.
    pub fn reindex(&self) -> Result<ReindexReport> {
        let mut report = ReindexReport::default();
        for hash in self.orphans()? {
            let data = self.data_path(&hash);
            let mut hasher = blake3::Hasher::new();
            let file = fs::File::open(&data).ctx(|| format!("opening {}", data.display()))?;
            hasher
                .update_reader(file)
                .ctx(|| format!("reading {}", data.display()))?;
            if BlobHash::from(hasher.finalize()) != hash {
                fs::remove_file(&data).ctx(|| format!("removing {}", data.display()))?;
                let _ = fs::remove_file(self.outboard_path(&hash));
                report.removed += 1;
                continue;
            }
            // The import copies the file, writes a fresh outboard and renames its copy over the
            // orphan's name: the orphan stays in place until its replacement is whole.
            let imported = self.import_file(&data, &mut |_| {})?;
            if imported.hash != hash {
                return Err(StoreError::Invalid(format!(
                    "{} hashed to {hash} and then to {}: is it being written?",
                    data.display(),
                    imported.hash
                )));
            }
            self.relink(hash, imported.size)?;
            self.pin(hash)?;
            report.adopted += 1;
            report.adopted_bytes += imported.size;
        }
        Ok(report)
    }

    /// Restores what a lost index said of an adopted blob that is a signed manifest, a
    /// snapshot or a folder listing: its kind and the blobs it links (so that pinning it keeps
    /// them), and the manifest index.
    fn relink(&self, hash: BlobHash, size: u64) -> Result<()> {
        use protocol::{Collection, Manifest, Object, Signed, Snapshot};
        if size > protocol::MAX_COLLECTION_BYTES as u64 {
            return Ok(());
        }
        let bytes = self.read_bytes(hash, size)?;
        if let Ok(m) = Signed::<Manifest>::from_bytes(&bytes) {
            self.import_manifests(&[(&bytes, m.body().referenced_blobs())])?;
        } else if let Ok(s) = Signed::<Snapshot>::from_bytes(&bytes) {
            let links = s
                .body()
                .weights
                .iter()
                .map(|w| w.hash)
                .chain(s.body().parent);
            self.import_bytes(&bytes, "snapshot", links.collect())?;
        } else if let Ok(c) = Collection::from_bytes(&bytes) {
            let links = c.entries.iter().map(|e| e.hash).collect();
            self.import_bytes(&bytes, "collection", links)?;
        }
        Ok(())
    }

    /// Records `snapshot` as the newest of the training run `name`.
    pub fn set_snapshot_head(&self, name: &str, snapshot: BlobHash) -> Result<()> {
        self.heads.insert(name.as_bytes(), snapshot.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The newest snapshot of the training run `name`.
    pub fn snapshot_head(&self, name: &str) -> Result<Option<BlobHash>> {
        self.heads
            .get(name.as_bytes())?
            .map(|v| key_hash(&v))
            .transpose()
    }

    /// Every model whose manifest is in the store.
    pub fn manifests(&self) -> Result<Vec<protocol::ModelId>> {
        self.manifests
            .iter()
            .keys()
            .map(|k| key_hash(&k?).map(protocol::ModelId))
            .collect()
    }

    /// Another index tree in the store's database (e.g. the catalogue's), opened or created.
    /// Its writes are flushed with [`Store::flush`].
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// Flushes the index to disk (every mutating method already does).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// How long [`Store::open`] waits for sled's lock before reporting [`StoreError::Locked`]:
/// sled releases its file lock from background threads a moment after the last handle is
/// dropped, so a store closed and reopened in one process (or by two short-lived commands in a
/// row) must not fail just because of that.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn open_index(root: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        match sled::Config::new().path(root.join("meta")).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(io))
                if io.kind() == io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
            {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        path: root.to_path_buf(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(sled::Error::Io(io)) => {
                return Err(io_error(format!("opening index in {}", root.display()), io));
            }
            Err(sled::Error::Corruption { at, .. }) => {
                return Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                    reason: format!(
                        "the index in meta/ is corrupt (at {at:?}); move it away and re-add your files"
                    ),
                });
            }
            Err(other) => return Err(StoreError::Db(other)),
        }
    }
}

/// What [`Store::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs_removed: u64,
    /// Bytes of data files deleted.
    pub bytes_freed: u64,
    /// Blob files the index does not name, left in place ([`Store::reindex`] adopts them).
    pub orphans: u64,
    /// Abandoned partial blobs removed.
    pub partials_removed: u64,
}

/// Who keeps a pin. A blob stays pinned while any holder keeps it, and each takes only its
/// own pin off: a user's `unpin` does not drop what the node caches for peers' calls, and the
/// cache evicting a model does not drop the user's pin.
///
/// Stored as one byte of bits per pinned blob in the `pins` tree (an empty value, from stores
/// written before holders, is the user's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The user: `add`, `publish`, `pin`, a fetch the user asked for.
    User,
    /// The node's cache of models fetched to answer peers' calls (evicted least recently used).
    CallCache,
}

impl Holder {
    fn bit(self) -> u8 {
        match self {
            Holder::User => 1,
            Holder::CallCache => 2,
        }
    }

    fn decode(value: &[u8]) -> u8 {
        match value.first() {
            None => Holder::User.bit(),
            Some(bits) => *bits,
        }
    }
}

/// What [`Store::reindex`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReindexReport {
    /// Unindexed blob files whose bytes matched their name: indexed again and pinned.
    pub adopted: u64,
    /// Their bytes.
    pub adopted_bytes: u64,
    /// Unindexed blob files whose bytes did not match their name: removed.
    pub removed: u64,
}

/// How long a partial blob may go without a write before `gc` removes it as abandoned.
pub const PARTIAL_MAX_IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn key_hash(k: &[u8]) -> Result<BlobHash> {
    let arr: [u8; 32] = k.try_into().map_err(|_| DecodeError::Invalid {
        what: "index key",
        reason: format!("{} bytes, expected 32", k.len()),
    })?;
    Ok(BlobHash::from_bytes(arr))
}

/// A file in `tmp/` that is deleted on drop unless persisted.
#[derive(Debug)]
pub(crate) struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl TempPath {
    fn new(path: PathBuf) -> Self {
        TempPath { path, keep: false }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `to`; it is no longer deleted on drop.
    pub(crate) fn persist(mut self, to: &Path) -> Result<()> {
        fs::rename(&self.path, to)
            .ctx(|| format!("moving {} to {}", self.path.display(), to.display()))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// fsyncs a directory so that renames into it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

/// Writes a small file atomically: temp file, fsync, rename, fsync the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = TempPath::new(path.with_extension("tmp"));
    let mut f = File::create(tmp.path()).ctx(|| format!("creating {}", tmp.path().display()))?;
    io::Write::write_all(&mut f, bytes).ctx(|| format!("writing {}", tmp.path().display()))?;
    f.sync_all()
        .ctx(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(path)?;
    sync_dir(dir)
}
