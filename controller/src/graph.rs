//! The service graph from the proxies' Prometheus metrics, shared by `amesh graph` and the
//! controller's live graph page (`--graph-addr`): the text exposition parsed
//! ([`parse_exposition`]), folded into per-edge counters ([`Counters`]: ztunnels'
//! `istio_tcp_*`, waypoints' `istio_requests_total` and duration histogram), two scrapes made
//! into rates ([`Graph::between`]), and the graph rendered as DOT, SVG or JSON.
//!
//! A node is a workload (`namespace/workload`), or a service when the destination workload is
//! unknown (a connection denied or failed before an endpoint was picked). An edge goes from a
//! source workload to a destination node and names the service(s) it went through. Labels are
//! read by name and unknown ones ignored, so new labels on the proxies' side change nothing.
//!
//! ztunnel reports a connection on both sides (`reporter="source"` and `"destination"`) when
//! both ends are meshed, often from two nodes' ztunnels: the counters are kept per reporter
//! across all expositions and an edge takes, per counter, the larger of the two reporters'
//! sums, so a connection seen twice counts once and one seen by one side still counts. A
//! connection that goes through a waypoint shows as two TCP hops (source → waypoint, waypoint
//! → destination) plus the waypoint's request edge (source → destination). No feature of the
//! crate is needed: the CLI uses it without the controller's servers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

/// One sample of the exposition: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A line of the exposition that is not a sample, comment or blank line.
#[derive(Debug, thiserror::Error)]
#[error("metrics line {line}: {what}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub what: &'static str,
    pub text: String,
}

/// Parses Prometheus' text exposition format (and OpenMetrics' `# EOF`): `name{l="v",...} value
/// [timestamp]`. Comments and blank lines are skipped.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what| ParseError {
            line: i + 1,
            what,
            text: raw.chars().take(200).collect(),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(err("no metric name"));
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(body).map_err(err)?;
            labels = parsed;
            rest = after;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| err("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| err("value is not a number"))?,
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// `l="v",l2="v2"}` → the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

/// A node of the graph: `namespace/workload`, or a service's host name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NodeId {
    pub kind: NodeKind,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Workload,
    Service,
    /// Neither the workload nor the service is known (e.g. a plaintext source off the mesh).
    Unknown,
}

impl NodeId {
    fn label(&self) -> &str {
        &self.name
    }
}

/// The counters of one edge, summed over label sets (cumulative, as the proxies keep them).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EdgeCounters {
    /// TCP connections opened / closed (ztunnel).
    pub tcp_opened: f64,
    pub tcp_closed: f64,
    /// Closed with response flag `DENY`: refused by an authorization policy.
    pub tcp_denied: f64,
    /// Closed with another response flag (`UF`, `UH`, `NR`, ...): failed.
    pub tcp_failed: f64,
    /// Bytes from the client / to the client.
    pub bytes_received: f64,
    pub bytes_sent: f64,
    /// Connections by `connection_security_policy`.
    pub mtls: f64,
    pub plaintext: f64,
    /// HTTP requests through a waypoint, those answered 5xx (or no response), those answered
    /// 403 (the waypoint's RBAC denial and the destination's).
    pub requests: f64,
    pub request_errors: f64,
    pub requests_denied: f64,
    /// `istio_request_duration_milliseconds` buckets: upper bound (ms) → cumulative count.
    #[serde(skip)]
    pub duration_buckets: BTreeMap<OrdF64, f64>,
    /// The services the traffic went through.
    pub services: BTreeSet<String>,
}

/// An `f64` usable as a map key (bucket bounds, never NaN here).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OrdF64(pub f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One scrape of all proxies, folded into edges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// ztunnels' TCP counters per edge and reporter (`source`, `destination`), summed over
    /// every ztunnel's exposition: the two ends of one connection are often on two nodes, so
    /// its two reports arrive in two expositions and are only merged in [`Counters::edges`].
    tcp: BTreeMap<(NodeId, NodeId), BTreeMap<String, EdgeCounters>>,
    /// Waypoints' request counters and duration buckets per edge.
    http: BTreeMap<(NodeId, NodeId), EdgeCounters>,
}

