use super::*;

fn addr() -> SocketAddr {
    "10.0.0.1:15008".parse().unwrap()
}

/// A handshake failure as tokio-rustls reports it: the verifier's refusal inside an I/O error.
fn handshake_failure(tls: TlsError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, tls.into_rustls())
}

fn refused(status: http::StatusCode) -> HboneError {
    HboneError::Refused {
        authority: "10.0.0.2:80".into(),
        status,
        reason: None,
    }
}

#[test]
fn network_failures_are_upstream_and_retryable() {
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let e = HboneError::Connect {
        addr: addr(),
        source: reset,
    };
    assert_eq!(e.side(), Side::Upstream);
    assert!(e.is_retryable());
    assert_eq!(e.response_flag(), "UF");
    let e = HboneError::ConnectionClosed { addr: addr() };
    assert!(e.is_retryable());
    assert_eq!(e.response_flag(), "UC");
}

#[test]
fn certificate_refusals_blame_the_peer_and_are_final() {
    let e = HboneError::Tls {
        addr: addr(),
        source: handshake_failure(TlsError::UnknownIssuer),
    };
    assert_eq!(e.side(), Side::TlsPeer);
    assert!(!e.is_retryable());
    assert!(matches!(e.tls_error(), Some(TlsError::UnknownIssuer)));
    // A TLS failure that is not a certificate check (the peer hung up) may be retried.
    let e = HboneError::Tls {
        addr: addr(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
    };
    assert_eq!(e.side(), Side::Upstream);
    assert!(e.is_retryable());
}

#[test]
fn a_missing_local_certificate_is_internal() {
    let identity: crate::Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
    let e = HboneError::TlsConfig(Box::new(TlsError::NoCertificate { identity }));
    assert_eq!(e.side(), Side::Internal);
    assert!(!e.is_retryable());
}

#[test]
fn refusals_by_status() {
    let denied = refused(http::StatusCode::UNAUTHORIZED);
    assert_eq!(denied.response_flag(), "DENY");
    assert!(!denied.is_retryable());
    assert!(refused(http::StatusCode::SERVICE_UNAVAILABLE).is_retryable());
    assert!(!refused(http::StatusCode::BAD_REQUEST).is_retryable());
}

#[test]
fn only_refused_streams_are_retried() {
    let e = HboneError::Stream(h2::Error::from(h2::Reason::REFUSED_STREAM));
    assert!(e.is_retryable());
    let e = HboneError::Stream(h2::Error::from(h2::Reason::CANCEL));
    assert!(!e.is_retryable());
    assert_eq!(e.side(), Side::Upstream);
}

#[test]
fn inbound_failures_are_downstream() {
    let e = HboneError::Inbound {
        peer: addr(),
        cause: InboundError::NoH2,
    };
    assert_eq!(e.side(), Side::Downstream);
    assert!(!e.is_retryable());
    assert_eq!(e.response_flag(), "DPE");
    let e = HboneError::Inbound {
        peer: addr(),
        cause: InboundError::Tls(handshake_failure(TlsError::MissingSpiffeSan)),
    };
    assert_eq!(e.side(), Side::TlsPeer);
    assert!(e.to_string().contains("10.0.0.1:15008"), "{e}");
}
