//! Outbound: the pod's app connected somewhere; capture brought it to 15001. Find out where it
//! was going and carry it there: HBONE to a mesh workload (directly or behind a service VIP),
//! HBONE to the waypoint of a destination that has one, plain TCP to a workload outside the
//! mesh, passthrough for unknown destinations.

mod waypoint;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

use mesh::hbone::{
    abort_on_close, relay_connecting, RelayError, RelayStats, TunnelRequest, HBONE_PORT,
};
use mesh::state::{Endpoint, GatewayAddress, Service, Snapshot, TunnelProtocol, Workload};
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{Pod, Shared};
use crate::destination::original_dst;
use crate::metrics::{ConnLabels, OpenConn, Reporter, SecurityPolicy};
pub use waypoint::{Caller, WaypointError, WaypointPod};

/// Where an outbound connection goes.
#[derive(Debug)]
pub enum Route {
    /// HBONE to the workload's HBONE endpoint with this `:authority`.
    Hbone {
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
        target: SocketAddr,
    },
    /// HBONE to the waypoint in charge of what the app addressed. The waypoint picks the
    /// endpoint and applies L7 policy, so the `:authority` is the address the app dialled
    /// (service VIP or pod IP, with the app's port), not an endpoint.
    Waypoint {
        waypoint: WaypointPod,
        /// The service the app addressed, if it addressed one.
        service: Option<Arc<Service>>,
        authority: SocketAddr,
    },
    /// Plain TCP to a known workload that is not in the mesh.
    Plain {
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
        target: SocketAddr,
    },
    /// Unknown destination: straight through.
    Passthrough { target: SocketAddr },
    /// A service without any healthy endpoint.
    NoEndpoints { service: Arc<Service> },
    /// The destination must go through a waypoint that cannot take it now: refused.
    WaypointUnavailable {
        destination: SocketAddr,
        error: WaypointError,
    },
}

/// Decides the route for a connection from `caller` to `dst` (its original destination).
///
/// As Istio's ztunnel: a service VIP goes to the service's waypoint if it has one, else to
/// an endpoint; a pod IP goes to the pod's waypoint if it has one, else to the pod. A service
/// without a waypoint is not sent to its endpoint's waypoint (Istio's "waypoint for
/// workload" applies to traffic addressed to the pod). The waypoint's own traffic goes on
/// as if there were no waypoint.
pub fn route(snapshot: &Snapshot, caller: Caller<'_>, dst: SocketAddr) -> Route {
    if let Some(service) = snapshot.service_by_vip(dst.ip()) {
        if let Some(route) = service
            .waypoint
            .as_ref()
            .and_then(|gw| via_waypoint(snapshot, gw, caller, dst, Some(service)))
        {
            return route;
        }
        return to_endpoint(snapshot, service, dst);
    }
    if let Some(workload) = snapshot.workload_by_ip(dst.ip()) {
        if let Some(route) = workload
            .waypoint
            .as_ref()
            .and_then(|gw| via_waypoint(snapshot, gw, caller, dst, None))
        {
            return route;
        }
        // Addressed to the pod: the service whose target port this is names the traffic in
        // the metrics, as Istio's ztunnel does.
        let service = crate::metrics::service_for_port(snapshot, workload, dst.port());
        return with_workload(workload.clone(), service, dst);
    }
    Route::Passthrough { target: dst }
}

/// The route through `gateway`, or `None` when `caller` is that waypoint.
fn via_waypoint(
    snapshot: &Snapshot,
    gateway: &GatewayAddress,
    caller: Caller<'_>,
    dst: SocketAddr,
    service: Option<&Arc<Service>>,
) -> Option<Route> {
    match waypoint::resolve(snapshot, gateway, caller) {
        Ok(None) => None,
        Ok(Some(waypoint)) => Some(Route::Waypoint {
            waypoint,
            service: service.cloned(),
            authority: dst,
        }),
        Err(error) => Some(Route::WaypointUnavailable {
            destination: dst,
            error,
        }),
    }
}

