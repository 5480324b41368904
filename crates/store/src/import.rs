//! Streaming import: hash while copying, in constant memory; identical content stored once.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use protocol::{BlobHash, Collection, FileEntry, Object};

use crate::record::{BlobRecord, Layout};
use crate::{IoContext, Result, Store, StoreError, TempPath, safetensors, sync_dir, tree};

/// Buffer size for streaming copies.
const IO_BUFFER: usize = 1 << 20;

/// The result of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// The blob's hash.
    pub hash: BlobHash,
    /// Its length.
    pub size: u64,
    /// False when the store already had it (nothing was written).
    pub new: bool,
}

/// A blob written to `tmp/` and hashed, not yet durable or visible.
pub(crate) struct Pending {
    pub(crate) hash: BlobHash,
    pub(crate) record: BlobRecord,
    /// The data file; `None` for a blob made of parts.
    pub(crate) data: Option<TempPath>,
    pub(crate) outboard: TempPath,
}

impl Pending {
    /// A staged single-file blob.
    fn file(
        hash: BlobHash,
        size: u64,
        kind: &str,
        links: Vec<BlobHash>,
        data: TempPath,
        outboard: TempPath,
    ) -> Pending {
        Pending {
            hash,
            record: BlobRecord {
                size,
                layout: Layout::File,
                links,
                kind: kind.to_string(),
            },
            data: Some(data),
            outboard,
        }
    }
}

/// A reader that copies everything it reads into a writer and reports progress.
struct Tee<'a, R, W> {
    src: R,
    dst: W,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        self.dst.write_all(&buf[..n])?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// Inputs at least this large are staged by [`Store::stage_pipelined`].
const PIPELINE_THRESHOLD: u64 = 8 << 20;
/// Buffers in flight between the copying thread and the hashing thread.
const PIPELINE_BUFFERS: usize = 6;
/// Bytes written between two background `fdatasync`s of the data file.
const SYNC_EVERY: u64 = 16 << 20;

