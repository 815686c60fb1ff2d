//! The controller's gRPC listeners (15012 TLS, 15010 plaintext) as tonic takes them: accepted
//! by mesh's [`AcceptLoop`] (back-off on accept errors, a bound on connections at once, drain),
//! each new connection admitted against a per-source and total count ([`SourceLimits`],
//! which also keeps descriptor headroom), the TLS handshake run in the connection's own task
//! beside the accept path with a time limit, then handed to tonic.
//!
//! Past [`Limits::max_connections`] new clients wait in the listen queue; past
//! [`Limits::per_source`] a source's new connection is closed at once, so one client (a node
//! with a broken agent, or an attacker) cannot take every slot. A connection keeps its slot
//! until tonic drops it. The loop ends when tonic drops the stream (its graceful shutdown) and
//! the listening socket closes with it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use mesh::accept::AcceptLoop;
use mesh::drain::Drain;
use mesh::limits::{RefusalCounter, SourceLimits};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// Bounds of one gRPC listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections at once (handshaking or established); further clients wait in the listen
    /// queue. A ztunnel holds one or two (xDS, CA), a waypoint the same.
    pub max_connections: usize,
    /// Connections at once from one source address; past it a new one is closed at once.
    pub per_source: usize,
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A node's ztunnel and a few waypoints each: room for clusters of a thousand
            // nodes, far below the descriptor limit.
            max_connections: 4096,
            // Several waypoints and a ztunnel may share a node's address (SNAT, host network).
            per_source: 64,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Established connections waiting for tonic to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Largest xDS request decoded (tonic's default, written out): a request names resources and
/// nonces, and a NACK carries an error message; megabytes are a client gone wrong.
pub const XDS_MAX_REQUEST: usize = 4 << 20;
/// Largest CA request decoded: a CSR is about a kilobyte, its metadata a few fields.
pub const CA_MAX_REQUEST: usize = 64 << 10;
/// Streams one connection may have open: a ztunnel or a waypoint uses one or two (ADS, CA).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Largest request header block: a bearer token (a projected ServiceAccount token is about a
/// kilobyte) and gRPC's own headers.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 << 10;

/// The gRPC server both ports serve with, its HTTP/2 bounded: streams per connection, header
/// size, streams reset before or by the server (the rapid-reset defence; h2's defaults
/// written out), and keepalive PINGs so that a vanished client's slot is freed.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(1024))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// One connection handed to tonic; holds its slot in the listener's limits until dropped.
#[derive(Debug)]
pub struct Conn<S> {
    io: S,
    /// Dropped with the connection: tells its accept task that the slot is free.
    _closed: oneshot::Sender<()>,
}

impl<S: Connected> Connected for Conn<S> {
    type ConnectInfo = S::ConnectInfo;

    // The peer's address reaches the services as it did without the wrapper
    // (`Request::remote_addr`).
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Plaintext connections of `listener`, for tonic's `serve_with_incoming`. A client must send
/// its first bytes within the handshake limit: HTTP/2 over plaintext has no handshake of ours,
/// and a silent connection would otherwise keep its slot for good.
pub fn plaintext(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = Result<Conn<TcpStream>, io::Error>> {
    incoming(
        "plaintext gRPC",
        listener,
        limits,
        |tcp: TcpStream| async move {
            let mut first = [0u8; 1];
            match tcp.peek(&mut first).await? {
                0 => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending anything",
                )),
                _ => Ok(tcp),
            }
        },
    )
}

/// Connections of `listener` after `handshake` (TLS, or none), for tonic's
/// `serve_with_incoming`. Failed or slow handshakes are logged and dropped.
pub fn incoming<S, H, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    handshake: H,
) -> impl Stream<Item = Result<Conn<S>, io::Error>>
where
    S: Send + 'static,
    H: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Conn<S>>(ACCEPTED_QUEUE);
    let (stop, until) = Drain::new();
    // tonic drops the stream when it stops accepting: the loop stops too (closing the
    // listening socket) and waits for the connections, which tonic is closing.
    let closed = tx.clone();
    tokio::spawn(async move {
        closed.closed().await;
        stop.start();
    });
    let sources = SourceLimits::new(name, limits.per_source, limits.max_connections);
    let refused = Arc::new(RefusalCounter::default());
    let handshake = Arc::new(handshake);
    let accept = AcceptLoop::new(name)
        .until(until)
        .max_connections(limits.max_connections)
        .nodelay()
        .run(listener, move |tcp, peer: SocketAddr| {
            use std::os::fd::AsRawFd;
            let permit = match sources.admit(tcp.as_raw_fd(), peer.ip()) {
                Ok(permit) => permit,
                Err(why) => {
                    let (n, log) = refused.count();
                    if log {
                        warn!(%peer, refused_so_far = n, "{name}: closing a new connection at once: {why}");
                    } else {
                        debug!(%peer, "{name}: closing a new connection at once: {why}");
                    }
                    return None;
                }
            };
            let (tx, handshake) = (tx.clone(), handshake.clone());
            let limit = limits.handshake_timeout;
            Some(async move {
                let io = match tokio::time::timeout(limit, handshake(tcp)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "{name}: handshake failed"),
                    Err(_) => return debug!(%peer, "{name}: no handshake within {limit:?}"),
                };
                let (closed_tx, closed_rx) = oneshot::channel();
                let conn = Conn {
                    io,
                    _closed: closed_tx,
                };
                if tx.send(conn).await.is_err() {
                    return;
                }
                // Resolves when tonic drops the connection; the slots are freed after it.
                let _ = closed_rx.await;
                drop(permit);
            })
        });
    tokio::spawn(accept);
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)))
}
