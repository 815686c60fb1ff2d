//! Pod → `istio.workload.Workload`.
//!
//! Every reachable pod (IP and node known) is sent, as Istio does: pods captured by ztunnel
//! (ambient) with tunnel protocol HBONE, the others with NONE so that clients reach them as
//! plain TCP endpoints of their services. Only ambient pods get a waypoint. A pod's services
//! are those whose selector picks it, plus the selector-less ones whose EndpointSlices list it
//! (`endpoint_slice.rs`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use amesh_proto::istio::workload::{
    gateway_address, GatewayAddress, NamespacedHostname, NetworkMode, Port, PortList,
    TunnelProtocol, Workload, WorkloadStatus,
};

use super::authz::TranslatedPolicy;
use super::peer_auth::PeerAuthn;
use super::TranslateOptions;
use crate::model::{Bound, Model, PodInfo, TargetPort, Waypoint};
use crate::warnings::Warnings;

/// The xDS name (and `uid`) of a pod's workload: `<cluster>//v1/Pod/<ns>/<name>`.
pub fn pod_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}//v1/Pod/{namespace}/{name}")
}

/// Builds the Workload of one pod; `slice_services` are the selector-less services whose
/// EndpointSlices list it (`<ns>/<hostname>` → ports).
pub fn workload(
    pod: &PodInfo,
    model: &Model,
    opts: &TranslateOptions,
    policies: &[TranslatedPolicy],
    peer: &PeerAuthn<'_>,
    slice_services: Option<&BTreeMap<String, Vec<Port>>>,
    warnings: &mut Warnings,
) -> Workload {
    let ns = pod.key.namespace.as_str();
    let mut services: HashMap<String, PortList> = model
        .services_of(pod)
        .map(|svc| {
            let ports = svc
                .ports
                .iter()
                .filter_map(|p| {
                    let target_port = match &p.target {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(name) => match pod.named_ports.get(name) {
                            Some(n) => *n,
                            None => {
                                // Kubernetes leaves such a pod out of the port's endpoints.
                                tracing::debug!(pod = %pod.key, service = %svc.key, port = %name, "pod has no container port by that name");
                                return None;
                            }
                        },
                    };
                    Some(Port {
                        service_port: u32::from(p.port),
                        target_port: u32::from(target_port),
                        app_protocol: 0,
                    })
                })
                .collect();
            (format!("{}/{}", svc.key.namespace, svc.hostname), PortList { ports })
        })
        .collect();
    // Selector-less services never select a pod, so these keys are not in the map yet.
    for (key, ports) in slice_services.into_iter().flatten() {
        let ports = ports.clone();
        services.insert(key.clone(), PortList { ports });
    }

    let mut authorization_policies: Vec<String> = policies
        .iter()
        .filter(|p| p.selects(&opts.root_namespace, ns, &pod.labels))
        .map(|p| p.resource_name.clone())
        .chain(peer.policies_for(pod, warnings))
        .collect();
    authorization_policies.sort();
    authorization_policies.dedup();

    let waypoint = if pod.ambient && !pod.is_waypoint {
        model
            .waypoints
            .binding(
                &format!("pod {}", pod.key),
                Bound::Workload,
                ns,
                &pod.labels,
                model.namespace_labels(ns),
                warnings,
            )
            .map(gateway_address)
    } else {
        None
    };

    Workload {
        uid: pod_uid(&opts.cluster_id, ns, &pod.key.name),
        name: pod.key.name.clone(),
        namespace: ns.to_owned(),
        addresses: pod.ips.iter().map(|ip| ip_octets(*ip)).collect(),
        tunnel_protocol: if pod.ambient {
            TunnelProtocol::Hbone as i32
        } else {
            TunnelProtocol::None as i32
        },
        trust_domain: opts.trust_domain.clone(),
        service_account: pod.service_account.clone(),
        waypoint,
        node: pod.node.clone(),
        canonical_name: pod.canonical_name.clone(),
        canonical_revision: pod.canonical_revision.clone(),
        workload_type: pod.workload_type as i32,
        workload_name: pod.workload_name.clone(),
        services,
        authorization_policies,
        status: if pod.ready {
            WorkloadStatus::Healthy as i32
        } else {
            WorkloadStatus::Unhealthy as i32
        },
        cluster_id: opts.cluster_id.clone(),
        locality: model.localities.get(&pod.node).cloned(),
        network_mode: if pod.host_network {
            NetworkMode::HostNetwork as i32
        } else {
            NetworkMode::Standard as i32
        },
        ..Workload::default()
    }
}

/// A waypoint as a hostname ztunnel resolves through the waypoint's Service.
pub fn gateway_address(waypoint: &Waypoint) -> GatewayAddress {
    GatewayAddress {
        destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: waypoint.key.namespace.clone(),
            hostname: waypoint.hostname.clone(),
        })),
        hbone_mtls_port: u32::from(waypoint.hbone_port),
    }
}

/// An address as the 4 or 16 raw octets the protos carry.
pub fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
