//! `route()` against one small cluster written as Istio ztunnel's local config: each case is a
//! caller, the address its app dialled, and the route expected, written out as a line.

use std::net::SocketAddr;

use mesh::state::{LocalConfig, Snapshot};
use mesh::Identity;

use super::{route, Caller, Route, WaypointError};

/// Namespace `shop`, trust domain `cluster.local`. Waypoint pods are plain TCP workloads, as
/// Istio describes them (they are not captured), yet are reached over HBONE.
const CLUSTER: &str = r#"
workloads:
- {name: client, namespace: shop, serviceAccount: client, workloadIps: [10.0.0.1], protocol: HBONE}
- name: cart-0
  namespace: shop
  serviceAccount: cart
  workloadIps: [10.0.1.5]
  protocol: HBONE
  services: {shop/cart.shop.svc.cluster.local: {80: 8080}}
- name: cart-1
  namespace: shop
  serviceAccount: cart
  workloadIps: [10.0.1.6]
  protocol: HBONE
  status: Unhealthy
  services: {shop/cart.shop.svc.cluster.local: {80: 8080}}
- name: legacy-0
  namespace: shop
  workloadIps: [10.0.2.5]
  services: {shop/legacy.shop.svc.cluster.local: {}}
- name: search-0
  namespace: shop
  serviceAccount: search
  workloadIps: [10.0.5.5]
  protocol: HBONE
  services: {shop/search.shop.svc.cluster.local: {}}
- name: reviews-0
  namespace: shop
  serviceAccount: reviews
  workloadIps: [10.0.3.5]
  protocol: HBONE
  services: {shop/reviews.shop.svc.cluster.local: {9080: 9080}}
- name: ratings-0
  namespace: shop
  serviceAccount: ratings
  workloadIps: [10.0.4.5]
  protocol: HBONE
  services: {shop/ratings.shop.svc.cluster.local: {80: 9080}}
  waypoint: {destination: {namespace: shop, hostname: waypoint.shop.svc.cluster.local}, hboneMtlsPort: 15008}
- name: db-0
  namespace: shop
  serviceAccount: db
  workloadIps: [10.0.6.5]
  protocol: HBONE
  waypoint: {destination: /10.0.9.2, hboneMtlsPort: 0}
- name: orphan-0
  namespace: shop
  workloadIps: [10.0.7.5]
  protocol: HBONE
  waypoint: {destination: {namespace: shop, hostname: gone.shop.svc.cluster.local}, hboneMtlsPort: 15008}
- name: waypoint-0
  namespace: shop
  serviceAccount: waypoint
  workloadIps: [10.0.9.1]
  services: {shop/waypoint.shop.svc.cluster.local: {15008: 15008}}
- name: waypoint-1
  namespace: shop
  serviceAccount: waypoint
  workloadIps: [10.0.9.3]
  status: Unhealthy
  services: {shop/waypoint.shop.svc.cluster.local: {15008: 15008}}
- {name: db-waypoint-0, namespace: shop, serviceAccount: db-waypoint, workloadIps: [10.0.9.2]}
- name: down-waypoint-0
  namespace: shop
  serviceAccount: down-waypoint
  workloadIps: [10.0.9.4]
  status: Unhealthy
  services: {shop/down-waypoint.shop.svc.cluster.local: {15008: 15008}}
services:
- {name: cart, namespace: shop, hostname: cart.shop.svc.cluster.local, vips: [10.96.0.10], ports: [{servicePort: 80}]}
- {name: legacy, namespace: shop, hostname: legacy.shop.svc.cluster.local, vips: [10.96.0.11], ports: {5432: 5432}}
- {name: empty, namespace: shop, hostname: empty.shop.svc.cluster.local, vips: [10.96.0.12], ports: {80: 80}}
- {name: search, namespace: shop, hostname: search.shop.svc.cluster.local, vips: [10.96.0.16], ports: {80: 8081}}
- name: reviews
  namespace: shop
  hostname: reviews.shop.svc.cluster.local
  vips: [10.96.0.13]
  ports: {9080: 9080}
  waypoint: {destination: {namespace: shop, hostname: waypoint.shop.svc.cluster.local}, hboneMtlsPort: 15008}
