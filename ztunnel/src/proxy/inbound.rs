//! Inbound HBONE (15008 in the pod): the peer proved its identity with mTLS; check the target is
//! this pod (never a service VIP or another pod: ztunnel is no one's waypoint), authorize,
//! connect to the app (from the original client address where the pod's policy route allows
//! it, see [`super::Pod::original_source`]), and carry bytes. A live connection is re-checked
//! whenever policy changes and cut if it is now denied.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

use mesh::authz::{authorize, ConnInfo};
use mesh::hbone::{relay, ConnectHandler, ConnectRequest, PendingTunnel, Refusal};
use tracing::{debug, info};

use super::{Pod, PodInfo, Shared};
use crate::metrics::{ConnLabels, Reporter, SecurityPolicy};
use crate::sockets::ports;

/// Why a CONNECT to `target` is not for the pod `pod`, if it is not.
///
/// ztunnel is nobody's waypoint, so only the pod's own address is a target here. A waypoint
/// sends what it forwards to the pod's own `ip:port` too, and is authorized like any caller,
/// with the identity its certificate proved. A service VIP or another pod's address is what
/// only that destination's waypoint may be asked for: refused, or any caller could reach a
/// service's pods around its waypoint's L7 policy.
pub(crate) fn foreign_target(pod: &PodInfo, target: SocketAddr) -> Option<String> {
    (target.ip() != pod.ip).then(|| {
        format!(
            "target {target} is not this pod ({}/{} at {}); a service VIP or another pod is \
             accepted only by that destination's waypoint",
            pod.namespace, pod.name, pod.ip
        )
    })
}

/// The HBONE handler of one pod.
pub struct Inbound {
    pub shared: Arc<Shared>,
    pub pod: Arc<Pod>,
}

impl ConnectHandler for Inbound {
    async fn handle(&self, req: ConnectRequest, tunnel: PendingTunnel) {
        let start = Instant::now();
        let Some(target) = req.target_addr() else {
            return tunnel.refuse(Refusal::BadRequest, "authority must be ip:port");
        };
        if let Some(why) = foreign_target(&self.pod.info, target) {
            return tunnel.refuse(Refusal::BadRequest, &why);
        }
        if ports::is_reserved(target.port()) {
            let why = format!("target port {} is ztunnel's own; refusing", target.port());
            info!(target: "access", direction = "inbound", src.addr = %req.peer_addr,
                src.identity = %req.peer_identity, dst.addr = %target, "{why}");
            return tunnel.refuse(Refusal::BadRequest, &why);
        }
        // The client is whoever holds the other end of this mTLS connection. A `forwarded:
        // for=` header is the peer's claim, not a proof: trusting it would let any caller
        // pass an `ipBlocks` rule, pick the source of the connection to the app and rewrite
        // the metrics, by writing someone else's address.
        let client = req.peer_addr;
        let conn = ConnInfo {
            src_ip: client.ip(),
            src_identity: Some(req.peer_identity.clone()),
            dst_ip: target.ip(),
            dst_port: target.port(),
        };
        let snapshot = self.shared.state.snapshot();
        let Some(dst_workload) = snapshot.workload_by_ip(target.ip()).cloned() else {
            return tunnel.refuse(
                Refusal::BadRequest,
                "this pod is not in ztunnel's configuration yet",
            );
        };
        let decision = authorize(&snapshot, &dst_workload, &conn);
        let source_workload = snapshot.workload_by_ip(client.ip()).cloned();
        // The service the client says it addressed (for `destination_service*` labels only):
        // believed when this pod really serves it, so a caller cannot charge its traffic to
        // another service.
        let service = req.forwarded_host().and_then(|host| {
            snapshot
                .services_by_host(host)
                .iter()
                .find(|s| dst_workload.services.contains_key(&s.key()))
                .cloned()
        });
        // Else the service whose target port the client reached, as Istio's ztunnel names it.
        let service = service
            .or_else(|| crate::metrics::service_for_port(&snapshot, &dst_workload, target.port()));
        let labels = ConnLabels::new(
            Reporter::Destination,
            source_workload.as_deref(),
            Some(&req.peer_identity),
            Some(&dst_workload),
            service.as_deref(),
            SecurityPolicy::MutualTls,
        );
        if !decision.is_allowed() {
            info!(target: "access", direction = "inbound", src.addr = %client, src.identity = %req.peer_identity,
                dst.addr = %target, decision = %decision, "connection denied");
            self.shared.metrics.denied(labels);
            return tunnel.refuse(Refusal::Denied, &decision.to_string());
        }
        // Neither the request (its headers) nor this moment's config stays with the connection
        // for its whole life.
        drop((req, snapshot, service));
        // Connect from the client's own address so the app sees who called it (where the
        // pod's policy route allows it, see `Pod::original_source`).
        let (upstream, _exception) = match self
            .pod
            .sockets
            .connect(target, self.pod.upstream_source(client.ip()))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                debug!(%target, error = %e, "app refused the connection");
                return tunnel.refuse(
                    Refusal::Unavailable,
                    &format!("connecting to {target}: {e}"),
                );
            }
        };
        let Ok(stream) = tunnel.accept() else { return };
        let open = self.shared.metrics.open(labels);
        let relay = relay(upstream, stream);
        tokio::pin!(relay);
        let mut changes = self.shared.state.subscribe();
        let stats = loop {
            tokio::select! {
                stats = &mut relay => break Some(stats),
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The config store is gone (shutdown): keep serving until drained.
                        break Some((&mut relay).await);
                    }
                    // Re-read the workload too: a new selector policy arrives as a change of
                    // the workload's own policy list.
                    let snapshot = self.shared.state.snapshot();
                    let decision = match snapshot.workload_by_ip(target.ip()) {
                        Some(current) => authorize(&snapshot, current, &conn),
                        None => authorize(&snapshot, &dst_workload, &conn),
                    };
                    if !decision.is_allowed() {
                        info!(target: "access", direction = "inbound", src.addr = %client, dst.addr = %target,
                            decision = %decision, "policy changed: closing live connection");
                        break None;
                    }
                }
            }
        };
        match stats {
            Some(stats) => {
                // relay(app, tunnel): "sent" went from the app toward the client.
                open.close(
                    stats.received,
                    stats.sent,
                    stats.error.as_ref().map(|_| "UC"),
                );
                super::outbound::access_log(
                    "inbound",
                    client,
                    target,
                    &self.pod,
                    source_workload.as_deref(),
                    conn.src_identity.as_ref(),
                    "hbone",
                    &stats,
                    start,
                );
            }
            // Dropping the relay closes the tunnel and the app connection.
            None => open.close(0, 0, Some("DENY")),
        }
    }
}

#[cfg(test)]
mod tests;
