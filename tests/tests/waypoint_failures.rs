//! The waypoint's answers when things go wrong, and its route filters, on a small cluster
//! (`tests/fixtures/waypoint`): no endpoints → 503 `UH`, an endpoint that refuses → 503 `UF`,
//! malformed HTTP → 400 on that connection only, too many headers → 431, plain TCP through the
//! waypoint, a Service that opts out skips it, redirect / rewrite / header filters, a route
//! timeout (504 `UT`), a client that leaves mid-request (`DC`) and a request mirrored with its
//! body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use e2e::http::{request, Req};
use e2e::{addr, metric_sum as sample, MeshLab};

/// Writes `raw` on a new connection from `pod` and reads until the peer closes or 5 s pass.
fn raw(m: &MeshLab, pod: &str, to: SocketAddr, raw: Vec<u8>) -> String {
    m.lab
        .run_in_pod(pod, move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&raw).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
        .unwrap()
}

#[test]
fn waypoint_failures_and_filters() {
    let m = MeshLab::up("waypoint", 2);
    let web = addr(m.vip("web"), 80);

    // Filters: rewrite + request header set/remove + response header add.
    let r = request(
        &m.lab,
        "client",
        web,
        Req::get("/old/item?q=1").header("x-secret", "s3cret"),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let echo = r.echo().expect("echo reply");
    assert_eq!(echo.path, "/new/item?q=1");
    assert_eq!(
        echo.headers.get("x-added").map(String::as_str),
        Some("by-waypoint")
    );
    assert!(!echo.headers.contains_key("x-secret"), "{:?}", echo.headers);
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "x-served-by" && v == "waypoint"),
        "{:?}",
        r.headers
    );
    // Redirect: answered by the waypoint itself.
    let r = request(&m.lab, "client", web, Req::get("/moved/a?b=c")).unwrap();
    assert_eq!(r.status, 301, "{r:?}");
    let location = r
        .headers
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.clone());
    assert_eq!(location.as_deref(), Some("http://shop.example/moved/a?b=c"));

    // No endpoint: 503 UH. An endpoint that refuses: 503 UF.
    let r = request(&m.lab, "client", addr(m.vip("empty"), 80), Req::get("/")).unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    let r = request(&m.lab, "client", addr(m.vip("refusing"), 80), Req::get("/")).unwrap();
    assert_eq!(r.status, 503, "{r:?}");

    // Malformed HTTP gets 400 and loses its own connection; a header flood gets 431; the
    // waypoint serves the next request as before.
    let bad = raw(
        &m,
        "client",
        web,
        b"GET / HTTP/1.1\r\nhost: web\r\nno colon here\r\n\r\n".to_vec(),
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad:?}");
    let mut flood = b"GET / HTTP/1.1\r\nhost: web\r\n".to_vec();
    for i in 0..150 {
        flood.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let flooded = raw(&m, "client", web, flood);
    assert!(flooded.starts_with("HTTP/1.1 431"), "{flooded:?}");
    let r = request(&m.lab, "client", web, Req::get("/after")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // A port declared HTTP/2 is spoken to in HTTP/2, whatever the client used.
    let r = request(&m.lab, "client", addr(m.vip("web"), 81), Req::get("/h2")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo().unwrap().protocol, "HTTP/2", "{r:?}");
    let r = request(&m.lab, "client", web, Req::get("/h1")).unwrap();
    assert_eq!(r.echo().unwrap().protocol, "HTTP/1.1", "{r:?}");

    // A tcp- port: bytes through the waypoint to the app's raw echo.
    let back = m
        .echo("client", addr(m.vip("web"), 90), b"plain bytes, not HTTP")
        .unwrap();
    assert_eq!(back, b"plain bytes, not HTTP");

    // A Service that opts out: served, but not by the waypoint.
    let r = request(&m.lab, "client", addr(m.vip("direct"), 80), Req::get("/")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.echo().unwrap().headers.contains_key("x-request-id"));

    // RequestMirror: shadow gets a copy of the request, body included, and the client gets
    // web's answer.
    let mut post = Req::get("/digest").method("POST");
    post.body = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = request(&m.lab, "client", web, post).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let digest: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(digest["bytes"], 1_000_000, "{digest}");
    let sha = digest["sha256"].as_str().unwrap().to_string();
    let shadow_log = m
        .lab
        .state()
        .processes
        .iter()
        .find(|p| p.name == "echo shop/shadow-1")
        .map(|p| p.log.clone())
        .expect("shadow's echo process");
    let received = |log: &str| {
        log.lines()
            .any(|l| l.contains(&sha) && l.contains("bytes=1000000") && l.contains("complete=true"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&shadow_log).unwrap_or_default();
        if received(&log) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror did not receive the whole body ({sha}); its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A route timeout: 504 UT. Without it the same slow request is served.
    let slow = Req::get("/delay/3000").header("x-timeout", "short");
    let r = request(&m.lab, "client", web, slow).unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    let r = request(&m.lab, "client", web, Req::get("/delay/300")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // The client leaves mid-request: the waypoint counts it as DC (no response code).
    m.lab
        .run_in_pod("client", move || {
            let mut s = TcpStream::connect_timeout(&web, Duration::from_secs(5)).unwrap();
            s.write_all(b"GET /delay/5000 HTTP/1.1\r\nhost: web\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
        })
        .unwrap();
    e2e::wait_for(
        "the waypoint to count the disconnect",
        Duration::from_secs(5),
        || {
            sample(
                &m.waypoint_metrics("shop", "waypoint"),
                "istio_requests_total",
                &["response_code=\"0\"", "response_flags=\"DC\""],
            ) == 1.0
        },
    );

    let metrics = m.waypoint_metrics("shop", "waypoint");
    assert_eq!(
        sample(
            &metrics,
            "istio_requests_total",
            &["response_code=\"504\"", "response_flags=\"UT\""]
        ),
        1.0,
        "{metrics}"
    );
    let count = |labels: &[&str]| sample(&metrics, "istio_requests_total", labels);
    assert_eq!(
        count(&[
            "destination_service=\"empty.shop.svc.cluster.local\"",
            "response_code=\"503\"",
            "response_flags=\"UH\""
        ]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(&[
            "destination_service=\"refusing.shop.svc.cluster.local\"",
            "response_code=\"503\"",
            "response_flags=\"UF\""
        ]),
        1.0,
        "{metrics}"
    );
    assert_eq!(count(&["response_code=\"301\""]), 1.0, "{metrics}");
    assert_eq!(
        count(&["destination_service=\"direct.shop.svc.cluster.local\""]),
        0.0,
        "{metrics}"
    );
}