/// A `Read` over buffers arriving on a channel; spent buffers go back for reuse.
struct ChannelReader {
    full: Receiver<Vec<u8>>,
    empty: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            let next = match self.full.recv() {
                Ok(b) => b,
                Err(_) => return Ok(0), // the copier is done (or gave up): end of input
            };
            let spent = std::mem::replace(&mut self.current, next);
            let _ = self.empty.try_send(spent);
            self.pos = 0;
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Store {
    /// Writes `size` bytes from `src` to `tmp/`, computing hash and outboard on the way.
    pub(crate) fn stage(
        &self,
        src: impl Read,
        size: u64,
        kind: &str,
        links: Vec<BlobHash>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Pending> {
        if size >= PIPELINE_THRESHOLD {
            self.stage_pipelined(src, size, kind, links, progress)
        } else {
            self.stage_simple(src, size, kind, links, progress)
        }
    }

    /// Large inputs: this thread copies into the data file while a second thread computes the
    /// outboard from the same buffers and a third starts writeback every [`SYNC_EVERY`] bytes,
    /// so hashing and the final fsync overlap the copy. Memory stays constant
    /// ([`PIPELINE_BUFFERS`] buffers of [`IO_BUFFER`] bytes).
    fn stage_pipelined(
        &self,
        mut src: impl Read,
        size: u64,
        kind: &str,
        links: Vec<BlobHash>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Pending> {
        let data = self.temp_path("data");
        let outboard = self.temp_path("obao");
        let mut data_file =
            File::create(data.path()).ctx(|| format!("creating {}", data.path().display()))?;
        let sync_handle = data_file
            .try_clone()
            .ctx(|| format!("opening {}", data.path().display()))?;
        let ob_file = File::create(outboard.path())
            .ctx(|| format!("creating {}", outboard.path().display()))?;
        let (full_tx, full_rx) = sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(PIPELINE_BUFFERS + 2);
        for _ in 0..PIPELINE_BUFFERS {
            let _ = empty_tx.try_send(Vec::with_capacity(IO_BUFFER));
        }
        let (sync_tx, sync_rx) = std::sync::mpsc::channel::<()>();
        let (copied, hashed, synced) = std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut reader = ChannelReader {
                    full: full_rx,
                    empty: empty_tx,
                    current: Vec::new(),
                    pos: 0,
                };
                let mut ob = BufWriter::with_capacity(64 * 1024, &ob_file);
                let root =
                    bao_tree::io::sync::outboard_post_order(&mut reader, tree(size), &mut ob)?;
                ob.flush()?;
                Ok::<_, io::Error>(root)
            });
            let syncer = scope.spawn(move || {
                while sync_rx.recv().is_ok() {
                    while sync_rx.try_recv().is_ok() {}
                    sync_handle.sync_data()?;
                }
                Ok::<_, io::Error>(())
            });
            let copied = (|| -> Result<()> {
                let mut done = 0u64;
                let mut since_sync = 0u64;
                while done < size {
                    let Ok(mut buf) = empty_rx.recv() else {
                        return Ok(()); // the hasher stopped; its error is reported below
                    };
                    let n = (size - done).min(IO_BUFFER as u64) as usize;
                    buf.resize(n, 0);
                    src.read_exact(&mut buf)
                        .map_err(|e| input_error(e, size, "reading the input"))?;
                    data_file
                        .write_all(&buf)
                        .ctx(|| format!("writing {}", data.path().display()))?;
                    progress(n as u64);
                    done += n as u64;
                    since_sync += n as u64;
                    if since_sync >= SYNC_EVERY {
                        let _ = sync_tx.send(());
                        since_sync = 0;
                    }
                    if full_tx.send(buf).is_err() {
                        return Ok(()); // the hasher stopped; its error is reported below
                    }
                }
                Ok(())
            })();
            drop(full_tx);
            drop(sync_tx);
            let hashed = hasher.join();
            let synced = syncer.join();
            (copied, hashed, synced)
        });
        copied?;
        let root = match hashed {
            Ok(r) => r.ctx(|| format!("hashing into {}", outboard.path().display()))?,
            Err(_) => return Err(StoreError::Invalid("the hashing thread panicked".into())),
        };
        match synced {
            Ok(r) => r.ctx(|| format!("syncing {}", data.path().display()))?,
            Err(_) => return Err(StoreError::Invalid("the sync thread panicked".into())),
        }
        Ok(Pending::file(
            root.into(),
            size,
            kind,
            links,
            data,
            outboard,
        ))
    }

    fn stage_simple(
        &self,
        src: impl Read,
        size: u64,
        kind: &str,
        links: Vec<BlobHash>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Pending> {
        let data = self.temp_path("data");
        let outboard = self.temp_path("obao");
        let data_file =
            File::create(data.path()).ctx(|| format!("creating {}", data.path().display()))?;
        let ob_file = File::create(outboard.path())
            .ctx(|| format!("creating {}", outboard.path().display()))?;
        let mut tee = Tee {
            src,
            dst: BufWriter::with_capacity(IO_BUFFER, &data_file),
            progress,
        };
        let mut ob = BufWriter::with_capacity(64 * 1024, &ob_file);
        let root = bao_tree::io::sync::outboard_post_order(&mut tee, tree(size), &mut ob)
            .map_err(|e| input_error(e, size, "importing"))?;
        tee.dst
            .flush()
            .ctx(|| format!("writing {}", data.path().display()))?;
        ob.flush()
            .ctx(|| format!("writing {}", outboard.path().display()))?;
        Ok(Pending::file(
            root.into(),
            size,
            kind,
            links,
            data,
            outboard,
        ))
    }

    /// Makes staged blobs durable and visible, in order (parts before the blob made of them).
    ///
    /// Blobs already present are dropped without fsync; their links are merged into the
    /// existing record.
    pub(crate) fn commit(&self, pending: Vec<Pending>) -> Result<Vec<Imported>> {
        self.commit_indexed(pending, false)
    }

    /// [`Store::commit`]; with `manifests`, every committed blob is also indexed as a model
    /// manifest in the same critical section, so no gc can run between the two (an unpinned
    /// blob that is not yet a manifest would be collected).
    fn commit_indexed(&self, pending: Vec<Pending>, manifests: bool) -> Result<Vec<Imported>> {
        let _guard = self.commit_lock();
        let mut batch = sled::Batch::default();
        let mut out = Vec::with_capacity(pending.len());
        let mut moved = false;
        let mut staged_here = std::collections::BTreeMap::new();
        for p in pending {
            let existing = match staged_here.get(&p.hash) {
                Some(r) => Some(BlobRecord::clone(r)),
                None => self.record(p.hash)?,
            };
            if let Some(mut existing) = existing {
                let before = existing.clone();
                for l in &p.record.links {
                    if !existing.links.contains(l) {
                        existing.links.push(*l);
                    }
                }
                if existing.kind == "raw" && p.record.kind != "raw" {
                    existing.kind = p.record.kind.clone();
                }
                if existing != before {
                    batch.insert(p.hash.as_bytes(), existing.encode());
                    staged_here.insert(p.hash, existing);
                }
                out.push(Imported {
                    hash: p.hash,
                    size: p.record.size,
                    new: false,
                });
                continue;
            }
            if let Some(data) = p.data {
                sync_file(data.path())?;
                data.persist(&self.data_path(&p.hash))?;
            }
            sync_file(p.outboard.path())?;
            p.outboard.persist(&self.outboard_path(&p.hash))?;
            moved = true;
            batch.insert(p.hash.as_bytes(), p.record.encode());
            staged_here.insert(p.hash, p.record.clone());
            out.push(Imported {
                hash: p.hash,
                size: p.record.size,
                new: true,
            });
        }
        if moved {
            sync_dir(&self.root.join("blobs"))?;
        }
        self.blobs.apply_batch(batch)?;
        if manifests {
            let mut index = sled::Batch::default();
            for imported in &out {
                index.insert(imported.hash.as_bytes(), &[]);
            }
            self.manifests.apply_batch(index)?;
        }
        self.db.flush()?;
        Ok(out)
    }

    /// Imports signed model manifests (their bytes and the blobs each references) in one
    /// commit and indexes them as manifests ([`Store::manifests`]), which [`Store::gc`] keeps.
    /// Ones already present get their links merged and are indexed too.
    pub fn import_manifests(&self, items: &[(&[u8], Vec<BlobHash>)]) -> Result<Vec<Imported>> {
        let mut pending = Vec::with_capacity(items.len());
        for (bytes, links) in items {
            pending.push(self.stage(
                *bytes,
                bytes.len() as u64,
                "manifest",
                links.clone(),
                &mut |_| {},
            )?);
        }
        self.commit_indexed(pending, true)
    }

    /// Imports bytes held in memory (manifests, snapshots, listings).
    pub fn import_bytes(&self, bytes: &[u8], kind: &str, links: Vec<BlobHash>) -> Result<Imported> {
        let pending = self.stage(bytes, bytes.len() as u64, kind, links, &mut |_| {})?;
        self.commit(vec![pending])?
            .pop()
            .ok_or_else(|| StoreError::Invalid("nothing was imported".into()))
    }

    /// Imports a file, streaming, in constant memory. `progress` receives byte counts as they
    /// are read. A `.safetensors` file is stored tensor by tensor (see [`Layout::Parts`]); its
    /// hash is still the BLAKE3 of the whole file.
    pub fn import_file(&self, path: &Path, progress: &mut dyn FnMut(u64)) -> Result<Imported> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Invalid(format!("{} does not exist", path.display()))
            } else {
                crate::io_error(format!("opening {}", path.display()), e)
            }
        })?;
        let meta = file
            .metadata()
            .ctx(|| format!("reading metadata of {}", path.display()))?;
        if !meta.is_file() {
            return Err(StoreError::Invalid(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let size = meta.len();
        if path.extension().is_some_and(|e| e == "safetensors")
            && let Some(parts) =
                safetensors::split(&file, size).ctx(|| format!("reading {}", path.display()))?
        {
            return self.import_parts(path, file, size, &parts, progress);
        }
        let reader = BufReader::with_capacity(IO_BUFFER, file);
        let pending = self
            .stage(reader.take(size), size, "raw", Vec::new(), progress)
            .map_err(|e| name_file(e, path))?;
        self.commit(vec![pending])?
            .pop()
            .ok_or_else(|| StoreError::Invalid("nothing was imported".into()))
    }

    /// Stores a file as the concatenation of `parts` (byte ranges covering it exactly).
    fn import_parts(
        &self,
        path: &Path,
        mut file: File,
        size: u64,
        parts: &[(u64, u64)],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Imported> {
        // Pass 1: the whole file's hash and outboard, reading only.
        let outboard = self.temp_path("obao");
        let ob_file = File::create(outboard.path())
            .ctx(|| format!("creating {}", outboard.path().display()))?;
        let mut ob = BufWriter::new(&ob_file);
        let reader = BufReader::with_capacity(IO_BUFFER, &file);
        let root: BlobHash = bao_tree::io::sync::outboard_post_order(reader, tree(size), &mut ob)
            .ctx(|| format!("hashing {}", path.display()))?
            .into();
        ob.flush()
            .ctx(|| format!("writing {}", outboard.path().display()))?;
        if self.has(root)? {
            progress(size);
            return Ok(Imported {
                hash: root,
                size,
                new: false,
            });
        }
        // Pass 2: each part as its own blob.
        let mut pending = Vec::with_capacity(parts.len() + 1);
        let mut layout = Vec::with_capacity(parts.len());
        for &(offset, len) in parts {
            file.seek(SeekFrom::Start(offset))
                .ctx(|| format!("seeking in {}", path.display()))?;
            let src = BufReader::with_capacity(IO_BUFFER, &file).take(len);
            let p = self
                .stage(src, len, "tensor", Vec::new(), progress)
                .map_err(|e| name_file(e, path))?;
            layout.push((p.hash, len));
            pending.push(p);
        }
        pending.push(Pending {
            hash: root,
            record: BlobRecord {
                size,
                layout: Layout::Parts(layout),
                links: Vec::new(),
                kind: "safetensors".into(),
            },
            data: None,
            outboard,
        });
        self.commit(pending)?
            .pop()
            .ok_or_else(|| StoreError::Invalid("nothing was imported".into()))
    }

    /// Imports every file under `dir` (recursively, in path order) and a [`Collection`]
    /// listing them; returns the collection's import. Symlinks are refused.
    pub fn import_dir(
        &self,
        dir: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Imported, Collection)> {
        let mut entries = Vec::new();
        for (rel, path) in walk(dir)? {
            let imported = self.import_file(&path, progress)?;
            entries.push(FileEntry {
                path: rel,
                hash: imported.hash,
                size: imported.size,
            });
        }
        entries.sort();
        let collection = Collection { entries };
        let links = collection.entries.iter().map(|e| e.hash).collect();
        let imported = self.import_bytes(&collection.to_bytes(), "collection", links)?;
        Ok((imported, collection))
    }
}

/// An error while reading an import's input: ending early means the file changed underneath us.
fn input_error(e: io::Error, size: u64, context: &str) -> StoreError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        StoreError::Invalid(format!(
            "the input ended before {size} bytes (was it changed while importing?)"
        ))
    } else {
        crate::io_error(context.into(), e)
    }
}

