//! The trust roots peers' chains must lead to, replaceable at runtime (the CA may hand out a new
//! root) without a lock on the handshake path.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use super::error::CertError;
use super::workload::parse_pem_certs;

/// One immutable set of roots, parsed into webpki trust anchors once.
#[derive(Debug)]
pub struct RootSet {
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl RootSet {
    /// Parses root certificates (DER) into trust anchors; refuses ones webpki cannot use.
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        let mut anchors = Vec::with_capacity(certs.len());
        for (index, cert) in certs.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(cert)
                .map_err(|e| CertError::BadRoot {
                    index,
                    reason: format!("{e:?}"),
                })?
                .to_owned();
            anchors.push(anchor);
        }
        Ok(RootSet { certs, anchors })
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.certs.iter().any(|c| c.as_ref() == cert.as_ref())
    }
}

/// Shared, swappable handle on the current [`RootSet`]. Cloning shares it: the TLS verifiers and
/// the certificate manager hold the same handle, so a root the CA returns applies to the next
/// handshake.
#[derive(Clone)]
pub struct TrustRoots {
    current: Arc<ArcSwap<RootSet>>,
}

impl TrustRoots {
    /// Trusts the given root certificates (DER).
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        Ok(Self::from_set(RootSet::new(certs)?))
    }

    /// Trusts the certificates of a PEM bundle.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Self::new(parse_pem_certs(pem, "trust roots")?)
    }

    /// Trusts nothing yet: every peer is refused until roots arrive (e.g. with the first
    /// certificate from the CA).
    pub fn empty() -> Self {
        Self::from_set(RootSet {
            certs: Vec::new(),
            anchors: Vec::new(),
        })
    }

    fn from_set(set: RootSet) -> Self {
        TrustRoots {
            current: Arc::new(ArcSwap::from_pointee(set)),
        }
    }

    /// The current roots; a snapshot that later replacements do not change.
    pub fn snapshot(&self) -> Arc<RootSet> {
        self.current.load_full()
    }

    /// Replaces the roots for all future handshakes.
    pub fn replace(&self, certs: Vec<CertificateDer<'static>>) -> Result<(), CertError> {
        self.current.store(Arc::new(RootSet::new(certs)?));
        Ok(())
    }
}

impl Default for TrustRoots {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoots")
            .field("roots", &self.current.load().certs.len())
            .finish()
    }
}
