//! The HBONE client: a pool of HTTP/2-over-mTLS connections keyed by (source identity,
//! destination identity, destination address), one CONNECT stream per tunnel.
//!
//! Picking a connection takes a short per-key lock and never awaits under it; only opening a
//! new connection is serialised per key, so a burst of tunnels to one peer shares connections
//! instead of each dialling its own. Keys are found in a sharded table ([`Interner`]), so
//! tunnels to different peers do not meet on one lock either.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use http::HeaderMap;
use parking_lot::Mutex;
use tokio::net::TcpSocket;
use tracing::debug;

use super::conn::{self, ClientConn};
use super::request::{build_connect, REASON_HEADER};
use super::slot::{PooledConn, Slot};
use super::stream::{H2Reader, H2Writer};
use super::{H2Settings, H2Stream, HboneError};
use crate::intern::Interner;
use crate::tls::TlsError;
use crate::Identity;

/// Creates the sockets HBONE connections leave from. ztunnel supplies one that opens them in a
/// pod's network namespace and marks them so capture does not loop them back.
pub trait SocketFactory: Send + Sync + 'static {
    fn tcp_socket(&self, dest: SocketAddr) -> std::io::Result<TcpSocket>;
}

/// Plain sockets in the current network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultSockets;

impl SocketFactory for DefaultSockets {
    fn tcp_socket(&self, dest: SocketAddr) -> std::io::Result<TcpSocket> {
        if dest.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    }
}

/// Supplies the TLS client configuration for a (source, destination) identity pair.
pub trait ClientTls: Send + Sync + 'static {
    fn client_config(
        &self,
        source: &Identity,
        destination: &Identity,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError>;
}

impl ClientTls for crate::tls::TlsContext {
    fn client_config(
        &self,
        source: &Identity,
        destination: &Identity,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        crate::tls::TlsContext::client_config(self, source, std::slice::from_ref(destination))
    }
}

/// Which connections a tunnel may share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub destination: Identity,
    pub address: SocketAddr,
}

/// One tunnel to open.
#[derive(Clone, Debug)]
pub struct TunnelRequest {
    /// Identity whose certificate the client presents.
    pub source: Identity,
    /// Identity the server must prove.
    pub destination: Identity,
    /// HBONE endpoint, normally `<destination ip>:15008`.
    pub address: SocketAddr,
    /// `:authority` of the CONNECT: the original destination `ip:port`.
    pub authority: String,
    /// Extra request headers: `forwarded`, `traceparent`, `baggage`.
    pub headers: HeaderMap,
}

/// Counters for tests, metrics and the admin page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections opened since the pool was created.
    pub connections_opened: u64,
    /// Connections currently in the pool.
    pub connections: usize,
    /// Tunnels currently open.
    pub active_streams: usize,
}

/// A pool of HBONE connections. Cheap to clone; all clones share the connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    tls: Arc<dyn ClientTls>,
    sockets: Arc<dyn SocketFactory>,
    settings: H2Settings,
    /// Every key's connections. Sharded: a tunnel takes the lock of its key's shard only
    /// (a read lock once the key is known), not one every tunnel of the pod shares.
    keys: Interner<PoolKey, KeyState>,
    opened: AtomicU64,
}

/// Connections of one key, plus the lock that serialises dialling new ones.
#[derive(Default)]
struct KeyState {
    conns: Mutex<Vec<Arc<PooledConn>>>,
    dialing: tokio::sync::Mutex<()>,
}

impl KeyState {
    fn try_reserve(&self, limit: usize) -> Option<(SendRequest<Bytes>, Slot)> {
        let conns = self.conns.lock();
        conns
            .iter()
            .find_map(|c| c.try_reserve(limit).map(|s| (c.sender.clone(), s)))
    }
}

