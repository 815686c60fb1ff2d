//! HTTP/1.1 and HTTP/2 (h2c) serving: every request gets an [`EchoReply`] as JSON.
//! `/status/NNN` answers with status NNN, so L7 tests can provoke errors.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::reply::EchoReply;
use super::sniff::Protocol;
use super::EchoConfig;

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
                .await
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    config: &EchoConfig,
    addrs: ConnAddrs,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // A body that breaks off mid-way is still answered: the client learns what arrived.
    let body_bytes = match body.collect().await {
        Ok(b) => b.to_bytes().len() as u64,
        Err(_) => 0,
    };
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
    let reply = EchoReply {
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
    };
    let status = requested_status(parts.uri.path()).unwrap_or(StatusCode::OK);
    // Serialising plain data with string keys cannot fail.
    let mut json = serde_json::to_vec(&reply).expect("echo reply serialises");
    json.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
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
        assert_eq!(requested_status("/"), None);
    }
}
