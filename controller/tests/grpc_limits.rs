//! The controller's gRPC port refuses what no ztunnel sends, with a clear status, and keeps
//! serving everyone else: an oversized CA request or xDS request, more connections from one
//! address than its share, a client that connects and never speaks.

use std::path::Path;
use std::time::Duration;

use amesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use amesh_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use amesh_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use amesh_proto::istio::v1::auth::IstioCertificateRequest;
use controller::app::{self, Auth, Config, Listeners, Source};
use controller::ca::NodeTokens;
use controller::TranslateOptions;
use mesh::certs::{generate_csr, CaClient, CaClientConfig};
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const TD: &str = "cluster.local";
const TOKEN: &str = "secret-1";
const WAIT: Duration = Duration::from_secs(10);

/// The controller on a folder (the golden `ambient_basic` input), plaintext port only: the
/// TLS port serves the same router over the same accept loop.
struct Running {
    uri: String,
    addr: std::net::SocketAddr,
    _work: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start() -> Running {
    let work = tempfile::tempdir().unwrap();
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ambient_basic/input");
    let mut tokens = NodeTokens::default();
    tokens.insert(TOKEN, "node-1");
    let config = Config {
        source: Source::Folder {
            dir: manifests,
            poll: Duration::from_millis(200),
        },
        debounce: Duration::from_millis(20),
        ca_dir: Some(work.path().join("ca")),
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
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app::run(
        config,
        Listeners {
            tls: None,
            plaintext: Some(listener),
            graph: None,
            debug: None,
        },
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        uri: format!("http://{addr}"),
        addr,
        _work: work,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(WAIT, &mut self.task)
            .await
            .expect("stopped in time")
            .unwrap()
            .unwrap();
    }

    /// A certificate through ztunnel's own CA client: the service works.
    async fn ca_works(&self) {
        let client = CaClient::lazy(
            &self.uri,
            None,
            CaClientConfig {
                cluster_id: "Kubernetes".into(),
                token: Some(TOKEN.into()),
                impersonate: true,
            },
        )
        .unwrap();
        let web = Identity::new(TD, "shop", "web").unwrap();
        let csr = generate_csr(&web).unwrap();
        let chain = timeout(
            WAIT,
            client.create_certificate(&web, &csr.pem, Duration::from_secs(3600)),
        )
        .await
        .expect("CA answered in time")
        .expect("certificate issued");
        assert!(!chain.is_empty());
    }
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_others_served() {
    let server = start().await;
    // The server may still be starting: the CA answers once it is.
    let mut ca = loop {
        match IstioCertificateServiceClient::connect(server.uri.clone()).await {
            Ok(ca) => break ca,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };

    // A CSR of 256 KiB: a real one is about a kilobyte.
    let request = authorized(IstioCertificateRequest {
        csr: "A".repeat(256 << 10),
        validity_duration: 3600,
        metadata: None,
    });
    let status = timeout(WAIT, ca.create_certificate(request))
        .await
        .expect("an answer in time")
        .expect_err("an oversized CSR request must be refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // An xDS request of 5 MiB (resource names no ztunnel subscribes to).
    let mut ads = AggregatedDiscoveryServiceClient::connect(server.uri.clone())
        .await
        .unwrap();
    let huge = DeltaDiscoveryRequest {
        type_url: "type.googleapis.com/istio.workload.Address".into(),
        resource_names_subscribe: vec!["n".repeat(1 << 20); 5],
        ..Default::default()
    };
    let request = authorized(futures::stream::iter(vec![huge]));
    let outcome = timeout(WAIT, async {
        let mut responses = ads.delta_aggregated_resources(request).await?.into_inner();
        while responses.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    })
    .await
    .expect("an answer in time");
    let status = outcome.expect_err("an oversized xDS request must end the stream");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    // Everyone else is still served.
    server.ca_works().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_only_its_share_of_connections() {
    let server = start().await;
    server.ca_works().await;
    // 64 connections from this address that sent a byte and then nothing: each holds a slot.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"P").await.unwrap();
        held.push(s);
    }
    // Let the accept loop take them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next one from the same address is closed at once.
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let _ = extra.write_all(b"P").await;
    let mut buf = [0u8; 64];
    let end = timeout(WAIT, extra.read(&mut buf))
        .await
        .expect("the connection over the share is closed at once");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    // The held ones are still open (none was closed to make room).
    // (The server speaks first on HTTP/2 — its SETTINGS — so read past what it sent.)
    let mut first = held.swap_remove(0);
    let still = timeout(Duration::from_millis(300), async {
        loop {
            match first.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(still.is_err(), "a held connection was closed");
    // Once they go, the address is served again.
    drop((held, first));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.ca_works().await;
    server.stop().await;
}
