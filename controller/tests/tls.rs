//! The controller's TLS port (15012): the serving certificate is signed by the mesh CA, carries
//! the control plane's names and no workload identity, and is replaced at re-issue for new
//! handshakes; ztunnel's xDS and CA clients verify it against the mesh root and refuse a
//! controller they cannot verify (other root, name not in the certificate); plaintext clients
//! and clients that never finish a handshake do not get in anyone's way.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::Resource;
use controller::app::{self, Auth, Config, Listeners, Source};
use controller::ca::NodeTokens;
use controller::tls::ServingCert;
use controller::TranslateOptions;
use mesh::certs::{generate_csr, CaClient, CaClientConfig, CaError, LocalCa};
use mesh::control::ControlRoot;
use mesh::xds::{self, ResourceHandler, XdsConfig};
use mesh::Identity;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const TD: &str = "cluster.local";

fn ca_client(uri: &str, root: Option<&ControlRoot>) -> CaClient {
    CaClient::lazy(
        uri,
        root,
        CaClientConfig {
            cluster_id: "Kubernetes".into(),
            token: Some("secret-1".into()),
            impersonate: true,
        },
    )
    .unwrap()
}

async fn ask(client: &CaClient) -> Result<Vec<String>, CaError> {
    let web = Identity::new(TD, "shop", "web").unwrap();
    let csr = generate_csr(&web).unwrap();
    client
        .create_certificate(&web, &csr.pem, Duration::from_secs(3600))
        .await
}

/// The controller on a folder (the golden `ambient_basic` input) with only its TLS port.
struct Running {
    port: u16,
    root: ControlRoot,
    _work: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start() -> Running {
    let work = tempfile::tempdir().unwrap();
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ambient_basic/input");
    let ca_dir = work.path().join("ca");
    // Create the root up front so that the test can read it before the controller starts.
    let ca = LocalCa::load_or_create(&ca_dir, TD).unwrap();
    let root = ControlRoot::from_pem(ca.root_pem()).unwrap();
    let mut tokens = NodeTokens::default();
    tokens.insert("secret-1", "node-1");
    let config = Config {
        source: Source::Folder {
            dir: manifests,
            poll: Duration::from_millis(200),
        },
        debounce: Duration::from_millis(20),
        ca_dir: Some(ca_dir),
        ca_secret: controller::ca::root_secret::DEFAULT_CA_SECRET
            .parse()
            .unwrap(),
        root_namespace: "istio-system".into(),
        auth: Auth::NodeTokens(tokens),
        tls_names: vec![],
        max_ttl: Duration::from_secs(3600),
        translate: TranslateOptions::default(),
        waypoints: None,
        jwks: Default::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app::run(
        config,
        Listeners {
            tls: Some(listener),
            plaintext: None,
            graph: None,
            debug: None,
        },
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        port,
        root,
        _work: work,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("stopped in time")
            .unwrap()
            .unwrap();
    }
}

#[derive(Default)]
struct Count(parking_lot::Mutex<usize>);

impl ResourceHandler for Count {
    fn apply(&self, _: &str, upserts: Vec<Resource>, _: &[String]) -> Result<(), String> {
        *self.0.lock() += upserts.len();
        Ok(())
    }
}

#[tokio::test]
async fn xds_and_ca_over_tls_verified_with_the_mesh_root() {
    let running = start().await;
    let uri = format!("https://localhost:{}", running.port);

    // A raw TCP client that never says a word must not hold up the others.
    let mut silent = TcpStream::connect(("127.0.0.1", running.port))
        .await
        .unwrap();

    // xDS over TLS, as ztunnel with XDS_ROOT_CA.
    let node = Node {
        id: xds::ztunnel_node_id([127, 0, 0, 1].into(), "ztunnel-1", "istio-system"),
        ..Default::default()
    };
    let mut config = XdsConfig::new(uri.clone(), node);
    config.root = Some(running.root.clone());
    config.token = Some("secret-1".into());
    config.initial_backoff = Duration::from_millis(20);
    let count = Arc::new(Count::default());
    let client = xds::spawn(config, count.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), client.wait_synced())
        .await
        .expect("synced over TLS within 20 s")
        .unwrap();
    assert!(*count.0.lock() > 0, "the client got resources");
    client.shutdown().await;

    // The CA over TLS, by the IP name too (127.0.0.1 is in the certificate).
    let chain = ask(&ca_client(&uri, Some(&running.root))).await.unwrap();
    assert!(chain.len() >= 2);
    let by_ip = format!("https://127.0.0.1:{}", running.port);
    ask(&ca_client(&by_ip, Some(&running.root))).await.unwrap();

    // Another mesh's root does not vouch for this controller (same subject name as ours, so
    // webpki finds it as the issuer and the signature check fails).
    let other = tempfile::tempdir().unwrap();
    let stranger = LocalCa::load_or_create(other.path(), TD).unwrap();
    let wrong_root = ControlRoot::from_pem(stranger.root_pem()).unwrap();
    let err = ask(&ca_client(&uri, Some(&wrong_root))).await.unwrap_err();
    let text = format!("{err:?}");
    assert!(
        matches!(err, CaError::Unavailable { .. }) && text.contains("invalid peer certificate"),
        "{text}"
    );

    // A name the certificate does not carry is refused; the same name as an override
    // (ALT_CA_HOSTNAME) for an address that is not in the certificate is accepted.
    let wrong_name = running
        .root
        .clone()
        .with_server_name(Some("other.example".into()));
    let err = ask(&ca_client(&uri, Some(&wrong_name))).await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("not valid for name"), "{text}");
    let alt = running
        .root
        .clone()
        .with_server_name(Some("istiod.istio-system.svc".into()));
    ask(&ca_client(&by_ip, Some(&alt))).await.unwrap();

