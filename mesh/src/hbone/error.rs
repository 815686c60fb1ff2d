//! Errors of HBONE tunnels, worded for the operator who has to fix them, and classified for
//! the code that reacts to them: which side failed ([`Side`]), whether opening the tunnel
//! again may succeed ([`HboneError::is_retryable`]) and Envoy's response flag for metrics
//! and access logs ([`HboneError::response_flag`]).

use std::net::SocketAddr;

use crate::tls::{find_tls_error, TlsError};

/// Why a tunnel could not be opened or carried on. Sides are named as the party holding the
/// error sees them: for the client that dialled (the pool), the HBONE peer is upstream; for
/// the server ([`HboneError::Inbound`]), the peer is downstream.
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
    /// Boxed: a `TlsError` is large, and every `Result` of the tunnel would carry its size.
    #[error("no TLS configuration for this tunnel: {0}")]
    TlsConfig(#[source] Box<TlsError>),
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
    /// A connection the server accepted did not become an HBONE connection.
    #[error("HBONE connection from {peer} closed during setup: {cause}")]
    Inbound {
        peer: SocketAddr,
        #[source]
        cause: InboundError,
    },
}

/// Why an accepted connection did not become an HBONE connection.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("reading the accepted socket failed: {0}")]
    Socket(#[source] std::io::Error),
    #[error("no TLS configuration to serve it: {0}")]
    TlsConfig(#[source] Box<TlsError>),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("peer did not negotiate ALPN h2")]
    NoH2,
    #[error("peer presented no SPIFFE identity")]
    NoIdentity,
    #[error("HTTP/2 handshake failed: {0}")]
    H2Handshake(#[source] h2::Error),
    #[error("handshake timed out after {secs:.1}s")]
    Timeout { secs: f64 },
}

/// Who failed, as the party holding the error sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The peer that connected to us, or the request it made.
    Downstream,
    /// The peer we connected to, or the network on the way.
    Upstream,
    /// Our own setup: no certificate for the local identity, a bad TLS configuration, a
    /// request we built wrong.
    Internal,
    /// The peer's TLS identity did not verify (trust domain, issuer, validity, expected
    /// identity): a configuration problem on one side or an impostor, never transient.
    TlsPeer,
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

    /// The TLS refusal behind the error, if a certificate or identity check caused it.
    pub fn tls_error(&self) -> Option<&TlsError> {
        match self {
            HboneError::TlsConfig(e)
            | HboneError::Inbound {
                cause: InboundError::TlsConfig(e),
                ..
            } => Some(e),
            HboneError::Tls { source, .. }
            | HboneError::Inbound {
                cause: InboundError::Tls(source),
                ..
            } => find_tls_error(source),
            _ => None,
        }
    }

    /// Which side failed.
    pub fn side(&self) -> Side {
        if let Some(tls) = self.tls_error() {
            return tls_side(tls);
        }
        match self {
            HboneError::Connect { .. }
            | HboneError::Tls { .. }
            | HboneError::NoH2 { .. }
            | HboneError::H2Handshake { .. }
            | HboneError::Timeout { .. }
            | HboneError::Refused { .. }
            | HboneError::Stream(_)
            | HboneError::ConnectionClosed { .. } => Side::Upstream,
            HboneError::TlsConfig(_) | HboneError::BadRequest(_) => Side::Internal,
            HboneError::Inbound { cause, .. } => match cause {
                InboundError::Socket(_) | InboundError::TlsConfig(_) => Side::Internal,
                _ => Side::Downstream,
            },
        }
    }

    /// Whether opening the tunnel again (on a fresh connection, or to another endpoint) may
    /// succeed, with nothing having reached the destination app: connection failures,
    /// timeouts, a peer that went away before answering, a 503. Not a refusal by policy, a
    /// peer that does not speak HBONE, or a certificate that does not verify.
    pub fn is_retryable(&self) -> bool {
        if self.tls_error().is_some() {
            return false;
        }
        match self {
            HboneError::Connect { .. }
            | HboneError::Tls { .. }
            | HboneError::H2Handshake { .. }
            | HboneError::Timeout { .. }
            | HboneError::ConnectionClosed { .. } => true,
            HboneError::Refused { status, .. } => *status == http::StatusCode::SERVICE_UNAVAILABLE,
            // A refused stream was never processed (RFC 9113, 8.7); a connection going away or
            // failing under the stream may have delivered bytes, which only the caller knows.
            HboneError::Stream(e) => e.reason() == Some(h2::Reason::REFUSED_STREAM),
            HboneError::NoH2 { .. }
            | HboneError::TlsConfig(_)
            | HboneError::BadRequest(_)
            | HboneError::Inbound { .. } => false,
        }
    }

    /// Envoy's response flag for this failure, as Istio's metrics and access logs show it:
    /// `UF` the tunnel could not be set up, `UC` it ended before the answer, `DENY` the peer's
    /// policy refused it, `DPE` the downstream peer is not speaking HBONE.
    pub fn response_flag(&self) -> &'static str {
        match self {
            HboneError::Refused { status, .. } if *status == http::StatusCode::UNAUTHORIZED => {
                "DENY"
            }
            HboneError::Stream(_) | HboneError::ConnectionClosed { .. } => "UC",
            HboneError::Inbound { .. } => "DPE",
            _ => "UF",
        }
    }
}

/// Whose fault a TLS refusal is: checks of the peer's certificate blame the peer; a missing
/// local certificate or a bad local configuration is ours.
fn tls_side(tls: &TlsError) -> Side {
    match tls {
        TlsError::NoCertificate { .. }
        | TlsError::NoTrustRoots
        | TlsError::NoExpectedPeer
        | TlsError::InvalidTrustDomain { .. }
        | TlsError::ForeignLocalIdentity { .. }
        | TlsError::Config(_)
        | TlsError::Cert(_) => Side::Internal,
        TlsError::WrongTrustDomain { .. }
        | TlsError::MissingSpiffeSan
        | TlsError::MultipleUriSans { .. }
        | TlsError::BadSpiffeId { .. }
        | TlsError::CaCertAsLeaf
        | TlsError::Expired { .. }
        | TlsError::NotYetValid { .. }
        | TlsError::UnknownIssuer
        | TlsError::BadChain { .. }
        | TlsError::UnexpectedPeer { .. } => Side::TlsPeer,
    }
}

#[cfg(test)]
mod tests;
