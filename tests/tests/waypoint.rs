//! The waypoint on the bookinfo example (`examples/bookinfo`, namespace `bookinfo` bound to
//! its waypoint): L7 authorization with the caller's own identity, the HTTPRoute canary split
//! and header match on `reviews`, Istio's request metrics from the waypoint, trace headers, and
//! a waypoint killed and restarted.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::http::{keepalive, request, Req};
use e2e::{addr, metric_sum as sample, wait_for, MeshLab};

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

/// tcpdump printing every payload byte of TCP in a node's netns (all its links: the bridge
/// side and every pod veth).
struct Capture {
    child: Child,
    file: std::path::PathBuf,
    stderr: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
}

impl Capture {
    fn start(m: &MeshLab, node: &str) -> Capture {
        let netns = m.node(node).netns;
        let file = m.lab.run_dir().join(format!("{node}.waypoint.tcpdump.txt"));
        let out = std::fs::File::create(&file).unwrap();
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", &netns, "tcpdump", "-i", "any", "-nn", "-l", "-A", "tcp",
            ])
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (setup installs it)");
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let started = stderr
            .by_ref()
            .take(5)
            .map_while(Result::ok)
            .any(|l| l.contains("listening on"));
        assert!(started, "tcpdump did not start in {node}");
        Capture {
            child,
            file,
            stderr,
        }
    }

    /// Stops the capture; its text, after checking that every packet was printed.
    fn stop(mut self) -> String {
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let stats: Vec<String> = self.stderr.map_while(Result::ok).collect();
        let count = |what: &str| {
            stats
                .iter()
                .find(|l| l.contains(what))
                .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        };
        let (captured, received) = (count("packets captured"), count("received by filter"));
        assert!(
            captured.is_some() && captured == received,
            "tcpdump printed {captured:?} of {received:?} packets: {stats:?}"
        );
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }
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
        assert!(
            echo.headers.contains_key("x-request-id"),
            "{:?}",
            echo.headers
        );
        assert!(
            echo.headers.contains_key("traceparent"),
            "{:?}",
            echo.headers
        );
    }
    assert!(
        (50..=150).contains(&v2),
        "{v2} of 1000 went to v2, expected 100 ± 50"
    );
    // The app sees the waypoint, whose identity the destination ztunnel authorized.
    assert!(destination_saw(&m, "reviews-"));

    // end-user: jason always goes to v2.
    let reqs = (0..50)
        .map(|_| Req::get("/reviews").header("end-user", "jason"))
        .collect();
    for r in keepalive(&m.lab, &productpage, reviews, reqs).unwrap() {
        assert_eq!(r.echo().expect("echo").version, "v2", "{r:?}");
    }

    // On the wire between nodes and pods, both hops (client -> waypoint, waypoint -> reviews)
    // are HBONE: a marker in the request never shows in clear.
    let marker = format!("AMESH-L7-MARKER-{}", std::process::id());
    let captures: Vec<Capture> = ["node1", "node2"]
        .iter()
        .map(|n| Capture::start(&m, n))
        .collect();
    let r = request(
        &m.lab,
        &productpage,
        reviews,
        Req::get(&format!("/{marker}")).header("x-marker", &marker),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(&marker),
        "the app did not get the marker: {r:?}"
    );
    let text: String = captures.into_iter().map(Capture::stop).collect();
    assert!(
        text.lines().filter(|l| l.contains(".15008")).count() > 0,
        "no HBONE packets in the captures"
    );
    assert!(
        !text.contains(&marker),
        "the request crossed a node in clear"
    );

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
    assert_eq!(ok, 1051.0, "200s from productpage in:\n{metrics}");
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
    assert_eq!(by_route, 1051.0, "per-route counts in:\n{metrics}");
    assert!(
        metrics.contains("istio_request_duration_milliseconds_bucket{"),
        "{metrics}"
    );

    // The access log: one line per request, with the caller's own identity.
    let log_path = m
        .lab
        .state()
        .processes
        .iter()
        .rev()
        .find(|p| p.name == lab::waypoints::process_name("bookinfo", "waypoint"))
        .map(|p| p.log.clone())
        .expect("the waypoint's process record");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" access: request"))
        .collect();
    assert!(
        access
            .iter()
            .any(|l| l.contains(&format!("source_principal={PRODUCTPAGE}"))
                && l.contains("response_code=403")
                && l.contains("method=POST")),
        "no access-log line for the denied POST in {}",
        log_path.display()
    );
    assert!(
        access.len() >= 1053,
        "{} access-log lines for 1,053 requests",
        access.len()
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
    wait_for(
        "requests flow after the restart",
        Duration::from_secs(20),
        || {
            request(&lab.lab, &productpage, target, Req::get("/"))
                .map(|r| r.status == 200)
                .unwrap_or(false)
        },
    );
}
