//! Framing for the request-response protocols (catalogue sync, inference calls): a 4-byte
//! big-endian length, then that many bytes of deterministic CBOR, each direction with its own
//! size limit.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use protocol::wire::check_frame_len;

/// Reads one frame of at most `max` bytes; a longer announced length is refused before reading.
pub(crate) async fn read_frame<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = check_frame_len(u32::from_be_bytes(len), max)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame.
pub(crate) async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    payload: &[u8],
) -> io::Result<()> {
    io.write_all(&protocol::wire::frame(payload)).await
}

/// A request-response codec whose messages are raw CBOR bytes (decoded by the event loop or the
/// node), each direction bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameCodec {
    /// The largest request read.
    pub(crate) max_request: usize,
    /// The largest response read.
    pub(crate) max_response: usize,
}

impl Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await?;
        io.close().await
    }
}
