//! The worker's end of its pipe: request frames read (a closed pipe told from a broken one and
//! from garbage), reply frames written and flushed. Shared by graph and llama workers.

use std::io::{Read, Write};

use crate::wire::{self, Reply, Request};

/// Why a request could not be read: the pipe broke (exit code 5), or its frame is garbage (6,
/// with why).
pub(crate) enum BadFrame {
    Broken,
    Malformed(String),
}

impl BadFrame {
    /// The worker's exit code for it.
    pub(crate) fn code(&self) -> u8 {
        match self {
            BadFrame::Broken => 5,
            BadFrame::Malformed(_) => 6,
        }
    }
}

/// Reads one request; `Ok(None)` when the pipe closed between frames.
pub(crate) fn read_frame(input: &mut impl Read) -> Result<Option<Request>, BadFrame> {
    let mut header = [0; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(_) => return Err(BadFrame::Broken),
    }
    let len = wire::payload_len(header).map_err(|e| BadFrame::Malformed(e.to_string()))?;
    let mut payload = vec![0; len];
    input
        .read_exact(&mut payload)
        .map_err(|_| BadFrame::Broken)?;
    Request::decode(&payload)
        .map(Some)
        .map_err(|e| BadFrame::Malformed(e.to_string()))
}

/// Writes one reply frame and flushes it: header and payload in one write, so that the node,
/// waiting for the reply, wakes once (not once for the header, then for the payload).
pub(crate) fn send(out: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    out.write_all(&reply.frame().map_err(std::io::Error::other)?)?;
    out.flush()
}
