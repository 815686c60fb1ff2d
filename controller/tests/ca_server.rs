//! The CA service over gRPC on 127.0.0.1 with the real node-agent client (`CaClient`): a pod
//! identity on the caller's node is signed and verifies to the root; another node's pod, a bad
//! token and a malformed CSR are refused with readable errors; the root survives a restart. A
//! workload token (a waypoint's) obtains its own identity and nothing else.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use amesh_proto::istio::v1::auth::IstioCertificateRequest;
use controller::ca::{CaService, NodeTokens};
use controller::manifests::load_yaml;
use mesh::certs::{generate_csr, CaClient, CaClientConfig, CaError, LocalCa};
use mesh::Identity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;

const TD: &str = "cluster.local";
const DAY: Duration = Duration::from_secs(24 * 3600);

const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{name: app, image: echo}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop}
spec:
  nodeName: node-2
  serviceAccountName: db
  containers: [{name: app, image: echo}]
";

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("test took longer than 30 s")
}

/// Serves a CA rooted in `dir` on 127.0.0.1; returns its URI.
async fn serve(dir: &Path) -> String {
    let ca = LocalCa::load_or_create(dir, TD).unwrap();
    let loaded = load_yaml("pods.yaml", PODS);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let (tx, manifests) = watch::channel(Arc::new(loaded.manifests));
    // The sender lives as long as the test process: placement stays what it is.
    std::mem::forget(tx);
    let mut tokens = NodeTokens::default();
    tokens.insert("token-1", "node-1");
    tokens.insert("token-2", "node-2");
    tokens.insert_workload("token-wp", "shop", "waypoint");
    let service = CaService::new(Arc::new(ca), tokens, manifests, DAY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_service())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    format!("http://{addr}")
}

fn client(uri: &str, token: &str) -> CaClient {
    let config = CaClientConfig {
        cluster_id: "Kubernetes".into(),
        token: Some(token.into()),
        impersonate: true,
    };
    CaClient::lazy(uri, None, config).unwrap()
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa).unwrap()
}

async fn request(
    client: &CaClient,
    identity: &Identity,
    ttl: Duration,
) -> Result<Vec<String>, CaError> {
    let csr = generate_csr(identity).unwrap();
    client.create_certificate(identity, &csr.pem, ttl).await
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn signs_a_pod_identity_on_the_callers_node() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let uri = serve(dir.path()).await;
        let web = id("shop", "web");
        // Asked for two days: clamped to the one-day maximum.
        let chain = request(&client(&uri, "token-1"), &web, 2 * DAY)
            .await
            .unwrap();
        assert!(chain.len() >= 2, "leaf and root expected: {chain:?}");

        let root = der(chain.last().unwrap());
        let leaf = der(&chain[0]);
        let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
        let end_entity = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let intermediates: Vec<_> = chain[1..chain.len() - 1].iter().map(|p| der(p)).collect();
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &intermediates,
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .expect("leaf verifies to the root");

        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(sans, ["spiffe://cluster.local/ns/shop/sa/web"]);
        let validity =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(
            validity <= (DAY.as_secs() + 120) as i64,
            "validity {validity}s exceeds the cap"
        );

        // The root on disk is the one in the chain.
        let on_disk = LocalCa::load_or_create(dir.path(), TD).unwrap();
        assert_eq!(on_disk.root_der(), root);
    })
    .await;
}

