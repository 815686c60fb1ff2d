//! One workload's certificate: identity, chain, private key and the validity facts rotation
//! needs, checked once when built so the handshake path only clones an `Arc`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::CertError;
use super::x509;
use crate::Identity;

/// A certificate and key for one SPIFFE identity, ready to present in a TLS handshake.
pub struct WorkloadCert {
    identity: Identity,
    /// Leaf first, then intermediates; the root is not sent (peers have it).
    chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 private key of the leaf; never leaves the process.
    key: PrivateKeyDer<'static>,
    /// The chain and the loaded signing key as rustls wants them, built once.
    certified: Arc<CertifiedKey>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl WorkloadCert {
    /// Checks and assembles a certificate: the leaf must carry `identity` as its only URI SAN,
    /// must not be a CA, and must match `key`.
    pub fn new(
        identity: Identity,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertError> {
        let Some(leaf) = chain.first() else {
            return Err(CertError::EmptyChain { identity });
        };
        let facts = x509::facts(leaf).map_err(|reason| CertError::Unparsable {
            identity: identity.clone(),
            index: 0,
            reason,
        })?;
        let want = identity.to_string();
        if facts.uri_sans.len() != 1 || facts.uri_sans[0] != want {
            return Err(CertError::IdentityMismatch {
                identity,
                found: facts.uri_sans,
            });
        }
        if facts.is_ca {
            return Err(CertError::LeafIsCa { identity });
        }
        let signing_key = any_supported_type(&key).map_err(|e| CertError::KeyMismatch {
            identity: identity.clone(),
            reason: e.to_string(),
        })?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        // keys_match compares the key's public half with the leaf's SPKI. It answers "unknown"
        // only for keys that cannot export their public half; aws-lc keys always can, so any
        // error here is refused rather than waved through.
        certified.keys_match().map_err(|e| CertError::KeyMismatch {
            identity: identity.clone(),
            reason: e.to_string(),
        })?;
        Ok(WorkloadCert {
            identity,
            chain,
            key,
            certified: Arc::new(certified),
            serial: facts.serial,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// Builds a certificate from a CA answer (PEM, leaf first, root last) and the key of the CSR.
    /// Returns the certificate (leaf and intermediates) and, for chains longer than one, the root
    /// it was issued under, which is not presented in handshakes.
    pub fn from_ca_chain(
        identity: Identity,
        chain_pem: &[String],
        key: PrivateKeyDer<'static>,
    ) -> Result<(Self, Option<CertificateDer<'static>>), CertError> {
        let mut chain = Vec::with_capacity(chain_pem.len());
        for (index, pem) in chain_pem.iter().enumerate() {
            let mut certs = parse_pem_certs(pem, &format!("certificate #{index} from the CA"))?;
            chain.append(&mut certs);
        }
        let root = if chain.len() > 1 { chain.pop() } else { None };
        Ok((Self::new(identity, chain, key)?, root))
    }

    /// Builds a certificate from PEM: `chain_pem` holds the leaf first (further certificates are
    /// intermediates), `key_pem` a PKCS#8, SEC1 or PKCS#1 private key.
    pub fn from_pem(identity: Identity, chain_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let chain = parse_pem_certs(chain_pem, "certificate chain")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
                what: format!("private key for {identity}"),
                reason: e.to_string(),
            })?;
        Self::new(identity, chain, key)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's private key (PKCS#8 DER when issued by amesh).
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Chain and signing key in the form rustls presents in a handshake.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The leaf's serial number in lower-case hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Total validity period of the leaf.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    pub fn is_expired(&self) -> bool {
        self.is_expired_at(SystemTime::now())
    }

    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// When a refresh is due: at half of the lifetime (the manager adds jitter around it).
    pub fn refresh_at(&self) -> SystemTime {
        self.not_before + self.lifetime() / 2
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key is deliberately left out.
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_before", &x509::rfc3339(self.not_before))
            .field("not_after", &x509::rfc3339(self.not_after))
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Splits PEM text into DER certificates, refusing text with none.
pub fn parse_pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoPemCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}
