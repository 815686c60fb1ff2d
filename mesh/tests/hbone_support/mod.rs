//! A small mesh on loopback for HBONE tests: an "outbound" listener that tunnels every accepted
//! TCP connection through the pool (as ztunnel's 15001 does), an HBONE server whose handler
//! connects to the `:authority` target (as ztunnel's 15008 does), and identities from a local CA.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh::certs::{CertStore, LocalCa};
use mesh::hbone::{
    relay, relay_connecting, ConnectHandler, ConnectRequest, Drain, H2Settings, PendingTunnel,
    Pool, Refusal, Server, ServerStats, TunnelRequest,
};
use mesh::tls::TlsContext;
use mesh::Identity;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const TRUST_DOMAIN: &str = "cluster.local";

pub fn client_id() -> Identity {
    Identity::new(TRUST_DOMAIN, "default", "client").unwrap()
}

pub fn server_id() -> Identity {
    Identity::new(TRUST_DOMAIN, "default", "server").unwrap()
}

/// Forwards accepted tunnels to their target, refusing identities in `deny`, each answer
/// after `delay`.
pub struct Forward {
    pub deny: Vec<Identity>,
    pub delay: Duration,
}

impl ConnectHandler for Forward {
    async fn handle(&self, req: ConnectRequest, tunnel: PendingTunnel) {
        tokio::time::sleep(self.delay).await;
        if self.deny.contains(&req.peer_identity) {
            let why = format!("{} is denied by policy", req.peer_identity);
            return tunnel.refuse(Refusal::Denied, &why);
        }
        let Some(target) = req.target_addr() else {
            return tunnel.refuse(Refusal::BadRequest, "authority is not ip:port");
        };
        let upstream = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(e) => return tunnel.refuse(Refusal::Unavailable, &e.to_string()),
        };
        if let Ok(t) = tunnel.accept() {
            relay(upstream, t).await;
        }
    }
}

pub struct Mesh {
    pub ca_dir: tempfile::TempDir,
    pub tls: TlsContext,
    pub pool: Pool,
    pub hbone_addr: SocketAddr,
    pub server_stats: Arc<ServerStats>,
    pub drain: Drain,
    pub server_task: JoinHandle<()>,
}

impl Mesh {
    pub async fn start(settings: H2Settings, deny: Vec<Identity>) -> Mesh {
        Mesh::start_answering_after(settings, deny, Duration::ZERO).await
    }

    /// A mesh whose server answers every CONNECT only after `delay`.
    pub async fn start_answering_after(
        settings: H2Settings,
        deny: Vec<Identity>,
        delay: Duration,
    ) -> Mesh {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(ca_dir.path(), TRUST_DOMAIN).unwrap();
        let tls = TlsContext::new(TRUST_DOMAIN, CertStore::new(), ca.trust_roots()).unwrap();
        for id in [client_id(), server_id()] {
            tls.store()
                .insert(ca.issue(&id, Duration::from_secs(3600)).unwrap());
        }
        let server_config = tls.server_config(&server_id()).unwrap();
        let server = Server::new(
            Arc::new(server_config),
            Forward { deny, delay },
            settings.clone(),
        );
        let server_stats = server.stats();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hbone_addr = listener.local_addr().unwrap();
        let (drain, watch) = Drain::new();
        let server_task = tokio::spawn(server.serve(listener, watch, Duration::from_secs(30)));
        let pool = Pool::with_default_sockets(Arc::new(tls.clone()), settings);
        Mesh {
            ca_dir,
            tls,
            pool,
            hbone_addr,
            server_stats,
            drain,
            server_task,
        }
    }

    pub fn request(&self, target: SocketAddr) -> TunnelRequest {
        TunnelRequest {
            source: client_id(),
            destination: server_id(),
            address: self.hbone_addr,
            authority: target.to_string(),
            headers: Default::default(),
        }
    }

    /// An outbound listener: every TCP connection accepted on it is tunnelled to `target`.
    pub async fn outbound(&self, target: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = self.pool.clone();
        let req = self.request(target);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let pool = pool.clone();
                let req = req.clone();
                tokio::spawn(async move {
                    if let Ok(tunnel) = pool.connect(req).await {
                        relay(tcp, tunnel).await;
                    }
                });
            }
        });
        addr
    }
}

/// Like [`Mesh::outbound`], the way ztunnel's outbound does it: the CONNECT is not awaited
/// before the app's bytes go into the tunnel (`Pool::open` + `relay_connecting`).
pub async fn early_outbound(mesh: &Mesh, target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = mesh.pool.clone();
    let req = mesh.request(target);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let pool = pool.clone();
            let req = req.clone();
            tokio::spawn(async move {
                if let Ok(connecting) = pool.open(req).await {
                    relay_connecting(tcp, connecting).await;
                }
            });
        }
    });
    addr
}

/// A TCP echo server; returns its address.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Deterministic pseudo-random bytes (xorshift), so large transfers need no stored data.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
