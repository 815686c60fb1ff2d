//! SPIFFE peer verification for rustls: the chain must lead to a trusted root (webpki, with the
//! EKU of the peer's role but no DNS-name check: names are URI SANs), then the leaf must carry
//! exactly one `spiffe://` URI SAN in our trust domain; a client also requires it to be one of
//! the identities it expects.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CommonState, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::error::TlsError;
use crate::certs::{x509, TrustRoots};
use crate::Identity;

/// The checks both sides share.
#[derive(Debug)]
pub(crate) struct SpiffeVerifier {
    trust_domain: String,
    roots: TrustRoots,
    /// Signature algorithms of the crypto provider, for chains and handshake signatures.
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    pub(crate) fn new(
        trust_domain: String,
        roots: TrustRoots,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        SpiffeVerifier {
            trust_domain,
            roots,
            algorithms,
        }
    }

    /// Verifies a peer chain for `usage` and returns the peer's identity.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<Identity, TlsError> {
        let roots = self.roots.snapshot();
        if roots.is_empty() {
            return Err(TlsError::NoTrustRoots);
        }
        let cert = EndEntityCert::try_from(end_entity).map_err(|e| webpki_error(e, now))?;
        cert.verify_for_usage(
            self.algorithms.all,
            roots.anchors(),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| webpki_error(e, now))?;
        let identity = identity_of(end_entity)?;
        if identity.trust_domain() != self.trust_domain {
            return Err(TlsError::WrongTrustDomain {
                got: identity.trust_domain().to_string(),
                expected: self.trust_domain.clone(),
                identity,
            });
        }
        Ok(identity)
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Configs allow TLS 1.3 only, so this is never reached in a handshake; verify properly
        // anyway rather than leave a trap for a future config change.
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
}

/// The identity named by a certificate: its single URI SAN, parsed as a SPIFFE workload ID.
pub(crate) fn identity_of(der: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let facts = x509::facts(der).map_err(|reason| TlsError::BadChain { reason })?;
    let mut uris = facts.uri_sans;
    match uris.len() {
        0 => Err(TlsError::MissingSpiffeSan),
        1 => {
            let uri = uris.remove(0);
            if !uri.starts_with("spiffe://") {
                return Err(TlsError::MissingSpiffeSan);
            }
            uri.parse()
                .map_err(|source| TlsError::BadSpiffeId { uri, source })
        }
        _ => Err(TlsError::MultipleUriSans { sans: uris }),
    }
}

fn webpki_error(err: webpki::Error, now: UnixTime) -> TlsError {
    let at = |t: UnixTime| x509::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(t.as_secs()));
    match err {
        webpki::Error::CaUsedAsEndEntity => TlsError::CaCertAsLeaf,
        webpki::Error::CertExpired { not_after, .. } => TlsError::Expired {
            not_after: at(not_after),
            now: at(now),
        },
        webpki::Error::CertNotValidYet { not_before, .. } => TlsError::NotYetValid {
            not_before: at(not_before),
            now: at(now),
        },
        // A signature that fails under a trusted root of the same name means another root
        // with that name signed it (e.g. a CA whose root was regenerated): still an unknown
        // issuer as far as the operator is concerned.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            TlsError::UnknownIssuer
        }
        other => TlsError::BadChain {
            reason: format!("{other:?}"),
        },
    }
}

/// Client side: verifies the server, which must be one of `expected`.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    pub(crate) spiffe: Arc<SpiffeVerifier>,
    /// Sorted, deduplicated, never empty.
    pub(crate) expected: Vec<Identity>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self
            .spiffe
            .verify(end_entity, intermediates, now, KeyUsage::server_auth())
            .and_then(|got| match self.expected.contains(&got) {
                true => Ok(()),
                false => Err(TlsError::UnexpectedPeer {
                    expected: self.expected.clone(),
                    got,
                }),
            });
        match result {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                tracing::debug!(error = %e, "refused server certificate");
                Err(e.into_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.spiffe.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.spiffe.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.spiffe.algorithms.supported_schemes()
    }
}

/// Server side: requires a client certificate from any workload of our trust domain; who may
/// do what is authorization's business, later.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    pub(crate) spiffe: Arc<SpiffeVerifier>,
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to borrow from swappable roots; our clients ignore them anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .spiffe
            .verify(end_entity, intermediates, now, KeyUsage::client_auth())
        {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                tracing::debug!(error = %e, "refused client certificate");
                Err(e.into_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.spiffe.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.spiffe.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.spiffe.algorithms.supported_schemes()
    }
}

/// The verified peer's identity after a handshake (`None` before it completes or if the peer
/// sent no certificate). The verifiers above already refused any other shape of certificate.
pub fn peer_identity(conn: &CommonState) -> Option<Identity> {
    let leaf = conn.peer_certificates()?.first()?;
    identity_of(leaf).ok()
}
