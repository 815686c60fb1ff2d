//! The mesh in the lab: a shared CA, the stand-in Kubernetes API server, ztunnel's config
//! translated from the generated manifests (by the controller's library, written as Istio
//! ztunnel's local file) or the controller, one real `ztunnel` per node running in the node's
//! ztunnel pod, and `amesh-cni` in every node's CNI chain (`runtime`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Lab, LabError};
use crate::state::{LabState, NodeInfo, PodInfo};

// Here for the mesh's callers: the options live apart so that `state` (which records them)
// does not depend on the mesh, and the HTTP GETs in `probe` since the kubelet's probe uses them.
pub use crate::mesh_options::{ControlPlane, MeshOptions};
pub use crate::probe::{http_get, http_status};

/// The controller's xDS + CA port in the root netns.
pub const CONTROLLER_PORT: u16 = 15012;
/// The controller's read-only debug port in the root netns (`--debug-addr`, istiod's 15014),
/// always on in a lab: `amesh --lab <id> status` reads it.
pub const CONTROLLER_DEBUG_PORT: u16 = 15014;
/// Name of the controller process in the lab's process records.
pub const CONTROLLER: &str = "amesh-controller";

fn hook_error(hook: &'static str, e: impl std::fmt::Display) -> LabError {
    LabError::Hook {
        hook,
        source: e.to_string().into(),
    }
}

/// `<run dir>/mesh`.
pub fn mesh_dir(state: &LabState) -> PathBuf {
    state.run_dir.join("mesh")
}

pub fn config_path(state: &LabState) -> PathBuf {
    mesh_dir(state).join("ztunnel-config.yaml")
}

pub fn ca_dir(state: &LabState) -> PathBuf {
    mesh_dir(state).join("ca")
}

fn node_dir(state: &LabState, node: &str) -> PathBuf {
    mesh_dir(state).join(node)
}

pub fn cni_socket(state: &LabState, node: &str) -> PathBuf {
    node_dir(state, node).join("cni.sock")
}

/// Name of a node's ztunnel process in the lab's process records.
pub fn ztunnel_name(node: &str) -> String {
    format!("ztunnel {node}")
}

/// Translates the lab's manifests (generated + input) into ztunnel's local config file.
/// Written through a temporary file and a rename, so a watching ztunnel never reads half a file.
pub fn write_config(state: &LabState) -> Result<usize, LabError> {
    let loaded = controller::load_dir(&state.manifests_dir);
    if !loaded.errors.is_empty() {
        return Err(LabError::Manifests {
            dir: state.manifests_dir.display().to_string(),
            errors: loaded.errors.iter().map(|e| e.to_string()).collect(),
        });
    }
    // The controller fetches jwksUri keys itself; without it, one round here (a uri not
    // reachable yet is fetched again at the next write: pod status changes, applies).
    let uris = controller::translate::jwks_uris(&loaded.manifests);
    let fetch = || controller::jwks::fetch_all_blocking(&uris, std::time::Duration::from_secs(2));
    // From the root netns, where the controller would run: pods are routed from there.
    let (jwks, jwks_errors) = if uris.is_empty() {
        Default::default()
    } else {
        crate::netns::run_in(&state.root_netns, fetch)
            .map_err(|e| hook_error("on_manifests_written", e))?
    };
    for e in &jwks_errors {
        tracing::warn!("JWKS: {e}");
    }
    let translated = controller::translate::translate_with_jwks(
        &loaded.manifests,
        &controller::TranslateOptions::default(),
        &jwks,
    );
    for w in &translated.warnings {
        tracing::warn!("translation: {w}");
    }
    let addresses: Vec<_> = translated
        .addresses
        .iter()
        .map(|(_, a)| a.clone())
        .collect();
    let policies: Vec<_> = translated
        .authorizations
        .iter()
        .map(|(_, a)| a.clone())
        .collect();
    crate::waypoints::write_l7_configs(state, &translated)?;
    let config = mesh::state::LocalConfig::from_resources(&addresses, &policies)
        .map_err(|e| hook_error("on_manifests_written", e))?;
    let yaml = config
        .to_yaml()
        .map_err(|e| hook_error("on_manifests_written", e))?;
    let path = config_path(state);
    std::fs::create_dir_all(mesh_dir(state)).map_err(|e| hook_error("on_manifests_written", e))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).map_err(|e| hook_error("on_manifests_written", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| hook_error("on_manifests_written", e))?;
    Ok(addresses.len() + policies.len())
}

