//! Requests to endpoints: each upstream HTTP connection runs inside its own HBONE tunnel to the
//! endpoint's `ip:15008`, opened with the waypoint's own identity (so the destination ztunnel
//! authorizes the waypoint). HTTP/2 connections are shared by every request to the endpoint;
//! HTTP/1.1 connections are kept idle for reuse, one request at a time each. A
//! DestinationRule's `maxRequestsPerConnection` retires a connection after that many requests,
//! and its `connectTimeout` bounds opening one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::hbone::{HboneError, Pool, TunnelRequest, HBONE_PORT};
use mesh::Identity;
use parking_lot::Mutex;

/// Errors of bodies sent upstream (the client's body, or a mirror's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type sent upstream.
pub type UpBody = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

/// Which HTTP version to speak to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http1,
    Http2,
}

/// One endpoint to send to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The app's `ip:port` (the CONNECT's `:authority`).
    pub addr: SocketAddr,
    /// The identity its ztunnel presents for it.
    pub identity: Identity,
    pub version: Version,
}

/// Why a request did not reach the app.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The tunnel could not be opened (refused, unreachable, TLS): Envoy's `UF`.
    #[error("tunnel to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: HboneError,
    },
    /// HTTP setup on the tunnel failed: `UF`.
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The request was sent and the connection failed before a response: `UC`/`UF`.
    #[error("request to {addr} failed: {source}")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// How long an HTTP/1.1 connection may wait unused for its next request before it is closed
/// (each holds an HBONE tunnel to its endpoint).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the whole table is swept of closed and expired connections, so endpoints that
/// went away take nothing with them.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

enum Conns {
    /// Connections handed back after a response, with when and how many requests each
    /// carried.
    H1(Vec<(http1::SendRequest<UpBody>, Instant, u32)>),
    /// The shared connection and the requests it was given.
    H2(http2::SendRequest<UpBody>, u32),
}

/// The connections by endpoint, and when they were last swept.
struct Table {
    by_endpoint: HashMap<Endpoint, Conns>,
    last_sweep: Instant,
}

impl Table {
    /// Drops closed connections, HTTP/1.1 ones idle past [`IDLE_TIMEOUT`], and endpoints left
    /// with none; at most every [`SWEEP_EVERY`].
    fn sweep_if_due(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.by_endpoint.retain(|_, conns| match conns {
            Conns::H2(s, _) => !s.is_closed(),
            Conns::H1(idle) => {
                idle.retain(|(s, since, _)| {
                    !s.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
                });
                !idle.is_empty()
            }
        });
    }
}

/// A DestinationRule's settings for sending to one cluster.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions {
    /// A connection is retired after this many requests: an HTTP/1.1 one is not kept for
    /// reuse, an HTTP/2 one takes no new streams (those it carries finish). 0 = no limit.
    pub max_requests_per_connection: u32,
    /// Bound on opening a connection (tunnel and HTTP handshake); `None` = the pool's own.
    pub connect_timeout: Option<Duration>,
}

/// `connect` bounded by `limit`; running out is a connect failure (`UF`) with a timeout.
async fn bounded<T>(
    ep: &Endpoint,
    limit: Option<Duration>,
    connect: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    let Some(limit) = limit else {
        return connect.await;
    };
    match tokio::time::timeout(limit, connect).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Connect {
            addr: ep.addr,
            source: HboneError::Timeout {
                addr: SocketAddr::new(ep.addr.ip(), HBONE_PORT),
                secs: limit.as_secs_f64(),
            },
        }),
    }
}

/// Upstream connections of the waypoint. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    pool: Pool,
    identity: Identity,
    conns: Arc<Mutex<Table>>,
}

impl Upstream {
    pub fn new(pool: Pool, identity: Identity) -> Self {
        Upstream {
            pool,
            identity,
            conns: Arc::new(Mutex::new(Table {
                by_endpoint: HashMap::new(),
                last_sweep: Instant::now(),
            })),
        }
    }

    /// Sends `req` to `ep` and returns the response head (the body streams).
    pub async fn send(
        &self,
        ep: &Endpoint,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send_with(ep, req, &SendOptions::default()).await
    }

