//! From manifests to a planned cluster (no I/O): Deployments expanded into Pods, pods scheduled
//! on nodes, Service ClusterIPs assigned, the objects every cluster has added (a ztunnel pod per
//! node when the mesh runs, a kube-system pod, the `kubernetes` Service with its manual
//! EndpointSlice), and the objects a real cluster's API server holds right after scheduling
//! (Pods with `spec.nodeName` and no status yet, Services with `spec.clusterIP`, Nodes) built
//! for the controller's folder source. With the mesh, every Gateway of class `istio-waypoint`
//! becomes a waypoint as istiod deploys it (`waypoint`): a ServiceAccount, a Deployment whose pod
//! is scheduled like the others, a Service with a ClusterIP. Pod IPs are not planned: the node's
//! IPAM assigns them when the pod's CNI ADD runs, as on a real node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    HostIP, Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus,
    Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::plan::{self, fnv1a, uid_of, AddressPlan, PlanError, MAX_NODES};
use crate::state::{ServiceInfo, ServicePortInfo};

use super::waypoint::{self, PlannedWaypoint, WaypointError};

/// The namespace of objects that do not name one.
const DEFAULT_NAMESPACE: &str = "default";
/// Kubernetes' alphabet for generated name suffixes (no vowels, no look-alikes).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Manifests that cannot become a lab.
#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    #[error("pod {pod} asks for node {node:?} (spec.nodeName), but the lab has nodes node1..node{nodes}")]
    UnknownNode {
        pod: String,
        node: String,
        nodes: usize,
    },
    #[error("the lab needs 1..={MAX_NODES} nodes, not {0}")]
    NodeCount(usize),
    #[error("two pods are named {0} (a Pod and a Deployment's pod?)")]
    DuplicatePod(String),
    #[error("too many objects for the address plan: {0}")]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Waypoint(#[from] WaypointError),
    #[error(transparent)]
    AppEnv(#[from] crate::echo::env::EnvError),
}

/// The input the lab reads: a view over the loaded manifests, so that this module does not
/// depend on how they were loaded.
#[derive(Debug, Default, Clone)]
pub struct Input {
    pub pods: Vec<Pod>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    /// User-provided Nodes (for their labels), by name.
    pub nodes: BTreeMap<String, Node>,
    /// Gateways: those of class `istio-waypoint` become waypoints (with the mesh).
    pub gateways: Vec<controller::manifests::Gateway>,
    /// ServiceAccounts as given (a waypoint adopts one of its name instead of making it).
    pub service_accounts: Vec<ServiceAccount>,
}

/// What runs in a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodRole {
    /// The echo app (every container of the input, and the kube-system pod).
    App,
    /// The node's ztunnel (the DaemonSet's pod).
    Ztunnel,
    /// A Gateway's waypoint (its Deployment's pod); the Gateway is its
    /// `gateway.networking.k8s.io/gateway-name` label, in the pod's namespace.
    Waypoint,
}

/// A pod the lab will create.
#[derive(Debug, Clone)]
pub struct PlannedPod {
    /// The Pod object as the API server holds it once scheduled (no status yet).
    pub pod: Pod,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// 1-based node number.
    pub node: usize,
    pub role: PodRole,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's `version` label, for the echo app.
    pub version: String,
    /// TCP ports the echo app listens on.
    pub ports: Vec<u16>,
    /// The containers' plain `env` values, for the echo app (app pods only; checked).
    pub env: Vec<(String, String)>,
}

/// The whole planned cluster.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub nodes: Vec<Node>,
    /// System pods first (each node's ztunnel, then kube-system), then the input's, in the
    /// order a fresh cluster would start them.
    pub pods: Vec<PlannedPod>,
    /// Services with their ClusterIPs filled in (`default/kubernetes` first).
    pub services: Vec<Service>,
    pub service_infos: Vec<ServiceInfo>,
    /// EndpointSlices written by hand, as for `default/kubernetes`.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// The waypoints made for the input's waypoint Gateways (their Services are in
    /// `services`, their pods in `pods`).
    pub waypoints: Vec<PlannedWaypoint>,
}

/// Namespace of the mesh's own pods (ztunnel), as Istio installs them.
pub const MESH_NAMESPACE: &str = "istio-system";
/// The Kubernetes API server's port behind `default/kubernetes`.
pub const API_SERVER_PORT: u16 = 6443;