/// Writes the config, creates the CA, and starts what runs outside the nodes: the stand-in
/// Kubernetes API server and (with that control plane) the controller. ztunnels start later,
/// as the pods of their nodes.
pub fn start(lab: &mut Lab, opts: &MeshOptions) -> Result<(), LabError> {
    let state = lab.state().clone();
    write_config(&state)?;
    // One root for the whole cluster, made before any ztunnel starts so none races to make it.
    mesh::certs::LocalCa::load_or_create(&ca_dir(&state), "cluster.local")
        .map_err(|e| hook_error("on_manifests_written", e))?;
    for binary in ["ztunnel", "amesh-cni"] {
        let path = opts.bin_dir.join(binary);
        if !path.is_file() {
            return Err(hook_error(
                "on_manifests_written",
                format!(
                    "{} not found: build it with `cargo build --bins`",
                    path.display()
                ),
            ));
        }
    }
    crate::waypoints::check_binary(&state, opts)?;
    start_api_server(lab)?;
    if opts.control_plane == ControlPlane::Controller {
        start_controller(lab, opts)?;
    }
    Ok(())
}

/// Name of the stand-in API server in the lab's process records.
pub const API_SERVER: &str = "kube-apiserver";

/// The kubeconfig the nodes' CNI plugins use (the installer writes one on a real node).
pub fn kubeconfig_path(state: &LabState) -> PathBuf {
    mesh_dir(state).join("kubeconfig")
}

/// Starts the stand-in Kubernetes API server in the root netns, on `default/kubernetes`'s
/// endpoint, answering from the lab's manifests, and writes the kubeconfig for it.
pub fn start_api_server(lab: &mut Lab) -> Result<(), LabError> {
    let state = lab.state().clone();
    let dir = mesh_dir(&state);
    std::fs::create_dir_all(&dir).map_err(|e| hook_error("on_manifests_written", e))?;
    let token = format!("lab-{}-apiserver", state.id);
    let token_file = dir.join("apiserver-token");
    std::fs::write(&token_file, &token).map_err(|e| hook_error("on_manifests_written", e))?;
    let addr = SocketAddr::new(state.root_ip.into(), crate::apiserver::PORT);
    let mut names = vec![
        state.root_ip.to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ];
    if let Some(vip) = state.service("default", "kubernetes").and_then(|s| s.vip) {
        names.push(vip.to_string());
    }
    let mut cmd = Command::new(lab.binary());
    cmd.arg("apiserver")
        .arg("--manifests")
        .arg(&state.manifests_dir)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--ca-dir")
        .arg(ca_dir(&state))
        .arg("--token-file")
        .arg(&token_file);
    for name in &names {
        cmd.arg("--name").arg(name);
    }
    lab.spawn(API_SERVER, &state.root_netns, cmd)?;
    lab.wait_listening(API_SERVER, &[crate::apiserver::PORT])?;
    let kubeconfig = crate::apiserver::kubeconfig(
        &format!("https://{addr}"),
        &ca_dir(&state).join(mesh::certs::ROOT_CERT_FILE),
        &token,
    );
    std::fs::write(kubeconfig_path(&state), kubeconfig)
        .map_err(|e| hook_error("on_manifests_written", e))
}