    /// [`Upstream::send`] under a DestinationRule's connection settings.
    pub async fn send_with(
        &self,
        ep: &Endpoint,
        req: Request<UpBody>,
        opts: &SendOptions,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let max_per_connection = opts.max_requests_per_connection;
        match ep.version {
            Version::Http2 => {
                let mut sender = match self.h2_sender(ep, max_per_connection) {
                    Some(s) => s,
                    None => {
                        let s = bounded(ep, opts.connect_timeout, self.connect_h2(ep)).await?;
                        let mut table = self.conns.lock();
                        if max_per_connection != 1 {
                            table
                                .by_endpoint
                                .insert(ep.clone(), Conns::H2(s.clone(), 1));
                        }
                        table.sweep_if_due(Instant::now());
                        s
                    }
                };
                sender
                    .send_request(req)
                    .await
                    .map_err(|source| UpstreamError::Request {
                        addr: ep.addr,
                        source,
                    })
            }
            Version::Http1 => {
                let (mut sender, used) = match self.h1_idle(ep) {
                    Some(s) => s,
                    None => (
                        bounded(ep, opts.connect_timeout, self.connect_h1(ep)).await?,
                        0,
                    ),
                };
                let used = used + 1;
                let response =
                    sender
                        .send_request(req)
                        .await
                        .map_err(|source| UpstreamError::Request {
                            addr: ep.addr,
                            source,
                        })?;
                // Reusable once its response body has been read; an upgraded connection is
                // the client's now; a retired one closes once its response is read (hyper
                // ends a connection whose sender is gone).
                let retired = max_per_connection != 0 && used >= max_per_connection;
                if response.status() != http::StatusCode::SWITCHING_PROTOCOLS && !retired {
                    self.h1_return(ep, sender, used);
                }
                Ok(response)
            }
        }
    }

    /// Opens a dedicated HTTP/1.1 connection (upgrades, which take the connection over).
    pub async fn send_upgrade(
        &self,
        ep: &Endpoint,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.connect_h1(ep).await?;
        sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Request {
                addr: ep.addr,
                source,
            })
    }

    /// The endpoint's shared HTTP/2 connection, counting the request on it; one that reached
    /// `max_per_connection` (0 = no limit) is dropped from the table.
    fn h2_sender(
        &self,
        ep: &Endpoint,
        max_per_connection: u32,
    ) -> Option<http2::SendRequest<UpBody>> {
        let mut table = self.conns.lock();
        match table.by_endpoint.get_mut(ep) {
            Some(Conns::H2(s, used)) if !s.is_closed() => {
                let s = s.clone();
                *used += 1;
                if max_per_connection != 0 && *used >= max_per_connection {
                    table.by_endpoint.remove(ep);
                }
                Some(s)
            }
            Some(Conns::H2(..)) => {
                table.by_endpoint.remove(ep);
                None
            }
            _ => None,
        }
    }

    /// An idle HTTP/1.1 connection and the requests it carried.
    fn h1_idle(&self, ep: &Endpoint) -> Option<(http1::SendRequest<UpBody>, u32)> {
        let mut table = self.conns.lock();
        let Some(Conns::H1(idle)) = table.by_endpoint.get_mut(ep) else {
            return None;
        };
        idle.retain(|(s, _, _)| !s.is_closed());
        // A connection whose last response body is still being read is not ready yet; it
        // stays for later.
        let i = idle.iter().position(|(s, _, _)| s.is_ready())?;
        let (s, _, used) = idle.swap_remove(i);
        Some((s, used))
    }

    fn h1_return(&self, ep: &Endpoint, sender: http1::SendRequest<UpBody>, used: u32) {
        let now = Instant::now();
        let mut table = self.conns.lock();
        let conns = &mut table.by_endpoint;
        // Look up before `entry`: it takes its key by value, and cloning an endpoint (three
        // identity strings) for every returned connection showed in profiles.
        let entry = match conns.get_mut(ep) {
            Some(e) => e,
            None => conns.entry(ep.clone()).or_insert(Conns::H1(Vec::new())),
        };
        if let Conns::H1(idle) = entry {
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push((sender, now, used));
            }
        }
        table.sweep_if_due(now);
    }

    /// Opens an HBONE tunnel to the endpoint (plain TCP through the waypoint uses it as is).
    pub async fn tunnel(&self, ep: &Endpoint) -> Result<mesh::hbone::H2Stream, UpstreamError> {
        self.pool
            .connect(TunnelRequest {
                source: self.identity.clone(),
                destination: ep.identity.clone(),
                address: SocketAddr::new(ep.addr.ip(), HBONE_PORT),
                authority: ep.addr.to_string(),
                headers: HeaderMap::new(),
            })
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: ep.addr,
                source,
            })
    }

    async fn connect_h1(&self, ep: &Endpoint) -> Result<http1::SendRequest<UpBody>, UpstreamError> {
        let io = TokioIo::new(self.tunnel(ep).await?);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake {
                addr: ep.addr,
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(&self, ep: &Endpoint) -> Result<http2::SendRequest<UpBody>, UpstreamError> {
        let io = TokioIo::new(self.tunnel(ep).await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake {
                addr: ep.addr,
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }
}
