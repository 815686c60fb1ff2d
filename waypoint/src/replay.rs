//! Replaying a request on a retry: its head copied per attempt, and its body read into memory
//! up to a limit before the first attempt (Envoy buffers for retries too). A body that ends
//! within the limit is sent again as often as needed; one that goes past it is sent once,
//! the part already read first and the rest as it streams.

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Body;

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

/// A body read up to a limit.
pub(crate) enum Buffered<B> {
    /// It ended within the limit.
    Whole(Bytes),
    /// It went past the limit: what was read, and the rest still to stream.
    Partial(Bytes, B),
}

/// Reads `body` until it ends or passes `limit` bytes. Trailers of a request body are not
/// kept (requests rarely carry them; gRPC's are in responses).
pub(crate) async fn buffer<B>(mut body: B, limit: usize) -> Result<Buffered<UpBody>, BoxError>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Buffered::Partial(
                    buf.freeze(),
                    body.map_err(Into::into).boxed(),
                ));
            }
        }
    }
    Ok(Buffered::Whole(buf.freeze()))
}

pin_project_lite::pin_project! {
    /// A body read in part: the bytes already read, then the rest as it streams.
    pub(crate) struct Prefixed {
        pub(crate) prefix: Option<Bytes>,
        #[pin]
        pub(crate) rest: UpBody,
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(p) = this.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(p))));
        }
        this.rest.poll_frame(cx)
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
