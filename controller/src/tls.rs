//! The TLS side of the controller's gRPC port (15012, Istio's istiod port): a serving
//! certificate signed by the mesh CA itself, so that ztunnels verify the controller against the
//! same root they already trust for workloads; re-issued at half its life; and an accept loop
//! that runs handshakes beside the accept path so that one slow or hostile client cannot hold
//! up the others.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures::Stream;
use mesh::certs::{CaError, LocalCa};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::listen::{Conn, Limits};

/// Names every serving certificate carries: the in-cluster Service names clients use (Istio's
/// and ours) and loopback. `--tls-san` adds more.
pub const DEFAULT_NAMES: [&str; 4] = [
    "istiod.istio-system.svc",
    "amesh-controller.istio-system.svc",
    "localhost",
    "127.0.0.1",
];
/// Validity of a serving certificate; it is replaced at half of it.
pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// Retry delay when issuing a replacement certificate fails.
const RETRY: Duration = Duration::from_secs(60);

/// The current serving certificate, swapped in place when re-issued: new handshakes get the
/// new one, open connections keep theirs.
#[derive(Debug)]
pub struct ServingCert {
    ca: Arc<LocalCa>,
    names: Vec<String>,
    ttl: Duration,
    current: ArcSwap<CertifiedKey>,
    not_after: ArcSwap<SystemTime>,
}

impl ServingCert {
    /// Issues the first certificate for `names` (deduplicated, [`DEFAULT_NAMES`] first).
    pub fn issue(ca: Arc<LocalCa>, extra_names: &[String], ttl: Duration) -> Result<Self, CaError> {
        let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
        for name in extra_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let first = ca.issue_server(&names, ttl)?;
        Ok(ServingCert {
            ca,
            names,
            ttl,
            current: ArcSwap::new(first.certified),
            not_after: ArcSwap::from_pointee(first.not_after),
        })
    }

    /// The names in the certificate.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        **self.not_after.load()
    }

    /// Replaces the certificate with a fresh one.
    pub fn reissue(&self) -> Result<(), CaError> {
        let next = self.ca.issue_server(&self.names, self.ttl)?;
        self.current.store(next.certified);
        self.not_after.store(Arc::new(next.not_after));
        Ok(())
    }

    /// A rustls server configuration presenting this certificate, offering HTTP/2 only (gRPC)
    /// and asking no client certificate: clients authenticate with their bearer token.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// Re-issues the certificate at half of its life, for as long as the task runs.
    pub fn spawn_refresh(self: &Arc<Self>) -> JoinHandle<()> {
        let cert = self.clone();
        tokio::spawn(async move {
            loop {
                let left = cert
                    .not_after()
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(left / 2).await;
                loop {
                    match cert.reissue() {
                        Ok(()) => {
                            info!(names = ?cert.names, "re-issued the TLS serving certificate");
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot re-issue the TLS serving certificate; retrying in {RETRY:?}");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            }
        })
    }
}

#[derive(Debug)]
struct Resolver(Arc<ServingCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

/// Connections of `listener` after their TLS handshake, for tonic's `serve_with_incoming`,
/// within the default [`Limits`] ([`crate::listen`]: back-off on
/// accept errors, connections at once and per source, handshakes beside the accept path with
/// a 10 s limit). Failed or slow handshakes are logged and dropped; the accept loop ends when
/// the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = Result<Conn<TlsStream<TcpStream>>, std::io::Error>> {
    let acceptor = TlsAcceptor::from(config);
    crate::listen::incoming("TLS gRPC", listener, Limits::default(), move |tcp| {
        acceptor.accept(tcp)
    })
}