/// Expands, schedules and addresses everything. `mesh`: whether each node runs a ztunnel pod.
/// `default/kubernetes` points at the lab's root netns address, where the stand-in API server
/// listens (outside the mesh).
pub fn expand(
    input: &Input,
    nodes: usize,
    plan: &AddressPlan,
    mesh: bool,
) -> Result<Expanded, ExpandError> {
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(ExpandError::NodeCount(nodes));
    }
    let mut given_services = input.services.clone();
    let has_kubernetes = given_services.iter().any(|s| {
        s.metadata.name.as_deref() == Some("kubernetes")
            && s.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE) == DEFAULT_NAMESPACE
    });
    let mut endpoint_slices = Vec::new();
    if !has_kubernetes {
        // First, so that it gets the first address of the service range, as in a cluster.
        given_services.insert(0, kubernetes_service());
        endpoint_slices.push(kubernetes_endpoints(plan.root_ip()));
    }
    // Without the mesh nothing implements the class: the Gateways stay mere objects.
    let waypoints = if mesh {
        let key = |meta: &ObjectMeta| {
            let ns = meta.namespace.as_deref().filter(|n| !n.is_empty());
            let name = meta.name.as_deref().unwrap_or_default();
            format!("{}/{name}", ns.unwrap_or(DEFAULT_NAMESPACE))
        };
        let services: Vec<String> = given_services.iter().map(|s| key(&s.metadata)).collect();
        let accounts: Vec<String> = (input.service_accounts.iter())
            .map(|s| key(&s.metadata))
            .collect();
        waypoint::plan(&input.gateways, &services, &accounts, DEFAULT_NAMESPACE)?
    } else {
        Vec::new()
    };
    // After the input's Services, so that theirs keep the addresses they get without a waypoint.
    given_services.extend(waypoints.iter().map(|w| w.service.clone()));
    let services = assign_cluster_ips(&given_services, plan)?;
    let mut pods: Vec<(Pod, PodRole)> = Vec::new();
    if mesh {
        pods.extend((1..=nodes).map(|n| (ztunnel_pod(n), PodRole::Ztunnel)));
    }
    pods.push((kube_system_pod(), PodRole::App));
    pods.extend(input.pods.iter().map(|p| (normalized(p), PodRole::App)));
    for d in &input.deployments {
        pods.extend(deployment_pods(d).into_iter().map(|p| (p, PodRole::App)));
    }
    for w in &waypoints {
        let made = deployment_pods(&w.deployment);
        pods.extend(made.into_iter().map(|p| (p, PodRole::Waypoint)));
    }
    let mut seen = BTreeSet::new();
    let mut planned = Vec::new();
    let mut next_rr = 0usize;
    let mut per_node = vec![0usize; nodes + 1];
    for (mut pod, role) in pods {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        if !seen.insert(key.clone()) {
            return Err(ExpandError::DuplicatePod(key));
        }
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        let node = match spec.node_name.as_deref() {
            Some(wanted) => (1..=nodes)
                .find(|n| plan::node_name(*n) == wanted)
                .ok_or_else(|| ExpandError::UnknownNode {
                    pod: key.clone(),
                    node: wanted.to_string(),
                    nodes,
                })?,
            None => {
                next_rr += 1;
                (next_rr - 1) % nodes + 1
            }
        };
        spec.node_name = Some(plan::node_name(node));
        let service_account = spec
            .service_account_name
            .get_or_insert_with(|| "default".to_string())
            .clone();
        per_node[node] += 1;
        if per_node[node] > plan::MAX_PODS_PER_NODE {
            return Err(ExpandError::Plan(PlanError::BadPodSlot {
                node,
                slot: per_node[node] - 1,
            }));
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let ports = listen_ports(&pod, &namespace, &labels, &services);
        let uid = pod.metadata.uid.get_or_insert_with(|| uid_of(&key)).clone();
        // A ztunnel pod is recognised by what it is, as before waypoints had roles of their own.
        let role = if role == PodRole::App
            && namespace == MESH_NAMESPACE
            && labels.get("app").map(String::as_str) == Some("ztunnel")
        {
            PodRole::Ztunnel
        } else {
            role
        };
        // Scheduled, not started: the kubelet writes the status once the sandbox exists.
        pod.status = None;
        let version = labels
            .get("version")
            .or_else(|| labels.get("app.kubernetes.io/version"))
            .cloned()
            .unwrap_or_default();
        // The app's settings fail `up` now, naming the pod, rather than its process later.
        let env = match role {
            PodRole::App => crate::echo::env::pod_env(&pod)?,
            _ => Vec::new(),
        };
        planned.push(PlannedPod {
            env,
            pod,
            name,
            namespace,
            uid,
            node,
            role,
            service_account,
            labels,
            version,
            ports,
        });
    }
    let node_objects = (1..=nodes)
        .map(|n| node_object(n, plan, input.nodes.get(&plan::node_name(n))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Expanded {
        nodes: node_objects,
        pods: planned,
        service_infos: services.iter().map(service_info).collect(),
        services,
        endpoint_slices,
        waypoints,
    })
}

fn yaml_object<T: serde::de::DeserializeOwned>(text: &str) -> T {
    // The texts below are constants of this file, checked by its tests.
    serde_yaml::from_str(text).expect("a well-formed built-in manifest")
}

/// The node's ztunnel, as Istio's DaemonSet creates it (not a host-network pod: it has a
/// sandbox of its own, which the CNI chain must let start before any ztunnel runs).
fn ztunnel_pod(node: usize) -> Pod {
    let name = plan::node_name(node);
    let mut pod: Pod = yaml_object(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ztunnel-{name}\n  namespace: {MESH_NAMESPACE}\n  labels: {{app: ztunnel, sidecar.istio.io/inject: 'false'}}\nspec:\n  serviceAccountName: ztunnel\n  containers: [{{name: istio-proxy, image: amesh/ztunnel}}]\n"
    ));
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(name);
    }
    pod
}

