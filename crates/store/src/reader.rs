//! Random and sequential access to a complete blob's bytes, whether one file or many parts.

use std::fs::File;
use std::io::{self, Read};

use positioned_io::{ReadAt, Size};

/// A complete blob's bytes: one file, or the concatenation of part files.
#[derive(Debug)]
pub enum BlobReader {
    /// `blobs/<hash>.data`.
    File(File),
    /// Parts in order, with the offset each starts at.
    Parts(Vec<(u64, u64, File)>),
}

impl BlobReader {
    pub(crate) fn parts(files: Vec<(File, u64)>) -> Self {
        let mut offset = 0;
        let mut parts = Vec::with_capacity(files.len());
        for (file, len) in files {
            parts.push((offset, len, file));
            offset += len;
        }
        BlobReader::Parts(parts)
    }

    /// A sequential reader from the start.
    pub fn reader(&self) -> SeqReader<'_> {
        SeqReader { blob: self, pos: 0 }
    }
}

impl ReadAt for BlobReader {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlobReader::File(f) => f.read_at(pos, buf),
            BlobReader::Parts(parts) => {
                // The part containing `pos`: the last one starting at or before it.
                let idx = parts.partition_point(|(start, _, _)| *start <= pos);
                let Some((start, len, file)) = idx.checked_sub(1).and_then(|i| parts.get(i)) else {
                    return Ok(0);
                };
                let within = pos - start;
                if within >= *len {
                    // Past the end of the last part (zero-length parts never appear).
                    return Ok(0);
                }
                let n = buf.len().min((len - within) as usize);
                file.read_at(within, &mut buf[..n])
            }
        }
    }
}

impl Size for BlobReader {
    fn size(&self) -> io::Result<Option<u64>> {
        match self {
            BlobReader::File(f) => Ok(Some(f.metadata()?.len())),
            BlobReader::Parts(parts) => Ok(Some(parts.last().map_or(0, |(s, l, _)| s + l))),
        }
    }
}

/// Reads a [`BlobReader`] front to back.
#[derive(Debug)]
pub struct SeqReader<'a> {
    blob: &'a BlobReader,
    pos: u64,
}

impl Read for SeqReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.blob.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}
