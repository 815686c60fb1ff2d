//! The waypoint on the bookinfo example (`examples/bookinfo`, namespace `bookinfo` bound to
//! its waypoint): L7 authorization with the caller's own identity, the HTTPRoute canary split
//! and header match on `reviews`, Istio's request metrics from the waypoint, trace headers, and
//! a waypoint killed and restarted.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::http::{keepalive, request, Req};
use e2e::{addr, wait_for, MeshLab};

const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";

/// The name of the (first) pod of `app` in bookinfo.
fn pod_of(m: &MeshLab, app: &str) -> String {
    m.lab
        .state()
        .pods
        .iter()
        .find(|p| p.namespace == "bookinfo" && p.labels.get("app").map(String::as_str) == Some(app))
        .map(|p| p.name.clone())
        .unwrap_or_else(|| panic!("no bookinfo pod of app {app}"))
}

/// Whether any ztunnel reported, as destination, a connection to a workload whose name starts
/// with `prefix`.
fn destination_saw(m: &MeshLab, prefix: &str) -> bool {
    ["node1", "node2"].iter().any(|node| {
        lab::mesh::metrics(&m.node(node))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains(&format!("destination_workload=\"{prefix}"))
            })
    })
}

/// The value of the first sample of `name` whose line contains every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn bookinfo_through_the_waypoint() {
    let m = MeshLab::up_example("bookinfo", 2);
    let productpage = pod_of(&m, "productpage");
    let ratings = pod_of(&m, "ratings");
    let reviews = addr(m.vip("reviews"), 9080);

    // L7 policy on reviews: only GET, only from productpage. Denials come from the waypoint
    // (its body, not the echo app's JSON) and never reach a reviews pod's ztunnel.
    let post = request(&m.lab, &productpage, reviews, Req::get("/").method("POST")).unwrap();
    assert_eq!(post.status, 403, "POST from productpage: {post:?}");
    assert_eq!(post.body, "RBAC: access denied");
    let other = request(&m.lab, &ratings, reviews, Req::get("/")).unwrap();
    assert_eq!(other.status, 403, "GET from ratings: {other:?}");
    assert!(
        !destination_saw(&m, "reviews-"),
        "a reviews pod's ztunnel saw a connection for a denied request"
    );

    // The canary split: 90/10 over 1,000 requests (kept-alive), within ±5 %.
    let reqs = (0..1000).map(|_| Req::get("/reviews")).collect();
    let replies = keepalive(&m.lab, &productpage, reviews, reqs).unwrap();
    let mut v2 = 0;
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        let echo = r.echo().expect("echo reply");
        assert!(echo.pod.starts_with("reviews-v"), "{}", echo.pod);
        if echo.version == "v2" {
            v2 += 1;
        }
        // The waypoint names the request and starts a trace for it.
        assert!(echo.headers.contains_key("x-request-id"), "{:?}", echo.headers);
        assert!(echo.headers.contains_key("traceparent"), "{:?}", echo.headers);
    }
    assert!((50..=150).contains(&v2), "{v2} of 1000 went to v2, expected 100 ± 50");
    // The app sees the waypoint, whose identity the destination ztunnel authorized.
    assert!(destination_saw(&m, "reviews-"));

    // end-user: jason always goes to v2.
    let reqs = (0..50)
        .map(|_| Req::get("/reviews").header("end-user", "jason"))
        .collect();
    for r in keepalive(&m.lab, &productpage, reviews, reqs).unwrap() {
        assert_eq!(r.echo().expect("echo").version, "v2", "{r:?}");
    }

    // Istio's metrics from the waypoint, with the caller's own identity.
    let metrics = m.waypoint_metrics("bookinfo", "waypoint");
    let from_productpage = format!("source_principal=\"{PRODUCTPAGE}\"");
    let ok = sample(
        &metrics,
        "istio_requests_total",
        &[
            "reporter=\"waypoint\"",
            &from_productpage,
            "destination_service=\"reviews.bookinfo.svc.cluster.local\"",
            "response_code=\"200\"",
        ],
    );
    assert_eq!(ok, 1050.0, "200s from productpage in:\n{metrics}");
    let denied = sample(
        &metrics,
        "istio_requests_total",
        &["reporter=\"waypoint\"", "response_code=\"403\""],
    );
    assert_eq!(denied, 2.0, "403s in:\n{metrics}");
    let by_route = sample(
        &metrics,
        "amesh_waypoint_route_requests_total",
        &["route=\"bookinfo/reviews\""],
    );
    assert_eq!(by_route, 1050.0, "per-route counts in:\n{metrics}");
    assert!(
        metrics.contains("istio_request_duration_milliseconds_bucket{"),
        "{metrics}"
    );

    // A waypoint killed and started again (as the kubelet restarts a crashed container):
    // new requests flow without any other step.
    let mut lab = m;
    lab::waypoints::kill(&mut lab.lab, "bookinfo", "waypoint").unwrap();
    let down = request(&lab.lab, &productpage, reviews, Req::get("/"));
    assert!(
        down.as_ref().map(|r| r.status != 200).unwrap_or(true),
        "a request succeeded with the waypoint down: {down:?}"
    );
    lab::waypoints::restart(&mut lab.lab, "bookinfo", "waypoint").unwrap();
    let target: SocketAddr = reviews;
    wait_for("requests flow after the restart", Duration::from_secs(20), || {
        request(&lab.lab, &productpage, target, Req::get("/"))
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
}
