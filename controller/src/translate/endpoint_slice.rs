//! Endpoints of Services without a selector (from their EndpointSlices) → where ztunnel finds
//! them: on the workload of the pod an endpoint is, or on a workload of its own, as istiod
//! builds those.
//!
//! - An endpoint whose `targetRef` names a pod that is a workload adds the Service to that
//!   pod's `services` (a pod not reachable yet: the endpoint waits for it, as in istiod).
//! - An endpoint at the IP of a pod that is a workload (not on the host network, whose
//!   address is the node's) does the same: a second workload at a pod's IP, sent as plain
//!   TCP, could take the place of the pod's HBONE one in a lookup by address.
//! - Any other endpoint becomes a workload `<cluster>/discovery.k8s.io/EndpointSlice/<ns>/
//!   <slice>/<ip>` (istiod's uid), named and namespaced as its slice, tunnel protocol NONE
//!   (reached as plain TCP), network mode HOST_NETWORK as istiod sends it (an address that
//!   other workloads may share: Istio's ztunnel then never picks it by address), with neither
//!   identity, waypoint nor policies: it is only ever a destination.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use amesh_proto::istio::workload::{
    NetworkMode, Port, PortList, TunnelProtocol, Workload, WorkloadStatus,
};

use super::workload::ip_octets;
use super::TranslateOptions;
use crate::manifests::ObjectKey;
use crate::model::{Model, PodInfo, SliceEndpoint};
use crate::warnings::Warnings;

/// The xDS name (and `uid`) of an EndpointSlice endpoint's workload:
/// `<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>`.
pub fn slice_uid(cluster_id: &str, namespace: &str, slice: &str, ip: IpAddr) -> String {
    format!("{cluster_id}/discovery.k8s.io/EndpointSlice/{namespace}/{slice}/{ip}")
}

/// Where the endpoints of selector-less Services go.
#[derive(Debug, Default)]
pub(super) struct Placed {
    /// Services to add to pods' workloads: pod → `<ns>/<hostname>` → ports (sorted, unique).
    pub pod_services: BTreeMap<ObjectKey, BTreeMap<String, Vec<Port>>>,
    /// Workloads of the endpoints that are no pod's.
    pub workloads: Vec<Workload>,
}

/// Places every endpoint of `model.slice_endpoints`.
pub(super) fn place(model: &Model, opts: &TranslateOptions, warnings: &mut Warnings) -> Placed {
    let pods_by_key: HashMap<&ObjectKey, &PodInfo> =
        model.pods.iter().map(|p| (&p.key, p)).collect();
    let pods_by_ip = pods_by_ip(&model.pods);
    let mut placed = Placed::default();
    let mut uids = BTreeSet::new();
    for endpoint in &model.slice_endpoints {
        let pod = match &endpoint.pod {
            Some(key) => match pods_by_key.get(key) {
                Some(pod) => Some(*pod),
                None => {
                    tracing::debug!(
                        slice = %endpoint.slice,
                        pod = %key,
                        "endpoint of a pod that is not a workload (yet): left out"
                    );
                    continue;
                }
            },
            None => pods_by_ip.get(&endpoint.ip).copied(),
        };
        let ports = endpoint
            .ports
            .iter()
            .map(|&(service_port, target_port)| Port {
                service_port: u32::from(service_port),
                target_port: u32::from(target_port),
                app_protocol: 0,
            });
        if let Some(pod) = pod {
            let list = placed
                .pod_services
                .entry(pod.key.clone())
                .or_default()
                .entry(endpoint.service.clone())
                .or_default();
            // Two slices of one Service (one per IP family) may both list the pod.
            list.extend(ports);
            list.sort_by_key(|p| (p.service_port, p.target_port));
            list.dedup();
            continue;
        }
        let w = workload(endpoint, ports.collect(), opts);
        if !uids.insert(w.uid.clone()) {
            warnings.push(format!(
                "EndpointSlice {}: address {} listed twice; the second endpoint is ignored",
                endpoint.slice, endpoint.ip
            ));
            continue;
        }
        placed.workloads.push(w);
    }
    placed
}

/// Pods by IP, the host-network ones aside (their address is the node's, shared by every
/// host-network pod there). Two pods on one IP happen while a pod is replaced: the ready one
/// wins, then the first in name order, as ztunnel resolves such a conflict.
fn pods_by_ip(pods: &[PodInfo]) -> HashMap<IpAddr, &PodInfo> {
    let mut by_ip: HashMap<IpAddr, &PodInfo> = HashMap::new();
    for pod in pods.iter().filter(|p| !p.host_network) {
        for ip in &pod.ips {
            by_ip
                .entry(*ip)
                .and_modify(|cur| {
                    if pod.ready && !cur.ready {
                        *cur = pod;
                    }
                })
                .or_insert(pod);
        }
    }
    by_ip
}

/// The workload of an endpoint that is no pod's.
fn workload(endpoint: &SliceEndpoint, ports: Vec<Port>, opts: &TranslateOptions) -> Workload {
    let slice = &endpoint.slice;
    Workload {
        uid: slice_uid(&opts.cluster_id, &slice.namespace, &slice.name, endpoint.ip),
        name: slice.name.clone(),
        namespace: slice.namespace.clone(),
        addresses: vec![ip_octets(endpoint.ip)],
        tunnel_protocol: TunnelProtocol::None as i32,
        trust_domain: opts.trust_domain.clone(),
        node: endpoint.node.clone().unwrap_or_default(),
        services: [(endpoint.service.clone(), PortList { ports })].into(),
        status: if endpoint.ready {
            WorkloadStatus::Healthy as i32
        } else {
            WorkloadStatus::Unhealthy as i32
        },
        cluster_id: opts.cluster_id.clone(),
        network_mode: NetworkMode::HostNetwork as i32,
        ..Workload::default()
    }
}
