//! The echo app calling its next hops, on loopback: nested replies, propagated headers, and
//! each kind of failed hop.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use super::*;
use crate::echo::env::{self, AppEnv};
use crate::echo::EchoConfig;

/// Serves an echo app on loopback; its address.
async fn app(pod: &str, vars: &[(&str, String)]) -> SocketAddr {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let app =
        AppEnv::parse(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).unwrap();
    let config = Arc::new(EchoConfig {
        pod: pod.into(),
        app,
        ..EchoConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(crate::echo::handle(stream, Arc::clone(&config)));
        }
    });
    addr
}

fn hop(url: &str) -> NextHop {
    AppEnv::parse(|name| (name == env::CALLS).then(|| url.to_string()))
        .unwrap()
        .calls
        .remove(0)
}

#[tokio::test]
async fn a_request_yields_the_whole_call_graph() {
    let ratings = app("ratings", &[]).await;
    let reviews = app(
        "reviews",
        &[(env::CALLS, format!("http://{ratings}/ratings/0"))],
    )
    .await;
    let details = app("details", &[]).await;
    let productpage = app(
        "productpage",
        &[(
            env::CALLS,
            format!("http://{details}/details/0,http://{reviews}/reviews/0"),
        )],
    )
    .await;
    let mut incoming = HeaderMap::new();
    incoming.insert("x-request-id", HeaderValue::from_static("req-1"));
    incoming.insert("end-user", HeaderValue::from_static("jason"));
    incoming.insert("x-not-propagated", HeaderValue::from_static("1"));
    let resolver = Resolver::default();
    let top = call(
        &hop(&format!("http://{productpage}/productpage")),
        &incoming,
        Duration::from_secs(5),
        &resolver,
    )
    .await;
    assert_eq!(top.status, 200, "{top:?}");
    let page = top.reply.expect("productpage's reply");
    assert_eq!(page.pod, "productpage");
    assert_eq!(page.path, "/productpage");
    assert_eq!(page.headers.get("x-request-id").unwrap(), "req-1");
    let parts: Vec<(&str, u16)> = page
        .calls
        .iter()
        .map(|h| (h.reply.as_ref().unwrap().pod.as_str(), h.status))
        .collect();
    assert_eq!(parts, [("details", 200), ("reviews", 200)]);
    assert_eq!(page.calls[0].url, format!("http://{details}/details/0"));
    let reviews = page.calls[1].reply.as_ref().unwrap();
    assert_eq!(reviews.path, "/reviews/0");
    assert_eq!(reviews.authority, productpage_free(&page.calls[1].url));
    let ratings = reviews.calls[0].reply.as_ref().unwrap();
    assert_eq!(ratings.pod, "ratings");
    // Two hops down, the propagated headers are still there; others are not.
    assert_eq!(ratings.headers.get("x-request-id").unwrap(), "req-1");
    assert_eq!(ratings.headers.get("end-user").unwrap(), "jason");
    assert!(!reviews.headers.contains_key("x-not-propagated"));
    assert!(ratings.calls.is_empty());
}

/// `http://a:1/x` → `a:1`.
fn productpage_free(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn failed_hops_are_statuses_and_the_caller_still_answers() {
    let slow = app("slow", &[(env::DELAY_MS, "2000".into())]).await;
    let failing = app("failing", &[(env::FAIL_PERCENT, "100".into())]).await;
    // A port nothing listens on: bind one and close it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let front = app(
        "front",
        &[
            (
                env::CALLS,
                format!(
                    "http://{slow}/,http://{failing}/,http://{closed}/,http://{failing}/status/418"
                ),
            ),
            (env::CALL_TIMEOUT_MS, "300".into()),
        ],
    )
    .await;
    let top = call(
        &hop(&format!("http://{front}/")),
        &HeaderMap::new(),
        Duration::from_secs(5),
        &Resolver::default(),
    )
    .await;
    assert_eq!(top.status, 200, "{top:?}");
    let calls = top.reply.unwrap().calls;
    let statuses: Vec<u16> = calls.iter().map(|h| h.status).collect();
    // Timed out, failed by ECHO_FAIL_PERCENT, refused, and the app's own /status endpoint
    // (never failed by the environment).
    assert_eq!(statuses, [504, 503, 503, 418]);
    assert_eq!(calls[0].error.as_deref(), Some("no answer within 300 ms"));
    assert!(
        calls[0].millis >= 300 && calls[0].millis < 2000,
        "{:?}",
        calls[0]
    );
    assert_eq!(calls[1].reply.as_ref().unwrap().pod, "failing");
    assert!(
        calls[2].error.as_deref().unwrap().contains("connecting to"),
        "{:?}",
        calls[2]
    );
    assert!(calls[2].reply.is_none());
}

#[tokio::test]
async fn a_body_that_is_not_an_echo_reply_is_the_hops_error() {
    let text = app(
        "text",
        &[
            (env::STATIC, "/jwks".into()),
            (env::STATIC_BODY, "RBAC: access denied\nmore".into()),
            (env::STATIC_CONTENT_TYPE, "text/plain".into()),
        ],
    )
    .await;
    let h = call(
        &hop(&format!("http://{text}/jwks")),
        &HeaderMap::new(),
        Duration::from_secs(5),
        &Resolver::default(),
    )
    .await;
    assert_eq!(h.status, 200);
    assert_eq!(h.error.as_deref(), Some("RBAC: access denied"));
    assert!(h.reply.is_none());
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_unreachable() {
    let h = call(
        &hop("http://details:9080/"),
        &HeaderMap::new(),
        Duration::from_secs(5),
        &Resolver::parse("/etc/netns/x/resolv.conf", ""),
    )
    .await;
    assert_eq!(h.status, 503);
    assert_eq!(
        h.error.as_deref(),
        Some("cannot resolve details: no nameserver in /etc/netns/x/resolv.conf")
    );
}
