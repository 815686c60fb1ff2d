//! Which identities a node may obtain: the service accounts of the pods scheduled on it
//! (`spec.nodeName`), by namespace, in the current manifests. A finished pod (phase Succeeded
//! or Failed) no longer runs anything and grants nothing.

use k8s_openapi::api::core::v1::Pod;
use mesh::Identity;

use crate::manifests::Manifests;

/// The service account a pod runs as (Kubernetes defaults it to `default`).
fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Pods (`ns/name`) of `identity`'s namespace and service account.
fn pods_of<'a>(
    m: &'a Manifests,
    identity: &'a Identity,
) -> impl Iterator<Item = (&'a str, &'a Pod)> + 'a {
    m.pods
        .iter()
        .filter(move |(key, pod)| {
            key.namespace == identity.namespace()
                && service_account(pod) == identity.service_account()
                && running(pod)
        })
        .map(|(key, pod)| (key.name.as_str(), pod))
}

/// `Ok` if a pod of `identity` runs on `node`; otherwise the reason, for the operator.
pub fn authorize(m: &Manifests, node: &str, identity: &Identity) -> Result<(), String> {
    if pods_of(m, identity).any(|(_, pod)| node_of(pod) == Some(node)) {
        return Ok(());
    }
    let mut elsewhere: Vec<String> = pods_of(m, identity)
        .map(|(name, pod)| format!("{name} on {}", node_of(pod).unwrap_or("no node yet")))
        .collect();
    elsewhere.sort();
    elsewhere.truncate(5);
    let pods = if elsewhere.is_empty() {
        "there is no such pod at all".to_owned()
    } else {
        format!("its pods are: {}", elsewhere.join(", "))
    };
    Err(format!(
        "node {node:?} may not obtain {identity}: no pod with service account {:?} in namespace \
         {:?} is scheduled on that node ({pods})",
        identity.service_account(),
        identity.namespace()
    ))
}
