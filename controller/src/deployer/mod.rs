//! The waypoint deployer: on the Kubernetes API, every Gateway of class `istio-waypoint` becomes a
//! running waypoint, as istiod's deployment controller makes it.
//!
//! For each such Gateway the controller publishes the mesh root into its namespace (the
//! ConfigMap `istio-ca-root-cert`, which the waypoint mounts to verify the controller), then
//! makes a ServiceAccount, a Service and a Deployment named after the Gateway ([`objects`], from
//! the template `deploy/waypoint/waypoint.yaml` built into the binary),
//! each with a controller owner reference to the Gateway so that deleting the Gateway deletes
//! them. It then reports on the Gateway's `status` ([`status`]): the Service's address, and the
//! conditions `Accepted` and `Programmed` (True once the Deployment has an available replica).
//!
//! - Writes are server-side applies by the field manager [`FIELD_MANAGER`], made only when the
//!   object lacks a desired field ([`apply`]): a steady cluster costs reads, never writes.
//! - A Service or Deployment of the Gateway's name that the Gateway does not control (someone
//!   else's) is never written: the Gateway's `Programmed` condition says `ResourceConflict` and
//!   names the object. A ServiceAccount of that name is used as it is (it carries no settings
//!   and is the identity the user meant to give the waypoint).
//! - [`reconcile`] does this once for one Gateway; [`WaypointDeployer`] does it for every
//!   waypoint Gateway of the Kubernetes source's snapshots, on change, periodically, and with
//!   backoff while a waypoint is not yet programmed or the API fails.

pub mod apply;
pub mod objects;
pub mod status;
mod task;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use tracing::{debug, warn};

pub use objects::{Template, TemplateError, WaypointGateway};
pub use status::{Cond, Report};
pub use task::WaypointDeployer;

use crate::ca::root_configmap::{self, PublishError};
use crate::manifests::{Object, ObjectKey};
use crate::model::labels::WAYPOINT_GATEWAY_CLASS;
use crate::source::kube::Kind;
use crate::translate::TranslateOptions;
use apply::Ensured;

/// The field manager of the controller's server-side applies.
pub const FIELD_MANAGER: &str = "amesh-controller";
/// The waypoint image when `--waypoint-image` is not given: what deploy/README.md says to
/// build and tag, like the controller's and ztunnel's images.
pub const DEFAULT_IMAGE: &str = "amesh/waypoint:dev";
/// Where waypoints reach the controller for xDS and certificates: its Service in deploy/
/// (`amesh-controller.istio-system`), TLS port 15012, a name its serving certificate holds.
pub const DEFAULT_CONTROL_ADDRESS: &str = "https://amesh-controller.istio-system.svc:15012";

/// What every waypoint Deployment gets from the controller's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointSettings {
    /// The container image of the `waypoint` binary.
    pub image: String,
    /// The controller's xDS and CA address (`XDS_ADDRESS`, `CA_ADDRESS`).
    pub control_address: String,
    /// `TRUST_DOMAIN`: must be the controller's, or the waypoint's identity is not the one the
    /// CA signs.
    pub trust_domain: String,
    /// `CLUSTER_ID`.
    pub cluster_id: String,
    /// `CLUSTER_DOMAIN`: the suffix of the waypoint's Service hostname.
    pub domain_suffix: String,
}

impl WaypointSettings {
    /// The default image and address, with the translation's trust domain, cluster id and
    /// domain suffix.
    pub fn new(translate: &TranslateOptions) -> Self {
        WaypointSettings {
            image: DEFAULT_IMAGE.to_owned(),
            control_address: DEFAULT_CONTROL_ADDRESS.to_owned(),
            trust_domain: translate.trust_domain.clone(),
            cluster_id: translate.cluster_id.clone(),
            domain_suffix: translate.domain_suffix.clone(),
        }
    }
}

