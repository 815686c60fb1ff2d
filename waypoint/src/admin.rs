//! What the waypoint reports on the shared admin endpoints ([`mesh::admin`]: 15000, 15020,
//! 15021): its L4 and L7 config and certificate on `/config_dump`, Istio's request metrics on
//! `/metrics`.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::Waypoint;

/// The waypoint's admin endpoints.
pub type Admin = mesh::admin::Admin<Report>;

/// What `/config_dump` and `/metrics` read.
pub struct Report {
    pub waypoint: Arc<Waypoint>,
    pub registry: Registry,
    pub certs: mesh::certs::CertStore,
    /// The roots peers are verified against, for the certificates' `rootCerts`.
    pub roots: mesh::certs::TrustRoots,
    /// The xDS client's status, once it is started; never set with config files.
    pub xds: Arc<std::sync::OnceLock<tokio::sync::watch::Receiver<mesh::xds::XdsStatus>>>,
}

impl mesh::admin::AdminSource for Report {
    async fn config_dump(&self) -> serde_json::Value {
        let wp = &self.waypoint;
        let snapshot = wp.state.snapshot();
        let l7 = wp.l7.snapshot();
        let services: Vec<_> = snapshot
            .services()
            .map(|s| {
                serde_json::json!({
                    "key": s.key(),
                    "vips": s.vips.iter().map(|v| v.address.to_string()).collect::<Vec<_>>(),
                    "waypoint": s.waypoint.as_ref().map(|w| format!("{:?}", w.destination)),
                })
            })
            .collect();
        let routes: Vec<_> = l7
            .routes
            .values()
            .map(|t| {
                serde_json::json!({
                    "service": t.name,
                    "routes": t.routes.iter().map(|r| serde_json::json!({
                        "route": r.route_name,
                        "rule": r.rule_index,
                        "port": r.port,
                        "backends": r.backends.iter().map(|b| serde_json::json!({
                            "service": b.service, "port": b.port, "weight": b.weight,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let policies: Vec<_> = l7
            .policies
            .values()
            .map(|p| {
                serde_json::json!({
                    "policy": p.key,
                    "action": format!("{:?}", p.action),
                    "targets": p.targets.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>(),
                    "dryRun": p.dry_run,
                })
            })
            .collect();
        serde_json::json!({
            "gateway": format!("{}/{}", wp.namespace, wp.gateway),
            "identity": wp.identity.to_string(),
            "workloads": snapshot
                .workloads()
                .map(|w| serde_json::json!({
                    "uid": w.uid,
                    "name": w.name,
                    "namespace": w.namespace,
                    "addresses": w.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "healthy": w.healthy,
                    "identity": w.identity.to_string(),
                }))
                .collect::<Vec<_>>(),
            "services": services,
            "routes": routes,
            "policies": policies,
            // The L7 resources themselves (protobuf `amesh.l7.v1.LocalL7Config`, base64), from
            // which `amesh explain` rebuilds this L7 snapshot to decide a request as the
            // waypoint would.
            "l7Config": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                prost::Message::encode_to_vec(&l7.sources.to_local()),
            ),
            "certificates": mesh::admin::certificates(&self.certs, &self.roots),
            // For `amesh status`: the build, the L4 snapshot's version and the xDS client's
            // state (`null` with config files).
            "version": snapshot.version(),
            "proxy": {
                "version": env!("CARGO_PKG_VERSION"),
                "xds": self.xds.get().map(|rx| rx.borrow().clone()),
            },
        })
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}
