//! `amesh status` and `amesh config …` against a real lab (bookinfo with its policies and
//! waypoint, one bring-up), checked against what the lab set up (`lab::state`): every pod's IP
//! and node, every Service's VIP, the policies of examples/bookinfo/policy.yaml, the capture
//! mode the lab used, the control plane it runs (controller, or a local file).
//!
//! The same lab serves the /config_dump compatibility test: each ztunnel's real dump is
//! decoded into structs that mirror the Go structs `istioctl ztunnel-config` decodes it into
//! (istio/istio istioctl/pkg/writer/ztunnel/configdump/api.go: field names and types, facts
//! only), and the tables istioctl would print from them must hold the lab's pods, services,
//! policies and certificates.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;

use e2e::lab::mesh_options::ControlPlane;
use e2e::lab::LabState;
use e2e::MeshLab;
use serde::Deserialize;
use serde_json::Value;

/// `amesh --lab <id> <args>`: stdout; panics with stderr when it fails.
fn amesh(mesh: &MeshLab, args: &[&str]) -> String {
    let out = Command::new(e2e::amesh_binary())
        .args(["--lab", &mesh.lab.state().id.to_string()])
        .args(args)
        .output()
        .expect("run amesh");
    assert!(
        out.status.success(),
        "amesh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("amesh prints UTF-8")
}

fn amesh_json(mesh: &MeshLab, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = amesh(mesh, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("amesh {args:?} -o json: {e}\n{out}"))
}

fn amesh_yaml(mesh: &MeshLab, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "yaml"]);
    let out = amesh(mesh, &all);
    serde_yaml::from_str(&out).unwrap_or_else(|e| panic!("amesh {args:?} -o yaml: {e}\n{out}"))
}

/// The rows of a table the CLI printed, split on runs of 2+ spaces, header first.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The capture mode the lab's ztunnels use: the lab's `CAPTURE_MODE`, or eBPF when it left
/// the choice to ztunnel (this machine's kernel supports it; see `e2e::capture_mode`).
fn expected_capture_mode(state: &LabState) -> String {
    let configured = state
        .mesh
        .as_ref()
        .map(|m| m.capture_mode.clone())
        .unwrap_or_default();
    match configured.as_str() {
        "" | "auto" => e2e::capture_mode(),
        "netns" => "nft".into(),
        other => other.into(),
    }
}

/// The pods `node`'s ztunnel captures: the node's pods in the ambient namespace (bookinfo),
/// except waypoints (Istio never captures those).
fn captured_on(state: &LabState, node: &str) -> Vec<e2e::lab::PodInfo> {
    state
        .pods
        .iter()
        .filter(|p| p.node == node && p.namespace == "bookinfo")
        .filter(|p| !state.waypoints.iter().any(|w| w.runs_in(p)))
        .cloned()
        .collect()
}

/// `node`'s ztunnel's real `/config_dump` (its admin port, on the pod's loopback).
fn ztunnel_dump(mesh: &MeshLab, node: &str) -> String {
    let pod = mesh.node(node).ztunnel.expect("the node's ztunnel pod");
    let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
    e2e::lab::netns::run_in(&pod.netns, move || {
        e2e::lab::mesh::http_get(admin, "/config_dump")
    })
    .expect("enter ztunnel's netns")
    .map(|(_, body)| body)
    .expect("ztunnel answers /config_dump")
}

/// xDS clients of the lab's controller: each node's ztunnel and each waypoint pod.
fn clients_expected(state: &LabState) -> usize {
    let waypoints = (state.pods.iter())
        .filter(|p| state.waypoints.iter().any(|w| w.runs_in(p)))
        .count();
    state.nodes.len() + waypoints
}

fn status_note(status: &Value) -> &str {
    status["note"].as_str().unwrap_or_default()
}

