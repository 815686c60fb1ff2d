//! HBONE in: each CONNECT names the `ip:port` the client addressed. The waypoint accepts it only
//! for a service or workload bound to this waypoint, then finds out what the tunnel carries and
//! serves it: HTTP/1.1 or HTTP/2 (and gRPC) with hyper through the request pipeline, anything
//! else as TCP to one endpoint with L4 policy only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::hbone::{ConnectHandler, ConnectRequest, PendingTunnel, Refusal};
use mesh::state::{AppProtocol, GatewayAddress, GatewayDestination, Service, Snapshot};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use crate::detect::{detect, Prefixed, Protocol};
use crate::pipeline::{self, ConnCtx, Target};
use crate::Waypoint;

/// How long a tunnel of unknown protocol may stay silent before it is taken for a
/// server-first TCP protocol.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client on a port declared HTTP may take to send its first bytes (a silent
/// client otherwise holds a task forever).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// An HTTP/1.1 connection's limit for each request head. hyper starts it as soon as the
/// connection waits for a request, so it is also how long a kept-alive connection may idle:
/// long, so clients rarely race a close when they reuse one.
pub const H1_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP/2 PING interval towards clients; a client that does not answer within it is gone.
pub const H2_KEEPALIVE: Duration = Duration::from_secs(30);
/// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields in one HTTP/1.1 request.
pub const MAX_HEADERS: usize = 100;

/// The HBONE handler of the waypoint.
#[derive(Clone)]
pub struct Inbound(pub Arc<Waypoint>);

impl ConnectHandler for Inbound {
    async fn handle(&self, req: ConnectRequest, tunnel: PendingTunnel) {
        let wp = self.0.clone();
        let Some(addr) = req.target_addr() else {
            tunnel.refuse(
                Refusal::BadRequest,
                "the waypoint takes CONNECT to ip:port only",
            );
            return;
        };
        let snapshot = wp.state.snapshot();
        let Some(target) = bound_target(&wp, &snapshot, addr) else {
            debug!(%addr, peer = %req.peer_identity, "CONNECT to a target not bound to this waypoint");
            tunnel.refuse(
                Refusal::BadRequest,
                &format!(
                    "{addr} is not a service or workload that uses waypoint {}/{}",
                    wp.namespace, wp.gateway
                ),
            );
            return;
        };
        let source_workload = snapshot.workload_by_ip(req.peer_addr.ip()).cloned();
        drop(snapshot);
        let declared = declared_protocol(&target, addr.port());
        let mut stream = match tunnel.accept() {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "client left before the tunnel was accepted");
                return;
            }
        };
        let ctx = Arc::new(ConnCtx {
            peer_principal: req.peer_identity.to_string(),
            series: Default::default(),
            peer_identity: req.peer_identity.clone(),
            peer_addr: req.peer_addr,
            source_workload,
            target,
            addr,
        });
        // Sniff unless the port says TCP; HTTP/1.1 declared ports may still carry HTTP/2 with
        // prior knowledge (h2c), which the preface tells apart.
        let (protocol, first) = if declared == Some(Protocol::Tcp) {
            (Protocol::Tcp, BytesMut::new())
        } else {
            match sniff(&mut stream, declared).await {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "tunnel closed before its first request");
                    return;
                }
            }
        };
        let io = Prefixed::new(first.freeze(), stream);
        match protocol {
            Protocol::Http1 => {
                let svc = service_fn(move |r| pipeline::handle(wp.clone(), ctx.clone(), r));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(H1_IDLE_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .max_headers(MAX_HEADERS)
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    debug!(error = %e, "HTTP/1.1 connection ended");
                }
            }
            Protocol::Http2 => {
                let svc = service_fn(move |r| pipeline::handle(wp.clone(), ctx.clone(), r));
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(H2_KEEPALIVE)
                    .keep_alive_timeout(H2_KEEPALIVE)
                    .max_header_list_size(MAX_HEADER_BYTES as u32)
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(16 << 20)
                    .serve_connection(TokioIo::new(io), svc);
                if let Err(e) = conn.await {
                    debug!(error = %e, "HTTP/2 connection ended");
                }
            }
            Protocol::Tcp => crate::tcp::serve(wp, ctx, io).await,
        }
    }
}

