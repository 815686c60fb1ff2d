//! Replaying a request on a retry, as Envoy does: the body streams to the first attempt as it
//! arrives (never held back, so a streaming client waiting for an answer mid-body is served)
//! while a copy is kept up to a limit; a retry sends the copy again and then goes on with the
//! rest of the client's body. Once the body has gone past the limit the request can no longer
//! be retried. The request head is copied per attempt.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request};
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::upstream::{BoxError, UpBody};

/// A copy of the request head for one attempt.
pub(crate) fn clone_head(head: &Request<()>) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = head.method().clone();
    *r.uri_mut() = head.uri().clone();
    *r.version_mut() = head.version();
    *r.headers_mut() = head.headers().clone();
    r
}

/// What was read of the client's body, shared by the attempts.
struct Shared {
    source: UpBody,
    /// Frames read so far, while within the limit.
    kept: Vec<Kept>,
    kept_bytes: usize,
    limit: usize,
    /// The body went past the limit: what was read is no longer all kept.
    overflowed: bool,
    ended: bool,
    /// The attempt allowed to read; older ones are cut off.
    generation: u64,
}

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// The client's body, kept for replays up to a limit. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Replay(Arc<Mutex<Shared>>);

/// Why an attempt's body stopped.
#[derive(Debug, thiserror::Error)]
#[error("a newer attempt took over the request body")]
pub struct Superseded;

impl Replay {
    pub(crate) fn new(source: UpBody, limit: usize) -> Replay {
        Replay(Arc::new(Mutex::new(Shared {
            source,
            kept: Vec::new(),
            kept_bytes: 0,
            limit,
            overflowed: false,
            ended: false,
            generation: 0,
        })))
    }

    /// Whether another attempt can be sent the whole body.
    pub(crate) fn replayable(&self) -> bool {
        !self.0.lock().overflowed
    }

    /// The body of the next attempt: what was kept, then the rest as it arrives. Earlier
    /// attempts' bodies end with an error from now on.
    pub(crate) fn attempt(&self) -> AttemptBody {
        let mut s = self.0.lock();
        s.generation += 1;
        AttemptBody {
            shared: self.0.clone(),
            generation: s.generation,
            next: 0,
        }
    }
}

/// One attempt's request body.
pub(crate) struct AttemptBody {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// Index of the next kept frame to send.
    next: usize,
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = this.shared.lock();
        if s.generation != this.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if let Some(k) = s.kept.get(this.next) {
            this.next += 1;
            let frame = match k {
                Kept::Data(d) => Frame::data(d.clone()),
                Kept::Trailers(t) => Frame::trailers(t.clone()),
            };
            return Poll::Ready(Some(Ok(frame)));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut s.source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(f))) => f,
        };
        if !s.overflowed {
            let kept = if let Some(d) = frame.data_ref() {
                s.kept_bytes += d.len();
                Kept::Data(d.clone())
            } else if let Some(t) = frame.trailers_ref() {
                Kept::Trailers(t.clone())
            } else {
                return Poll::Ready(Some(Ok(frame)));
            };
            if s.kept_bytes > s.limit {
                // Past the limit: no replay any more, and the copy is let go.
                s.overflowed = true;
                s.kept = Vec::new();
            } else {
                s.kept.push(kept);
                this.next = s.kept.len();
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock();
        self.next >= s.kept.len() && (s.ended || s.source.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock();
        // Before its first frame, an attempt's body is the whole body (hyper sizes the request
        // from it): what was kept plus what the client has still to send.
        match s.source.size_hint().exact() {
            Some(rest) if self.next == 0 && !s.overflowed => {
                SizeHint::with_exact(rest + s.kept_bytes as u64)
            }
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
