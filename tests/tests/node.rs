//! The lab behaves as a Kubernetes node, and amesh works there: a pod's IP comes from the
//! node's IPAM during its CNI ADD and reaches the control plane only afterwards; pods outside
//! the mesh (and ztunnel's own) start without ztunnel; ambient pods wait for it; the API
//! server and other selector-less Services are reached through their VIPs.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::{addr, wait_for, MeshLab};

fn pod(yaml: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_yaml::from_str(yaml).expect("pod manifest")
}

/// The destination-side metric line of `node` for connections from `principal`, if any.
fn destination_metric(m: &MeshLab, node: &str, principal: &str) -> Option<String> {
    lab::mesh::metrics(&m.node(node))
        .unwrap()
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{principal}\""))
        })
        .map(str::to_owned)
}

#[test]
fn a_new_ambient_pod_gets_its_ip_from_ipam_and_mtls_on_its_first_connection() {
    let mut m = MeshLab::up("l4", 2);
    // Every node's ztunnel pod started before any ztunnel ran (its ADD passes amesh-cni
    // without one), with an address from the node's IPAM.
    for node in &m.lab.state().nodes {
        let z = node.ztunnel.as_ref().expect("a ztunnel pod");
        assert!(node.pod_cidr.contains(&z.ip), "{}: {}", node.name, z.ip);
    }
    // A pod the control plane has never heard of. The lab writes its status (its IP) only
    // after ADD returns, and the controller publishes only pods with an IP: an ADD that
    // waited for the control plane would never return.
    let fresh = m
        .lab
        .create_pod(pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: fresh, namespace: mesh, labels: {app: fresh}}\nspec:\n  serviceAccountName: fresh\n  nodeName: node2\n  containers: [{name: c, image: x, ports: [{containerPort: 7000}]}]\n",
        ))
        .expect("the pod starts");
    let node2 = m.node("node2");
    assert!(node2.pod_cidr.contains(&fresh.ip), "IPAM gave {}", fresh.ip);
    // Its very first connection is mutual TLS with its own identity.
    let reply = m
        .http("fresh", addr(m.ip("server-1"), 8080))
        .expect("first connection");
    assert_eq!(reply.source.ip(), std::net::IpAddr::from(fresh.ip));
    let line = destination_metric(&m, "node1", "spiffe://cluster.local/ns/mesh/sa/fresh")
        .expect("node1 reports the new pod's connection");
    assert!(
        line.contains("connection_security_policy=\"mutual_tls\""),
        "{line}"
    );
    // And it is reachable in turn, once its status has reached the mesh.
    assert_eq!(
        m.echo("client-a", addr(fresh.ip.into(), 7000), b"to the new pod")
            .unwrap(),
        b"to the new pod"
    );
}

#[test]
fn pods_outside_the_mesh_start_while_ztunnel_is_down_and_ambient_pods_wait_for_it() {
    let mut m = MeshLab::up("l4", 2);
    let pid = m.signal(&lab::mesh::ztunnel_name("node1"), "KILL");
    wait_for("node1's ztunnel to die", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
    });
    // kube-system and a namespace outside the mesh: their ADD never asks ztunnel.
    for (ns, name) in [("kube-system", "metrics-server"), ("plain", "batch")] {
        let started = std::time::Instant::now();
        m.lab
            .create_pod(pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  nodeName: node1\n  containers: [{{name: c, image: x, ports: [{{containerPort: 7100}}]}}]\n"
            )))
            .unwrap_or_else(|e| panic!("{ns}/{name} did not start without ztunnel: {e}"));
        assert!(started.elapsed() < Duration::from_secs(10), "{ns}/{name}");
    }
    // An ambient pod: its ADD fails with "try again" (CNI code 11) while ztunnel is down and
    // the kubelet retries; ztunnel comes back during the retries and the pod starts captured.
    let retries = Arc::new(AtomicU32::new(0));
    let seen = retries.clone();
    let opts = m.lab.state().mesh.clone().unwrap();
    let late = m
        .lab
        .create_pod_while_retrying(
            pod("apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: mesh}\nspec:\n  serviceAccountName: late\n  nodeName: node1\n  containers: [{name: c, image: x, ports: [{containerPort: 7000}]}]\n"),
            move |lab, error| {
                assert!(error.is_try_again(), "{error}");
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    let node1 = lab.state().node("node1").cloned().unwrap();
                    lab::mesh::start_ztunnel(lab, &opts, &node1).unwrap();
                    lab::mesh::wait_ready(&node1, Duration::from_secs(30)).unwrap();
                }
            },
        )
        .expect("the ambient pod starts once ztunnel is back");
    assert!(retries.load(Ordering::SeqCst) >= 1, "ADD never had to wait");
    let reply = m
        .http("late", addr(m.ip("server-2"), 8080))
        .expect("the late pod's traffic");
    assert_eq!(reply.source.ip(), std::net::IpAddr::from(late.ip));
    assert!(
        destination_metric(&m, "node2", "spiffe://cluster.local/ns/mesh/sa/late").is_some(),
        "the late pod is not captured"
    );
    // The pods ztunnel had before it died came back with it.
    assert!(m.http("client-a", addr(m.ip("server-2"), 8080)).is_ok());
}

