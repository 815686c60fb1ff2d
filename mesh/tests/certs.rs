//! Certificates: the local file CA (persistence, CSR checks, what it issues), the store, and the
//! manager's refresh and backoff under paused time, and the gRPC CA client against a real tonic
//! server on loopback.

mod common_certs;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amesh_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use amesh_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use common_certs::{id, TestCa, HOUR, TD};
use mesh::certs::{
    generate_csr, CaClient, CaClientConfig, CaError, CertError, CertManager, CertStore,
    CertificateProvider, LocalCa, SignFuture, TrustRoots, WorkloadCert, CA_KEY_FILE,
    IMPERSONATED_IDENTITY, MAX_TTL,
};
use mesh::Identity;
use parking_lot::Mutex;
use tokio::time::Instant;
use x509_parser::prelude::{FromDer, X509Certificate};

fn parse_pem(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn local_ca_root_survives_restarts_and_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCa::load_or_create(dir.path(), TD).unwrap();
    let again = LocalCa::load_or_create(dir.path(), TD).unwrap();
    assert_eq!(first.root_der(), again.root_der());
    assert_eq!(parse_pem(&first.root_pem()), first.root_der().to_vec());
    let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A certificate issued before the restart verifies under the reloaded root (same key).
    let cert = first.issue(&id("a", "b"), HOUR).unwrap();
    let tls_root = again.root_der();
    let (_, root) = X509Certificate::from_der(&tls_root).unwrap();
    let (_, leaf) = X509Certificate::from_der(&cert.chain()[0]).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
}

#[test]
fn local_ca_reports_half_written_directories() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(dir.path(), TD).unwrap();
    std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
    let err = LocalCa::load_or_create(dir.path(), TD).unwrap_err();
    assert!(matches!(err, CaError::CaFiles { .. }), "{err:?}");
    assert!(err.to_string().contains("ca-key.pem does not"), "{err}");
}

#[test]
fn issued_leaf_is_a_spiffe_workload_certificate() {
    let ca = TestCa::new();
    let identity = id("default", "web");
    let before = SystemTime::now();
    let cert = ca.ca.issue(&identity, HOUR).unwrap();
    assert_eq!(cert.identity(), &identity);
    assert_eq!(
        cert.chain().len(),
        1,
        "the root is not part of the presented chain"
    );

    let (_, leaf) = X509Certificate::from_der(&cert.chain()[0]).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["URI(spiffe://cluster.local/ns/default/sa/web)"]);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    assert!(!leaf.is_ca());

    // Valid for the requested hour (from a small backdate for clock skew).
    let lifetime = cert.not_after().duration_since(before).unwrap();
    assert!(lifetime >= HOUR - Duration::from_secs(2) && lifetime <= HOUR + Duration::from_secs(2));
    assert!(!cert.is_expired());
    assert!(cert.refresh_at() > before && cert.refresh_at() < cert.not_after());

    // Absurd lifetimes are clamped.
    let long = ca
        .ca
        .issue(&identity, Duration::from_secs(10 * 365 * 24 * 3600))
        .unwrap();
    assert!(long.lifetime() <= MAX_TTL + Duration::from_secs(120));
    // Serials differ.
    assert_ne!(cert.serial(), long.serial());
}

#[test]
fn sign_csr_refuses_what_it_must() {
    let ca = TestCa::new();
    let alice = id("default", "alice");
    let bob = id("default", "bob");

    let csr = generate_csr(&alice).unwrap();
    let chain = ca.ca.sign_csr(&csr.pem, &alice, HOUR).unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(parse_pem(&chain[1]), ca.ca.root_der().to_vec());

    let err = ca.ca.sign_csr(&csr.pem, &bob, HOUR).unwrap_err();
    assert!(
        matches!(&err, CaError::CsrIdentityMismatch { requested, found } if requested == &bob && found == &[alice.to_string()])
    );
    assert!(
        err.to_string()
            .contains("only URI SAN must be exactly the requested SPIFFE ID"),
        "{err}"
    );

    let err = ca.ca.sign_csr("not a csr", &alice, HOUR).unwrap_err();
    assert!(matches!(err, CaError::InvalidCsr { .. }), "{err:?}");

    // Tampering with the request breaks its self-signature (or its encoding).
    let tampered = tamper(&csr.pem);
    let err = ca.ca.sign_csr(&tampered, &alice, HOUR).unwrap_err();
    assert!(matches!(err, CaError::InvalidCsr { .. }), "{err:?}");

    let foreign = Identity::new("other.domain", "default", "alice").unwrap();
    let csr = generate_csr(&foreign).unwrap();
    let err = ca.ca.sign_csr(&csr.pem, &foreign, HOUR).unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err:?}");
    assert!(err.to_string().contains("check TRUST_DOMAIN"), "{err}");
}

