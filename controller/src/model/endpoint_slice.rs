//! EndpointSlices as the endpoints of Services without a selector (`default/kubernetes`, a
//! database outside the cluster): each endpoint with its address, readiness, node, the pod it
//! names and its ports, for the translation to put on that pod's workload or on a workload of
//! its own.
//!
//! Slices of Services with a selector are not read: those endpoints come from the pods the
//! selector picks, which say much more (identity, capture, owner) than a slice can, as in
//! istiod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};

use super::labels::{self, labels};
use super::ServiceInfo;
use crate::manifests::{Manifests, ObjectKey};
use crate::warnings::Warnings;

/// One endpoint of a Service without a selector, from one of its EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The slice that lists it (its workload's name and namespace).
    pub slice: ObjectKey,
    /// `<ns>/<hostname>` of the Service: its key in `Workload.services`.
    pub service: String,
    /// The endpoint's address: the first one listed, the only one Kubernetes gives a meaning
    /// to (kube-proxy ignores the others).
    pub ip: IpAddr,
    /// `conditions.ready` is not false and `conditions.terminating` is not true.
    pub ready: bool,
    /// `nodeName`, when set.
    pub node: Option<String>,
    /// The pod `targetRef` names, when it names one.
    pub pod: Option<ObjectKey>,
    /// Service port → port on the endpoint: the slice's TCP ports matched by name to the
    /// Service's, in the Service's order.
    pub ports: Vec<(u16, u16)>,
}

/// The endpoints of every selector-less Service in `services`, in slice order; slices that
/// cannot be used are reported (FQDN addresses, an unknown Service) or, when they are not
/// meant for amesh to read (another purpose, a Service with a selector), logged at debug.
pub(crate) fn slice_endpoints(
    m: &Manifests,
    services: &[ServiceInfo],
    warnings: &mut Warnings,
) -> Vec<SliceEndpoint> {
    let by_key: BTreeMap<&ObjectKey, &ServiceInfo> = services.iter().map(|s| (&s.key, s)).collect();
    let mut endpoints = Vec::new();
    for (key, slice) in &m.endpoint_slices {
        let Some(name) = labels(&slice.metadata).get(labels::SERVICE_NAME) else {
            tracing::debug!(
                slice = %key,
                "no {} label: not a Service's slice",
                labels::SERVICE_NAME
            );
            continue;
        };
        let service_key = ObjectKey::new(key.namespace.clone(), name.clone());
        let Some(svc) = by_key.get(&service_key) else {
            if m.services.contains_key(&service_key) {
                tracing::debug!(
                    slice = %key,
                    service = %service_key,
                    "slice of an ExternalName service"
                );
            } else {
                warnings.push(format!(
                    "EndpointSlice {key}: label {} names Service {service_key}, which does not \
                     exist; slice ignored",
                    labels::SERVICE_NAME
                ));
            }
            continue;
        };
        if !svc.selector.is_empty() {
            tracing::debug!(
                slice = %key,
                service = %service_key,
                "slice of a Service with a selector: its endpoints are its pods"
            );
            continue;
        }
        if slice.address_type == "FQDN" {
            warnings.push(format!(
                "EndpointSlice {key} of Service {service_key}: addressType FQDN is not \
                 supported (ztunnel reaches endpoints by IP address); its endpoints are ignored"
            ));
            continue;
        }
        let ports = ports(key, slice, svc, warnings);
        let service = format!("{}/{}", svc.key.namespace, svc.hostname);
        for (i, endpoint) in slice.endpoints.iter().flatten().enumerate() {
            if let Some(ip) = address(key, i, endpoint, warnings) {
                endpoints.push(SliceEndpoint {
                    slice: key.clone(),
                    service: service.clone(),
                    ip,
                    ready: ready(endpoint),
                    node: endpoint.node_name.clone().filter(|n| !n.is_empty()),
                    pod: pod_of(key, endpoint),
                    ports: ports.clone(),
                });
            }
        }
    }
    endpoints
}

