//! Label and annotation names of Istio's API that the model reads, and label selection.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Namespace or pod label that opts into (`ambient`) or, on a pod, out of (`none`) the mesh.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Value of [`DATAPLANE_MODE`] that opts in.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// Value of [`DATAPLANE_MODE`] (and [`USE_WAYPOINT`]) that opts out.
pub const NONE: &str = "none";
/// Namespace, service or pod label naming the waypoint (a Gateway) to use.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Companion of [`USE_WAYPOINT`] for a waypoint in another namespace.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// Gateway label saying what a waypoint serves: `service` (default), `workload`, `all`, `none`.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Service or namespace label asking ingress gateways to go through the waypoint too.
pub const INGRESS_USE_WAYPOINT: &str = "istio.io/ingress-use-waypoint";
/// Gateway class of waypoints.
pub const WAYPOINT_GATEWAY_CLASS: &str = "istio-waypoint";
/// Label that Gateway implementations put on a gateway's pods and service.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// Label Istio puts on the resources of the waypoints it manages.
pub const GATEWAY_MANAGED: &str = "gateway.istio.io/managed";
/// Explicit canonical service name.
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// Explicit canonical service revision.
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// Hash label of a Deployment's ReplicaSet, copied onto its pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// EndpointSlice label naming the Service (in the slice's namespace) it holds endpoints of.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Policy annotation: only log decisions.
pub const DRY_RUN: &str = "istio.io/dry-run";
/// Service annotation selecting locality-aware load balancing.
pub const TRAFFIC_DISTRIBUTION: &str = "networking.istio.io/traffic-distribution";
/// Node label: region.
pub const TOPOLOGY_REGION: &str = "topology.kubernetes.io/region";
/// Node label: zone.
pub const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// Node label: subzone (Istio's).
pub const TOPOLOGY_SUBZONE: &str = "topology.istio.io/subzone";

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// An object's labels (empty if it has none).
pub fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    meta.labels.as_ref().unwrap_or(&NO_LABELS)
}

/// An object's annotations (empty if it has none).
pub fn annotations(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    meta.annotations.as_ref().unwrap_or(&NO_LABELS)
}

/// Whether `labels` carry every key/value of `selector` (an empty selector selects all).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
