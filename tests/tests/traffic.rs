//! Istio traffic management through a waypoint (`tests/fixtures/traffic`, namespace `shop`):
//! the VirtualServices and DestinationRules a user of Istio already has, unchanged — a canary
//! over subsets with a header match, a fault delay against an upstream route timeout, a fault
//! abort, retries (VirtualService and HTTPRoute), outlier detection, circuit breaking and
//! mirroring — each checked by what the clients see and by the waypoint's metrics
//! (`response_flags` as Istio reports them).
//!
//! One lab for all scenarios (each has its own Service, so they do not disturb one another).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use e2e::http::{keepalive, request, Req};
use e2e::{addr, metric_sum as sample, wait_for, MeshLab};

const PORT: u16 = 9080;

fn svc(m: &MeshLab, name: &str) -> SocketAddr {
    addr(m.vip(name), PORT)
}

/// `n` GETs of `path` on one kept-alive connection; each answer's (status, answering pod).
fn many(m: &MeshLab, to: SocketAddr, n: usize, req: Req) -> Vec<(u16, String)> {
    let reqs = (0..n).map(|_| req.clone()).collect();
    keepalive(&m.lab, "client", to, reqs)
        .expect("requests")
        .into_iter()
        .map(|r| {
            let pod = r.echo().map(|e| e.pod).unwrap_or_default();
            (r.status, pod)
        })
        .collect()
}

fn metrics(m: &MeshLab) -> String {
    m.waypoint_metrics("shop", "waypoint")
}

fn requests(metrics: &str, service: &str, extra: &[&str]) -> f64 {
    let dest = format!("destination_service=\"{service}.shop.svc.cluster.local\"");
    let mut labels = vec![dest.as_str(), "reporter=\"waypoint\""];
    labels.extend_from_slice(extra);
    sample(metrics, "istio_requests_total", &labels)
}

#[test]
fn istio_traffic_management() {
    let m = MeshLab::up("traffic", 2);
    // The policies (policies.yaml) are in the fixture; the first request that sees the
    // reviews canary in force shows they reached the waypoint.
    wait_for(
        "the reviews VirtualService to route jason to v3",
        Duration::from_secs(15),
        || {
            request(
                &m.lab,
                "client",
                svc(&m, "reviews"),
                Req::get("/").header("end-user", "jason"),
            )
            .ok()
            .and_then(|r| r.echo())
            .is_some_and(|e| e.pod == "reviews-v3")
        },
    );

    canary(&m);
    delay_against_timeout(&m);
    abort(&m);
    retries(&m);
    httproute_retry(&m);
    outlier_detection(&m);
    circuit_breaking(&m);
    mirroring(&m);
}

/// VirtualService weights 80/20 over DestinationRule subsets: within ±5 % over 1,000
/// requests; `end-user: jason` always goes to v3.
fn canary(m: &MeshLab) {
    let answers = many(m, svc(m, "reviews"), 1000, Req::get("/"));
    assert!(answers.iter().all(|(s, _)| *s == 200), "non-200 answers");
    let count = |pod: &str| answers.iter().filter(|(_, p)| p == pod).count();
    let (v1, v2, v3) = (
        count("reviews-v1"),
        count("reviews-v2"),
        count("reviews-v3"),
    );
    assert_eq!(v1 + v2, 1000, "v1 {v1}, v2 {v2}, v3 {v3}");
    assert!(
        (750..=850).contains(&v1),
        "{v1} of 1000 went to v1, expected 800 ± 50"
    );
    let jason = many(
        m,
        svc(m, "reviews"),
        50,
        Req::get("/").header("end-user", "jason"),
    );
    assert!(
        jason.iter().all(|(s, p)| *s == 200 && p == "reviews-v3"),
        "{jason:?}"
    );
}

