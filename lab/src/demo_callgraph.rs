//! The call-graph part of `amesh-lab demo`: one request to the example's entry service
//! (`productpage`, whose pod calls others through `ECHO_CALLS`) and the tree of calls it made
//! through the mesh, read from the nested echo replies: each hop's status, the pod (and node)
//! that answered, and how long it took. Examples without a `productpage` Service skip it.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::cluster::LabError;
use crate::echo::{EchoReply, Hop};
use crate::state::{LabState, PodInfo};

/// The service whose pods start the call graph.
const ENTRY: &str = "productpage";
/// The path asked of it (bookinfo's page).
const PATH: &str = "/productpage";
/// The trace the demo's requests belong to (W3C's example id): the caller starts it, as an
/// ingress gateway would, so that every hop joins one trace.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// Appends the call-graph section to `out`.
pub fn report(state: &LabState, out: &mut String) -> Result<(), LabError> {
    let Some(entry) =
        (state.pods.iter()).find(|p| p.labels.get("app").map(String::as_str) == Some(ENTRY))
    else {
        return Ok(());
    };
    let Some(port) = entry.ports.first().copied() else {
        return Ok(());
    };
    // The caller: a pod outside the mesh, as a browser behind an ingress would be; it calls
    // the pod itself (the lab has no kube-proxy). Without one, a meshed pod of another app
    // calls the Service's VIP.
    let model = crate::mesh::state_model(state)?;
    let meshed = |p: &PodInfo| {
        let ip = std::net::IpAddr::from(p.ip);
        (model.workloads.iter()).any(|w| {
            w.addresses.contains(&ip) && w.protocol == ::mesh::state::TunnelProtocol::Hbone
        })
    };
    let app = |p: &&PodInfo| {
        !matches!(p.namespace.as_str(), "kube-system" | "istio-system")
            && !p
                .labels
                .contains_key(crate::cluster::waypoint::GATEWAY_NAME_LABEL)
            && p.labels.get("app").map(String::as_str) != Some(ENTRY)
    };
    let outside = state.pods.iter().filter(app).find(|p| !meshed(p));
    let vip = (state.services.iter())
        .find(|s| s.namespace == entry.namespace && s.name == ENTRY)
        .and_then(|s| Some((s.vip?, s.ports.first()?.port)));
    let (caller, target, how) = match (outside, vip) {
        (Some(c), _) => (
            c,
            SocketAddr::new(entry.ip.into(), port),
            format!("{} (outside the mesh) -> pod {}", c.key(), entry.key()),
        ),
        (None, Some((vip, port))) => {
            let Some(c) = state.pods.iter().filter(app).find(|p| meshed(p)) else {
                return Ok(());
            };
            (
                c,
                SocketAddr::new(vip.into(), port),
                format!("{} -> service {ENTRY}", c.key()),
            )
        }
        (None, None) => return Ok(()),
    };
    let _ = writeln!(
        out,
        "\nCall graph (each pod's ECHO_CALLS; the apps nest their next hops' replies, so one answer shows every hop):"
    );
    for (n, user) in [None, Some("jason")].into_iter().enumerate() {
        let request_id = format!("amesh-demo-{}", n + 1);
        let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
        let netns = caller.netns.clone();
        let answer = crate::netns::run_in(&netns, {
            let request_id = request_id.clone();
            move || {
                let mut headers = vec![
                    ("x-request-id", request_id.as_str()),
                    ("traceparent", traceparent.as_str()),
                ];
                headers.extend(user.map(|u| ("end-user", u)));
                crate::demo_waypoint::send(target, PATH, "GET", &headers, 1)
            }
        })?;
        let _ = writeln!(
            out,
            "  {how}: GET {PATH}{}",
            user.map(|u| format!(" (end-user: {u})"))
                .unwrap_or_default()
        );
        match answer.map(|mut a| a.remove(0)) {
            Ok((status, body)) => match serde_json::from_str::<EchoReply>(&body) {
                Ok(reply) => {
                    tree(status, &reply, out);
                    let _ = writeln!(out, "    {}", joined(&reply, &request_id));
                }
                Err(_) => {
                    let _ = writeln!(out, "    {status} {}", body.trim());
                }
            },
            Err(e) => {
                let _ = writeln!(out, "    failed: {e}");
            }
        }
    }
    let _ = writeln!(
        out,
        "  Every call between pods went through the namespace's waypoint (its HTTPRoute picks reviews' version by end-user, which the apps pass on)."
    );
    Ok(())
}

