//! Receiving a blob from untrusted peers: proven ranges are verified group by group against the
//! root hash before anything is written; the blob appears only once every group verified.

use std::fs::{File, OpenOptions};
use std::io::Read;

use bao_tree::io::BaoContentItem;
use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{DecodeResponseIter, OutboardMut};
use bao_tree::{ChunkNum, ChunkRanges, ChunkRangesRef};
use positioned_io::WriteAt;
use protocol::{BlobHash, CHUNK_GROUP_BYTES};

use crate::record::{BlobRecord, Layout, PartialRecord};
use crate::{IoContext, Result, Store, StoreError, groups, sync_dir, tree};

/// What one [`Store::ingest`] call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Chunk groups verified and written by this call.
    pub groups_written: u64,
    /// Groups now present of the blob's total.
    pub groups_present: u64,
    /// Total groups of the blob.
    pub groups_total: u64,
    /// True once the blob is complete and visible.
    pub complete: bool,
}

/// Why an ingest stopped. Groups verified before the failure are kept.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The source sent bytes that do not match the hash: drop and ban that source for this
    /// blob. Nothing of the bad group was written.
    #[error("peer sent bad data for blob {hash}: {reason}")]
    PeerMisbehaved {
        /// The blob.
        hash: BlobHash,
        /// What failed to verify.
        reason: String,
        /// What was kept from before the failure.
        outcome: IngestOutcome,
    },
    /// The source ended early; retry the missing ranges (from this or another peer).
    #[error("stream for blob {hash} ended early: {reason}")]
    Incomplete {
        /// The blob.
        hash: BlobHash,
        /// Where it ended.
        reason: String,
        /// What was kept.
        outcome: IngestOutcome,
    },
    /// The blob's size is not proven yet, so nothing was received: the first ingest of a blob
    /// must include its last group, whose proof commits to the size (BLAKE3's tree shape and
    /// the last chunk's length).
    #[error(
        "the size of blob {hash} is not proven yet: the first range received must include its last group"
    )]
    SizeUnproven {
        /// The blob.
        hash: BlobHash,
    },
    /// A local failure (disk, index).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    pub(crate) fn partial_paths(
        &self,
        hash: &BlobHash,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = self.root.join("partial");
        (
            dir.join(format!("{hash}.data")),
            dir.join(format!("{hash}.obao")),
        )
    }

    /// The state of a blob being received, if any.
    pub fn partial(&self, hash: BlobHash) -> Result<Option<PartialRecord>> {
        self.partial
            .get(hash.as_bytes())?
            .map(|v| PartialRecord::decode(&v).map_err(StoreError::from))
            .transpose()
    }

    /// Writes the bao encoding of chunk groups `groups` (`[start, end)`, sorted) of a blob that
    /// is complete or still being received (each group checked against the outboard before it
    /// is sent). A blob being received serves only groups that verified when they arrived:
    /// asking for one it lacks is [`StoreError::NotFound`]. A receipt that completes meanwhile
    /// is served from the complete copy.
    pub fn read_groups(
        &self,
        hash: BlobHash,
        groups: &[(u64, u64)],
        mut out: impl std::io::Write,
    ) -> Result<()> {
        let ranges = crate::chunk_ranges(groups);
        if self.record(hash)?.is_none()
            && let Some(record) = self.partial(hash)?
        {
            let total = crate::groups(record.size);
            if groups
                .iter()
                .flat_map(|(s, e)| *s..*e)
                .any(|g| g >= total || !record.has(g))
            {
                return Err(StoreError::NotFound { hash });
            }
            let (data_path, ob_path) = self.partial_paths(&hash);
            // Both files are opened before either is read: a completion that moves them after
            // this point leaves the open handles valid.
            match (File::open(&data_path), File::open(&ob_path)) {
                (Ok(data), Ok(ob)) => {
                    let outboard = PostOrderOutboard {
                        root: hash.into(),
                        tree: tree(record.size),
                        data: ob,
                    };
                    return bao_tree::io::sync::encode_ranges_validated(
                        &data, &outboard, &ranges, &mut out,
                    )
                    .map_err(|e| match e {
                        bao_tree::io::EncodeError::Io(io) => {
                            crate::io_error(format!("serving part of blob {hash}"), io)
                        }
                        other => StoreError::Corrupt {
                            hash,
                            reason: format!("{other}"),
                        },
                    });
                }
                // Completed (moved to the blobs) since the record was read.
                (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                (Err(e), _) => {
                    return Err(crate::io_error(
                        format!("opening {}", data_path.display()),
                        e,
                    ));
                }
                (_, Err(e)) => {
                    return Err(crate::io_error(format!("opening {}", ob_path.display()), e));
                }
            }
        }
        self.read_ranges(hash, &ranges, out)
    }

    /// The chunk ranges still missing for `hash` of `size` bytes: all of them if nothing was
    /// received yet, none if the blob is complete. Use these in the next request.
    pub fn missing(&self, hash: BlobHash, size: u64) -> Result<ChunkRanges> {
        if self.has(hash)? {
            return Ok(ChunkRanges::empty());
        }
        let Some(record) = self.partial(hash)?.filter(|r| r.size == size) else {
            return Ok(ChunkRanges::all());
        };
        let per_group = CHUNK_GROUP_BYTES / 1024;
        let mut missing = ChunkRanges::empty();
        let total = groups(size);
        let mut g = 0;
        while g < total {
            if record.has(g) {
                g += 1;
                continue;
            }
            let start = g;
            while g < total && !record.has(g) {
                g += 1;
            }
            let end = if g == total {
                ChunkRanges::from(ChunkNum(start * per_group)..)
            } else {
                ChunkRanges::from(ChunkNum(start * per_group)..ChunkNum(g * per_group))
            };
            missing |= end;
        }
        Ok(missing)
    }

    /// Ingests a bao-encoded response for `ranges` of blob `hash` (`size` bytes) from an
    /// untrusted source. Each 16 KiB group is verified against `hash` before it is written;
    /// verified groups are fsynced and recorded, so a restart resumes without re-downloading
    /// them. When the last group arrives the blob becomes complete and visible.
    ///
    /// `size` is the source's claim, and it is proven before anything is recorded: the first
    /// ingest of a blob must include the last group ([`IngestError::SizeUnproven`] otherwise),
    /// and nothing is recorded unless that group verifies. Once a blob is being received its
    /// size is proven, so a later source that claims another size is
    /// [`IngestError::PeerMisbehaved`]. A size over [`protocol::MAX_BLOB_BYTES`] is refused
    /// before anything is allocated.
    pub fn ingest(
        &self,
        hash: BlobHash,
        size: u64,
        ranges: &ChunkRangesRef,
        encoded: impl Read,
    ) -> std::result::Result<IngestOutcome, IngestError> {
        let total = groups(size);
        let misbehaved = |reason: String, groups_present| IngestError::PeerMisbehaved {
            hash,
            reason,
            outcome: IngestOutcome {
                groups_written: 0,
                groups_present,
                groups_total: total,
                complete: false,
            },
        };
        if let Some(here) = self.record(hash)? {
            // Complete already (another peer's answer may have finished it meanwhile): its size
            // is known, and a peer claiming another one lies.
            if here.size != size {
                return Err(misbehaved(
                    format!("claims {size} bytes; the blob here has {}", here.size),
                    groups(here.size),
                ));
            }
            return Ok(IngestOutcome {
                groups_written: 0,
                groups_present: total,
                groups_total: total,
                complete: true,
            });
        }
        if size > protocol::MAX_BLOB_BYTES {
            return Err(misbehaved(
                format!(
                    "claims {size} bytes, over the {}-byte limit",
                    protocol::MAX_BLOB_BYTES
                ),
                0,
            ));
        }
        let last = ChunkNum((total - 1) * (CHUNK_GROUP_BYTES / 1024));
        let (mut record, proven) = match self.partial(hash)? {
            Some(r) if r.size == size => (r, true),
            Some(r) => {
                let present = r.count();
                return Err(misbehaved(
                    format!("claims {size} bytes; its proven size is {}", r.size),
                    present,
                ));
            }
            None if !ranges.contains(&last) => return Err(IngestError::SizeUnproven { hash }),
            None => (PartialRecord::new(size), false),
        };
        let (data_path, ob_path) = self.partial_paths(&hash);
        let open = |p: &std::path::Path| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(p)
                .ctx(|| format!("opening {}", p.display()))
        };
        let mut data = open(&data_path)?;
        let mut outboard = PostOrderOutboard {
            root: hash.into(),
            tree: tree(size),
            data: open(&ob_path)?,
        };
        let mut written = 0;
        let mut newly = Vec::new();
        let mut failure = None;
        for item in DecodeResponseIter::new(hash.into(), tree(size), encoded, ranges) {
            match item {
                Ok(BaoContentItem::Parent(p)) => {
                    outboard
                        .save(p.node, &p.pair)
                        .ctx(|| format!("writing {}", ob_path.display()))?;
                }
                Ok(BaoContentItem::Leaf(leaf)) => {
                    data.write_all_at(leaf.offset, &leaf.data)
                        .ctx(|| format!("writing {}", data_path.display()))?;
                    let g = leaf.offset / CHUNK_GROUP_BYTES;
                    if !record.has(g) {
                        record.set(g);
                        newly.push(g);
                        written += 1;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Make what verified durable before recording it, so the record never claims a group
        // that a crash could lose.
        data.sync_all()
            .ctx(|| format!("syncing {}", data_path.display()))?;
        outboard
            .data
            .sync_all()
            .ctx(|| format!("syncing {}", ob_path.display()))?;
        // Concurrent ingests of one blob (several peers at once) merge their groups into the
        // record under a lock; whoever adds the last group completes the blob.
        let _guard = self.partial_lock.lock().unwrap_or_else(|p| p.into_inner());
        let size_proven = proven || newly.contains(&(total - 1));
        let complete = if self.has(hash)? {
            record = PartialRecord::new(size);
            for g in 0..total {
                record.set(g);
            }
            true
        } else {
            let mut current = match self.partial(hash)? {
                Some(r) if r.size == size => r,
                // Another ingest proved a different size meanwhile: this source lied.
                Some(r) => {
                    let present = r.count();
                    return Err(misbehaved(
                        format!("claims {size} bytes; its proven size is {}", r.size),
                        present,
                    ));
                }
                None => PartialRecord::new(size),
            };
            for g in &newly {
                current.set(*g);
            }
            record = current;
            if record.is_complete() {
                self.complete_partial(hash, &record, data, outboard.data)?;
                true
            } else if !size_proven {
                // The last group did not verify: the claimed size is unproven, so nothing is
                // recorded (the next source starts again from its last group).
                newly.clear();
                record = PartialRecord::new(size);
                written = 0;
                false
            } else {
                self.partial
                    .insert(hash.as_bytes(), record.encode())
                    .map_err(StoreError::from)?;
                self.db.flush().map_err(StoreError::from)?;
                false
            }
        };
        let outcome = IngestOutcome {
            groups_written: written,
            groups_present: record.count(),
            groups_total: total,
            complete,
        };
        match failure {
            None => Ok(outcome),
            Some(
                e @ (bao_tree::io::DecodeError::LeafHashMismatch(_)
                | bao_tree::io::DecodeError::ParentHashMismatch(_)),
            ) => Err(IngestError::PeerMisbehaved {
                hash,
                reason: format!("{e}"),
                outcome,
            }),
            Some(bao_tree::io::DecodeError::Io(e))
                if e.kind() != std::io::ErrorKind::UnexpectedEof =>
            {
                Err(IngestError::Store(crate::io_error(
                    format!("reading the stream for blob {hash}"),
                    e,
                )))
            }
            Some(e) => Err(IngestError::Incomplete {
                hash,
                reason: format!("{e}"),
                outcome,
            }),
        }
    }

    fn complete_partial(
        &self,
        hash: BlobHash,
        record: &PartialRecord,
        data: File,
        outboard: File,
    ) -> Result<()> {
        let (data_path, ob_path) = self.partial_paths(&hash);
        data.set_len(record.size)
            .ctx(|| format!("truncating {}", data_path.display()))?;
        outboard
            .set_len(tree(record.size).outboard_size())
            .ctx(|| format!("truncating {}", ob_path.display()))?;
        data.sync_all()
            .ctx(|| format!("syncing {}", data_path.display()))?;
        outboard
            .sync_all()
            .ctx(|| format!("syncing {}", ob_path.display()))?;
        let _guard = self.commit_lock();
        std::fs::rename(&data_path, self.data_path(&hash))
            .ctx(|| format!("moving {}", data_path.display()))?;
        std::fs::rename(&ob_path, self.outboard_path(&hash))
            .ctx(|| format!("moving {}", ob_path.display()))?;
        sync_dir(&self.root.join("blobs"))?;
        let blob = BlobRecord {
            size: record.size,
            layout: Layout::File,
            links: Vec::new(),
            kind: "raw".into(),
        };
        self.blobs.insert(hash.as_bytes(), blob.encode())?;
        self.partial.remove(hash.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}
