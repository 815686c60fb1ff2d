//! Shared helpers of the lab's integration tests (they need root: they build real namespaces).

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lab::client::{self, HttpVersion};
use lab::echo::EchoReply;
use lab::{LabId, LabOptions};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The manifests every test uses: an ambient namespace with a 2-replica Deployment behind a
/// Service, and a client Pod.
pub const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers:
      - name: web
        image: echo
        ports: [{containerPort: 8080}, {containerPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccountName: client
  containers: [{name: c, image: x}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
"#;

/// A temporary folder holding `text` as `app.yaml`.
pub fn manifests(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.yaml"), text).expect("write manifests");
    dir
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amesh-lab"))
}

pub fn options() -> LabOptions {
    LabOptions {
        binary: Some(binary()),
        ..LabOptions::default()
    }
}

/// Network namespaces of lab `id` that exist now.
pub fn netns_of(id: &LabId) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&id.netns_prefix()))
        .map(str::to_string)
        .collect()
}

/// Asserts that nothing of lab `id` is left: no netns, no run directory, no live process, no
/// host interface.
pub fn assert_gone(id: &LabId, pids: &[i32]) {
    assert_eq!(
        netns_of(id),
        Vec::<String>::new(),
        "namespaces of {id} left"
    );
    assert!(!lab::rundir::lab_dir(id).exists(), "run dir of {id} left");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
        assert!(
            matches!(state, None | Some('Z') | Some('X')),
            "process {pid} of {id} still runs: {stat}"
        );
    }
    let links = Command::new("ip")
        .args(["-br", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(id.as_str()),
        "host links mention {id}: {links}"
    );
}

/// Runs `amesh-lab ARGS`, killing it if it takes longer than `limit`.
pub fn cli(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn amesh-lab");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("amesh-lab {args:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Removes a lab made through the CLI when the test ends, whatever happened.
pub struct DownOnDrop(pub LabId);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

/// GET `path` from inside `netns` over HTTP/1.1 or HTTP/2.
pub fn http_get(
    netns: &str,
    addr: SocketAddr,
    version: HttpVersion,
    path: &str,
) -> (http::StatusCode, EchoReply) {
    let stream = client::connect_in(netns, addr, TIMEOUT).expect("connect");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(client::http_get(
        stream,
        version,
        &addr.to_string(),
        path,
        TIMEOUT,
    ))
    .expect("http get")
}
