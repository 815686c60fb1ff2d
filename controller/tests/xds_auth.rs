//! xDS streams require a node or workload token when the controller has any: the config names
//! every workload and policy of the cluster, so only mesh members (ztunnels, waypoints) may
//! read it. A stream claiming to be a Gateway's waypoint must be the workload that Gateway runs
//! as, or it ends with PERMISSION_DENIED.

use std::sync::Arc;
use std::time::Duration;

use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use amesh_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use amesh_proto::{ADDRESS_TYPE_URL, SERVICE_ROUTES_TYPE_URL};
use controller::ca::NodeTokens;
use controller::manifests::load_yaml;
use controller::xds::{spawn_publisher, AdsServer, ResourceSet, DEFAULT_DEBOUNCE};
use controller::{Manifests, TranslateOptions};
use prost_types::value::Kind;
use prost_types::{Struct, Value};
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

/// Two waypoints of `shop`: `wp` (no pod known: it runs as the ServiceAccount named after it)
/// with a route for `api`, and `custom`, whose pod runs as `custom-runner`.
const WAYPOINTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: custom, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Pod
metadata: {name: custom-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: custom}}
spec: {serviceAccountName: custom-runner, nodeName: node1, containers: [{name: istio-proxy}]}
status: {podIP: 10.0.0.9}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.2, selector: {app: api}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: via-waypoint, namespace: shop}
spec:
  parentRefs: [{name: wp}]
  rules: [{backendRefs: [{name: api, port: 80}]}]
"#;

/// The route the waypoint of `shop/wp` is sent.
const API_ROUTES: &str = "shop/api.shop.svc.cluster.local";

/// An xDS server authenticating with `tokens`, serving the translation of [`WAYPOINTS`]; the
/// manifests' sender must live as long as the streams.
async fn serve_waypoints(
    tokens: NodeTokens,
) -> (
    String,
    watch::Sender<Arc<Manifests>>,
    tokio::task::JoinHandle<()>,
) {
    let loaded = load_yaml("waypoints.yaml", WAYPOINTS);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let (manifests_tx, manifests_rx) = watch::channel(Arc::new(loaded.manifests));
    let (resources, _publisher) =
        spawn_publisher(manifests_rx, TranslateOptions::default(), DEFAULT_DEBOUNCE);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(AdsServer::new(resources).with_auth(tokens).into_service())
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let task = tokio::spawn(async move {
        server.await.expect("the xDS server runs");
    });
    (url, manifests_tx, task)
}

/// A node as the waypoint of Gateway `shop/<gateway>` describes itself.
fn waypoint_node(gateway: &str) -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    Node {
        id: format!("waypoint~10.0.0.9~{gateway}-0.shop~shop.svc.cluster.local"),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_owned(), string("shop")),
                ("GATEWAY_NAME".to_owned(), string(gateway)),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

