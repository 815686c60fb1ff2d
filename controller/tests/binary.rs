//! The `amesh-controller` binary end to end on 127.0.0.1: it serves a folder of manifests over
//! TLS (port 15012's way, verified with the mesh root it wrote) to a real xDS client and
//! node-agent CA client, applies a manifest edit within a second (a
//! malformed object next to it does not block it), and exits cleanly on SIGTERM; and the same
//! on the Kubernetes API (a fake API server) with TokenReview authentication, the root taken
//! from the `istio-ca-root-cert` ConfigMap the controller publishes.

#[path = "kube_source/fake_api.rs"]
mod fake_api;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh::certs::{generate_csr, CaClient, CaClientConfig};
use mesh::control::ControlRoot;
use mesh::xds::{self, ResourceHandler, XdsConfig};
use mesh::Identity;
use parking_lot::Mutex;

/// (type, name) held by the client.
#[derive(Default)]
struct Names(Mutex<BTreeSet<(String, String)>>);

impl ResourceHandler for Names {
    fn apply(
        &self,
        type_url: &str,
        upserts: Vec<Resource>,
        removed: &[String],
    ) -> Result<(), String> {
        let mut held = self.0.lock();
        for name in removed {
            held.remove(&(type_url.to_owned(), name.clone()));
        }
        for r in upserts {
            held.insert((type_url.to_owned(), r.name));
        }
        Ok(())
    }
}

impl Names {
    fn has(&self, type_url: &str, name: &str) -> bool {
        self.0
            .lock()
            .contains(&(type_url.to_owned(), name.to_owned()))
    }
}

