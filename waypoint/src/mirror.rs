//! RequestMirror: a copy of the request, body included, to another service, fire and forget.
//! The original's body is teed as it streams: each frame is offered to the mirror's bounded
//! queue and never waited for. A mirror that falls behind (queue full) is cut off and its
//! request aborted, so a slow or dead mirror never slows or fails the original; its response
//! is read and dropped. A mirror to a DestinationRule subset goes to the subset's endpoints
//! (none known: no mirror).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::mpsc;
use tracing::debug;

use crate::balance::{pick_endpoint, Choice, Dest};
use crate::headers::authority_of;
use crate::l7::routes::Backend;
use crate::l7::L7Snapshot;
use crate::pipeline::HOP_BY_HOP;
use crate::upstream::{BoxError, Endpoint, UpstreamError, Version};
use crate::Waypoint;

/// Frames a mirror may lag behind the original before it is cut off.
const QUEUE_FRAMES: usize = 32;
/// A mirrored request's whole life.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// A mirror decided for a request: where it goes and its head.
pub struct Plan {
    endpoint: Endpoint,
    head: Request<()>,
}

/// The mirror of `req` to `backend` (its subset's endpoints if it names one), if it has an
/// endpoint.
pub fn plan(
    wp: &Waypoint,
    snapshot: &mesh::state::Snapshot,
    l7: &L7Snapshot,
    req: &Request<Incoming>,
    backend: &Backend,
) -> Option<Plan> {
    let version = if req.version() == http::Version::HTTP_2 {
        Version::Http2
    } else {
        Version::Http1
    };
    let subset = match backend.subset.as_deref() {
        None => None,
        Some(name) => {
            let policy = l7.routes.get(&backend.service)?.destination.as_ref()?;
            Some(policy.level(Some(name))?.1?)
        }
    };
    let dest = Dest::Service {
        key: backend.service.clone(),
        port: backend.port,
    };
    let choice = Choice {
        subset,
        ..Default::default()
    };
    let (endpoint, _) = pick_endpoint(wp, snapshot, &dest, version, &choice).ok()?;
    let authority = authority_of(req).unwrap_or_default();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = match version {
        Version::Http2 => format!("http://{authority}{pq}"),
        Version::Http1 => pq.to_string(),
    };
    let mut head = Request::builder()
        .method(req.method().clone())
        .uri(uri)
        .body(())
        .ok()?;
    let mut headers = req.headers().clone();
    for h in HOP_BY_HOP.iter() {
        headers.remove(h);
    }
    if version == Version::Http2 {
        headers.remove(header::HOST);
    }
    *head.headers_mut() = headers;
    Some(Plan { endpoint, head })
}

/// Starts the mirrors of `plans` and returns `body` teed to them.
pub fn start<B>(wp: &Arc<Waypoint>, plans: Vec<Plan>, body: B) -> Tee<B> {
    let mut taps = Vec::with_capacity(plans.len());
    for plan in plans {
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let complete = Arc::new(AtomicBool::new(false));
        taps.push(Tap {
            tx,
            complete: complete.clone(),
        });
        let (parts, ()) = plan.head.into_parts();
        let request = Request::from_parts(
            parts,
            TapBody { rx, complete }.map_err(BoxError::from).boxed(),
        );
        let upstream = wp.upstream.clone();
        let endpoint = plan.endpoint;
        tokio::spawn(async move {
            let sent = tokio::time::timeout(MIRROR_TIMEOUT, async {
                let resp = upstream.send(&endpoint, request).await?;
                // Read to the end so an HTTP/1.1 connection can be reused.
                let _ = resp.into_body().collect().await;
                Ok::<_, UpstreamError>(())
            })
            .await;
            match sent {
                Ok(Err(e)) => debug!(error = %e, "mirrored request failed"),
                Err(_) => debug!("mirrored request timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
    Tee { inner: body, taps }
}

struct Tap {
    tx: mpsc::Sender<Bytes>,
    /// Set before `tx` is dropped when the original body ended cleanly.
    complete: Arc<AtomicBool>,
}

pin_project_lite::pin_project! {
    /// The original request body, offering each data frame to the mirrors.
    pub struct Tee<B> {
        #[pin]
        inner: B,
        taps: Vec<Tap>,
    }
}

impl<B: Body<Data = Bytes>> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    // A full queue means the mirror is behind: cut it off (dropping the
                    // sender without `complete` aborts its request).
                    this.taps.retain(|t| t.tx.try_send(data.clone()).is_ok());
                }
            }
            None => {
                for t in this.taps.drain(..) {
                    t.complete.store(true, Ordering::Release);
                }
            }
            // The original broke off: so do the mirrors.
            Some(Err(_)) => this.taps.clear(),
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

/// Why a mirrored body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the mirror fell behind the original request, or the original broke off")]
pub struct MirrorAborted;

/// A mirror's request body: the frames the tee offered it.
pub struct TapBody {
    rx: mpsc::Receiver<Bytes>,
    complete: Arc<AtomicBool>,
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = MirrorAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MirrorAborted>>> {
        match ready!(self.rx.poll_recv(cx)) {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None if self.complete.load(Ordering::Acquire) => Poll::Ready(None),
            None => Poll::Ready(Some(Err(MirrorAborted))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn frames(
        chunks: Vec<&'static str>,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        StreamBody::new(futures::stream::iter(chunks.into_iter().map(|c| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c.as_bytes())))
        })))
    }

    fn tap(capacity: usize) -> (Tap, TapBody) {
        let (tx, rx) = mpsc::channel(capacity);
        let complete = Arc::new(AtomicBool::new(false));
        (
            Tap {
                tx,
                complete: complete.clone(),
            },
            TapBody { rx, complete },
        )
    }

    #[tokio::test]
    async fn a_mirror_gets_the_whole_body() {
        let (t, mirror) = tap(8);
        let tee = Tee {
            inner: frames(vec!["hello ", "mirrored ", "world"]),
            taps: vec![t],
        };
        let original = tee.collect().await.unwrap().to_bytes();
        assert_eq!(original, "hello mirrored world");
        let copy = mirror.collect().await.unwrap().to_bytes();
        assert_eq!(copy, "hello mirrored world");
    }

    #[tokio::test]
    async fn a_mirror_that_falls_behind_is_cut_off_and_the_original_is_whole() {
        let (t, mirror) = tap(1);
        let tee = Tee {
            inner: frames(vec!["a", "b", "c", "d"]),
            taps: vec![t],
        };
        // Nobody reads the mirror while the original streams: its queue fills at once.
        let original = tee.collect().await.unwrap().to_bytes();
        assert_eq!(original, "abcd");
        let copy = mirror.collect().await;
        assert!(copy.is_err(), "a cut-off mirror must fail, not end short");
    }
}
