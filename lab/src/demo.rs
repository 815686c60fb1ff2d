//! `amesh-lab demo`: bring a lab up with the mesh, send traffic from every pod to every
//! service, and print what happened — from the callers' side (who answered, which client
//! address the app saw) and from the ztunnels' side (identities, mTLS or plaintext, policy
//! refusals, bytes), read from their Prometheus metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::cluster::{Lab, LabError, LabOptions};
use crate::mesh::{self, MeshOptions};

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{k="v",...} value` lines; other lines are skipped.
fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, rest) = head.split_once('{')?;
            let mut labels = BTreeMap::new();
            for pair in rest.trim_end_matches('}').split("\",") {
                let (k, v) = pair.split_once("=\"")?;
                labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

/// Totals for one (source, destination, security) edge, as the destination reported it.
#[derive(Default)]
struct Edge {
    opened: f64,
    denied: f64,
    received: f64,
    sent: f64,
}

pub fn run(dir: &Path, nodes: usize) -> Result<String, LabError> {
    let binary = crate::cluster::find_binary()?;
    let options = LabOptions {
        mesh: Some(MeshOptions::beside(&binary)),
        binary: Some(binary),
        startup_timeout: Duration::from_secs(20),
        ..LabOptions::default()
    };
    let lab = Lab::up(dir, nodes, options)?;
    let state = lab.state().clone();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "amesh demo: lab {} with {} nodes, {} pods, {} services, one ztunnel per node, {} waypoint(s)\n",
        state.id,
        state.nodes.len(),
        state.pods.len(),
        state.services.len(),
        state.waypoints.len()
    );
    // 1. Traffic. Pods in the mesh call every service's first port through its VIP, twice.
    // Pods outside it have no capture and the lab has no kube-proxy, so they call the
    // service's endpoints directly, as kube-proxy's DNAT would make them do.
    let model = mesh::state_model(&state)?;
    let in_mesh = |ip: std::net::IpAddr| {
        model.workloads.iter().any(|w| {
            w.addresses.contains(&ip) && w.protocol == ::mesh::state::TunnelProtocol::Hbone
        })
    };
    let _ = writeln!(
        out,
        "Calls (HTTP GET; mesh pods use the service VIP, others call its pods):"
    );
    let _ = writeln!(out, "  {:<42} {:<22} RESULT", "FROM", "TO");
    // The cluster's own pods (ztunnel, kube-system, waypoints) and Services (the API
    // server's, the waypoints') are not the app's: they stay out of the table.
    let system = |namespace: &str| matches!(namespace, "kube-system" | "istio-system");
    let waypoint = |namespace: &str, name: &str| {
        (state.waypoints.iter()).any(|w| w.namespace == namespace && w.gateway == name)
    };
    let waypoint_pod = |pod: &&crate::state::PodInfo| {
        let gateway = pod.labels.get(crate::cluster::waypoint::GATEWAY_NAME_LABEL);
        gateway.is_some_and(|g| waypoint(&pod.namespace, g))
    };
    let app_pods = (state.pods.iter()).filter(|p| !system(&p.namespace) && !waypoint_pod(p));
    for pod in app_pods {
        let meshed = in_mesh(pod.ip.into());
        let kubernetes =
            |s: &&crate::state::ServiceInfo| s.namespace == "default" && s.name == "kubernetes";
        let app_services =
            (state.services.iter()).filter(|s| !kubernetes(s) && !waypoint(&s.namespace, &s.name));
        for svc in app_services {
            let (Some(vip), Some(port)) = (svc.vip, svc.ports.first()) else {
                continue;
            };
            let targets: Vec<SocketAddr> = if meshed {
                vec![SocketAddr::new(vip.into(), port.port); 2]
            } else {
                let key = format!(
                    "{}/{}.{}.svc.cluster.local",
                    svc.namespace, svc.name, svc.namespace
                );
                model
                    .workloads
                    .iter()
                    .filter_map(|w| {
                        let target = w.services.get(&key)?.get(&port.port).copied()?;
                        Some(SocketAddr::new(*w.addresses.first()?, target))
                    })
                    .collect()
            };
            let mut results: Vec<String> = targets
                .iter()
                .map(|to| match mesh::http_from(&lab, &pod.key(), *to, "/demo") {
                    Ok(r) => format!("200 from {} (it saw {})", r.pod, r.source.ip()),
                    Err(e) => format!("refused ({})", short(&e)),
                })
                .collect();
            results.dedup();
            let _ = writeln!(
                out,
                "  {:<42} {:<22} {}",
                pod.key(),
                format!("{}:{}", svc.name, port.port),
                results.join("; ")
            );
        }
    }

    // 2. What the ztunnels saw.
    let mut edges: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
    let mut passthrough: BTreeMap<(String, String), f64> = BTreeMap::new();
    for node in &state.nodes {
        let text = mesh::metrics(node)?;
        for s in parse_metrics(&text) {
            let l = &s.labels;
            let get = |k: &str| l.get(k).cloned().unwrap_or_default();
            if get("reporter") == "source" {
                if get("destination_workload") == "unknown"
                    && s.name == "istio_tcp_connections_opened_total"
                {
                    *passthrough
                        .entry((
                            format!(
                                "{}/{}",
                                get("source_workload_namespace"),
                                get("source_workload")
                            ),
                            "outside the mesh".into(),
                        ))
                        .or_default() += s.value;
                }
                continue;
            }
            let source = if get("source_principal") == "unknown" {
                format!(
                    "{}/{} (no identity)",
                    get("source_workload_namespace"),
                    get("source_workload")
                )
            } else {
                get("source_principal")
                    .trim_start_matches("spiffe://")
                    .to_string()
            };
            let dest = format!(
                "{}/{}",
                get("destination_workload_namespace"),
                get("destination_workload")
            );
            let edge = edges
                .entry((source, dest, get("connection_security_policy")))
                .or_default();
            match s.name.as_str() {
                "istio_tcp_connections_opened_total" => edge.opened += s.value,
                "istio_tcp_connections_closed_total" if get("response_flags") == "DENY" => {
                    edge.denied += s.value
                }
                "istio_tcp_received_bytes_total" => edge.received += s.value,
                "istio_tcp_sent_bytes_total" => edge.sent += s.value,
                _ => {}
            }
        }
    }
    let _ = writeln!(
        out,
        "\nWhat the destination ztunnels reported (istio_tcp_* metrics):"
    );
    let _ = writeln!(
        out,
        "  {:<48} {:<34} {:<11} {:>5} {:>6} {:>9} {:>9}",
        "SOURCE (identity)",
        "DESTINATION WORKLOAD",
        "SECURITY",
        "CONNS",
        "DENIED",
        "BYTES IN",
        "BYTES OUT"
    );
    for ((src, dst, sec), e) in &edges {
        let _ = writeln!(
            out,
            "  {:<48} {:<34} {:<11} {:>5} {:>6} {:>9} {:>9}",
            src,
            dst,
            sec,
            e.opened - e.denied,
            e.denied,
            e.received,
            e.sent
        );
    }
    for ((src, dst), n) in &passthrough {
        let _ = writeln!(out, "  {src:<48} {dst:<34} passthrough {n:>5}");
    }
    let _ = writeln!(
        out,
        "\nmutual_tls = carried in HBONE (mTLS 1.3 + HTTP/2 CONNECT) with both SPIFFE identities verified;\n\
         none = plaintext from outside the mesh; DENIED = refused by policy (AuthorizationPolicy or STRICT PeerAuthentication)."
    );
    // 3. The waypoints: L7 routing, L7 policy and their request metrics.
    crate::demo_waypoint::report(&state, &mut out)?;
    // 4. One request's whole call graph through the mesh.
    crate::demo_callgraph::report(&state, &mut out)?;
    lab.down()?;
    Ok(out)
}

/// (name, labels, value) of one sample.
pub(crate) type MetricSample = (String, BTreeMap<String, String>, f64);

/// Each sample, for the waypoint section.
pub(crate) fn parse_metrics_pub(text: &str) -> Vec<MetricSample> {
    parse_metrics(text)
        .into_iter()
        .map(|s| (s.name, s.labels, s.value))
        .collect()
}

fn short(e: &str) -> String {
    let e = e.rsplit(": ").next().unwrap_or(e);
    e.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::parse_metrics;

    #[test]
    fn parses_prometheus_text() {
        let s = parse_metrics(
            "# HELP x\nistio_tcp_connections_opened_total{reporter=\"destination\",source_principal=\"spiffe://td/ns/a/sa/b\"} 3\n",
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "istio_tcp_connections_opened_total");
        assert_eq!(s[0].labels["source_principal"], "spiffe://td/ns/a/sa/b");
        assert_eq!(s[0].value, 3.0);
    }
}