/// Whether every pod of the graph saw the caller's request id and trace (the apps propagate
/// them; the waypoints keep the id and the trace, with a span of their own).
fn joined(reply: &EchoReply, request_id: &str) -> String {
    let mut pods = 0;
    let mut apart: Vec<String> = Vec::new();
    let mut visit = vec![reply];
    while let Some(r) = visit.pop() {
        pods += 1;
        let id = r.headers.get("x-request-id").map(String::as_str);
        let trace = (r.headers.get("traceparent")).and_then(|t| t.split('-').nth(1));
        if id != Some(request_id) || trace != Some(TRACE_ID) {
            apart.push(r.pod.clone());
        }
        visit.extend(r.calls.iter().filter_map(|h| h.reply.as_deref()));
    }
    if apart.is_empty() {
        format!("x-request-id {request_id} and trace {TRACE_ID} at all {pods} pods")
    } else {
        format!(
            "x-request-id {request_id} / trace {TRACE_ID} missing at: {}",
            apart.join(", ")
        )
    }
}

/// The reply as a tree: the answering pod, then each hop indented under it.
pub fn tree(status: u16, reply: &EchoReply, out: &mut String) {
    let _ = writeln!(
        out,
        "    {status} {}/{} ({})",
        reply.namespace, reply.pod, reply.node
    );
    hops(&reply.calls, "    ", out);
}

fn hops(calls: &[Hop], indent: &str, out: &mut String) {
    for (i, hop) in calls.iter().enumerate() {
        let last = i + 1 == calls.len();
        let (branch, below) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let who = match (&hop.reply, &hop.error) {
            (Some(r), _) => format!("{}/{} ({})", r.namespace, r.pod, r.node),
            (None, Some(e)) => e.clone(),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "{indent}{branch}{} {} -> {who}, {} ms",
            hop.status, hop.url, hop.millis
        );
        if let Some(r) = &hop.reply {
            hops(&r.calls, &format!("{indent}{below}"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(pod: &str, calls: Vec<Hop>) -> EchoReply {
        EchoReply {
            pod: pod.into(),
            namespace: "bookinfo".into(),
            version: String::new(),
            node: "node1".into(),
            protocol: "HTTP/1.1".into(),
            method: "GET".into(),
            authority: String::new(),
            path: "/".into(),
            source: "10.0.0.1:1".parse().unwrap(),
            destination: "10.0.0.2:9080".parse().unwrap(),
            headers: Default::default(),
            body_bytes: 0,
            calls,
        }
    }

    fn hop(url: &str, status: u16, reply: Option<EchoReply>, error: Option<&str>) -> Hop {
        Hop {
            url: url.into(),
            status,
            reply: reply.map(Box::new),
            error: error.map(str::to_string),
            millis: 3,
        }
    }

    #[test]
    fn nested_replies_print_as_a_tree() {
        let ratings = reply("ratings-1", vec![]);
        let reviews = reply(
            "reviews-v2-1",
            vec![hop("http://ratings:9080/r", 200, Some(ratings), None)],
        );
        let page = reply(
            "productpage-1",
            vec![
                hop(
                    "http://details:9080/d",
                    403,
                    None,
                    Some("RBAC: access denied"),
                ),
                hop("http://reviews:9080/r", 200, Some(reviews), None),
            ],
        );
        let mut out = String::new();
        tree(200, &page, &mut out);
        assert_eq!(
            out,
            "    200 bookinfo/productpage-1 (node1)\n\
             \x20   ├─ 403 http://details:9080/d -> RBAC: access denied, 3 ms\n\
             \x20   └─ 200 http://reviews:9080/r -> bookinfo/reviews-v2-1 (node1), 3 ms\n\
             \x20      └─ 200 http://ratings:9080/r -> bookinfo/ratings-1 (node1), 3 ms\n"
        );
        // No request id anywhere: every pod is named.
        assert!(joined(&page, "x").contains("missing at"));
        let mut all = page.clone();
        let trace = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
        let mut visit = vec![&mut all];
        while let Some(r) = visit.pop() {
            r.headers.insert("x-request-id".into(), "x".into());
            r.headers.insert("traceparent".into(), trace.clone());
            visit.extend(r.calls.iter_mut().filter_map(|h| h.reply.as_deref_mut()));
        }
        assert_eq!(
            joined(&all, "x"),
            format!("x-request-id x and trace {TRACE_ID} at all 3 pods")
        );
    }
}
