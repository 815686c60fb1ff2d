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

/// Lower-case hex digits, for writing ids into fixed buffers.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lower-case hex into `out` (twice their length).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// `x-request-id`: kept when the client sent one, generated otherwise. The value comes back
/// as a header value, which shares its bytes with the header's.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get("x-request-id").filter(|v| v.to_str().is_ok()) {
        return id.clone();
    }
    // A random (version 4, RFC 4122 variant) UUID, written in place: this runs for most
    // requests, and formatting byte by byte allocated a string per byte.
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut id = [b'-'; 36];
    hex_into(&mut id[0..8], &bytes[0..4]);
    hex_into(&mut id[9..13], &bytes[4..6]);
    hex_into(&mut id[14..18], &bytes[6..8]);
    hex_into(&mut id[19..23], &bytes[8..10]);
    hex_into(&mut id[24..36], &bytes[10..16]);
    let v = HeaderValue::from_bytes(&id).expect("hex digits and dashes are a valid header value");
    headers.insert("x-request-id", v.clone());
    v
}

/// W3C trace context: the waypoint is a hop of the trace, so it keeps the trace id and sampling
/// and gives the request a new parent id; without a valid `traceparent` it starts a trace.
pub fn propagate_trace(headers: &mut HeaderMap) {
    let mut r = rand::rng();
    let span: u64 = r.random::<u64>() | 1;
    // `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, written in place.
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let kept = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    match kept {
        Some((trace, flags)) => {
            value[3..35].copy_from_slice(trace.as_bytes());
            value[53..55].copy_from_slice(flags.as_bytes());
        }
        None => {
            let trace: u128 = r.random::<u128>() | 1;
            hex_into(&mut value[3..35], &trace.to_be_bytes());
        }
    }
    hex_into(&mut value[36..52], &span.to_be_bytes());
    let v =
        HeaderValue::from_bytes(&value).expect("hex digits and dashes are a valid header value");
    headers.insert("traceparent", v);
}

/// The trace id and flags of a valid version-00 `traceparent`.
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
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
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    (version == "00"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && !zero(trace)
        && !zero(parent))
    .then_some((trace, flags))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_kept_or_a_v4_uuid() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut h), "abc");

        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(h.get("x-request-id"), Some(&id));
        let id = id.to_str().unwrap();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(id
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(&groups[2][..1], "4");
        assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn traceparent_keeps_trace_and_flags_with_a_new_parent() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = "00f067aa0ba902b7";
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_str(&format!("00-{trace}-{parent}-00")).unwrap(),
        );
        propagate_trace(&mut h);
        let v = h.get("traceparent").unwrap().to_str().unwrap();
        let parts: Vec<&str> = v.split('-').collect();
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], trace);
        assert_eq!(parts[2].len(), 16);
        assert_ne!(parts[2], parent);
        assert_eq!(parts[3], "00");
    }

    #[test]
    fn invalid_traceparent_starts_a_sampled_trace() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-zz-00-01"));
        propagate_trace(&mut h);
        let v = h.get("traceparent").unwrap().to_str().unwrap();
        assert!(parse_traceparent(v).is_some(), "{v}");
        assert!(v.ends_with("-01"));
        assert_eq!(v.len(), 55);
    }
}