- {name: ratings, namespace: shop, hostname: ratings.shop.svc.cluster.local, vips: [10.96.0.15], ports: {80: 9080}}
- name: ghost
  namespace: shop
  hostname: ghost.shop.svc.cluster.local
  vips: [10.96.0.14]
  ports: {80: 80}
  waypoint: {destination: {namespace: shop, hostname: gone.shop.svc.cluster.local}, hboneMtlsPort: 15008}
- name: fragile
  namespace: shop
  hostname: fragile.shop.svc.cluster.local
  vips: [10.96.0.17]
  ports: {80: 80}
  waypoint: {destination: {namespace: shop, hostname: down-waypoint.shop.svc.cluster.local}, hboneMtlsPort: 15008}
- {name: waypoint, namespace: shop, hostname: waypoint.shop.svc.cluster.local, vips: [10.96.0.9], ports: {15008: 15008}}
"#;

const WAYPOINT_ERR_GONE: &str = "shop/gone.shop.svc.cluster.local";

fn snapshot() -> Snapshot {
    let model = LocalConfig::from_yaml(CLUSTER)
        .and_then(LocalConfig::into_model)
        .expect("the test cluster is valid config");
    Snapshot::new(model)
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "shop", sa).expect("a valid identity")
}

/// The route as one line: kind, where the bytes go, the identity the peer must prove, and
/// what a tunnel's `:authority` or the metrics name.
fn summary(route: &Route) -> String {
    let svc = |s: &Option<std::sync::Arc<mesh::state::Service>>| {
        s.as_ref().map(|s| s.name.clone()).unwrap_or("-".into())
    };
    match route {
        Route::Hbone {
            workload,
            service,
            target,
        } => format!(
            "hbone to {target} peer {} service {}",
            workload.identity.service_account(),
            svc(service)
        ),
        Route::Waypoint {
            waypoint,
            service,
            authority,
        } => format!(
            "waypoint {} peer {} authority {authority} service {}",
            waypoint.address,
            waypoint.workload.identity.service_account(),
            svc(service)
        ),
        Route::Plain {
            workload,
            service,
            target,
        } => format!(
            "plain to {target} workload {} service {}",
            workload.name,
            svc(service)
        ),
        Route::Passthrough { target } => format!("passthrough to {target}"),
        Route::NoEndpoints { service } => format!("no endpoints in {}", service.name),
        Route::WaypointUnavailable { destination, error } => {
            let why = match error {
                WaypointError::NotFound(w) => format!("{w} not found"),
                WaypointError::NoHealthyPod(w) => format!("{w} has no healthy pod"),
            };
            format!("refused {destination}: waypoint {why}")
        }
    }
}

