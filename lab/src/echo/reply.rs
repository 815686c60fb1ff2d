//! The JSON body every HTTP answer of the echo app carries: who answered and what it saw.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What the echo app answers to an HTTP request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    /// The answering pod.
    pub pod: String,
    pub namespace: String,
    /// The pod's `version` label (empty if none).
    pub version: String,
    /// The node the pod runs on.
    pub node: String,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2`.
    pub protocol: String,
    pub method: String,
    /// The request's authority (`:authority` in HTTP/2, `Host` in HTTP/1).
    pub authority: String,
    /// Path and query, as requested.
    pub path: String,
    /// The peer address the app saw: the client pod, unless something in between hid it.
    pub source: SocketAddr,
    /// The local address the connection arrived on.
    pub destination: SocketAddr,
    /// Request headers; repeated headers are joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// Size of the request body.
    pub body_bytes: u64,
}