/// Opens a stream as `node` with `token`, subscribes to every resource of `type_url`, and
/// returns the names of the first response (or the status the stream ended with).
async fn first_names(
    url: &str,
    token: &str,
    node: Node,
    type_url: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = tokio::time::timeout(
        WAIT,
        AggregatedDiscoveryServiceClient::connect(url.to_owned()),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let first = DeltaDiscoveryRequest {
        node: Some(node),
        type_url: type_url.to_owned(),
        resource_names_subscribe: vec!["*".to_owned()],
        ..Default::default()
    };
    let mut request = tonic::Request::new(futures::stream::iter(vec![first]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut responses = tokio::time::timeout(WAIT, client.delta_aggregated_resources(request))
        .await
        .expect("answer in time")?
        .into_inner();
    let response = tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("first response in time")?
        .expect("a response before the stream ends");
    assert_eq!(response.type_url, type_url);
    Ok(response.resources.into_iter().map(|r| r.name).collect())
}

fn waypoint_tokens() -> NodeTokens {
    let mut tokens = NodeTokens::default();
    tokens.insert("node-token", "node1");
    tokens.insert_workload("wp-token", "shop", "wp");
    tokens.insert_workload("custom-token", "shop", "custom-runner");
    tokens.insert_workload("named-after-custom", "shop", "custom");
    tokens
}

#[tokio::test]
async fn a_waypoint_stream_is_bound_to_its_gateways_service_account() {
    let (url, _manifests, task) = serve_waypoints(waypoint_tokens()).await;

    // The waypoint's own ServiceAccount (named after the Gateway) gets its routes.
    let names = first_names(
        &url,
        "wp-token",
        waypoint_node("wp"),
        SERVICE_ROUTES_TYPE_URL,
    )
    .await
    .expect("the waypoint of shop/wp, as shop/wp, is served");
    assert_eq!(names, [API_ROUTES]);

    // The same token claiming another Gateway.
    let other = first_names(
        &url,
        "wp-token",
        waypoint_node("custom"),
        SERVICE_ROUTES_TYPE_URL,
    )
    .await
    .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
    assert!(
        other.message().contains(
            "workload shop/wp claims to be the waypoint of Gateway shop/custom (node metadata \
             NAMESPACE/GATEWAY_NAME), but that waypoint must authenticate as workload \
             shop/custom-runner"
        ),
        "{other:?}"
    );

    // When the Gateway's pods run as another ServiceAccount, that one is the waypoint's, and
    // the account named after the Gateway is not.
    let custom = first_names(
        &url,
        "custom-token",
        waypoint_node("custom"),
        SERVICE_ROUTES_TYPE_URL,
    )
    .await
    .expect("the waypoint of shop/custom, as its pods' ServiceAccount, is served");
    assert!(
        custom.is_empty(),
        "no route targets shop/custom: {custom:?}"
    );
    let named = first_names(
        &url,
        "named-after-custom",
        waypoint_node("custom"),
        SERVICE_ROUTES_TYPE_URL,
    )
    .await
    .unwrap_err();
    assert_eq!(named.code(), tonic::Code::PermissionDenied, "{named:?}");
    assert!(
        named.message().contains("serviceAccountName of the pods"),
        "{named:?}"
    );
    task.abort();
}

#[tokio::test]
async fn a_node_token_cannot_claim_a_waypoint() {
    let (url, _manifests, task) = serve_waypoints(waypoint_tokens()).await;
    for type_url in [SERVICE_ROUTES_TYPE_URL, ADDRESS_TYPE_URL] {
        let refused = first_names(&url, "node-token", waypoint_node("wp"), type_url)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains(
                "node node1 claims to be the waypoint of Gateway shop/wp, but a node agent's \
                 token cannot serve a waypoint: it must authenticate as workload shop/wp"
            ),
            "{refused:?}"
        );
    }
    // As itself (a ztunnel), the node is served.
    let ztunnel = Node {
        id: "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local".into(),
        ..Default::default()
    };
    let addresses = first_names(&url, "node-token", ztunnel, ADDRESS_TYPE_URL)
        .await
        .expect("a ztunnel with its node token is served");
    assert!(!addresses.is_empty(), "the translation has addresses");
    task.abort();
}

#[tokio::test]
async fn a_workload_that_is_no_waypoint_gets_no_l7_types() {
    let (url, _manifests, task) = serve_waypoints(waypoint_tokens()).await;
    let plain = || Node {
        id: "sidecar~10.0.0.7~web-0.shop~shop.svc.cluster.local".into(),
        ..Default::default()
    };
    let addresses = first_names(&url, "wp-token", plain(), ADDRESS_TYPE_URL)
        .await
        .expect("any workload gets the addresses, as under istiod");
    assert!(!addresses.is_empty(), "the translation has addresses");
    let routes = first_names(&url, "wp-token", plain(), SERVICE_ROUTES_TYPE_URL)
        .await
        .expect("served, with nothing");
    assert!(routes.is_empty(), "{routes:?}");
    task.abort();
}
