//! Where the mesh plugs into the lab. Each hook is called at the moment a real cluster does
//! the corresponding thing; without the mesh they do nothing (or leave the mesh's part out).
//!
//! | hook | called | what the mesh does there |
//! |---|---|---|
//! | [`on_manifests_written`] | after `<run dir>/manifests/` is written, before any pod | CA, the stand-in API server, the controller (or ztunnel's local file) |
//! | [`node_cni_plugin`] | when a node's CNI configuration is written | `amesh-cni` chained after the primary plugin |
//! | [`on_pod_status`] | whenever the kubelet has written a pod's status | the lab's own translation (local-file control plane) |
//! | [`on_pod_sandbox_ready`] | a pod's network is up, its containers are not started | the ztunnel pod's container: ztunnel itself, then wait for its readiness; a waypoint pod's: `waypoint`, with its readiness probe |
//! | [`on_lab_ready`] | every pod of `up` (or a created pod) runs and is Ready | wait until every ztunnel has every pod in its configuration |
//! | [`on_teardown`] | first thing in `down`, also for a crashed lab's leftovers | CNI DEL of every pod (in `runtime`), the pods' resolv.conf files |

use crate::cluster::expand::PodRole;
use crate::cluster::{Lab, LabError};
use crate::probe::HttpProbe;
use crate::runtime::MeshPlugin;
use crate::state::{LabState, NodeInfo, PodInfo};

/// Who runs a pod's container, as [`on_pod_sandbox_ready`] decided.
#[derive(Debug)]
pub enum Container {
    /// Nobody yet: the lab runs its echo app.
    Echo,
    /// The hook started it, and it is ready already.
    Ready,
    /// The hook started it; the pod is Ready once this probe passes.
    Probe(HttpProbe),
}

/// The generated manifests are written: start what runs outside the nodes.
pub fn on_manifests_written(lab: &mut Lab) -> Result<(), LabError> {
    match lab.state().mesh.clone() {
        Some(opts) => crate::mesh::start(lab, &opts),
        None => Ok(()),
    }
}

/// The mesh's plugin for `node`'s CNI chain, when the mesh runs.
pub fn node_cni_plugin(state: &LabState, node: &NodeInfo) -> Option<MeshPlugin> {
    let opts = state.mesh.as_ref()?;
    Some(crate::mesh::cni_plugin(state, opts, &node.name))
}

/// A pod's status changed in the manifests: the local-file control plane re-translates.
pub fn on_pod_status(lab: &Lab) -> Result<(), LabError> {
    match &lab.state().mesh {
        Some(_) => crate::mesh::write_config(lab.state()).map(|_| ()),
        None => Ok(()),
    }
}

/// A pod's sandbox is wired; for a ztunnel pod, start ztunnel in it and wait until it is
/// ready (the node's other pods need it); for a waypoint pod, start `waypoint` in it and hand
/// back its readiness probe. Returns who runs the pod's container.
pub fn on_pod_sandbox_ready(
    lab: &mut Lab,
    pod: &PodInfo,
    role: PodRole,
) -> Result<Container, LabError> {
    match (role, lab.state().mesh.clone()) {
        (PodRole::Ztunnel, Some(opts)) => {
            crate::mesh::run_ztunnel_pod(lab, &opts, pod)?;
            Ok(Container::Ready)
        }
        (PodRole::Waypoint, Some(opts)) => {
            crate::waypoints::start(lab, &opts, pod).map(Container::Probe)
        }
        _ => Ok(Container::Echo),
    }
}

/// Every pod runs: with the mesh, wait until every ztunnel knows every pod (ready for
/// traffic).
pub fn on_lab_ready(lab: &Lab) -> Result<(), LabError> {
    match &lab.state().mesh {
        Some(_) => crate::mesh::wait_synced(lab.state(), std::time::Duration::from_secs(30)),
        None => Ok(()),
    }
}

/// The lab is about to be torn down (or reaped after a crash): CNI DEL for every pod while
/// ztunnel still runs. Must not fail: it logs what went wrong and lets the teardown go on.
pub fn on_teardown(state: &LabState) {
    crate::runtime::teardown(state);
}