/// Flips one base64 character in the middle of a PEM body.
fn tamper(pem: &str) -> String {
    let mut lines: Vec<String> = pem.lines().map(str::to_string).collect();
    let line = &mut lines[2];
    let c = line.remove(10);
    line.insert(10, if c == 'A' { 'B' } else { 'A' });
    lines.join("\n")
}

#[test]
fn workload_cert_checks_identity_and_key() {
    let ca = TestCa::new();
    let (chain, key) = ca.ca.issue_pem(&id("a", "one"), HOUR).unwrap();
    let leaf_pem = &chain[0];
    WorkloadCert::from_pem(id("a", "one"), leaf_pem, &key).unwrap();

    let err = WorkloadCert::from_pem(id("a", "two"), leaf_pem, &key).unwrap_err();
    assert!(matches!(err, CertError::IdentityMismatch { .. }), "{err:?}");

    let (_, other_key) = ca.ca.issue_pem(&id("a", "one"), HOUR).unwrap();
    let err = WorkloadCert::from_pem(id("a", "one"), leaf_pem, &other_key).unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");

    let err = WorkloadCert::from_pem(id("a", "one"), "garbage", &key).unwrap_err();
    assert!(matches!(err, CertError::NoPemCertificate { .. }), "{err:?}");
}

#[test]
fn store_inserts_rotates_removes_and_lists() {
    let ca = TestCa::new();
    let store = CertStore::new();
    let (a, b) = (id("ns", "a"), id("ns", "b"));
    assert!(store.insert(ca.ca.issue(&b, HOUR).unwrap()).is_none());
    assert!(store.insert(ca.ca.issue(&a, HOUR).unwrap()).is_none());
    let old = store.get(&a).unwrap();
    let replaced = store.insert(ca.ca.issue(&a, HOUR).unwrap()).unwrap();
    assert_eq!(replaced.serial(), old.serial());
    assert_ne!(store.get(&a).unwrap().serial(), old.serial());

    let list = store.list();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].identity, a);
    assert_eq!(list[0].serial, store.get(&a).unwrap().serial());
    assert_eq!(list[1].identity, b);

    assert!(store.remove(&a).is_some());
    assert!(store.get(&a).is_none());
    assert_eq!(store.len(), 1);
}

/// A provider backed by a local CA that counts calls, records when they happened (runtime
/// time) and fails on demand.
struct Counting {
    ca: LocalCa,
    failing: AtomicBool,
    calls: AtomicUsize,
    at: Mutex<Vec<Instant>>,
}

impl Counting {
    fn new(ca: &TestCa) -> Arc<Counting> {
        Arc::new(Counting {
            ca: LocalCa::load_or_create(ca.dir.path(), TD).unwrap(),
            failing: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            at: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Seconds between consecutive calls.
    fn gaps(&self) -> Vec<f64> {
        let at = self.at.lock();
        at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }
}

impl CertificateProvider for Counting {
    fn sign<'a>(&'a self, identity: &'a Identity, csr: &'a str, ttl: Duration) -> SignFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.at.lock().push(Instant::now());
            if self.failing.load(Ordering::SeqCst) {
                return Err(CaError::Unavailable {
                    message: "test CA is down".into(),
                });
            }
            self.ca.sign_csr(csr, identity, ttl)
        })
    }
}

