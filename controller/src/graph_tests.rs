//! Tests of the graph model on real expositions: two scrapes of a bookinfo lab's two ztunnels
//! and its waypoint (tests/fixtures/metrics, captured from their :15020/metrics), with
//! productpage calling details, reviews and ratings through the waypoint, productpage calling a
//! ratings pod directly (refused by ratings' ALLOW policy: DENY at ratings' ztunnel, a failed
//! CONNECT at productpage's), the waypoint answering productpage's call to ratings with 403,
//! and legacy/curl (no mesh identity) refused by details' STRICT PeerAuthentication. Between
//! the scrapes: five more productpage → details requests, a first reviews-v2 → ratings request
//! and one more refused curl connection.

use super::*;

pub(crate) const Z1_A: &str = include_str!("../tests/fixtures/metrics/ztunnel-node1.txt");
pub(crate) const Z2_A: &str = include_str!("../tests/fixtures/metrics/ztunnel-node2.txt");
pub(crate) const W_A: &str = include_str!("../tests/fixtures/metrics/waypoint.txt");
pub(crate) const Z1_B: &str = include_str!("../tests/fixtures/metrics/ztunnel-node1-2.txt");
pub(crate) const Z2_B: &str = include_str!("../tests/fixtures/metrics/ztunnel-node2-2.txt");
pub(crate) const W_B: &str = include_str!("../tests/fixtures/metrics/waypoint-2.txt");

fn counters(texts: &[&str]) -> Counters {
    let mut c = Counters::default();
    for t in texts {
        c.add_exposition(t).expect("a real exposition parses");
    }
    c
}

fn first() -> Counters {
    counters(&[Z1_A, Z2_A, W_A])
}

fn second() -> Counters {
    counters(&[Z1_B, Z2_B, W_B])
}

fn workload(name: &str) -> NodeId {
    NodeId {
        kind: NodeKind::Workload,
        name: name.into(),
    }
}

fn edge<'a>(g: &'a Graph, src: &NodeId, dst: &NodeId) -> &'a Edge {
    g.edges
        .iter()
        .find(|e| &e.source == src && &e.destination == dst)
        .unwrap_or_else(|| {
            let all: Vec<_> = g
                .edges
                .iter()
                .map(|e| format!("{} -> {}", e.source.name, e.destination.name))
                .collect();
            panic!("no edge {} -> {}; edges: {all:#?}", src.name, dst.name)
        })
}

#[test]
fn parses_samples_labels_and_values() {
    let samples = parse_exposition(W_A).expect("parse");
    let req = samples
        .iter()
        .find(|s| {
            s.name == "istio_requests_total"
                && s.labels.get("destination_workload").map(String::as_str) == Some("details-v1")
        })
        .expect("productpage -> details request counter");
    assert_eq!(req.value, 3.0);
    assert_eq!(req.labels["source_workload"], "productpage-v1");
    assert_eq!(req.labels["response_code"], "200");
    // An empty label value is kept as empty, not dropped or mis-parsed.
    assert_eq!(req.labels["grpc_response_status"], "");
    let inf = samples
        .iter()
        .find(|s| {
            s.name == "istio_request_duration_milliseconds_bucket"
                && s.labels.get("le").map(String::as_str) == Some("+Inf")
        })
        .expect("an +Inf bucket");
    assert!(inf.value >= 1.0);
}

#[test]
fn parse_errors_name_the_line() {
    let text = "# HELP x y\nok_metric 1\nbad_metric{a=\"b\" 2\n";
    let e = parse_exposition(text).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.to_string().contains("bad_metric"), "{e}");
    let e = parse_exposition("m{a=\"b\"} notanumber\n").unwrap_err();
    assert_eq!(e.what, "value is not a number");
    let e = parse_exposition("m{a=b} 1\n").unwrap_err();
    assert_eq!(e.what, "label value not quoted");
    // Escapes inside label values.
    let s = parse_exposition("m{a=\"x\\\"y\\\\z\\n\"} 1 1700000000\n").expect("escapes");
    assert_eq!(s[0].labels["a"], "x\"y\\z\n");
    assert_eq!(s[0].value, 1.0);
}