/// ratings delays `end-user: bill` by 7 s; frontend (which calls ratings) has a 2 s route
/// timeout: bill gets 504 `UT` after about 2 s, everyone else 200.
fn delay_against_timeout(m: &MeshLab) {
    let frontend = svc(m, "frontend");
    let r = request(&m.lab, "client", frontend, Req::get("/")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let started = Instant::now();
    let r = request(
        &m.lab,
        "client",
        frontend,
        Req::get("/").header("end-user", "bill"),
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "the 504 came after {took:?}, expected the route timeout of 2 s"
    );
    let r = request(&m.lab, "client", frontend, Req::get("/")).unwrap();
    assert_eq!(r.status, 200, "another user is not delayed: {r:?}");
    let text = metrics(m);
    assert_eq!(
        requests(
            &text,
            "frontend",
            &["response_code=\"504\"", "response_flags=\"UT\""]
        ),
        1.0,
        "{text}"
    );
    // The delay itself is flagged DI on ratings: `DI` when answered after the delay, `DI,DC`
    // when the frontend's own hop gave up during it (Envoy keeps both flags).
    wait_for(
        "the delayed ratings request to be recorded with DI",
        Duration::from_secs(15),
        || requests(&metrics(m), "ratings", &["response_flags=\"DI"]) >= 1.0,
    );
}

/// An abort of 50 % with 500: about half fail, each flagged FI.
fn abort(m: &MeshLab) {
    let answers = many(m, svc(m, "details"), 400, Req::get("/"));
    let failed = answers.iter().filter(|(s, _)| *s == 500).count();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(failed + ok, 400, "{answers:?}");
    assert!(
        (120..=280).contains(&failed),
        "{failed} of 400 aborted, expected about 200"
    );
    let text = metrics(m);
    assert_eq!(
        requests(
            &text,
            "details",
            &["response_code=\"500\"", "response_flags=\"FI\""]
        ),
        failed as f64,
        "{text}"
    );
}

/// A backend failing every other request with 503; with `attempts: 3` the client sees
/// ≥ 99 % success over 1,000 requests, and the retries show in the metrics.
fn retries(m: &MeshLab) {
    let answers = many(m, svc(m, "flaky"), 1000, Req::get("/"));
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert!(ok >= 990, "{ok} of 1000 succeeded");
    let text = metrics(m);
    let retried: f64 = text
        .lines()
        .filter(|l| l.starts_with("amesh_waypoint_upstream_retries_total{"))
        .filter(|l| l.contains("flaky.shop.svc.cluster.local"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    assert!(
        retried >= 400.0,
        "{retried} retries counted for ~500 failed attempts:\n{text}"
    );
    assert_eq!(
        requests(&text, "flaky", &["response_code=\"200\""]),
        ok as f64,
        "{text}"
    );
}

/// HTTPRoute `retry` (codes [503], 2 attempts) over a backend failing every other request:
/// every request succeeds, through the same retry engine.
fn httproute_retry(m: &MeshLab) {
    let answers = many(m, svc(m, "flaky-gw"), 200, Req::get("/"));
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 200, "{answers:?}");
    let text = metrics(m);
    let retried = sample(
        &text,
        "amesh_waypoint_upstream_retries_total",
        &["flaky-gw.shop.svc.cluster.local"],
    );
    assert!(
        retried >= 80.0,
        "{retried} retries for ~100 failed attempts:\n{text}"
    );
}

/// One of three endpoints always answers 503: ejected after 3 consecutive 5xx, no traffic to
/// it during the ejection (10 s), back after it.
fn outlier_detection(m: &MeshLab) {
    let pool = svc(m, "pool");
    let first = many(m, pool, 30, Req::get("/"));
    let failed = first.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(
        failed, 3,
        "pool-3 answers 503 until its third consecutive one ejects it: {first:?}"
    );
    let ejected_at = Instant::now();
    let during = many(m, pool, 60, Req::get("/"));
    assert!(
        ejected_at.elapsed() < Duration::from_secs(8),
        "too slow to check the ejection"
    );
    assert!(
        during.iter().all(|(s, p)| *s == 200 && p != "pool-3"),
        "traffic reached the ejected endpoint: {during:?}"
    );
    let text = metrics(m);
    assert!(
        text.lines()
            .any(|l| l.starts_with("amesh_waypoint_outlier_ejections_total{")
                && l.contains("pool.shop.svc.cluster.local")),
        "{text}"
    );
    // After the ejection time (10 s) and a sweep (1 s), pool-3 is back and fails again.
    std::thread::sleep(
        Duration::from_secs(10).saturating_sub(ejected_at.elapsed()) + Duration::from_secs(2),
    );
    let after = many(m, pool, 30, Req::get("/"));
    assert!(
        after.iter().any(|(s, _)| *s == 503),
        "the ejected endpoint was not re-admitted: {after:?}"
    );
}

/// `maxConnections: 1`, `http1MaxPendingRequests: 1` and 20 concurrent slow requests: fast
/// 503s flagged UO for the overflow, the rest succeed.
fn circuit_breaking(m: &MeshLab) {
    let narrow = svc(m, "narrow");
    let results: Vec<(u16, Duration)> = m
        .lab
        .run_in_pod("client", move || {
            let threads: Vec<_> = (0..20)
                .map(|_| std::thread::spawn(move || get_status(narrow, "/delay/2000")))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
        .unwrap();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let overflow: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok + overflow.len(), 20, "{results:?}");
    assert!(
        ok >= 2,
        "the connection and the pending slot were served: {results:?}"
    );
    assert!(overflow.len() >= 10, "{results:?}");
    assert!(
        overflow
            .iter()
            .all(|(_, took)| *took < Duration::from_millis(1500)),
        "overflow answers did not come fast: {results:?}"
    );
    let text = metrics(m);
    assert_eq!(
        requests(
            &text,
            "narrow",
            &["response_code=\"503\"", "response_flags=\"UO\""]
        ),
        overflow.len() as f64,
        "{text}"
    );
}

/// 100 % mirrored to v2: v2 gets a copy of each request (with its body), clients see only
/// v1's answers; a mirror that refuses changes nothing for clients.
fn mirroring(m: &MeshLab) {
    let web = svc(m, "web");
    let answers = many(m, web, 50, Req::get("/"));
    assert!(
        answers.iter().all(|(s, p)| *s == 200 && p == "web-v1"),
        "{answers:?}"
    );
    // Distinct bodies; v2's echo logs the digest of each one it receives.
    let mut digests = Vec::new();
    for i in 0..10u32 {
        let mut post = Req::get("/digest").method("POST");
        post.body = format!("mirrored body {i}").into_bytes();
        let r = request(&m.lab, "client", web, post).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let digest: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        digests.push(digest["sha256"].as_str().unwrap().to_string());
    }
    let log = m
        .lab
        .state()
        .processes
        .iter()
        .find(|p| p.name == "echo shop/web-v2")
        .map(|p| p.log.clone())
        .expect("web-v2's echo process");
    wait_for(
        "v2 to receive every mirrored body",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            digests.iter().all(|d| text.contains(d.as_str()))
        },
    );

    // solo mirrors to `dead` (nothing listens): clients are served as if there were no mirror.
    let solo = many(m, svc(m, "solo"), 50, Req::get("/"));
    assert!(
        solo.iter().all(|(s, p)| *s == 200 && p == "solo-1"),
        "{solo:?}"
    );
    let text = metrics(m);
    assert_eq!(
        requests(&text, "solo", &["response_code=\"200\""]),
        50.0,
        "{text}"
    );
}

/// One GET on its own connection: the status and how long the answer took.
fn get_status(to: SocketAddr, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: narrow\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    let status = match s.read_exact(&mut head) {
        Ok(()) => std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    };
    (status, started.elapsed())
}
