//! Waypoints in the lab: the `waypoint` binary run as the only container of a waypoint pod
//! (`cluster::waypoint` made the pod from a Gateway), in that pod's netns, as ztunnel runs in
//! its own pod. Its environment follows the control plane: the controller's xDS and CA with a
//! workload token of the waypoint's identity, or the local files (ztunnel's addresses, the CA
//! on disk, and the waypoint's own L7 config, rewritten with ztunnel's file).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use prost::Message;

use crate::cluster::waypoint::STATUS_PORT;
use crate::cluster::{Lab, LabError};
use crate::mesh::{self, ControlPlane, MeshOptions, CONTROLLER_PORT};
use crate::probe::HttpProbe;
use crate::state::{LabState, PodInfo, WaypointInfo};

/// The binary, in [`MeshOptions::bin_dir`].
pub const BINARY: &str = "waypoint";
/// Worker threads per lab waypoint, unless `WAYPOINT_WORKER_THREADS` is set: the lab's
/// processes share a few cores.
pub const LAB_WORKER_THREADS: &str = "1";
/// How long a waypoint may take to become ready (it needs a certificate and its config).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn error(hook: &'static str, e: impl std::fmt::Display) -> LabError {
    LabError::Hook {
        hook,
        source: e.to_string().into(),
    }
}

/// Name of a waypoint's process in the lab's process records.
pub fn process_name(namespace: &str, gateway: &str) -> String {
    format!("waypoint {namespace}/{gateway}")
}

/// The workload token a waypoint presents to the controller's CA: it may only get its own
/// identity's certificate with it (the lab's stand-in for its projected ServiceAccount token).
pub fn token(state: &LabState, w: &WaypointInfo) -> String {
    format!("lab-{}-waypoint-{}-{}", state.id, w.namespace, w.gateway)
}

/// The controller's `--tokens` lines of the lab's waypoints:
/// `<token> workload <namespace>/<service account>`.
pub fn token_lines(state: &LabState) -> String {
    // The ServiceAccount is named after the Gateway, as istiod names it.
    (state.waypoints.iter())
        .map(|w| {
            format!(
                "{} workload {}/{}\n",
                token(state, w),
                w.namespace,
                w.gateway
            )
        })
        .collect()
}

/// The waypoint's local L7 config (protobuf `amesh.l7.v1.LocalL7Config`), for
/// `AMESH_L7_PATH`.
pub fn l7_path(state: &LabState, w: &WaypointInfo) -> PathBuf {
    mesh::mesh_dir(state)
        .join("waypoints")
        .join(format!("{}.{}.l7.pb", w.namespace, w.gateway))
}

/// Fails unless the `waypoint` binary is there, when the lab has waypoints to run.
pub fn check_binary(state: &LabState, opts: &MeshOptions) -> Result<(), LabError> {
    let Some(first) = state.waypoints.first() else {
        return Ok(());
    };
    let path = opts.bin_dir.join(BINARY);
    if path.is_file() {
        return Ok(());
    }
    Err(error(
        "on_manifests_written",
        format!(
            "{} not found, and Gateway {} needs it: build it with `cargo build --bins`",
            path.display(),
            first.key()
        ),
    ))
}

