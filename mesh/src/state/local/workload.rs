//! A workload as Istio ztunnel's local file writes it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::state::address::GatewayAddress;
use crate::state::convert::{namespaced, required};
use crate::state::error::{ConvertError, FieldError, Problem, ResourceKind};
use crate::state::workload::{
    self as model, PortMap, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN,
};
use crate::state::{TunnelProtocol, Workload, WorkloadType};

/// Health of a workload. In YAML: `Healthy`, `Unhealthy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// One entry of `workloads:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalWorkload {
    /// Defaults to Istio's form `<clusterId>//v1/Pod/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub workload_ips: Vec<IpAddr>,
    /// `HBONE` or `TCP` (default).
    #[serde(default)]
    pub protocol: TunnelProtocol,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// `"ns/hostname": {servicePort: targetPort}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, PortMap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload_name: String,
    #[serde(default)]
    pub workload_type: WorkloadType,
    #[serde(default)]
    pub status: HealthStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
}

fn default_service_account() -> String {
    DEFAULT_SERVICE_ACCOUNT.to_string()
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_string()
}

impl From<&Workload> for LocalWorkload {
    fn from(w: &Workload) -> Self {
        LocalWorkload {
            uid: w.uid.clone(),
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account().to_string(),
            trust_domain: w.trust_domain().to_string(),
            workload_ips: w.addresses.clone(),
            protocol: w.protocol,
            node: w.node.clone(),
            services: w.services.clone(),
            authorization_policies: w.authorization_policies.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            workload_name: w.workload_name.clone(),
            workload_type: w.workload_type,
            status: if w.healthy {
                HealthStatus::Healthy
            } else {
                HealthStatus::Unhealthy
            },
            cluster_id: w.cluster_id.clone(),
            network: w.network.clone(),
            waypoint: w.waypoint.clone(),
        }
    }
}

impl LocalWorkload {
    /// The uid, or the one Istio would give this pod.
    pub fn uid(&self) -> String {
        if self.uid.is_empty() {
            format!(
                "{}//v1/Pod/{}/{}",
                self.cluster_id, self.namespace, self.name
            )
        } else {
            self.uid.clone()
        }
    }

    pub(crate) fn to_model(&self) -> Result<Workload, ConvertError> {
        let uid = self.uid();
        self.convert(uid.clone())
            .map_err(|e| ConvertError::new(ResourceKind::Workload, &uid, e))
    }

    fn convert(&self, uid: String) -> Result<Workload, FieldError> {
        let name = required("name", self.name.clone())?;
        let namespace = required("namespace", self.namespace.clone())?;
        let identity = model::identity(&self.trust_domain, &namespace, &self.service_account)
            .map_err(|e| FieldError {
                field: yaml_field(&e.field),
                problem: e.problem,
            })?;
        for (key, ports) in &self.services {
            namespaced(key).map_err(|e| FieldError::new(format!("services[{key:?}]"), e))?;
            if ports.contains_key(&0) {
                return Err(FieldError::new(
                    format!("services[{key:?}]"),
                    Problem::Port(0),
                ));
            }
        }
        let authorization_policies = model::policy_names(self.authorization_policies.clone())
            .map_err(|e| FieldError {
                field: yaml_field(&e.field),
                problem: e.problem,
            })?;
        Ok(Workload {
            uid,
            name,
            namespace,
            identity,
            addresses: self.workload_ips.clone(),
            network: self.network.clone(),
            protocol: self.protocol,
            node: self.node.clone(),
            services: self.services.clone(),
            authorization_policies,
            healthy: self.status == HealthStatus::Healthy,
            canonical_name: self.canonical_name.clone(),
            canonical_revision: self.canonical_revision.clone(),
            workload_name: self.workload_name.clone(),
            workload_type: self.workload_type,
            cluster_id: self.cluster_id.clone(),
            waypoint: self.waypoint.clone(),
        })
    }
}

/// The file's camelCase name for a field the shared checks name in proto (snake) case.
fn yaml_field(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
