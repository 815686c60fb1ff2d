//! Metrics compatibility with Istio's dashboards (#21): real traffic in a two-node lab (allowed
//! connections to pod IPs and a service VIP, plaintext from outside the mesh, a connection
//! denied by policy, a connection to a closed port, DNS queries answered and forwarded), then
//! every ztunnel's `/metrics` is scraped and held to the PromQL of Istio's ztunnel and workload
//! dashboards (`fixtures/metrics/istio-dashboard-queries.txt`) and of amesh's own dashboard
//! (`deploy/grafana/amesh-ztunnel-dashboard.json`).
//!
//! A query is read with a PromQL parser, not by pattern: each vector selector's metric must be
//! exported, each label the query matches on or groups by must be on its series, and the
//! matchers must select at least one series wherever the traffic above makes one. Prometheus
//! attaches the `pod` and `container` target labels to what it scrapes from a pod; the test
//! attaches them the same way. The `container_*` series are the kubelet's (cAdvisor), not a
//! proxy's: for those the test checks that the DaemonSet's names (`ztunnel-*` pods, container
//! `istio-proxy`) are the ones the queries select. Last, the lab processes' log files are checked
//! for ANSI colour codes (they write to files, not a terminal).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use controller::graph::{parse_exposition, Sample};
use e2e::policies::DENY_CLIENT_B;
use e2e::{addr, wait_for, MeshLab};
use promql_parser::label::Matcher;
use promql_parser::parser::{Expr, LabelModifier};
use promql_parser::util::{walk_expr, ExprVisitor};

/// The services that send port 8080 to the server pods.
const MESH_SERVICES: [&str; 2] = [
    "server.mesh.svc.cluster.local",
    "server-pods.mesh.svc.cluster.local",
];

/// A query and where it came from.
struct Query {
    from: String,
    expr: String,
}

/// One vector selector of a query, with the labels the query groups by.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
    grouping: Vec<String>,
}

/// The queries of the facts file: `@ <source>` then the query on the next line.
fn istio_queries() -> Vec<Query> {
    let path = e2e::fixture("metrics").join("istio-dashboard-queries.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut out = Vec::new();
    let mut from: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match (line.strip_prefix("@ "), from.take()) {
            (Some(source), None) => from = Some(source.to_string()),
            (Some(source), Some(prev)) => panic!("entry {prev:?} has no query before {source:?}"),
            (None, Some(source)) => out.push(Query {
                from: format!("Istio: {source}"),
                expr: line.to_string(),
            }),
            (None, None) => panic!("query without an `@ source` line: {line:?}"),
        }
    }
    assert!(from.is_none(), "the last entry has no query");
    out
}

/// Every `targets[].expr` of amesh's dashboard (panels nested in rows too).
fn amesh_dashboard_queries() -> Vec<Query> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/amesh-ztunnel-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"));
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of panel {} has no expr", panel["title"]));
            out.push(Query {
                from: format!("amesh dashboard: panel {}", panel["title"]),
                expr: expr.to_string(),
            });
        }
    }
    out
}

#[derive(Default)]
struct Collect {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

impl ExprVisitor for Collect {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let vs = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            Expr::Aggregate(agg) => {
                if let Some(LabelModifier::Include(labels)) = &agg.modifier {
                    self.grouping.extend(labels.labels.iter().cloned());
                }
                return Ok(true);
            }
            _ => return Ok(true),
        };
        let metric = vs
            .name
            .clone()
            .or_else(|| {
                vs.matchers
                    .matchers
                    .iter()
                    .find(|m| m.name == "__name__")
                    .map(|m| m.value.clone())
            })
            .ok_or_else(|| format!("a selector without a metric name: {vs}"))?;
        if !vs.matchers.or_matchers.is_empty() {
            return Err(format!("`or` matchers are not read by this test: {vs}"));
        }
        self.selectors.push(Selector {
            metric,
            matchers: vs
                .matchers
                .matchers
                .iter()
                .filter(|m| m.name != "__name__")
                .cloned()
                .collect(),
            grouping: Vec::new(),
        });
        Ok(true)
    }

    fn post_visit(&mut self, _: &Expr) -> Result<bool, String> {
        Ok(true)
    }
}