async fn advance(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn manager_fetches_then_refreshes_near_half_life() {
    let ca = TestCa::new();
    let provider = Counting::new(&ca);
    let store = CertStore::new();
    let roots = TrustRoots::empty();
    let manager = CertManager::new(store.clone(), roots.clone(), provider.clone(), HOUR);
    let web = id("default", "web");
    manager.ensure(&web);
    manager.ensure(&web); // idempotent
    let first = tokio::time::timeout(Duration::from_secs(5), manager.wait_for(&web))
        .await
        .unwrap();
    assert_eq!(provider.calls(), 1);
    assert_eq!(manager.managed(), std::slice::from_ref(&web));
    // The root came with the chain.
    assert!(roots.snapshot().contains(&ca.ca.root_der()));

    // Lifetime is 3660 s (1 h + 60 s backdate); refresh at half of it ± 10 %, counted from the
    // backdated start: between 1404 s and 2136 s after issue.
    advance(1400.0).await;
    assert_eq!(provider.calls(), 1, "refreshed too early");
    advance(740.0).await;
    assert_eq!(provider.calls(), 2, "not refreshed by 0.6 of the lifetime");
    let gap = provider.gaps()[0];
    assert!((1403.0..=2137.0).contains(&gap), "refresh after {gap} s");
    let second = store.get(&web).unwrap();
    assert_ne!(second.serial(), first.serial(), "new certificate installed");
}

#[tokio::test(start_paused = true)]
async fn manager_backs_off_exponentially_and_recovers() {
    let ca = TestCa::new();
    let provider = Counting::new(&ca);
    provider.failing.store(true, Ordering::SeqCst);
    let store = CertStore::new();
    let manager = CertManager::new(store.clone(), TrustRoots::empty(), provider.clone(), HOUR);
    let web = id("default", "web");
    manager.ensure(&web);

    // Attempts at 0, 1, 3, 7, 15, 31, 63, 123 and 183 s.
    advance(200.0).await;
    let gaps: Vec<u64> = provider.gaps().iter().map(|g| g.round() as u64).collect();
    assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 60, 60], "retry delays");
    assert!(store.get(&web).is_none());

    provider.failing.store(false, Ordering::SeqCst);
    advance(60.0).await;
    assert!(
        store.get(&web).is_some(),
        "recovered after the CA came back"
    );
    let calls = provider.calls();
    advance(600.0).await;
    assert_eq!(
        provider.calls(),
        calls,
        "no more calls until the refresh is due"
    );
}

#[tokio::test(start_paused = true)]
async fn old_certificate_serves_until_expiry_while_refresh_fails() {
    let ca = TestCa::new();
    let provider = Counting::new(&ca);
    let store = CertStore::new();
    let ttl = Duration::from_secs(100);
    let manager = CertManager::new(store.clone(), TrustRoots::empty(), provider.clone(), ttl);
    let web = id("default", "web");
    manager.ensure(&web);
    let held = tokio::time::timeout(Duration::from_secs(5), manager.wait_for(&web))
        .await
        .unwrap();
    provider.failing.store(true, Ordering::SeqCst);

    // Refresh is due within 4..36 s; it fails and retries, the old certificate stays.
    advance(95.0).await;
    assert!(provider.calls() > 3, "retried: {} calls", provider.calls());
    assert_eq!(store.get(&web).unwrap().serial(), held.serial());
    // At its expiry (100 s) it is removed.
    advance(10.0).await;
    assert!(store.get(&web).is_none(), "expired certificate removed");
}

#[tokio::test(start_paused = true)]
async fn forget_and_drop_stop_refreshing() {
    let ca = TestCa::new();
    let provider = Counting::new(&ca);
    let store = CertStore::new();
    let manager = CertManager::new(store.clone(), TrustRoots::empty(), provider.clone(), HOUR);
    let (a, b) = (id("ns", "a"), id("ns", "b"));
    manager.ensure(&a);
    manager.ensure(&b);
    tokio::time::timeout(Duration::from_secs(5), manager.wait_for(&a))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), manager.wait_for(&b))
        .await
        .unwrap();
    assert_eq!(provider.calls(), 2);

    manager.forget(&a);
    assert!(store.get(&a).is_none());
    assert_eq!(manager.managed(), std::slice::from_ref(&b));
    advance(3.0 * 3600.0).await;
    // Only b kept refreshing (a few times over three hours at ~30 min each).
    let calls = provider.calls();
    assert!((6..=10).contains(&calls), "{calls} calls");

    drop(manager);
    advance(10.0 * 3600.0).await;
    assert_eq!(provider.calls(), calls, "tasks ended with the manager");
    assert!(store.get(&b).is_some(), "the store keeps what it has");
}

/// What the in-test CA server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    authorization: Option<String>,
    cluster_id: Option<String>,
    impersonated: Option<String>,
    validity: i64,
}

