//! The controller's small read-only HTTP/1 listeners (the debug endpoints, the live graph
//! page): one accept loop for both, with the bounds a listener open to a whole cluster
//! network needs.
//!
//! A client has 10 s to send its request headers, and a connection is asked to close after a
//! minute: hyper's graceful shutdown lets a request in progress finish and then closes, so a
//! browser polling the page reconnects without a failed fetch, and no client holds a
//! connection for ever.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// After this a connection is asked to close (once its request in progress is answered).
const CONNECTION_LIFE: Duration = Duration::from_secs(60);
/// How long a connection asked to close may take to finish its request.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` for ever, answering each request with `answer`. `name`
/// says which listener a logged accept error is from.
pub async fn serve<F>(listener: TcpListener, name: &'static str, answer: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, usually: wait rather than spin.
                tracing::warn!(error = %e, "{name}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = answer(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(CONNECTION_LIFE) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        });
    }
}
