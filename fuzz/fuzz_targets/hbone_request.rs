//! The HBONE CONNECT request checks (`mesh::hbone::inspect`, `ConnectRequest`'s header
//! readers, `build_connect`): what a destination does with a peer's request before any handler.
//!
//! Input: byte 0 picks the method, then NUL-separated fields: the URI (or authority), then
//! header name / value pairs (`forwarded`, `baggage`, `traceparent`, ... as the fuzzer finds
//! them). Checks that a request that passes inspection has a port, that what a client builds
//! for an authority inspects as a CONNECT to that same authority, and that the header readers
//! never fail.
#![no_main]

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use libfuzzer_sys::fuzz_target;
use mesh::hbone::{build_connect, inspect, ConnectRequest, Inspection};
use mesh::Identity;

const METHODS: [&[u8]; 5] = [b"CONNECT", b"GET", b"POST", b"connect", b"PRI"];

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else {
        return;
    };
    let method = match usize::from(*selector) {
        i if i < METHODS.len() => Method::from_bytes(METHODS[i]).expect("a valid method"),
        _ => Method::CONNECT,
    };
    let mut fields = rest.split(|b| *b == 0);
    let uri = fields.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }

    // The server's path: h2 hands a request with a parsed URI; an unparsable one never arrives.
    if let Ok(uri) = http::Uri::try_from(uri) {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(())
            .expect("method and URI are valid");
        *req.headers_mut() = headers.clone();
        match inspect(&req) {
            Inspection::Connect(authority) => {
                assert_eq!(method, Method::CONNECT);
                assert!(
                    authority.port_u16().is_some(),
                    "a CONNECT without port passed"
                );
                let connect = ConnectRequest {
                    authority,
                    peer_identity: Identity::new("cluster.local", "ns", "sa")
                        .expect("a valid identity"),
                    peer_addr: SocketAddr::from(([10, 0, 0, 1], 40000)),
                    local_addr: SocketAddr::from(([10, 0, 0, 2], 15008)),
                    headers: headers.clone(),
                };
                let _ = connect.target_addr();
                let _ = connect.forwarded_for();
                if let Some(host) = connect.forwarded_host() {
                    assert!(!host.is_empty());
                }
            }
            Inspection::BadConnect(why) => {
                assert_eq!(method, Method::CONNECT);
                assert!(!why.is_empty());
            }
            Inspection::NotConnect(m) => assert_ne!(m, Method::CONNECT),
        }
    }

    // The client's path: whatever authority it accepts to build, its own server takes.
    if let Ok(authority) = std::str::from_utf8(uri) {
        if let Ok(req) = build_connect(authority, &headers) {
            match inspect(&req) {
                Inspection::Connect(a) => assert_eq!(a.as_str(), authority),
                other => panic!("built CONNECT to {authority:?} inspects as {other:?}"),
            }
        }
    }
});
