//! Key pair and PKCS#10 certificate signing request for one identity. The key stays in this
//! process; only the CSR goes to the CA.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::error::CertError;
use crate::Identity;

/// A fresh ECDSA P-256 key and a CSR for it.
pub struct Csr {
    /// PEM `CERTIFICATE REQUEST` carrying the SPIFFE ID as its only SAN.
    pub pem: String,
    /// PKCS#8 DER of the private key matching the CSR.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Csr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is deliberately left out.
        f.debug_struct("Csr")
            .field("pem", &self.pem)
            .finish_non_exhaustive()
    }
}

/// Generates a new key pair and a CSR for `identity` (subject empty, URI SAN = the SPIFFE ID,
/// as Istio's agents send).
pub fn generate_csr(identity: &Identity) -> Result<Csr, CertError> {
    let fail = |e: rcgen::Error| CertError::Generate {
        identity: identity.clone(),
        reason: e.to_string(),
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(fail)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok(Csr {
        pem: csr.pem().map_err(fail)?,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_carries_the_identity_and_verifies() {
        let id = Identity::new("cluster.local", "ns1", "sa1").unwrap();
        let csr = generate_csr(&id).unwrap();
        assert!(csr.pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr.pem).unwrap();
        let sans: Vec<_> = parsed.params.subject_alt_names.iter().collect();
        assert_eq!(sans.len(), 1);
        assert!(matches!(sans[0], SanType::URI(u) if u.as_str() == id.to_string()));
        // Two CSRs never share a key.
        let other = generate_csr(&id).unwrap();
        assert_ne!(csr.key.secret_der(), other.key.secret_der());
    }
}
