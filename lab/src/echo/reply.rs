//! The JSON body every HTTP answer of the echo app carries: who answered, what it saw, and
//! what its next hops (`ECHO_CALLS`) answered, nested, so one reply is the whole call graph.

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
    /// The next hops this request made, in order (absent when the app has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Hop>,
}

/// One next-hop call and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// The URL as configured.
    pub url: String,
    /// The callee's status; when it gave none: 504 if the call timed out, 503 if it could not
    /// be made (name lookup, connection), 502 if the answer broke off or was not HTTP.
    pub status: u16,
    /// The callee's own reply, when it answered with one (its `calls` nested in turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Box<EchoReply>>,
    /// Why there is no reply: the failure, or the start of a body that is not an echo reply
    /// (a proxy's `RBAC: access denied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the call took, in milliseconds.
    pub millis: u64,
}
