//! The waypoint part of `amesh-lab demo`: for each waypoint, a caller in its namespace sends
//! requests to a service bound to it (the canary split, a header-matched route, a request the
//! L7 policy denies), then the waypoint's own metrics are read back: per-route counts and
//! Istio's `istio_requests_total` by caller identity and response code.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::cluster::LabError;
use crate::state::{LabState, WaypointInfo};

/// Requests per scenario: enough for the split to show.
const REQUESTS: usize = 200;
/// The waypoint's Prometheus port.
const METRICS_PORT: u16 = 15020;

/// Appends the waypoint section to `out`.
pub fn report(state: &LabState, out: &mut String) -> Result<(), LabError> {
    for w in &state.waypoints {
        section(state, w, out)?;
    }
    Ok(())
}

fn section(state: &LabState, w: &WaypointInfo, out: &mut String) -> Result<(), LabError> {
    let _ = writeln!(
        out,
        "\nWaypoint {}/{} (L7: HTTPRoute, L7 AuthorizationPolicy, request metrics):",
        w.namespace, w.gateway
    );
    // A caller: the first app pod of the namespace that is not the waypoint; the service: the
    // one with an HTTPRoute if the example has one (reviews in bookinfo), else any.
    let app = |p: &&crate::state::PodInfo| {
        p.namespace == w.namespace
            && !p
                .labels
                .contains_key(crate::cluster::waypoint::GATEWAY_NAME_LABEL)
    };
    let Some(caller) = state
        .pods
        .iter()
        .filter(app)
        .find(|p| p.labels.get("app").map(String::as_str) == Some("productpage"))
        .or_else(|| state.pods.iter().find(app))
    else {
        return Ok(());
    };
    let Some(service) = state
        .services
        .iter()
        .filter(|s| s.namespace == w.namespace && s.name != w.gateway)
        .find(|s| s.name == "reviews")
        .or_else(|| {
            state
                .services
                .iter()
                .find(|s| s.namespace == w.namespace && s.name != w.gateway)
        })
    else {
        return Ok(());
    };
    let (Some(vip), Some(port)) = (service.vip, service.ports.first()) else {
        return Ok(());
    };
    let target = SocketAddr::new(vip.into(), port.port);
    type Scenario<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
    let scenarios: [Scenario; 3] = [
        ("GET", "plain GET (canary split)", None),
        (
            "GET",
            "GET with end-user: jason",
            Some(("end-user", "jason")),
        ),
        ("POST", "POST (L7 policy allows GET only)", None),
    ];
    let _ = writeln!(
        out,
        "  {} -> {}:{} ({REQUESTS} requests each)",
        caller.key(),
        service.name,
        port.port
    );
    for (method, what, header) in scenarios {
        let netns = caller.netns.clone();
        let replies = crate::netns::run_in(&netns, move || {
            send(target, "/demo", method, header.as_slice(), REQUESTS)
        })?;
        let mut tally: BTreeMap<String, usize> = BTreeMap::new();
        match replies {
            Ok(replies) => {
                for (status, body) in replies {
                    let who = match serde_json::from_str::<crate::echo::EchoReply>(&body) {
                        Ok(r) => format!("{status} from {}", r.pod),
                        Err(_) => format!("{status} {}", body.trim()),
                    };
                    *tally.entry(who).or_default() += 1;
                }
            }
            Err(e) => {
                tally.insert(format!("failed: {e}"), 1);
            }
        }
        let summary: Vec<String> = tally.iter().map(|(k, n)| format!("{n} × {k}")).collect();
        let _ = writeln!(out, "  {what:<36} {}", summary.join(", "));
    }

    // What the waypoint reported.
    let pod = crate::waypoints::pod(state, &w.namespace, &w.gateway)?;
    // Prometheus is on 15020 (15021 is the readiness probe's port).
    let addr = SocketAddr::new(pod.ip.into(), METRICS_PORT);
    let text = crate::netns::run_in(&pod.netns, move || crate::mesh::http_get(addr, "/metrics"))?
        .map(|(_, body)| body)
        .unwrap_or_default();
    let _ = writeln!(out, "  The waypoint's metrics:");
    let _ = writeln!(
        out,
        "    {:<28} {:<6} {:>8}   (amesh_waypoint_route_requests_total)",
        "ROUTE / RULE", "CODE", "REQUESTS"
    );
    // Summed over the labels not shown, sorted.
    let mut routes: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (name, labels, value) in super::demo::parse_metrics_pub(&text) {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        match name.as_str() {
            "amesh_waypoint_route_requests_total" => {
                let route = format!("{} #{}", get("route"), get("rule"));
                *routes.entry((route, get("response_code"))).or_default() += value;
            }
            "istio_requests_total" => {
                let edge = format!(
                    "{} -> {}",
                    get("source_principal").trim_start_matches("spiffe://"),
                    get("destination_service_name")
                );
                *edges.entry((edge, get("response_code"))).or_default() += value;
            }
            _ => {}
        }
    }
    for ((route, code), n) in &routes {
        let _ = writeln!(out, "    {route:<28} {code:<6} {n:>8}");
    }
    let _ = writeln!(
        out,
        "    {:<56} {:<6} {:>8}   (istio_requests_total, reporter=waypoint)",
        "SOURCE PRINCIPAL -> DESTINATION SERVICE", "CODE", "REQUESTS"
    );
    for ((edge, code), n) in &edges {
        let _ = writeln!(out, "    {edge:<56} {code:<6} {n:>8}");
    }
    Ok(())
}

/// `n` requests for `path` on one kept-alive connection; (status, body) each.
pub(crate) fn send(
    target: SocketAddr,
    path: &str,
    method: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> std::io::Result<Vec<(u16, String)>> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let extra: String = (headers.iter())
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        write!(
            writer,
            "{method} {path} HTTP/1.1\r\nhost: {target}\r\n{extra}content-length: 0\r\n\r\n"
        )?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        out.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(out)
}