fn known(v: Option<&String>) -> Option<&str> {
    v.map(String::as_str)
        .filter(|v| !v.is_empty() && *v != "unknown")
}

fn endpoints(l: &BTreeMap<String, String>) -> (NodeId, NodeId) {
    let workload = |ns: &str, w: &str| -> Option<NodeId> {
        match (known(l.get(ns)), known(l.get(w))) {
            (Some(ns), Some(w)) => Some(NodeId {
                kind: NodeKind::Workload,
                name: format!("{ns}/{w}"),
            }),
            _ => None,
        }
    };
    let unknown = || NodeId {
        kind: NodeKind::Unknown,
        name: "unknown".into(),
    };
    let src = workload("source_workload_namespace", "source_workload").unwrap_or_else(unknown);
    let dst = workload("destination_workload_namespace", "destination_workload")
        .or_else(|| {
            known(l.get("destination_service")).map(|s| NodeId {
                kind: NodeKind::Service,
                name: s.to_string(),
            })
        })
        .unwrap_or_else(unknown);
    (src, dst)
}

impl Counters {
    /// Adds one proxy's exposition. Families other than Istio's TCP and request metrics are
    /// ignored.
    pub fn add_exposition(&mut self, text: &str) -> Result<(), ParseError> {
        for s in parse_exposition(text)? {
            let name = s.name.as_str();
            let is_tcp = name.starts_with("istio_tcp_");
            let is_http = name == "istio_requests_total"
                || name == "istio_request_duration_milliseconds_bucket";
            if !is_tcp && !is_http {
                continue;
            }
            let l = &s.labels;
            let key = endpoints(l);
            let service = known(l.get("destination_service")).map(str::to_string);
            if is_tcp {
                let reporter = l.get("reporter").cloned().unwrap_or_default();
                let e = self
                    .tcp
                    .entry(key)
                    .or_default()
                    .entry(reporter)
                    .or_default();
                e.services.extend(service);
                let flags = l.get("response_flags").map(String::as_str).unwrap_or("-");
                match name {
                    "istio_tcp_connections_opened_total" | "istio_tcp_connections_opened" => {
                        e.tcp_opened += s.value;
                        match l.get("connection_security_policy").map(String::as_str) {
                            Some("mutual_tls") => e.mtls += s.value,
                            _ => e.plaintext += s.value,
                        }
                    }
                    "istio_tcp_connections_closed_total" | "istio_tcp_connections_closed" => {
                        e.tcp_closed += s.value;
                        if flags.split(',').any(|f| f == "DENY") {
                            e.tcp_denied += s.value;
                        } else if !flags.is_empty() && flags != "-" {
                            e.tcp_failed += s.value;
                        }
                    }
                    "istio_tcp_received_bytes_total" | "istio_tcp_received_bytes" => {
                        e.bytes_received += s.value
                    }
                    "istio_tcp_sent_bytes_total" | "istio_tcp_sent_bytes" => {
                        e.bytes_sent += s.value
                    }
                    _ => {}
                }
            } else {
                let e = self.http.entry(key).or_default();
                e.services.extend(service);
                if name == "istio_requests_total" {
                    e.requests += s.value;
                    // The waypoint's side of the request: how the caller reached it.
                    match l.get("connection_security_policy").map(String::as_str) {
                        Some("mutual_tls") => e.mtls += s.value,
                        Some(_) => e.plaintext += s.value,
                        None => {}
                    }
                    let code: u16 = l
                        .get("response_code")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    if code == 0 || code >= 500 {
                        e.request_errors += s.value;
                    } else if code == 403 {
                        e.requests_denied += s.value;
                    }
                } else if let Some(le) = l.get("le") {
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        match le.parse() {
                            Ok(v) => v,
                            Err(_) => continue,
                        }
                    };
                    *e.duration_buckets.entry(OrdF64(le)).or_default() += s.value;
                }
            }
        }
        Ok(())
    }

    /// The edges: the waypoints' request counters, and the ztunnels' TCP counters with both
    /// reporters of a connection merged. Per counter the larger reporter's sum is taken, so a
    /// connection seen by both ends counts once and one seen by one end still counts. A
    /// connection refused by the destination's policy is `DENY` at the destination but a
    /// failed CONNECT (`CONNECT`) at the source: it counts as denied, not also as failed.
    pub fn edges(&self) -> BTreeMap<(NodeId, NodeId), EdgeCounters> {
        let mut out = self.http.clone();
        for (key, by_reporter) in &self.tcp {
            let e = out.entry(key.clone()).or_default();
            let max = |f: fn(&EdgeCounters) -> f64| by_reporter.values().map(f).fold(0.0, f64::max);
            let unsuccessful = max(|r| r.tcp_failed + r.tcp_denied);
            let denied = max(|r| r.tcp_denied);
            e.tcp_opened += max(|r| r.tcp_opened);
            e.tcp_closed += max(|r| r.tcp_closed);
            e.tcp_denied += denied;
            e.tcp_failed += (unsuccessful - denied).max(0.0);
            e.bytes_received += max(|r| r.bytes_received);
            e.bytes_sent += max(|r| r.bytes_sent);
            e.mtls += max(|r| r.mtls);
            e.plaintext += max(|r| r.plaintext);
            for r in by_reporter.values() {
                e.services.extend(r.services.iter().cloned());
            }
        }
        out
    }
}

