//! Each node's container runtime, as far as pod networking goes, doing what containerd does:
//! the node has a CNI configuration list (Debian's `ptp` plugin with `host-local` IPAM from the
//! node's pod CIDR, then `amesh-cni` when the mesh runs, put there by the real installer,
//! `amesh-cni install --once`, as the DaemonSet's install step does on a node), and a pod's ADD
//! runs the `loopback`
//! plugin, then each plugin of the list in order (DEL: in reverse), each as its own process in
//! the node's network namespace, with its configuration on stdin (plus `name`, `cniVersion`
//! and the previous plugin's result as `prevResult`) and the `CNI_*` environment. The pod's IP
//! is whatever IPAM gave it: nothing else in the lab knows it before ADD returns.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::state::{LabState, NodeInfo};

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
/// The CNI version the lab's configurations speak.
pub const CNI_VERSION: &str = "1.0.0";
/// The interface the pod sees.
pub const POD_IFNAME: &str = "eth0";
/// CNI's "try again later" error code.
pub const TRY_AGAIN: u64 = 11;

/// A CNI operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin {plugin} is not installed (looked in {dirs}): scripts/setup.sh installs Debian's containernetworking-plugins")]
    Missing { plugin: String, dirs: String },
    #[error("running CNI plugin {plugin} in {netns}: {source}")]
    Spawn {
        plugin: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI {command} of pod {pod}: {plugin} failed with code {code}: {msg} ({details})")]
    Plugin {
        command: &'static str,
        pod: String,
        plugin: String,
        code: u64,
        msg: String,
        details: String,
    },
    #[error("CNI {command} of pod {pod}: {plugin} answered something unreadable: {detail}")]
    Output {
        command: &'static str,
        pod: String,
        plugin: String,
        detail: String,
    },
}

impl CniError {
    /// Whether the runtime should tear the sandbox down and try again later (a kubelet does).
    pub fn is_try_again(&self) -> bool {
        matches!(self, CniError::Plugin { code, .. } if *code == TRY_AGAIN)
    }
}

/// A pod sandbox, as the runtime hands it to CNI.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sandbox's network namespace, by name (`/run/netns/<name>`).
    pub netns: String,
}

impl Sandbox {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What ADD made of a sandbox.
#[derive(Clone, Debug)]
pub struct Attached {
    /// The pod's IPv4 address, from IPAM.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack lab.
    pub ip6: Option<std::net::Ipv6Addr>,
    /// The node end of the pod's veth.
    pub host_veth: String,
}

/// The amesh part of a node's configuration.
#[derive(Clone, Debug)]
pub struct MeshPlugin {
    /// Directory of the `amesh-cni` binary the installer copies into the node's bin dir.
    pub bin_dir: PathBuf,
    /// ztunnel's node-agent socket on this node.
    pub ztunnel_socket: PathBuf,
    /// The plugin's kubeconfig (the installer writes one on a real node).
    pub kubeconfig: PathBuf,
}

/// A node's CNI configuration list as its network plugin writes it (what
/// `/etc/cni/net.d/*.conflist` holds on a node before amesh is installed).
pub fn conflist(node: &NodeInfo, ipam_dir: &Path) -> Value {
    let mut ranges = vec![json!([{"subnet": node.pod_cidr.to_string()}])];
    let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
    if let Some(cidr6) = node.pod_cidr6 {
        ranges.push(json!([{"subnet": cidr6.to_string()}]));
        routes.push(json!({"dst": "::/0"}));
    }
    let plugins = vec![json!({
        "type": "ptp",
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            "dataDir": ipam_dir,
        },
    })];
    json!({"cniVersion": CNI_VERSION, "name": "lab", "plugins": plugins})
}

/// Where node `node`'s CNI files live: `<run dir>/nodes/<node>/cni/`.
pub fn node_dir(state: &LabState, node: &str) -> PathBuf {
    state.run_dir.join("nodes").join(node).join("cni")
}

/// Where the installer puts the node's copy of `amesh-cni` (its CNI bin dir).
fn node_bin_dir(state: &LabState, node: &str) -> PathBuf {
    node_dir(state, node).join("bin")
}

/// Writes the node's configuration list (and its IPAM folder) and returns its path; with the
/// mesh, then runs `amesh-cni install --once` on the node's dirs, which copies the plugin into
/// the node's bin dir and appends its entry to the list.
pub fn write_conflist(
    state: &LabState,
    node: &NodeInfo,
    mesh: Option<&MeshPlugin>,
) -> std::io::Result<PathBuf> {
    let dir = node_dir(state, &node.name);
    let ipam = dir.join("ipam");
    std::fs::create_dir_all(&ipam)?;
    let path = dir.join("10-lab.conflist");
    let list = conflist(node, &ipam);
    std::fs::write(&path, serde_json::to_vec_pretty(&list).unwrap_or_default())?;
    if let Some(m) = mesh {
        install_plugin(&dir, &node_bin_dir(state, &node.name), m)?;
    }
    Ok(path)
}

