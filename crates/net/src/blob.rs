//! `/moxnet/blob/1`: verified blob ranges over a libp2p stream per request.
//!
//! The requester writes a framed [`BlobRequest`]; the provider answers with a framed
//! [`BlobResponseHeader`] and, if the status is ok, the bao encoding of the requested chunk
//! groups, then closes the stream. Nothing here checks the data: the receiver's store verifies
//! every group against the hash before writing it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use protocol::Object;
use protocol::wire::{
    self, BlobRequest, BlobResponseHeader, MAX_BLOB_HEADER_BYTES, MAX_BLOB_REQUEST_BYTES, Status,
};
use tokio::sync::{Semaphore, mpsc};

use crate::codec::{read_frame, write_frame};
use crate::{NetError, Provider};

/// How long a peer may take to send its request, or a provider its header.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transfer may go without a byte before it counts as stalled.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Chunk size between the blocking reader of the store and the stream.
const PIPE_CHUNK: usize = 256 * 1024;

/// Limits on inbound blob requests.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Streams served at once for one peer; more get [`Status::Busy`].
    pub per_peer: usize,
    /// Streams served at once in total.
    pub total: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            per_peer: 8,
            total: 64,
        }
    }
}

pub(crate) fn protocol_id() -> StreamProtocol {
    StreamProtocol::new(wire::BLOB_PROTOCOL)
}

/// Accepts inbound blob streams until the swarm goes away.
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    provider: Arc<dyn Provider>,
    limits: ServeLimits,
) {
    let global = Arc::new(Semaphore::new(limits.total));
    let per_peer: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    while let Some((peer, mut stream)) = incoming.next().await {
        let admitted = {
            let mut counts = per_peer.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(peer).or_insert(0);
            if *n >= limits.per_peer {
                false
            } else {
                *n += 1;
                true
            }
        };
        let permit = if admitted {
            global.clone().try_acquire_owned().ok()
        } else {
            None
        };
        let per_peer = per_peer.clone();
        let provider = provider.clone();
        tokio::spawn(async move {
            match permit {
                None => {
                    let _ = answer(&mut stream, Status::Busy, None).await;
                }
                Some(_permit) => {
                    let _ = serve_one(&mut stream, provider).await;
                }
            }
            let _ = stream.close().await;
            if admitted {
                let mut counts = per_peer.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = counts.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&peer);
                    }
                }
            }
        });
    }
}

async fn answer(stream: &mut Stream, status: Status, size: Option<u64>) -> io::Result<()> {
    write_frame(stream, &BlobResponseHeader { status, size }.to_bytes()).await
}

async fn serve_one(stream: &mut Stream, provider: Arc<dyn Provider>) -> io::Result<()> {
    let frame = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_frame(stream, MAX_BLOB_REQUEST_BYTES),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let Ok(request) = BlobRequest::from_bytes(&frame) else {
        return answer(stream, Status::BadRequest, None).await;
    };
    let hash = request.hash;
    let size = {
        let provider = provider.clone();
        tokio::task::spawn_blocking(move || provider.blob_size(hash))
            .await
            .ok()
            .flatten()
    };
    let Some(size) = size else {
        return answer(stream, Status::NotFound, None).await;
    };
    let groups = size.div_ceil(protocol::CHUNK_GROUP_BYTES).max(1);
    if request.groups.last().is_some_and(|(_, end)| *end > groups) {
        return answer(stream, Status::BadRequest, None).await;
    }
    answer(stream, Status::Ok, Some(size)).await?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut pipe = Pipe {
            tx,
            buf: Vec::with_capacity(PIPE_CHUNK),
        };
        provider.serve(hash, &request.groups, &mut pipe)?;
        pipe.flush()
    });
    while let Some(chunk) = rx.recv().await {
        stream.write_all(&chunk).await?;
    }
    // A failure while reading the local copy (it may be corrupt) ends the stream early; the
    // requester sees a short response and retries elsewhere.
    match producer.await {
        Ok(Ok(())) => stream.flush().await,
        Ok(Err(e)) => Err(e),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// A `Write` on a blocking thread that hands chunks to the async side.
struct Pipe {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for Pipe {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIPE_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_CHUNK));
            self.tx
                .blocking_send(chunk)
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "requester went away"))?;
        }
        Ok(())
    }
}

/// An open response: the blob's size as the provider states it, and the encoded groups.
pub struct BlobResponse {
    /// Who sends it.
    pub peer: PeerId,
    /// The size the provider claims (the bao encoding proves or refutes it).
    pub size: u64,
    stream: Stream,
}

impl std::fmt::Debug for BlobResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobResponse")
            .field("peer", &self.peer)
            .field("size", &self.size)
            .finish()
    }
}

impl BlobResponse {
    /// A blocking `Read` over the encoded groups, for the store's `ingest` on a blocking thread.
    /// A read that waits longer than [`IDLE_TIMEOUT`] fails with `TimedOut`.
    pub fn into_blocking_reader(self, runtime: tokio::runtime::Handle) -> BlockingReader {
        BlockingReader {
            stream: self.stream,
            runtime,
        }
    }
}

/// See [`BlobResponse::into_blocking_reader`].
pub struct BlockingReader {
    stream: Stream,
    runtime: tokio::runtime::Handle,
}

impl Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stream = &mut self.stream;
        self.runtime.block_on(async {
            tokio::time::timeout(IDLE_TIMEOUT, stream.read(buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stalled"))?
        })
    }
}

/// Opens a stream to `peer`, sends the request, and reads the header.
pub(crate) async fn request(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    request: &BlobRequest,
) -> Result<BlobResponse, NetError> {
    let unavailable = |reason: String| NetError::Unavailable { peer, reason };
    let mut stream = control
        .open_stream(peer, protocol_id())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    write_frame(&mut stream, &request.to_bytes())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let header = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_frame(&mut stream, MAX_BLOB_HEADER_BYTES),
    )
    .await
    .map_err(|_| unavailable("no answer".into()))?
    .map_err(|e| unavailable(e.to_string()))?;
    let header = BlobResponseHeader::from_bytes(&header).map_err(|e| NetError::PeerMisbehaved {
        peer,
        reason: format!("blob header: {e}"),
    })?;
    match (header.status, header.size) {
        (Status::Ok, Some(size)) => Ok(BlobResponse { peer, size, stream }),
        (Status::Busy, _) => Err(NetError::Busy { peer }),
        (status, _) => Err(unavailable(format!("{status:?}"))),
    }
}
