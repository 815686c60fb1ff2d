//! What a waypoint Gateway becomes, as istiod's waypoint template makes it: a ServiceAccount, a
//! Deployment running the `waypoint` binary and a Service in front of it, all named after the
//! Gateway, labelled with its name and owned by it. Pure functions of the Gateway and the
//! [`WaypointSettings`]: the reconciler compares and applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::WaypointSettings;
use crate::ca::root_configmap::{ROOT_CERT_KEY, ROOT_CONFIGMAP};
use crate::ca::token_review::DEFAULT_AUDIENCE;
use crate::manifests::Gateway;
use crate::model::labels;
use crate::model::DEFAULT_HBONE_PORT;

/// `apiVersion` of the Gateways the deployer reads, and of its owner references to them.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// Istio's copy of the Gateway API's gateway-name label, on the waypoint's pods.
pub const ISTIO_GATEWAY_NAME: &str = "istio.io/gateway-name";
/// The value istiod writes in [`labels::GATEWAY_MANAGED`] on what it makes for waypoints;
/// amesh writes the same, so tools that look for istiod's waypoints find amesh's.
pub const MANAGED_VALUE: &str = "istio.io-mesh-controller";
/// The container's name.
pub const CONTAINER: &str = "waypoint";
/// Prometheus port of the waypoint (`AMESH_STATS_ADDR`'s default).
pub const METRICS_PORT: u16 = 15020;
/// Readiness port of the waypoint (`AMESH_READINESS_ADDR`'s default), serving `/healthz/ready`.
pub const STATUS_PORT: u16 = 15021;
/// Where the projected ServiceAccount token is mounted, and its file name.
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const TOKEN_FILE: &str = "istio-token";
/// Where the mesh root ConfigMap is mounted (Istio's path).
const ROOT_DIR: &str = "/var/run/secrets/istio";
/// Lifetime asked for the projected token; the kubelet rotates it at 80% and the waypoint
/// re-reads the file on every connection to the controller.
const TOKEN_SECONDS: i64 = 43200;
/// Unprivileged user of the waypoint container (Istio's proxy uid).
const PROXY_UID: i64 = 1337;

/// The Gateway's name and namespace (the names of everything made for it), its uid (for owner
/// references) and what its spec asks of the objects.
#[derive(Debug, Clone)]
pub struct WaypointGateway {
    /// Namespace of the Gateway and of its objects.
    pub namespace: String,
    /// Name of the Gateway and of its objects.
    pub name: String,
    /// The Gateway's uid.
    pub uid: String,
    /// `metadata.generation`, echoed in status conditions.
    pub generation: Option<i64>,
    /// Port of its HBONE listener ([`DEFAULT_HBONE_PORT`] without one).
    pub hbone_port: u16,
    /// `spec.infrastructure.labels`, copied onto every object and the pods.
    pub labels: BTreeMap<String, String>,
    /// `spec.infrastructure.annotations`, likewise.
    pub annotations: BTreeMap<String, String>,
}

impl WaypointGateway {
    /// The parts of `gateway` (in `namespace`, with `uid`) the objects depend on.
    pub fn of(gateway: &Gateway, namespace: &str, uid: &str) -> Self {
        let infrastructure = gateway.spec.infrastructure.as_ref();
        WaypointGateway {
            namespace: namespace.to_owned(),
            name: gateway.metadata.name.clone().unwrap_or_default(),
            uid: uid.to_owned(),
            generation: gateway.metadata.generation,
            hbone_port: gateway
                .spec
                .listeners
                .iter()
                .find(|l| l.protocol == "HBONE")
                .map_or(DEFAULT_HBONE_PORT, |l| l.port),
            labels: infrastructure.map(|i| i.labels.clone()).unwrap_or_default(),
            annotations: infrastructure
                .map(|i| i.annotations.clone())
                .unwrap_or_default(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The labels that select the waypoint's pods (the Deployment's and the Service's
    /// selector): the Gateway API's convention, which is also what the controller's model
    /// recognises waypoint pods and Services by.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(labels::GATEWAY_NAME.to_owned(), self.name.clone())])
    }

    /// Labels of the ServiceAccount, Deployment and Service: the infrastructure's, then ours
    /// (ours win, since the selector depends on them).
    fn object_labels(&self) -> BTreeMap<String, String> {
        let mut out = self.labels.clone();
        out.extend(self.selector());
        out.insert(labels::GATEWAY_MANAGED.to_owned(), MANAGED_VALUE.to_owned());
        out
    }

    /// Name, namespace, labels, annotations and the owner reference that makes the garbage
    /// collector delete the object with the Gateway.
    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.object_labels()),
            annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
            owner_references: Some(vec![self.owner_reference()]),
            ..ObjectMeta::default()
        }
    }

    /// The reference to the Gateway as the controller of an object. `blockOwnerDeletion` is left
    /// out: setting it needs `update` on `gateways/finalizers` where the admission plugin
    /// enforces it, and background deletion (the default) collects the objects without it.
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: GATEWAY_API_VERSION.to_owned(),
            kind: "Gateway".to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }
}

