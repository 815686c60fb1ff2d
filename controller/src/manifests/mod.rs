//! Kubernetes manifests as typed objects: the input of the model, whatever the source (a folder
//! of YAML files today, the Kubernetes API later).
//!
//! Core kinds (and `discovery.k8s.io` EndpointSlices) are `k8s-openapi` types; Gateway API and
//! Istio security kinds are our own serde structs ([`gateway`], [`security`]). Objects are kept
//! in maps keyed by namespace and name, so iteration order, and with it everything derived from
//! them, is deterministic.

mod de;
mod error;
pub mod gateway;
mod load;
pub mod networking;
pub mod ratelimit;
pub mod security;
mod skipped;
mod split;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use de::PortKey;
pub use error::{ManifestError, ObjectRef};
pub use gateway::{Gateway, GrpcRoute, HttpRoute};
pub use load::{fingerprint, load_dir, load_yaml, KeptObject, LastValid, LoadResult};
pub use networking::{DestinationRule, VirtualService};
pub use ratelimit::HttpLocalRateLimitPolicy;
pub use security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
pub use skipped::{SkipReason, SkippedObject};

/// Namespace given to namespaced objects that do not name one, as `kubectl apply` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Identifies a namespaced object of a known kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Key of `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Key of an object from its metadata (empty strings where unset).
    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Every object the controller understands, by kind.
///
/// Cluster-scoped kinds (Namespace, Node) are keyed by name; the others by [`ObjectKey`].
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// Namespaces, by name (their labels opt pods into ambient and bind waypoints).
    pub namespaces: BTreeMap<String, Namespace>,
    /// Nodes, by name (their topology labels give workload localities).
    pub nodes: BTreeMap<String, Node>,
    /// Pods: the workloads.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// Deployments: expanded into pods by the lab; the translation itself reads only pods.
    pub deployments: BTreeMap<ObjectKey, Deployment>,
    /// Services.
    pub services: BTreeMap<ObjectKey, Service>,
    /// Endpoint slices: the endpoints of Services without a selector (those of the others
    /// come from their pods).
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Service accounts.
    pub service_accounts: BTreeMap<ObjectKey, ServiceAccount>,
    /// Gateways (waypoints among them).
    pub gateways: BTreeMap<ObjectKey, Gateway>,
    /// HTTP routes.
    pub http_routes: BTreeMap<ObjectKey, HttpRoute>,
    /// gRPC routes.
    pub grpc_routes: BTreeMap<ObjectKey, GrpcRoute>,
    /// Authorization policies.
    pub authorization_policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    /// Peer authentication (mTLS mode) policies.
    pub peer_authentications: BTreeMap<ObjectKey, PeerAuthentication>,
    /// Request authentication (JWT) policies.
    pub request_authentications: BTreeMap<ObjectKey, RequestAuthentication>,
    /// Istio VirtualServices (waypoint routes).
    pub virtual_services: BTreeMap<ObjectKey, VirtualService>,
    /// Istio DestinationRules (waypoint destination policies).
    pub destination_rules: BTreeMap<ObjectKey, DestinationRule>,
    /// amesh's local rate limits for waypoints.
    pub rate_limit_policies: BTreeMap<ObjectKey, HttpLocalRateLimitPolicy>,
}

/// One typed object of any known kind.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // transient: objects move into the maps right away
pub enum Object {
    /// `v1` Namespace.
    Namespace(Namespace),
    /// `v1` Node.
    Node(Node),
    /// `v1` Pod.
    Pod(Pod),
    /// `apps/v1` Deployment.
    Deployment(Deployment),
    /// `v1` Service.
    Service(Service),
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// `v1` ServiceAccount.
    ServiceAccount(ServiceAccount),
    /// `gateway.networking.k8s.io` Gateway.
    Gateway(Gateway),
    /// `gateway.networking.k8s.io` HTTPRoute.
    HttpRoute(HttpRoute),
    /// `gateway.networking.k8s.io` GRPCRoute.
    GrpcRoute(GrpcRoute),
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication(RequestAuthentication),
    /// `networking.istio.io` VirtualService.
    VirtualService(VirtualService),
    /// `networking.istio.io` DestinationRule.
    DestinationRule(DestinationRule),
    /// `policy.amesh.io` HTTPLocalRateLimitPolicy.
    HttpLocalRateLimitPolicy(HttpLocalRateLimitPolicy),
}

