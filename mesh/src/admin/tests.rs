use super::*;

struct Fake;

impl AdminSource for Fake {
    async fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({"config": {"version": 7}})
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
    assert_eq!(dump["config"]["version"], 7);
}

#[tokio::test]
async fn logging_reloads_or_says_why_not() {
    let without = admin(None);
    let r = route(&without, Endpoint::Admin, get("/logging?level=debug")).await;
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    let reload: LogReload = Box::new(|level: &str| {
        if level == "debug" {
            Ok(())
        } else {
            Err("no such level".into())
        }
    });
    let with = admin(Some(reload));
    let r = route(&with, Endpoint::Admin, get("/logging?level=debug")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = route(&with, Endpoint::Admin, get("/logging?level=loud")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(body(r).await.contains("no such level"));
    let r = route(&with, Endpoint::Admin, get("/logging")).await;
    assert!(body(r).await.contains("level="));
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