/// A pod of kube-system, as every cluster runs (CoreDNS's stand-in).
fn kube_system_pod() -> Pod {
    yaml_object(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: coredns\n  namespace: kube-system\n  labels: {k8s-app: kube-dns}\nspec:\n  serviceAccountName: coredns\n  nodeName: node1\n  containers: [{name: coredns, image: coredns, ports: [{containerPort: 9153}]}]\n",
    )
}

/// `default/kubernetes`: the API server's Service, without a selector.
fn kubernetes_service() -> Service {
    yaml_object(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubernetes\n  namespace: default\n  labels: {{component: apiserver, provider: kubernetes}}\nspec:\n  ports: [{{name: https, port: 443, targetPort: {API_SERVER_PORT}, protocol: TCP}}]\n"
    ))
}

/// The endpoints of `default/kubernetes`, kept by hand (as the API server keeps its own):
/// the lab's stand-in API server, outside the mesh.
fn kubernetes_endpoints(api_server: Ipv4Addr) -> EndpointSlice {
    yaml_object(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: kubernetes\n  namespace: default\n  labels: {{kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: amesh-lab}}\naddressType: IPv4\nendpoints:\n- addresses: ['{api_server}']\n  conditions: {{ready: true}}\nports: [{{name: https, port: {API_SERVER_PORT}, protocol: TCP}}]\n"
    ))
}

/// The status the kubelet writes once the pod's sandbox exists: running, its IP, and Ready
/// once its containers are.
pub fn pod_status(
    ip: Ipv4Addr,
    ip6: Option<std::net::Ipv6Addr>,
    host: Ipv4Addr,
    ready: bool,
) -> PodStatus {
    let condition = |t: &str, ok: bool| PodCondition {
        type_: t.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        ..PodCondition::default()
    };
    PodStatus {
        phase: Some("Running".to_string()),
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(
            std::iter::once(ip.to_string())
                .chain(ip6.map(|v6| v6.to_string()))
                .map(|ip| PodIP { ip })
                .collect(),
        ),
        host_ip: Some(host.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host.to_string(),
        }]),
        conditions: Some(vec![
            condition("PodScheduled", true),
            condition("Initialized", true),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ]),
        ..PodStatus::default()
    }
}

/// A Pod as given, with the defaults the API server would fill in.
fn normalized(pod: &Pod) -> Pod {
    let mut pod = pod.clone();
    if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        pod.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
    }
    pod
}

