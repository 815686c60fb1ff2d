//! Pods as workloads: addresses, identity, ambient membership, health, and the names Istio
//! derives for telemetry (owning workload, canonical service and revision).

use std::collections::BTreeMap;
use std::net::IpAddr;

use amesh_proto::istio::workload::WorkloadType;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::labels::{self, labels};
use crate::manifests::ObjectKey;
use crate::warnings::Warnings;

/// A pod that has an address and a node: something traffic can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Pod labels (service selectors, policy selectors, canonical names).
    pub labels: BTreeMap<String, String>,
    /// Pod IPs (dual-stack pods have two), in status order.
    pub ips: Vec<IpAddr>,
    /// Node the pod runs on.
    pub node: String,
    /// Service account (its identity), `default` when unset.
    pub service_account: String,
    /// Captured by ztunnel (HBONE) rather than reached as plain TCP.
    pub ambient: bool,
    /// Runs in the node's network namespace (never captured).
    pub host_network: bool,
    /// Ready, or without a Ready condition to say otherwise.
    pub ready: bool,
    /// Owning workload (Deployment, Job, CronJob) or the pod itself.
    pub workload_name: String,
    /// Kind of [`PodInfo::workload_name`].
    pub workload_type: WorkloadType,
    /// Canonical service name (telemetry).
    pub canonical_name: String,
    /// Canonical service revision (telemetry).
    pub canonical_revision: String,
    /// Named TCP container ports, for services with a named `targetPort`.
    pub named_ports: BTreeMap<String, u16>,
    /// The pod belongs to a waypoint (it never uses a waypoint itself).
    pub is_waypoint: bool,
}

impl PodInfo {
    /// Reads a pod; `None` for pods traffic cannot reach yet (no IP, no node) or any more
    /// (finished).
    pub(crate) fn from_pod(
        key: &ObjectKey,
        pod: &Pod,
        namespace: Option<&Namespace>,
        warnings: &mut Warnings,
    ) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        if let Some(phase @ ("Succeeded" | "Failed")) = status.and_then(|s| s.phase.as_deref()) {
            tracing::debug!(pod = %key, phase, "skipping a finished pod");
            return None;
        }
        let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) else {
            tracing::debug!(pod = %key, "skipping a pod without spec.nodeName (not scheduled)");
            return None;
        };
        let ips = pod_ips(key, pod, warnings);
        if ips.is_empty() {
            tracing::debug!(pod = %key, "skipping a pod without status.podIP");
            return None;
        }

        let meta = &pod.metadata;
        let pod_labels = labels(meta).clone();
        let host_network = spec.host_network.unwrap_or(false);
        let ns_labels = namespace.map(|ns| labels(&ns.metadata));
        let ambient = !host_network
            && match pod_labels.get(labels::DATAPLANE_MODE).map(String::as_str) {
                Some(labels::NONE) => false,
                Some(labels::DATAPLANE_MODE_AMBIENT) => true,
                _ => ns_labels
                    .and_then(|l| l.get(labels::DATAPLANE_MODE))
                    .is_some_and(|v| v == labels::DATAPLANE_MODE_AMBIENT),
            };
        let ready = pod.metadata.deletion_timestamp.is_none()
            && status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_none_or(|c| c.status == "True");
        let (workload_name, workload_type) = workload_name_and_type(&key.name, meta);
        let (canonical_name, canonical_revision) = canonical_names(&pod_labels, &workload_name);
        let named_ports = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let is_waypoint = pod_labels.contains_key(labels::GATEWAY_NAME);
        Some(PodInfo {
            key: key.clone(),
            ips,
            node,
            service_account: spec
                .service_account_name
                .clone()
                .or_else(|| spec.service_account.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            ambient,
            host_network,
            ready,
            workload_name,
            workload_type,
            canonical_name,
            canonical_revision,
            named_ports,
            is_waypoint,
            labels: pod_labels,
        })
    }
}

/// `status.podIPs`, else `status.podIP`; unparsable ones are reported and left out.
fn pod_ips(key: &ObjectKey, pod: &Pod, warnings: &mut Warnings) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = match status.pod_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(|ip| ip.ip.as_str()).collect(),
        _ => status.pod_ip.as_deref().into_iter().collect(),
    };
    let mut ips = Vec::new();
    for text in listed.into_iter().filter(|t| !t.is_empty()) {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => warnings.push(format!(
                "pod {key}: status IP {text:?} is not an IP address; ignored"
            )),
        }
    }
    ips
}

/// The workload a pod belongs to, as Istio derives it for telemetry and `workload_name`: the
/// controller owner reference, with a ReplicaSet carrying the pod's `pod-template-hash` seen as
/// its Deployment and a Job named `<cronjob>-<8 to 10 digits>` seen as its CronJob. A pod
/// without owner references whose name is `<deployment>-<pod-template-hash>-<suffix>` (as the
/// lab names the pods it expands from Deployments) belongs to that Deployment.
pub fn workload_name_and_type(pod_name: &str, meta: &ObjectMeta) -> (String, WorkloadType) {
    let pod_labels = labels(meta);
    let hash = pod_labels
        .get(labels::POD_TEMPLATE_HASH)
        .filter(|h| !h.is_empty());
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    if let Some(owner) = owner {
        let name = owner.name.clone();
        return match owner.kind.as_str() {
            "ReplicaSet" => match hash.and_then(|h| name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => (deployment.to_owned(), WorkloadType::Deployment),
                None => (name, WorkloadType::Pod),
            },
            "Deployment" => (name, WorkloadType::Deployment),
            "Job" => match cron_job_name(&name) {
                Some(cron) => (cron.to_owned(), WorkloadType::Cronjob),
                None => (name, WorkloadType::Job),
            },
            _ => (name, WorkloadType::Pod),
        };
    }
    if let Some(hash) = hash {
        if let Some((prefix, _suffix)) = pod_name.split_once(&format!("-{hash}-")) {
            if !prefix.is_empty() {
                return (prefix.to_owned(), WorkloadType::Deployment);
            }
        }
    }
    (pod_name.to_owned(), WorkloadType::Pod)
}

/// `<name>-<8 to 10 digits>` → `<name>` (the Jobs a CronJob creates).
fn cron_job_name(job: &str) -> Option<&str> {
    let (name, stamp) = job.rsplit_once('-')?;
    let digits = stamp.len();
    ((8..=10).contains(&digits) && stamp.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty())
        .then_some(name)
}

/// Canonical service name and revision, from the first label present, as Istio does.
pub fn canonical_names(
    pod_labels: &BTreeMap<String, String>,
    workload_name: &str,
) -> (String, String) {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| pod_labels.get(*k).filter(|v| !v.is_empty()))
            .cloned()
    };
    let name = first(&[labels::CANONICAL_NAME, "app.kubernetes.io/name", "app"])
        .unwrap_or_else(|| workload_name.to_owned());
    let revision = first(&[
        labels::CANONICAL_REVISION,
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_owned());
    (name, revision)
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