/// The waypoint's ServiceAccount: its identity, `spiffe://<td>/ns/<namespace>/sa/<name>`.
pub fn service_account(gw: &WaypointGateway) -> ServiceAccount {
    ServiceAccount {
        metadata: gw.metadata(),
        ..ServiceAccount::default()
    }
}

/// The waypoint's Deployment. `replicas` is left out so that a user (or an autoscaler) may scale
/// it without the controller scaling it back; the API server defaults it to 1.
pub fn deployment(gw: &WaypointGateway, settings: &WaypointSettings) -> Deployment {
    let mut pod_labels = gw.object_labels();
    pod_labels.insert(ISTIO_GATEWAY_NAME.to_owned(), gw.name.clone());
    // ztunnel must never capture the waypoint's own traffic: it arrives and leaves as HBONE.
    pod_labels.insert(labels::DATAPLANE_MODE.to_owned(), labels::NONE.to_owned());
    pod_labels.insert(labels::CANONICAL_NAME.to_owned(), gw.name.clone());
    pod_labels.insert(labels::CANONICAL_REVISION.to_owned(), "latest".to_owned());
    pod_labels.insert("sidecar.istio.io/inject".to_owned(), "false".to_owned());
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        env: Some(env(gw, settings)),
        ports: Some(vec![
            port("mesh", gw.hbone_port),
            port("metrics", METRICS_PORT),
            port("status-port", STATUS_PORT),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".to_owned()),
                port: IntOrString::Int(i32::from(STATUS_PORT)),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("128Mi".to_owned())),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "istio-token".to_owned(),
                mount_path: TOKEN_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "istiod-ca-cert".to_owned(),
                mount_path: ROOT_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let volumes = vec![
        // The token the controller reviews: audience istio-ca, as for ztunnel.
        Volume {
            name: "istio-token".to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(DEFAULT_AUDIENCE.to_owned()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: TOKEN_FILE.to_owned(),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        // The mesh root, published into the Gateway's namespace by the deployer itself; the
        // kubelet holds the pod until it exists.
        Volume {
            name: "istiod-ca-cert".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: ROOT_CONFIGMAP.to_owned(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    Deployment {
        metadata: gw.metadata(),
        spec: DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(gw.selector()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!gw.annotations.is_empty()).then(|| gw.annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(gw.name.clone()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// The environment the `waypoint` binary reads (`waypoint/src/config.rs`), and nothing else.
fn env(gw: &WaypointGateway, settings: &WaypointSettings) -> Vec<EnvVar> {
    let value = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
    };
    let root = format!("{ROOT_DIR}/{ROOT_CERT_KEY}");
    let mut out = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("NODE_NAME", "spec.nodeName"),
        value("GATEWAY_NAME", &gw.name),
        value("XDS_ADDRESS", &settings.control_address),
        value("XDS_ROOT_CA", &root),
        value("CA_ADDRESS", &settings.control_address),
        value("CA_ROOT_CA", &root),
        value("AMESH_TOKEN_FILE", &format!("{TOKEN_DIR}/{TOKEN_FILE}")),
        value("TRUST_DOMAIN", &settings.trust_domain),
        value("CLUSTER_ID", &settings.cluster_id),
        value("CLUSTER_DOMAIN", &settings.domain_suffix),
    ];
    // The binary listens on 15008 unless told otherwise; only a Gateway whose HBONE listener
    // names another port needs the setting.
    if gw.hbone_port != DEFAULT_HBONE_PORT {
        out.push(value(
            "AMESH_HBONE_ADDR",
            &format!("0.0.0.0:{}", gw.hbone_port),
        ));
    }
    out
}

/// The waypoint's Service: ztunnels send HBONE to its ClusterIP; the status port lets probes and
/// tools reach readiness through it, as Istio's waypoint Service does.
pub fn service(gw: &WaypointGateway) -> Service {
    let port = |name: &str, port: u16| ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    Service {
        metadata: gw.metadata(),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(gw.selector()),
            ports: Some(vec![
                port("mesh", gw.hbone_port),
                port("status-port", STATUS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
