//! `state.json`: what a running lab consists of (nodes, pods, services, processes), written by
//! the process that brought it up and read by `amesh-lab status`, `exec` and `down`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::plan::LabId;
use crate::process::ProcessRecord;
use crate::rundir;

const STATE_FILE: &str = "state.json";

/// A state file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no lab {0} (no {path}); `amesh-lab status` lists the labs", path = rundir::lab_dir(.0).join(STATE_FILE).display())]
    NotFound(LabId),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid lab state: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no pod {0:?} in lab {1} (pods: {2})")]
    NoPod(String, LabId, String),
    #[error("pod name {0:?} is ambiguous in lab {1}: use NAMESPACE/NAME")]
    AmbiguousPod(String, LabId),
}

/// A whole lab.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub id: LabId,
    /// Selects the lab's /16 (see `plan`).
    pub index: u8,
    pub run_dir: PathBuf,
    /// Where the generated manifests are (the controller's folder source reads them).
    pub manifests_dir: PathBuf,
    /// The private root netns holding the bridge.
    pub root_netns: String,
    /// The root netns's own address on the bridge.
    pub root_ip: Ipv4Addr,
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
    pub services: Vec<ServiceInfo>,
    /// Every process the lab started (echo apps, ...), for `down` and stale cleanup.
    pub processes: Vec<ProcessRecord>,
    /// Whether a keeper process holds the lab (it outlives the process that brought it up).
    pub detached: bool,
    /// The mesh running in the lab; `None` for a lab without the mesh.
    #[serde(default)]
    pub mesh: Option<crate::mesh_options::MeshOptions>,
    /// Nodes and pods have IPv6 addresses besides IPv4 ones.
    #[serde(default)]
    pub dual_stack: bool,
    /// The waypoints made for the input's waypoint Gateways (with the mesh).
    #[serde(default)]
    pub waypoints: Vec<WaypointInfo>,
}

/// A waypoint: a Gateway of class `istio-waypoint`, deployed as istiod deploys it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaypointInfo {
    /// The Gateway's namespace, also its pod's, ServiceAccount's and Service's.
    pub namespace: String,
    /// The Gateway's name, also its ServiceAccount's and Service's.
    pub gateway: String,
}

impl WaypointInfo {
    /// Whether `pod` is this waypoint's (istiod labels its pods with the Gateway's name).
    pub fn runs_in(&self, pod: &PodInfo) -> bool {
        let label = crate::cluster::waypoint::GATEWAY_NAME_LABEL;
        pod.namespace == self.namespace && pod.labels.get(label) == Some(&self.gateway)
    }

    /// `namespace/gateway`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.gateway)
    }
}

/// A node: a netns on the bridge that routes its pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `node1`, `node2`, ...: also the Kubernetes Node name.
    pub name: String,
    /// 1-based node number, selects its addresses.
    pub number: usize,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The node's ztunnel pod, once started (with the mesh).
    #[serde(default)]
    pub ztunnel: Option<ZtunnelPod>,
    /// In a dual-stack lab: the node's IPv6 address and IPv6 pod CIDR.
    #[serde(default)]
    pub ip6: Option<std::net::Ipv6Addr>,
    #[serde(default)]
    pub pod_cidr6: Option<ipnet::Ipv6Net>,
}

/// Where a node's ztunnel runs: its own pod, as Istio's DaemonSet runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZtunnelPod {
    /// `namespace/name` of the pod.
    pub pod: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// A pod: a netns wired to its node by the node's CNI chain, running the echo app (or, in
/// `istio-system`, the node's ztunnel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node: String,
    pub netns: String,
    /// From the node's IPAM, at CNI ADD.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, in a dual-stack lab.
    #[serde(default)]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// The node side of the pod's veth (in the node netns).
    pub veth: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// TCP ports the echo app listens on.
    pub ports: Vec<u16>,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Service and its ClusterIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub namespace: String,
    /// None for headless Services.
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePortInfo>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortInfo {
    pub name: Option<String>,
    pub port: u16,
    /// A number or a container port name, as in the manifest (the port itself when absent).
    pub target_port: String,
}

impl LabState {
    /// Path of the state file of lab `id`.
    pub fn path_of(id: &LabId) -> PathBuf {
        rundir::lab_dir(id).join(STATE_FILE)
    }

    /// Reads the state of lab `id`.
    pub fn load(id: &LabId) -> Result<LabState, StateError> {
        let path = Self::path_of(id);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.clone()))
            }
            Err(source) => {
                return Err(StateError::Io {
                    what: "cannot read",
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes the state file atomically (write + rename), so readers never see half a file.
    pub fn save(&self) -> Result<(), StateError> {
        let path = self.run_dir.join(STATE_FILE);
        let tmp = self.run_dir.join(format!("{STATE_FILE}.tmp"));
        let io = |what, p: &Path| {
            let path = p.display().to_string();
            move |source| StateError::Io { what, path, source }
        };
        // Serialising plain data with string keys cannot fail.
        let text = serde_json::to_string_pretty(self).expect("lab state serialises");
        std::fs::write(&tmp, text).map_err(io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("cannot rename to", &path))
    }

    /// Finds a pod by `namespace/name`, or by a name that is unique across namespaces.
    pub fn pod(&self, name: &str) -> Result<&PodInfo, StateError> {
        let found: Vec<&PodInfo> = match name.split_once('/') {
            Some((ns, n)) => self
                .pods
                .iter()
                .filter(|p| p.namespace == ns && p.name == n)
                .collect(),
            None => self.pods.iter().filter(|p| p.name == name).collect(),
        };
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(StateError::NoPod(
                name.to_string(),
                self.id.clone(),
                self.pods
                    .iter()
                    .map(PodInfo::key)
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
            _ => Err(StateError::AmbiguousPod(name.to_string(), self.id.clone())),
        }
    }

    /// Pods whose name starts with `prefix` (e.g. a Deployment's name), in a namespace.
    pub fn pods_of(&self, namespace: &str, prefix: &str) -> Vec<&PodInfo> {
        self.pods
            .iter()
            .filter(|p| p.namespace == namespace && p.name.starts_with(prefix))
            .collect()
    }

    /// Finds a Service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceInfo> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// Finds a node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
