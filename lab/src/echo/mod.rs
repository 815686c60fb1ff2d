//! The echo app that stands in for every container of a lab pod. On each port it sniffs the
//! first bytes: the HTTP/2 preface → HTTP/2 (h2c), an HTTP/1 request line → HTTP/1.1, anything
//! else → raw TCP echo (bytes back until the client's EOF, then our own FIN). Over HTTP it also
//! streams bytes both ways (`/bytes/N`, `/digest`), speaks WebSocket (`/ws`) and gRPC (h2c).
//!
//! A pod's manifest configures its app through the container `env` (plain `value:`s; the lab
//! passes them to the app's process, see [`env::pod_env`]), so a lab can model an application
//! and not only a server:
//!
//! | variable | effect |
//! |---|---|
//! | `ECHO_CALLS` | comma-separated `http://host[:port][/path]` URLs; each request calls them in order ([`calls`]) and nests their replies in its own `calls` |
//! | `ECHO_CALL_TIMEOUT_MS` | time limit per call (default 10000); a hop that runs out is status 504 in `calls` |
//! | `ECHO_FAIL_PERCENT` | whole percent 0..=100 of requests answered with `ECHO_FAIL_STATUS` (and no calls): deterministic, after n requests exactly floor(n·p/100) failed (50: every second; 33: the 4th, 7th, 10th…), counted per pod |
//! | `ECHO_FAIL_STATUS` | the failure's status (default 503); the body is still the echo reply |
//! | `ECHO_DELAY_MS` | wait before answering (at most a minute) |
//! | `ECHO_STATIC`, `ECHO_STATIC_BODY`, `ECHO_STATIC_CONTENT_TYPE` | GET/HEAD of that path answers that body (default type `application/json`), e.g. a JWKS at `/.well-known/jwks.json` |
//!
//! They apply to requests answered with an echo reply on any path but the app's own test
//! endpoints (`/status/N`, `/delay/MS`, `/bytes/N`, `/digest`, `/ws`, gRPC, the static path).

mod body;
pub mod calls;
pub mod env;
pub mod fail;
pub mod grpc;
mod http;
pub mod pattern;
mod reply;
pub mod resolve;
mod sniff;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use self::body::EchoBody;
pub use self::http::ConnAddrs;
pub use self::pattern::DigestReply;
pub use self::reply::{EchoReply, Hop};
pub use self::sniff::{classify, Protocol, Sniff, H2_PREFACE};
use self::sniff::{Rewind, MAX_REQUEST_LINE};

/// How long a connection may stay ambiguous (e.g. a raw client that sent just "GET") before it
/// is treated as raw TCP.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);

/// Read buffer of a raw echo connection.
const RAW_BUFFER: usize = 64 * 1024;

/// Who this echo app pretends to be.
#[derive(Clone, Debug, Default)]
pub struct EchoConfig {
    pub pod: String,
    pub namespace: String,
    /// The pod's `version` label.
    pub version: String,
    pub node: String,
    pub ports: Vec<u16>,
    /// What the pod's environment asks of the app.
    pub app: env::AppEnv,
    /// The pod's resolver configuration, for next hops (empty: `/etc/resolv.conf`).
    pub resolv_conf: std::path::PathBuf,
    /// The pod's count of requests for `ECHO_FAIL_PERCENT` (shared by its ports).
    pub fail_count: Arc<fail::FailShare>,
}

impl EchoConfig {
    /// Where the pod's `resolv.conf` is.
    pub fn resolv_conf_path(&self) -> std::path::PathBuf {
        if self.resolv_conf.as_os_str().is_empty() {
            "/etc/resolv.conf".into()
        } else {
            self.resolv_conf.clone()
        }
    }
}

/// An echo app that could not start.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("cannot listen on port {port}: {source} (is another process using it in this pod?)")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// Binds every port (all IPv4 addresses of the netns, and IPv6 ones where there are) and
/// serves forever. With no ports it
/// just waits, like a container that only makes outgoing calls.
pub async fn run(config: EchoConfig) -> Result<(), EchoError> {
    let config = Arc::new(config);
    let mut listeners = Vec::new();
    for &port in &config.ports {
        let l = TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|source| EchoError::Bind { port, source })?;
        listeners.push(l);
        // IPv6 too where the pod has it (dual-stack labs), on a socket of its own so that
        // IPv4 clients are still seen with their IPv4 addresses.
        if let Some(l6) = ipv6_listener(port) {
            listeners.push(l6);
        }
    }
    tracing::info!(pod = %config.pod, namespace = %config.namespace, ports = ?config.ports, "echo app listening");
    if config.app != env::AppEnv::default() {
        tracing::info!(app = ?config.app, "configured by its environment");
    }
    for l in listeners {
        tokio::spawn(accept_loop(l, Arc::clone(&config)));
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// A listener on `[::]:port` for IPv6 only, if the pod's netns has IPv6 at all.
fn ipv6_listener(port: u16) -> Option<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).ok()?;
    s.set_only_v6(true).ok()?;
    s.set_reuse_address(true).ok()?;
    s.set_nonblocking(true).ok()?;
    let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    s.bind(&addr.into()).ok()?;
    s.listen(1024).ok()?;
    TcpListener::from_std(s.into()).ok()
}

async fn accept_loop(listener: TcpListener, config: Arc<EchoConfig>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, Arc::clone(&config)));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection, whatever it speaks.
pub async fn handle(mut stream: TcpStream, config: Arc<EchoConfig>) {
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let addrs = ConnAddrs { peer, local };
    let mut buf = BytesMut::with_capacity(1024);
    let protocol = loop {
        if let Sniff::Known(p) = classify(&buf) {
            break p;
        }
        match tokio::time::timeout(SNIFF_TIMEOUT, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break Protocol::Raw,
            Ok(Ok(_)) if buf.len() >= MAX_REQUEST_LINE => break Protocol::Raw,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "read failed");
                return;
            }
        }
    };
    tracing::debug!(%peer, %local, ?protocol, "connection");
    let prefix = buf.freeze();
    match protocol {
        Protocol::Raw => {
            if let Err(e) = echo_raw(stream, &prefix).await {
                tracing::debug!(%peer, error = %e, "raw echo ended with an error");
            }
        }
        Protocol::Http1 | Protocol::Http2 => {
            let io = Rewind::new(prefix, stream);
            if let Err(e) = http::serve(io, protocol, config, addrs).await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
    }
}

/// Echoes bytes until the client half-closes, then half-closes too, so a client that shuts
/// down its write side still receives everything it sent.
async fn echo_raw(mut stream: TcpStream, prefix: &[u8]) -> std::io::Result<()> {
    let (rd, mut wr) = stream.split();
    wr.write_all(prefix).await?;
    // A larger buffer than `copy`'s 8 KiB: throughput benchmarks use this path as the baseline.
    let mut rd = tokio::io::BufReader::with_capacity(RAW_BUFFER, rd);
    tokio::io::copy_buf(&mut rd, &mut wr).await?;
    wr.shutdown().await
}