/// The amesh part of a node's CNI configuration.
pub fn cni_plugin(state: &LabState, opts: &MeshOptions, node: &str) -> crate::runtime::MeshPlugin {
    crate::runtime::MeshPlugin {
        bin_dir: opts.bin_dir.clone(),
        ztunnel_socket: cni_socket(state, node),
        kubeconfig: kubeconfig_path(state),
    }
}

/// The bootstrap token a node's ztunnel presents to the controller (the lab's stand-in for a
/// ServiceAccount token).
fn node_token(state: &LabState, node: &str) -> String {
    format!("lab-{}-{node}", state.id)
}

/// Starts (or restarts) `amesh-controller` in the root netns on the lab's manifests, and waits
/// until it serves.
pub fn start_controller(lab: &mut Lab, opts: &MeshOptions) -> Result<(), LabError> {
    let state = lab.state().clone();
    let binary = opts.bin_dir.join("amesh-controller");
    if !binary.is_file() {
        return Err(hook_error(
            "on_manifests_written",
            format!(
                "{} not found: build it with `cargo build --bins`",
                binary.display()
            ),
        ));
    }
    let mut tokens: String = state
        .nodes
        .iter()
        .map(|n| format!("{} {}\n", node_token(&state, &n.name), n.name))
        .collect();
    tokens.push_str(&crate::waypoints::token_lines(&state));
    let tokens_file = mesh_dir(&state).join("node-tokens");
    std::fs::write(&tokens_file, tokens).map_err(|e| hook_error("on_manifests_written", e))?;
    let mut cmd = Command::new(&binary);
    cmd.arg("--manifests")
        .arg(&state.manifests_dir)
        .arg("--ca-dir")
        .arg(ca_dir(&state))
        // TLS only, as in a cluster: the serving certificate names the root netns address and
        // ztunnels verify it with the mesh root (their `istio-ca-root-cert`).
        .arg("--tls-addr")
        .arg(format!("{}:{CONTROLLER_PORT}", state.root_ip))
        .arg("--tls-san")
        .arg(state.root_ip.to_string())
        .args(["--xds-addr", "off"])
        .arg("--tokens")
        .arg(&tokens_file)
        .args(graph_args(&state, opts))
        .arg("--debug-addr")
        .arg(format!("{}:{CONTROLLER_DEBUG_PORT}", state.root_ip))
        .env(
            "RUST_LOG",
            std::env::var("AMESH_LAB_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()),
        );
    lab.spawn(CONTROLLER, &state.root_netns, cmd)?;
    lab.wait_listening(CONTROLLER, &[CONTROLLER_PORT, CONTROLLER_DEBUG_PORT])
}

/// The controller's live graph page flags (1 s scrapes, so a lab's page follows traffic
/// closely): on the root netns address, which reaches every
/// pod's :15020 (the page scrapes the proxies there); a browser in that netns opens it.
fn graph_args(state: &LabState, opts: &MeshOptions) -> Vec<String> {
    match opts.graph_port {
        Some(port) => vec![
            "--graph-addr".into(),
            format!("{}:{port}", state.root_ip),
            "--graph-interval".into(),
            "1s".into(),
        ],
        None => Vec::new(),
    }
}

/// The address of the controller's live graph page, when the lab runs it.
pub fn graph_addr(state: &LabState) -> Option<std::net::SocketAddr> {
    let mesh = state.mesh.as_ref()?;
    if mesh.control_plane != ControlPlane::Controller {
        return None;
    }
    Some(std::net::SocketAddr::new(
        state.root_ip.into(),
        mesh.graph_port?,
    ))
}

/// Where the lab's ztunnels pin their pods' eBPF links (on bpffs, which ztunnel mounts).
const BPF_PIN_ROOT: &str = "/sys/fs/bpf/amesh";

/// Where `node`'s ztunnel pins its pods' eBPF links (`AMESH_BPF_PIN_DIR`): a directory per
/// lab and node, so that a ztunnel releasing the pins of pods it did not get back never
/// touches another lab's (two labs may both have a `node1`).
pub fn bpf_pin_dir(id: &crate::plan::LabId, node: &str) -> PathBuf {
    PathBuf::from(BPF_PIN_ROOT).join(format!("{id}-{node}"))
}

/// Removes lab `id`'s pin directories: pinned links outlive ztunnel, so what a ztunnel that
/// never got its pods' DELs left (killed by a test, or crashed) would otherwise stay in the
/// kernel after the lab is gone.
pub fn remove_bpf_pins(id: &crate::plan::LabId) {
    let prefix = format!("{id}-");
    let Ok(dir) = std::fs::read_dir(BPF_PIN_ROOT) else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "removing pinned eBPF links failed");
            }
        }
    }
}