impl Pool {
    /// Creates a pool; must be called inside a Tokio runtime (it starts the idle sweeper).
    pub fn new(
        tls: Arc<dyn ClientTls>,
        sockets: Arc<dyn SocketFactory>,
        settings: H2Settings,
    ) -> Pool {
        let inner = Arc::new(PoolInner {
            tls,
            sockets,
            settings,
            keys: Interner::new(),
            opened: AtomicU64::new(0),
        });
        tokio::spawn(sweep_idle(Arc::downgrade(&inner)));
        Pool { inner }
    }

    /// Pool with plain sockets in the current network namespace.
    pub fn with_default_sockets(tls: Arc<dyn ClientTls>, settings: H2Settings) -> Pool {
        Pool::new(tls, Arc::new(DefaultSockets), settings)
    }

    pub fn stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            connections_opened: self.inner.opened.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        self.inner.keys.for_each(|_, state| {
            for c in state.conns.lock().iter().filter(|c| c.usable()) {
                stats.connections += 1;
                stats.active_streams += c.active.load(Ordering::Relaxed);
            }
        });
        stats
    }

    /// Opens a tunnel: a CONNECT stream on a pooled connection (dialling one if needed).
    /// Fails with [`HboneError::Refused`] when the server answers other than 200.
    pub async fn connect(&self, req: TunnelRequest) -> Result<H2Stream, HboneError> {
        let (writer, response) = self.open(req).await?.into_parts();
        let reader = response.await?;
        Ok(H2Stream::from_halves(reader, writer))
    }

    /// Sends the CONNECT and returns at once, without waiting for the answer: the caller may
    /// start sending (the server holds early bytes within the stream's window until it has
    /// connected to the app), which saves a round trip before the app's first bytes arrive.
    /// Reading needs the answer; [`Connecting::into_parts`] gives the future of it.
    //
    // Boxed, and not an `async fn`: picking a connection and opening a stream keep ~1.5 KiB
    // of state (the CONNECT request, the pool key, h2's readiness future). Inline, that state
    // (or, from an `async fn`, at least the request it was called with) would be part of the
    // caller's task, whose later relay is smaller, for the tunnel's whole life; boxed it is
    // freed as soon as the stream is open.
    pub fn open(
        &self,
        req: TunnelRequest,
    ) -> impl Future<Output = Result<Connecting, HboneError>> + Send + '_ {
        Box::pin(self.open_inner(req))
    }

    async fn open_inner(&self, req: TunnelRequest) -> Result<Connecting, HboneError> {
        let request = build_connect(&req.authority, &req.headers)?;
        let key = PoolKey {
            source: req.source,
            destination: req.destination,
            address: req.address,
        };
        let state = self.key_state(&key);
        // A pooled connection can turn out dead between picking and using it (peer restart,
        // GOAWAY); then one fresh connection is tried before giving up.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (sender, slot) = self.reserve(&key, &state).await?;
            match open_stream(sender, request.clone(), &slot).await {
                Ok((send, response)) => {
                    let slot = Arc::new(slot);
                    return Ok(Connecting {
                        writer: H2Writer::new(send, Some(slot.clone())),
                        response,
                        slot,
                        authority: req.authority,
                    });
                }
                Err(e) if attempts < 2 => {
                    debug!(error = %e, peer = %key.address, "pooled connection unusable; retrying on a new one");
                    slot.mark_closed();
                }
                Err(e) => return Err(HboneError::Stream(e)),
            }
        }
    }

    fn key_state(&self, key: &PoolKey) -> Arc<KeyState> {
        self.inner
            .keys
            .get_or_insert_with(key.clone(), |_| KeyState::default())
    }

    async fn reserve(
        &self,
        key: &PoolKey,
        state: &KeyState,
    ) -> Result<(SendRequest<Bytes>, Slot), HboneError> {
        let limit = self.inner.settings.max_streams_per_connection.max(1);
        if let Some(found) = state.try_reserve(limit) {
            return Ok(found);
        }
        let _dialing = state.dialing.lock().await;
        // Someone else may have dialled while we waited for the lock.
        if let Some(found) = state.try_reserve(limit) {
            return Ok(found);
        }
        // Boxed: dialling (TLS and HTTP/2 handshakes) is rare, and its large future would
        // otherwise sit in the state of every tunnel's task for the tunnel's whole life.
        let conn = Box::pin(self.dial(key)).await?;
        let pooled = Arc::new(PooledConn {
            sender: conn.sender,
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            closed: conn.closed,
        });
        let slot = pooled
            .try_reserve(limit)
            .ok_or(HboneError::ConnectionClosed { addr: key.address })?;
        let sender = pooled.sender.clone();
        let mut conns = state.conns.lock();
        conns.retain(|c| c.usable());
        conns.push(pooled);
        Ok((sender, slot))
    }

    async fn dial(&self, key: &PoolKey) -> Result<ClientConn, HboneError> {
        let tls = self
            .inner
            .tls
            .client_config(&key.source, &key.destination)
            .map_err(|e| HboneError::TlsConfig(Box::new(e)))?;
        let socket = self
            .inner
            .sockets
            .tcp_socket(key.address)
            .map_err(|source| HboneError::Connect {
                addr: key.address,
                source,
            })?;
        let conn = conn::open(key.address, socket, tls, &self.inner.settings).await?;
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        debug!(peer = %key.address, src = %key.source, dst = %key.destination, "HBONE connection opened");
        Ok(conn)
    }
}