#[test]
fn status_and_config_agree_with_the_lab() {
    let mesh = MeshLab::up_example("bookinfo", 2);
    let state = mesh.lab.state().clone();
    let controller_mode = state
        .mesh
        .as_ref()
        .is_some_and(|m| m.control_plane == ControlPlane::Controller);
    let now = time::OffsetDateTime::now_utc();
    let future = |s: &Value| {
        let t = s.as_str().unwrap_or_default();
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t > now)
    };

    // ---- amesh status
    let status = amesh_json(&mesh, &["status"]);
    let components = status["components"].as_array().expect("components");
    let of_kind = |k: &str| {
        components
            .iter()
            .filter(|c| c["kind"] == k)
            .collect::<Vec<_>>()
    };
    let controllers = of_kind("controller");
    if controller_mode {
        assert_eq!(status["controlPlane"], "controller", "{status:#}");
        assert_eq!(controllers.len(), 1, "{status:#}");
        let c = controllers[0];
        assert_eq!(c["ready"], true, "{c:#}");
        assert_eq!(c["version"], env!("CARGO_PKG_VERSION"), "{c:#}");
        assert!(
            c["configVersion"].as_str().is_some_and(|v| !v.is_empty()),
            "{c:#}"
        );
        assert!(future(&c["earliestExpiry"]), "CA root expiry: {c:#}");
        // Every ztunnel and waypoint of the lab holds an xDS stream to it.
        let clients: Vec<&str> = (c["clients"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        for n in &state.nodes {
            let z = n.ztunnel.as_ref().expect("ztunnel");
            assert!(
                clients
                    .iter()
                    .any(|id| id.starts_with("ztunnel~") && id.contains(&z.ip.to_string())),
                "no xDS client for {}'s ztunnel ({}) in {clients:?}",
                n.name,
                z.ip
            );
        }
        for w in state
            .pods
            .iter()
            .filter(|p| state.waypoints.iter().any(|w| w.runs_in(p)))
        {
            assert!(
                clients
                    .iter()
                    .any(|id| id.starts_with("waypoint~") && id.contains(&w.ip.to_string())),
                "no xDS client for waypoint {} in {clients:?}",
                w.key()
            );
        }
        // The debug endpoint's per-client state: every type each client subscribed to has been
        // answered, and the client ACKed the last response (a steady lab has nothing in flight).
        let debug = SocketAddr::new(state.root_ip.into(), 15014);
        let connections = || -> Value {
            let body = e2e::lab::netns::run_in(&state.root_netns, move || {
                e2e::lab::mesh::http_get(debug, "/debug/connections")
            })
            .expect("enter the root netns")
            .map(|(_, body)| body)
            .unwrap_or_default();
            serde_json::from_str(&body).unwrap_or_default()
        };
        e2e::wait_for(
            "every xDS client to have ACKed the last response of each type",
            std::time::Duration::from_secs(10),
            || {
                let all = connections();
                let clients = all.as_array().cloned().unwrap_or_default();
                clients.len() == clients_expected(&state)
                    && clients.iter().all(|c| {
                        let types = c["types"].as_array().cloned().unwrap_or_default();
                        !types.is_empty()
                            && types.iter().all(|t| {
                                t["lastSentNonce"].is_string()
                                    && t["lastSentNonce"] == t["lastAckedNonce"]
                                    && t["nacks"] == 0
                            })
                    })
            },
        );
        // ... which `amesh status` shows per proxy, as istioctl proxy-status does.
        let now_synced = amesh_json(&mesh, &["status"]);
        for c in (now_synced["components"].as_array().into_iter()).flatten() {
            if c["kind"] != "controller" {
                assert_eq!(c["controllerSync"], "SYNCED", "{c:#}");
            }
        }
    } else {
        assert_eq!(status["controlPlane"], "file", "{status:#}");
        assert!(controllers.is_empty(), "{status:#}");
        // No controller to ask about the proxies' streams.
        assert!(
            components.iter().all(|c| c["controllerSync"].is_null()),
            "{status:#}"
        );
        assert!(
            status["note"]
                .as_str()
                .is_some_and(|n| n.contains("local config file")),
            "{status:#}"
        );
    }
    let capture = expected_capture_mode(&state);
    let ztunnels = of_kind("ztunnel");
    assert_eq!(ztunnels.len(), state.nodes.len(), "{status:#}");
    for n in &state.nodes {
        let z = ztunnels
            .iter()
            .find(|z| z["node"] == n.name.as_str())
            .unwrap_or_else(|| panic!("no ztunnel line for {}: {status:#}", n.name));
        assert_eq!(z["ready"], true, "{z:#}");
        assert_eq!(z["captureMode"], capture.as_str(), "{z:#}");
        assert_eq!(z["version"], env!("CARGO_PKG_VERSION"), "{z:#}");
        assert_eq!(
            z["xds"],
            if controller_mode { "connected" } else { "file" },
            "{z:#}"
        );
        assert!(
            z["configVersion"].as_str().is_some_and(|v| !v.is_empty()),
            "{z:#}"
        );
        let captured = captured_on(&state, &n.name);
        assert_eq!(z["capturedPods"], captured.len(), "{z:#} vs {captured:?}");
        let accounts: BTreeSet<&str> = captured
            .iter()
            .map(|p| p.service_account.as_str())
            .collect();
        assert_eq!(z["certificates"], accounts.len(), "{z:#}");
        assert!(future(&z["earliestExpiry"]), "{z:#}");
    }
    let waypoint_pods: Vec<_> = (state.pods.iter())
        .filter(|p| state.waypoints.iter().any(|w| w.runs_in(p)))
        .collect();
    let waypoints = of_kind("waypoint");
    assert_eq!(waypoints.len(), waypoint_pods.len(), "{status:#}");
    for w in &waypoints {
        assert_eq!(w["ready"], true, "{w:#}");
        assert_eq!(w["certificates"], 1, "{w:#}");
        assert!(future(&w["earliestExpiry"]), "{w:#}");
    }
    // The table names every component, and the YAML form parses to the same report.
    let table = amesh(&mesh, &["status"]);
    for n in &state.nodes {
        assert!(table.contains(&format!("ztunnel-{}", n.name)), "{table}");
    }
    assert_eq!(
        amesh_yaml(&mesh, &["status"])["components"]
            .as_array()
            .map(Vec::len),
        Some(components.len())
    );

    // ---- amesh config workloads: every pod with the IP the lab gave it and its node.
    let workloads = amesh_json(&mesh, &["config", "workloads"]);
    let table = rows(&amesh(&mesh, &["config", "workloads"]));
    assert_eq!(
        table[0],
        ["NAMESPACE", "NAME", "IP", "NODE", "WAYPOINT", "PROTOCOL"]
    );
    for p in state.pods.iter().filter(|p| p.namespace == "bookinfo") {
        let w = (workloads.as_array().into_iter().flatten())
            .find(|w| w["name"] == p.name.as_str() && w["namespace"] == "bookinfo")
            .unwrap_or_else(|| panic!("{} missing from config workloads", p.key()));
        assert_eq!(w["workloadIps"][0], p.ip.to_string(), "{w:#}");
        assert_eq!(w["node"], p.node.as_str(), "{w:#}");
        assert!(
            table.iter().any(|r| r[..4]
                == [
                    p.namespace.clone(),
                    p.name.clone(),
                    p.ip.to_string(),
                    p.node.clone()
                ]),
            "no row for {} {} {} in {table:?}",
            p.key(),
            p.ip,
            p.node
        );
    }
    // `--node` reads that node's ztunnel: the same mesh-wide workloads.
    let node2 = amesh_json(&mesh, &["config", "workloads", "--node", "node2"]);
    assert_eq!(
        node2.as_array().map(Vec::len),
        workloads.as_array().map(Vec::len)
    );
    assert_eq!(
        amesh_yaml(&mesh, &["config", "workloads"])
            .as_array()
            .map(Vec::len),
        workloads.as_array().map(Vec::len)
    );

    // ---- amesh config services: every Service with its VIP.
    let services = amesh_json(&mesh, &["config", "services"]);
    let table = rows(&amesh(&mesh, &["config", "services"]));
    assert_eq!(
        table[0][..4],
        ["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT"]
    );
    for s in &state.services {
        let Some(vip) = s.vip else { continue };
        let found = (services.as_array().into_iter().flatten())
            .find(|v| v["name"] == s.name.as_str() && v["namespace"] == s.namespace.as_str())
            .unwrap_or_else(|| panic!("{}/{} missing from config services", s.namespace, s.name));
        assert!(
            (found["vips"].as_array().into_iter().flatten()).any(|v| v
                .as_str()
                .is_some_and(|v| v.ends_with(&format!("/{vip}")) || v == vip.to_string())),
            "{found:#} lacks VIP {vip}"
        );
        assert!(
            table
                .iter()
                .any(|r| r[..3] == [s.namespace.clone(), s.name.clone(), vip.to_string()]),
            "no row for {}/{} {vip} in {table:?}",
            s.namespace,
            s.name
        );
    }

    // ---- amesh config policies: the ztunnel-enforced policies of policy.yaml (those with a
    // selector; targetRefs policies are the waypoint's).
    let bookinfo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
    let file = std::fs::read_to_string(bookinfo.join("policy.yaml")).expect("policy.yaml");
    let mut l4 = Vec::new();
    let mut at_waypoint = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&file) {
        let doc = Value::deserialize(doc).expect("policy.yaml parses");
        if doc["kind"] != "AuthorizationPolicy" {
            continue;
        }
        let key = format!(
            "{}/{}",
            doc["metadata"]["namespace"].as_str().unwrap_or_default(),
            doc["metadata"]["name"].as_str().unwrap_or_default()
        );
        let action = doc["spec"]["action"]
            .as_str()
            .unwrap_or("ALLOW")
            .to_string();
        if doc["spec"].get("targetRefs").is_some() || doc["spec"].get("targetRef").is_some() {
            at_waypoint.push(key);
        } else {
            l4.push((key, action));
        }
    }
    assert!(!l4.is_empty(), "policy.yaml has no ztunnel policy to check");
    let policies = amesh_json(&mesh, &["config", "policies"]);
    let table = rows(&amesh(&mesh, &["config", "policies"]));
    assert_eq!(table[0], ["NAMESPACE", "NAME", "ACTION", "SCOPE"]);
    let keys: Vec<String> = (policies.as_array().into_iter().flatten())
        .map(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or_default(),
                p["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    for (key, action) in &l4 {
        let (ns, name) = key.split_once('/').unwrap();
        let row = table
            .iter()
            .find(|r| r[0] == ns && r[1] == name)
            .unwrap_or_else(|| panic!("{key} not in config policies: {table:?}"));
        assert!(row[2].eq_ignore_ascii_case(action), "{row:?} vs {action}");
        assert_eq!(row[3], "WorkloadSelector", "{row:?}");
    }
    for key in &at_waypoint {
        assert!(
            !keys.contains(key),
            "{key} is the waypoint's, yet ztunnel holds it: {keys:?}"
        );
    }
    // They are what the ztunnel holds.
    let held = mesh.ztunnel_policies("node1");
    assert_eq!(keys.len(), held.len(), "{keys:?} vs {held:?}");

    // ---- amesh config certificates: per node, the identities of its captured pods, each
    // with a chain and a future expiry.
    let certs = amesh_json(&mesh, &["config", "certificates"]);
    for n in &state.nodes {
        let want: BTreeSet<String> = captured_on(&state, &n.name)
            .iter()
            .map(|p| {
                format!(
                    "spiffe://cluster.local/ns/{}/sa/{}",
                    p.namespace, p.service_account
                )
            })
            .collect();
        let got: BTreeSet<String> = (certs.as_array().into_iter().flatten())
            .filter(|c| c["node"] == n.name.as_str())
            .filter_map(|c| c["identity"].as_str().map(str::to_string))
            .collect();
        assert_eq!(got, want, "certificates of {}", n.name);
    }
    for c in certs.as_array().into_iter().flatten() {
        let chain = c["certChain"].as_array().expect("certChain");
        assert!(!chain.is_empty(), "{c:#}");
        assert!(future(&chain[0]["expirationTime"]), "{c:#}");
        assert_eq!(c["state"], "Available", "{c:#}");
    }
    let table = rows(&amesh(
        &mesh,
        &["config", "certificates", "--node", "node1"],
    ));
    assert_eq!(table[0][..4], ["NAME", "TYPE", "STATUS", "VALID CERT"]);
    let leaves: Vec<_> = table.iter().filter(|r| r[1] == "Leaf").collect();
    assert_eq!(
        leaves.len(),
        captured_on(&state, "node1")
            .iter()
            .map(|p| &p.service_account)
            .collect::<BTreeSet<_>>()
            .len(),
        "{table:?}"
    );
    assert!(leaves.iter().all(|r| r[3] == "true"), "{table:?}");
    assert_eq!(
        amesh_yaml(&mesh, &["config", "certificates"])
            .as_array()
            .map(Vec::len),
        certs.as_array().map(Vec::len)
    );

    // ---- Cluster mode: the same answers through the lab's stand-in API server (pods by
    // label, the pod proxy to the stats port's read-only /config_dump and to readiness),
    // with amesh run in the root netns, where the API server listens.
    let kube = |args: &[&str]| -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &state.root_netns])
            .arg(e2e::amesh_binary())
            .args(args)
            .args(["-o", "json"])
            .env("KUBECONFIG", e2e::lab::mesh::kubeconfig_path(&state))
            .output()
            .expect("run amesh in the root netns");
        assert!(
            out.status.success(),
            "amesh (cluster mode) {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("amesh's JSON")
    };
    assert_eq!(
        kube(&["config", "workloads"]),
        workloads,
        "cluster mode and lab mode read different workloads"
    );
    let identities = |v: &Value| -> BTreeSet<(String, String)> {
        (v.as_array().into_iter().flatten())
            .map(|c| {
                (
                    c["node"].as_str().unwrap_or_default().to_string(),
                    c["identity"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        identities(&kube(&["config", "certificates"])),
        identities(&certs)
    );
    let cluster_status = kube(&["status"]);
    let cluster_ztunnels: Vec<&Value> = (cluster_status["components"].as_array().into_iter())
        .flatten()
        .filter(|c| c["kind"] == "ztunnel")
        .collect();
    assert_eq!(
        cluster_ztunnels.len(),
        state.nodes.len(),
        "{cluster_status:#}"
    );
    for z in cluster_ztunnels {
        assert_eq!(z["ready"], true, "{z:#}");
        assert_eq!(z["captureMode"], capture.as_str(), "{z:#}");
        assert!(z["error"].is_null(), "{z:#}");
    }
    // The lab's controller runs in the root netns, not as a pod: the cluster has none.
    assert!(
        status_note(&cluster_status).contains("no running controller pod"),
        "{cluster_status:#}"
    );

    // ---- /config_dump compatibility: as istioctl decodes it.
    for n in &state.nodes {
        let text = ztunnel_dump(&mesh, &n.name);
        let dump: istioctl::ZtunnelDump = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}'s /config_dump does not decode as istioctl's ZtunnelDump: {e}",
                n.name
            )
        });
        istioctl::check(&dump, &state, &n.name, &captured_on(&state, &n.name), now);
    }

    // ---- A ztunnel that is gone: status still reports the rest, names the missing one, and
    // fails (scripts see it).
    e2e::lab::ztunnels::stop(&state, "node2", std::time::Duration::from_secs(5))
        .expect("stop node2's ztunnel");
    let out = Command::new(e2e::amesh_binary())
        .args(["--lab", &state.id.to_string(), "status", "-o", "json"])
        .output()
        .expect("run amesh");
    assert!(
        !out.status.success(),
        "status succeeded with a ztunnel gone"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ztunnel istio-system/ztunnel-node2"),
        "{stderr}"
    );
    let after: Value = serde_json::from_slice(&out.stdout).expect("status still prints JSON");
    let by_node = |node: &str| {
        (after["components"].as_array().into_iter().flatten())
            .find(|c| c["kind"] == "ztunnel" && c["node"] == node)
            .cloned()
            .unwrap_or_default()
    };
    assert!(by_node("node2")["error"].is_string(), "{after:#}");
    assert_eq!(by_node("node1")["ready"], true, "{after:#}");
    assert!(by_node("node1")["error"].is_null(), "{after:#}");
}