/// The service or workload `addr` names, if it uses this waypoint.
fn bound_target(wp: &Waypoint, snapshot: &Snapshot, addr: SocketAddr) -> Option<Target> {
    if let Some(service) = snapshot.service_by_vip(addr.ip()) {
        return service
            .waypoint
            .as_ref()
            .filter(|w| is_me(wp, snapshot, w))
            .map(|_| Target::Service(service.clone()));
    }
    let workload = snapshot.workload_by_ip(addr.ip())?;
    workload
        .waypoint
        .as_ref()
        .filter(|w| is_me(wp, snapshot, w))
        .map(|_| Target::Workload(workload.clone()))
}

/// Whether a binding names this waypoint: by its Service's hostname, or by an address of its
/// Service or of this pod.
fn is_me(wp: &Waypoint, snapshot: &Snapshot, gw: &GatewayAddress) -> bool {
    match &gw.destination {
        GatewayDestination::Hostname(h) => h.namespace == wp.namespace && h.hostname == wp.hostname,
        GatewayDestination::Address(a) => {
            a.address == wp.instance_ip
                || snapshot
                    .service_by_vip(a.address)
                    .is_some_and(|s| s.namespace == wp.namespace && s.hostname == wp.hostname)
        }
    }
}

fn declared_protocol(target: &Target, port: u16) -> Option<Protocol> {
    let service: &Service = match target {
        Target::Service(s) => s,
        Target::Workload(_) => return None,
    };
    match service.port(port).map(|p| p.app_protocol) {
        Some(AppProtocol::Http2) | Some(AppProtocol::Grpc) => Some(Protocol::Http2),
        Some(AppProtocol::Http11) => Some(Protocol::Http1),
        Some(AppProtocol::Tcp) | Some(AppProtocol::Tls) => Some(Protocol::Tcp),
        _ => None,
    }
}

async fn sniff(
    stream: &mut mesh::hbone::H2Stream,
    declared: Option<Protocol>,
) -> std::io::Result<(Protocol, BytesMut)> {
    let mut buf = BytesMut::with_capacity(64);
    loop {
        let read = async {
            // At most the preface: enough to decide, never more than hyper will be handed.
            let mut chunk = [0u8; 24];
            let want = 24usize.saturating_sub(buf.len()).max(1);
            let n = stream.read(&mut chunk[..want]).await?;
            Ok::<_, std::io::Error>((chunk, n))
        };
        let (chunk, n) = match declared {
            // A port declared HTTP is client-first: wait for the client, within a limit.
            Some(_) => match tokio::time::timeout(HEADER_TIMEOUT, read).await {
                Ok(r) => r?,
                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            },
            None => match tokio::time::timeout(SNIFF_TIMEOUT, read).await {
                Ok(r) => r?,
                Err(_) => return Ok((Protocol::Tcp, buf)),
            },
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match detect(&buf) {
            Some(Protocol::Tcp) if declared == Some(Protocol::Http1) => {
                // Declared HTTP but not HTTP: hyper answers 400 on this connection only.
                return Ok((Protocol::Http1, buf));
            }
            Some(p) => return Ok((p, buf)),
            None => continue,
        }
    }
}

/// Logs once at startup what the waypoint serves.
pub fn log_bound(wp: &Waypoint) {
    let snapshot = wp.state.snapshot();
    let services: Vec<String> = snapshot
        .services()
        .filter(|s| s.waypoint.as_ref().is_some_and(|w| is_me(wp, &snapshot, w)))
        .map(|s| s.hostname.clone())
        .collect();
    if services.is_empty() {
        warn!("no service is bound to this waypoint yet");
    } else {
        info!(?services, "services bound to this waypoint");
    }
}