/// Writes every waypoint's L7 config from the translated manifests, through a temporary file
/// and a rename so that a watching waypoint never reads half a file.
pub fn write_l7_configs(
    state: &LabState,
    translated: &controller::Translated,
) -> Result<(), LabError> {
    for w in &state.waypoints {
        let config = l7_config(translated, w);
        let path = l7_path(state, w);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, config.encode_to_vec())?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| error("on_manifests_written", format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// What the controller would send waypoint `w` over xDS.
fn l7_config(
    translated: &controller::Translated,
    w: &WaypointInfo,
) -> amesh_proto::amesh::l7::v1::LocalL7Config {
    controller::translate::l7_local_config(translated, &w.namespace, &w.gateway)
}

/// The waypoint Gateway that `pod` runs, from the label istiod puts on its pods.
fn waypoint_of(state: &LabState, pod: &PodInfo) -> Result<WaypointInfo, LabError> {
    (state.waypoints.iter())
        .find(|w| w.runs_in(pod))
        .cloned()
        .ok_or_else(|| {
            error(
                "on_pod_sandbox_ready",
                format!("pod {} is no waypoint's pod", pod.key()),
            )
        })
}

/// The pod of waypoint `namespace/gateway`.
pub fn pod(state: &LabState, namespace: &str, gateway: &str) -> Result<PodInfo, LabError> {
    let w = (state.waypoints.iter()).find(|w| w.namespace == namespace && w.gateway == gateway);
    (state.pods.iter())
        .find(|p| w.is_some_and(|w| w.runs_in(p)))
        .cloned()
        .ok_or_else(|| {
            let known: Vec<String> = state.waypoints.iter().map(WaypointInfo::key).collect();
            error(
                "waypoint",
                format!(
                    "no waypoint {namespace}/{gateway} runs in lab {} (waypoints: {})",
                    state.id,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
}

/// The kubelet's readiness probe of a waypoint pod: `/healthz/ready` on its status port.
pub fn probe(state: &LabState, pod: &PodInfo) -> Result<HttpProbe, LabError> {
    let node = state.node(&pod.node).ok_or_else(|| {
        error(
            "waypoint",
            format!("pod {} is on an unknown node {}", pod.key(), pod.node),
        )
    })?;
    Ok(HttpProbe {
        what: format!("the waypoint in pod {}", pod.key()),
        netns: node.netns.clone(),
        addr: (pod.ip, STATUS_PORT).into(),
        path: "/healthz/ready".into(),
        timeout: READY_TIMEOUT,
    })
}

/// Starts `waypoint` as `pod`'s container, in the pod's netns; returns its readiness probe
/// (not waited for).
pub fn start(lab: &mut Lab, opts: &MeshOptions, pod: &PodInfo) -> Result<HttpProbe, LabError> {
    let state = lab.state().clone();
    let w = waypoint_of(&state, pod)?;
    let mut cmd = Command::new(opts.bin_dir.join(BINARY));
    match opts.control_plane {
        ControlPlane::LocalFile => {
            cmd.env("LOCAL_XDS_PATH", mesh::config_path(&state))
                .env("LOCAL_CA_DIR", mesh::ca_dir(&state))
                .env("AMESH_L7_PATH", l7_path(&state, &w));
        }
        ControlPlane::Controller => {
            let url = format!("https://{}:{CONTROLLER_PORT}", state.root_ip);
            let root = mesh::ca_dir(&state).join(::mesh::certs::ROOT_CERT_FILE);
            cmd.env("XDS_ADDRESS", &url)
                .env("CA_ADDRESS", &url)
                .env("XDS_ROOT_CA", &root)
                .env("CA_ROOT_CA", &root)
                .env("AMESH_TOKEN", token(&state, &w));
        }
    }
    cmd.env("POD_NAME", &pod.name)
        .env("POD_NAMESPACE", &pod.namespace)
        .env("INSTANCE_IP", pod.ip.to_string())
        .env("SERVICE_ACCOUNT", &pod.service_account)
        .env("NODE_NAME", &pod.node)
        .env("GATEWAY_NAME", &w.gateway)
        .env("TRUST_DOMAIN", "cluster.local")
        .env("CLUSTER_ID", "Kubernetes")
        // As for ztunnel: one worker, like a pod with a core of its own, unless the caller
        // sets the variable itself (the child then inherits it).
        .env(
            "WAYPOINT_WORKER_THREADS",
            std::env::var("WAYPOINT_WORKER_THREADS").unwrap_or_else(|_| LAB_WORKER_THREADS.into()),
        )
        .env(
            "RUST_LOG",
            std::env::var("AMESH_LAB_WAYPOINT_LOG").unwrap_or_else(|_| "info".into()),
        );
    lab.spawn(&process_name(&w.namespace, &w.gateway), &pod.netns, cmd)?;
    probe(&state, pod)
}

/// Kills waypoint `namespace/gateway` (SIGKILL, as a crash or the OOM killer would) and, as
/// the kubelet does once its probe fails, marks its pod not Ready.
pub fn kill(lab: &mut Lab, namespace: &str, gateway: &str) -> Result<(), LabError> {
    let pod = pod(lab.state(), namespace, gateway)?;
    let name = process_name(namespace, gateway);
    let record = (lab.state().processes.iter().rev())
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| error("waypoint", format!("{name} was never started")))?;
    crate::process::kill_and_wait(&record);
    lab.set_pod_ready(&pod.key(), false)
}

/// Starts waypoint `namespace/gateway` again after [`kill`], as the kubelet restarts a
/// crashed container, and waits until its probe passes and its pod is Ready again.
pub fn restart(lab: &mut Lab, namespace: &str, gateway: &str) -> Result<(), LabError> {
    let pod = pod(lab.state(), namespace, gateway)?;
    let name = process_name(namespace, gateway);
    let running = (lab.state().processes.iter().rev())
        .find(|p| p.name == name)
        .is_some_and(crate::process::is_alive);
    if running {
        return Err(error(
            "waypoint",
            format!("{name} still runs: kill it first"),
        ));
    }
    let opts = (lab.state().mesh.clone())
        .ok_or_else(|| error("waypoint", "the lab runs without the mesh"))?;
    let probe = start(lab, &opts, &pod)?;
    probe.wait()?;
    lab.set_pod_ready(&pod.key(), true)?;
    // The lab is ready again once every ztunnel has the pod healthy again.
    mesh::wait_synced(lab.state(), READY_TIMEOUT)
}