/// The first address of an endpoint. Loading has checked it (an IP of the slice's family);
/// this guards translation against an object that did not go through loading.
fn address(
    slice: &ObjectKey,
    index: usize,
    endpoint: &Endpoint,
    warnings: &mut Warnings,
) -> Option<IpAddr> {
    let Some(text) = endpoint.addresses.first() else {
        warnings.push(format!(
            "EndpointSlice {slice}: endpoints[{index}] has no address; ignored"
        ));
        return None;
    };
    if endpoint.addresses.len() > 1 {
        tracing::debug!(%slice, index, "several addresses: the first one counts, as in kube-proxy");
    }
    match text.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            warnings.push(format!(
                "EndpointSlice {slice}: endpoints[{index}].addresses[0] {text:?} is not an IP \
                 address; endpoint ignored"
            ));
            None
        }
    }
}

/// Kubernetes reads an absent `ready` as true and an absent `terminating` as false. A
/// terminating endpoint counts as not ready even when its publisher marks it ready (as
/// `publishNotReadyAddresses` would), so that new connections go to the others; istiod reads
/// `ready` alone.
fn ready(endpoint: &Endpoint) -> bool {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    ready && !terminating
}

/// The pod a `targetRef` of kind Pod names (in the slice's namespace unless it says another).
fn pod_of(slice: &ObjectKey, endpoint: &Endpoint) -> Option<ObjectKey> {
    let target = endpoint.target_ref.as_ref()?;
    if target.kind.as_deref() != Some("Pod") {
        return None;
    }
    let name = target.name.clone().filter(|n| !n.is_empty())?;
    let namespace = target
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| slice.namespace.clone());
    Some(ObjectKey::new(namespace, name))
}

/// The slice's TCP ports joined to the Service's by name (a slice port's `name` is the
/// Service port's; its `port` is the target port). Unmatched and unusable ports are reported.
fn ports(
    key: &ObjectKey,
    slice: &EndpointSlice,
    svc: &ServiceInfo,
    warnings: &mut Warnings,
) -> Vec<(u16, u16)> {
    // The API server defaults an absent protocol to TCP and an absent name to "".
    let tcp: Vec<&EndpointPort> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .collect();
    let name_of = |p: &EndpointPort| p.name.clone().unwrap_or_default();
    let mut ports = Vec::new();
    for service_port in &svc.ports {
        let Some(port) = tcp.iter().find(|p| name_of(p) == service_port.name) else {
            continue;
        };
        match port
            .port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
        {
            Some(target) => ports.push((service_port.port, target)),
            None => warnings.push(format!(
                "EndpointSlice {key}: port {:?} has no port number in 1-65535 ({}); its \
                 endpoints do not serve port {} of Service {}",
                service_port.name,
                port.port
                    .map_or_else(|| "none".to_owned(), |n| n.to_string()),
                service_port.port,
                svc.key
            )),
        }
    }
    let unmatched: Vec<String> = tcp
        .iter()
        .map(|p| name_of(p))
        .filter(|name| !svc.ports.iter().any(|s| &s.name == name))
        .collect();
    if tcp.is_empty() && !svc.ports.is_empty() {
        warnings.push(format!(
            "EndpointSlice {key}: lists no TCP port; its endpoints serve no port of Service {}",
            svc.key
        ));
    }
    for name in unmatched {
        warnings.push(format!(
            "EndpointSlice {key}: port {name:?} matches no TCP port name of Service {}; \
             ignored",
            svc.key
        ));
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointConditions;

    fn endpoint(ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec!["10.0.0.1".into()],
            conditions: Some(EndpointConditions {
                ready,
                terminating,
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }
    }

    #[test]
    fn readiness_as_kubernetes_reads_it() {
        assert!(ready(&Endpoint::default()));
        assert!(ready(&endpoint(None, None)));
        assert!(ready(&endpoint(Some(true), Some(false))));
        assert!(!ready(&endpoint(Some(false), None)));
        // publishNotReadyAddresses keeps a terminating endpoint "ready": still not a target.
        assert!(!ready(&endpoint(Some(true), Some(true))));
    }
}