/// ztunnel worker threads per lab node, unless `ZTUNNEL_WORKER_THREADS` is set.
pub const LAB_WORKER_THREADS: &str = "1";

/// Starts (or restarts) the ztunnel of `node` as a process of the lab, in its pod's netns
/// (the node's ztunnel pod must have been started: [`NodeInfo::ztunnel`]). Returns without
/// waiting for readiness.
pub fn start_ztunnel(lab: &mut Lab, opts: &MeshOptions, node: &NodeInfo) -> Result<(), LabError> {
    let (netns, cmd) = ztunnel_command(lab.state(), opts, node)?;
    lab.spawn(&ztunnel_name(&node.name), &netns, cmd)?;
    Ok(())
}

/// The command that runs `node`'s ztunnel (its environment, its capabilities) and the netns
/// of the node's ztunnel pod it runs in. Writes the node's resolver file on the way.
pub fn ztunnel_command(
    state: &LabState,
    opts: &MeshOptions,
    node: &NodeInfo,
) -> Result<(String, Command), LabError> {
    let node = state
        .node(&node.name)
        .cloned()
        .unwrap_or_else(|| node.clone());
    let Some(pod) = node.ztunnel.clone() else {
        return Err(hook_error(
            "start_ztunnel",
            format!("node {} has no ztunnel pod yet", node.name),
        ));
    };
    let ztunnel = opts.bin_dir.join("ztunnel");
    let dir = node_dir(state, &node.name);
    std::fs::create_dir_all(&dir).map_err(|e| hook_error("on_manifests_written", e))?;
    // The node's resolver, as the kubelet gives ztunnel's pod one: the lab's root netns,
    // where a test may answer (or, to play a slow upstream, swallow) the queries ztunnel
    // forwards. Nothing there by default: a forwarded query fails at once.
    let resolv_conf = dir.join("resolv.conf");
    std::fs::write(&resolv_conf, format!("nameserver {}\n", state.root_ip))
        .map_err(|e| hook_error("on_manifests_written", e))?;
    let mut cmd = Command::new(&ztunnel);
    match opts.control_plane {
        ControlPlane::LocalFile => {
            cmd.env("LOCAL_XDS_PATH", config_path(state))
                .env("LOCAL_CA_DIR", ca_dir(state));
        }
        ControlPlane::Controller => {
            let url = format!("https://{}:{CONTROLLER_PORT}", state.root_ip);
            let root = ca_dir(state).join(mesh::certs::ROOT_CERT_FILE);
            cmd.env("XDS_ADDRESS", &url)
                .env("CA_ADDRESS", &url)
                .env("XDS_ROOT_CA", &root)
                .env("CA_ROOT_CA", &root)
                .env("AMESH_TOKEN", node_token(state, &node.name));
        }
    }
    let (pod_ns, pod_name) = pod.pod.split_once('/').unwrap_or(("", pod.pod.as_str()));
    cmd.env("NODE_NAME", &node.name)
        .env("INSTANCE_IP", pod.ip.to_string())
        .env("POD_NAME", pod_name)
        .env("POD_NAMESPACE", pod_ns)
        .env("AMESH_CNI_SOCKET", cni_socket(state, &node.name))
        .env("AMESH_STATE_FILE", dir.join("pods.json"))
        .env("AMESH_BPF_PIN_DIR", bpf_pin_dir(&state.id, &node.name))
        .env("AMESH_RESOLV_CONF", &resolv_conf)
        // Every lab node shares this machine's cores with the others and with the apps: one
        // worker per node's ztunnel, like a node with a core of its own (unless the caller
        // sets the variable itself, which the child then inherits).
        .env(
            "ZTUNNEL_WORKER_THREADS",
            std::env::var("ZTUNNEL_WORKER_THREADS").unwrap_or_else(|_| LAB_WORKER_THREADS.into()),
        )
        .env(
            "RUST_LOG",
            std::env::var("AMESH_LAB_ZTUNNEL_LOG").unwrap_or_else(|_| "info".into()),
        );
    // Unset, ztunnel picks eBPF where the kernel allows (its default); set, what it says.
    match opts.capture_mode.as_str() {
        "" | "auto" => cmd.env_remove("CAPTURE_MODE"),
        mode => cmd.env("CAPTURE_MODE", mode),
    };
    cmd.envs(opts.ztunnel_env.iter().map(|(k, v)| (k, v)));
    // Root, but only the capabilities the DaemonSet grants: the lab proves that list.
    let caps = crate::caps::ztunnel_caps(&opts.capture_mode)
        .map_err(|e| hook_error("start_ztunnel", e))?;
    crate::caps::restrict(&mut cmd, caps);
    Ok((pod.netns, cmd))
}

