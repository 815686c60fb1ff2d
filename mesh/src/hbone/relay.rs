//! Copying between a TCP connection and a tunnel, with TCP semantics carried across.
//!
//! A FIN on either side ends only that direction (END_STREAM one way, `shutdown(SHUT_WR)` the
//! other). A reset on either side resets the other: a TCP RST becomes RST_STREAM, and a
//! RST_STREAM or a lost HBONE connection closes the TCP socket with RST (SO_LINGER 0), so an
//! application never mistakes an aborted transfer for a complete one.
//!
//! The same holds when the proxy itself dies: every relayed TCP socket is armed with
//! SO_LINGER 0 for as long as its transfer is open ([`abort_on_close`]), so the kernel resets
//! it when the process exits without a word (kill -9, OOM) instead of sending a FIN that looks
//! like a complete answer. The arm is lifted ([`close_gracefully`]) just before the relay
//! passes a clean end on with `shutdown(SHUT_WR)`, so the bytes still queued in the socket are
//! delivered and a normal close stays a FIN.

use std::future::Future;
use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::Reason;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pool::Connecting;
use super::stream::{H2Reader, H2Stream, H2Writer};
use super::HboneError;

/// Read buffer bounds: start small so idle and chatty connections stay cheap, grow while reads
/// keep filling the buffer so bulk transfers move in large frames.
const MIN_READ: usize = 16 << 10;
const MAX_READ: usize = 256 << 10;
/// Chunks passed to one `writev`.
const MAX_IOVECS: usize = 64;

/// What a relay moved and how it ended.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Bytes read from the TCP side and sent into the tunnel.
    pub sent: u64,
    /// Bytes received from the tunnel and written to the TCP side.
    pub received: u64,
    /// `None` when both directions ended with a clean close.
    pub error: Option<RelayError>,
}