/// One healthy endpoint of `service`, with the service port mapped to the endpoint's port.
fn to_endpoint(snapshot: &Snapshot, service: &Arc<Service>, dst: SocketAddr) -> Route {
    let endpoints: Vec<_> = snapshot
        .endpoints(&service.key())
        .iter()
        .filter(|e| e.workload.healthy && !e.workload.addresses.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Route::NoEndpoints {
            service: service.clone(),
        };
    }
    let pick = endpoints[rand::rng().random_range(0..endpoints.len())];
    let target = SocketAddr::new(
        pick.workload.addresses[0],
        target_port(service, pick, dst.port()),
    );
    with_workload(pick.workload.clone(), Some(service.clone()), target)
}

/// The port on `endpoint` that `service_port` of `service` reaches: the endpoint's own mapping
/// (a named target port resolved per pod), else the service's target port, else the same port.
/// Public for `amesh explain`, which must land where this proxy lands.
pub fn target_port(service: &Service, endpoint: &Endpoint, service_port: u16) -> u16 {
    endpoint
        .port_map
        .get(&service_port)
        .copied()
        .filter(|p| *p != 0)
        .or_else(|| {
            service
                .ports
                .iter()
                .find(|p| p.service_port == service_port && p.target_port != 0)
                .map(|p| p.target_port)
        })
        .unwrap_or(service_port)
}

fn with_workload(
    workload: Arc<Workload>,
    service: Option<Arc<Service>>,
    target: SocketAddr,
) -> Route {
    match workload.protocol {
        TunnelProtocol::Hbone => Route::Hbone {
            workload,
            service,
            target,
        },
        TunnelProtocol::Tcp => Route::Plain {
            workload,
            service,
            target,
        },
    }
}

/// Accepts captured outbound connections of `pod` until drained.
pub async fn serve(
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    listener: TcpListener,
    drain: mesh::hbone::DrainWatch,
) {
    super::accept_loop(
        listener,
        drain,
        "outbound",
        pod.clone(),
        move |tcp, peer| handle(shared.clone(), pod.clone(), tcp, peer),
    )
    .await
}

pub(crate) async fn handle(shared: Arc<Shared>, pod: Arc<Pod>, tcp: TcpStream, peer: SocketAddr) {
    let start = Instant::now();
    let dst = match original_dst(&tcp, pod.destination) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot read the original destination; closing");
            return;
        }
    };
    let snapshot = shared.state.snapshot();
    let caller = Caller {
        ip: pod.info.ip,
        identity: &pod.identity,
    };
    let route = route(&snapshot, caller, dst);
    let source = snapshot.workload_by_ip(pod.info.ip).cloned();
    // A long connection must not keep this moment's whole config alive.
    drop(snapshot);
    debug!(?route, "outbound route");
    match route {
        // The pod itself: served in process, never through its own HBONE listener.
        Route::Hbone {
            workload,
            service,
            target,
        } if workload.addresses.contains(&pod.info.ip) => {
            // Boxed here and below: a future is as large as its largest route, and every HBONE
            // tunnel's task would otherwise carry the size of these other routes for its life.
            Box::pin(super::same_pod::serve(
                &shared, &pod, tcp, peer, workload, service, target,
            ))
            .await;
        }
        Route::Hbone {
            workload,
            service,
            target,
        } => {
            let host = service.as_ref().map(|s| s.hostname.as_str());
            let hbone = SocketAddr::new(target.ip(), HBONE_PORT);
            let req = tunnel_request(
                &pod,
                peer,
                host,
                source.as_deref(),
                &workload,
                hbone,
                target,
            );
            let labels = ConnLabels::new(
                Reporter::Source,
                source.as_deref(),
                Some(&pod.identity),
                Some(&workload),
                service.as_deref(),
                SecurityPolicy::MutualTls,
            );
            let conn = shared.metrics.open(labels);
            let stats = tunnel(&pod, tcp, req).await;
            tunnel_done(&pod, peer, conn, &workload, target, &stats, start);
        }
        Route::Waypoint {
            waypoint,
            service,
            authority,
        } => {
            let WaypointPod { workload, address } = waypoint;
            let host = service.as_ref().map(|s| s.hostname.as_str());
            let req = tunnel_request(
                &pod,
                peer,
                host,
                source.as_deref(),
                &workload,
                address,
                authority,
            );
            // As Istio's ztunnel: the destination is the peer that proved its identity (the
            // waypoint), the service is the one the app addressed. The waypoint reports the
            // hop to the app's pod itself.
            let labels = ConnLabels::new(
                Reporter::Source,
                source.as_deref(),
                Some(&pod.identity),
                Some(&workload),
                service.as_deref(),
                SecurityPolicy::MutualTls,
            );
            let conn = shared.metrics.open(labels);
            let stats = tunnel(&pod, tcp, req).await;
            tunnel_done(&pod, peer, conn, &workload, authority, &stats, start);
        }
        Route::Plain {
            workload,
            service,
            target,
        } => {
            let labels = ConnLabels::new(
                Reporter::Source,
                source.as_deref(),
                Some(&pod.identity),
                Some(&workload),
                service.as_deref(),
                SecurityPolicy::None,
            );
            let conn = shared.metrics.open(labels);
            Box::pin(direct(
                &pod,
                tcp,
                peer,
                target,
                start,
                Some(&workload),
                "plain",
                conn,
            ))
            .await;
        }
        Route::Passthrough { target } => {
            let labels = ConnLabels::new(
                Reporter::Source,
                source.as_deref(),
                Some(&pod.identity),
                None,
                None,
                SecurityPolicy::None,
            );
            let conn = shared.metrics.open(labels);
            Box::pin(direct(
                &pod,
                tcp,
                peer,
                target,
                start,
                None,
                "passthrough",
                conn,
            ))
            .await;
        }
        Route::NoEndpoints { service } => {
            warn!(service = %service.hostname, "service has no healthy endpoints; closing");
        }
        Route::WaypointUnavailable { destination, error } => {
            // Going around the waypoint would skip the L7 policy it enforces: refuse instead.
            warn!(%destination, %error, "destination's waypoint is unavailable; resetting");
            abort_on_close(&tcp);
        }
    }
}

