//! The mesh as the translation sees it: pods that can be reached, services, the endpoints of
//! services without a selector, waypoints and node localities, with Kubernetes defaults
//! applied and addresses parsed. Built from
//! [`Manifests`] whatever their source; policies stay in their manifest form.

mod endpoint_slice;
pub mod labels;
mod pod;
mod service;
mod waypoint;

use std::collections::BTreeMap;

use amesh_proto::istio::workload::Locality;

use crate::manifests::Manifests;
use crate::warnings::Warnings;
pub use endpoint_slice::SliceEndpoint;
pub use pod::{canonical_names, workload_name_and_type, PodInfo};
pub use service::{app_protocol, ServiceInfo, ServicePortInfo, TargetPort};
pub use waypoint::{Bound, Waypoint, WaypointFor, Waypoints, DEFAULT_HBONE_PORT};

/// The mesh, derived from manifests.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Namespace labels, by namespace (ambient opt-in, waypoint bindings). A namespace that has
    /// pods but no Namespace object has no labels.
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Pods with an IP and a node, sorted by namespace and name.
    pub pods: Vec<PodInfo>,
    /// Services (ExternalName ones aside), sorted by namespace and name.
    pub services: Vec<ServiceInfo>,
    /// Endpoints of the services without a selector, from their EndpointSlices, in slice
    /// order (those of the others are the pods their selector picks).
    pub slice_endpoints: Vec<SliceEndpoint>,
    /// Waypoint Gateways.
    pub waypoints: Waypoints,
    /// Locality of each node that has topology labels.
    pub localities: BTreeMap<String, Locality>,
}

impl Model {
    /// Derives the model; problems that make an object (partly) unusable go to `warnings`.
    pub(crate) fn build(m: &Manifests, domain_suffix: &str, warnings: &mut Warnings) -> Self {
        let namespace_labels: BTreeMap<_, _> = m
            .namespaces
            .iter()
            .map(|(name, ns)| (name.clone(), labels::labels(&ns.metadata).clone()))
            .collect();
        let pods = m
            .pods
            .iter()
            .filter_map(|(key, pod)| {
                PodInfo::from_pod(key, pod, m.namespaces.get(&key.namespace), warnings)
            })
            .collect();
        let services: Vec<ServiceInfo> = m
            .services
            .iter()
            .filter_map(|(key, svc)| {
                let ns = namespace_labels.get(&key.namespace);
                ServiceInfo::from_service(key, svc, domain_suffix, ns, warnings)
            })
            .collect();
        let slice_endpoints = endpoint_slice::slice_endpoints(m, &services, warnings);
        let localities = m
            .nodes
            .iter()
            .filter_map(|(name, node)| {
                let l = labels::labels(&node.metadata);
                let get = |k: &str| l.get(k).cloned().unwrap_or_default();
                let locality = Locality {
                    region: get(labels::TOPOLOGY_REGION),
                    zone: get(labels::TOPOLOGY_ZONE),
                    subzone: get(labels::TOPOLOGY_SUBZONE),
                };
                (locality != Locality::default()).then(|| (name.clone(), locality))
            })
            .collect();
        Model {
            waypoints: Waypoints::build(&m.gateways, domain_suffix, warnings),
            namespace_labels,
            pods,
            services,
            slice_endpoints,
            localities,
        }
    }

    /// Labels of `namespace`, if it has a Namespace object.
    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespace_labels.get(namespace)
    }

    /// Services in the pod's namespace whose selector picks the pod.
    pub fn services_of<'a>(&'a self, pod: &'a PodInfo) -> impl Iterator<Item = &'a ServiceInfo> {
        self.services.iter().filter(move |s| {
            s.key.namespace == pod.key.namespace
                && !s.selector.is_empty()
                && labels::selects(&s.selector, &pod.labels)
        })
    }
}
