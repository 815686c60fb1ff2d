//! The protocols a waypoint carries, on the bookinfo example (every bookinfo Service goes
//! through the namespace's waypoint): HTTP/1.1 keep-alive, HTTP/2 (h2c), gRPC unary and server
//! streaming, a WebSocket echo, and 1 GiB down and up, checked byte for byte while the
//! waypoint's resident memory stays bounded. The client is productpage, the server details.
//!
//! `echo_protocols_on_loopback` runs the same client against the echo app directly (no root,
//! no lab), so a failure through the waypoint is the waypoint's, not the client's or the app's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use e2e::l7client::{self, Http, L7Response, Transfer};
use e2e::{addr, MeshLab};
use lab::echo::pattern::pattern_digest;
use lab::echo::websocket::{
    WsFrame, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use lab::echo::{grpc, EchoConfig};

const GIB: u64 = 1 << 30;
/// The waypoint's resident set may not grow past this while a GiB streams through it: it must
/// stream, not buffer (at most a few flow-control windows per direction).
const WAYPOINT_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Frames of the WebSocket session: text, a ping, a binary frame over 64 KiB (the 64-bit
/// length form), and a message in two fragments.
fn ws_frames() -> Vec<WsFrame> {
    let frame = |fin, opcode, payload: Bytes| WsFrame {
        fin,
        opcode,
        payload,
    };
    vec![
        frame(
            true,
            OP_TEXT,
            Bytes::from_static(b"hello through the waypoint"),
        ),
        frame(true, OP_PING, Bytes::from_static(b"are you there")),
        frame(true, OP_BINARY, Bytes::from(vec![0xa5; 100_000])),
        frame(false, OP_TEXT, Bytes::from_static(b"first half, ")),
        frame(true, OP_CONTINUATION, Bytes::from_static(b"second half")),
    ]
}

/// What the echo must answer to [`ws_frames`]: each frame as sent, a pong for the ping.
fn ws_expected() -> Vec<WsFrame> {
    let mut want = ws_frames();
    want[1].opcode = OP_PONG;
    want
}

/// Checks an h1 or h2c keep-alive run: every request answered by `pod_prefix`'s echo over
/// `version`, and, through a waypoint, with the `x-request-id` the waypoint adds.
fn check_replies(
    got: &[L7Response],
    paths: &[&str],
    version: &str,
    pod_prefix: &str,
    via_waypoint: bool,
) -> Result<(), String> {
    if got.len() != paths.len() {
        return Err(format!("{} answers to {} requests", got.len(), paths.len()));
    }
    for (r, path) in got.iter().zip(paths) {
        let echo = r.echo()?;
        let want_status = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        if r.status.as_u16() != want_status || echo.path != *path || echo.protocol != version {
            return Err(format!(
                "{path}: status {} ({want_status} expected), echo saw {} {} over {} ({version} expected)",
                r.status, echo.method, echo.path, echo.protocol
            ));
        }
        if !echo.pod.starts_with(pod_prefix) {
            return Err(format!(
                "{path} answered by {}, not {pod_prefix}*",
                echo.pod
            ));
        }
        if via_waypoint && !echo.headers.contains_key("x-request-id") {
            return Err(format!(
                "{path}: no x-request-id reached the app (did the waypoint serve it?): {:?}",
                echo.headers
            ));
        }
    }
    Ok(())
}

fn check_grpc(replies: &[l7client::GrpcReply], message: &Bytes) -> Result<(), String> {
    let [unary, stream, unknown] = replies else {
        return Err(format!("{} gRPC replies to 3 calls", replies.len()));
    };
    for (what, r, copies) in [("unary", unary, 1), ("stream", stream, grpc::STREAM_COPIES)] {
        if r.status != 200 || r.grpc_status.as_deref() != Some("0") {
            return Err(format!(
                "{what}: HTTP {}, grpc-status {:?} ({:?})",
                r.status, r.grpc_status, r.grpc_message
            ));
        }
        if r.messages.len() != copies || r.messages.iter().any(|m| m != message) {
            return Err(format!(
                "{what}: {} messages of sizes {:?}, {copies} of {} bytes expected",
                r.messages.len(),
                r.messages.iter().map(Bytes::len).collect::<Vec<_>>(),
                message.len()
            ));
        }
    }
    // An unknown method is UNIMPLEMENTED (12), in trailers, with no message.
    if unknown.grpc_status.as_deref() != Some("12") || !unknown.messages.is_empty() {
        return Err(format!("unknown method: {unknown:?}"));
    }
    Ok(())
}

fn check_ws(session: &l7client::WsSession) -> Result<(), String> {
    if session.replies != ws_expected() {
        let summary: Vec<(u8, bool, usize)> = (session.replies.iter())
            .map(|f| (f.opcode, f.fin, f.payload.len()))
            .collect();
        return Err(format!(
            "WebSocket replies (opcode, fin, size): {summary:?}"
        ));
    }
    if session.close.opcode != OP_CLOSE || session.close.payload[..] != 1000u16.to_be_bytes() {
        return Err(format!("close answered with {:?}", session.close));
    }
    Ok(())
}

fn check_upload(got: &lab::echo::DigestReply, len: u64) -> Result<(), String> {
    let want = pattern_digest(len);
    if *got != want {
        return Err(format!("the server got {got:?}, {want:?} was sent"));
    }
    Ok(())
}

/// The client against the echo app on loopback, no proxy in between.
#[test]
fn echo_protocols_on_loopback() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app: SocketAddr = listener.local_addr().unwrap();
        let config = Arc::new(EchoConfig {
            pod: "echo-local".into(),
            ..EchoConfig::default()
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(lab::echo::handle(stream, Arc::clone(&config)));
            }
        });
        let auth = app.to_string();
        let paths = ["/a", "/status/503", "/b?x=1"];
        let h1 = l7client::get_many(app, Http::H1, &auth, &paths)
            .await
            .unwrap();
        check_replies(&h1, &paths, "HTTP/1.1", "echo-local", false).unwrap();
        let h2 = l7client::get_many(app, Http::H2c, &auth, &paths)
            .await
            .unwrap();
        check_replies(&h2, &paths, "HTTP/2", "echo-local", false).unwrap();

        let message = Bytes::from_static(b"\x0a\x05hello opaque bytes");
        let calls = [
            (grpc::UNARY, message.clone()),
            (grpc::STREAM, message.clone()),
            ("/echo.Echo/Nope", message.clone()),
        ];
        let replies = l7client::grpc_calls(app, &auth, &calls).await.unwrap();
        check_grpc(&replies, &message).unwrap();

        let ws = l7client::websocket_session(app, &auth, &ws_frames())
            .await
            .unwrap();
        check_ws(&ws).unwrap();

        // Sizes that are not multiples of the chunk or of the pattern's period.
        for http in [Http::H1, Http::H2c] {
            let len = 64 * 1024 * 1024 + 12_345;
            let down = l7client::download(app, http, &auth, len).await.unwrap();
            assert_eq!(down.bytes, len);
            let (digest, _) = l7client::upload(app, http, &auth, len).await.unwrap();
            check_upload(&digest, len).unwrap();
        }
        let empty = l7client::download(app, Http::H1, &auth, 0).await.unwrap();
        assert_eq!(empty.bytes, 0);
        // A byte count that is not a number is refused.
        let r = l7client::get_many(app, Http::H1, &auth, &["/bytes/lots"])
            .await
            .unwrap();
        assert_eq!(r[0].status, 400);
    });
}

