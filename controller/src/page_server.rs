//! The controller's small read-only HTTP/1 listeners (the debug endpoints, the live graph
//! page): one accept loop for both, with the bounds a listener open to a whole cluster
//! network needs.
//!
//! A client has 10 s to send its request headers, and a connection is asked to close after a
//! minute: hyper's graceful shutdown lets a request in progress finish and then closes, so a
//! browser polling the page reconnects without a failed fetch, and no client holds a
//! connection for ever. Open connections are capped per source address and in total
//! ([`PER_SOURCE`], [`TOTAL`]): past a cap the new connection is closed at once, so a client
//! that opens connections and sends nothing exhausts its own share, not the controller's
//! memory or descriptors, and a browser or `amesh status` elsewhere still gets in.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh::limits::{RefusalCounter, SourceLimits};
use tokio::net::TcpListener;

/// Open connections one source address may hold (a browser opens up to six per host).
pub const PER_SOURCE: usize = 16;
/// Open connections all sources together may hold.
pub const TOTAL: usize = 256;

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
    serve_limited(
        listener,
        name,
        SourceLimits::new(name, PER_SOURCE, TOTAL),
        answer,
    )
    .await
}

/// [`serve`] with the given connection caps (tests use small ones).
async fn serve_limited<F>(
    listener: TcpListener,
    name: &'static str,
    limits: Arc<SourceLimits>,
    answer: F,
) where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let refused = RefusalCounter::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, usually: wait rather than spin.
                tracing::warn!(error = %e, "{name}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match limits.try_acquire(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                // Dropping the stream closes it; the log is thinned so a flood cannot flood it.
                let (count, log) = refused.count();
                if log {
                    tracing::warn!(%peer, refused = count, "{name}: connection closed: {why}");
                }
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            // Held until the connection is done: its slot is free again once this task ends.
            let _permit = permit;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, SocketAddr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(IpAddr::from(source), 0))
            .unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Sends a GET and returns the status line, or what the connection did instead.
    async fn get(stream: &mut TcpStream) -> Result<String, String> {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await {
            Err(_) => Err("no answer in 5 s".into()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(0)) => Err("closed without an answer".into()),
            Ok(Ok(_)) => Ok(String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()),
        }
    }

    #[tokio::test]
    async fn connections_over_a_cap_are_closed_and_others_still_get_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = SourceLimits::new("test page", 2, 3);
        tokio::spawn(serve_limited(
            listener,
            "test page",
            limits.clone(),
            |_req| Response::new(Full::new(Bytes::from_static(b"ok\n"))),
        ));
        async fn wait_in_use(limits: &SourceLimits, n: usize) {
            for _ in 0..500 {
                if limits.in_use() == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} connections held, expected {n}", limits.in_use());
        }

        // Two idle connections from 127.0.0.1 fill its share.
        let held_a = connect_from([127, 0, 0, 1], addr).await;
        let _held_b = connect_from([127, 0, 0, 1], addr).await;
        wait_in_use(&limits, 2).await;
        let mut third = connect_from([127, 0, 0, 1], addr).await;
        let refused = get(&mut third).await;
        assert!(
            refused.is_err(),
            "a third connection from one source: {refused:?}"
        );

        // Another source still gets an answer, and then fills the total.
        let mut other = connect_from([127, 0, 0, 2], addr).await;
        assert_eq!(get(&mut other).await.unwrap(), "HTTP/1.1 200 OK");
        wait_in_use(&limits, 2).await;
        let _held_c = connect_from([127, 0, 0, 3], addr).await;
        wait_in_use(&limits, 3).await;
        let mut over_total = connect_from([127, 0, 0, 4], addr).await;
        let refused = get(&mut over_total).await;
        assert!(refused.is_err(), "past the total: {refused:?}");

        // A closed connection gives its slot back.
        drop(held_a);
        wait_in_use(&limits, 2).await;
        let mut again = connect_from([127, 0, 0, 1], addr).await;
        assert_eq!(get(&mut again).await.unwrap(), "HTTP/1.1 200 OK");
    }
}
