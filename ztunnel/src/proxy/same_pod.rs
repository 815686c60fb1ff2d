//! A pod calling itself through the mesh: its own IP, or a service it backs that picked it.
//!
//! The HBONE route would dial the pod's own 15008 from inside the pod, so ztunnel would accept
//! its own connection as new work. Instead the connection is served here, in process: the
//! destination's checks (reserved ports, authorization with the pod's own identity, which
//! needs no handshake to prove) and then a plain connection to the app inside the pod. The
//! bytes never leave the pod's network namespace, so there is nothing for TLS to protect.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

use mesh::authz::{authorize, ConnInfo};
use mesh::hbone::abort_on_close;
use mesh::state::{Service, Workload};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{Pod, Shared};
use crate::metrics::{ConnLabels, Reporter, SecurityPolicy};
use crate::sockets::ports;

/// Carries `tcp` (accepted on the pod's outbound listener from `peer`) to `target` in the
/// same pod.
pub(crate) async fn serve(
    shared: &Shared,
    pod: &Pod,
    tcp: TcpStream,
    peer: SocketAddr,
    workload: Arc<Workload>,
    service: Option<Arc<Service>>,
    target: SocketAddr,
) {
    let start = Instant::now();
    if ports::is_reserved(target.port()) {
        info!(target: "access", direction = "outbound", dst.addr = %target,
            "target port is ztunnel's own; refusing");
        return abort_on_close(&tcp);
    }
    let conn = ConnInfo {
        src_ip: pod.info.ip,
        src_identity: Some(pod.identity.clone()),
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let decision = authorize(&shared.state.snapshot(), &workload, &conn);
    // The identity of both ends is the pod's own: proven by construction, as mTLS would.
    let labels = |reporter| {
        ConnLabels::new(
            reporter,
            Some(&workload),
            Some(&pod.identity),
            Some(&workload),
            service.as_deref(),
            SecurityPolicy::MutualTls,
        )
    };
    if !decision.is_allowed() {
        info!(target: "access", direction = "inbound", src.addr = %peer, src.identity = %pod.identity,
            dst.addr = %target, decision = %decision, "connection denied");
        shared.metrics.denied(labels(Reporter::Destination));
        return abort_on_close(&tcp);
    }
    let source = shared.metrics.open(labels(Reporter::Source));
    let destination = shared.metrics.open(labels(Reporter::Destination));
    match pod.sockets.connect(target, None).await {
        Ok((upstream, _exception)) => {
            let stats = mesh::hbone::relay_tcp(tcp, upstream).await;
            let flag = stats.error.as_ref().map(|_| "UC");
            source.close(stats.sent, stats.received, flag);
            destination.close(stats.sent, stats.received, flag);
            super::outbound::access_log(
                "outbound",
                peer,
                target,
                pod,
                Some(&workload),
                // Both ends are this pod: its own identity, no handshake needed.
                Some(&pod.identity),
                "same-pod",
                &stats,
                start,
            );
        }
        Err(e) => {
            source.close(0, 0, Some("UF"));
            destination.close(0, 0, Some("UF"));
            warn!(%target, error = %e, "connecting to the pod's own app failed");
            abort_on_close(&tcp);
        }
    }
}