/// The selectors of `expr`, each with every label the query groups by. Grafana's
/// `$__rate_interval` is not PromQL: it is read as a minute.
fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let text = expr.replace("$__rate_interval", "1m");
    let ast = promql_parser::parser::parse(&text)?;
    let mut collect = Collect::default();
    walk_expr(&mut collect, &ast)?;
    if collect.selectors.is_empty() {
        return Err("no metric selector".into());
    }
    let grouping = collect.grouping;
    Ok(collect
        .selectors
        .into_iter()
        .map(|mut s| {
            s.grouping = grouping.clone();
            s
        })
        .collect())
}

/// Whether a matcher compares with a Grafana variable (`$workload`): the dashboard fills it
/// from the series themselves, so it stands for "the label is there, any value".
fn on_variable(m: &Matcher) -> bool {
    m.value.contains('$')
}

/// The samples `s` selects from `scraped`.
fn selected<'a>(s: &Selector, scraped: &'a [Sample]) -> Vec<&'a Sample> {
    scraped
        .iter()
        .filter(|sample| sample.name == s.metric)
        .filter(|sample| {
            s.matchers.iter().all(|m| match sample.labels.get(&m.name) {
                Some(v) if on_variable(m) => !v.is_empty(),
                Some(v) => m.is_match(v),
                // An absent label matches as the empty string, as in Prometheus.
                None => !on_variable(m) && m.is_match(""),
            })
        })
        .collect()
}

/// Metrics whose selectors may rightly select nothing after this test's traffic, and why.
fn may_be_empty(metric: &str) -> Option<&'static str> {
    let file_source = std::env::var("AMESH_LAB_CONTROL_PLANE").as_deref() == Ok("file");
    match metric {
        "istio_xds_connection_terminations_total" => {
            Some("no xDS stream ends during the test (the family is declared)")
        }
        "istio_dns_upstream_failures_total" => {
            Some("the lab's nameserver answers every forwarded query")
        }
        "istio_xds_message_total" if file_source => {
            Some("with AMESH_LAB_CONTROL_PLANE=file there is no xDS server")
        }
        _ => None,
    }
}

