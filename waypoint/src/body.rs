//! Body wrappers of the request path: count bytes as they stream (bodies are never buffered
//! whole), and finish a request's record when its response body ends or is dropped.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};

use crate::record::Record;

/// The response body type of the pipeline.
pub type RespBody = BoxBody<Bytes, hyper::Error>;

/// A body of `text`.
pub fn text(text: impl Into<Bytes>) -> RespBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> RespBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pin_project_lite::pin_project! {
    /// Counts the data bytes that pass.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        count: Arc<AtomicU64>,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counted { inner, count }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The response body: counts bytes, reads a gRPC status from trailers, and finishes the
    /// request's record at the end (or, dropped early, as a downstream disconnect).
    pub struct Finishing<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
        bytes: u64,
    }
    impl<B> PinnedDrop for Finishing<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                record.finish_body(*this.bytes, false);
            }
        }
    }
}

impl<B> Finishing<B> {
    pub fn new(inner: B, record: Record) -> Self {
        Finishing {
            inner,
            record: Some(record),
            bytes: 0,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Finishing<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.len() as u64;
                } else if let Some(trailers) = f.trailers_ref() {
                    if let (Some(record), Some(status)) =
                        (this.record.as_mut(), trailers.get("grpc-status"))
                    {
                        record.grpc_status = status.to_str().ok().map(str::to_string);
                    }
                }
            }
            None => {
                if let Some(record) = this.record.take() {
                    record.finish_body(*this.bytes, true);
                }
            }
            Some(Err(_)) => {
                if let Some(mut record) = this.record.take() {
                    // The upstream reset mid-response.
                    record.flags = "UR";
                    record.finish_body(*this.bytes, true);
                }
            }
        }
        // hyper may stop polling once the body says it has ended.
        if this.inner.is_end_stream() {
            if let Some(record) = this.record.take() {
                record.finish_body(*this.bytes, true);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