type Opened = (h2::SendStream<Bytes>, h2::client::ResponseFuture);

async fn open_stream(
    sender: SendRequest<Bytes>,
    request: http::Request<()>,
    _slot: &Slot,
) -> Result<Opened, h2::Error> {
    let mut sender = sender.ready().await?;
    let (response, send) = sender.send_request(request, false)?;
    Ok((send, response))
}

/// A tunnel whose CONNECT is sent and not yet answered.
pub struct Connecting {
    writer: H2Writer,
    response: h2::client::ResponseFuture,
    slot: Arc<Slot>,
    authority: String,
}

impl Connecting {
    /// The sending half, usable now, and the answer: the receiving half on 200,
    /// [`HboneError::Refused`] otherwise.
    pub fn into_parts(
        self,
    ) -> (
        H2Writer,
        impl std::future::Future<Output = Result<H2Reader, HboneError>> + Send,
    ) {
        let Connecting {
            writer,
            response,
            slot,
            authority,
        } = self;
        (writer, answer(response, slot, authority))
    }
}

async fn answer(
    response: h2::client::ResponseFuture,
    slot: Arc<Slot>,
    authority: String,
) -> Result<H2Reader, HboneError> {
    let response = response.await?;
    let status = response.status();
    if status == http::StatusCode::OK {
        return Ok(H2Reader::new(response.into_body(), Some(slot)));
    }
    let reason = response
        .headers()
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Err(HboneError::Refused {
        authority,
        status,
        reason,
    })
}

/// Closes connections that stayed idle past the timeout and forgets dead ones. Ends when the
/// pool is dropped.
///
/// Per peer, the first connection that carries tunnels or is idle (the one new tunnels are
/// put on first) stays for the whole idle timeout; an idle one behind it is surplus, left
/// from a burst, and goes after the shorter surplus timeout.
async fn sweep_idle(pool: Weak<PoolInner>) {
    let period = match pool.upgrade() {
        Some(p) => {
            let s = &p.settings;
            (s.idle_timeout / 4)
                .min(s.surplus_idle_timeout / 2)
                .max(Duration::from_millis(100))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let timeout = pool.settings.idle_timeout;
        let surplus = pool.settings.surplus_idle_timeout.min(timeout);
        pool.keys.retain(|_, state| {
            let mut conns = state.conns.lock();
            let mut one_kept = false;
            // Dropping our handle lets h2 close the connection once no stream uses it.
            conns.retain(|c| {
                if !c.usable() {
                    return false;
                }
                let keep = c.active.load(Ordering::Acquire) > 0 || {
                    let limit = if one_kept { surplus } else { timeout };
                    c.idle_since.lock().elapsed() < limit
                };
                one_kept |= keep;
                keep
            });
            !conns.is_empty() || Arc::strong_count(state) > 1
        });
    }
}
