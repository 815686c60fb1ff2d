//! Where the mesh plugs into the lab. Each hook is called at the moment a real cluster does the
//! corresponding thing; today they do nothing.
//!
//! | hook | called | what goes here |
//! |---|---|---|
//! | [`on_node_created`] | after a node's netns and routes exist, before any pod | start the node's ztunnel (`Lab::spawn` in `node.netns`, `NODE_NAME`, `LOCAL_XDS_PATH` or `XDS_ADDRESS`), wait for its readiness |
//! | [`on_manifests_written`] | after `<run dir>/manifests/` is written, before pods start | start the controller (in the root netns, on `LabState::root_ip`), or write ztunnel's local config from the translation |
//! | [`on_pod_created`] | after the pod's netns and veth exist (the main CNI plugin's work), before its app starts | run `amesh-cni` as a runtime would: `CNI_COMMAND=ADD`, `CNI_NETNS=/run/netns/<pod.netns>`, `CNI_CONTAINERID=<pod.uid>`, `CNI_IFNAME=eth0`, `CNI_ARGS=K8S_POD_NAMESPACE=..;K8S_POD_NAME=..`, chained config with `prevResult` (pod IP, `eth0`) on stdin |
//! | [`on_lab_ready`] | after every app listens | wait until every ztunnel reports all pods captured |
//! | [`on_teardown`] | first thing in `down`, also for a crashed lab's leftovers | `CNI_COMMAND=DEL` for each pod (best effort: the processes may be gone) |

use crate::cluster::{Lab, LabError};
use crate::state::{LabState, NodeInfo, PodInfo};

/// A node exists (netns, address, routes). Hook: start the node's ztunnel.
pub fn on_node_created(_lab: &mut Lab, _node: &NodeInfo) -> Result<(), LabError> {
    Ok(())
}

/// The generated manifests are written: translate them for ztunnel and start one per node.
pub fn on_manifests_written(lab: &mut Lab) -> Result<(), LabError> {
    match lab.state().mesh.clone() {
        Some(opts) => crate::mesh::start(lab, &opts),
        None => Ok(()),
    }
}

/// A pod's network exists, its app is not started yet: `amesh-cni` ADD, as a runtime would.
pub fn on_pod_created(lab: &mut Lab, pod: &PodInfo) -> Result<(), LabError> {
    match lab.state().mesh.clone() {
        Some(opts) => crate::mesh::add_pod(lab, &opts, pod),
        None => Ok(()),
    }
}

/// Every pod's app listens. Hook: wait until the mesh is ready for traffic.
pub fn on_lab_ready(_lab: &mut Lab) -> Result<(), LabError> {
    Ok(())
}

/// The lab is about to be torn down (or reaped after a crash). Hook: `amesh-cni` DEL per pod.
/// Must not fail: it logs what went wrong and lets the teardown go on.
pub fn on_teardown(state: &LabState) {
    if let Some(opts) = &state.mesh {
        crate::mesh::teardown(state, opts);
    }
}