#[test]
fn edges_of_the_first_scrape() {
    let g = Graph::between(None, &first(), 0.0);
    let productpage = workload("bookinfo/productpage-v1");
    let waypoint = workload("bookinfo/waypoint");

    // TCP hop to the waypoint, reported by productpage's ztunnel only (the waypoint takes
    // HBONE itself): 3 connections for details, 1 for ratings, 3 for reviews.
    let e = edge(&g, &productpage, &waypoint);
    assert_eq!(e.total.tcp_opened, 7.0);
    assert_eq!(e.security, "mtls");
    assert_eq!(
        e.services,
        vec![
            "details.bookinfo.svc.cluster.local",
            "ratings.bookinfo.svc.cluster.local",
            "reviews.bookinfo.svc.cluster.local"
        ]
    );
    assert_eq!(e.denied, 0.0);

    // productpage -> a ratings pod directly: reported by both ztunnels (node1 source, node2
    // destination), counted once; DENY at the destination, CONNECT at the source: one denial,
    // no failure.
    let e = edge(&g, &productpage, &workload("bookinfo/ratings-v1"));
    assert_eq!(e.total.tcp_opened, 1.0);
    assert_eq!(e.total.tcp_denied, 1.0);
    assert_eq!(e.total.tcp_failed, 0.0);
    assert_eq!(e.denied, 1.0);
    assert_eq!(e.allowed, 0.0);
    assert_eq!(e.security, "mtls");

    // legacy/curl has no identity: plaintext, refused by STRICT.
    let e = edge(
        &g,
        &workload("legacy/curl"),
        &workload("bookinfo/details-v1"),
    );
    assert_eq!(e.security, "plaintext");
    assert_eq!(e.total.tcp_denied, 1.0);
    assert_eq!(e.denied, 1.0);
    assert!(e.services.is_empty(), "{:?}", e.services);

    // The waypoint's requests: productpage -> details 3 x 200.
    let e = edge(&g, &productpage, &workload("bookinfo/details-v1"));
    assert_eq!(e.total.requests, 3.0);
    assert_eq!(e.total.request_errors, 0.0);
    assert_eq!(e.allowed, 3.0);
    assert_eq!(e.security, "mtls");
    // The waypoint's 403 to productpage -> ratings: no destination workload was picked, so
    // the edge ends at the service.
    let ratings_svc = NodeId {
        kind: NodeKind::Service,
        name: "ratings.bookinfo.svc.cluster.local".into(),
    };
    let e = edge(&g, &productpage, &ratings_svc);
    assert_eq!(e.total.requests, 1.0);
    assert_eq!(e.total.requests_denied, 1.0);
    assert_eq!(e.denied, 1.0);
    assert_eq!(e.allowed, 0.0);
    // The waypoint's hops to the destinations, reported by the destinations' ztunnels.
    for dst in ["details-v1", "ratings-v1", "reviews-v1"] {
        let e = edge(&g, &waypoint, &workload(&format!("bookinfo/{dst}")));
        assert_eq!(e.total.tcp_opened, 1.0, "waypoint -> {dst}");
        assert_eq!(e.security, "mtls");
    }
    // Nodes: exactly the workloads and the one service above.
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "bookinfo/details-v1",
            "bookinfo/productpage-v1",
            "bookinfo/ratings-v1",
            "bookinfo/reviews-v1",
            "bookinfo/waypoint",
            "legacy/curl",
            "ratings.bookinfo.svc.cluster.local",
        ]
    );
}

#[test]
fn rates_error_rate_and_p99_between_two_scrapes() {
    let (a, b) = (first(), second());
    let g = Graph::between(Some(&a), &b, 10.0);
    let productpage = workload("bookinfo/productpage-v1");
    let details = workload("bookinfo/details-v1");

    let e = edge(&g, &productpage, &details);
    assert_eq!(e.total.requests, 8.0);
    assert_eq!(e.window.requests, 5.0);
    assert!((e.requests_per_second - 0.5).abs() < 1e-9, "{e:?}");
    assert_eq!(e.error_rate, Some(0.0));
    // Window buckets: le=1 -> 4, le=5 -> 5 of 5; the 99th percentile (rank 4.95) is 95% into
    // the (1, 5] bucket.
    let p99 = e.p99_ms.expect("p99");
    assert!((p99 - 4.8).abs() < 1e-9, "{p99}");

    // The hop to the waypoint grew by the five connections.
    let e = edge(&g, &productpage, &workload("bookinfo/waypoint"));
    assert_eq!(e.window.tcp_opened, 5.0);
    assert!((e.connections_per_second - 0.5).abs() < 1e-9);

    // A new edge: reviews-v2 -> ratings, all of it in the window.
    let e = edge(
        &g,
        &workload("bookinfo/reviews-v2"),
        &workload("bookinfo/ratings-v1"),
    );
    assert_eq!(e.window.requests, 1.0);
    assert_eq!(e.error_rate, Some(0.0));

    // One more refused curl connection: a denial in the window, not an error.
    let e = edge(
        &g,
        &workload("legacy/curl"),
        &workload("bookinfo/details-v1"),
    );
    assert_eq!(e.window.tcp_denied, 1.0);
    assert_eq!(e.denied, 2.0);
    assert_eq!(e.error_rate, Some(0.0));

    // Nothing happened on productpage -> reviews-v1: no rate, no error rate, no p99.
    let e = edge(&g, &productpage, &workload("bookinfo/reviews-v1"));
    assert_eq!(e.requests_per_second, 0.0);
    assert_eq!(e.error_rate, None);
    assert_eq!(e.p99_ms, None);
}

