//! Why a TLS peer or a local TLS setup was refused, one variant per cause, each message saying
//! what to check. Verifier errors travel through rustls as `CertificateError::Other`, and
//! [`tls_error_of`] finds them again in the handshake's `io::Error`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use rustls::{CertificateError, OtherError};

use crate::certs::CertError;
use crate::{Identity, IdentityError};

/// A TLS-level refusal or setup failure.
#[derive(thiserror::Error)]
pub enum TlsError {
    #[error("peer identity {identity} is in trust domain {got:?}, but this mesh trusts only {expected:?}: check that both sides use the same TRUST_DOMAIN and CA")]
    WrongTrustDomain {
        identity: Identity,
        got: String,
        expected: String,
    },
    #[error("peer certificate has no spiffe:// URI SAN: it is not a mesh workload certificate; check which certificate the peer presents and that it was issued by the mesh CA")]
    MissingSpiffeSan,
    #[error("peer certificate has {} URI SANs ({}): a workload certificate must carry exactly one spiffe:// URI SAN; check how the peer's CA issues certificates", .sans.len(), .sans.join(", "))]
    MultipleUriSans { sans: Vec<String> },
    #[error("peer certificate's URI SAN {uri:?} is not a workload SPIFFE ID ({source}): check how the peer's CA issues certificates")]
    BadSpiffeId {
        uri: String,
        #[source]
        source: IdentityError,
    },
    #[error("peer presented a CA certificate (basicConstraints CA:TRUE) as its own certificate: it must present a workload leaf certificate issued by the CA; check the peer's certificate files")]
    CaCertAsLeaf,
    #[error("peer certificate (or one in its chain) expired at {not_after} (now {now}): check that the peer's certificate rotation reaches the CA, and that clocks are in sync")]
    Expired { not_after: String, now: String },
    #[error("peer certificate (or one in its chain) is not valid before {not_before} (now {now}): check that clocks are in sync (NTP) on both nodes")]
    NotYetValid { not_before: String, now: String },
    #[error("peer certificate was not issued by a trusted mesh root (or its signature does not verify under it): check that both sides get certificates from the same CA and trust the same root, e.g. that the CA's root was not regenerated")]
    UnknownIssuer,
    #[error("no trust roots are configured yet, so no peer can be verified: check that the CA answered (its root is learnt from the first certificate) or configure the root")]
    NoTrustRoots,
    #[error("peer certificate chain does not verify ({reason}): check the peer's certificate and the trust roots")]
    BadChain { reason: String },
    #[error("peer identity {got} is not among the expected identities [{}]: the destination is served by a workload with another service account; check the service's subjectAltNames and the workload's service account", fmt_ids(.expected))]
    UnexpectedPeer {
        expected: Vec<Identity>,
        got: Identity,
    },
    #[error("no expected peer identities given for a client connection: the caller must name whom it expects to reach")]
    NoExpectedPeer,
    #[error("no certificate available for local identity {identity}: it has not been obtained from the CA yet, or expired; check the CA connection and the certificate manager logs")]
    NoCertificate { identity: Identity },
    #[error(
        "trust domain {domain:?} is invalid: use lower-case letters, digits, '.', '-' and '_'"
    )]
    InvalidTrustDomain { domain: String },
    #[error("local identity {identity} is in trust domain {got:?}, but this context serves {expected:?}")]
    ForeignLocalIdentity {
        identity: Identity,
        got: String,
        expected: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl TlsError {
    /// A short stable name of the variant, for metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TlsError::WrongTrustDomain { .. } => "wrong_trust_domain",
            TlsError::MissingSpiffeSan => "missing_spiffe_san",
            TlsError::MultipleUriSans { .. } => "multiple_uri_sans",
            TlsError::BadSpiffeId { .. } => "bad_spiffe_id",
            TlsError::CaCertAsLeaf => "ca_cert_as_leaf",
            TlsError::Expired { .. } => "expired",
            TlsError::NotYetValid { .. } => "not_yet_valid",
            TlsError::UnknownIssuer => "unknown_issuer",
            TlsError::NoTrustRoots => "no_trust_roots",
            TlsError::BadChain { .. } => "bad_chain",
            TlsError::UnexpectedPeer { .. } => "unexpected_peer",
            TlsError::NoExpectedPeer => "no_expected_peer",
            TlsError::NoCertificate { .. } => "no_certificate",
            TlsError::InvalidTrustDomain { .. } => "invalid_trust_domain",
            TlsError::ForeignLocalIdentity { .. } => "foreign_local_identity",
            TlsError::Config(_) => "config",
            TlsError::Cert(_) => "cert",
        }
    }

    /// Wraps the error so that rustls aborts the handshake with it and the caller of the
    /// handshake can read it back with [`tls_error_of`].
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

// rustls shows `CertificateError::Other` with `{:?}`, so Debug carries the readable message:
// that is what reaches the log line of a failed handshake.
impl fmt::Debug for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self)
    }
}

fn fmt_ids(ids: &[Identity]) -> String {
    ids.iter()
        .map(Identity::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The [`TlsError`] that made a handshake fail, if it was one (as opposed to an I/O error or a
/// TLS alert from the peer).
pub fn tls_error_of(err: &std::io::Error) -> Option<&TlsError> {
    find_tls_error(err.get_ref()?)
}

/// As [`tls_error_of`], for any error whose source chain may hold a handshake failure (e.g. an
/// error wrapping the `io::Error`).
pub fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a TlsError> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<TlsError>() {
            return Some(tls);
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            err.downcast_ref::<rustls::Error>()
        {
            return other.0.downcast_ref::<TlsError>();
        }
        // io::Error::source skips the error it wraps; look inside explicitly.
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}