/// Starts the ztunnel of `pod`'s node in `pod` (the node's ztunnel pod, its sandbox wired)
/// and waits until it is ready.
pub fn run_ztunnel_pod(lab: &mut Lab, opts: &MeshOptions, pod: &PodInfo) -> Result<(), LabError> {
    let ztunnel = crate::state::ZtunnelPod {
        pod: pod.key(),
        netns: pod.netns.clone(),
        ip: pod.ip,
    };
    let node = lab.set_node_ztunnel(&pod.node, ztunnel)?;
    start_ztunnel(lab, opts, &node)?;
    wait_ready(&node, Duration::from_secs(30))
}

/// Adds (or replaces) a manifest in the lab's input and re-translates ztunnel's config, as a
/// user's `kubectl apply` followed by the control plane's push would.
pub fn apply(lab: &Lab, name: &str, yaml: &str) -> Result<(), LabError> {
    let dir = lab.state().manifests_dir.join("input");
    std::fs::create_dir_all(&dir).map_err(|e| hook_error("apply", e))?;
    // Write beside and rename: the controller watches this folder and must never read half a
    // file (it only reads *.yaml, so the temporary name is invisible to it).
    let tmp = dir.join(format!(".applied-{name}.tmp"));
    std::fs::write(&tmp, yaml).map_err(|e| hook_error("apply", e))?;
    std::fs::rename(&tmp, dir.join(format!("applied-{name}.yaml")))
        .map_err(|e| hook_error("apply", e))?;
    write_config(lab.state()).map(|_| ())
}

/// Removes a manifest added by [`apply`] and re-translates.
pub fn remove(lab: &Lab, name: &str) -> Result<(), LabError> {
    let path = lab
        .state()
        .manifests_dir
        .join("input")
        .join(format!("applied-{name}.yaml"));
    std::fs::remove_file(path).map_err(|e| hook_error("remove", e))?;
    write_config(lab.state()).map(|_| ())
}

/// The mesh config ztunnels currently serve, as the model `mesh::state` builds from it.
pub fn state_model(state: &LabState) -> Result<::mesh::state::Model, LabError> {
    ::mesh::state::LocalConfig::load(config_path(state))
        .and_then(|c| c.into_model())
        .map_err(|e| hook_error("state_model", e))
}

/// The address of a node's ztunnel pod.
fn ztunnel_ip(node: &NodeInfo, what: &'static str) -> Result<std::net::IpAddr, LabError> {
    node.ztunnel
        .as_ref()
        .map(|z| z.ip.into())
        .ok_or_else(|| hook_error(what, format!("node {} runs no ztunnel pod", node.name)))
}

