//! Request headers the waypoint reads or writes: the request's authority, `x-request-id`, W3C
//! `traceparent`, and the `Location` of a redirect.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request};
use hyper::body::Incoming;
use rand::Rng;

use crate::l7::routes::rewrite_path;

pub fn authority_of<B>(req: &Request<B>) -> Option<String> {
    req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
}

/// `x-request-id`: kept when the client sent one, generated otherwise.
pub fn ensure_request_id(headers: &mut HeaderMap) -> String {
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        return id.to_string();
    }
    // A random (version 4, RFC 4122 variant) UUID.
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", v);
    }
    id
}

/// W3C trace context: the waypoint is a hop of the trace, so it keeps the trace id and sampling
/// and gives the request a new parent id; without a valid `traceparent` it starts a trace.
pub fn propagate_trace(headers: &mut HeaderMap) {
    let mut r = rand::rng();
    let span: u64 = r.random::<u64>() | 1;
    let value = match headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        Some((trace, flags)) => format!("00-{trace}-{span:016x}-{flags}"),
        None => {
            let trace: u128 = r.random::<u128>() | 1;
            format!("00-{trace:032x}-{span:016x}-01")
        }
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("traceparent", v);
    }
}

fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    (version == "00"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace != "0".repeat(32)
        && parent != "0".repeat(16))
    .then(|| (trace.to_string(), flags.to_string()))
}

pub fn redirect_location(
    req: &Request<Incoming>,
    authority: &str,
    r: &crate::l7::routes::Redirect,
    matched_prefix: Option<&str>,
) -> String {
    let scheme = r.scheme.clone().unwrap_or_else(|| "http".into());
    let (host, orig_port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
            (h.to_string(), Some(p.to_string()))
        }
        _ => (authority.to_string(), None),
    };
    let host = r.hostname.clone().unwrap_or(host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p.to_string()),
        // A scheme change drops the old port: the new scheme's default applies.
        (None, Some(_)) => None,
        (None, None) => orig_port,
    };
    let path = match &r.path {
        Some(p) => rewrite_path(req.uri().path(), p, matched_prefix),
        None => req.uri().path().to_string(),
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let default_port = (scheme == "http" && port.as_deref() == Some("80"))
        || (scheme == "https" && port.as_deref() == Some("443"));
    match port {
        Some(p) if !default_port => format!("{scheme}://{host}:{p}{path}{query}"),
        _ => format!("{scheme}://{host}{path}{query}"),
    }
}
