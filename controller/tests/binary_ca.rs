//! The `amesh-controller` binary's CA root on the Kubernetes API (a fake API server speaking the
//! real JSON, TLS on 15012's way, TokenReview): without plug-in CA files it creates the Secret
//! `istio-system/istio-ca-secret`, publishes its root as the ConfigMap `istio-ca-root-cert`,
//! and signs CSRs under that root, also after a restart (same root, nothing re-created); with
//! Istio's plug-in files in `--ca-dir` those win and the Secret is never touched.

#[path = "kube_source/fake_api.rs"]
mod fake_api;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fake_api::FakeApi;
use mesh::certs::{generate_csr, CaClient, CaClientConfig, LocalCa};
use mesh::control::ControlRoot;
use mesh::Identity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::json;

const NS: &str = "istio-system";

/// Kills the child if the test fails before it stopped it.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Controller {
    /// Starts the binary on `api` with `--ca-dir ca_dir`, serving TLS on `port`.
    fn start(api: &FakeApi, work: &Path, ca_dir: &Path, port: u16) -> Controller {
        let kubeconfig = work.join("kubeconfig");
        let url = &api.url;
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\n\
                 users:\n- name: controller\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: controller}}\n\
                 current-context: fake\n"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_amesh-controller"))
            .args(["--source", "kube"])
            .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
            .args(["--tls-addr", &format!("127.0.0.1:{port}")])
            .args(["--xds-addr", "off"])
            .args(["--ca-dir", ca_dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Controller(child)
    }

    /// SIGTERM, then waits for a successful exit.
    async fn stop(mut self) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let start = tokio::time::Instant::now();
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "still running after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit status {status}");
    }
}

/// The ambient namespace `shop` with pod `web-1` on node-1, and a ztunnel token for node-1.
async fn cluster() -> FakeApi {
    let api = fake_api::serve().await;
    api.collections["/api/v1/namespaces"].set_list(
        "2",
        vec![json!({"metadata": {"name": "shop", "resourceVersion": "2",
                    "labels": {"istio.io/dataplane-mode": "ambient"}}})],
    );
    api.collections["/api/v1/pods"].set_list(
        "5",
        vec![json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "uid-web-1",
                         "resourceVersion": "3"},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web",
                     "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running", "podIP": "10.0.1.1", "podIPs": [{"ip": "10.0.1.1"}]}
        })],
    );
    api.reviews.answer(
        "ztunnel-token",
        json!({
            "authenticated": true,
            "user": {"username": "system:serviceaccount:istio-system:ztunnel",
                     "extra": {"authentication.kubernetes.io/node-name": ["node-1"]}},
            "audiences": ["istio-ca"]
        }),
    );
    api
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The root in the published ConfigMap, once there.
async fn published_root(api: &FakeApi) -> String {
    let read = || {
        api.objects
            .get("configmaps", NS, "istio-ca-root-cert")
            .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_owned))
    };
    let start = tokio::time::Instant::now();
    loop {
        if let Some(root) = read() {
            return root;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no ConfigMap istio-ca-root-cert"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A certificate for web's identity from the controller on `port`, verified over TLS with
/// `root` as ztunnel does; retried while the port is not serving yet. PEM, leaf first.
async fn sign(port: u16, root: &str) -> Vec<String> {
    let client = CaClient::lazy(
        &format!("https://localhost:{port}"),
        Some(&ControlRoot::from_pem(root.as_bytes().to_vec()).unwrap()),
        CaClientConfig {
            cluster_id: "Kubernetes".into(),
            token: Some("ztunnel-token".into()),
            impersonate: true,
        },
    )
    .unwrap();
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let csr = generate_csr(&web).unwrap();
    let start = tokio::time::Instant::now();
    loop {
        match client
            .create_certificate(&web, &csr.pem, Duration::from_secs(3600))
            .await
        {
            Ok(chain) => return chain,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                eprintln!("not signed yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no certificate within 20 s: {e}"),
        }
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Whether the leaf of `chain` verifies up to `root` alone.
fn verifies_under(chain: &[String], root: &str) -> bool {
    let root = der(root);
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
    let leaf = der(&chain[0]);
    let leaf = webpki::EndEntityCert::try_from(&leaf).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

fn secret_root(api: &FakeApi) -> String {
    let secret = api
        .objects
        .get("secrets", NS, "istio-ca-secret")
        .expect("the controller created its CA Secret");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(secret).unwrap();
    String::from_utf8(secret.data.unwrap()["root-cert.pem"].0.clone()).unwrap()
}

#[tokio::test]
async fn keeps_its_root_in_the_secret_across_restarts_and_signs_under_it() {
    let api = cluster().await;
    let work = tempfile::tempdir().unwrap();
    // The optional cacerts mount, without files.
    let ca_dir = work.path().join("cacerts");
    std::fs::create_dir(&ca_dir).unwrap();
    let port = free_port();

    let controller = Controller::start(&api, work.path(), &ca_dir, port);
    let root = published_root(&api).await;
    assert_eq!(
        root,
        secret_root(&api),
        "the ConfigMap holds the Secret's root"
    );
    let chain = sign(port, &root).await;
    assert_eq!(
        chain.last().unwrap(),
        &root,
        "the chain ends at the Secret's root"
    );
    assert!(
        verifies_under(&chain, &root),
        "the CSR is signed under the Secret's root"
    );
    assert_eq!(
        std::fs::read_dir(&ca_dir).unwrap().count(),
        0,
        "nothing written to --ca-dir"
    );
    controller.stop().await;
    let writes = api.objects.writes();
    assert_eq!(
        writes,
        [
            "POST /api/v1/namespaces/istio-system/secrets",
            "POST /api/v1/namespaces/istio-system/configmaps",
        ]
    );

    // Restarted: same root, the Secret read and not re-created, the ConfigMap left as it was.
    let port = free_port();
    let _controller = Controller::start(&api, work.path(), &ca_dir, port);
    let chain = sign(port, &root).await;
    assert!(
        verifies_under(&chain, &root),
        "signed under the same root after a restart"
    );
    assert_eq!(published_root(&api).await, root);
    assert_eq!(
        api.objects.writes(),
        writes,
        "nothing re-created or rewritten"
    );
    let gets = api
        .objects
        .requests()
        .iter()
        .filter(|r| r.contains("/secrets/"))
        .count();
    assert_eq!(gets, 2, "one read of the Secret per start");
}

#[tokio::test]
async fn plug_in_ca_files_win_over_the_secret() {
    let api = cluster().await;
    let work = tempfile::tempdir().unwrap();
    let ca_dir = work.path().join("cacerts");
    let plugged = LocalCa::load_or_create(&ca_dir, "cluster.local").unwrap();
    let port = free_port();

    let _controller = Controller::start(&api, work.path(), &ca_dir, port);
    let root = published_root(&api).await;
    assert_eq!(root, plugged.root_pem(), "the plug-in root is published");
    let chain = sign(port, &root).await;
    assert!(verifies_under(&chain, &plugged.root_pem()));
    let secrets: Vec<String> = api
        .objects
        .requests()
        .into_iter()
        .filter(|r| r.contains("/secrets"))
        .collect();
    assert!(secrets.is_empty(), "the CA Secret was touched: {secrets:?}");
}
