//! Errors of the certificate module: bad certificate material ([`CertError`]) and failures to get
//! a certificate signed ([`CaError`]), each message saying what to check.

use std::path::PathBuf;

use crate::Identity;

/// Certificate or key material that amesh cannot use.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate chain for {identity} is empty: the CA must return at least the leaf")]
    EmptyChain { identity: Identity },
    #[error("certificate #{index} in the chain for {identity} is unreadable: {reason}")]
    Unparsable {
        identity: Identity,
        index: usize,
        reason: String,
    },
    #[error("no PEM certificate found in {what}: expected \"-----BEGIN CERTIFICATE-----\" blocks")]
    NoPemCertificate { what: String },
    #[error("invalid PEM in {what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("leaf certificate for {identity} carries URI SANs {found:?}: a workload certificate must carry exactly this SPIFFE ID as its only URI SAN")]
    IdentityMismatch {
        identity: Identity,
        found: Vec<String>,
    },
    #[error("leaf certificate for {identity} is a CA certificate (basicConstraints CA:TRUE): the CA must issue a workload leaf")]
    LeafIsCa { identity: Identity },
    #[error("private key does not match the leaf certificate for {identity} (or is not a usable ECDSA/RSA/Ed25519 key): {reason}")]
    KeyMismatch { identity: Identity, reason: String },
    #[error("cannot generate a key pair or CSR for {identity}: {reason}")]
    Generate { identity: Identity, reason: String },
    #[error("trust root #{index} is not a usable CA certificate: {reason}")]
    BadRoot { index: usize, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a certificate could not be signed, locally or by the remote CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate signing request is not a valid PKCS#10 request with a correct self-signature: {reason}")]
    InvalidCsr { reason: String },
    #[error("certificate signing request carries URI SANs {found:?} but {requested} was requested: the CSR's only URI SAN must be exactly the requested SPIFFE ID")]
    CsrIdentityMismatch {
        requested: Identity,
        found: Vec<String>,
    },
    #[error("this CA signs identities of trust domain {ca_trust_domain:?} only, not {requested}: check TRUST_DOMAIN on the CA and on the requesting node")]
    ForeignTrustDomain {
        requested: Identity,
        ca_trust_domain: String,
    },
    #[error("cannot sign a certificate for {identity}: {reason}")]
    Signing { identity: Identity, reason: String },
    #[error("cannot issue the control plane's serving certificate for {names:?}: {reason}")]
    ServingCert { names: Vec<String>, reason: String },
    #[error("CA files in {dir}: {reason}")]
    CaFiles { dir: PathBuf, reason: String },
    /// CA material kept outside a folder is unusable; `item` is its `cacerts` name.
    #[error("CA material, {item}: {reason}")]
    CaMaterial { item: &'static str, reason: String },
    #[error("cannot generate a root CA: {reason}")]
    GenerateRoot { reason: String },
    #[error("the CA rejected our credentials ({message}): check the node's bootstrap or ServiceAccount token")]
    Unauthenticated { message: String },
    #[error("the CA refused to sign {identity} ({message}): a node may only obtain identities of pods scheduled on it")]
    PermissionDenied { identity: Identity, message: String },
    #[error("the CA is unreachable ({message}): check the controller address, that it is running and that port 15012 is open")]
    Unavailable { message: String },
    #[error("CA_ADDRESS: {message}")]
    Address { message: String },
    #[error("the CA answered {code}: {message}")]
    Rpc { code: String, message: String },
    #[error("the CA answered with an unusable certificate chain for {identity}: {reason}")]
    BadResponse { identity: Identity, reason: String },
    #[error("cannot send the token as gRPC metadata: {reason}")]
    BadToken { reason: String },
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl CaError {
    /// Whether trying again later may succeed; refreshes back off and retry either way, but a
    /// non-retryable error is logged louder because it needs an operator.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CaError::Unavailable { .. } | CaError::Rpc { .. } | CaError::Signing { .. }
        )
    }
}