/// A counter's increase between two scrapes; a smaller later value is a restarted proxy, whose
/// count since its start is the increase.
fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// The graph's edge: totals since the proxies started and rates over the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Edge {
    pub source: NodeId,
    pub destination: NodeId,
    pub services: Vec<String>,
    /// `mtls`, `plaintext`, `mixed` or `unknown` (no connection counted).
    pub security: &'static str,
    /// Since the proxies started.
    pub total: EdgeCounters,
    /// Increases over the window.
    pub window: EdgeCounters,
    /// Per second over the window.
    pub connections_per_second: f64,
    pub requests_per_second: f64,
    /// Errors (failed connections, 5xx) per connection or request in the window; `None` when
    /// nothing happened in it.
    pub error_rate: Option<f64>,
    /// 99th percentile of request duration (ms) in the window, from the waypoints' histogram.
    pub p99_ms: Option<f64>,
    /// Connections and requests allowed / denied by policy, since the proxies started.
    pub allowed: f64,
    pub denied: f64,
}

/// The graph: nodes and edges, from two scrapes `window_seconds` apart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Graph {
    pub window_seconds: f64,
    pub nodes: Vec<NodeId>,
    pub edges: Vec<Edge>,
}

fn diff(before: &EdgeCounters, after: &EdgeCounters) -> EdgeCounters {
    let mut d = EdgeCounters {
        tcp_opened: increase(before.tcp_opened, after.tcp_opened),
        tcp_closed: increase(before.tcp_closed, after.tcp_closed),
        tcp_denied: increase(before.tcp_denied, after.tcp_denied),
        tcp_failed: increase(before.tcp_failed, after.tcp_failed),
        bytes_received: increase(before.bytes_received, after.bytes_received),
        bytes_sent: increase(before.bytes_sent, after.bytes_sent),
        mtls: increase(before.mtls, after.mtls),
        plaintext: increase(before.plaintext, after.plaintext),
        requests: increase(before.requests, after.requests),
        request_errors: increase(before.request_errors, after.request_errors),
        requests_denied: increase(before.requests_denied, after.requests_denied),
        duration_buckets: BTreeMap::new(),
        services: after.services.clone(),
    };
    for (le, n) in &after.duration_buckets {
        let b = before.duration_buckets.get(le).copied().unwrap_or(0.0);
        d.duration_buckets.insert(*le, increase(b, *n));
    }
    d
}

