//! Manifests → the resources Istio's control plane serves to ztunnel: one
//! `istio.workload.Address` per pod (a Workload) and per Service, and one
//! `istio.security.Authorization` per L4-enforceable policy; plus amesh's own waypoint
//! resources (`amesh.l7.v1`), each with the waypoints it is for.
//!
//! | resource | name | from |
//! |---|---|---|
//! | Workload | `<cluster>//v1/Pod/<ns>/<pod>` | every pod with an IP and a node (`workload.rs`) |
//! | Workload | `<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>` | an EndpointSlice endpoint of a Service without a selector that is no pod's (`endpoint_slice.rs`) |
//! | Service | `<ns>/<hostname>` | every Service but ExternalName ones (`service.rs`) |
//! | Authorization | `<ns>/<name>` | AuthorizationPolicy without targetRefs, ALLOW or DENY (`authz.rs`) |
//! | Authorization | `<root ns>/istio_converted_static_strict`, `<ns>/converted_peer_authentication_<name>` | PeerAuthentication (`peer_auth.rs`) |
//! | amesh.l7.v1.ServiceRoutes | `<ns>/<hostname>` | HTTPRoutes and GRPCRoutes attached to a service (`routes.rs`), else its VirtualServices (`virtual_service.rs`); its DestinationRule (`destination_rule.rs`); for its waypoint and the waypoints whose routes send to it |
//! | amesh.l7.v1.Authorization | `<ns>/<name>` | AuthorizationPolicy with targetRefs, for the waypoints it targets (`l7_authz.rs`) |
//! | amesh.l7.v1.RequestAuthentication | `<ns>/<name>` | RequestAuthentication with targetRefs, JWKS inline or fetched (`request_authn.rs`) |
//! | amesh.l7.v1.RateLimit | `<ns>/<name>` | HTTPLocalRateLimitPolicy (`rate_limit.rs`) |
//!
//! How policies become L4 rules — HTTP-only attributes never widen an ALLOW, and make a DENY
//! deny at L4 — and how mTLS modes become DENY policies is written in `authz.rs` and
//! `peer_auth.rs`; in short:
//!
//! - AuthorizationPolicy with `targetRefs`: for the waypoint, not sent. AUDIT / CUSTOM: skipped
//!   with a warning. ALLOW rule using `methods`, `paths`, `hosts`, `requestPrincipals`,
//!   `remoteIpBlocks` or an HTTP `when` key: dropped (the policy allows only what its other
//!   rules allow). DENY rule using them: those parts ignored, the rule denies at L4.
//! - PeerAuthentication STRICT (mesh, namespace or workload level; the most specific set
//!   mode wins): pods list `<root ns>/istio_converted_static_strict`, a DENY of connections
//!   without a peer identity; port-level exceptions give a per-policy
//!   `<ns>/converted_peer_authentication_<name>` DENY whose match adds
//!   `not_destination_ports` (or `destination_ports` for STRICT ports under PERMISSIVE).
//!
//! The output is deterministic: every list is sorted by resource name, and map-like content
//! (policy lists, port lists) in a fixed order, so unchanged input gives identical resources
//! and the xDS server can version them by content.

mod authz;
mod destination_rule;
mod endpoint_slice;
mod l7_authz;
mod peer_auth;
mod rate_limit;
mod request_authn;
mod routes;
mod service;
mod virtual_service;
mod workload;

use amesh_proto::amesh::l7::v1 as l7;

use amesh_proto::istio::security::Authorization;
use amesh_proto::istio::workload::address::Type;
use amesh_proto::istio::workload::Address;

use crate::manifests::{Manifests, ObjectKey};
use crate::model::Model;
use crate::warnings::Warnings;
pub use authz::string_match;
pub use endpoint_slice::slice_uid;
pub use peer_auth::{CONVERTED_PREFIX, STATIC_STRICT_POLICY};
pub use request_authn::{jwks_uris, JwksDocuments};
pub use routes::{parse_duration, precedence, RouteOrder};
pub use service::resource_name as service_resource_name;
pub use workload::pod_uid;

/// Cluster-wide settings of the translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateOptions {
    /// Trust domain of workload identities (`spiffe://<trust domain>/ns/..`).
    pub trust_domain: String,
    /// Cluster id, the first part of workload uids.
    pub cluster_id: String,
    /// DNS suffix of service hostnames (`<svc>.<ns>.svc.<domain suffix>`).
    pub domain_suffix: String,
    /// Istio's root namespace: policies there without a selector apply mesh-wide.
    pub root_namespace: String,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
            domain_suffix: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
        }
    }
}

/// The resources for ztunnel, each with its xDS resource name, sorted by name.
#[derive(Debug, Clone, Default)]
pub struct Translated {
    /// Workloads and services (`istio.workload.Address`).
    pub addresses: Vec<(String, Address)>,
    /// L4 policies (`istio.security.Authorization`).
    pub authorizations: Vec<(String, Authorization)>,
    /// Waypoint routes of services (`amesh.l7.v1.ServiceRoutes`), sorted by name.
    pub service_routes: Vec<L7Resource<l7::ServiceRoutes>>,
    /// Waypoint policies (`amesh.l7.v1.Authorization`), sorted by name.
    pub l7_authorizations: Vec<L7Resource<l7::Authorization>>,
    /// Waypoint JWT validation (`amesh.l7.v1.RequestAuthentication`), sorted by name.
    pub request_authentications: Vec<L7Resource<l7::RequestAuthentication>>,
    /// Waypoint local rate limits (`amesh.l7.v1.RateLimit`), sorted by name.
    pub rate_limits: Vec<L7Resource<l7::RateLimit>>,
    /// Configuration problems found on the way (also logged), sorted.
    pub warnings: Vec<String>,
}