#[test]
fn failures_and_restarts() {
    let labels = |flags: &str| {
        format!(
            "{{reporter=\"source\",source_workload=\"a\",source_workload_namespace=\"ns\",\
             destination_workload=\"b\",destination_workload_namespace=\"ns\",\
             connection_security_policy=\"mutual_tls\",response_flags=\"{flags}\"}}"
        )
    };
    let text = |ok: u32, uf: u32| {
        format!(
            "istio_tcp_connections_opened_total{} {}\n\
             istio_tcp_connections_closed_total{} {ok}\n\
             istio_tcp_connections_closed_total{} {uf}\n",
            labels("-"),
            ok + uf,
            labels("-"),
            labels("UF")
        )
    };
    let before = counters(&[&text(8, 2)]);
    let after = counters(&[&text(14, 6)]);
    let g = Graph::between(Some(&before), &after, 2.0);
    let e = &g.edges[0];
    assert_eq!(e.window.tcp_closed, 10.0);
    assert_eq!(e.window.tcp_failed, 4.0);
    assert_eq!(e.error_rate, Some(0.4));
    assert_eq!(e.connections_per_second, 5.0);
    // The proxy restarted: its counters start again from zero, and what it counted since is
    // the increase (not a negative rate).
    let restarted = counters(&[&text(3, 1)]);
    let g = Graph::between(Some(&after), &restarted, 2.0);
    assert_eq!(g.edges[0].window.tcp_closed, 4.0);
    assert_eq!(g.edges[0].window.tcp_failed, 1.0);
}

#[test]
fn quantile_interpolates_inside_the_bucket() {
    let b: BTreeMap<OrdF64, f64> = [(10.0, 50.0), (20.0, 100.0), (f64::INFINITY, 100.0)]
        .into_iter()
        .map(|(k, v)| (OrdF64(k), v))
        .collect();
    assert_eq!(quantile(0.5, &b), Some(10.0));
    assert_eq!(quantile(0.75, &b), Some(15.0));
    // Observations above the last finite bound: that bound is the answer.
    let b: BTreeMap<OrdF64, f64> = [(10.0, 1.0), (f64::INFINITY, 10.0)]
        .into_iter()
        .map(|(k, v)| (OrdF64(k), v))
        .collect();
    assert_eq!(quantile(0.99, &b), Some(10.0));
    assert_eq!(quantile(0.99, &BTreeMap::new()), None);
}

#[test]
fn dot_and_svg_show_nodes_edges_and_denials() {
    let g = Graph::between(Some(&first()), &second(), 10.0);
    let dot = g.to_dot();
    assert!(dot.starts_with("digraph amesh {"), "{dot}");
    assert!(
        dot.contains("\"bookinfo/productpage-v1\" -> \"bookinfo/details-v1\" [label=\"0.50 req/s err 0% p99 5ms mtls\", color=darkgreen"),
        "{dot}"
    );
    assert!(
        dot.contains("\"legacy/curl\" -> \"bookinfo/details-v1\" [label=\"0.10 conn/s err 0% plaintext denied 2\", color=red, style=dashed]"),
        "{dot}"
    );
    assert_eq!(dot.matches(" -> ").count(), g.edges.len());
    let svg = g.to_svg();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_eq!(svg.matches("<g class=\"node\"").count(), g.nodes.len());
    assert_eq!(svg.matches("<g class=\"edge\"").count(), g.edges.len());
    assert!(svg.contains(
        "<g class=\"edge\" data-source=\"legacy/curl\" data-destination=\"bookinfo/details-v1\" data-denied=\"2\">"
    ));
    // The JSON the page and `amesh graph -o json` serve carries every edge.
    let json = serde_json::to_value(&g).expect("json");
    assert_eq!(json["edges"].as_array().map(Vec::len), Some(g.edges.len()));
}

#[test]
fn layout_puts_callers_before_the_waypoint_before_its_backends() {
    let g = Graph::between(Some(&first()), &second(), 10.0);
    let layout = Layout::of(&g);
    let x = |name: &str| layout.pos[&workload(name)].0;
    // Cycles through the waypoint (reviews -> waypoint -> reviews) do not scramble the
    // columns: callers, then the waypoint, then what it calls, then what those call.
    assert!(x("bookinfo/productpage-v1") < x("bookinfo/waypoint"));
    assert!(x("bookinfo/waypoint") < x("bookinfo/details-v1"));
    assert!(x("bookinfo/waypoint") < x("bookinfo/reviews-v1"));
    assert!(x("bookinfo/reviews-v1") < x("bookinfo/ratings-v1"));
    assert!(x("legacy/curl") < x("bookinfo/details-v1"));
    // Every node inside the drawing.
    for (n, (px, py)) in &layout.pos {
        assert!(
            *px > 0.0 && *px < layout.width && *py > 0.0 && *py < layout.height,
            "{n:?}"
        );
    }
}