/// The `q` quantile of cumulative histogram buckets, interpolated linearly inside the bucket
/// it falls in (as Prometheus' `histogram_quantile`); `None` with no observation.
pub fn quantile(q: f64, buckets: &BTreeMap<OrdF64, f64>) -> Option<f64> {
    let total = buckets.iter().next_back().map(|(_, n)| *n)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for (le, n) in buckets {
        if *n >= rank {
            if le.0.is_infinite() {
                // Past the last finite bound: that bound is the best answer there is.
                return Some(lower);
            }
            let inside = n - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le.0 - lower) * frac);
        }
        lower = le.0;
        below = *n;
    }
    Some(lower)
}

impl Graph {
    /// The graph of `after`, with rates over the `seconds` since `before` (`None`: no earlier
    /// scrape; the window then starts when the proxies did).
    pub fn between(before: Option<&Counters>, after: &Counters, seconds: f64) -> Graph {
        let empty = EdgeCounters::default();
        let mut nodes = BTreeSet::new();
        let mut edges = Vec::new();
        let before = before.map(Counters::edges);
        for ((src, dst), total) in &after.edges() {
            let earlier = before
                .as_ref()
                .and_then(|b| b.get(&(src.clone(), dst.clone())));
            let window = diff(earlier.unwrap_or(&empty), total);
            nodes.insert(src.clone());
            nodes.insert(dst.clone());
            let per_s = |v: f64| if seconds > 0.0 { v / seconds } else { 0.0 };
            let events = window.tcp_closed + window.requests;
            let errors = window.tcp_failed + window.request_errors;
            let security = match (total.mtls > 0.0, total.plaintext > 0.0) {
                (true, false) => "mtls",
                (false, true) => "plaintext",
                (true, true) => "mixed",
                (false, false) => "unknown",
            };
            let denied = total.tcp_denied + total.requests_denied;
            let allowed = (total.tcp_opened - total.tcp_denied).max(0.0)
                + (total.requests - total.requests_denied).max(0.0);
            edges.push(Edge {
                source: src.clone(),
                destination: dst.clone(),
                services: total.services.iter().cloned().collect(),
                security,
                connections_per_second: per_s(window.tcp_opened),
                requests_per_second: per_s(window.requests),
                error_rate: (events > 0.0).then(|| errors / events),
                p99_ms: quantile(0.99, &window.duration_buckets),
                allowed,
                denied,
                total: total.clone(),
                window,
            });
        }
        Graph {
            window_seconds: seconds,
            nodes: nodes.into_iter().collect(),
            edges,
        }
    }

    /// One line of text per edge (its label in DOT and SVG).
    pub fn edge_label(e: &Edge) -> String {
        let mut s = String::new();
        if e.total.requests > 0.0 {
            let _ = write!(s, "{:.2} req/s", e.requests_per_second);
        } else {
            let _ = write!(s, "{:.2} conn/s", e.connections_per_second);
        }
        if let Some(r) = e.error_rate {
            let _ = write!(s, " err {:.0}%", r * 100.0);
        }
        if let Some(p) = e.p99_ms {
            let _ = write!(s, " p99 {p:.0}ms");
        }
        let _ = write!(s, " {}", e.security);
        if e.denied > 0.0 {
            let _ = write!(s, " denied {}", e.denied);
        }
        s
    }

