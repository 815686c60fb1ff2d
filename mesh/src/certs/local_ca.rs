//! A CA backed by files on disk, for the lab, tests and the controller: signs workload CSRs after
//! checking that each asks for exactly the identity it is signed for.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ca_files::{self, CaMaterial, CaPem, Unusable, CA_CERT_FILE};
use super::csr::generate_csr;
use super::error::CaError;
use super::provider::{CertificateProvider, SignFuture};
use super::roots::TrustRoots;
use super::serial::random_serial;
use super::workload::WorkloadCert;
use crate::Identity;

/// Longest validity the CA grants, whatever is asked; Istio's default cap is of the same order.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest validity the CA grants, so a zero request still yields a usable certificate.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Leaves start this much in the past so that peers whose clock is slightly late accept them.
const BACKDATE: Duration = Duration::from_secs(60);

/// A signing CA loaded from (or generated into) a directory.
pub struct LocalCa {
    trust_domain: String,
    /// Subject, key identifier and key of the signing certificate.
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the certificates after the leaf in every answer: intermediates, then the root.
    tail_pem: Vec<String>,
    root: CertificateDer<'static>,
}

impl LocalCa {
    /// Loads the CA from `dir`, or generates a self-signed root there (key file mode 0600) if the
    /// directory holds none. Files follow Istio's `cacerts` names:
    /// [`CA_KEY_FILE`](super::CA_KEY_FILE), [`CA_CERT_FILE`],
    /// [`ROOT_CERT_FILE`](super::ROOT_CERT_FILE) and optionally
    /// [`CERT_CHAIN_FILE`](super::CERT_CHAIN_FILE) (for a supplied intermediate CA).
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let material = ca_files::load_or_create(dir, trust_domain)?;
        Self::from_material(material, trust_domain).map_err(|u| CaError::CaFiles {
            dir: dir.to_path_buf(),
            reason: u.reason,
        })
    }

    /// The CA of `pem`, checked as [`LocalCa::load_or_create`] checks its files, for material
    /// kept elsewhere than in a folder (the controller's Kubernetes Secret). A failure is
    /// [`CaError::CaMaterial`], naming the item at fault.
    pub fn from_pem(pem: &CaPem, trust_domain: &str) -> Result<Self, CaError> {
        ca_files::parse(pem)
            .and_then(|material| Self::from_material(material, trust_domain))
            .map_err(|u| CaError::CaMaterial {
                item: u.item,
                reason: u.reason,
            })
    }

    fn from_material(material: CaMaterial, trust_domain: &str) -> Result<Self, Unusable> {
        let CaMaterial {
            key,
            ca_cert,
            middle,
            root,
        } = material;
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key).map_err(|e| Unusable {
            item: CA_CERT_FILE,
            reason: format!("{CA_CERT_FILE}: {e}"),
        })?;
        let tail_pem = middle.iter().chain([&root]).map(|c| pem_of(c)).collect();
        Ok(LocalCa {
            trust_domain: trust_domain.to_string(),
            issuer,
            tail_pem,
            root,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate peers must trust, PEM.
    pub fn root_pem(&self) -> String {
        pem_of(&self.root)
    }

    /// The root certificate peers must trust, DER.
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// A trust-root handle holding just this CA's root, for a `TlsContext`.
    pub fn trust_roots(&self) -> TrustRoots {
        // A root we loaded and parsed ourselves is a valid anchor; if webpki still refused it the
        // context would merely trust nothing, so fall back to empty rather than panic.
        TrustRoots::new(vec![self.root_der()]).unwrap_or_else(|e| {
            tracing::error!(error = %e, "local CA root is not a usable trust anchor");
            TrustRoots::empty()
        })
    }

    /// Signs a PEM CSR for `identity`, valid for `ttl` clamped to [`MIN_TTL`]..=[`MAX_TTL`].
    /// The CSR's self-signature must verify and its only URI SAN must be exactly `identity`;
    /// nothing else from the CSR but its public key goes into the certificate.
    /// Returns PEM certificates, leaf first, root last.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                requested: identity.clone(),
                ca_trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CaError::InvalidCsr {
                reason: e.to_string(),
            }
        })?;
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_string()),
                _ => None,
            })
            .collect();
        if uris.len() != 1 || uris[0] != identity.to_string() {
            return Err(CaError::CsrIdentityMismatch {
                requested: identity.clone(),
                found: uris,
            });
        }

        let fail = |e: rcgen::Error| CaError::Signing {
            identity: identity.clone(),
            reason: e.to_string(),
        };
        let mut params = CertificateParams::default();
        // Istio leaves the subject empty: the identity is the URI SAN.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(identity.to_string().try_into().map_err(fail)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ttl.clamp(MIN_TTL, MAX_TTL)).into();
        params.serial_number = Some(random_serial());
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(fail)?;

        let mut chain = Vec::with_capacity(1 + self.tail_pem.len());
        chain.push(leaf.pem());
        chain.extend(self.tail_pem.iter().cloned());
        Ok(chain)
    }

    /// Generates a key and CSR for `identity` and signs it: a ready certificate for tests and
    /// the lab.
    pub fn issue(&self, identity: &Identity, ttl: Duration) -> Result<WorkloadCert, CaError> {
        let csr = generate_csr(identity)?;
        let chain = self.sign_csr(&csr.pem, identity, ttl)?;
        let (cert, _root) = WorkloadCert::from_ca_chain(identity.clone(), &chain, csr.key)?;
        Ok(cert)
    }

    /// As [`LocalCa::issue`], returning the chain and the key as PEM (leaf first, root last),
    /// e.g. to write files for a process under test.
    pub fn issue_pem(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<(Vec<String>, String), CaError> {
        let csr = generate_csr(identity)?;
        let chain = self.sign_csr(&csr.pem, identity, ttl)?;
        let label = match &csr.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        let key_pem = pem_block(label, csr.key.secret_der());
        Ok((chain, key_pem))
    }
}

