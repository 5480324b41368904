//! `/moxnet/generate/1`: a language-model generation between peers, on its own libp2p stream so
//! that tokens reach the caller as they are made.
//!
//! The caller writes one framed [`InferCall`](protocol::compute::InferCall) (its input an
//! encoded [`GenerateInput`](protocol::generate::GenerateInput)); the provider answers with
//! framed [`GenerateFrame::Text`] frames, each flushed as soon as it is written, and one
//! [`GenerateFrame::End`], then closes. Nothing here decodes the call or checks a reply: the
//! node does ([`crate::NetEvent::GenerateCall`], `compute::check_generation`).
//!
//! Bounds: at most [`MAX_INBOUND`] generation streams are served at once (more are answered
//! busy), a caller has 10 s (`blob::HANDSHAKE_TIMEOUT`) to send its call, which is at most
//! `MAX_INFER_CALL_BYTES`; a frame read is at most [`MAX_GENERATE_FRAME_BYTES`]. A caller that
//! goes away ends the provider's next write, which ends the generation.

use std::sync::Arc;

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use protocol::Object;
use protocol::compute::{InferReply, InferStatus, MAX_INFER_CALL_BYTES};
use protocol::generate::{GenerateFrame, MAX_GENERATE_FRAME_BYTES, MAX_TEXT_FRAME_BYTES, Timings};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::blob::{DIAL_TIMEOUT, HANDSHAKE_TIMEOUT};
use crate::codec::{read_frame, write_frame};
use crate::{NetError, NetEvent};

/// Generation streams served at once; more are answered busy.
pub const MAX_INBOUND: usize = 64;

pub(crate) fn protocol_id() -> StreamProtocol {
    StreamProtocol::new("/moxnet/generate/1")
}

/// The provider's end of one generation stream: text frames, then the end.
pub struct GenerateResponder {
    peer: PeerId,
    stream: Stream,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for GenerateResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateResponder")
            .field("peer", &self.peer)
            .finish()
    }
}

async fn send(stream: &mut Stream, frame: &GenerateFrame) -> std::io::Result<()> {
    write_frame(stream, &frame.to_bytes()).await?;
    // A token is worth sending now, not when a buffer fills.
    stream.flush().await
}

impl GenerateResponder {
    /// Sends text as it was made (split into frames of at most [`MAX_TEXT_FRAME_BYTES`] at
    /// character boundaries). An error means the caller went away: stop generating.
    pub async fn text(&mut self, mut text: &str) -> Result<(), NetError> {
        while !text.is_empty() {
            let mut cut = text.len().min(MAX_TEXT_FRAME_BYTES);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, rest) = text.split_at(cut);
            send(&mut self.stream, &GenerateFrame::Text(piece.to_string()))
                .await
                .map_err(|e| NetError::Unavailable {
                    peer: self.peer,
                    reason: format!("the caller went away: {e}"),
                })?;
            text = rest;
        }
        Ok(())
    }

    /// Sends the last frame and closes the stream.
    pub async fn end(mut self, reply: InferReply, timings: Timings) -> Result<(), NetError> {
        let peer = self.peer;
        let end = async {
            send(&mut self.stream, &GenerateFrame::End(reply, timings)).await?;
            self.stream.close().await
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, end).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NetError::Unavailable {
                peer,
                reason: format!("the caller went away: {e}"),
            }),
            Err(_) => Err(NetError::Unavailable {
                peer,
                reason: "the caller does not read".into(),
            }),
        }
    }
}

/// The caller's end of one generation stream.
pub struct GenerateStream {
    peer: PeerId,
    stream: Stream,
}

impl std::fmt::Debug for GenerateStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateStream")
            .field("peer", &self.peer)
            .finish()
    }
}

impl GenerateStream {
    /// The provider.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The next frame. Bound the wait with your own deadline; dropping the stream cancels the
    /// generation.
    pub async fn next(&mut self) -> Result<GenerateFrame, NetError> {
        let peer = self.peer;
        let bytes = read_frame(&mut self.stream, MAX_GENERATE_FRAME_BYTES)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => NetError::PeerMisbehaved {
                    peer,
                    reason: format!("generation frame: {e}"),
                },
                _ => NetError::Unavailable {
                    peer,
                    reason: format!("the generation stream ended: {e}"),
                },
            })?;
        GenerateFrame::from_bytes(&bytes).map_err(|e| NetError::PeerMisbehaved {
            peer,
            reason: format!("generation frame: {e}"),
        })
    }
}

/// Opens a generation stream to `peer` and sends the encoded call.
pub(crate) async fn open(
    mut control: crate::streams::Control,
    peer: PeerId,
    call: &[u8],
) -> Result<GenerateStream, NetError> {
    let unavailable = |reason: String| NetError::Unavailable { peer, reason };
    let mut stream = tokio::time::timeout(DIAL_TIMEOUT, control.open_stream(peer, protocol_id()))
        .await
        .map_err(|_| unavailable(format!("not reachable within {} s", DIAL_TIMEOUT.as_secs())))?
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        write_frame(&mut stream, call).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| unavailable("the provider does not read".into()))?
    .map_err(|e| unavailable(e.to_string()))?;
    Ok(GenerateStream { peer, stream })
}

/// Answers `stream` busy and closes it (within the handshake timeout).
async fn busy(peer: PeerId, mut stream: Stream, why: &str) {
    let reply = InferReply::error(InferStatus::Busy, why);
    let answer = async {
        send(&mut stream, &GenerateFrame::End(reply, Timings::default())).await?;
        stream.close().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, answer).await {
        tracing::debug!(%peer, "answering a generation busy: {e}");
    }
}

/// Accepts generation streams: reads each call and hands it to the node as a
/// [`NetEvent::GenerateCall`].
pub(crate) async fn accept(mut incoming: crate::streams::Incoming, events: mpsc::Sender<NetEvent>) {
    let slots = Arc::new(Semaphore::new(MAX_INBOUND));
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                busy(
                    peer,
                    stream,
                    &format!("{MAX_INBOUND} generations are running here"),
                )
                .await;
            });
            continue;
        };
        let events = events.clone();
        tokio::spawn(async move {
            let call = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                read_frame(&mut stream, MAX_INFER_CALL_BYTES),
            )
            .await;
            let call = match call {
                Ok(Ok(call)) => call,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "reading a generation call: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "a generation call did not come in time");
                    return;
                }
            };
            let responder = Box::new(GenerateResponder {
                peer,
                stream,
                _slot: slot,
            });
            if let Err(e) = events.try_send(NetEvent::GenerateCall {
                from: peer,
                call,
                responder,
            }) {
                let (why, event) = match e {
                    mpsc::error::TrySendError::Full(ev) => ("the node is overloaded", ev),
                    mpsc::error::TrySendError::Closed(ev) => ("the node is stopping", ev),
                };
                if let NetEvent::GenerateCall { responder, .. } = event {
                    busy(peer, responder.stream, why).await;
                }
            }
        });
    }
}
