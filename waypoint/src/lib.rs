//! amesh's waypoint: the per-namespace L7 proxy of ambient mode. It terminates HBONE tunnels
//! from ztunnels (clients' identities proven by mTLS), serves HTTP/1.1, HTTP/2 and gRPC inside
//! them through the request pipeline (JWT authentication, L7 authorization, local rate limits,
//! HTTPRoute routing, telemetry), and
//! forwards each request over HBONE, with its own identity, to the chosen endpoint's ztunnel.

pub mod admin;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod cluster;
pub mod config;
pub mod detect;
pub mod fault;
pub mod forward;
pub mod headers;
pub mod inbound;
pub mod l7;
pub mod metrics;
pub mod mirror;
pub mod outlier;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod record;
pub mod replay;
pub mod retry;
pub mod run;
pub mod tcp;
pub mod upstream;

use std::net::IpAddr;

use mesh::state::StateStore;
use mesh::Identity;

/// Everything the request path shares, built once at start.
pub struct Waypoint {
    /// Services, workloads, endpoints (Istio's Address resources).
    pub state: StateStore,
    /// Routes and L7 policies.
    pub l7: l7::L7Store,
    pub upstream: upstream::Upstream,
    pub metrics: metrics::Metrics,
    /// The Gateway this waypoint implements.
    pub namespace: String,
    pub gateway: String,
    /// Its Service's hostname, as bindings name it.
    pub hostname: String,
    pub instance_ip: IpAddr,
    pub identity: Identity,
    /// Endpoint choice within a service.
    pub balancer: balance::Balancer,
    /// Requests in flight per endpoint.
    pub in_flight: balance::InFlight,
    /// Whether every request writes an access log line (`AMESH_ACCESS_LOG`).
    pub access_log: bool,
    /// Circuit breaker and outlier detection state of DestinationRule clusters.
    pub clusters: cluster::Clusters,
    round_robin: balance::RoundRobin,
}

impl Waypoint {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: StateStore,
        l7: l7::L7Store,
        upstream: upstream::Upstream,
        metrics: metrics::Metrics,
        namespace: String,
        gateway: String,
        hostname: String,
        instance_ip: IpAddr,
        identity: Identity,
        balancer: balance::Balancer,
        access_log: bool,
    ) -> Self {
        Waypoint {
            state,
            l7,
            upstream,
            metrics,
            namespace,
            gateway,
            hostname,
            instance_ip,
            identity,
            balancer,
            access_log,
            in_flight: Default::default(),
            clusters: Default::default(),
            round_robin: Default::default(),
        }
    }

    /// The next round-robin position for `service`.
    pub fn next_index(&self, service: &str) -> usize {
        self.round_robin.next(service)
    }
}
