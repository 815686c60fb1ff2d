//! xDS streams require a node or workload token when the controller has any: the config names
//! every workload and policy of the cluster, so only mesh members (ztunnels, waypoints) may
//! read it.

use std::sync::Arc;
use std::time::Duration;

use amesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use amesh_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use amesh_proto::ADDRESS_TYPE_URL;
use controller::ca::NodeTokens;
use controller::xds::{AdsServer, ResourceSet};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

async fn open_stream(url: String, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut client = tokio::time::timeout(WAIT, AggregatedDiscoveryServiceClient::connect(url))
        .await
        .expect("connect in time")
        .expect("connect");
    let first = DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.to_string(),
        resource_names_subscribe: vec!["*".to_string()],
        ..Default::default()
    };
    let mut request = tonic::Request::new(futures::stream::iter(vec![first]));
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let call = client.delta_aggregated_resources(request);
    let mut responses = tokio::time::timeout(WAIT, call)
        .await
        .expect("answer in time")?
        .into_inner();
    // An authenticated client gets its first (here empty) response for the type it asked.
    let first = tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("first response in time")?
        .expect("a response");
    assert_eq!(first.type_url, ADDRESS_TYPE_URL);
    Ok(())
}

#[tokio::test]
async fn streams_need_a_known_node_token() {
    let mut tokens = NodeTokens::default();
    tokens.insert("secret-node1", "node1");
    tokens.insert_workload("secret-waypoint", "shop", "waypoint");
    let (_tx, rx) = watch::channel(Arc::new(ResourceSet::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(AdsServer::new(rx).with_auth(tokens).into_service())
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let task = tokio::spawn(server);

    let none = open_stream(url.clone(), None).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated, "{none:?}");
    assert!(none.message().contains("authorization"), "{none:?}");
    let wrong = open_stream(url.clone(), Some("guess")).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    assert!(wrong.message().contains("--tokens"), "{wrong:?}");
    open_stream(url.clone(), Some("secret-node1"))
        .await
        .expect("a node with its token is served");
    open_stream(url, Some("secret-waypoint"))
        .await
        .expect("a workload (waypoint) with its token is served");
    task.abort();
}

struct Ignore;

impl mesh::xds::ResourceHandler for Ignore {
    fn apply(
        &self,
        _: &str,
        _: Vec<amesh_proto::envoy::service::discovery::v3::Resource>,
        _: &[String],
    ) -> Result<(), String> {
        Ok(())
    }
}

/// ztunnel's xDS client re-reads its token file at each connect, as a rotated projected
/// ServiceAccount token requires: refused with the stale token, served once the file holds a
/// valid one, without restarting the client.
#[tokio::test]
async fn the_client_rereads_its_token_file_on_reconnect() {
    let mut tokens = NodeTokens::default();
    tokens.insert("fresh-token", "node1");
    let (_tx, rx) = watch::channel(Arc::new(ResourceSet::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::new(rx).with_auth(tokens).into_service())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("istio-token");
    std::fs::write(&file, "expired-token\n").unwrap();
    let mut config = mesh::xds::XdsConfig::new(url, Default::default());
    config.token = Some("expired-token".into());
    config.token_file = Some(file.clone());
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(100);
    let client = mesh::xds::spawn(config, Arc::new(Ignore)).unwrap();
    let mut status = client.watch_status();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
        .await
        .expect("the stale token is refused")
        .unwrap();
    assert!(!status.borrow().synced);
    // The kubelet writes the rotated token.
    std::fs::write(&file, "fresh-token\n").unwrap();
    tokio::time::timeout(WAIT, client.wait_synced())
        .await
        .expect("synced with the new token, no restart")
        .unwrap();
    client.shutdown().await;
    task.abort();
}
