//! Reading blobs out: verified export to files and folders, proven ranges for peers, and
//! `verify` (fsck).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bao_tree::ChunkRangesRef;
use bao_tree::io::outboard::PostOrderOutboard;
use protocol::{BlobHash, FileEntry};

use crate::record::{BlobRecord, Layout};
use crate::{IoContext, Result, Store, StoreError, io_error, tree};

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A file the blob needs is gone.
    Missing(String),
    /// Bytes or outboard do not match the hash.
    Corrupt(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing(why) => write!(f, "missing: {why}"),
            Problem::Corrupt(why) => write!(f, "corrupt: {why}"),
        }
    }
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub checked: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Every blob with a problem.
    pub problems: Vec<(BlobHash, Problem)>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A writer that compares what is written with a reader's bytes.
struct Compare<R> {
    expected: R,
    mismatch: bool,
    buf: Vec<u8>,
}

impl<R: Read> Write for Compare<R> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.mismatch {
            self.buf.resize(data.len(), 0);
            match self.expected.read_exact(&mut self.buf) {
                Ok(()) if self.buf == data => {}
                Ok(()) => self.mismatch = true,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.mismatch = true,
                Err(e) => return Err(e),
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// Streams a blob's bytes into `out`, checking them against the hash at the end.
    ///
    /// The check comes after the bytes were written, so use [`Store::export`] for files:
    /// it writes to a temporary name and only renames a verified file into place.
    pub fn read_to(&self, hash: BlobHash, out: &mut dyn Write) -> Result<u64> {
        let record = self.require(hash)?;
        let blob = self.open_record(hash, &record)?;
        let mut hashing = Hashing {
            inner: out,
            hasher: blake3::Hasher::new(),
            written: 0,
        };
        let mut src = BufReader::with_capacity(1 << 20, blob.reader()).take(record.size);
        io::copy(&mut src, &mut hashing).ctx(|| format!("reading blob {hash}"))?;
        if hashing.written != record.size {
            return Err(StoreError::Corrupt {
                hash,
                reason: format!(
                    "{} bytes on disk, {} expected",
                    hashing.written, record.size
                ),
            });
        }
        if BlobHash::from(hashing.hasher.finalize()) != hash {
            return Err(StoreError::Corrupt {
                hash,
                reason: "bytes do not match the hash".into(),
            });
        }
        Ok(record.size)
    }

    /// Reads a whole blob into memory, verified; for small objects (manifests, snapshots).
    pub fn read_bytes(&self, hash: BlobHash, max: u64) -> Result<Vec<u8>> {
        let record = self.require(hash)?;
        if record.size > max {
            return Err(StoreError::Invalid(format!(
                "blob {hash} is {} bytes, more than the {max} expected here",
                record.size
            )));
        }
        let mut out = Vec::with_capacity(record.size as usize);
        self.read_to(hash, &mut out)?;
        Ok(out)
    }

    /// Exports a blob to the file `dest`, which must not exist. Bytes are verified before the
    /// file appears under its name: corrupt bytes are never exported.
    pub fn export(&self, hash: BlobHash, dest: &Path) -> Result<u64> {
        refuse_existing(dest)?;
        let tmp = sibling_temp(dest);
        let _cleanup = RemoveOnDrop(Some(tmp.clone()));
        let file = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        let n = self.read_to(hash, &mut w)?;
        w.flush().ctx(|| format!("writing {}", tmp.display()))?;
        drop(w);
        file.sync_all()
            .ctx(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, dest).ctx(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
        Ok(n)
    }

    /// Exports files to the folder `dest`, which must not exist. Everything is written to a
    /// temporary folder beside it and renamed at the end, so `dest` appears complete or not at
    /// all. Paths are re-validated: an untrusted listing cannot write outside `dest`.
    pub fn export_files(&self, files: &[FileEntry], dest: &Path) -> Result<u64> {
        refuse_existing(dest)?;
        let tmp = sibling_temp(dest);
        let mut cleanup = RemoveOnDrop(Some(tmp.clone()));
        fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let mut total = 0;
        for entry in files {
            protocol::validate_path(&entry.path).map_err(StoreError::Invalid)?;
            let target = tmp.join(&entry.path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
            total += self.export(entry.hash, &target)?;
        }
        fs::rename(&tmp, dest).ctx(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
        cleanup.0 = None;
        Ok(total)
    }

    /// Writes the bao encoding of `ranges` of a blob (parents and 16 KiB groups, each group
    /// checked against the outboard before it is sent) to `out`.
    pub fn read_ranges(
        &self,
        hash: BlobHash,
        ranges: &ChunkRangesRef,
        out: impl Write,
    ) -> Result<()> {
        let record = self.require(hash)?;
        let blob = self.open_record(hash, &record)?;
        let ob_path = self.outboard_path(&hash);
        let ob_file = File::open(&ob_path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Corrupt {
                    hash,
                    reason: format!("outboard {} is missing", ob_path.display()),
                }
            } else {
                io_error(format!("opening {}", ob_path.display()), e)
            }
        })?;
        let outboard = PostOrderOutboard {
            root: hash.into(),
            tree: tree(record.size),
            data: ob_file,
        };
        bao_tree::io::sync::encode_ranges_validated(&blob, &outboard, ranges, out).map_err(|e| {
            match e {
                bao_tree::io::EncodeError::Io(io) => io_error(format!("serving blob {hash}"), io),
                other => StoreError::Corrupt {
                    hash,
                    reason: format!("{other}"),
                },
            }
        })
    }

    /// Re-hashes one blob's bytes and outboard; `None` when it is intact.
    pub fn verify_blob(&self, hash: BlobHash) -> Result<Option<Problem>> {
        let record = self.require(hash)?;
        self.check(hash, &record)
    }

    fn check(&self, hash: BlobHash, record: &BlobRecord) -> Result<Option<Problem>> {
        let blob = match self.open_record(hash, record) {
            Ok(b) => b,
            Err(StoreError::Corrupt { reason, .. }) => return Ok(Some(Problem::Missing(reason))),
            Err(e) => return Err(e),
        };
        if let Layout::Parts(parts) = &record.layout {
            let sum: u64 = parts.iter().map(|(_, n)| n).sum();
            if sum != record.size {
                return Ok(Some(Problem::Corrupt(format!(
                    "parts add up to {sum} bytes, not {}",
                    record.size
                ))));
            }
        }
        let actual = positioned_io::Size::size(&blob)
            .ctx(|| format!("reading size of blob {hash}"))?
            .unwrap_or(0);
        if actual != record.size {
            return Ok(Some(Problem::Corrupt(format!(
                "{actual} bytes on disk, {} expected",
                record.size
            ))));
        }
        let ob_path = self.outboard_path(&hash);
        let ob_file = match File::open(&ob_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Some(Problem::Missing(format!(
                    "outboard {} is missing",
                    ob_path.display()
                ))));
            }
            Err(e) => return Err(io_error(format!("opening {}", ob_path.display()), e)),
        };
        let ob_len = ob_file
            .metadata()
            .ctx(|| format!("reading {}", ob_path.display()))?
            .len();
        let tree = tree(record.size);
        let mut compare = Compare {
            expected: BufReader::new(ob_file),
            mismatch: ob_len != tree.outboard_size(),
            buf: Vec::new(),
        };
        let src = BufReader::with_capacity(1 << 20, blob.reader());
        let root: BlobHash = bao_tree::io::sync::outboard_post_order(src, tree, &mut compare)
            .ctx(|| format!("reading blob {hash}"))?
            .into();
        if root != hash {
            return Ok(Some(Problem::Corrupt(format!("bytes hash to {root}"))));
        }
        if compare.mismatch {
            return Ok(Some(Problem::Corrupt(
                "outboard does not match the bytes".into(),
            )));
        }
        Ok(None)
    }

    /// Re-hashes every blob (or just `only`) and reports every corrupt or missing one.
    pub fn verify(&self, only: Option<BlobHash>) -> Result<VerifyReport> {
        let targets = match only {
            Some(h) => vec![(h, self.require(h)?)],
            None => self.list()?,
        };
        let mut report = VerifyReport::default();
        for (hash, record) in targets {
            report.checked += 1;
            report.bytes += record.size;
            if let Some(problem) = self.check(hash, &record)? {
                report.problems.push((hash, problem));
            }
        }
        Ok(report)
    }
}

fn refuse_existing(dest: &Path) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
        return Err(StoreError::Invalid(format!(
            "{} already exists; remove it or choose another path",
            dest.display()
        )));
    }
    Ok(())
}

fn sibling_temp(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    dest.with_file_name(format!(".{name}.moxnet-{}.tmp", std::process::id()))
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if p.is_dir() {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
}
