//! Splitting a `.safetensors` file into its header and one byte range per tensor, so that
//! training snapshots sharing tensors share storage.
//!
//! Format: an 8-byte little-endian header length `N`, `N` bytes of JSON mapping tensor names to
//! `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the end of the header),
//! then the tensor data. Anything unexpected makes [`split`] return `None` and the file is
//! stored whole: dedup is an optimisation, never a reason to refuse a file.

use std::fs::File;
use std::io;

use positioned_io::ReadAt;

/// Largest header we parse (the format's own reference implementation caps it at 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// The byte ranges `(offset, len)` that cover the file exactly: header, tensors in data order,
/// and any gaps between them. `None` if the file is not well-formed safetensors.
pub(crate) fn split(file: &File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    if size < 8 {
        return Ok(None);
    }
    let mut len = [0u8; 8];
    file.read_exact_at(0, &mut len)?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > size - 8 {
        return Ok(None);
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(8, &mut header)?;
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&header) else {
        return Ok(None);
    };
    let data_start = 8 + n;
    let data_len = size - data_start;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let Some([b, e]) = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|a| match a.as_slice() {
                [b, e] => Some([b.as_u64()?, e.as_u64()?]),
                _ => None,
            })
        else {
            return Ok(None);
        };
        if b > e || e > data_len {
            return Ok(None);
        }
        if e > b {
            tensors.push((b, e));
        }
    }
    tensors.sort_unstable();
    let mut parts = vec![(0, data_start)];
    let mut cursor = 0;
    for (b, e) in tensors {
        if b < cursor {
            return Ok(None); // overlapping tensors: store whole
        }
        if b > cursor {
            parts.push((data_start + cursor, b - cursor));
        }
        parts.push((data_start + b, e - b));
        cursor = e;
    }
    if cursor < data_len {
        parts.push((data_start + cursor, data_len - cursor));
    }
    Ok(Some(parts))
}