/// The CONNECT for a tunnel from `pod` to `workload` at `address` (its HBONE listener) with
/// `:authority` `authority`, carrying the app's address (and the service it addressed) as
/// information.
fn tunnel_request(
    pod: &Pod,
    peer: SocketAddr,
    host: Option<&str>,
    source: Option<&Workload>,
    workload: &Workload,
    address: SocketAddr,
    authority: SocketAddr,
) -> TunnelRequest {
    // `forwarded`, a new `traceparent` and the source's `baggage`, as Istio's ztunnel sends.
    let headers = mesh::hbone::connect_headers(peer, host, source);
    TunnelRequest {
        source: pod.identity.clone(),
        destination: workload.identity(),
        address,
        authority: authority.to_string(),
        headers,
    }
}

/// Carries `tcp` through the tunnel `req` asks for, until either side is done.
//
// Not an `async fn`: the request (~300 bytes) goes into the pool's boxed open future at once
// instead of staying in this future, which lives as long as the tunnel.
fn tunnel(
    pod: &Pod,
    tcp: TcpStream,
    req: TunnelRequest,
) -> impl std::future::Future<Output = RelayStats> + Send + '_ {
    // From here on the app is owed an answer: should ztunnel die before the relay ends, the
    // kernel resets the app's socket rather than closing it as if the answer were complete
    // (the relay keeps the arm until a clean end).
    abort_on_close(&tcp);
    // The app's first bytes travel with the CONNECT instead of a round trip later.
    let open = pod.pool.open(req);
    async move {
        match open.await {
            Ok(connecting) => relay_connecting(tcp, connecting).await,
            Err(e) => RelayStats {
                error: Some(RelayError::NotEstablished(e)),
                ..RelayStats::default()
            },
        }
    }
}