impl LocalCa {
    /// A serving certificate for the control plane itself (the TLS port 15012), not a workload:
    /// each of `names` becomes an IP SAN if it parses as an address, else a DNS SAN; no URI SAN,
    /// so it can never pass as a workload identity. Valid for `ttl` clamped like workload leaves.
    pub fn issue_server(&self, names: &[String], ttl: Duration) -> Result<ServerCert, CaError> {
        let fail = |reason: String| CaError::ServingCert {
            names: names.to_vec(),
            reason,
        };
        if names.is_empty() {
            return Err(fail("no name to put in it".into()));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => {
                    // rcgen takes any IA5 string; check the DNS syntax here so that a typo is
                    // refused at start rather than failing every client's verification.
                    rustls_pki_types::DnsName::try_from(name.as_str())
                        .map_err(|e| fail(format!("{name:?} is not a DNS name: {e}")))?;
                    name.clone()
                        .try_into()
                        .map(SanType::DnsName)
                        .map_err(|e| fail(format!("{name:?} is not a DNS name: {e}")))
                }
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + ttl.clamp(MIN_TTL, MAX_TTL);
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        // Intermediates (if the CA is one) follow the leaf; the root is the client's to have.
        for pem in &self.tail_pem[..self.tail_pem.len().saturating_sub(1)] {
            chain.push(
                CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| fail(e.to_string()))?,
            );
        }
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
            .map_err(|e| fail(e.to_string()))?;
        Ok(ServerCert {
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            not_after,
        })
    }
}

/// A control-plane serving certificate from [`LocalCa::issue_server`].
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// Chain and key as rustls presents them.
    pub certified: Arc<CertifiedKey>,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertificateProvider for LocalCa {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> SignFuture<'a> {
        Box::pin(async move { self.sign_csr(csr_pem, identity, ttl) })
    }
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    pem_block("CERTIFICATE", cert.as_ref())
}

fn pem_block(label: &str, der: &[u8]) -> String {
    // pki-types parses PEM but does not write it; the format is simple enough to write here.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // The alphabet is ASCII, so every 64-byte chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        for len in [0usize, 1, 2, 3, 4, 47, 48, 49, 200] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let pem = pem_block("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes());
            if len == 0 {
                continue;
            }
            assert_eq!(back.unwrap().as_ref(), &der[..], "len {len}");
        }
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial();
        let b = random_serial();
        assert_ne!(a, b);
        assert_eq!(a.to_bytes()[0] & 0x80, 0);
        assert_ne!(a.to_bytes()[0], 0);
    }
}