/// A node's ztunnel `/metrics` text (15020 on its pod's address, asked from the node).
pub fn metrics(node: &NodeInfo) -> Result<String, LabError> {
    let addr = SocketAddr::new(ztunnel_ip(node, "metrics")?, 15020);
    let got = crate::netns::run_in(&node.netns, move || http_get(addr, "/metrics"))?;
    got.map(|(_, body)| body).ok_or_else(|| {
        hook_error(
            "metrics",
            format!("no answer from ztunnel metrics on {}", node.name),
        )
    })
}

/// An HTTP/1.1 GET from inside `pod` to `addr`; the echo app's JSON answer.
pub fn http_from(
    lab: &Lab,
    pod: &str,
    addr: SocketAddr,
    path: &str,
) -> Result<crate::echo::EchoReply, String> {
    let netns = lab.pod(pod).map_err(|e| e.to_string())?.netns.clone();
    let path = path.to_string();
    let got =
        crate::netns::run_in(&netns, move || http_get(addr, &path)).map_err(|e| e.to_string())?;
    let (status, body) = got.ok_or_else(|| format!("no HTTP answer from {addr}"))?;
    if status != 200 {
        return Err(format!("status {status} from {addr}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("not an echo answer ({e}): {body}"))
}

/// Waits until every node's ztunnel has every pod of the lab in its configuration, with its
/// address and healthy: a Ready pod's endpoint reaches the ztunnels a moment after the
/// kubelet writes its status (the controller's folder poll, the xDS push), as on a cluster.
/// The lab is ready for traffic only then.
/// ztunnels that are not running (a test stopped one) are not waited for.
pub fn wait_synced(state: &LabState, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    for node in &state.nodes {
        let Some(z) = &node.ztunnel else { continue };
        let running = state
            .processes
            .iter()
            .rev()
            .find(|p| p.name == ztunnel_name(&node.name))
            .is_some_and(crate::process::is_alive);
        if !running {
            continue;
        }
        loop {
            let missing = missing_from_config(state, &z.netns);
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(hook_error(
                    "on_lab_ready",
                    format!(
                        "ztunnel on {} lacks these pods after {timeout:?}: {}",
                        node.name,
                        missing.join(", ")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The lab's pods that a ztunnel's `/config_dump` does not show with their address and
/// healthy (all of them if it does not answer).
fn missing_from_config(state: &LabState, ztunnel_netns: &str) -> Vec<String> {
    let admin: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 15000).into();
    let dump = crate::netns::run_in(ztunnel_netns, move || http_get(admin, "/config_dump"))
        .ok()
        .flatten()
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
    let workloads = dump
        .as_ref()
        .and_then(|d| d["workloads"].as_array().cloned())
        .unwrap_or_default();
    state
        .pods
        .iter()
        .filter(|pod| {
            !workloads.iter().any(|w| {
                w["name"] == pod.name.as_str()
                    && w["namespace"] == pod.namespace.as_str()
                    && w["status"] != "Unhealthy"
                    && w["workloadIps"]
                        .as_array()
                        .is_some_and(|ips| ips.iter().any(|ip| ip == &pod.ip.to_string()))
            })
        })
        .map(PodInfo::key)
        .collect()
}

/// Polls a node's ztunnel readiness endpoint (`15021/healthz/ready` on its pod's address,
/// asked from the node, as a kubelet probes).
pub fn wait_ready(node: &NodeInfo, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::new(ztunnel_ip(node, "wait_ready")?, 15021);
    loop {
        let ready = crate::netns::run_in(&node.netns, move || http_status(addr, "/healthz/ready"))?;
        if ready == Some(200) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(hook_error(
                "on_node_created",
                format!(
                    "ztunnel on {} not ready after {timeout:?} (see its log in the lab's logs/)",
                    node.name
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
