//! The HBONE server: accepts mTLS + HTTP/2 connections and hands each CONNECT stream to a
//! [`ConnectHandler`], which answers 200 (then carries bytes) or refuses with 400/401/503.
//!
//! A peer that is not speaking HBONE (no TLS, no h2, requests other than CONNECT) loses its own
//! connection and nothing else. Drain: stop accepting, send GOAWAY, let streams finish until a
//! deadline, then close what is left.
//!
//! Every stream's handler runs in a task of its connection's [`JoinSet`], never detached: the
//! connection's task ends only once its streams' handlers have, so the accept loop's drain
//! waits for every tunnel, and aborting a connection (the drain deadline, a pod removed) aborts
//! its tunnels with it. The set holds at most the streams the peer may open at once
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`) plus those finishing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderValue, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn, Instrument};

use super::bufio::BufferedRead;
use super::conn::keepalive;
use super::error::InboundError;
use super::request::{inspect, ConnectRequest, Inspection, Refusal, REASON_HEADER};
use super::{DrainWatch, H2Settings, H2Stream, HboneError};
use crate::accept::AcceptLoop;
use crate::limits::{check_descriptor_headroom, Permit, RefusalCounter, Refused, SourceLimits};
use crate::tls::TlsError;

/// Decides what to do with each CONNECT; runs in its own task per stream.
pub trait ConnectHandler: Send + Sync + 'static {
    fn handle(&self, req: ConnectRequest, tunnel: PendingTunnel)
        -> impl Future<Output = ()> + Send;
}

/// Supplies the server TLS configuration for a connection accepted on `local` (so one listener
/// can serve several identities, e.g. every pod behind eBPF steering).
pub trait ServerTls: Send + Sync + 'static {
    fn server_config(&self, local: SocketAddr) -> Result<Arc<rustls::ServerConfig>, TlsError>;
}

impl ServerTls for Arc<rustls::ServerConfig> {
    fn server_config(&self, _local: SocketAddr) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        Ok(self.clone())
    }
}

/// A CONNECT that has not been answered yet.
pub struct PendingTunnel {
    respond: SendResponse<Bytes>,
    recv: RecvStream,
}

impl PendingTunnel {
    /// Answers 200 and returns the tunnel.
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        let response = Response::builder()
            .status(http::StatusCode::OK)
            .body(())
            .map_err(|e| HboneError::BadRequest(e.to_string()))?;
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.recv, None))
    }

    /// Refuses the tunnel with the refusal's status; `reason` travels in a response header so
    /// the client can say why.
    pub fn refuse(mut self, refusal: Refusal, reason: &str) {
        let mut response = Response::new(());
        *response.status_mut() = refusal.status();
        let printable: String = reason
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&printable) {
            response.headers_mut().insert(REASON_HEADER, v);
        }
        // The client may already be gone; nothing is left to tell it then.
        let _ = self.respond.send_response(response, true);
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Connections closed because TLS or HTTP/2 setup failed or the peer was not HBONE.
    pub rejected_connections: AtomicU64,
    /// CONNECT streams handed to the handler.
    pub tunnels: AtomicU64,
    /// Connections closed at once, over the limits on pending handshakes.
    pub refused_connections: RefusalCounter,
}

/// An HBONE server. Cheap to clone.
pub struct Server<H> {
    handler: Arc<H>,
    tls: Arc<dyn ServerTls>,
    settings: H2Settings,
    stats: Arc<ServerStats>,
    /// Connections that have not finished their TLS and HTTP/2 handshakes, per source and
    /// in all (shared by every server of a process that shares the limits).
    pending: Option<Arc<SourceLimits>>,
}

impl<H> Clone for Server<H> {
    fn clone(&self) -> Self {
        Server {
            handler: self.handler.clone(),
            tls: self.tls.clone(),
            settings: self.settings.clone(),
            stats: self.stats.clone(),
            pending: self.pending.clone(),
        }
    }
}

impl<H: ConnectHandler> Server<H> {
    pub fn new(tls: Arc<dyn ServerTls>, handler: H, settings: H2Settings) -> Self {
        Server {
            handler: Arc::new(handler),
            tls,
            settings,
            stats: Arc::default(),
            pending: None,
        }
    }

    /// Bounds the connections still in their handshakes: past the limits (or near the
    /// process's descriptor limit, see [`crate::limits::check_descriptor_headroom`]) a new
    /// connection is closed at once, before any TLS work, so a peer that opens connections
    /// and stays silent holds at most its share until the handshake timeout.
    pub fn with_pending_limits(mut self, limits: Arc<SourceLimits>) -> Self {
        self.pending = Some(limits);
        self
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Accepts connections until `drain` fires, then waits up to `deadline` for open
    /// connections to finish their streams and closes the rest.
    pub async fn serve(self, listener: TcpListener, drain: DrainWatch, deadline: Duration) {
        let loop_drain = drain.clone();
        AcceptLoop::new("HBONE")
            .until(loop_drain)
            .drain_deadline(deadline)
            .run(listener, move |tcp, peer| {
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                let permit = match self.admit(&tcp, peer) {
                    Ok(permit) => permit,
                    Err(refused) => {
                        self.refused(refused);
                        return None;
                    }
                };
                let server = self.clone();
                let drain = drain.clone();
                Some(
                    async move { server.serve_conn(tcp, peer, permit, drain).await }
                        .instrument(tracing::debug_span!("hbone_conn", %peer)),
                )
            })
            .await
    }

    /// A pending-handshake slot for a new connection, or why it gets none.
    fn admit(&self, tcp: &TcpStream, peer: SocketAddr) -> Result<Option<Permit>, Refused> {
        use std::os::fd::AsRawFd;
        match &self.pending {
            Some(limits) => limits.admit(tcp.as_raw_fd(), peer.ip()).map(Some),
            None => check_descriptor_headroom("HBONE connections", tcp.as_raw_fd()).map(|()| None),
        }
    }

    /// Counts a refused connection (dropping it closes it); logs the 1st, 2nd, 4th, 8th, ...
    /// so a flood cannot flood the log too.
    fn refused(&self, refused: Refused) {
        let (n, log) = self.stats.refused_connections.count();
        if log {
            warn!(
                refused_so_far = n,
                "closing a new HBONE connection at once: {refused}"
            );
        } else {
            debug!("closing a new HBONE connection at once: {refused}");
        }
    }

    async fn serve_conn(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        pending: Option<Permit>,
        mut drain: DrainWatch,
    ) {
        let setup = self.setup(tcp).await;
        // Handshake over: the connection no longer counts against the pending limits.
        drop(pending);
        match setup {
            Ok((conn, identity, local)) => {
                self.run_conn(conn, identity, peer, local, &mut drain).await
            }
            Err(cause) => {
                self.stats
                    .rejected_connections
                    .fetch_add(1, Ordering::Relaxed);
                let error = HboneError::Inbound { peer, cause };
                debug!(%error, side = ?error.side(), "closing connection from non-HBONE peer");
            }
        }
    }

    async fn setup(
        &self,
        tcp: TcpStream,
    ) -> Result<(H2Conn, crate::Identity, SocketAddr), InboundError> {
        let local = tcp.local_addr().map_err(InboundError::Socket)?;
        let _ = tcp.set_nodelay(true);
        let config = self
            .tls
            .server_config(local)
            .map_err(|e| InboundError::TlsConfig(Box::new(e)))?;
        let setup = async {
            let mut tls = TlsAcceptor::from(config)
                .accept(BufferedRead::new(tcp))
                .await
                .map_err(InboundError::Tls)?;
            tls.get_mut()
                .1
                .set_buffer_limit(Some(self.settings.tls_send_buffer()));
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() != Some(b"h2") {
                return Err(InboundError::NoH2);
            }
            let identity = crate::tls::peer_identity(session).ok_or(InboundError::NoIdentity)?;
            let conn = self
                .settings
                .server_builder()
                .handshake(tls)
                .await
                .map_err(InboundError::H2Handshake)?;
            Ok((conn, identity, local))
        };
        let limit = self.settings.handshake_timeout;
        tokio::time::timeout(limit, setup)
            .await
            .map_err(|_| InboundError::Timeout {
                secs: limit.as_secs_f64(),
            })?
    }

    async fn run_conn(
        &self,
        mut conn: H2Conn,
        identity: crate::Identity,
        peer: SocketAddr,
        local: SocketAddr,
        drain: &mut DrainWatch,
    ) {
        let ping = keepalive(
            conn.ping_pong(),
            self.settings.keepalive_interval,
            self.settings.keepalive_timeout,
        );
        tokio::pin!(ping);
        let mut closing = false;
        // The handlers of this connection's streams (see the module doc).
        let mut streams = JoinSet::new();
        loop {
            tokio::select! {
                // Reaps finished handlers so the set holds only live tunnels.
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
                next = conn.accept() => match next {
                    None => break,
                    Some(Err(e)) => {
                        debug!(error = %e, "HBONE connection ended with error");
                        break;
                    }
                    Some(Ok((request, respond))) => {
                        let inspection = inspect(&request);
                        let (parts, recv) = request.into_parts();
                        let tunnel = PendingTunnel { respond, recv };
                        match inspection {
                            Inspection::Connect(authority) => {
                                self.stats.tunnels.fetch_add(1, Ordering::Relaxed);
                                let req = ConnectRequest {
                                    authority,
                                    peer_identity: identity.clone(),
                                    peer_addr: peer,
                                    local_addr: local,
                                    headers: parts.headers,
                                };
                                let handler = self.handler.clone();
                                let span = tracing::debug_span!("tunnel", authority = %req.authority);
                                streams.spawn(async move { handler.handle(req, tunnel).await }.instrument(span));
                            }
                            Inspection::BadConnect(why) => tunnel.refuse(Refusal::BadRequest, &why),
                            Inspection::NotConnect(method) => {
                                // Not an HBONE client: answer this stream, then close the
                                // connection gracefully so its other streams still finish.
                                tunnel.refuse(
                                    Refusal::BadRequest,
                                    &format!("{method} is not served here; HBONE accepts only CONNECT"),
                                );
                                self.stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                                if !closing {
                                    closing = true;
                                    conn.graceful_shutdown();
                                }
                            }
                        }
                    }
                },
                () = drain.signaled(), if !closing => {
                    closing = true;
                    conn.graceful_shutdown();
                }
                () = &mut ping => {
                    debug!("peer stopped answering keepalive PINGs; closing connection");
                    break;
                }
            }
        }
        // The connection is over, but a handler may still be writing what it received to
        // its socket, or still be finding out that its stream is gone.
        drop(conn);
        while streams.join_next().await.is_some() {}
    }
}

type H2Conn =
    h2::server::Connection<tokio_rustls::server::TlsStream<BufferedRead<TcpStream>>, Bytes>;
