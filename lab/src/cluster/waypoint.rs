//! What istiod's deployment controller makes of a Gateway of class `istio-waypoint`: a
//! ServiceAccount, a Deployment and a Service, all named after the Gateway, labelled as
//! Istio's waypoint template labels them (no I/O). `expand` schedules the Deployment's pod
//! like any other; the kubelet runs the `waypoint` binary in it.

use std::collections::BTreeMap;

use controller::manifests::Gateway;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSpec, PodTemplateSpec, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The Gateway class istiod turns into waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The label naming a Gateway's resources (Gateway API's convention); the Service selects on it.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Istio's own copy of it.
pub const ISTIO_GATEWAY_NAME_LABEL: &str = "istio.io/gateway-name";
/// Marks what istiod manages (the controller treats such Services as waypoints).
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// The value istiod writes for waypoints.
pub const MANAGED_VALUE: &str = "istio.io-mesh-controller";
/// Waypoint pods are never captured by ztunnel: Istio's template sets this on them.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// The waypoint's HBONE port when its Gateway names none (the controller's default too).
pub const DEFAULT_HBONE_PORT: u16 = 15008;
/// The waypoint's Prometheus port.
pub const METRICS_PORT: u16 = 15020;
/// The waypoint's readiness port (`/healthz/ready`).
pub const STATUS_PORT: u16 = 15021;

/// A waypoint Gateway that cannot be deployed.
#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    #[error("Gateway {gateway}: metadata.name {name:?} names the waypoint's Service, so it must be a DNS label (lower-case letters, digits and '-', starting with a letter, at most 63 characters)")]
    BadName { gateway: String, name: String },
    #[error("Gateway {gateway}: the waypoint's Service {gateway} would replace the Service of that name in the input; rename the Gateway or the Service")]
    ServiceExists { gateway: String },
}

/// The objects of one waypoint.
#[derive(Debug, Clone)]
pub struct PlannedWaypoint {
    pub namespace: String,
    /// The Gateway's name, which is also its ServiceAccount's, Deployment's and Service's.
    pub name: String,
    /// `None` when the input has a ServiceAccount of that name already (istiod adopts it).
    pub service_account: Option<ServiceAccount>,
    pub deployment: Deployment,
    pub service: Service,
}

impl PlannedWaypoint {
    /// `namespace/name` of the Gateway.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The waypoints of `gateways` (the other classes are someone else's), checked against the
/// input's Services and ServiceAccounts (`namespace/name` keys).
pub fn plan(
    gateways: &[Gateway],
    services: &[String],
    service_accounts: &[String],
    default_namespace: &str,
) -> Result<Vec<PlannedWaypoint>, WaypointError> {
    let mut out = Vec::new();
    for gw in gateways
        .iter()
        .filter(|g| g.spec.gateway_class_name == WAYPOINT_CLASS)
    {
        let namespace = gw
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| default_namespace.to_string());
        let name = gw.metadata.name.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        if !is_dns_label(&name) {
            return Err(WaypointError::BadName { gateway: key, name });
        }
        if services.contains(&key) {
            return Err(WaypointError::ServiceExists { gateway: key });
        }
        let hbone_port = gw
            .spec
            .listeners
            .iter()
            .find(|l| l.protocol == "HBONE")
            .map_or(DEFAULT_HBONE_PORT, |l| l.port);
        let infra = gw.spec.infrastructure.as_ref();
        let mut labels: BTreeMap<String, String> =
            infra.map(|i| i.labels.clone()).unwrap_or_default();
        labels.insert(GATEWAY_NAME_LABEL.into(), name.clone());
        labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
        let annotations = infra
            .map(|i| i.annotations.clone())
            .filter(|a| !a.is_empty());
        let meta = ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(labels.clone()),
            annotations: annotations.clone(),
            owner_references: Some(vec![owner(gw, &namespace, &name)]),
            ..ObjectMeta::default()
        };
        let service_account = (!service_accounts.contains(&key)).then(|| ServiceAccount {
            metadata: meta.clone(),
            ..ServiceAccount::default()
        });
        out.push(PlannedWaypoint {
            deployment: deployment(&meta, &name, labels, annotations, hbone_port),
            service: service(&meta, &name, hbone_port),
            service_account,
            namespace,
            name,
        });
    }
    Ok(out)
}

/// The waypoint's Deployment: one replica of `istio-proxy`, its pod labelled as Istio's
/// waypoint template labels it.
fn deployment(
    meta: &ObjectMeta,
    name: &str,
    mut labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    hbone_port: u16,
) -> Deployment {
    let selector = BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), name.to_string())]);
    labels.insert(ISTIO_GATEWAY_NAME_LABEL.into(), name.into());
    labels.insert(DATAPLANE_MODE_LABEL.into(), "none".into());
    labels.insert("service.istio.io/canonical-name".into(), name.into());
    labels.insert(
        "service.istio.io/canonical-revision".into(),
        "latest".into(),
    );
    labels.insert("sidecar.istio.io/inject".into(), "false".into());
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    Deployment {
        metadata: meta.clone(),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.into()),
                    containers: vec![Container {
                        name: "istio-proxy".into(),
                        image: Some("amesh/waypoint".into()),
                        ports: Some(vec![
                            port("mesh", hbone_port),
                            port("metrics", METRICS_PORT),
                            port("status-port", STATUS_PORT),
                        ]),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// The waypoint's Service: ztunnels send to its ClusterIP, on the HBONE port.
fn service(meta: &ObjectMeta, name: &str, hbone_port: u16) -> Service {
    Service {
        metadata: meta.clone(),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                GATEWAY_NAME_LABEL.to_string(),
                name.to_string(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some("mesh".into()),
                port: i32::from(hbone_port),
                target_port: Some(IntOrString::Int(i32::from(hbone_port))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Gateway owns what is made for it, so that deleting it would take them along.
fn owner(gw: &Gateway, namespace: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: gw.api_version.clone(),
        kind: "Gateway".into(),
        name: name.into(),
        uid: gateway_uid(gw, namespace),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// The Gateway's uid: its own, else the one the lab's API server gives it (the same derivation
/// writes it into the generated Gateway).
pub fn gateway_uid(gw: &Gateway, namespace: &str) -> String {
    gw.metadata.uid.clone().unwrap_or_else(|| {
        let name = gw.metadata.name.as_deref().unwrap_or_default();
        uid_key(namespace, name)
    })
}

/// The derived uid of Gateway `namespace/name`.
pub fn uid_key(namespace: &str, name: &str) -> String {
    crate::plan::uid_of(&format!("gateway/{namespace}/{name}"))
}

/// RFC 1035 label, as Kubernetes requires of Service names.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}