/// Why a waypoint could not be (fully) deployed; each names the object and, where the API
/// refused, what the controller's RBAC needs.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// An object could not be read.
    #[error("cannot read {kind} {namespace}/{name}: {source} (the controller needs `get` on it)")]
    Read {
        /// Its kind.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// An object could not be created or updated.
    #[error("cannot apply {kind} {namespace}/{name}: {source} (the controller needs `create` and `patch` on it)")]
    Write {
        /// Its kind.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// The Gateway's status could not be written.
    #[error("cannot write the status of Gateway {namespace}/{name}: {source} (the controller needs `patch` on gateways/status)")]
    Status {
        /// The Gateway's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// The Gateway as served cannot be read as a Gateway.
    #[error("Gateway {namespace}/{name}: {field}: {detail}")]
    Gateway {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The field at fault.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// An object could not be encoded (a bug, not a cluster problem).
    #[error("cannot encode a {kind}: {detail}")]
    Encode {
        /// Its kind.
        kind: String,
        /// Why.
        detail: String,
    },
    /// The mesh root could not be published into the Gateway's namespace.
    #[error(transparent)]
    Root(#[from] PublishError),
    /// The built-in waypoint template cannot make the objects (a bug caught by its check).
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// What [`reconcile`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The waypoint runs: its Deployment has an available replica.
    Programmed,
    /// Its objects are in place, but no replica is available yet.
    Pending,
    /// Someone else's object has the name of one of the waypoint's: nothing written over it.
    Conflict(String),
    /// The Gateway cannot be deployed as it is (its name is not a DNS label).
    Invalid(String),
    /// The Gateway is not of class `istio-waypoint` (any more).
    NotWaypoint,
    /// There is no such Gateway (any more).
    Gone,
}

/// Makes the Gateway `key` a running waypoint, once: publishes `root_pem` into its namespace,
/// applies its ServiceAccount, Service and Deployment where they lack something, and writes its
/// status where it changed.
pub async fn reconcile(
    client: &Client,
    settings: &WaypointSettings,
    key: &ObjectKey,
    root_pem: &str,
) -> Result<Outcome, DeployError> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let resource = Kind::Gateway.api_resource();
    let gateways: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let Some(served) = gateways
        .get_opt(name)
        .await
        .map_err(|source| DeployError::Read {
            kind: "Gateway".to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?
    else {
        return Ok(Outcome::Gone);
    };
    let bad = |field: &str, detail: String| DeployError::Gateway {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        field: field.to_owned(),
        detail,
    };
    if served.data["spec"]["gatewayClassName"] != WAYPOINT_GATEWAY_CLASS {
        return Ok(Outcome::NotWaypoint);
    }
    let current_status = served.data["status"].clone();
    let uid = served
        .metadata
        .uid
        .clone()
        .ok_or_else(|| bad("metadata.uid", "missing (the API server sets it)".into()))?;
    let gateway = match Kind::Gateway.convert(served) {
        Ok(Object::Gateway(gateway)) => gateway,
        Ok(_) => return Err(bad("kind", "not a Gateway".into())),
        Err(rejected) => {
            let field = rejected.field.clone().unwrap_or_else(|| "-".into());
            return Err(bad(&field, rejected.detail.clone()));
        }
    };
    let gw = WaypointGateway::of(&gateway, namespace, &uid);
    let writer = StatusWriter {
        api: &gateways,
        gw: &gw,
        current: &current_status,
        settings,
    };

    if !is_dns_label(name) {
        let why = format!(
            "the waypoint's Service is named after the Gateway, so metadata.name {name:?} must be \
             a DNS label (lower-case letters, digits and '-', starting with a letter, at most 63 \
             characters)"
        );
        writer
            .write(
                Cond::no("Invalid", why.clone()),
                Cond::no("Invalid", why.clone()),
                None,
            )
            .await?;
        return Ok(Outcome::Invalid(why));
    }
    let accepted = Cond::yes(
        "Accepted",
        format!(
            "amesh deploys this waypoint as ServiceAccount, Service and Deployment {}",
            gw.key()
        ),
    );
    match deploy(client, settings, &gw, root_pem).await {
        Ok(Deployed::Running { service }) => {
            let programmed = Cond::yes(
                "Programmed",
                format!("Deployment {} has an available replica", gw.key()),
            );
            writer.write(accepted, programmed, Some(&service)).await?;
            Ok(Outcome::Programmed)
        }
        Ok(Deployed::Starting { service }) => {
            let programmed = Cond::no(
                "Pending",
                format!(
                    "waiting for Deployment {} to have an available replica",
                    gw.key()
                ),
            );
            writer.write(accepted, programmed, Some(&service)).await?;
            Ok(Outcome::Pending)
        }
        Ok(Deployed::Conflict { what }) => {
            let why = format!(
                "{what} exists and is not controlled by this Gateway: amesh does not overwrite \
                 it; delete or rename it, or rename the Gateway"
            );
            let programmed = Cond::no("ResourceConflict", why.clone());
            writer.write(accepted, programmed, None).await?;
            Ok(Outcome::Conflict(why))
        }
        Err(error) => {
            // Said on the Gateway too, where its owner looks first; the caller retries.
            let programmed = Cond::no("Pending", format!("{error}; retrying"));
            if let Err(status_error) = writer.write(accepted, programmed, None).await {
                debug!(error = %status_error, "cannot report the deploy error on the Gateway");
            }
            Err(error)
        }
    }
}

/// How far [`deploy`] got.
enum Deployed {
    /// Every object is in place and the Deployment has an available replica.
    Running { service: Service },
    /// Every object is in place; no replica is available yet.
    Starting { service: Service },
    /// An object of the waypoint's name belongs to someone else (`what`: kind and name).
    Conflict { what: String },
}

async fn deploy(
    client: &Client,
    settings: &WaypointSettings,
    gw: &WaypointGateway,
    root_pem: &str,
) -> Result<Deployed, DeployError> {
    let namespace = gw.namespace.as_str();
    root_configmap::publish(client.clone(), namespace, root_pem).await?;

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    if let Ensured::Foreign(_) =
        apply::ensure(&accounts, &objects::service_account(gw, settings)?, &gw.uid).await?
    {
        debug!(
            gateway = gw.key(),
            "using the existing ServiceAccount {} as it is",
            gw.key()
        );
    }
    // The Service before the Deployment: when its name is taken, no pod starts for nothing.
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = match apply::ensure(&services, &objects::service(gw, settings)?, &gw.uid).await? {
        Ensured::Foreign(_) => {
            return Ok(Deployed::Conflict {
                what: format!("Service {}", gw.key()),
            })
        }
        ensured => ensured.object().clone(),
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment =
        match apply::ensure(&deployments, &objects::deployment(gw, settings)?, &gw.uid).await? {
            Ensured::Foreign(_) => {
                return Ok(Deployed::Conflict {
                    what: format!("Deployment {}", gw.key()),
                })
            }
            ensured => ensured.object().clone(),
        };
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    Ok(if available > 0 {
        Deployed::Running { service }
    } else {
        Deployed::Starting { service }
    })
}

/// Writes one Gateway's status, when it changed.
struct StatusWriter<'a> {
    api: &'a Api<DynamicObject>,
    gw: &'a WaypointGateway,
    current: &'a Value,
    settings: &'a WaypointSettings,
}

impl StatusWriter<'_> {
    /// Writes the conditions, with the addresses of `service`; without one, the addresses
    /// the status has now (an API error says nothing about them).
    async fn write(
        &self,
        accepted: Cond,
        programmed: Cond,
        service: Option<&Service>,
    ) -> Result<(), DeployError> {
        let report = Report {
            addresses: match service {
                Some(service) => self.addresses(service),
                None => status::current_addresses(self.current),
            },
            accepted,
            programmed,
        };
        let Some(next) =
            status::next_status(self.current, self.gw.generation, &report, Timestamp::now())
        else {
            return Ok(());
        };
        let body = status::status_patch(&self.gw.namespace, &self.gw.name, next);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api
            .patch_status(&self.gw.name, &params, &Patch::Apply(&body))
            .await
            .map_err(|source| {
                warn!(
                    gateway = self.gw.key(),
                    "cannot write the Gateway's status: {source}"
                );
                DeployError::Status {
                    namespace: self.gw.namespace.clone(),
                    name: self.gw.name.clone(),
                    source,
                }
            })?;
        Ok(())
    }

    /// The Service's ClusterIPs; its hostname while it has none (not yet assigned, or
    /// headless), which is what ztunnels and clients resolve.
    fn addresses(&self, service: &Service) -> Vec<(&'static str, String)> {
        let spec = service.spec.as_ref();
        let ips: Vec<String> = spec
            .and_then(|s| s.cluster_ips.clone())
            .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_empty() && ip != "None")
            .collect();
        if ips.is_empty() {
            let host = format!(
                "{}.{}.svc.{}",
                self.gw.name, self.gw.namespace, self.settings.domain_suffix
            );
            return vec![("Hostname", host)];
        }
        ips.into_iter().map(|ip| ("IPAddress", ip)).collect()
    }
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