/// The ztunnel pods' samples, each with the `pod` and `container` target labels Prometheus's
/// Kubernetes discovery attaches; and the metric families declared (`# TYPE`).
fn scrape(m: &MeshLab) -> (Vec<Sample>, BTreeSet<String>, Vec<(String, String)>) {
    let mut samples = Vec::new();
    let mut families = BTreeSet::new();
    let mut texts = Vec::new();
    for node in &m.lab.state().nodes {
        let pod = node
            .ztunnel
            .as_ref()
            .unwrap_or_else(|| panic!("{} runs no ztunnel", node.name));
        let pod_name = pod.pod.rsplit('/').next().unwrap_or(&pod.pod).to_string();
        let text = lab::mesh::metrics(node).expect("ztunnel /metrics");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                // Counters are declared without `_total`, histograms without `_bucket`.
                families.insert(name.to_string());
                match kind {
                    "counter" => {
                        families.insert(format!("{name}_total"));
                    }
                    "histogram" => {
                        for suffix in ["_bucket", "_sum", "_count"] {
                            families.insert(format!("{name}{suffix}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let parsed = parse_exposition(&text)
            .unwrap_or_else(|e| panic!("{}'s metrics do not parse: {e}", node.name));
        for mut sample in parsed {
            sample.labels.insert("pod".into(), pod_name.clone());
            sample
                .labels
                .insert("container".into(), "istio-proxy".into());
            samples.push(sample);
        }
        texts.push((node.name.clone(), text));
    }
    (samples, families, texts)
}

fn sum(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == metric)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// The DaemonSet's names the `container_*` selectors depend on: pods `ztunnel-<hash>` (the
/// DaemonSet `ztunnel`) and container `istio-proxy`.
fn daemonset_names() -> (String, Vec<String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/ztunnel.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    for doc in text.split("\n---") {
        let v: serde_yaml::Value =
            serde_yaml::from_str(doc).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        if v["kind"].as_str() == Some("DaemonSet") {
            let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
            let containers = v["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect();
            return (name, containers);
        }
    }
    panic!("{path:?} has no DaemonSet");
}

/// The traffic the dashboards' panels show.
fn make_traffic(m: &MeshLab) {
    // Allowed, over HBONE: to pod IPs (same node and across nodes) and to the service VIP.
    for server in ["server-1", "server-2"] {
        let reply = m.http("client-a", addr(m.ip(server), 8080)).expect(server);
        assert_eq!(reply.pod, server);
    }
    m.http("client-a", addr(m.vip("server"), 80))
        .expect("client-a via the VIP");
    // Plaintext from outside the mesh (PERMISSIVE) and out of the mesh (passthrough).
    m.http("outsider", addr(m.ip("server-2"), 8080))
        .expect("PERMISSIVE admits plaintext");
    assert_eq!(
        m.echo("client-a", addr(m.ip("outsider"), 7070), b"out")
            .expect("passthrough to a pod outside the mesh"),
        b"out"
    );
    // A connection to a port nothing listens on: the destination refuses it.
    let closed = m.echo("client-a", addr(m.ip("server-2"), 7777), b"x");
    assert!(closed.is_err(), "port 7777 answered: {closed:?}");
    // DNS: a service name the proxy answers and a name it forwards to the cluster's DNS.
    e2e::dns::lookup(m, "client-a", "server", hickory_proto::rr::RecordType::A)
        .expect("DNS for a service");
    e2e::dns::lookup(
        m,
        "client-a",
        "nothing-here.example",
        hickory_proto::rr::RecordType::A,
    )
    .expect("DNS for a name outside the cluster");
    // Denied by policy: client-b may no longer reach the servers.
    m.apply_and_wait("deny-b", DENY_CLIENT_B, "DENY to refuse client-b", || {
        m.http("client-b", addr(m.ip("server-1"), 8080)).is_err()
    });
}

#[test]
fn ztunnel_series_answer_istios_dashboards_and_ours() {
    let m = MeshLab::up("l4", 2);
    make_traffic(&m);
    // Closes are counted when both halves of a relay are done: wait until every ztunnel has
    // counted a close for each connection the traffic above opened and ended.
    wait_for(
        "every ended connection to be counted as closed",
        std::time::Duration::from_secs(10),
        || {
            let (samples, _, _) = scrape(&m);
            m.lab.state().nodes.iter().all(|n| {
                let pod = n
                    .ztunnel
                    .as_ref()
                    .map(|z| z.pod.rsplit('/').next().unwrap_or(""));
                let pod = pod.unwrap_or("");
                let opened = sum(
                    &samples,
                    "istio_tcp_connections_opened_total",
                    &[("pod", pod)],
                );
                let closed = sum(
                    &samples,
                    "istio_tcp_connections_closed_total",
                    &[("pod", pod)],
                );
                opened > 0.0 && opened == closed
            })
        },
    );
    let (samples, families, texts) = scrape(&m);
    let dump = || {
        texts
            .iter()
            .map(|(node, t)| format!("--- {node}\n{t}"))
            .collect::<String>()
    };

    // Every query of the facts and every expr of our dashboard.
    let mut queries = istio_queries();
    assert!(queries.len() >= 20, "{} Istio queries read", queries.len());
    let ours = amesh_dashboard_queries();
    assert!(ours.len() >= 15, "{} dashboard queries read", ours.len());
    queries.extend(ours);
    let (ds_name, ds_containers) = daemonset_names();
    let mut problems = Vec::new();
    let mut checked = BTreeMap::<String, usize>::new();
    for q in &queries {
        let selectors = match selectors(&q.expr) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{}: does not parse ({e}): {}", q.from, q.expr));
                continue;
            }
        };
        for s in &selectors {
            if s.metric.starts_with("container_") {
                // The kubelet's series: the selectors must name the DaemonSet's pods and
                // container as the manifests run them.
                for mt in &s.matchers {
                    let ok = match mt.name.as_str() {
                        "pod" => mt.is_match(&format!("{ds_name}-x7k2p")),
                        "container" => ds_containers.iter().any(|c| mt.is_match(c)),
                        _ => true,
                    };
                    if !ok {
                        problems.push(format!(
                            "{}: {} {} does not select the DaemonSet {ds_name:?} (containers {ds_containers:?})",
                            q.from, mt.name, mt.op
                        ));
                    }
                }
                continue;
            }
            *checked.entry(s.metric.clone()).or_default() += 1;
            // prometheus-client (Istio's ztunnel's library too) writes a labelled family
            // only once it has a series: one that may rightly be empty may be absent.
            if !families.contains(&s.metric) {
                if may_be_empty(&s.metric).is_none() {
                    problems.push(format!("{}: no metric {} is exported", q.from, s.metric));
                }
                continue;
            }
            let hits = selected(s, &samples);
            if hits.is_empty() {
                if may_be_empty(&s.metric).is_none() {
                    let labels: Vec<String> = s
                        .matchers
                        .iter()
                        .map(|m| format!("{}{}{:?}", m.name, m.op, m.value))
                        .collect();
                    problems.push(format!(
                        "{}: {}{{{}}} selects no series",
                        q.from,
                        s.metric,
                        labels.join(",")
                    ));
                }
                continue;
            }
            for label in &s.grouping {
                if !hits.iter().any(|h| h.labels.contains_key(label)) {
                    problems.push(format!(
                        "{}: {} has no label {label} to group by",
                        q.from, s.metric
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\nseries:\n{}",
        problems.len(),
        problems.join("\n"),
        dump()
    );
    // The matchers are applied, not just the names: a value no series has selects nothing.
    for wrong in [
        r#"istio_tcp_connections_opened_total{reporter="sidecar"}"#,
        r#"istio_build{component=~"pilot|waypoint"}"#,
        r#"istio_tcp_sent_bytes_total{pod=~"waypoint-.*"}"#,
    ] {
        let s = &selectors(wrong).unwrap()[0];
        assert!(selected(s, &samples).is_empty(), "{wrong} selected series");
    }
    // The families Istio's ztunnel dashboard needs were all read and checked.
    for metric in [
        "istio_build",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_dns_requests_total",
        "istio_xds_connection_terminations_total",
        "workload_manager_active_proxy_count",
        "workload_manager_pending_proxy_count",
    ] {
        assert!(checked.contains_key(metric), "no query read {metric}");
    }

    // Values that make sense.
    for node in &m.lab.state().nodes {
        let pod = node
            .ztunnel
            .as_ref()
            .unwrap()
            .pod
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let on = |metric: &str, labels: &[(&str, &str)]| {
            let mut l = vec![("pod", pod.as_str())];
            l.extend_from_slice(labels);
            sum(&samples, metric, &l)
        };
        let opened = on("istio_tcp_connections_opened_total", &[]);
        let closed = on("istio_tcp_connections_closed_total", &[]);
        assert!(
            opened >= closed,
            "{}: opened {opened} < closed {closed}",
            node.name
        );
        // One build series: component ztunnel, a tag.
        let builds: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "istio_build" && s.labels["pod"] == pod)
            .collect();
        assert_eq!(builds.len(), 1, "{}: {builds:?}", node.name);
        assert_eq!(
            builds[0].labels.get("component").map(String::as_str),
            Some("ztunnel")
        );
        assert!(
            builds[0].labels.get("tag").is_some_and(|t| !t.is_empty()),
            "{:?}",
            builds[0]
        );
        assert_eq!(builds[0].value, 1.0);
        // Each node runs two meshed pods (a client and a server), all set up.
        let active = on("workload_manager_active_proxy_count", &[]);
        assert!(active >= 2.0, "{}: {active} active proxies", node.name);
        assert_eq!(on("workload_manager_pending_proxy_count", &[]), 0.0);
    }
    // The denial: counted as failed with Istio's flag, on the destination's ztunnel.
    let denied = sum(
        &samples,
        "istio_tcp_connections_failed_total",
        &[("response_flags", "DENY"), ("source_workload", "client-b")],
    );
    assert!(denied > 0.0, "no DENY failure for client-b:\n{}", dump());
    // The closed port: failed with `CONNECT` (Istio's ztunnel's flag for an upstream that could
    // not be reached).
    let refused = sum(
        &samples,
        "istio_tcp_connections_failed_total",
        &[
            ("response_flags", "CONNECT"),
            ("source_workload", "client-a"),
            ("destination_workload", "server-2"),
        ],
    );
    assert!(
        refused > 0.0,
        "no CONNECT failure to the closed port:\n{}",
        dump()
    );
    // Pod-IP traffic names a service whose target port it reached (both `server` and the
    // headless `server-pods` send 8080 to the server pods; Istio's ztunnel takes one of the
    // workload's services whose port matches), on both reporters.
    for reporter in ["source", "destination"] {
        let named: BTreeSet<&str> = samples
            .iter()
            .filter(|s| {
                s.name == "istio_tcp_connections_opened_total"
                    && [
                        ("reporter", reporter),
                        ("source_workload", "client-a"),
                        ("destination_workload", "server-1"),
                    ]
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .filter_map(|s| s.labels.get("destination_service").map(String::as_str))
            .collect();
        assert!(
            !named.is_empty() && named.iter().all(|n| MESH_SERVICES.contains(n)),
            "{reporter}: pod-IP traffic to server-1 named {named:?}, not one of {MESH_SERVICES:?}:\n{}",
            dump()
        );
    }
    // mTLS between meshed pods; plaintext from the outsider is not.
    assert!(
        sum(
            &samples,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_workload", "client-a"),
                ("connection_security_policy", "mutual_tls")
            ]
        ) > 0.0
    );
    let plaintext: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "istio_tcp_connections_opened_total"
                && s.labels.get("reporter").map(String::as_str) == Some("destination")
                && s.labels.get("destination_workload").map(String::as_str) == Some("server-2")
                && s.labels
                    .get("connection_security_policy")
                    .map(String::as_str)
                    != Some("mutual_tls")
        })
        .collect();
    assert!(
        !plaintext.is_empty(),
        "no plaintext connection reported:\n{}",
        dump()
    );
    for s in &plaintext {
        assert_eq!(
            s.labels
                .get("connection_security_policy")
                .map(String::as_str),
            Some("unknown"),
            "{s:?}"
        );
    }
    // DNS: the query client-a's ztunnel answered and the one it forwarded.
    let node1 = m.node("node1").ztunnel.unwrap().pod;
    let node1 = node1.rsplit('/').next().unwrap();
    let answered = sum(
        &samples,
        "istio_dns_requests_total",
        &[("pod", node1), ("request_query_type", "a")],
    );
    assert!(
        answered >= 2.0,
        "{answered} DNS requests on node1:\n{}",
        dump()
    );
    let forwarded = sum(
        &samples,
        "istio_dns_upstream_requests_total",
        &[("pod", node1)],
    );
    assert!(
        forwarded >= 1.0,
        "{forwarded} forwarded DNS requests on node1:\n{}",
        dump()
    );

    // The lab's processes (ztunnels, the controller, the apps) write into files, not a
    // terminal: their lines carry no ANSI colour codes (#21, logs a person can read).
    let logs = m.lab.run_dir().join("logs");
    let mut read = 0;
    for entry in std::fs::read_dir(&logs).unwrap_or_else(|e| panic!("{logs:?}: {e}")) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        read += 1;
        assert!(
            !bytes.contains(&0x1b),
            "ESC bytes (colour codes) in {path:?}"
        );
    }
    assert!(read >= 2, "{read} log files in {logs:?}");
}
