//! A workload (pod, VM): its addresses, identity, services and the policies bound to it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use amesh_proto::istio::workload as proto;
use serde::{Deserialize, Serialize};

use super::address::GatewayAddress;
use super::convert::{ip_from_octets, known, namespaced, port, port_or_zero, required};
use super::error::{ConvertError, FieldError, Problem, ResourceKind};
use crate::Identity;

/// Service port → target port on the workload.
pub type PortMap = BTreeMap<u16, u16>;

/// Istio's defaults when a workload leaves its identity parts empty.
pub(crate) const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub(crate) const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// How traffic reaches a workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TunnelProtocol {
    /// mTLS + HTTP/2 CONNECT to the workload's node proxy on 15008.
    #[serde(rename = "HBONE")]
    Hbone,
    /// Plain TCP: the workload is outside the mesh (proto `NONE`).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
}

/// Kind of controller owning a workload (telemetry only). In YAML: lower case, as Istio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadType {
    #[default]
    Deployment,
    CronJob,
    Pod,
    Job,
}

/// One addressable endpoint with an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Unique id and xDS resource name, e.g. `Kubernetes//v1/Pod/<ns>/<name>`.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, checked at conversion.
    pub identity: Identity,
    /// Pod IPs; may be empty (a workload known only by hostname).
    pub addresses: Vec<IpAddr>,
    /// Network of `addresses`; `""` is the default network.
    pub network: String,
    pub protocol: TunnelProtocol,
    /// Kubernetes node running the workload: decides which ztunnel is "local".
    pub node: String,
    /// Services selecting this workload, by `ns/hostname`, with their port mapping.
    pub services: BTreeMap<String, PortMap>,
    /// Policies bound to this workload (`ns/name`), each once.
    pub authorization_policies: Vec<String>,
    pub healthy: bool,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub workload_type: WorkloadType,
    pub cluster_id: String,
    /// Waypoint that handles traffic to this workload, if any.
    pub waypoint: Option<GatewayAddress>,
}

impl Workload {
    /// The workload's SPIFFE identity (a clone of the `identity` field).
    pub fn identity(&self) -> Identity {
        self.identity.clone()
    }

    pub fn service_account(&self) -> &str {
        self.identity.service_account()
    }

    pub fn trust_domain(&self) -> &str {
        self.identity.trust_domain()
    }

    /// Converts the xDS proto, checking every field.
    pub fn from_proto(p: proto::Workload) -> Result<Self, ConvertError> {
        let name = if p.uid.is_empty() {
            p.name.clone()
        } else {
            p.uid.clone()
        };
        convert(p).map_err(|e| ConvertError::new(ResourceKind::Workload, &name, e))
    }
}

fn convert(p: proto::Workload) -> Result<Workload, FieldError> {
    let uid = required("uid", p.uid)?;
    let name = required("name", p.name)?;
    let namespace = required("namespace", p.namespace)?;
    let addresses = p
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip_from_octets(a).map_err(|e| FieldError::new(format!("addresses[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = match known(p.tunnel_protocol)
        .map_err(|e| FieldError::new("tunnel_protocol", e))?
    {
        proto::TunnelProtocol::Hbone => TunnelProtocol::Hbone,
        // Sidecars (LEGACY_ISTIO_MTLS) take plaintext under PERMISSIVE; we have no sidecar
        // mTLS client, and refusing would NACK a whole update from a mixed mesh.
        proto::TunnelProtocol::None | proto::TunnelProtocol::LegacyIstioMtls => TunnelProtocol::Tcp,
    };
    let workload_type =
        match known(p.workload_type).map_err(|e| FieldError::new("workload_type", e))? {
            proto::WorkloadType::Deployment => WorkloadType::Deployment,
            proto::WorkloadType::Cronjob => WorkloadType::CronJob,
            proto::WorkloadType::Pod => WorkloadType::Pod,
            proto::WorkloadType::Job => WorkloadType::Job,
        };
    let healthy = match known(p.status).map_err(|e| FieldError::new("status", e))? {
        proto::WorkloadStatus::Healthy => true,
        proto::WorkloadStatus::Unhealthy => false,
    };
    let identity = identity(&p.trust_domain, &namespace, &p.service_account)?;
    let mut services = BTreeMap::new();
    for (key, list) in &p.services {
        namespaced(key).map_err(|e| FieldError::new(format!("services[{key:?}]"), e))?;
        let ports = port_map(&list.ports).map_err(|e| e.within(format!("services[{key:?}]")))?;
        services.insert(key.clone(), ports);
    }
    let waypoint = p
        .waypoint
        .as_ref()
        .map(GatewayAddress::from_proto)
        .transpose()
        .map_err(|e| e.within("waypoint"))?;
    Ok(Workload {
        uid,
        name,
        namespace,
        identity,
        addresses,
        network: p.network,
        protocol,
        node: p.node,
        services,
        authorization_policies: policy_names(p.authorization_policies)?,
        healthy,
        canonical_name: p.canonical_name,
        canonical_revision: p.canonical_revision,
        workload_name: p.workload_name,
        workload_type,
        cluster_id: p.cluster_id,
        waypoint,
    })
}

/// The identity, with Istio's defaults for an empty trust domain or service account.
pub(crate) fn identity(
    trust_domain: &str,
    namespace: &str,
    service_account: &str,
) -> Result<Identity, FieldError> {
    let td = non_empty_or(trust_domain, DEFAULT_TRUST_DOMAIN);
    let sa = non_empty_or(service_account, DEFAULT_SERVICE_ACCOUNT);
    Identity::new(td, namespace, sa).map_err(|e| {
        // Name the field the operator has to fix: try each part alone with valid others.
        let field = if Identity::new(td, "ns", "sa").is_err() {
            "trust_domain"
        } else if Identity::new(DEFAULT_TRUST_DOMAIN, namespace, "sa").is_err() {
            "namespace"
        } else {
            "service_account"
        };
        FieldError::new(field, Problem::Identity(Box::new(e)))
    })
}

fn non_empty_or<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

/// `ns/name` policy references, checked and de-duplicated (first occurrence kept).
pub(crate) fn policy_names(names: Vec<String>) -> Result<Vec<String>, FieldError> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, n) in names.into_iter().enumerate() {
        namespaced(&n).map_err(|e| FieldError::new(format!("authorization_policies[{i}]"), e))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// A workload's port list for one service: service port → target port, each service port once.
fn port_map(ports: &[proto::Port]) -> Result<PortMap, FieldError> {
    let mut map = PortMap::new();
    for (i, p) in ports.iter().enumerate() {
        let field = |name: &str| format!("ports[{i}].{name}");
        let sp = port(p.service_port).map_err(|e| FieldError::new(field("service_port"), e))?;
        let tp =
            port_or_zero(p.target_port).map_err(|e| FieldError::new(field("target_port"), e))?;
        if map.insert(sp, tp).is_some() {
            return Err(FieldError::new(
                field("service_port"),
                Problem::DuplicatePort(sp),
            ));
        }
    }
    Ok(map)
}