#[test]
fn the_api_server_and_selector_less_services_are_reached_through_their_vips() {
    let m = MeshLab::up("l4", 2);
    let state = m.lab.state().clone();
    let ca = lab::mesh::ca_dir(&state).join(mesh::certs::ROOT_CERT_FILE);
    let vip = m.vip("kubernetes");
    let netns = m.lab.pod("client-a").unwrap().netns.clone();
    // By name (the pod's resolver is captured: ztunnel's DNS proxy answers with the VIP)
    // and by the VIP itself; TLS verified against the cluster's CA, as a client in a pod would.
    for url in [
        "https://kubernetes.default.svc/version".to_string(),
        format!("https://{vip}/version"),
    ] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &netns, "curl", "-sS", "--max-time", "5"])
            .arg("--cacert")
            .arg(&ca)
            .arg(&url)
            .output()
            .expect("curl (setup installs it)");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && body.contains("amesh-lab"),
            "{url}: {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A Service without selector whose endpoints someone keeps by hand: the outsider pod.
    let outsider = m.ip("outsider");
    let plan = m.lab.plan();
    let legacy_vip = plan.service_ip(200).unwrap();
    let manifests = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: legacy-db, namespace: mesh}}\nspec:\n  clusterIP: {legacy_vip}\n  ports: [{{name: tcp-db, port: 5432, targetPort: 7070}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: legacy-db-manual\n  namespace: mesh\n  labels: {{kubernetes.io/service-name: legacy-db}}\naddressType: IPv4\nendpoints:\n- addresses: ['{outsider}']\n  conditions: {{ready: true}}\nports: [{{name: tcp-db, port: 7070, protocol: TCP}}]\n"
    );
    m.apply_and_wait(
        "legacy-db",
        &manifests,
        "the selector-less service to reach its endpoint",
        || {
            m.echo("client-a", addr(legacy_vip.into(), 5432), b"query")
                .is_ok_and(|b| b == b"query")
        },
    );
}

#[test]
fn ipv6_of_a_dual_stack_pod_is_left_untouched_and_ipv4_is_meshed() {
    let m = MeshLab::up_with("l4", 2, |o| o.dual_stack = true);
    let a = m.lab.pod("client-a").unwrap().clone();
    let a6 = a.ip6.expect("client-a has an IPv6 address");
    assert!(m.node(&a.node).pod_cidr6.unwrap().contains(&a6));
    // The API holds both addresses, IPv4 first, as the kubelet writes them.
    let pods = std::fs::read_to_string(m.lab.manifests_dir().join("generated/pods.yaml")).unwrap();
    assert!(pods.contains(&format!("ip: {a6}")), "{pods}");
    // IPv6 between two ambient pods (same node and across nodes) flows as without the mesh:
    // nothing redirects it, so nothing drops it, and no ztunnel sees it.
    let before =
        |node: &str| destination_metric(&m, node, "spiffe://cluster.local/ns/mesh/sa/client-a");
    assert!(before("node1").is_none() && before("node2").is_none());
    for server in ["server-1", "server-2"] {
        let ip6 = m.lab.pod(server).unwrap().ip6.unwrap();
        let back = m
            .echo("client-a", addr(ip6.into(), 8080), b"over ipv6")
            .unwrap_or_else(|e| panic!("IPv6 to {server}: {e}"));
        assert_eq!(back, b"over ipv6");
    }
    assert!(
        before("node1").is_none() && before("node2").is_none(),
        "a ztunnel carried IPv6 traffic"
    );
    // IPv4 of the same pods is in the mesh.
    let reply = m.http("client-a", addr(m.ip("server-2"), 8080)).unwrap();
    assert_eq!(reply.source.ip(), std::net::IpAddr::from(a.ip));
    let line = destination_metric(&m, "node2", "spiffe://cluster.local/ns/mesh/sa/client-a")
        .expect("the IPv4 connection went through ztunnel");
    assert!(
        line.contains("connection_security_policy=\"mutual_tls\""),
        "{line}"
    );
}

#[test]
fn with_the_dns_proxy_off_pods_use_the_cluster_dns_directly() {
    let m = MeshLab::up_with("l4", 2, |o| {
        if let Some(mesh) = o.mesh.as_mut() {
            mesh.ztunnel_env
                .push(("ISTIO_META_DNS_CAPTURE".into(), "false".into()));
        }
    });
    // No DNS listener in the pods ztunnel captures.
    let netns = m.lab.pod("client-a").unwrap().netns.clone();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &netns, "ss", "-Hlnu"])
        .output()
        .unwrap();
    let listening = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!listening.contains(":15053"), "{listening}");
    // Names still resolve, answered by the cluster's DNS (its 5 s TTL, not ztunnel's 30 s).
    let a = e2e::dns::lookup(
        &m,
        "client-a",
        "server.mesh.svc.cluster.local",
        hickory_proto::rr::RecordType::A,
    )
    .unwrap();
    assert_eq!(a.addresses, [m.vip("server")]);
    assert_eq!(a.ttl, Some(5), "{a:?}");
    // And the rest of the mesh is untouched.
    assert!(m.http("client-a", addr(m.ip("server-2"), 8080)).is_ok());
}
