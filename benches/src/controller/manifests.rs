//! The synthetic cluster: namespaces labelled ambient, nodes, pods with IPs and nodes, services
//! selecting groups of pods, and L4 AuthorizationPolicies, written as multi-document YAML in
//! the shapes the controller's folder source accepts (see `controller/tests/golden`).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// How big the cluster is.
#[derive(Clone, Debug, Serialize)]
pub struct Shape {
    pub pods: usize,
    pub services: usize,
    pub policies: usize,
    pub namespaces: usize,
    pub nodes: usize,
}

/// What was written: file sizes, for the record.
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub files: usize,
    pub bytes: u64,
}

/// First pod IP is `POD_BASE + 1`: pods live in 10.64.0.0/10 (4 M addresses).
const POD_BASE: u32 = u32::from_be_bytes([10, 64, 0, 0]);
/// Service ClusterIPs live in 10.32.0.0/12, apart from the pods.
const SERVICE_BASE: u32 = u32::from_be_bytes([10, 32, 0, 0]);
/// Pods per file: keeps each file a few MiB at most.
const PODS_PER_FILE: usize = 1_000;

impl Shape {
    /// Refuses shapes the address ranges or the layout cannot hold.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.namespaces >= 1, "--namespaces must be at least 1");
        anyhow::ensure!(self.nodes >= 1, "--nodes must be at least 1");
        anyhow::ensure!(self.pods < (1 << 22) - 2, "--pods must fit in 10.64.0.0/10");
        anyhow::ensure!(
            self.services < (1 << 20) - 2,
            "--services must fit in 10.32.0.0/12"
        );
        Ok(())
    }

    fn namespace(&self, n: usize) -> String {
        format!("bench-{n:03}")
    }

    /// Services of namespace `n` (services are dealt round-robin over namespaces).
    fn services_in(&self, n: usize) -> usize {
        self.services / self.namespaces + usize::from(n < self.services % self.namespaces)
    }

    /// The `app` label of the `local`-th pod of namespace `n`: pods are dealt round-robin over
    /// the namespace's services, so each service selects a group of pods.
    fn app_of_pod(&self, n: usize, local: usize) -> String {
        match self.services_in(n) {
            0 => "app-none".to_string(),
            s => format!("app-{}", local % s),
        }
    }

    /// The node of pod `i`.
    fn node(&self, i: usize) -> String {
        format!("node-{}", i % self.nodes)
    }

    /// Every node name, in order (the bench connects one client per node).
    pub fn node_names(&self) -> Vec<String> {
        (0..self.nodes).map(|i| format!("node-{i}")).collect()
    }
}

/// Writes the cluster into `dir` (which must exist).
pub fn write(shape: &Shape, dir: &Path) -> anyhow::Result<Written> {
    let mut files: Vec<(String, String)> = Vec::new();
    files.push(("00-cluster.yaml".into(), cluster(shape)));
    let mut pods = String::new();
    let mut chunk = 0;
    for i in 0..shape.pods {
        if i > 0 && i % PODS_PER_FILE == 0 {
            files.push((
                format!("10-pods-{chunk:03}.yaml"),
                std::mem::take(&mut pods),
            ));
            chunk += 1;
        }
        pod(shape, i, &mut pods);
    }
    if !pods.is_empty() {
        files.push((format!("10-pods-{chunk:03}.yaml"), pods));
    }
    let mut services = String::new();
    for j in 0..shape.services {
        service(shape, j, &mut services);
    }
    files.push(("20-services.yaml".into(), services));
    let mut policies = String::new();
    for m in 0..shape.policies {
        policy(shape, m, &mut policies);
    }
    files.push(("30-policies.yaml".into(), policies));

    let mut bytes = 0;
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        bytes += text.len() as u64;
    }
    Ok(Written {
        files: files.len(),
        bytes,
    })
}

fn cluster(shape: &Shape) -> String {
    let mut out = String::new();
    for n in 0..shape.namespaces {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    istio.io/dataplane-mode: ambient\n",
            shape.namespace(n)
        );
    }
    for node in shape.node_names() {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    topology.kubernetes.io/region: bench\n    topology.kubernetes.io/zone: bench-a\n"
        );
    }
    out
}

