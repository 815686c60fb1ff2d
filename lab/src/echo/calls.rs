//! The echo app's next hops (`ECHO_CALLS`): per request, a GET to each configured URL in
//! order over HTTP/1.1, from the pod like any app's call (the name looked up through the pod's
//! resolver, so the mesh captures the connection), with the headers Istio's bookinfo
//! propagates, each under a time limit. Each outcome becomes a [`Hop`] of the reply.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::env::NextHop;
use super::reply::{EchoReply, Hop};
use super::resolve::Resolver;

/// Headers copied from the incoming request to every next hop: the trace context in its
/// several encodings (the mesh reports spans, but only the app can join a request to the calls
/// it makes), `x-request-id`, and what bookinfo passes on for routing and auth (`end-user`,
/// `user-agent`, `cookie`, `authorization`).
pub const PROPAGATED: [&str; 16] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "sw8",
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
];

/// A reply larger than this is not an echo reply worth nesting.
const MAX_REPLY: usize = 1 << 20;
/// How much of a body that is not an echo reply goes into the hop's `error`.
const MAX_ERROR_TEXT: usize = 200;

/// Calls every hop in order (each waits for the one before: as a page renders its parts).
pub async fn call_all(
    hops: &[NextHop],
    incoming: &HeaderMap,
    timeout: Duration,
    resolver: &Resolver,
) -> Vec<Hop> {
    let mut out = Vec::with_capacity(hops.len());
    for hop in hops {
        out.push(call(hop, incoming, timeout, resolver).await);
    }
    out
}

/// One call and its outcome; never an error: a failure is the hop's status.
pub async fn call(
    hop: &NextHop,
    incoming: &HeaderMap,
    timeout: Duration,
    resolver: &Resolver,
) -> Hop {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, exchange(hop, incoming, resolver)).await;
    let (status, reply, error) = match outcome {
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            None,
            Some(format!("no answer within {} ms", timeout.as_millis())),
        ),
        Ok(Err(CallError::Unreachable(e))) => (StatusCode::SERVICE_UNAVAILABLE, None, Some(e)),
        Ok(Err(CallError::Broken(e))) => (StatusCode::BAD_GATEWAY, None, Some(e)),
        Ok(Ok((status, body))) => match serde_json::from_slice::<EchoReply>(&body) {
            Ok(reply) => (status, Some(Box::new(reply)), None),
            Err(_) => (status, None, Some(start_of(&body))),
        },
    };
    if status.is_server_error() {
        tracing::info!(url = %hop.url, status = status.as_u16(), error = ?error, "next hop failed");
    }
    Hop {
        url: hop.url.clone(),
        status: status.as_u16(),
        reply,
        error,
        millis: started.elapsed().as_millis() as u64,
    }
}

/// Why a call got no HTTP answer.
enum CallError {
    /// Nothing reached the callee: the name or the connection failed.
    Unreachable(String),
    /// The exchange began and broke.
    Broken(String),
}

async fn exchange(
    hop: &NextHop,
    incoming: &HeaderMap,
    resolver: &Resolver,
) -> Result<(StatusCode, Bytes), CallError> {
    let ip = resolver
        .lookup(&hop.host)
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    let stream = tokio::net::TcpStream::connect((ip, hop.port))
        .await
        .map_err(|e| CallError::Unreachable(format!("connecting to {ip}:{}: {e}", hop.port)))?;
    let _ = stream.set_nodelay(true);
    let broken = |e: hyper::Error| CallError::Broken(format!("{}: {e}", hop.authority));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(broken)?;
    // The connection's task ends with the exchange (the sender is dropped below).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::get(hop.path.as_str())
        .header(http::header::HOST, hop.authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| CallError::Broken(format!("{}: bad request: {e}", hop.url)))?;
    for name in PROPAGATED {
        for value in incoming.get_all(name) {
            request.headers_mut().append(name, value.clone());
        }
    }
    let response = sender.send_request(request).await.map_err(broken)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_REPLY)
        .collect()
        .await
        .map_err(|e| CallError::Broken(format!("{}: reading the body: {e}", hop.authority)))?
        .to_bytes();
    Ok((status, body))
}

/// The first line of a body, shortened, for a hop's `error`.
fn start_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or_default().trim();
    let mut end = line.len().min(MAX_ERROR_TEXT);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

#[cfg(test)]
#[path = "calls_tests.rs"]
mod tests;
