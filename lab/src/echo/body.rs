//! The bodies the echo app answers with: one buffer, the byte pattern generated as it is sent
//! (so `/bytes/N` holds one chunk at a time whatever N is), or a fixed list of frames ending in
//! trailers (gRPC). Test clients upload the pattern with the same type.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::pattern::{pattern, CHUNK};

/// A response (or request) body of the echo app.
#[derive(Debug)]
pub enum EchoBody {
    /// One buffer, taken when sent.
    Once(Option<Bytes>),
    /// `len` bytes of the pattern, `sent` of them gone.
    Pattern { sent: u64, len: u64 },
    /// Data and trailers frames, in order.
    Frames(VecDeque<Frame<Bytes>>),
}

impl EchoBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        EchoBody::Once(Some(data.into()))
    }

    pub fn empty() -> Self {
        EchoBody::Once(None)
    }

    /// The first `len` bytes of the pattern, in [`CHUNK`]-sized frames.
    pub fn pattern(len: u64) -> Self {
        EchoBody::Pattern { sent: 0, len }
    }

    pub fn frames(frames: impl IntoIterator<Item = Frame<Bytes>>) -> Self {
        EchoBody::Frames(frames.into_iter().collect())
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // Every variant is ready at once: hyper only polls a body when the connection can take
        // more (HTTP/1 write buffer, HTTP/2 flow-control window), which is what bounds memory.
        let frame = match self.get_mut() {
            EchoBody::Once(data) => data.take().filter(|d| !d.is_empty()).map(Frame::data),
            EchoBody::Pattern { sent, len } => {
                let left = *len - *sent;
                (left > 0).then(|| {
                    let piece = pattern(*sent, left.min(CHUNK as u64) as usize);
                    *sent += piece.len() as u64;
                    Frame::data(piece)
                })
            }
            EchoBody::Frames(frames) => frames.pop_front(),
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EchoBody::Once(data) => data.as_ref().is_none_or(Bytes::is_empty),
            EchoBody::Pattern { sent, len } => sent == len,
            EchoBody::Frames(frames) => frames.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EchoBody::Once(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len()) as u64)
            }
            EchoBody::Pattern { sent, len } => SizeHint::with_exact(len - sent),
            // Trailers make the length unknowable up front for HTTP/1 anyway.
            EchoBody::Frames(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::echo::pattern::first_mismatch;

    #[tokio::test]
    async fn pattern_body_streams_the_pattern_in_chunks() {
        let len = 3 * CHUNK as u64 + 10;
        let mut body = EchoBody::pattern(len);
        assert_eq!(body.size_hint().exact(), Some(len));
        let mut sizes = Vec::new();
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            sizes.push(data.len());
            got.extend_from_slice(&data);
        }
        assert_eq!(sizes, [CHUNK, CHUNK, CHUNK, 10]);
        assert_eq!(first_mismatch(0, &got), None);
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn frames_end_with_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = EchoBody::frames([
            Frame::data(Bytes::from_static(b"a")),
            Frame::trailers(trailers),
        ]);
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"a"));
        assert!(EchoBody::empty().is_end_stream());
        assert_eq!(EchoBody::full("xyz").size_hint().exact(), Some(3));
    }
}
