//! The pod set's locking, on a real [`PodManager`] with real pod network namespaces (capture
//! mode `None`, so no nft): an ADD waiting for its certificate holds up nobody but the ADDs and
//! DELs of its own pod.
//!
//! Needs root (network namespaces); the namespaces are named `amt-pods-<tag>-<pid>` and always
//! deleted.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mesh::certs::{CertManager, CertStore, CertificateProvider, LocalCa, SignFuture};
use mesh::hbone::H2Settings;
use mesh::state::{LocalConfig, StateStore};
use mesh::tls::TlsContext;
use mesh::Identity;
use tokio::sync::watch;
use ztunnel::capture::CaptureMode;
use ztunnel::metrics::Metrics;
use ztunnel::pods::{AddPod, PodManager};
use ztunnel::proxy::Shared;

/// A namespace of its own, deleted on drop.
struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        let name = format!("amt-pods-{tag}-{}", std::process::id());
        // A leftover of a crashed earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed (this test needs root)");
        TestNetns {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Signs with a local CA, except that certificates for the service account `slow` wait until
/// the test opens the gate (a CA that is slow, or unreachable, for one pod).
struct GatedCa {
    ca: LocalCa,
    gate: watch::Receiver<bool>,
}

impl CertificateProvider for GatedCa {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> SignFuture<'a> {
        let gated = identity.to_string().ends_with("/sa/slow");
        let mut gate = self.gate.clone();
        let fut = async move {
            if gated {
                let _ = gate.wait_for(|open| *open).await;
            }
            self.ca.sign_csr(csr_pem, identity, ttl)
        };
        Box::pin(fut)
    }
}

fn build_pods(dir: &std::path::Path, gate: watch::Receiver<bool>) -> Arc<PodManager> {
    let ca = LocalCa::load_or_create(&dir.join("ca"), "cluster.local").unwrap();
    let store = CertStore::new();
    let tls = TlsContext::new("cluster.local", store.clone(), ca.trust_roots()).unwrap();
    let roots = ca.trust_roots();
    let certs = CertManager::new(
        store,
        roots,
        Arc::new(GatedCa { ca, gate }),
        Duration::from_secs(3600),
    );
    let state = StateStore::new();
    state
        .replace_all(LocalConfig::from_yaml("workloads: []\n").unwrap())
        .unwrap();
    let shared = Arc::new(Shared {
        state,
        tls,
        certs: Some(certs),
        metrics: Arc::new(Metrics::new()),
        settings: H2Settings::default(),
        mark: 0x539,
        node: "node1".into(),
        limits: Default::default(),
        resolvers: ztunnel::dns::Resolvers::new("/etc/resolv.conf"),
        cluster_domain: "cluster.local".into(),
        dns_capture: false,
    });
    Arc::new(PodManager::new(
        shared,
        CaptureMode::None.backend().unwrap(),
        None,
    ))
}

fn pod(uid: &str, sa: &str, ip: &str, netns: &TestNetns) -> AddPod {
    AddPod {
        uid: uid.into(),
        name: uid.into(),
        namespace: "ns1".into(),
        ip: ip.parse().unwrap(),
        netns: netns.path.clone(),
        service_account: Some(sa.into()),
    }
}

/// Bound on what must be quick: far below the 15 s an ADD waits for its certificate.
const QUICK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_waiting_for_its_certificate_blocks_no_other_pod() {
    let dir = tempfile::tempdir().unwrap();
    let (open_gate, gate) = watch::channel(false);
    let pods = build_pods(dir.path(), gate);
    let ns_fast = TestNetns::new("fast");
    let ns_slow = TestNetns::new("slow");

    let fast = pod("uid-fast", "fast", "10.77.1.5", &ns_fast);
    let added = tokio::time::timeout(QUICK, pods.add(fast)).await;
    assert!(matches!(added, Ok(Ok(true))), "{added:?}");

    // An ADD whose certificate does not come, and then a DEL of the same pod, which must
    // wait for it.
    let slow_add = tokio::spawn({
        let pods = pods.clone();
        let slow = pod("uid-slow", "slow", "10.77.1.6", &ns_slow);
        async move { pods.add(slow).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!slow_add.is_finished(), "the slow ADD did not wait");
    let slow_del = tokio::spawn({
        let pods = pods.clone();
        async move { pods.remove("uid-slow").await }
    });

    // Meanwhile, the rest of the node is served at once.
    let listed = tokio::time::timeout(QUICK, pods.list())
        .await
        .expect("list() waited for another pod's ADD");
    let uids: Vec<_> = listed.iter().map(|p| p.uid.as_str()).collect();
    assert_eq!(uids, ["uid-fast"]);
    let removed = tokio::time::timeout(QUICK, pods.remove("uid-fast"))
        .await
        .expect("DEL waited for another pod's ADD");
    assert!(matches!(removed, Ok(true)), "{removed:?}");
    let again = pod("uid-fast-2", "fast", "10.77.1.5", &ns_fast);
    let added = tokio::time::timeout(QUICK, pods.add(again))
        .await
        .expect("ADD waited for another pod's ADD");
    assert!(matches!(added, Ok(true)), "{added:?}");

    // The same pod's DEL is ordered after its ADD: still waiting, then done once the
    // certificate comes, and the pod is gone in the end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !slow_del.is_finished(),
        "DEL overtook the ADD of the same pod"
    );
    open_gate.send_replace(true);
    let added = tokio::time::timeout(QUICK, slow_add).await;
    assert!(matches!(added, Ok(Ok(Ok(true)))), "{added:?}");
    let removed = tokio::time::timeout(QUICK, slow_del).await;
    assert!(matches!(removed, Ok(Ok(Ok(true)))), "{removed:?}");
    let uids: Vec<_> = pods.list().await.into_iter().map(|p| p.uid).collect();
    assert_eq!(uids, ["uid-fast-2"]);

    pods.shutdown(Duration::from_secs(1)).await;
}
