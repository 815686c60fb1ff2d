//! What the xDS client reports about itself: for the readiness probe and the admin page.

use serde::Serialize;

/// A snapshot of the client's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct XdsStatus {
    /// The server this client talks to.
    pub address: String,
    /// A stream to the server is open now.
    pub connected: bool,
    /// Every subscribed type has had a response applied (ever, not necessarily on the current
    /// stream): the local config is complete enough to serve. Never goes back to `false`, since
    /// the last good config is kept while the server is away.
    pub synced: bool,
    /// Streams opened since start; more than one means the client has reconnected.
    pub connections: u64,
    /// Per subscribed type, in subscription order.
    pub types: Vec<TypeStatus>,
    /// The most recent connection or stream failure (kept after a reconnect, as history).
    pub last_error: Option<String>,
    /// The most recent response this client refused.
    pub last_nack: Option<Nack>,
    /// Streams ended, by Istio's termination reason (`ConnectionError`: no connection;
    /// `Error`: the stream failed with a gRPC status; `Reconnect`: the server closed it
    /// cleanly and the client connects again), for `istio_xds_connection_terminations_total`.
    pub terminations: std::collections::BTreeMap<&'static str, u64>,
    /// Bytes of resources received in responses, for `istio_xds_message_bytes_total`.
    pub message_bytes: u64,
}

/// The state of one subscribed type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// e.g. `type.googleapis.com/istio.workload.Address`.
    pub type_url: String,
    /// How many resources (with a version) the client holds.
    pub resources: usize,
    /// A response of this type has been applied.
    pub synced: bool,
    /// Responses applied and ACKed.
    pub acks: u64,
    /// Responses refused and NACKed.
    pub nacks: u64,
    /// The server's `system_version_info` of the last applied response (informational).
    pub system_version: String,
}

/// A refused response: what went back to the server as `error_detail`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Nack {
    pub type_url: String,
    pub nonce: String,
    pub message: String,
}