/// Runs the real installer once on a node's CNI dirs.
fn install_plugin(conf_dir: &Path, bin_dir: &Path, mesh: &MeshPlugin) -> std::io::Result<()> {
    let installer = mesh.bin_dir.join("amesh-cni");
    let out = Command::new(&installer)
        .arg("install")
        .arg("--once")
        .arg("--cni-conf-dir")
        .arg(conf_dir)
        .arg("--cni-bin-dir")
        .arg(bin_dir)
        .arg("--ztunnel-socket")
        .arg(&mesh.ztunnel_socket)
        .arg("--kubeconfig")
        .arg(&mesh.kubeconfig)
        // The lab's own kubeconfig is given; a KUBERNETES_SERVICE_HOST of the machine
        // running the lab must not make the installer write another.
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            std::io::Error::other(format!("running {} install: {e}", installer.display()))
        })?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{} install --once failed ({}): {}{}",
            installer.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
        )));
    }
    Ok(())
}

/// The node's runtime: where its configuration and plugins are.
#[derive(Clone, Debug)]
pub struct NodeRuntime {
    pub node: NodeInfo,
    pub conflist: Value,
    /// Directories searched for plugin binaries (`CNI_PATH`).
    pub plugin_dirs: Vec<PathBuf>,
}

impl NodeRuntime {
    /// The runtime of `node` with the configuration list at `conflist`.
    pub fn load(node: &NodeInfo, conflist: &Path, extra_dirs: &[PathBuf]) -> std::io::Result<Self> {
        let text = std::fs::read(conflist)?;
        let conflist = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
        let mut plugin_dirs = vec![PathBuf::from(PLUGIN_DIR)];
        plugin_dirs.extend(extra_dirs.iter().cloned());
        Ok(NodeRuntime {
            node: node.clone(),
            conflist,
            plugin_dirs,
        })
    }