/// The pods of a Deployment, named as Kubernetes names them
/// (`<deployment>-<template hash>-<suffix>`) and owned by the ReplicaSet Kubernetes would make
/// (`<deployment>-<template hash>`), so that workload names derive as in a real cluster.
fn deployment_pods(d: &Deployment) -> Vec<Pod> {
    let namespace = d
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let name = d.metadata.name.clone().unwrap_or_default();
    let spec = &d.spec;
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    // Serialising plain data cannot fail; an empty hash input would only make names less varied.
    let template_json = serde_json::to_vec(&spec.template).unwrap_or_default();
    let hash = safe_encode(fnv1a(&template_json), 10);
    let rs_name = format!("{name}-{hash}");
    let template_meta = spec.template.metadata.clone().unwrap_or_default();
    (0..replicas)
        .map(|i| {
            let suffix = safe_encode(fnv1a(format!("{namespace}/{rs_name}/{i}").as_bytes()), 5);
            let mut labels = template_meta.labels.clone().unwrap_or_default();
            labels.insert("pod-template-hash".to_string(), hash.clone());
            Pod {
                metadata: ObjectMeta {
                    name: Some(format!("{rs_name}-{suffix}")),
                    namespace: Some(namespace.clone()),
                    labels: Some(labels),
                    annotations: template_meta.annotations.clone(),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "apps/v1".to_string(),
                        kind: "ReplicaSet".to_string(),
                        name: rs_name.clone(),
                        uid: uid_of(&format!("replicaset/{namespace}/{rs_name}")),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..ObjectMeta::default()
                },
                spec: spec.template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The ports the echo app opens: every TCP containerPort, plus the numeric target ports of
/// Services selecting the pod (manifests often leave containerPort out).
fn listen_ports(
    pod: &Pod,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    services: &[Service],
) -> Vec<u16> {
    let mut ports = BTreeSet::new();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    for c in containers {
        for p in c.ports.iter().flatten() {
            let tcp = p.protocol.as_deref().is_none_or(|proto| proto == "TCP");
            if let (true, Ok(port)) = (tcp, u16::try_from(p.container_port)) {
                ports.insert(port);
            }
        }
    }
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let same_ns = svc
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
            == namespace;
        if !same_ns || !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        for p in spec.ports.iter().flatten() {
            if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                continue;
            }
            let target = match &p.target_port {
                Some(IntOrString::Int(t)) => *t,
                Some(IntOrString::String(_)) => continue,
                None => p.port,
            };
            if let Ok(t) = u16::try_from(target) {
                ports.insert(t);
            }
        }
    }
    ports.into_iter().filter(|p| *p != 0).collect()
}

/// Services with `spec.clusterIP` set: explicit addresses are kept, `None` stays headless,
/// ExternalName gets none, the rest get the next free address of the lab's service range.
fn assign_cluster_ips(
    services: &[Service],
    plan: &AddressPlan,
) -> Result<Vec<Service>, ExpandError> {
    let taken: BTreeSet<String> = services
        .iter()
        .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
        .collect();
    let mut k = 0;
    let mut out = Vec::with_capacity(services.len());
    for svc in services {
        let mut svc = svc.clone();
        if svc.metadata.namespace.as_deref().is_none_or(str::is_empty) {
            svc.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
        }
        let spec = svc.spec.get_or_insert_with(Default::default);
        let external = spec.type_.as_deref() == Some("ExternalName");
        let unset = spec.cluster_ip.as_deref().is_none_or(str::is_empty);
        if unset && !external {
            let ip = loop {
                let ip = plan.service_ip(k)?.to_string();
                k += 1;
                if !taken.contains(&ip) {
                    break ip;
                }
            };
            spec.cluster_ip = Some(ip.clone());
            spec.cluster_ips = Some(vec![ip]);
        }
        out.push(svc);
    }
    Ok(out)
}

fn service_info(svc: &Service) -> ServiceInfo {
    let spec = svc.spec.clone().unwrap_or_default();
    ServiceInfo {
        name: svc.metadata.name.clone().unwrap_or_default(),
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        vip: spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()),
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| ServicePortInfo {
                name: p.name,
                port: u16::try_from(p.port).unwrap_or(0),
                target_port: match p.target_port {
                    Some(IntOrString::Int(t)) => t.to_string(),
                    Some(IntOrString::String(s)) => s,
                    None => p.port.to_string(),
                },
            })
            .collect(),
    }
}

/// The Node object of node `n`, keeping the labels of a user-provided one.
fn node_object(n: usize, plan: &AddressPlan, given: Option<&Node>) -> Result<Node, PlanError> {
    let name = plan::node_name(n);
    let mut meta = given.map(|g| g.metadata.clone()).unwrap_or_default();
    meta.name = Some(name.clone());
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert("kubernetes.io/hostname".to_string(), name.clone());
    let cidr = plan.pod_cidr(n)?.to_string();
    Ok(Node {
        metadata: meta,
        spec: Some(NodeSpec {
            pod_cidr: Some(cidr.clone()),
            pod_cidrs: Some(vec![cidr]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_string(),
                    address: plan.node_ip(n)?.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".to_string(),
                    address: name,
                },
            ]),
            ..NodeStatus::default()
        }),
    })
}

/// `len` characters of Kubernetes' safe alphabet from a hash.
fn safe_encode(mut h: u64, len: usize) -> String {
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        s.push(SAFE_ALPHABET[(h % SAFE_ALPHABET.len() as u64) as usize] as char);
        h /= SAFE_ALPHABET.len() as u64;
        if h == 0 {
            h = fnv1a(s.as_bytes());
        }
    }
    s
}

#[cfg(test)]
#[path = "expand_tests.rs"]
mod tests;
