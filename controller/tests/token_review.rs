//! Kubernetes authentication of node agents: the CA (and xDS) take the ztunnel's projected
//! ServiceAccount token, review it with the API server (a fake speaking the real TokenReview
//! JSON over HTTP), and find the caller's node from the token's binding, from the
//! `node-name` extra or through the pod it is bound to. Refusals: not authenticated (the API
//! server's reason), wrong audience, not a node agent, a pod of another node, a pod replaced
//! since the token was minted, and an API server that refuses to review (RBAC) — each with a
//! readable reason. Reviews are cached per token.

#[path = "kube_source/fake_api.rs"]
mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::Resource;
use controller::ca::token_review::{DEFAULT_AUDIENCE, DEFAULT_NODE_AGENT};
use controller::ca::{CaService, TokenReviewer};
use controller::source::KubeSource;
use controller::xds::{AdsServer, ResourceSet};
use fake_api::DEADLINE;
use hyper::StatusCode;
use mesh::certs::{generate_csr, CaClient, CaClientConfig, CaError, LocalCa};
use mesh::xds::{self, ResourceHandler, XdsConfig};
use mesh::Identity;
use serde_json::{json, Value};

const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";

fn pod(namespace: &str, name: &str, node: &str, sa: &str, ip: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": namespace, "uid": format!("uid-{name}"),
            "resourceVersion": "3"
        },
        "spec": {
            "nodeName": node, "serviceAccountName": sa,
            "containers": [{"name": "app", "image": "app:1"}]
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// A TokenReview status for `user` with `extra`, valid for `audiences`.
fn authenticated(user: &str, extra: Value, audiences: &[&str]) -> Value {
    json!({
        "authenticated": true,
        "user": {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts"], "extra": extra},
        "audiences": audiences,
    })
}

struct Setup {
    uri: String,
    reviews: Arc<fake_api::TokenReviews>,
    _ca_dir: tempfile::TempDir,
    _source: tokio::task::JoinHandle<()>,
    _server: tokio::task::JoinHandle<()>,
}

/// Cluster: `shop/web-1` (sa `web`) on node-1, `shop/web-2` on node-2, and the ztunnel pod
/// `istio-system/ztunnel-a` on node-1. The CA and ADS served on a local plaintext port (TLS is
/// `tls.rs`'s concern) with TokenReview authentication.
async fn setup() -> Setup {
    let (url, api, reviews) = fake_api::start().await;
    api[NAMESPACES].set_list(
        "2",
        vec![json!({"metadata": {"name": "shop", "resourceVersion": "2",
            "labels": {"istio.io/dataplane-mode": "ambient"}}})],
    );
    api[PODS].set_list(
        "5",
        vec![
            pod("shop", "web-1", "node-1", "web", "10.0.1.1"),
            pod("shop", "web-2", "node-2", "web", "10.0.2.1"),
            pod("istio-system", "ztunnel-a", "node-1", "ztunnel", "10.0.0.1"),
        ],
    );
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let (manifests, source) =
        tokio::time::timeout(DEADLINE, KubeSource::new(client.clone()).start())
            .await
            .expect("listed in time");
    let reviewer = Arc::new(TokenReviewer::new(
        client,
        vec![DEFAULT_AUDIENCE.into()],
        vec![DEFAULT_NODE_AGENT.into()],
        manifests.clone(),
    ));
    let auth = controller::ca::Authenticator::TokenReview(reviewer);
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(LocalCa::load_or_create(ca_dir.path(), "cluster.local").unwrap());
    let ca = CaService::new(
        ca,
        auth.clone(),
        manifests.clone(),
        Duration::from_secs(3600),
    );
    let (_tx, resources) = tokio::sync::watch::channel(Arc::new(ResourceSet::new()));
    // Keep the sender alive with the server: dropping it would end every ADS stream.
    let ads = AdsServer::new(resources).with_auth(auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _keep = _tx;
        let _ = tonic::transport::Server::builder()
            .add_service(ca.into_service())
            .add_service(ads.into_service())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    Setup {
        uri,
        reviews,
        _ca_dir: ca_dir,
        _source: source,
        _server: server,
    }
}

async fn ask(setup: &Setup, token: &str, ns: &str, sa: &str) -> Result<Vec<String>, CaError> {
    let client = CaClient::lazy(
        &setup.uri,
        None,
        CaClientConfig {
            cluster_id: "Kubernetes".into(),
            token: Some(token.into()),
            impersonate: true,
        },
    )
    .unwrap();
    let id = Identity::new("cluster.local", ns, sa).unwrap();
    let csr = generate_csr(&id).unwrap();
    client
        .create_certificate(&id, &csr.pem, Duration::from_secs(600))
        .await
}

#[tokio::test]
async fn node_agents_are_authenticated_by_token_review() {
    let s = setup().await;
    let node_bound = json!({"authentication.kubernetes.io/node-name": ["node-1"]});
    s.reviews.answer(
        "tok-node",
        authenticated(DEFAULT_NODE_AGENT, node_bound.clone(), &[DEFAULT_AUDIENCE]),
    );

    // Bound to node-1: may obtain the identity of web-1, which runs there.
    let chain = ask(&s, "tok-node", "shop", "web").await.unwrap();
    assert!(chain.len() >= 2);
    // The review asked for Istio's audience, with the token.
    let requests = s.reviews.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["kind"], "TokenReview");
    assert_eq!(requests[0]["spec"]["token"], "tok-node");
    assert_eq!(requests[0]["spec"]["audiences"], json!([DEFAULT_AUDIENCE]));
    // Cached: a second certificate costs no second review.
    ask(&s, "tok-node", "shop", "web").await.unwrap();
    assert_eq!(s.reviews.requests().len(), 1);

    // An identity with no pod on node-1.
    let err = ask(&s, "tok-node", "shop", "nobody").await.unwrap_err();
    assert!(
        matches!(err, CaError::PermissionDenied { ref message, .. } if message.contains("node-1")),
        "{err}"
    );

    // Bound to the ztunnel pod (no node-name extra, as before Kubernetes 1.30): its node.
    s.reviews.answer(
        "tok-pod",
        authenticated(
            DEFAULT_NODE_AGENT,
            json!({"authentication.kubernetes.io/pod-name": ["ztunnel-a"],
                   "authentication.kubernetes.io/pod-uid": ["uid-ztunnel-a"]}),
            &[DEFAULT_AUDIENCE],
        ),
    );
    ask(&s, "tok-pod", "shop", "web").await.unwrap();

    // Bound to a pod of that name that has since been replaced (other uid).
    s.reviews.answer(
        "tok-old-pod",
        authenticated(
            DEFAULT_NODE_AGENT,
            json!({"authentication.kubernetes.io/pod-name": ["ztunnel-a"],
                   "authentication.kubernetes.io/pod-uid": ["uid-long-gone"]}),
            &[DEFAULT_AUDIENCE],
        ),
    );
    let err = ask(&s, "tok-old-pod", "shop", "web").await.unwrap_err();
    assert!(
        matches!(err, CaError::PermissionDenied { ref message, .. } if message.contains("earlier pod")),
        "{err}"
    );

    // Node-2's agent cannot obtain web on node-1's behalf — but can for web-2 on node-2.
    s.reviews.answer(
        "tok-node2",
        authenticated(
            DEFAULT_NODE_AGENT,
            json!({"authentication.kubernetes.io/node-name": ["node-2"]}),
            &[DEFAULT_AUDIENCE],
        ),
    );
    ask(&s, "tok-node2", "shop", "web").await.unwrap();
    let err = ask(&s, "tok-node2", "istio-system", "ztunnel")
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::PermissionDenied { .. }), "{err}");

    // Not authenticated: the API server's reason reaches the caller.
    s.reviews.answer(
        "tok-expired",
        json!({"authenticated": false, "error": "token has expired"}),
    );
    let err = ask(&s, "tok-expired", "shop", "web").await.unwrap_err();
    assert!(
        matches!(err, CaError::Unauthenticated { ref message } if message.contains("token has expired")),
        "{err}"
    );

    // Valid, but minted for another audience.
    s.reviews.answer(
        "tok-aud",
        authenticated(
            DEFAULT_NODE_AGENT,
            node_bound.clone(),
            &["https://kubernetes.default.svc"],
        ),
    );
    let err = ask(&s, "tok-aud", "shop", "web").await.unwrap_err();
    assert!(
        matches!(err, CaError::Unauthenticated { ref message } if message.contains("audiences")),
        "{err}"
    );

    // An application's ServiceAccount is that workload (a waypoint, as istiod sees it): its
    // own identity only, wherever its pods run.
    s.reviews.answer(
        "tok-app",
        authenticated(
            "system:serviceaccount:shop:web",
            json!({"authentication.kubernetes.io/pod-name": ["web-1"]}),
            &[DEFAULT_AUDIENCE],
        ),
    );
    ask(&s, "tok-app", "shop", "web").await.unwrap();
    let err = ask(&s, "tok-app", "istio-system", "ztunnel")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CaError::PermissionDenied { ref message, .. } if message.contains("only its own identity")),
        "{err}"
    );

    // A user that is no ServiceAccount at all.
    s.reviews.answer(
        "tok-user",
        authenticated("alice", json!({}), &[DEFAULT_AUDIENCE]),
    );
    let err = ask(&s, "tok-user", "shop", "web").await.unwrap_err();
    assert!(
        matches!(err, CaError::PermissionDenied { ref message, .. } if message.contains("neither a node agent")),
        "{err}"
    );

    // A token that the fake API has never heard of.
    let err = ask(&s, "tok-unknown", "shop", "web").await.unwrap_err();
    assert!(matches!(err, CaError::Unauthenticated { .. }), "{err}");

    // The API server refuses to review (missing RBAC): unavailable, with the hint.
    s.reviews.fail(Some((
        StatusCode::FORBIDDEN,
        "tokenreviews.authentication.k8s.io is forbidden",
    )));
    let err = ask(&s, "tok-fresh", "shop", "web").await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, CaError::Unavailable { .. }) && text.contains("tokenreviews"),
        "{text}"
    );
}