    /// Sets up the sandbox's network: loopback, then the list.
    pub fn add(&self, sandbox: &Sandbox) -> Result<Attached, CniError> {
        let loopback = json!({"type": "loopback"});
        self.exec("ADD", sandbox, "lo", &loopback, "cni-loopback", None)?;
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let result = self.exec(
                "ADD",
                sandbox,
                POD_IFNAME,
                plugin,
                self.name(),
                prev.as_ref(),
            )?;
            prev = Some(result);
        }
        let result = prev.unwrap_or(Value::Null);
        let output = |detail: &str| CniError::Output {
            command: "ADD",
            pod: sandbox.key(),
            plugin: "the chain".into(),
            detail: format!("{detail}: {result}"),
        };
        let ips: Vec<std::net::IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        let ip = ips
            .iter()
            .find_map(|ip| match ip {
                std::net::IpAddr::V4(v4) => Some(*v4),
                _ => None,
            })
            .ok_or_else(|| output("no IPv4 address in the result"))?;
        let ip6 = ips.iter().find_map(|ip| match ip {
            std::net::IpAddr::V6(v6) => Some(*v6),
            _ => None,
        });
        let host_veth = result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i.get("sandbox").is_none())
            .and_then(|i| i["name"].as_str())
            .unwrap_or_default()
            .to_string();
        Ok(Attached { ip, ip6, host_veth })
    }

    /// Tears the sandbox's network down: the list in reverse, then loopback. Every plugin
    /// runs even when one fails (the first failure is returned), as a runtime cleans up.
    pub fn del(&self, sandbox: &Sandbox) -> Result<(), CniError> {
        let mut first = None;
        for plugin in self.plugins().iter().rev() {
            if let Err(e) = self.exec("DEL", sandbox, POD_IFNAME, plugin, self.name(), None) {
                first.get_or_insert(e);
            }
        }
        let loopback = json!({"type": "loopback"});
        if let Err(e) = self.exec("DEL", sandbox, "lo", &loopback, "cni-loopback", None) {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    fn plugins(&self) -> &[Value] {
        self.conflist["plugins"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.conflist["name"].as_str().unwrap_or("lab")
    }

    fn exec(
        &self,
        command: &'static str,
        sandbox: &Sandbox,
        ifname: &str,
        plugin: &Value,
        network: &str,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let binary = self
            .plugin_dirs
            .iter()
            .map(|d| d.join(&kind))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::Missing {
                plugin: kind.clone(),
                dirs: self
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })?;
        let mut conf = plugin.clone();
        conf["cniVersion"] = json!(CNI_VERSION);
        conf["name"] = json!(network);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let cni_path = self
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            sandbox.namespace, sandbox.name, sandbox.uid, sandbox.uid
        );
        let mut cmd = Command::new(&binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.uid)
            .env("CNI_NETNS", crate::netns::path(&sandbox.netns))
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| CniError::Spawn {
            plugin: kind.clone(),
            netns: self.node.netns.clone(),
            source,
        };
        let mut child =
            crate::process::spawn_piped_in_netns(&self.node.netns, cmd).map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let err: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
            return Err(CniError::Plugin {
                command,
                pod: sandbox.key(),
                plugin: kind,
                code: err["code"].as_u64().unwrap_or(0),
                msg: err["msg"]
                    .as_str()
                    .unwrap_or("no CNI error on stdout")
                    .to_string(),
                details: format!(
                    "{} {}",
                    err["details"].as_str().unwrap_or_default(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
                .trim()
                .to_string(),
            });
        }
        if command == "DEL" || stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(stdout.trim()).map_err(|e| CniError::Output {
            command,
            pod: sandbox.key(),
            plugin: kind,
            detail: format!("{e}: {stdout:?}"),
        })
    }
}

/// The runtime of `node` as the lab configured it (its configuration list on disk, the
/// node's bin dir the installer copied `amesh-cni` into).
pub fn for_node(state: &LabState, node: &NodeInfo) -> std::io::Result<NodeRuntime> {
    let extra: Vec<PathBuf> = (state.mesh.iter())
        .map(|_| node_bin_dir(state, &node.name))
        .collect();
    NodeRuntime::load(
        node,
        &node_dir(state, &node.name).join("10-lab.conflist"),
        &extra,
    )
}

/// The sandbox of a pod the lab created.
pub fn sandbox_of(pod: &crate::state::PodInfo) -> Sandbox {
    Sandbox {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        netns: pod.netns.clone(),
    }
}

/// CNI DEL for the lab's pods while ztunnel still runs (it releases each), and the pods'
/// resolv.conf files: best effort, for teardown. The ztunnel and waypoint pods keep their
/// network until their processes have stopped (cutting it first would leave their
/// control-plane connections half-open, and the controller waiting on them); deleting the
/// namespaces takes it, and the run directory their IPAM records. (ztunnel has nothing to
/// release for a waypoint pod: it is never captured.)
pub fn teardown(state: &LabState) {
    let ztunnel_pods: Vec<&str> = state
        .nodes
        .iter()
        .filter_map(|n| n.ztunnel.as_ref().map(|z| z.pod.as_str()))
        .collect();
    let waypoint_pod = |pod: &crate::state::PodInfo| state.waypoints.iter().any(|w| w.runs_in(pod));
    for pod in &state.pods {
        if ztunnel_pods.contains(&pod.key().as_str()) || waypoint_pod(pod) {
            remove_resolv_conf(pod);
            continue;
        }
        if let Some(node) = state.node(&pod.node) {
            match for_node(state, node) {
                Ok(runtime) => {
                    if let Err(e) = runtime.del(&sandbox_of(pod)) {
                        tracing::debug!(pod = %pod.key(), "CNI DEL: {e}");
                    }
                }
                Err(e) => tracing::debug!(node = %node.name, "no CNI configuration: {e}"),
            }
        }
        remove_resolv_conf(pod);
    }
}

/// The kubelet's `resolv.conf` for a pod: `/etc/netns/<pod netns>/resolv.conf`, which `ip
/// netns exec` mounts over `/etc/resolv.conf`. The nameserver (the lab's root netns) stands
/// for the cluster's DNS Service; with the mesh, capture sends DNS to ztunnel's proxy.
pub fn write_resolv_conf(state: &LabState, pod: &crate::state::PodInfo) -> std::io::Result<()> {
    let path = resolv_conf_path(pod);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        path,
        format!(
            "nameserver {}\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
            state.root_ip,
            ns = pod.namespace
        ),
    )
}

/// Where [`write_resolv_conf`] puts a pod's file (its echo app reads it from there).
pub fn resolv_conf_path(pod: &crate::state::PodInfo) -> PathBuf {
    PathBuf::from("/etc/netns")
        .join(&pod.netns)
        .join("resolv.conf")
}

fn remove_resolv_conf(pod: &crate::state::PodInfo) {
    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&pod.netns));
}
