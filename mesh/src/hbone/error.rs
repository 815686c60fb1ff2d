//! Errors of HBONE tunnels, worded for the operator who has to fix them.

use std::net::SocketAddr;

/// Why a tunnel could not be opened or carried on.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to HBONE peer {addr} failed: {source} (is the peer's port 15008 reachable? a NetworkPolicy or firewall may block it)")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {addr} did not negotiate ALPN h2: it is not an HBONE endpoint")]
    NoH2 { addr: SocketAddr },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    H2Handshake {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("handshake with {addr} timed out after {secs:.1}s")]
    Timeout { addr: SocketAddr, secs: f64 },
    #[error("no TLS configuration for this tunnel: {0}")]
    TlsConfig(String),
    #[error("HBONE peer refused the tunnel to {authority} with status {status}{}", reason_suffix(.reason))]
    Refused {
        authority: String,
        status: http::StatusCode,
        reason: Option<String>,
    },
    #[error("HTTP/2 stream error: {0}")]
    Stream(#[from] h2::Error),
    #[error("invalid tunnel request: {0}")]
    BadRequest(String),
    #[error("the HBONE connection to {addr} closed before the tunnel was established")]
    ConnectionClosed { addr: SocketAddr },
}

fn reason_suffix(reason: &Option<String>) -> String {
    match reason {
        Some(r) => format!(": {r}"),
        None => String::new(),
    }
}

impl HboneError {
    /// The HTTP status a refused tunnel was answered with.
    pub fn status(&self) -> Option<http::StatusCode> {
        match self {
            HboneError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}