/// A waypoint resource and the waypoints it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct L7Resource<T> {
    /// xDS resource name, `<ns>/<hostname>` or `<ns>/<name>`.
    pub name: String,
    /// The waypoint Gateways that are sent this resource, sorted; empty when none enforces it.
    pub waypoints: Vec<ObjectKey>,
    /// The resource.
    pub resource: T,
}

impl<T> L7Resource<T> {
    /// Whether the waypoint Gateway `gateway` gets this resource.
    pub fn is_for(&self, gateway: &ObjectKey) -> bool {
        self.waypoints.binary_search(gateway).is_ok()
    }
}

/// What one waypoint (Gateway `namespace/name`) gets, as its local L7 file: the lab's file
/// mode, which runs without the controller's servers.
pub fn l7_local_config(
    t: &Translated,
    gateway_namespace: &str,
    gateway_name: &str,
) -> l7::LocalL7Config {
    let gateway = ObjectKey::new(gateway_namespace, gateway_name);
    l7::LocalL7Config {
        routes: t
            .service_routes
            .iter()
            .filter(|r| r.is_for(&gateway))
            .map(|r| r.resource.clone())
            .collect(),
        policies: t
            .l7_authorizations
            .iter()
            .filter(|r| r.is_for(&gateway))
            .map(|r| r.resource.clone())
            .collect(),
        authentications: t
            .request_authentications
            .iter()
            .filter(|r| r.is_for(&gateway))
            .map(|r| r.resource.clone())
            .collect(),
        rate_limits: t
            .rate_limits
            .iter()
            .filter(|r| r.is_for(&gateway))
            .map(|r| r.resource.clone())
            .collect(),
    }
}

/// Translates manifests into ztunnel's resources, with no JWKS fetched (see
/// [`translate_with_jwks`]).
pub fn translate(m: &Manifests, opts: &TranslateOptions) -> Translated {
    translate_with_jwks(m, opts, &JwksDocuments::new())
}

/// Translates manifests, with the JWKS documents the controller has fetched for the
/// `jwksUri`s of RequestAuthentications (by uri).
pub fn translate_with_jwks(
    m: &Manifests,
    opts: &TranslateOptions,
    jwks: &JwksDocuments,
) -> Translated {
    let mut warnings = Warnings::default();
    let model = Model::build(m, &opts.domain_suffix, &mut warnings);
    let policies = authz::authorization_policies(m, opts, &mut warnings);
    let peer = peer_auth::PeerAuthn::build(m, opts, &mut warnings);

    let slices = endpoint_slice::place(&model, opts, &mut warnings);

    let mut addresses =
        Vec::with_capacity(model.pods.len() + slices.workloads.len() + model.services.len());
    for pod in &model.pods {
        let slice_services = slices.pod_services.get(&pod.key);
        let w = workload::workload(
            pod,
            &model,
            opts,
            &policies,
            &peer,
            slice_services,
            &mut warnings,
        );
        addresses.push((w.uid.clone(), wrap(Type::Workload(w))));
    }
    for w in slices.workloads {
        addresses.push((w.uid.clone(), wrap(Type::Workload(w))));
    }
    for svc in &model.services {
        let s = service::service(svc, &model, &mut warnings);
        addresses.push((service::resource_name(&s), wrap(Type::Service(s))));
    }
    addresses.sort_by(|a, b| a.0.cmp(&b.0));

    let mut authorizations: Vec<_> = policies
        .into_iter()
        .map(|p| (p.resource_name, p.authorization))
        .chain(peer.authorizations())
        .collect();
    authorizations.sort_by(|a, b| a.0.cmp(&b.0));

    let bindings = routes::service_waypoints(&model, &mut warnings);
    let mut service_routes = routes::service_routes(m, &model, &bindings, opts, &mut warnings);
    service_routes.sort_by(|a, b| a.name.cmp(&b.name));
    virtual_service::apply(
        &mut service_routes,
        m,
        &model,
        &bindings,
        opts,
        &mut warnings,
    );
    destination_rule::apply(
        &mut service_routes,
        m,
        &model,
        &bindings,
        opts,
        &mut warnings,
    );
    destination_rule::check_subsets(&service_routes, &mut warnings);
    destination_rule::widen_visibility(&mut service_routes);
    let mut l7_authorizations =
        l7_authz::l7_authorizations(m, &model, &bindings, opts, &mut warnings);
    l7_authorizations.sort_by(|a, b| a.name.cmp(&b.name));
    let mut request_authentications =
        request_authn::request_authentications(m, &model, &bindings, jwks, &mut warnings);
    request_authentications.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rate_limits = rate_limit::rate_limits(m, &model, &bindings, opts, &mut warnings);
    rate_limits.sort_by(|a, b| a.name.cmp(&b.name));

    Translated {
        addresses,
        authorizations,
        service_routes,
        l7_authorizations,
        request_authentications,
        rate_limits,
        warnings: warnings.into_sorted(),
    }
}

fn wrap(t: Type) -> Address {
    Address { r#type: Some(t) }
}