    // Plaintext gRPC on the TLS port gets nowhere.
    let plain = format!("http://127.0.0.1:{}", running.port);
    let err = ask(&ca_client(&plain, None)).await.unwrap_err();
    assert!(matches!(err, CaError::Unavailable { .. }), "{err:?}");

    let _ = silent.shutdown().await;
    running.stop().await;
}

/// The leaf a fresh TLS handshake with `port` presents.
async fn presented(port: u16, root: &LocalCa) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.root_der()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = connector
        .connect(
            ServerName::try_from("amesh-controller.istio-system.svc").unwrap(),
            tcp,
        )
        .await
        .expect("handshake verifies against the mesh root");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn serving_certificate_names_and_reissue() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(LocalCa::load_or_create(dir.path(), TD).unwrap());
    let cert = Arc::new(
        ServingCert::issue(
            ca.clone(),
            &["amesh.example.org".into(), "10.1.2.3".into()],
            Duration::from_secs(3600),
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = controller::tls::incoming(listener, cert.server_config());
    // Keep handshaken connections open until the test ends.
    let keep = tokio::spawn(async move {
        use futures::StreamExt;
        let mut incoming = std::pin::pin!(incoming);
        let mut held = Vec::new();
        while let Some(conn) = incoming.next().await {
            held.push(conn);
        }
    });

    let first = presented(port, &ca).await;
    let (_, leaf) = X509Certificate::from_der(&first).unwrap();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let mut uris = 0;
    for name in &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
    {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
            GeneralName::URI(_) => uris += 1,
            _ => {}
        }
    }
    assert!(
        dns.contains(&"istiod.istio-system.svc".to_string()),
        "{dns:?}"
    );
    assert!(dns.contains(&"amesh.example.org".to_string()), "{dns:?}");
    assert!(ips.contains(&vec![10, 1, 2, 3]) && ips.contains(&vec![127, 0, 0, 1]));
    assert_eq!(
        uris, 0,
        "a serving certificate must not pass as a workload identity"
    );
    assert!(!leaf.is_ca());

    // Re-issued: new handshakes see a new certificate.
    cert.reissue().unwrap();
    let second = presented(port, &ca).await;
    assert_ne!(first, second);
    keep.abort();

    // A name that is neither DNS nor IP is refused with the name in the error.
    let err = ServingCert::issue(ca, &["bad name!".into()], Duration::from_secs(60)).unwrap_err();
    assert!(err.to_string().contains("bad name!"), "{err}");
}
