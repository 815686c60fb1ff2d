//! HTTP/1.1 and HTTP/2 (h2c) serving: every request gets an [`EchoReply`] as JSON.
//! `/status/NNN` answers with status NNN and `/delay/MS` after MS milliseconds, so L7 tests can
//! provoke errors and timeouts. Streams of any size
//! without buffering them: `GET /bytes/N` sends N bytes of the pattern, `POST /digest` answers
//! its body's length and SHA-256 ([`DigestReply`](super::pattern::DigestReply)). `GET /ws`
//! with `Upgrade: websocket` becomes a WebSocket echo, and HTTP/2 requests with
//! `content-type: application/grpc` are gRPC calls ([`super::grpc`]).
//!
//! Those endpoints are the app's own. Any other request is the app's business, shaped by its
//! environment ([`super::env`]): it waits `ECHO_DELAY_MS`, then either fails with
//! `ECHO_FAIL_STATUS` (its share counted by [`FailShare`](super::fail::FailShare)) or calls
//! its next hops (`ECHO_CALLS`, [`super::calls`]) and answers 200 whatever they answered
//! (as bookinfo's productpage renders with an error where a part is missing); the reply
//! lists each hop's outcome. `ECHO_STATIC`'s path serves its fixed document to GET and HEAD.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::EchoBody;
use super::pattern::Digest;
use super::reply::EchoReply;
use super::resolve::Resolver;
use super::sniff::Protocol;
use super::{calls, grpc, websocket, EchoConfig};

/// The endpoints of one connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnAddrs {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// Serves one HTTP connection of the given protocol until the client is done.
pub async fn serve<S>(
    io: S,
    protocol: Protocol,
    config: Arc<EchoConfig>,
    addrs: ConnAddrs,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let config = Arc::clone(&config);
        async move { Ok::<_, Infallible>(answer(req, &config, addrs).await) }
    });
    let io = TokioIo::new(io);
    match protocol {
        Protocol::Http2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    config: &EchoConfig,
    addrs: ConnAddrs,
) -> Response<EchoBody> {
    if grpc::is_grpc(&req) {
        return grpc::answer(req).await;
    }
    let path = req.uri().path();
    if path == websocket::PATH && websocket::is_upgrade(&req) {
        return websocket::answer(req);
    }
    if req.method() == http::Method::GET {
        if let Some(n) = path.strip_prefix("/bytes/") {
            return match n.parse::<u64>() {
                Ok(n) => binary(EchoBody::pattern(n), StatusCode::OK),
                Err(_) => binary(
                    EchoBody::full(format!("not a byte count: {n:?}\n")),
                    StatusCode::BAD_REQUEST,
                ),
            };
        }
    }
    if req.method() == http::Method::POST && path == "/digest" {
        return digest(req.into_body()).await;
    }
    if let Some(doc) = &config.app.static_doc {
        if path == doc.path && matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            let mut resp = Response::new(EchoBody::full(doc.body.clone()));
            if let Ok(v) = http::HeaderValue::from_str(&doc.content_type) {
                resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            return resp;
        }
    }
    // `/delay/MS` and `/status/N` are the app's own test endpoints: never delayed, failed or
    // fanned out by its environment.
    let own = requested_delay(path).is_some() || requested_status(path).is_some();
    // `/delay/MS`: answer after MS milliseconds (at most a minute), for timeout and
    // disconnect scenarios; the echo reply follows as for any path.
    if let Some(ms) = requested_delay(path) {
        tokio::time::sleep(ms).await;
    }
    if !own && !config.app.delay.is_zero() {
        tokio::time::sleep(config.app.delay).await;
    }
    let (parts, mut body) = req.into_parts();
    // Counted as it streams, never held: a gigabyte upload costs no memory. A body that
    // breaks off mid-way is still answered: the client learns what arrived.
    let mut body_bytes = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    let mut reply = EchoReply {
        authority,
        pod: config.pod.clone(),
        namespace: config.namespace.clone(),
        version: config.version.clone(),
        node: config.node.clone(),
        protocol: match parts.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
        .to_string(),
        method: parts.method.to_string(),
        path,
        source: addrs.peer,
        destination: addrs.local,
        headers,
        body_bytes,
        calls: Vec::new(),
    };
    let mut status = requested_status(parts.uri.path()).unwrap_or(StatusCode::OK);
    if !own {
        if config.fail_count.next_fails(config.app.fail_percent) {
            status = config.app.fail_status;
        } else if !config.app.calls.is_empty() {
            let resolver = Resolver::load(&config.resolv_conf_path());
            reply.calls = calls::call_all(
                &config.app.calls,
                &parts.headers,
                config.app.call_timeout,
                &resolver,
            )
            .await;
        }
    }
    // Serialising plain data with string keys cannot fail.
    let mut json = serde_json::to_vec(&reply).expect("echo reply serialises");
    json.push(b'\n');
    json_response(json, status)
}

fn json_response(json: Vec<u8>, status: StatusCode) -> Response<EchoBody> {
    let mut resp = Response::new(EchoBody::full(json));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn binary(body: EchoBody, status: StatusCode) -> Response<EchoBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// `POST /digest`: the body's length and SHA-256, computed as it streams in; 400 when it
/// breaks off (the figures then cover what arrived).
async fn digest(mut body: Incoming) -> Response<EchoBody> {
    let mut digest = Digest::default();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    digest.update(data);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "digest body broke off");
                complete = false;
                break;
            }
        }
    }
    let reply = digest.finish(complete);
    // In the pod's log too: a mirror's answer goes nowhere, so tests read what it received here.
    tracing::info!(bytes = reply.bytes, sha256 = %reply.sha256, complete = reply.complete, "digest");
    let status = if complete {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    // Plain data with string keys serialises.
    let mut json = serde_json::to_vec(&reply).expect("digest reply serialises");
    json.push(b'\n');
    json_response(json, status)
}

/// `/delay/250` → 250 ms, capped at a minute.
fn requested_delay(path: &str) -> Option<std::time::Duration> {
    let ms: u64 = path
        .strip_prefix("/delay/")?
        .trim_end_matches('/')
        .parse()
        .ok()?;
    Some(std::time::Duration::from_millis(ms.min(60_000)))
}

/// `/status/503` → 503.
fn requested_status(path: &str) -> Option<StatusCode> {
    let code = path.strip_prefix("/status/")?;
    StatusCode::from_bytes(code.trim_end_matches('/').as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paths() {
        assert_eq!(
            requested_status("/status/503"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            requested_status("/status/204/"),
            Some(StatusCode::NO_CONTENT)
        );
        assert_eq!(requested_status("/status/abc"), None);
        assert_eq!(
            requested_delay("/delay/250"),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(
            requested_delay("/delay/99999999"),
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(requested_delay("/delay/x"), None);
        assert_eq!(requested_status("/"), None);
    }
}