/// Samples a process's VmRSS every 50 ms until dropped; keeps the peak.
struct RssWatch {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl RssWatch {
    fn start(pid: i32) -> RssWatch {
        let peak_kib = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, done) = (Arc::clone(&peak_kib), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch {
            peak_kib,
            stop,
            thread: Some(thread),
        }
    }

    fn peak_kib(&self) -> u64 {
        self.peak_kib.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sum of the waypoint's `istio_requests_total` series carrying every label given.
fn requests_total(metrics: &str, labels: &[(&str, &str)]) -> f64 {
    (metrics.lines())
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| (labels.iter()).all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The one pod of bookinfo app `app`, as `namespace/name`.
fn app_pod(m: &MeshLab, app: &str) -> String {
    (m.lab.state().pods.iter())
        .find(|p| p.namespace == "bookinfo" && p.labels.get("app").map(String::as_str) == Some(app))
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .unwrap_or_else(|| panic!("no bookinfo pod of app {app}"))
}

#[test]
fn protocols_and_gigabytes_through_the_waypoint() {
    let m = MeshLab::up_example("bookinfo", 2);
    let client = app_pod(&m, "productpage");
    let details = addr(m.vip("details"), 9080);
    let auth = "details.bookinfo.svc.cluster.local:9080";
    let waypoint = m.pid(&lab::waypoints::process_name("bookinfo", "waypoint"));
    let idle_kib = rss_kib(waypoint).unwrap_or(0);
    let limit = Duration::from_secs(30);
    let mut outcomes: Vec<(&str, Result<String, String>)> = Vec::new();

    let paths = ["/one", "/status/503", "/three?q=1", "/four"];
    for (what, http, version) in [
        ("HTTP/1.1 keep-alive", Http::H1, "HTTP/1.1"),
        ("HTTP/2 h2c", Http::H2c, "HTTP/2"),
    ] {
        let got = l7client::in_pod(&m.lab, &client, limit, move || async move {
            l7client::get_many(details, http, auth, &paths).await
        })
        .and_then(|r| check_replies(&r, &paths, version, "details-v1", true));
        outcomes.push((
            what,
            got.map(|()| format!("{} requests on one connection", paths.len())),
        ));
    }

    let message = Bytes::from_static(b"\x0a\x0bgrpc payload through the waypoint");
    let calls = [
        (grpc::UNARY, message.clone()),
        (grpc::STREAM, message.clone()),
        ("/echo.Echo/Nope", message.clone()),
    ];
    let got = l7client::in_pod(&m.lab, &client, limit, || {
        l7client::grpc_calls(details, auth, &calls)
    })
    .and_then(|r| check_grpc(&r, &message));
    outcomes.push((
        "gRPC unary + server stream",
        got.map(|()| "grpc-status 0".into()),
    ));

    let got = l7client::in_pod(&m.lab, &client, limit, || async {
        l7client::websocket_session(details, auth, &ws_frames()).await
    })
    .and_then(|s| check_ws(&s));
    outcomes.push((
        "WebSocket echo",
        got.map(|()| "frames echoed, closed".into()),
    ));

    let rss = RssWatch::start(waypoint);
    let big = Duration::from_secs(600);
    let shown = |t: Transfer| format!("{} bytes, {:.0} MiB/s", t.bytes, t.mib_per_s());
    // Both HTTPs: the waypoint's HTTP/1.1 and HTTP/2 paths have their own buffering (HTTP/2
    // flow-control windows on both of its sides).
    for (down, up, http) in [
        (
            "1 GiB download (HTTP/1.1)",
            "1 GiB upload (HTTP/1.1)",
            Http::H1,
        ),
        (
            "1 GiB download (HTTP/2)",
            "1 GiB upload (HTTP/2)",
            Http::H2c,
        ),
    ] {
        let got = l7client::in_pod(&m.lab, &client, big, || {
            l7client::download(details, http, auth, GIB)
        });
        outcomes.push((down, got.map(shown)));
        let got = l7client::in_pod(&m.lab, &client, big, || {
            l7client::upload(details, http, auth, GIB)
        })
        .and_then(|(digest, t)| check_upload(&digest, GIB).map(|()| shown(t)));
        outcomes.push((up, got));
    }
    let peak = rss.peak_kib();
    drop(rss);
    let bounded = if peak < WAYPOINT_RSS_LIMIT_KIB {
        Ok(format!("peak {peak} KiB (idle {idle_kib} KiB)"))
    } else {
        Err(format!(
            "peak {peak} KiB (idle {idle_kib} KiB), limit {WAYPOINT_RSS_LIMIT_KIB} KiB"
        ))
    };
    outcomes.push(("waypoint RSS during the transfers", bounded));

    // The waypoint reports what it served: HTTP and gRPC requests to details.
    let metrics = m.waypoint_metrics("bookinfo", "waypoint");
    let to_details = [
        ("reporter", "waypoint"),
        ("destination_service_name", "details"),
    ];
    let http = requests_total(
        &metrics,
        &[to_details[0], to_details[1], ("request_protocol", "http")],
    );
    let grpc_ok = requests_total(
        &metrics,
        &[
            to_details[0],
            to_details[1],
            ("request_protocol", "grpc"),
            ("grpc_response_status", "0"),
        ],
    );
    // Exactly what this test sent: 4 + 4 GETs, the WebSocket upgrade, 4 transfers; the unary
    // and the stream call (the unknown method's status is 12).
    let counted = if http == 13.0 && grpc_ok == 2.0 {
        Ok(format!("{http} HTTP, {grpc_ok} gRPC OK"))
    } else {
        Err(format!(
            "{http} HTTP and {grpc_ok} gRPC OK requests to details in:\n{metrics}"
        ))
    };
    outcomes.push(("waypoint metrics", counted));

    for (what, outcome) in &outcomes {
        match outcome {
            Ok(detail) => eprintln!("ok     {what}: {detail}"),
            Err(e) => eprintln!("FAILED {what}: {e}"),
        }
    }
    let failed: Vec<&str> = (outcomes.iter())
        .filter(|(_, o)| o.is_err())
        .map(|(w, _)| *w)
        .collect();
    assert!(
        failed.is_empty(),
        "failed through the waypoint: {failed:?} (logs in {})",
        m.lab.run_dir().display()
    );
}