    /// Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph amesh {\n  rankdir=LR;\n  node [shape=box];\n");
        for n in &self.nodes {
            let shape = match n.kind {
                NodeKind::Workload => "box",
                NodeKind::Service => "ellipse",
                NodeKind::Unknown => "diamond",
            };
            let _ = writeln!(out, "  {} [shape={shape}];", dot_quote(n.label()));
        }
        for e in &self.edges {
            let color = if e.denied > 0.0 {
                "red"
            } else if e.security == "mtls" {
                "darkgreen"
            } else {
                "gray40"
            };
            let style = if e.security == "plaintext" {
                "dashed"
            } else {
                "solid"
            };
            let _ = writeln!(
                out,
                "  {} -> {} [label={}, color={color}, style={style}];",
                dot_quote(e.source.label()),
                dot_quote(e.destination.label()),
                dot_quote(&Self::edge_label(e)),
            );
        }
        out.push_str("}\n");
        out
    }

    /// A standalone SVG: nodes in columns by their distance from the sources (a longest-path
    /// layering, cycles broken by visit order), edges as lines with their labels.
    pub fn to_svg(&self) -> String {
        let layout = Layout::of(self);
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#,
            w = layout.width,
            h = layout.height
        );
        out.push_str(
            r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>"##,
        );
        out.push('\n');
        for (i, e) in self.edges.iter().enumerate() {
            let (x1, y1) = layout.pos[&e.source];
            let (x2, y2) = layout.pos[&e.destination];
            let color = if e.denied > 0.0 {
                "#c62828"
            } else if e.security == "mtls" {
                "#2e7d32"
            } else {
                "#616161"
            };
            let dash = if e.security == "plaintext" {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            };
            let (sx, ex) = (x1 + NODE_W / 2.0, x2 - NODE_W / 2.0);
            // An edge to the next column is nearly straight. One that skips columns bows
            // below the rows, deeper the more it skips, so that it does not run through the
            // nodes in between; self-loops and backward edges bow out too.
            let columns = ((ex - sx) / (NODE_W + COL_GAP)).round();
            let (cx, cy) = if ex > sx && columns <= 1.0 {
                ((sx + ex) / 2.0, (y1 + y2) / 2.0 + (i % 3) as f64 * 6.0)
            } else if ex > sx {
                let depth = (NODE_H + ROW_GAP) * (1.0 + 0.5 * (i % 3) as f64) * columns;
                ((sx + ex) / 2.0, y1.max(y2) + depth)
            } else {
                ((sx + ex) / 2.0, y1.max(y2) + NODE_H * 1.5)
            };
            // The label sits on the curve, at a point that moves along it from edge to edge
            // so that the labels of edges crossing the same gap do not cover each other.
            let t = 0.35 + 0.1 * (i % 4) as f64;
            let on_curve = |a: f64, c: f64, b: f64| {
                (1.0 - t) * (1.0 - t) * a + 2.0 * (1.0 - t) * t * c + t * t * b
            };
            let (lx, ly) = (on_curve(sx, cx, ex), on_curve(y1, cy, y2));
            let _ = writeln!(
                out,
                r#"<g class="edge" data-source="{s}" data-destination="{d}" data-denied="{den}"><path d="M{sx:.0},{y1:.0} Q{cx:.0},{cy:.0} {ex:.0},{y2:.0}" fill="none" stroke="{color}" stroke-width="1.6"{dash} marker-end="url(#arrow)"/><text x="{tx:.0}" y="{ty:.0}" text-anchor="middle" fill="{color}">{label}</text><title>{s} → {d}</title></g>"#,
                s = xml(e.source.label()),
                d = xml(e.destination.label()),
                den = e.denied,
                tx = lx,
                ty = ly - 4.0,
                label = xml(&Self::edge_label(e)),
            );
        }
        for n in &self.nodes {
            let (x, y) = layout.pos[n];
            let (rx, fill) = match n.kind {
                NodeKind::Workload => (4.0, "#e3f2fd"),
                NodeKind::Service => (NODE_H / 2.0, "#fff8e1"),
                NodeKind::Unknown => (0.0, "#eeeeee"),
            };
            let _ = writeln!(
                out,
                r##"<g class="node" data-node="{name}" data-kind="{kind:?}"><rect x="{x0:.0}" y="{y0:.0}" width="{NODE_W}" height="{NODE_H}" rx="{rx}" fill="{fill}" stroke="#37474f"/><text x="{x:.0}" y="{ty:.0}" text-anchor="middle">{name}</text></g>"##,
                name = xml(n.label()),
                kind = n.kind,
                x0 = x - NODE_W / 2.0,
                y0 = y - NODE_H / 2.0,
                ty = y + 4.0,
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

const NODE_W: f64 = 190.0;
const NODE_H: f64 = 30.0;
const COL_GAP: f64 = 170.0;
const ROW_GAP: f64 = 40.0;
const MARGIN: f64 = 20.0;

struct Layout {
    pos: BTreeMap<NodeId, (f64, f64)>,
    width: f64,
    height: f64,
}

impl Layout {
    fn of(g: &Graph) -> Layout {
        // Longest path from a node without incoming edges, over the edges that close no cycle.
        // Cycles are the rule here (a -> waypoint -> b and b -> waypoint -> c); a depth-first
        // walk from the sources marks the edges back to a node still on its path, and those
        // are left out of the layering (they are drawn all the same).
        let forward = forward_edges(g);
        let mut layer: BTreeMap<&NodeId, usize> = g.nodes.iter().map(|n| (n, 0)).collect();
        // On an acyclic set of edges, as many passes as nodes reach the fixed point.
        for _ in 0..=g.nodes.len() {
            let mut changed = false;
            for e in &forward {
                let want = layer[&e.source] + 1;
                if want > layer[&e.destination] {
                    layer.insert(&e.destination, want);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut columns: BTreeMap<usize, Vec<&NodeId>> = BTreeMap::new();
        for (n, l) in &layer {
            columns.entry(*l).or_default().push(n);
        }
        let rows = columns.values().map(Vec::len).max().unwrap_or(1).max(1);
        let cols = columns.len().max(1);
        let mut pos = BTreeMap::new();
        for (c, nodes) in columns.values().enumerate() {
            for (r, n) in nodes.iter().enumerate() {
                let x = MARGIN + NODE_W / 2.0 + c as f64 * (NODE_W + COL_GAP);
                let y = MARGIN + NODE_H / 2.0 + r as f64 * (NODE_H + ROW_GAP);
                pos.insert((*n).clone(), (x, y));
            }
        }
        Layout {
            pos,
            width: 2.0 * MARGIN + cols as f64 * NODE_W + (cols - 1) as f64 * COL_GAP,
            height: 2.0 * MARGIN
                + rows as f64 * NODE_H
                + (rows - 1) as f64 * ROW_GAP
                // Room for the edges that bow below the last row (at most half their
                // control point's depth).
                + NODE_H
                + (NODE_H + ROW_GAP) * 0.75 * (cols - 1) as f64,
        }
    }
}

/// The edges of `g` that close no cycle (nor are self-loops): a depth-first walk, from the
/// nodes without incoming edges first, drops each edge back to a node on the current path.
fn forward_edges(g: &Graph) -> Vec<&Edge> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn walk<'g>(
        n: &'g NodeId,
        out: &BTreeMap<&'g NodeId, Vec<&'g Edge>>,
        mark: &mut BTreeMap<&'g NodeId, Mark>,
        keep: &mut Vec<&'g Edge>,
    ) {
        mark.insert(n, Mark::OnPath);
        for e in out.get(n).into_iter().flatten() {
            match mark.get(&e.destination).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {}
                Mark::Done => keep.push(e),
                Mark::New => {
                    keep.push(e);
                    walk(&e.destination, out, mark, keep);
                }
            }
        }
        mark.insert(n, Mark::Done);
    }
    let mut out: BTreeMap<&NodeId, Vec<&Edge>> = BTreeMap::new();
    let mut has_incoming = BTreeSet::new();
    for e in g.edges.iter().filter(|e| e.source != e.destination) {
        out.entry(&e.source).or_default().push(e);
        has_incoming.insert(&e.destination);
    }
    // Hubs first: walking into the node with the most outgoing edges (a waypoint) before its
    // callers' other destinations puts the hub before the workloads behind it, and drops the
    // edges that lead back into it instead.
    let fan_out: BTreeMap<&NodeId, usize> = out.iter().map(|(n, v)| (*n, v.len())).collect();
    for v in out.values_mut() {
        v.sort_by_key(|e| std::cmp::Reverse(fan_out.get(&e.destination).copied().unwrap_or(0)));
    }
    let mut mark: BTreeMap<&NodeId, Mark> = BTreeMap::new();
    let mut keep = Vec::new();
    let sources = g.nodes.iter().filter(|n| !has_incoming.contains(n));
    let rest = g.nodes.iter().filter(|n| has_incoming.contains(n));
    for n in sources.chain(rest) {
        if mark.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            walk(n, &out, &mut mark, &mut keep);
        }
    }
    keep
}

fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[path = "graph_tests.rs"]
pub(crate) mod tests;
