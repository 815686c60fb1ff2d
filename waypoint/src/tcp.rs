//! Plain TCP through the waypoint (a port declared TCP, or bytes that are not HTTP): the L7
//! policies are evaluated with what a TCP connection has (the caller's identity and address,
//! the port; rules on HTTP attributes cannot match), then the bytes go to one endpoint.

use std::sync::Arc;

use http::HeaderMap;
use tracing::debug;

use crate::l7::{Decision, RequestAttrs};
use crate::pipeline::{decide, pick_endpoint, ConnCtx, Dest, Target};
use crate::upstream::Version;
use crate::Waypoint;

/// Plain TCP through the waypoint: L4 policy only, then the bytes to one endpoint.
pub async fn serve<S>(wp: Arc<Waypoint>, ctx: Arc<ConnCtx>, mut io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let l7 = wp.l7.snapshot();
    let service = match &ctx.target {
        Target::Service(s) => Some(s.clone()),
        Target::Workload(_) => None,
    };
    let principal = ctx.peer_identity.to_string();
    let empty = HeaderMap::new();
    let attrs = RequestAttrs {
        principal: principal.trim_start_matches("spiffe://"),
        namespace: ctx.peer_identity.namespace(),
        source_ip: ctx.peer_addr.ip(),
        method: "",
        path: "",
        host: "",
        port: ctx.addr.port(),
        headers: &empty,
        auth: None,
    };
    if let Decision::Deny(policy) = decide(wp.gateway_ref(), &l7, service.as_deref(), &attrs) {
        debug!(?policy, "TCP connection denied");
        return;
    }
    let snapshot = wp.state.snapshot();
    let dest = match &ctx.target {
        Target::Service(s) => Dest::Service {
            key: s.key(),
            port: ctx.addr.port(),
        },
        Target::Workload(w) => Dest::Workload(w.clone(), ctx.addr),
    };
    let Ok((endpoint, _)) = pick_endpoint(&wp, &snapshot, &dest, Version::Http1) else {
        debug!("no endpoint for a TCP connection");
        return;
    };
    drop(snapshot);
    match wp.upstream.tunnel(&endpoint).await {
        Ok(mut up) => {
            let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
        }
        Err(e) => debug!(error = %e, "TCP upstream failed"),
    }
}
