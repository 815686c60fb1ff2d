//! Inbound plaintext (15006 in the pod): traffic that reached the pod without HBONE. There is
//! no peer identity, so only policies that accept identity-less callers let it through — under
//! STRICT PeerAuthentication the translated DENY policy refuses it.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

use mesh::authz::{authorize, ConnInfo};
use mesh::hbone::abort_on_close;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::{Pod, Shared};
use crate::destination::original_dst;
use crate::metrics::{ConnLabels, Reporter, SecurityPolicy};
use crate::sockets::ports;

/// Accepts plaintext inbound connections of `pod` until drained.
pub async fn serve(
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    listener: TcpListener,
    drain: mesh::hbone::DrainWatch,
) {
    super::accept_loop(listener, drain, "inbound", pod.clone(), move |tcp, peer| {
        handle(shared.clone(), pod.clone(), tcp, peer)
    })
    .await
}

async fn handle(shared: Arc<Shared>, pod: Arc<Pod>, tcp: TcpStream, peer: SocketAddr) {
    let start = Instant::now();
    // A client without an identity gets a bounded share of connections, and none once
    // ztunnel nears its descriptor limit (the rest is for established tunnels).
    let admitted = {
        use std::os::fd::AsRawFd;
        shared.limits.plaintext.admit(tcp.as_raw_fd(), peer.ip())
    };
    let _permit = match admitted {
        Ok(permit) => permit,
        Err(refused) => {
            let (n, log) = shared.limits.plaintext_refused.count();
            if log {
                warn!(
                    refused_so_far = n,
                    "closing a plaintext connection at once: {refused}"
                );
            }
            abort_on_close(&tcp);
            return;
        }
    };
    let target = match original_dst(&tcp, pod.destination) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot read the original destination; closing");
            return;
        }
    };
    if ports::is_reserved(target.port()) {
        // Connecting there would bring this very connection back to this listener.
        info!(target: "access", direction = "inbound", protocol = "plaintext", src.addr = %peer,
            dst.addr = %target, "target port is ztunnel's own; refusing");
        abort_on_close(&tcp);
        return;
    }
    let snapshot = shared.state.snapshot();
    let Some(dst_workload) = snapshot.workload_by_ip(pod.info.ip).cloned() else {
        warn!("pod is not in ztunnel's configuration yet; refusing plaintext connection");
        return;
    };
    let conn = ConnInfo {
        src_ip: peer.ip(),
        src_identity: None,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let source_workload = snapshot.workload_by_ip(peer.ip()).cloned();
    let labels = ConnLabels::new(
        Reporter::Destination,
        source_workload.as_deref(),
        None,
        Some(&dst_workload),
        None,
        SecurityPolicy::None,
    );
    let decision = authorize(&snapshot, &dst_workload, &conn);
    if !decision.is_allowed() {
        info!(target: "access", direction = "inbound", protocol = "plaintext", src.addr = %peer,
            dst.addr = %target, decision = %decision, "connection denied");
        shared.metrics.denied(labels);
        // Reset rather than close, so the client sees a refusal rather than an empty answer.
        abort_on_close(&tcp);
        return;
    }
    // A long connection must not keep this moment's whole config alive.
    drop(snapshot);
    let open = shared.metrics.open(labels);
    match pod
        .sockets
        .connect(target, pod.upstream_source(peer.ip()))
        .await
    {
        Ok((upstream, _exception)) => {
            let stats = mesh::hbone::relay_tcp(tcp, upstream).await;
            open.close(
                stats.sent,
                stats.received,
                stats.error.as_ref().map(|_| "UC"),
            );
            super::outbound::access_log(
                "inbound",
                peer,
                target,
                &pod,
                source_workload.as_deref(),
                None,
                "plaintext",
                &stats,
                start,
            );
        }
        Err(e) => {
            open.close(0, 0, Some("UF"));
            warn!(%target, error = %e, "connecting to the app failed");
        }
    }
}
