use super::*;

struct Fake;

impl AdminSource for Fake {
    async fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({"workloads": [], "version": 7})
    }

    fn metrics(&self) -> String {
        "up 1\n".to_string()
    }
}

fn admin(log_reload: Option<LogReload>) -> Admin<Fake> {
    Admin {
        source: Fake,
        ready: Readiness::default(),
        log_reload,
        quit: Arc::new(Notify::new()),
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

async fn body(r: Response<Full<Bytes>>) -> String {
    use http_body_util::BodyExt;
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn readiness_follows_the_flag() {
    let admin = admin(None);
    let r = route(&admin, Endpoint::Readiness, get("/healthz/ready")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    admin.ready.set(true);
    let r = route(&admin, Endpoint::Readiness, get("/healthz/ready")).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Each listener serves its own routes only.
    let r = route(&admin, Endpoint::Admin, get("/healthz/ready")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_and_config_dump_come_from_the_source() {
    let admin = admin(None);
    for path in ["/metrics", "/stats/prometheus"] {
        let r = route(&admin, Endpoint::Stats, get(path)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "up 1\n");
    }
    let r = route(&admin, Endpoint::Admin, get("/config_dump")).await;
    assert_eq!(r.headers()[http::header::CONTENT_TYPE], "application/json");
    let dump: serde_json::Value = serde_json::from_str(&body(r).await).unwrap();
    assert_eq!(dump["version"], 7);
}

#[tokio::test]
async fn stats_port_serves_the_dump_read_only() {
    let (reload, seen) = recording_reload();
    let admin = admin(Some(reload));
    let r = route(&admin, Endpoint::Stats, get("/config_dump")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let dump: serde_json::Value = serde_json::from_str(&body(r).await).unwrap();
    assert_eq!(dump["version"], 7);
    // Nothing that changes the proxy answers there.
    for (method, path) in [
        (Method::GET, "/logging?level=debug"),
        (Method::POST, "/logging?level=debug"),
        (Method::POST, "/quitquitquit"),
        (Method::POST, "/config_dump"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let r = route(&admin, Endpoint::Stats, req).await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{path} on the stats port"
        );
    }
    assert!(
        seen.lock().is_empty(),
        "the log filter changed: {:?}",
        seen.lock()
    );
    let quit = admin.quit.notified();
    tokio::pin!(quit);
    assert!(
        futures_poll_once(quit.as_mut()).await.is_none(),
        "/quitquitquit on the stats port notified the drain"
    );
}

/// Polls a future once: `Some` if it was ready.
async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// A reload that records every filter it is asked to install and refuses none.
fn recording_reload() -> (LogReload, Arc<parking_lot::Mutex<Vec<String>>>) {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = seen.clone();
    let reload = LogReload::new("info", move |filter: &str| {
        log.lock().push(filter.to_string());
        Ok(())
    });
    (reload, seen)
}

/// One HTTP/1.1 request over a real socket; the status code and body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test]
async fn logging_takes_istioctls_syntax_on_a_real_socket() {
    let (reload, seen) = recording_reload();
    let admin = Arc::new(admin(Some(reload)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, admin, Endpoint::Admin));

    // istioctl's form, as `istioctl ztunnel-config log --level access:debug` sends it.
    let (status, body) = http(addr, "POST", "/logging?level=access%3Adebug").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "current log level is info,access=debug\n")
    );
    // Another target keeps the first; a listing shows both.
    let (status, _) = http(addr, "POST", "/logging?level=mesh::hbone:trace").await;
    assert_eq!(status, 200);
    let (status, body) = http(addr, "GET", "/logging").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "current log level is info,access=debug,mesh::hbone=trace\n"
    );
    // A bare level sets everything.
    let (_, body) = http(addr, "POST", "/logging?level=warn").await;
    assert_eq!(body, "current log level is warn\n");
    // reset: back to the start, then the level given with it.
    let (_, body) = http(addr, "POST", "/logging?reset&level=access:debug").await;
    assert_eq!(body, "current log level is info,access=debug\n");
    let (_, body) = http(addr, "POST", "/logging?reset").await;
    assert_eq!(body, "current log level is info\n");
    assert_eq!(
        *seen.lock(),
        [
            "info,access=debug",
            "info,access=debug,mesh::hbone=trace",
            "warn",
            "info,access=debug",
            "info"
        ]
    );

    // Never silently ignored: a bad level, target or parameter is a 400 that names it, and
    // nothing is installed.
    for (path, names) in [
        ("/logging?level=access:loud", "\"loud\" is not a level"),
        ("/logging?level=:debug", "empty"),
        ("/logging?lvl=debug", "unknown parameter \"lvl\""),
    ] {
        let (status, body) = http(addr, "POST", path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(names), "{path}: {body}");
        assert!(body.contains("usage:"), "{path}: {body}");
    }
    assert_eq!(seen.lock().len(), 5);
}

#[tokio::test]
async fn logging_says_when_the_process_cannot_change_it() {
    let without = admin(None);
    let r = route(&without, Endpoint::Admin, get("/logging?level=debug")).await;
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    let refusing = admin(Some(LogReload::new("info", |_: &str| {
        Err("the subscriber is gone".to_string())
    })));
    let r = route(&refusing, Endpoint::Admin, get("/logging?level=debug")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(body(r).await.contains("the subscriber is gone"));
}

#[tokio::test]
async fn quitquitquit_needs_post_and_notifies() {
    let admin = admin(None);
    let r = route(&admin, Endpoint::Admin, get("/quitquitquit")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let post = Request::post("/quitquitquit").body(()).unwrap();
    let r = route(&admin, Endpoint::Admin, post).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The notification is kept until someone waits for it.
    tokio::time::timeout(Duration::from_secs(1), admin.quit.notified())
        .await
        .expect("/quitquitquit notified");
}

#[tokio::test]
async fn serves_over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let admin = Arc::new(admin(None));
    admin.ready.set(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, admin, Endpoint::Readiness));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ready\n"), "{response}");
}

#[test]
fn certificate_times_are_rfc3339() {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(86_400);
    assert_eq!(rfc3339(t), "1970-01-02T00:00:00Z");
}