/// Pod `i`: namespace `i % namespaces`, node `i % nodes`, IP `10.64.0.0 + i + 1`, Running and
/// Ready, with named container ports the services' target ports refer to.
fn pod(shape: &Shape, i: usize, out: &mut String) {
    let n = i % shape.namespaces;
    let local = i / shape.namespaces;
    let ns = shape.namespace(n);
    let app = shape.app_of_pod(n, local);
    let ip = Ipv4Addr::from(POD_BASE + i as u32 + 1);
    let node = shape.node(i);
    let _ = write!(
        out,
        "---
apiVersion: v1
kind: Pod
metadata:
  name: {app}-{local:05}
  namespace: {ns}
  labels:
    app: {app}
    version: v1
spec:
  nodeName: {node}
  serviceAccountName: {app}
  containers:
    - name: main
      image: echo
      ports:
        - name: http-web
          containerPort: 8080
        - name: grpc
          containerPort: 9090
status:
  phase: Running
  podIP: {ip}
  conditions:
    - type: Ready
      status: \"True\"
"
    );
}

/// Service `j`: namespace `j % namespaces`, selecting the pods labelled `app-<j / namespaces>`.
fn service(shape: &Shape, j: usize, out: &mut String) {
    let n = j % shape.namespaces;
    let k = j / shape.namespaces;
    let ns = shape.namespace(n);
    let vip = Ipv4Addr::from(SERVICE_BASE + j as u32 + 1);
    let _ = write!(
        out,
        "---
apiVersion: v1
kind: Service
metadata:
  name: app-{k}
  namespace: {ns}
spec:
  clusterIP: {vip}
  selector:
    app: app-{k}
  ports:
    - name: http
      port: 80
      targetPort: http-web
    - name: grpc
      port: 9090
      targetPort: 9090
"
    );
}

/// Policy `m`: namespace `m % namespaces`, selecting one of the namespace's apps; every fourth
/// is a DENY on the gRPC port, the others ALLOW by principal (exact and prefix) and namespace
/// on the HTTP port. All L4, so each becomes exactly one Authorization.
fn policy(shape: &Shape, m: usize, out: &mut String) {
    let n = m % shape.namespaces;
    let k = m / shape.namespaces;
    let ns = shape.namespace(n);
    let app = shape.app_of_pod(n, k);
    let peer_ns = shape.namespace((n + 1) % shape.namespaces);
    let caller = shape.app_of_pod(n, k + 1);
    if m % 4 == 3 {
        let _ = write!(
            out,
            "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-{k}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      app: {app}
  action: DENY
  rules:
    - from:
        - source:
            notNamespaces: [\"{ns}\"]
      to:
        - operation:
            ports: [\"9090\"]
"
        );
    } else {
        let _ = write!(
            out,
            "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-{k}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
    - from:
        - source:
            principals: [\"cluster.local/ns/{ns}/sa/{caller}\", \"cluster.local/ns/{peer_ns}/*\"]
        - source:
            namespaces: [\"{peer_ns}\"]
      to:
        - operation:
            ports: [\"8080\"]
"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_dealt_over_namespaces() {
        let shape = Shape {
            pods: 5_000,
            services: 505,
            policies: 200,
            namespaces: 50,
            nodes: 10,
        };
        let total: usize = (0..50).map(|n| shape.services_in(n)).sum();
        assert_eq!(total, 505);
        assert_eq!(shape.services_in(0), 11);
        assert_eq!(shape.services_in(49), 10);
    }

    #[test]
    fn writes_every_object() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape {
            pods: 2_500,
            services: 7,
            policies: 5,
            namespaces: 3,
            nodes: 2,
        };
        let written = write(&shape, dir.path()).unwrap();
        assert_eq!(written.files, 3 + 3);
        let all: String = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(all.matches("\nkind: Pod\n").count(), 2_500);
        assert_eq!(all.matches("\nkind: Service\n").count(), 7);
        assert_eq!(all.matches("\nkind: AuthorizationPolicy\n").count(), 5);
        assert_eq!(all.matches("\nkind: Namespace\n").count(), 3);
        assert!(all.contains("podIP: 10.64.9.196\n"), "pod 2499");
    }
}