#[tokio::test]
async fn refuses_a_pod_of_another_node() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let uri = serve(dir.path()).await;
        let err = request(&client(&uri, "token-1"), &id("shop", "db"), DAY)
            .await
            .unwrap_err();
        let CaError::PermissionDenied { message, .. } = &err else {
            panic!("expected PERMISSION_DENIED, got {err:?}");
        };
        assert!(
            message.contains("node-1") && message.contains("db-1 on node-2"),
            "not readable enough: {message}"
        );
        // An identity with no pod at all is refused too.
        let err = request(&client(&uri, "token-1"), &id("shop", "ghost"), DAY)
            .await
            .unwrap_err();
        assert!(matches!(err, CaError::PermissionDenied { .. }), "{err:?}");
        // The right node gets it.
        request(&client(&uri, "token-2"), &id("shop", "db"), DAY)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_workload_gets_its_own_identity_only() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let uri = serve(dir.path()).await;
        // No pod of it needs to be known: the token itself is the proof, as with istiod.
        let chain = request(&client(&uri, "token-wp"), &id("shop", "waypoint"), DAY)
            .await
            .unwrap();
        let leaf = der(&chain[0]);
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            format!("{:?}", san.value).contains("spiffe://cluster.local/ns/shop/sa/waypoint"),
            "{san:?}"
        );
        // Impersonating a pod's identity (even one in the same namespace) is refused.
        for other in [id("shop", "web"), id("other", "waypoint")] {
            let err = request(&client(&uri, "token-wp"), &other, DAY)
                .await
                .unwrap_err();
            let CaError::PermissionDenied { message, .. } = &err else {
                panic!("expected PERMISSION_DENIED for {other}, got {err:?}");
            };
            assert!(
                message.contains("only its own identity") && message.contains(&other.to_string()),
                "{message}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn refuses_a_bad_token() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let uri = serve(dir.path()).await;
        let err = request(&client(&uri, "not-a-token"), &id("shop", "web"), DAY)
            .await
            .unwrap_err();
        let CaError::Unauthenticated { message } = &err else {
            panic!("expected UNAUTHENTICATED, got {err:?}");
        };
        assert!(message.contains("token"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn refuses_a_malformed_csr() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let uri = serve(dir.path()).await;
        let web = id("shop", "web");
        let err = client(&uri, "token-1")
            .create_certificate(
                &web,
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                DAY,
            )
            .await
            .unwrap_err();
        let CaError::Rpc { code, message } = &err else {
            panic!("expected INVALID_ARGUMENT, got {err:?}");
        };
        assert_eq!(code, "InvalidArgument", "{message}");
        assert!(message.contains("request"), "{message}");

        // Without ImpersonatedIdentity, the identity comes from the CSR; garbage there is
        // INVALID_ARGUMENT too (raw gRPC, since CaClient always sends a well-formed request).
        let mut raw = IstioCertificateServiceClient::connect(uri.clone())
            .await
            .unwrap();
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: "not a csr".into(),
            validity_duration: 60,
            metadata: None,
        });
        req.metadata_mut()
            .insert("authorization", "Bearer token-1".parse().unwrap());
        let status = raw.create_certificate(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

        // A CSR for the pod's identity without impersonation is signed (its SAN is the ask).
        let csr = generate_csr(&web).unwrap();
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr.pem,
            validity_duration: 60,
            metadata: None,
        });
        req.metadata_mut()
            .insert("authorization", "Bearer token-1".parse().unwrap());
        let chain = raw
            .create_certificate(req)
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert!(!chain.is_empty());
    })
    .await;
}

/// `der` as a PEM CERTIFICATE REQUEST block.
fn csr_pem(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}

#[tokio::test]
async fn refuses_a_csr_with_trailing_bytes() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let uri = serve(dir.path()).await;
        let web = id("shop", "web");
        let csr = generate_csr(&web).unwrap();
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.pem.as_bytes())
                .unwrap();
        // The same request, valid and signed by its key, with bytes after it.
        let mut padded = der.as_ref().to_vec();
        padded.extend_from_slice(b"\x30\x03\x02\x01\x00");
        let mut raw = IstioCertificateServiceClient::connect(uri.clone())
            .await
            .unwrap();
        for impersonate in [true, false] {
            let metadata = impersonate.then(|| prost_types::Struct {
                fields: [(
                    mesh::certs::IMPERSONATED_IDENTITY.to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(web.to_string())),
                    },
                )]
                .into(),
            });
            let mut req = tonic::Request::new(IstioCertificateRequest {
                csr: csr_pem(&padded),
                validity_duration: 60,
                metadata,
            });
            req.metadata_mut()
                .insert("authorization", "Bearer token-1".parse().unwrap());
            let status = raw.create_certificate(req).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status
                    .message()
                    .contains("5 bytes after the CertificationRequest"),
                "{status:?}"
            );
        }
        // Without the extra bytes the same request is signed.
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem(der.as_ref()),
            validity_duration: 60,
            metadata: None,
        });
        req.metadata_mut()
            .insert("authorization", "Bearer token-1".parse().unwrap());
        assert!(raw.create_certificate(req).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn root_survives_a_restart() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let web = id("shop", "web");
        let first = request(&client(&serve(dir.path()).await, "token-1"), &web, DAY)
            .await
            .unwrap();
        let second = request(&client(&serve(dir.path()).await, "token-1"), &web, DAY)
            .await
            .unwrap();
        assert_eq!(first.last(), second.last(), "same folder, same root");
        assert_ne!(first[0], second[0], "a fresh leaf each time");
    })
    .await;
}