#[test]
fn routes() {
    let snap = snapshot();
    // (case, caller ip, caller service account, destination, expected route)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "service VIP: a healthy endpoint, port from its own map (named port)",
            "10.0.0.1", "client", "10.96.0.10:80",
            "hbone to 10.0.1.5:8080 peer cart service cart",
        ),
        (
            "service VIP: port from the service when the endpoint has none",
            "10.0.0.1", "client", "10.96.0.16:80",
            "hbone to 10.0.5.5:8081 peer search service search",
        ),
        (
            "service VIP: a port the service does not map is kept",
            "10.0.0.1", "client", "10.96.0.16:9999",
            "hbone to 10.0.5.5:9999 peer search service search",
        ),
        (
            "service VIP whose endpoint is outside the mesh",
            "10.0.0.1", "client", "10.96.0.11:5432",
            "plain to 10.0.2.5:5432 workload legacy-0 service legacy",
        ),
        (
            "service VIP without endpoints",
            "10.0.0.1", "client", "10.96.0.12:80",
            "no endpoints in empty",
        ),
        (
            // Addressed to the pod, named after the service whose target port it is (the
            // metrics' destination_service, as Istio's); no waypoint of that service applies.
            "pod IP in the mesh",
            "10.0.0.1", "client", "10.0.1.5:8080",
            "hbone to 10.0.1.5:8080 peer cart service cart",
        ),
        (
            "unknown address",
            "10.0.0.1", "client", "1.2.3.4:443",
            "passthrough to 1.2.3.4:443",
        ),
        (
            "service VIP with a waypoint: the waypoint's healthy pod, the VIP as authority",
            "10.0.0.1", "client", "10.96.0.13:9080",
            "waypoint 10.0.9.1:15008 peer waypoint authority 10.96.0.13:9080 service reviews",
        ),
        (
            "pod IP with a workload waypoint: the pod's own ip:port as authority",
            "10.0.0.1", "client", "10.0.4.5:9080",
            "waypoint 10.0.9.1:15008 peer waypoint authority 10.0.4.5:9080 service -",
        ),
        (
            "service VIP without a waypoint: its endpoint's workload waypoint is not used (Istio)",
            "10.0.0.1", "client", "10.96.0.15:80",
            "hbone to 10.0.4.5:9080 peer ratings service ratings",
        ),
        (
            "waypoint by address, HBONE port left 0: that address on 15008",
            "10.0.0.1", "client", "10.0.6.5:5432",
            "waypoint 10.0.9.2:15008 peer db-waypoint authority 10.0.6.5:5432 service -",
        ),
        (
            "service waypoint hostname unknown: refused, never bypassed",
            "10.0.0.1", "client", "10.96.0.14:80",
            "refused 10.96.0.14:80: waypoint shop/gone.shop.svc.cluster.local not found",
        ),
        (
            "workload waypoint hostname unknown: refused, never bypassed",
            "10.0.0.1", "client", "10.0.7.5:80",
            "refused 10.0.7.5:80: waypoint shop/gone.shop.svc.cluster.local not found",
        ),
        (
            "waypoint whose pods are all unhealthy: refused",
            "10.0.0.1", "client", "10.96.0.17:80",
            "refused 10.96.0.17:80: waypoint shop/down-waypoint.shop.svc.cluster.local has no healthy pod",
        ),
        (
            "the waypoint calling its service: straight to an endpoint",
            "10.0.9.1", "waypoint", "10.96.0.13:9080",
            "hbone to 10.0.3.5:9080 peer reviews service reviews",
        ),
        (
            "the waypoint calling its pod: straight to the pod",
            "10.0.9.1", "waypoint", "10.0.4.5:9080",
            "hbone to 10.0.4.5:9080 peer ratings service ratings",
        ),
        (
            "an unhealthy pod of the waypoint is still the waypoint",
            "10.0.9.3", "waypoint", "10.0.4.5:9080",
            "hbone to 10.0.4.5:9080 peer ratings service ratings",
        ),
        (
            "the waypoint by address calling its pod: straight to the pod",
            "10.0.9.2", "db-waypoint", "10.0.6.5:5432",
            "hbone to 10.0.6.5:5432 peer db service -",
        ),
        (
            "a waypoint's address with another identity is not the waypoint",
            "10.0.9.1", "client", "10.96.0.13:9080",
            "waypoint 10.0.9.1:15008 peer waypoint authority 10.96.0.13:9080 service reviews",
        ),
        (
            "another waypoint is not this destination's waypoint",
            "10.0.9.2", "db-waypoint", "10.96.0.13:9080",
            "waypoint 10.0.9.1:15008 peer waypoint authority 10.96.0.13:9080 service reviews",
        ),
    ];
    for (case, ip, sa, dst, want) in cases {
        let identity = id(sa);
        let caller = Caller {
            ip: ip.parse().expect("a caller IP"),
            identity: &identity,
        };
        let dst: SocketAddr = dst.parse().expect("a destination");
        // A route with a random pick must not pass by luck: every case has one candidate,
        // and repeating shows the unhealthy ones are never chosen.
        for _ in 0..16 {
            assert_eq!(summary(&route(&snap, caller, dst)), *want, "{case}");
        }
    }
}

#[test]
fn an_unavailable_waypoint_names_itself_and_what_to_check() {
    let snap = snapshot();
    let identity = id("client");
    let caller = Caller {
        ip: "10.0.0.1".parse().expect("an IP"),
        identity: &identity,
    };
    let Route::WaypointUnavailable { error, .. } =
        route(&snap, caller, "10.96.0.14:80".parse().expect("an address"))
    else {
        panic!("a service whose waypoint is unknown must be refused");
    };
    let message = error.to_string();
    assert!(message.contains(WAYPOINT_ERR_GONE), "{message}");
    assert!(message.contains("check"), "{message}");
}
