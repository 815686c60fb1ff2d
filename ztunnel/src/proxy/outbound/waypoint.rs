//! The waypoint hop of the outbound path: which waypoint pod takes a connection whose
//! destination (a Service or a Workload) names a waypoint, and when not to use it because the
//! caller is that waypoint.
//!
//! As Istio's ztunnel: a waypoint named by hostname is the Service `namespace/hostname`, and a
//! connection goes to one of its healthy endpoints; a waypoint named by address is the
//! workload (or, failing that, the service VIP) at that address. A waypoint that cannot be
//! found is an error for the caller to refuse the connection with, never a reason to go
//! around it: that would skip the L7 policy the waypoint enforces.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh::hbone::HBONE_PORT;
use mesh::state::{GatewayAddress, GatewayDestination, Snapshot, Workload};
use mesh::Identity;
use rand::Rng;

/// The captured pod that opened the connection, as far as routing needs it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The pod's IP: in-pod sockets make it the source address of everything it sends.
    pub ip: IpAddr,
    /// The identity whose certificate the pod's tunnels present.
    pub identity: &'a Identity,
}

/// The waypoint pod a connection goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointPod {
    /// The pod's workload: its identity is the one the HBONE peer must prove.
    pub workload: Arc<Workload>,
    /// Where the pod accepts HBONE (`ip:hbone_mtls_port`).
    pub address: SocketAddr,
}

/// Why the waypoint a destination names cannot take a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaypointError {
    #[error("waypoint {0} is not in ztunnel's configuration; check that the waypoint Gateway and its Service exist and the controller sent them")]
    NotFound(String),
    #[error("waypoint {0} has no healthy pod with an address; check that the waypoint Deployment is running and ready")]
    NoHealthyPod(String),
}

/// Resolves `gateway` for a connection from `caller`: `Ok(None)` when the caller is itself one
/// of the waypoint's pods (its own traffic must reach the destination directly, or it would
/// come back to it forever), otherwise the pod to send to.
pub fn resolve(
    snapshot: &Snapshot,
    gateway: &GatewayAddress,
    caller: Caller<'_>,
) -> Result<Option<WaypointPod>, WaypointError> {
    let candidates = candidates(snapshot, &gateway.destination);
    if candidates.is_empty() {
        return Err(WaypointError::NotFound(name(&gateway.destination)));
    }
    // Unhealthy pods count here: a waypoint pod going unready still sends its own traffic.
    // Address and identity must both match, as Istio's ztunnel checks: the address alone
    // would let a pod that reuses a stale waypoint IP skip the waypoint.
    let is_caller =
        |w: &Workload| w.addresses.contains(&caller.ip) && w.identity == *caller.identity;
    if candidates.iter().any(|(w, _)| is_caller(w)) {
        return Ok(None);
    }
    let healthy: Vec<_> = candidates.iter().filter(|(w, _)| w.healthy).collect();
    if healthy.is_empty() {
        return Err(WaypointError::NoHealthyPod(name(&gateway.destination)));
    }
    let (workload, ip) = healthy[rand::rng().random_range(0..healthy.len())];
    // Istio leaves the port 0 when the waypoint did not say; HBONE is then on its usual port.
    let port = match gateway.hbone_mtls_port {
        0 => HBONE_PORT,
        p => p,
    };
    Ok(Some(WaypointPod {
        workload: (*workload).clone(),
        address: SocketAddr::new(*ip, port),
    }))
}

/// Every pod of the waypoint with the address to reach it at, healthy or not.
fn candidates<'a>(
    snapshot: &'a Snapshot,
    destination: &GatewayDestination,
) -> Vec<(&'a Arc<Workload>, IpAddr)> {
    let endpoints_of = |key: &str| -> Vec<(&'a Arc<Workload>, IpAddr)> {
        snapshot
            .endpoints(key)
            .iter()
            .filter_map(|e| Some((&e.workload, *e.workload.addresses.first()?)))
            .collect()
    };
    match destination {
        GatewayDestination::Hostname(h) => endpoints_of(&format!("{}/{}", h.namespace, h.hostname)),
        GatewayDestination::Address(a) => {
            if let Some(w) = snapshot.workload_by_network_ip(&a.network, a.address) {
                // The address named is the one to dial, whatever else the pod has.
                return vec![(w, a.address)];
            }
            match snapshot.service_by_network_vip(&a.network, a.address) {
                Some(service) => endpoints_of(&service.key()),
                None => Vec::new(),
            }
        }
    }
}

/// The waypoint as the config names it, for logs and errors.
pub fn name(destination: &GatewayDestination) -> String {
    match destination {
        GatewayDestination::Hostname(h) => format!("{}/{}", h.namespace, h.hostname),
        GatewayDestination::Address(a) => a.to_string(),
    }
}