/// Which side broke a relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The TCP connection handed in first (the application's side) failed or was reset.
    #[error("downstream connection failed: {0}")]
    Downstream(#[source] io::Error),
    /// The tunnel (or, for [`relay_tcp`](super::relay_tcp), the upstream connection) failed or
    /// was reset.
    #[error("upstream connection failed: {0}")]
    Upstream(#[source] io::Error),
    /// The tunnel was never established: the peer refused the CONNECT, or the connection
    /// failed before it answered ([`relay_connecting`]).
    #[error("{0}")]
    NotEstablished(#[source] HboneError),
}

/// Copies both ways until both directions have ended, or either side fails.
//
// Not an `async fn`: the halves are split before the future is made, so its state holds them
// once (an `async fn` keeps its arguments beside the locals made from them for the whole
// relay, and this future lives as long as the tunnel).
pub fn relay(tcp: TcpStream, tunnel: H2Stream) -> impl Future<Output = RelayStats> + Send {
    abort_on_close(&tcp);
    let (mut reader, mut writer) = tunnel.into_split();
    async move {
        let mut tcp = tcp;
        let mut stats = RelayStats::default();
        let result = {
            let (mut tcp_r, mut tcp_w) = tcp.split();
            let up = tcp_to_tunnel(&mut tcp_r, &mut writer, &mut stats.sent);
            let down = tunnel_to_tcp(&mut reader, &mut tcp_w, &mut stats.received);
            tokio::try_join!(up, down).map(|_| ())
        };
        end(result, &tcp, &mut writer, stats)
    }
}

/// Like [`relay`] for a tunnel whose CONNECT is not answered yet: the application's bytes go
/// into the tunnel at once (early data), the other direction starts with the 200. A refusal
/// ends the relay with [`RelayError::NotEstablished`] and resets the TCP connection, so the
/// application never takes the bytes it sent for delivered.
//
// Not an `async fn`, for the reason given at [`relay`]; and the answer's future is boxed and
// dropped once answered, so its state (the response head, the authority) is not kept for the
// tunnel's life.
pub fn relay_connecting(
    tcp: TcpStream,
    connecting: Connecting,
) -> impl Future<Output = RelayStats> + Send {
    abort_on_close(&tcp);
    let (mut writer, answer) = connecting.into_parts();
    let answer = Box::pin(answer);
    async move {
        let mut answer = answer;
        let mut tcp = tcp;
        let mut stats = RelayStats::default();
        let result = {
            let (mut tcp_r, mut tcp_w) = tcp.split();
            let up = tcp_to_tunnel(&mut tcp_r, &mut writer, &mut stats.sent);
            tokio::pin!(up);
            let mut up_result = None;
            // Until the answer: keep sending; a failing application needs no answer to be cut.
            let answered = loop {
                tokio::select! {
                    biased;
                    a = &mut answer => break Ok(a),
                    r = &mut up, if up_result.is_none() => match r {
                        Err(e @ RelayError::Downstream(_)) => break Err(e),
                        // A refusal can reset the stream before its answer is read: the answer
                        // says why, so it decides.
                        other => up_result = Some(other),
                    },
                }
            };
            drop(answer);
            match answered {
                Err(e) => Err(e),
                Ok(Err(refused)) => Err(RelayError::NotEstablished(refused)),
                Ok(Ok(mut reader)) => {
                    let down = tunnel_to_tcp(&mut reader, &mut tcp_w, &mut stats.received);
                    match up_result {
                        Some(Err(e)) => Err(e),
                        Some(Ok(())) => down.await,
                        None => tokio::try_join!(up, down).map(|_| ()),
                    }
                }
            }
        };
        end(result, &tcp, &mut writer, stats)
    }
}

/// Makes closing `tcp` abort the connection (RST, linger 0) instead of ending it cleanly, so
/// the peer sees a refusal or a failure rather than an empty but orderly answer. Armed for the
/// life of a relayed transfer, this is also what the kernel does with the socket when the
/// process dies.
pub fn abort_on_close(tcp: &TcpStream) {
    // Best effort: a socket that refuses the option still closes, with a FIN.
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// Undoes [`abort_on_close`]: closing `tcp` ends it with a FIN again, after the bytes still
/// queued are sent. Called right before a clean end is passed on, since a reset would throw
/// those bytes away.
pub fn close_gracefully(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(None);
}

/// Passes a failure on to the other side: a reset of the tunnel for a failed application
/// connection, a TCP reset for a failed or refused tunnel.
fn end(
    result: Result<(), RelayError>,
    tcp: &TcpStream,
    writer: &mut H2Writer,
    mut stats: RelayStats,
) -> RelayStats {
    if let Err(e) = result {
        match &e {
            RelayError::Downstream(_) => writer.reset(Reason::CANCEL),
            RelayError::Upstream(_) | RelayError::NotEstablished(_) => {
                // Abort the TCP connection instead of closing it cleanly.
                abort_on_close(tcp);
                writer.reset(Reason::CANCEL);
            }
        }
        stats.error = Some(e);
    }
    stats
}

async fn tcp_to_tunnel(
    tcp: &mut tokio::net::tcp::ReadHalf<'_>,
    tunnel: &mut H2Writer,
    count: &mut u64,
) -> Result<(), RelayError> {
    let mut size = MIN_READ;
    let mut buf = BytesMut::new();
    loop {
        // Allocate only once data is there, so an idle connection holds no buffer.
        tcp.readable().await.map_err(RelayError::Downstream)?;
        buf.reserve(size);
        // `read_buf` (not `try_read_buf`): a short read tells tokio the socket is drained, so
        // the next round waits in epoll instead of paying a recv that says EAGAIN.
        let n = tcp
            .read_buf(&mut buf)
            .await
            .map_err(RelayError::Downstream)?;
        if n == 0 {
            return tunnel.finish().map_err(RelayError::Upstream);
        }
        *count += n as u64;
        // A small read: light traffic, and the next round probably waits.
        let idle = n < MIN_READ / 4;
        if n >= size && size < MAX_READ {
            size *= 2;
        } else if n < size / 4 && size > MIN_READ {
            size /= 2;
        }
        let chunk = buf.split().freeze();
        if idle {
            // Without this the rest of the buffer would stay allocated in every quiet
            // connection; bulk transfers keep theirs (reallocating it is what costs there).
            buf = BytesMut::new();
        }
        tunnel
            .send_chunk(chunk)
            .await
            .map_err(RelayError::Upstream)?;
    }
}

async fn tunnel_to_tcp(
    tunnel: &mut H2Reader,
    tcp: &mut tokio::net::tcp::WriteHalf<'_>,
    count: &mut u64,
) -> Result<(), RelayError> {
    let mut chunks = Vec::new();
    while tunnel
        .next_chunks(MAX_READ, &mut chunks)
        .await
        .map_err(RelayError::Upstream)?
    {
        let burst = chunks.len();
        *count += write_chunks(tcp, &mut chunks)
            .await
            .map_err(RelayError::Downstream)?;
        if burst <= 1 {
            // Light traffic: drop the list so a quiet tunnel holds none; a burst of frames
            // (bulk) keeps it for the next one.
            chunks = Vec::new();
        }
    }
    // END_STREAM: the peer is done sending; pass the FIN on and keep the other direction.
    close_gracefully(tcp.as_ref());
    tcp.shutdown().await.map_err(RelayError::Downstream)
}

/// Writes all of `chunks` (emptying it) with as few syscalls as the socket allows.
async fn write_chunks(
    tcp: &mut tokio::net::tcp::WriteHalf<'_>,
    chunks: &mut Vec<Bytes>,
) -> io::Result<u64> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let mut first = 0;
    // A poll function, so the slice array lives on the stack of each poll and not in every
    // connection's future.
    std::future::poll_fn(|cx| {
        while first < chunks.len() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let used = (chunks.len() - first).min(MAX_IOVECS);
            for (slot, c) in slices.iter_mut().zip(&chunks[first..first + used]) {
                *slot = IoSlice::new(c);
            }
            let mut n = std::task::ready!(
                std::pin::Pin::new(&mut *tcp).poll_write_vectored(cx, &slices[..used])
            )?;
            if n == 0 {
                return std::task::Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)));
            }
            while n > 0 {
                let c = &mut chunks[first];
                if n >= c.len() {
                    n -= c.len();
                    first += 1;
                } else {
                    c.advance(n);
                    n = 0;
                }
            }
        }
        std::task::Poll::Ready(Ok::<(), io::Error>(()))
    })
    .await?;
    chunks.clear();
    Ok(total as u64)
}