/// An `IstioCertificateService` backed by a local CA: checks the bearer token, signs only
/// identities of namespace `default`, records what it saw.
struct TestCaService {
    ca: LocalCa,
    token: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for TestCaService {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (authorization, cluster_id) = (header("authorization"), header("clusterid"));
        let req = request.into_inner();
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        self.seen.lock().push(Seen {
            authorization: authorization.clone(),
            cluster_id,
            impersonated: impersonated.clone(),
            validity: req.validity_duration,
        });
        if authorization.as_deref() != Some(&format!("Bearer {}", self.token)) {
            return Err(tonic::Status::unauthenticated("token is not valid"));
        }
        let identity: Identity = impersonated
            .ok_or_else(|| tonic::Status::invalid_argument("no ImpersonatedIdentity"))?
            .parse()
            .map_err(|e: mesh::IdentityError| tonic::Status::invalid_argument(e.to_string()))?;
        if identity.namespace() != "default" {
            return Err(tonic::Status::permission_denied(format!(
                "node may not obtain {identity}"
            )));
        }
        let ttl = Duration::from_secs(req.validity_duration.max(0) as u64);
        let chain = self
            .ca
            .sign_csr(&req.csr, &identity, ttl)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

/// Serves a test CA on 127.0.0.1; returns its URI and what it records.
async fn serve_ca(ca: &TestCa) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = TestCaService {
        ca: LocalCa::load_or_create(ca.dir.path(), TD).unwrap(),
        token: "node-token",
        seen: seen.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{addr}"), seen)
}

fn client_config(token: &str) -> CaClientConfig {
    CaClientConfig {
        cluster_id: "Kubernetes".into(),
        token: Some(token.into()),
        impersonate: true,
    }
}

#[tokio::test]
async fn ca_client_gets_certificates_over_grpc() {
    let ca = TestCa::new();
    let (uri, seen) = serve_ca(&ca).await;
    let client = Arc::new(CaClient::lazy(&uri, None, client_config("node-token")).unwrap());
    let web = id("default", "web");

    let csr = generate_csr(&web).unwrap();
    let chain = client.sign(&web, &csr.pem, HOUR).await.unwrap();
    assert_eq!(chain.len(), 2);
    let (cert, root) = WorkloadCert::from_ca_chain(web.clone(), &chain, csr.key).unwrap();
    assert_eq!(cert.identity(), &web);
    assert_eq!(root.unwrap(), ca.ca.root_der());

    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer node-token"));
    assert_eq!(seen[0].cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(
        seen[0].impersonated.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/web")
    );
    assert_eq!(seen[0].validity, 3600);

    // The manager works with it end to end and learns the root from the chain.
    let store = CertStore::new();
    let roots = TrustRoots::empty();
    let manager = CertManager::new(store.clone(), roots.clone(), client.clone(), HOUR);
    let api = id("default", "api");
    manager.ensure(&api);
    let cert = tokio::time::timeout(Duration::from_secs(10), manager.wait_for(&api))
        .await
        .unwrap();
    assert_eq!(cert.identity(), &api);
    assert!(roots.snapshot().contains(&ca.ca.root_der()));
}

#[tokio::test]
async fn ca_client_maps_refusals_to_readable_errors() {
    let ca = TestCa::new();
    let (uri, _seen) = serve_ca(&ca).await;
    let web = id("default", "web");
    let csr = generate_csr(&web).unwrap();

    let wrong_token = CaClient::lazy(&uri, None, client_config("stolen")).unwrap();
    let err = wrong_token.sign(&web, &csr.pem, HOUR).await.unwrap_err();
    assert!(matches!(err, CaError::Unauthenticated { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("check the node's bootstrap or ServiceAccount token"),
        "{err}"
    );
    assert!(err.to_string().contains("token is not valid"), "{err}");

    // Rotating the token fixes it.
    wrong_token.set_token(Some("node-token".into()));
    wrong_token.sign(&web, &csr.pem, HOUR).await.unwrap();

    let client = CaClient::lazy(&uri, None, client_config("node-token")).unwrap();
    let other = id("kube-system", "secret");
    let csr = generate_csr(&other).unwrap();
    let err = client.sign(&other, &csr.pem, HOUR).await.unwrap_err();
    assert!(
        matches!(&err, CaError::PermissionDenied { identity, .. } if identity == &other),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("only obtain identities of pods scheduled on it"),
        "{err}"
    );

    // A CSR for another identity than the one asked for is refused by the CA's checks.
    let err = client.sign(&web, &csr.pem, HOUR).await.unwrap_err();
    assert!(
        matches!(&err, CaError::Rpc { code, .. } if code == "InvalidArgument"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("only URI SAN must be exactly"),
        "{err}"
    );
}

#[tokio::test]
async fn ca_client_reports_an_unreachable_ca() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = CaClient::lazy(&format!("http://{addr}"), None, client_config("t")).unwrap();
    let web = id("default", "web");
    let csr = generate_csr(&web).unwrap();
    let err = client.sign(&web, &csr.pem, HOUR).await.unwrap_err();
    assert!(matches!(err, CaError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("port 15012"), "{err}");
    assert!(err.is_retryable());
}