impl Object {
    /// The object's kind, as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Node(_) => "Node",
            Object::Pod(_) => "Pod",
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Gateway(_) => "Gateway",
            Object::HttpRoute(_) => "HTTPRoute",
            Object::GrpcRoute(_) => "GRPCRoute",
            Object::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Object::PeerAuthentication(_) => "PeerAuthentication",
            Object::RequestAuthentication(_) => "RequestAuthentication",
            Object::VirtualService(_) => "VirtualService",
            Object::DestinationRule(_) => "DestinationRule",
            Object::HttpLocalRateLimitPolicy(_) => "HTTPLocalRateLimitPolicy",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::HttpLocalRateLimitPolicy(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::GrpcRoute(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
            Object::RequestAuthentication(o) => &mut o.metadata,
            Object::VirtualService(o) => &mut o.metadata,
            Object::DestinationRule(o) => &mut o.metadata,
            Object::HttpLocalRateLimitPolicy(o) => &mut o.metadata,
        }
    }

    /// Whether the kind lives outside namespaces.
    pub fn is_cluster_scoped(&self) -> bool {
        matches!(self, Object::Namespace(_) | Object::Node(_))
    }

    /// Gives a namespaced object without a namespace the `default` one, and clears the
    /// namespace of a cluster-scoped object (the API server ignores it too).
    pub fn normalize_namespace(&mut self) {
        let cluster_scoped = self.is_cluster_scoped();
        let meta = self.metadata_mut();
        if cluster_scoped {
            meta.namespace = None;
        } else if meta.namespace.as_deref().is_none_or(str::is_empty) {
            meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
    }
}

impl Manifests {
    /// Whether an object of the same kind, namespace and name is already present.
    pub fn contains(&self, object: &Object) -> bool {
        let meta = object.metadata();
        let name = meta.name.clone().unwrap_or_default();
        let key = ObjectKey::of(meta);
        match object {
            Object::Namespace(_) => self.namespaces.contains_key(&name),
            Object::Node(_) => self.nodes.contains_key(&name),
            Object::Pod(_) => self.pods.contains_key(&key),
            Object::Deployment(_) => self.deployments.contains_key(&key),
            Object::Service(_) => self.services.contains_key(&key),
            Object::EndpointSlice(_) => self.endpoint_slices.contains_key(&key),
            Object::ServiceAccount(_) => self.service_accounts.contains_key(&key),
            Object::Gateway(_) => self.gateways.contains_key(&key),
            Object::HttpRoute(_) => self.http_routes.contains_key(&key),
            Object::GrpcRoute(_) => self.grpc_routes.contains_key(&key),
            Object::AuthorizationPolicy(_) => self.authorization_policies.contains_key(&key),
            Object::PeerAuthentication(_) => self.peer_authentications.contains_key(&key),
            Object::RequestAuthentication(_) => self.request_authentications.contains_key(&key),
            Object::VirtualService(_) => self.virtual_services.contains_key(&key),
            Object::DestinationRule(_) => self.destination_rules.contains_key(&key),
            Object::HttpLocalRateLimitPolicy(_) => self.rate_limit_policies.contains_key(&key),
        }
    }

    /// Adds or replaces an object (keyed by its metadata as it is; see
    /// [`Object::normalize_namespace`]). Returns whether one was replaced.
    pub fn insert(&mut self, object: Object) -> bool {
        let meta = object.metadata();
        let name = meta.name.clone().unwrap_or_default();
        let key = ObjectKey::of(meta);
        match object {
            Object::Namespace(o) => self.namespaces.insert(name, o).is_some(),
            Object::Node(o) => self.nodes.insert(name, o).is_some(),
            Object::Pod(o) => self.pods.insert(key, o).is_some(),
            Object::Deployment(o) => self.deployments.insert(key, o).is_some(),
            Object::Service(o) => self.services.insert(key, o).is_some(),
            Object::EndpointSlice(o) => self.endpoint_slices.insert(key, o).is_some(),
            Object::ServiceAccount(o) => self.service_accounts.insert(key, o).is_some(),
            Object::Gateway(o) => self.gateways.insert(key, o).is_some(),
            Object::HttpRoute(o) => self.http_routes.insert(key, o).is_some(),
            Object::GrpcRoute(o) => self.grpc_routes.insert(key, o).is_some(),
            Object::AuthorizationPolicy(o) => self.authorization_policies.insert(key, o).is_some(),
            Object::PeerAuthentication(o) => self.peer_authentications.insert(key, o).is_some(),
            Object::RequestAuthentication(o) => {
                self.request_authentications.insert(key, o).is_some()
            }
            Object::VirtualService(o) => self.virtual_services.insert(key, o).is_some(),
            Object::DestinationRule(o) => self.destination_rules.insert(key, o).is_some(),
            Object::HttpLocalRateLimitPolicy(o) => {
                self.rate_limit_policies.insert(key, o).is_some()
            }
        }
    }

    /// Number of objects of every kind together.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.nodes.len()
            + self.pods.len()
            + self.deployments.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.service_accounts.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
            + self.request_authentications.len()
            + self.virtual_services.len()
            + self.destination_rules.len()
            + self.rate_limit_policies.len()
    }

    /// Whether there is no object at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