fn name_file(e: StoreError, path: &Path) -> StoreError {
    match e {
        StoreError::Io { context, source } => StoreError::Io {
            context: format!("{context} {}", path.display()),
            source,
        },
        StoreError::DiskFull { context } => StoreError::DiskFull {
            context: format!("{context} {}", path.display()),
        },
        other => other,
    }
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("syncing {}", path.display()))
}

/// Lists the regular files under `dir` as (relative `/` path, full path), sorted.
pub fn walk(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, path)) = stack.pop() {
        let listing = fs::read_dir(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Invalid(format!("{} does not exist", path.display()))
            } else {
                crate::io_error(format!("listing {}", path.display()), e)
            }
        })?;
        for entry in listing {
            let entry = entry.ctx(|| format!("listing {}", path.display()))?;
            let name = entry.file_name().into_string().map_err(|n| {
                StoreError::Invalid(format!(
                    "file name {n:?} in {} is not UTF-8",
                    path.display()
                ))
            })?;
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry
                .file_type()
                .ctx(|| format!("reading {}", entry.path().display()))?;
            if ft.is_dir() {
                stack.push((rel, entry.path()));
            } else if ft.is_file() {
                protocol::validate_path(&rel).map_err(StoreError::Invalid)?;
                out.push((rel, entry.path()));
            } else {
                return Err(StoreError::Invalid(format!(
                    "{} is a symlink or special file; only regular files can be added",
                    entry.path().display()
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}
