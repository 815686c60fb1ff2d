//! Certificates for TLS and certificate tests: a local CA in a temporary directory, plus
//! deliberately broken certificates signed by the same root (read from the CA's key file) and
//! raw rustls configs that present them.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh::certs::{CertStore, LocalCa, CA_CERT_FILE, CA_KEY_FILE};
use mesh::tls::TlsContext;
use mesh::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

pub const TD: &str = "cluster.local";
pub const HOUR: Duration = Duration::from_secs(3600);

pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa).unwrap()
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A local CA in its own temporary directory.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca: LocalCa,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), TD).unwrap();
        TestCa { dir, ca }
    }

    /// A context trusting this CA, with an hour-long certificate for each identity.
    pub fn context(&self, ids: &[Identity]) -> TlsContext {
        let tls = TlsContext::new(TD, CertStore::new(), self.ca.trust_roots()).unwrap();
        for id in ids {
            tls.store().insert(self.ca.issue(id, HOUR).unwrap());
        }
        tls
    }

    /// Signs an arbitrary leaf with the CA's own key, bypassing LocalCa's checks.
    pub fn raw(&self, leaf: RawLeaf) -> Presented {
        let key_pem = std::fs::read_to_string(self.dir.path().join(CA_KEY_FILE)).unwrap();
        let cert_pem = std::fs::read_to_string(self.dir.path().join(CA_CERT_FILE)).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, KeyPair::from_pem(&key_pem).unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = leaf.sans;
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if leaf.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        let cert = params.signed_by(&key, &issuer).unwrap();
        Presented {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// What a raw leaf looks like; `RawLeaf::valid(sans)` is an hour-long non-CA leaf.
pub struct RawLeaf {
    pub sans: Vec<SanType>,
    pub is_ca: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl RawLeaf {
    pub fn valid(sans: Vec<SanType>) -> RawLeaf {
        let now = SystemTime::now();
        RawLeaf {
            sans,
            is_ca: false,
            not_before: now - Duration::from_secs(60),
            not_after: now + HOUR,
        }
    }
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// A certificate chain and key to present without any of mesh's checks.
pub struct Presented {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Presented {
    /// A server presenting this certificate, not asking for a client certificate.
    pub fn server_config(self) -> Arc<ServerConfig> {
        self.server_config_with(provider())
    }

    /// The same with its own crypto provider (cipher suites, implementations).
    pub fn server_config_with(self, provider: Arc<CryptoProvider>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain, self.key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A client presenting no certificate and accepting any server.
    pub fn anonymous_client_config() -> Arc<ClientConfig> {
        let provider = provider();
        let verifier = Arc::new(AcceptAnyServer(provider.clone()));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A client presenting this certificate and accepting any server.
    pub fn client_config(self) -> Arc<ClientConfig> {
        self.client_config_with(provider())
    }

    /// The same with its own crypto provider (cipher suites, implementations).
    pub fn client_config_with(self, provider: Arc<CryptoProvider>) -> Arc<ClientConfig> {
        let verifier = Arc::new(AcceptAnyServer(provider.clone()));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain, self.key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

impl From<mesh::certs::WorkloadCert> for Presented {
    fn from(cert: mesh::certs::WorkloadCert) -> Presented {
        Presented {
            chain: cert.chain().to_vec(),
            key: cert.private_key().clone_key(),
        }
    }
}

/// Test-only verifier that trusts any server (checks handshake signatures only), so that the
/// server under test is the only side judging certificates.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