struct Nothing;

impl ResourceHandler for Nothing {
    fn apply(&self, _: &str, _: Vec<Resource>, _: &[String]) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test]
async fn xds_streams_are_reviewed_too() {
    let s = setup().await;
    s.reviews.answer(
        "tok-node",
        authenticated(
            DEFAULT_NODE_AGENT,
            json!({"authentication.kubernetes.io/node-name": ["node-1"]}),
            &[DEFAULT_AUDIENCE],
        ),
    );
    let connect = |token: &str| {
        let mut config = XdsConfig::new(s.uri.clone(), Node::default());
        config.token = Some(token.into());
        config.initial_backoff = Duration::from_millis(20);
        config.max_backoff = Duration::from_millis(100);
        xds::spawn(config, Arc::new(Nothing)).unwrap()
    };
    let good = connect("tok-node");
    tokio::time::timeout(DEADLINE, good.wait_synced())
        .await
        .expect("a reviewed node agent syncs")
        .unwrap();
    good.shutdown().await;

    let bad = connect("tok-unknown");
    let mut status = bad.watch_status();
    let seen = tokio::time::timeout(
        DEADLINE,
        status.wait_for(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("did not authenticate the token"))
        }),
    )
    .await
    .expect("the refusal is reported")
    .unwrap()
    .clone();
    assert!(!seen.synced, "{seen:?}");
    bad.shutdown().await;
}
