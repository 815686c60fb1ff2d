//! [`TlsContext`]: builds (and caches) the rustls configs HBONE uses: TLS 1.3 only, ALPN `h2`,
//! no SNI, no session resumption, certificates from the [`CertStore`] at handshake time and SPIFFE
//! verification of the peer against swappable trust roots.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;

use super::error::TlsError;
use super::resolve::StoreResolver;
use super::verify::{ClientVerifier, ServerVerifier, SpiffeVerifier};
use crate::certs::{CertStore, TrustRoots};
use crate::Identity;

/// The only application protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Client configs kept at most; past this the cache starts over (it only saves allocations).
const MAX_CACHED_CLIENT_CONFIGS: usize = 4096;

type ClientKey = (Identity, Vec<Identity>);

/// Everything needed to make mutual-TLS configs for local identities. Cheap to clone (shared).
#[derive(Clone)]
pub struct TlsContext {
    inner: Arc<Inner>,
}

struct Inner {
    trust_domain: String,
    /// Certificates presented for local identities, read at each handshake.
    store: CertStore,
    /// Roots peers must chain to; replaced at runtime, read at each verification.
    roots: TrustRoots,
    provider: Arc<CryptoProvider>,
    spiffe: Arc<SpiffeVerifier>,
    /// Configs depend only on the key (certificates and roots are read at handshake time), so
    /// they are built once; lock-free reads, copy-on-write inserts.
    server_configs: ArcSwap<HashMap<Identity, Arc<ServerConfig>>>,
    client_configs: ArcSwap<HashMap<ClientKey, Arc<ClientConfig>>>,
}

impl TlsContext {
    /// A context for workloads of `trust_domain`, presenting certificates from `store` and
    /// trusting `roots` (share the same handles with a `CertManager` so rotation and new roots
    /// apply here).
    pub fn new(trust_domain: &str, store: CertStore, roots: TrustRoots) -> Result<Self, TlsError> {
        // Validated as part of a SPIFFE ID, so that exactly the domains identities can carry
        // are accepted (a '/' in it, for instance, would never match any peer).
        if Identity::new(trust_domain, "ns", "sa").is_err() {
            return Err(TlsError::InvalidTrustDomain {
                domain: trust_domain.to_string(),
            });
        }
        let provider = Arc::new(super::aead::provider());
        let spiffe = Arc::new(SpiffeVerifier::new(
            trust_domain.to_string(),
            roots.clone(),
            provider.signature_verification_algorithms,
        ));
        Ok(TlsContext {
            inner: Arc::new(Inner {
                trust_domain: trust_domain.to_string(),
                store,
                roots,
                provider,
                spiffe,
                server_configs: ArcSwap::default(),
                client_configs: ArcSwap::default(),
            }),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    /// The certificates presented for local identities; insert to add or rotate.
    pub fn store(&self) -> &CertStore {
        &self.inner.store
    }

    /// The trust roots peers are verified against.
    pub fn roots(&self) -> &TrustRoots {
        &self.inner.roots
    }

    /// Replaces the trust roots for every later handshake (configs already handed out included).
    pub fn set_roots(&self, roots: Vec<CertificateDer<'static>>) -> Result<(), TlsError> {
        Ok(self.inner.roots.replace(roots)?)
    }

    /// Config for connecting as `source` to a peer that must prove one of the `expected`
    /// identities. Fails at once if `source` has no usable certificate.
    pub fn client_config(
        &self,
        source: &Identity,
        expected: &[Identity],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        self.check_local(source)?;
        if expected.is_empty() {
            return Err(TlsError::NoExpectedPeer);
        }
        let mut expected = expected.to_vec();
        expected.sort();
        expected.dedup();
        let key = (source.clone(), expected);
        if let Some(config) = self.inner.client_configs.load().get(&key) {
            return Ok(config.clone());
        }

        let verifier = Arc::new(ServerVerifier {
            spiffe: self.inner.spiffe.clone(),
            expected: key.1.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(self.resolver(source)));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // Peers are named by certificate, not by host name.
        config.enable_sni = false;
        // A resumed session skips certificate verification and presentation: rotated
        // certificates and replaced roots would not apply. HBONE connections are pooled and
        // long-lived, so full handshakes cost little.
        config.resumption = Resumption::disabled();
        let config = Arc::new(config);

        self.inner.client_configs.rcu(|map| {
            let mut map = match map.len() >= MAX_CACHED_CLIENT_CONFIGS {
                true => HashMap::new(),
                false => HashMap::clone(map),
            };
            map.insert(key.clone(), config.clone());
            map
        });
        Ok(config)
    }

    /// Config for accepting connections as `local`: presents its current certificate and
    /// requires a client certificate from a workload of this trust domain.
    pub fn server_config(&self, local: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
        self.check_local(local)?;
        if let Some(config) = self.inner.server_configs.load().get(local) {
            return Ok(config.clone());
        }

        let verifier = Arc::new(ClientVerifier {
            spiffe: self.inner.spiffe.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(self.resolver(local)));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption: see client_config.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let config = Arc::new(config);

        self.inner.server_configs.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(local.clone(), config.clone());
            map
        });
        Ok(config)
    }

    /// Drops the cached configs of a local identity that went away (e.g. its last pod left).
    pub fn forget(&self, local: &Identity) {
        self.inner.server_configs.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(local);
            map
        });
        self.inner.client_configs.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.retain(|(source, _), _| source != local);
            map
        });
    }

    fn resolver(&self, identity: &Identity) -> StoreResolver {
        StoreResolver {
            store: self.inner.store.clone(),
            identity: identity.clone(),
        }
    }

    /// A local identity must be ours and hold an unexpired certificate.
    fn check_local(&self, identity: &Identity) -> Result<(), TlsError> {
        if identity.trust_domain() != self.inner.trust_domain {
            return Err(TlsError::ForeignLocalIdentity {
                identity: identity.clone(),
                got: identity.trust_domain().to_string(),
                expected: self.inner.trust_domain.clone(),
            });
        }
        match self.inner.store.get(identity) {
            Some(cert) if !cert.is_expired() => Ok(()),
            _ => Err(TlsError::NoCertificate {
                identity: identity.clone(),
            }),
        }
    }
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("trust_domain", &self.inner.trust_domain)
            .field("store", &self.inner.store)
            .field("roots", &self.inner.roots)
            .finish()
    }
}
