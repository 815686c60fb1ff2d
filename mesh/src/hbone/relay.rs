//! Copying between a TCP connection and a tunnel, with TCP semantics carried across.
//!
//! A FIN on either side ends only that direction (END_STREAM one way, `shutdown(SHUT_WR)` the
//! other). A reset on either side resets the other: a TCP RST becomes RST_STREAM, and a
//! RST_STREAM or a lost HBONE connection closes the TCP socket with RST (SO_LINGER 0), so an
//! application never mistakes an aborted transfer for a complete one.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use h2::Reason;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::stream::{H2Reader, H2Stream, H2Writer};

/// Read buffer bounds: start small so idle and chatty connections stay cheap, grow while reads
/// keep filling the buffer so bulk transfers move in large frames.
const MIN_READ: usize = 16 << 10;
const MAX_READ: usize = 256 << 10;

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
    /// The tunnel (or, for [`relay_tcp`], the upstream connection) failed or was reset.
    #[error("upstream connection failed: {0}")]
    Upstream(#[source] io::Error),
}

/// Copies both ways until both directions have ended, or either side fails.
pub async fn relay(mut tcp: TcpStream, tunnel: H2Stream) -> RelayStats {
    let (mut reader, mut writer) = tunnel.into_split();
    let mut stats = RelayStats::default();
    let result = {
        let (mut tcp_r, mut tcp_w) = tcp.split();
        let up = tcp_to_tunnel(&mut tcp_r, &mut writer, &mut stats.sent);
        let down = tunnel_to_tcp(&mut reader, &mut tcp_w, &mut stats.received);
        tokio::try_join!(up, down)
    };
    if let Err(e) = result {
        match &e {
            RelayError::Downstream(_) => writer.reset(Reason::CANCEL),
            RelayError::Upstream(_) => {
                // Abort the TCP connection instead of closing it cleanly.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
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
        let n = match tcp.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(RelayError::Downstream(e)),
        };
        if n == 0 {
            return tunnel.finish().map_err(RelayError::Upstream);
        }
        *count += n as u64;
        if n >= size && size < MAX_READ {
            size *= 2;
        } else if n < size / 4 && size > MIN_READ {
            size /= 2;
        }
        tunnel
            .send_chunk(buf.split().freeze())
            .await
            .map_err(RelayError::Upstream)?;
    }
}

async fn tunnel_to_tcp(
    tunnel: &mut H2Reader,
    tcp: &mut tokio::net::tcp::WriteHalf<'_>,
    count: &mut u64,
) -> Result<(), RelayError> {
    while let Some(chunk) = tunnel.next_chunk().await {
        let chunk = chunk.map_err(RelayError::Upstream)?;
        tcp.write_all(&chunk)
            .await
            .map_err(RelayError::Downstream)?;
        *count += chunk.len() as u64;
    }
    // END_STREAM: the peer is done sending; pass the FIN on and keep the other direction.
    tcp.shutdown().await.map_err(RelayError::Downstream)
}

/// Copies between two TCP connections with the same semantics as [`relay`]: FIN passes on as
/// FIN, and a reset or error on one side aborts the other with RST. `sent` counts bytes from
/// `downstream` to `upstream`.
pub async fn relay_tcp(mut downstream: TcpStream, mut upstream: TcpStream) -> RelayStats {
    let mut stats = RelayStats::default();
    let result = {
        let (mut dr, mut dw) = downstream.split();
        let (mut ur, mut uw) = upstream.split();
        let up = tcp_to_tcp(
            &mut dr,
            &mut uw,
            &mut stats.sent,
            RelayError::Downstream,
            RelayError::Upstream,
        );
        let down = tcp_to_tcp(
            &mut ur,
            &mut dw,
            &mut stats.received,
            RelayError::Upstream,
            RelayError::Downstream,
        );
        tokio::try_join!(up, down)
    };
    if let Err(e) = result {
        // Whichever side failed, abort both so neither mistakes the end for a clean close.
        for s in [&downstream, &upstream] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
        stats.error = Some(e);
    }
    stats
}

async fn tcp_to_tcp(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    count: &mut u64,
    read_err: fn(io::Error) -> RelayError,
    write_err: fn(io::Error) -> RelayError,
) -> Result<(), RelayError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; MIN_READ];
    loop {
        let n = from.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            return to.shutdown().await.map_err(write_err);
        }
        to.write_all(&buf[..n]).await.map_err(write_err)?;
        *count += n as u64;
    }
}