/// The /config_dump as istioctl decodes it: the field names (JSON tags) and types of the Go
/// structs in istio/istio istioctl/pkg/writer/ztunnel/configdump/api.go. Unknown fields are
/// allowed (Go ignores them). Go treats every field as optional (a missing one decodes as its
/// zero value); here the fields istioctl's tables print, and those that identify an entry,
/// are required, so a dump without them fails to decode. Go also matches keys
/// case-insensitively: the `StringMatch` keys accept our lower-case spelling by alias.
// Every field is decoded, which checks its name and type as istioctl's decoder would; the
// tables read only some of them.
#[allow(dead_code)]
mod istioctl {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ZtunnelDump {
        pub workloads: Vec<ZtunnelWorkload>,
        pub services: Vec<ZtunnelService>,
        pub policies: Vec<ZtunnelPolicy>,
        pub certificates: Vec<CertsDump>,
        pub workload_state: BTreeMap<String, WorkloadState>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ZtunnelWorkload {
        pub uid: String,
        pub workload_ips: Vec<String>,
        pub waypoint: Option<GatewayAddress>,
        pub network_gateway: Option<GatewayAddress>,
        pub protocol: String,
        pub name: String,
        pub namespace: String,
        pub service_account: String,
        pub workload_name: Option<String>,
        pub workload_type: Option<String>,
        pub canonical_name: Option<String>,
        pub canonical_revision: Option<String>,
        pub cluster_id: Option<String>,
        pub trust_domain: Option<String>,
        pub locality: Option<Locality>,
        /// Absent for a workload on no node (the lab's API server), as Istio's ztunnel leaves
        /// empty fields out; istioctl prints an empty NODE then.
        pub node: Option<String>,
        pub network: Option<String>,
        pub status: Option<String>,
        pub hostname: Option<String>,
        pub capacity: Option<u32>,
        pub application_tunnel: Option<ApplicationTunnel>,
        pub authorization_policies: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Locality {
        pub region: Option<String>,
        pub zone: Option<String>,
        pub subzone: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ApplicationTunnel {
        pub protocol: String,
        pub port: Option<u16>,
    }

    #[derive(Debug, Deserialize)]
    pub struct GatewayAddress {
        pub destination: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct LoadBalancer {
        pub mode: String,
        pub routing_preferences: Vec<String>,
        pub health_policy: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ZtunnelEndpoint {
        pub workload_uid: String,
        pub service: String,
        pub address: Option<String>,
        pub port: BTreeMap<u16, u16>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ZtunnelService {
        pub name: String,
        pub namespace: String,
        pub hostname: String,
        /// Go: `Addresses []string json:"vips"`.
        pub vips: Vec<String>,
        pub ports: BTreeMap<String, i64>,
        pub load_balancer: Option<LoadBalancer>,
        pub waypoint: Option<GatewayAddress>,
        pub endpoints: BTreeMap<String, ZtunnelEndpoint>,
        pub subject_alt_names: Option<Vec<String>>,
        pub ip_families: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PolicyMatch {
        pub namespaces: Option<Vec<StringMatch>>,
        pub not_namespaces: Option<Vec<StringMatch>>,
        pub principals: Option<Vec<StringMatch>>,
        pub not_principals: Option<Vec<StringMatch>>,
        pub source_ips: Option<Vec<String>>,
        pub not_source_ips: Option<Vec<String>>,
        pub destination_ips: Option<Vec<String>>,
        pub not_destination_ips: Option<Vec<String>>,
        pub destination_ports: Option<Vec<u16>>,
        pub not_destination_ports: Option<Vec<u16>>,
        pub service_accounts: Option<Vec<ServiceAccountMatch>>,
        pub not_service_accounts: Option<Vec<ServiceAccountMatch>>,
    }

    #[derive(Debug, Deserialize)]
    pub struct StringMatch {
        #[serde(rename = "Exact", alias = "exact")]
        pub exact: Option<String>,
        #[serde(rename = "Suffix", alias = "suffix")]
        pub suffix: Option<String>,
        #[serde(rename = "Prefix", alias = "prefix")]
        pub prefix: Option<String>,
        #[serde(rename = "Presence", alias = "presence")]
        pub presence: Option<Value>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ServiceAccountMatch {
        pub namespace: String,
        pub service_account: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct ZtunnelPolicy {
        pub name: String,
        pub namespace: String,
        pub scope: String,
        pub action: String,
        pub rules: Vec<Vec<Vec<PolicyMatch>>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct CertsDump {
        pub identity: String,
        pub state: String,
        pub cert_chain: Vec<Cert>,
        /// Go: `RootCert []*Cert json:"rootCerts"`.
        pub root_certs: Vec<Cert>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Cert {
        pub pem: String,
        pub serial_number: String,
        pub valid_from: String,
        pub expiration_time: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct WorkloadState {
        pub state: Option<String>,
        pub connections: Option<WorkloadConnections>,
        pub info: WorkloadInfo,
    }

    #[derive(Debug, Deserialize)]
    pub struct WorkloadConnections {
        pub inbound: Option<Vec<Value>>,
        pub outbound: Option<Vec<Value>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct WorkloadInfo {
        pub name: String,
        pub namespace: String,
        pub trust_domain: Option<String>,
        pub service_account: String,
    }

    /// istioctl's `PrintWorkloadSummary` rows (NAMESPACE NAME IP NODE).
    fn workload_rows(d: &ZtunnelDump) -> Vec<[String; 4]> {
        d.workloads
            .iter()
            .map(|w| {
                [
                    w.namespace.clone(),
                    w.name.clone(),
                    w.workload_ips.first().cloned().unwrap_or_default(),
                    w.node.clone().unwrap_or_default(),
                ]
            })
            .collect()
    }

    /// istioctl's `PrintServiceSummary` rows without WAYPOINT (NAMESPACE, SERVICE NAME, and
    /// SERVICE VIP: the first VIP after its `network/`).
    fn service_rows(d: &ZtunnelDump) -> Vec<[String; 3]> {
        d.services
            .iter()
            .map(|s| {
                let vip = s
                    .vips
                    .first()
                    .map(|v| v.split_once('/').map_or(v.as_str(), |(_, ip)| ip));
                [
                    s.namespace.clone(),
                    s.name.clone(),
                    vip.unwrap_or_default().to_string(),
                ]
            })
            .collect()
    }

    /// istioctl's `PrintSecretSummary`, per certificate of each chain: identity, whether it
    /// is valid now (`certNotExpired`), serial number (decimal; istioctl prints it in hex).
    fn cert_rows(d: &ZtunnelDump, now: time::OffsetDateTime) -> Vec<(String, bool, String)> {
        let rfc = &time::format_description::well_known::Rfc3339;
        d.certificates
            .iter()
            .flat_map(|c| {
                c.cert_chain.iter().map(move |cert| {
                    let from = time::OffsetDateTime::parse(&cert.valid_from, rfc);
                    let to = time::OffsetDateTime::parse(&cert.expiration_time, rfc);
                    let valid = matches!((from, to), (Ok(f), Ok(t)) if f < now && now < t);
                    (c.identity.clone(), valid, cert.serial_number.clone())
                })
            })
            .collect()
    }

    /// The tables istioctl would print from `node`'s dump hold the lab's pods, services,
    /// policies and certificates.
    pub fn check(
        d: &ZtunnelDump,
        state: &LabState,
        node: &str,
        captured: &[e2e::lab::PodInfo],
        now: time::OffsetDateTime,
    ) {
        let workloads = workload_rows(d);
        for p in &state.pods {
            let want = [
                p.namespace.clone(),
                p.name.clone(),
                p.ip.to_string(),
                p.node.clone(),
            ];
            assert!(
                workloads.contains(&want),
                "{node}: istioctl's workload table lacks {want:?}: {workloads:?}"
            );
        }
        let services = service_rows(d);
        for s in &state.services {
            let Some(vip) = s.vip else { continue };
            let want = [s.namespace.clone(), s.name.clone(), vip.to_string()];
            assert!(
                services.contains(&want),
                "{node}: istioctl's service table lacks {want:?}: {services:?}"
            );
            // Endpoints name workloads the dump lists (istioctl joins them by uid).
            let svc = d
                .services
                .iter()
                .find(|x| x.name == s.name && x.namespace == s.namespace)
                .unwrap();
            for (uid, e) in &svc.endpoints {
                assert_eq!(uid, &e.workload_uid);
                assert!(
                    d.workloads.iter().any(|w| &w.uid == uid),
                    "{node}: endpoint {uid} of {} names no workload",
                    s.name
                );
            }
        }
        assert!(
            d.policies.iter().any(|p| p.namespace == "bookinfo" && p.name == "ratings-from-reviews" && p.action == "Allow" && p.scope == "WorkloadSelector"),
            "{node}: istioctl's policy table lacks bookinfo/ratings-from-reviews Allow WorkloadSelector: {:?}",
            d.policies.iter().map(|p| (&p.namespace, &p.name, &p.action, &p.scope)).collect::<Vec<_>>()
        );
        // The principals istioctl shows for it are the file's.
        let p = d
            .policies
            .iter()
            .find(|p| p.name == "ratings-from-reviews")
            .unwrap();
        let principals: Vec<&str> = p
            .rules
            .iter()
            .flatten()
            .flatten()
            .flat_map(|m| m.principals.iter().flatten())
            .filter_map(|s| s.exact.as_deref())
            .collect();
        assert!(
            principals.contains(&"cluster.local/ns/bookinfo/sa/bookinfo-reviews"),
            "{principals:?}"
        );

        let certs = cert_rows(d, now);
        assert!(
            !certs.is_empty(),
            "{node}: istioctl's certificate table is empty"
        );
        for (identity, valid, serial) in &certs {
            assert!(valid, "{node}: {identity} is not valid now");
            assert!(
                !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_digit()),
                "{node}: serial {serial:?} is not decimal"
            );
        }
        for c in &d.certificates {
            assert_eq!(c.state, "Available", "{node}: {}", c.identity);
            assert!(
                !c.root_certs.is_empty(),
                "{node}: {} has no rootCerts",
                c.identity
            );
            for cert in c.cert_chain.iter().chain(&c.root_certs) {
                // Base64 of PEM text, as Istio's ztunnel writes it.
                use base64::Engine;
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(&cert.pem)
                    .expect("pem is base64");
                assert!(String::from_utf8_lossy(&pem).starts_with("-----BEGIN CERTIFICATE-----"));
            }
        }
        let want: BTreeSet<(String, String, String)> = captured
            .iter()
            .map(|p| {
                (
                    p.namespace.clone(),
                    p.name.clone(),
                    p.service_account.clone(),
                )
            })
            .collect();
        let got: BTreeSet<(String, String, String)> = d
            .workload_state
            .values()
            .map(|s| {
                (
                    s.info.namespace.clone(),
                    s.info.name.clone(),
                    s.info.service_account.clone(),
                )
            })
            .collect();
        assert_eq!(got, want, "{node}: workloadState");
        assert!(d
            .workload_state
            .values()
            .all(|s| s.state.as_deref() == Some("Up")));
    }
}
