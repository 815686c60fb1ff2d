//! Picks the certificate to present at handshake time from the [`CertStore`], so a rotated
//! certificate applies to the next connection while established ones keep theirs.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::certs::CertStore;
use crate::Identity;

/// Presents the current certificate of one local identity.
#[derive(Debug)]
pub(crate) struct StoreResolver {
    pub(crate) store: CertStore,
    pub(crate) identity: Identity,
}

impl StoreResolver {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let Some(cert) = self.store.get(&self.identity) else {
            tracing::warn!(identity = %self.identity, "no certificate for local identity; handshake will fail");
            return None;
        };
        // Presenting an expired certificate only earns a refusal from the peer, with a less
        // useful message there; fail here, where the cause is known.
        if cert.is_expired() {
            tracing::warn!(identity = %self.identity, serial = cert.serial(), "local certificate expired; handshake will fail");
            return None;
        }
        Some(cert.certified_key())
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        // Always answer the server's certificate request; whether one is found is decided per
        // handshake.
        true
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // One server config per local identity: no SNI to look at.
        self.current()
    }
}