/// Kills the child if the test fails before it stopped it.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn eventually(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn serves_a_folder_follows_edits_and_stops_on_sigterm() {
    let work = tempfile::tempdir().unwrap();
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ambient_basic/input");
    copy_dir(&golden, &manifests);
    std::fs::write(
        work.path().join("tokens"),
        "# lab tokens\nsecret-1 node-1\n",
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_amesh-controller"))
        .args(["--manifests", manifests.to_str().unwrap()])
        .args(["--tls-addr", &format!("127.0.0.1:{port}")])
        .args(["--xds-addr", "off"])
        .args(["--ca-dir", work.path().join("ca").to_str().unwrap()])
        .args(["--tokens", work.path().join("tokens").to_str().unwrap()])
        .args(["--poll-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut controller = Controller(child);
    let uri = format!("https://localhost:{port}");
    // The root is written on the first start; clients trust it as ztunnel trusts the mounted
    // istio-ca-root-cert.
    let root_file = work.path().join("ca").join(mesh::certs::ROOT_CERT_FILE);
    eventually("the CA root to be written", Duration::from_secs(10), || {
        root_file.is_file()
    })
    .await;
    let root = ControlRoot::load(&root_file).unwrap();

    // xDS: the client syncs with the folder's workloads.
    let names = Arc::new(Names::default());
    let node = Node {
        id: xds::ztunnel_node_id([127, 0, 0, 1].into(), "ztunnel-1", "istio-system"),
        ..Default::default()
    };
    let mut config = XdsConfig::new(uri.clone(), node);
    config.root = Some(root.clone());
    // The controller has node tokens, so xDS streams must present one, as ztunnel does.
    config.token = Some("secret-1".into());
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    let client = xds::spawn(config, names.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), client.wait_synced())
        .await
        .expect("synced within 20 s")
        .unwrap();
    assert!(names.has(
        ADDRESS_TYPE_URL,
        "Kubernetes//v1/Pod/shop/web-v1-7d9f8c6b5-abcde"
    ));

    // An edit applies within a second (plus the poll), despite a malformed object beside it.
    let policy = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all-tcp, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: [\"9999\"]}}]}]
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec:
  ports: \"not a list\"
";
    std::fs::write(manifests.join("policy.yaml"), policy).unwrap();
    let took = eventually("the new policy to arrive", Duration::from_secs(3), || {
        names.has(AUTHORIZATION_TYPE_URL, "shop/deny-all-tcp")
    })
    .await;
    eprintln!("manifest edit reached the client in {took:?}");
    assert!(took < Duration::from_millis(1500), "edit took {took:?}");

    // Removal of the file removes the policy.
    std::fs::remove_file(manifests.join("policy.yaml")).unwrap();
    eventually("the policy to be removed", Duration::from_secs(3), || {
        !names.has(AUTHORIZATION_TYPE_URL, "shop/deny-all-tcp")
    })
    .await;

    // CA on the same port: node-1 obtains the identity of its pod.
    let ca = CaClient::lazy(
        &uri,
        Some(&root),
        CaClientConfig {
            cluster_id: "Kubernetes".into(),
            token: Some("secret-1".into()),
            impersonate: true,
        },
    )
    .unwrap();
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let csr = generate_csr(&web).unwrap();
    let chain = ca
        .create_certificate(&web, &csr.pem, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(chain.len() >= 2);

    // SIGTERM: the process ends on its own, successfully, and the client notices.
    let pid = controller.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = tokio::time::Instant::now();
    let status = loop {
        if let Some(status) = controller.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    let mut watch = client.watch_status();
    tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|s| !s.connected))
        .await
        .expect("client saw the controller go")
        .unwrap();
    client.shutdown().await;
}

/// The binary on the Kubernetes API (`--source kube`, a fake API server speaking the real
/// list/watch and TokenReview JSON), serving over TLS: a node agent with a reviewed
/// ServiceAccount token syncs the cluster's workloads, sees a pod added by a watch event, and
/// obtains the identity of a pod on its node; a token the API server does not accept is
/// refused.
#[tokio::test]
async fn serves_the_kubernetes_api_with_token_review() {
    let fake = fake_api::serve().await;
    let (url, mut api, reviews) = (fake.url.clone(), fake.collections, fake.reviews);
    let pod = |name: &str, ip: &str| {
        serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                         "resourceVersion": "3", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web",
                     "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        })
    };
    api["/api/v1/namespaces"].set_list(
        "2",
        vec![
            serde_json::json!({"metadata": {"name": "shop", "resourceVersion": "2",
            "labels": {"istio.io/dataplane-mode": "ambient"}}}),
        ],
    );
    api["/api/v1/pods"].set_list("5", vec![pod("web-1", "10.0.1.1")]);
    reviews.answer(
        "ztunnel-token",
        serde_json::json!({
            "authenticated": true,
            "user": {"username": "system:serviceaccount:istio-system:ztunnel",
                     "extra": {"authentication.kubernetes.io/node-name": ["node-1"]}},
            "audiences": ["istio-ca"]
        }),
    );

    let work = tempfile::tempdir().unwrap();
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\n\
             users:\n- name: controller\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: controller}}\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_amesh-controller"))
        .args(["--source", "kube"])
        .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
        .args(["--tls-addr", &format!("127.0.0.1:{port}")])
        .args(["--xds-addr", "off"])
        .args(["--ca-dir", work.path().join("ca").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _controller = Controller(child);
    // As ztunnel gets it: the ConfigMap the controller publishes (no plug-in CA files here, so
    // the root is the one it keeps in its Secret).
    let published = || {
        fake.objects
            .get("configmaps", "istio-system", "istio-ca-root-cert")
            .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_owned))
    };
    eventually(
        "the CA root to be published",
        Duration::from_secs(10),
        || published().is_some(),
    )
    .await;
    let root = ControlRoot::from_pem(published().unwrap()).unwrap();
    let uri = format!("https://localhost:{port}");

    let names = Arc::new(Names::default());
    let mut config = XdsConfig::new(uri.clone(), Node::default());
    config.root = Some(root.clone());
    config.token = Some("ztunnel-token".into());
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    let client = xds::spawn(config, names.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), client.wait_synced())
        .await
        .expect("synced within 20 s")
        .unwrap();
    assert!(names.has(ADDRESS_TYPE_URL, "Kubernetes//v1/Pod/shop/web-1"));

    // A pod added through the watch reaches the client.
    let mut added = pod("web-2", "10.0.1.2");
    added["apiVersion"] = "v1".into();
    added["kind"] = "Pod".into();
    added["metadata"]["resourceVersion"] = "6".into();
    let watch = api.get_mut("/api/v1/pods").unwrap().next_watch().await;
    watch.send("ADDED", added);
    eventually("the added pod to arrive", Duration::from_secs(5), || {
        names.has(ADDRESS_TYPE_URL, "Kubernetes//v1/Pod/shop/web-2")
    })
    .await;

    // The CA: the reviewed node agent obtains web's identity; an unknown token is refused.
    let ca = |token: &str| {
        CaClient::lazy(
            &uri,
            Some(&root),
            CaClientConfig {
                cluster_id: "Kubernetes".into(),
                token: Some(token.into()),
                impersonate: true,
            },
        )
        .unwrap()
    };
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let csr = generate_csr(&web).unwrap();
    let chain = ca("ztunnel-token")
        .create_certificate(&web, &csr.pem, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(chain.len() >= 2);
    let err = ca("stolen")
        .create_certificate(&web, &csr.pem, Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(
        matches!(err, mesh::certs::CaError::Unauthenticated { .. }),
        "{err}"
    );
    assert!(reviews.requests().len() >= 2);
    client.shutdown().await;
}