/// Counts and logs a finished tunnel to `workload` with `:authority` `target`.
fn tunnel_done(
    pod: &Pod,
    peer: SocketAddr,
    conn: OpenConn<'_>,
    workload: &Workload,
    target: SocketAddr,
    stats: &RelayStats,
    start: Instant,
) {
    match &stats.error {
        Some(RelayError::NotEstablished(e)) => {
            conn.close(0, 0, Some("UF"));
            warn!(target = %target, dst_workload = %workload.name, error = %e, "outbound HBONE connection failed");
        }
        other => {
            conn.close(stats.sent, stats.received, other.as_ref().map(|_| "UC"));
            access_log(
                "outbound",
                peer,
                target,
                pod,
                Some(workload),
                // The tunnel's server proved this identity in the handshake.
                Some(&workload.identity),
                "hbone",
                stats,
                start,
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn direct(
    pod: &Pod,
    tcp: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    start: Instant,
    workload: Option<&Workload>,
    kind: &str,
    conn: OpenConn<'_>,
) {
    // As for a tunnel: a death of ztunnel from here on resets the app's socket.
    abort_on_close(&tcp);
    match pod.sockets.connect(target, None).await {
        Ok((upstream, _exception)) => {
            let stats = mesh::hbone::relay_tcp(tcp, upstream).await;
            conn.close(
                stats.sent,
                stats.received,
                stats.error.as_ref().map(|_| "UC"),
            );
            access_log(
                "outbound", peer, target, pod, workload, None, kind, &stats, start,
            );
        }
        Err(e) => {
            conn.close(0, 0, Some("UF"));
            warn!(%target, error = %e, "outbound {kind} connection failed");
        }
    }
}

/// One access-log line (target `access`, message `connection complete`) with the field names
/// of Istio's ztunnel: `src.*` and `dst.*` (`addr`, `workload`, `namespace`, `identity`, and
/// `dst.hbone_addr` for a tunnel), `direction`, `bytes_sent`, `bytes_recv`, `duration`
/// (`<n>ms`) and `error`. `pod` is the captured pod on this side (the source outbound, the
/// destination inbound); `peer_identity` is the other side's identity as the mTLS handshake
/// proved it, `None` where nothing proved one (plaintext, passthrough): a workload's claimed
/// identity is never logged as the peer's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn access_log(
    direction: &str,
    src: SocketAddr,
    dst: SocketAddr,
    pod: &Pod,
    peer_workload: Option<&Workload>,
    peer_identity: Option<&mesh::Identity>,
    kind: &str,
    stats: &mesh::hbone::RelayStats,
    start: Instant,
) {
    let peer_name = peer_workload.map_or("", |w| w.name.as_str());
    let peer_namespace = peer_workload.map_or("", |w| w.namespace.as_str());
    let peer_identity = peer_identity.map(|i| i.to_string()).unwrap_or_default();
    let pod_identity = pod.identity.to_string();
    let (src_workload, src_namespace, src_identity, dst_workload, dst_namespace, dst_identity) =
        if direction == "inbound" {
            let (n, ns) = (pod.info.name.as_str(), pod.info.namespace.as_str());
            (
                peer_name,
                peer_namespace,
                peer_identity.as_str(),
                n,
                ns,
                pod_identity.as_str(),
            )
        } else {
            let (n, ns) = (pod.info.name.as_str(), pod.info.namespace.as_str());
            (
                n,
                ns,
                pod_identity.as_str(),
                peer_name,
                peer_namespace,
                peer_identity.as_str(),
            )
        };
    // Istio writes `dst.hbone_addr` only for a tunnelled connection: the address inside it.
    let hbone_addr = if kind == "hbone" {
        dst.to_string()
    } else {
        String::new()
    };
    info!(
        target: "access",
        direction,
        src.addr = %src,
        src.workload = src_workload,
        src.namespace = src_namespace,
        src.identity = src_identity,
        dst.addr = %dst,
        dst.hbone_addr = hbone_addr,
        dst.workload = dst_workload,
        dst.namespace = dst_namespace,
        dst.identity = dst_identity,
        protocol = kind,
        bytes_sent = stats.sent,
        bytes_recv = stats.received,
        duration = %format_args!("{}ms", start.elapsed().as_millis()),
        error = stats.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
        "connection complete"
    );
}

#[cfg(test)]
mod tests;
