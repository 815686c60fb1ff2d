//! The kinds the Kubernetes source watches, where the API serves them, and how one served
//! object becomes a typed [`Object`]: one at a time, so that a malformed object costs only
//! itself.

use std::fmt;

use ::kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::manifests::{
    load_yaml, validate, ManifestError, Manifests, Object, ObjectKey, DEFAULT_NAMESPACE,
};

/// A kind the source lists and watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Namespace.
    Namespace,
    /// `v1` Node.
    Node,
    /// `v1` Pod.
    Pod,
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` ServiceAccount.
    ServiceAccount,
    /// `gateway.networking.k8s.io/v1` Gateway.
    Gateway,
    /// `gateway.networking.k8s.io/v1` HTTPRoute.
    HttpRoute,
    /// `gateway.networking.k8s.io/v1` GRPCRoute.
    GrpcRoute,
    /// `security.istio.io/v1` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io/v1` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io/v1` RequestAuthentication.
    RequestAuthentication,
    /// `networking.istio.io/v1` VirtualService.
    VirtualService,
    /// `networking.istio.io/v1` DestinationRule.
    DestinationRule,
    /// `policy.amesh.io/v1alpha1` HTTPLocalRateLimitPolicy.
    HttpLocalRateLimitPolicy,
}

const DISCOVERY: &str = "discovery.k8s.io";
const GATEWAY_API: &str = "gateway.networking.k8s.io";
const ISTIO_SECURITY: &str = "security.istio.io";
const ISTIO_NETWORKING: &str = "networking.istio.io";
const AMESH_POLICY: &str = crate::manifests::ratelimit::GROUP;

impl Kind {
    /// Every kind, in the order the source starts them.
    pub const ALL: [Kind; 15] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ServiceAccount,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::HttpLocalRateLimitPolicy,
    ];

    /// The kind as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::HttpLocalRateLimitPolicy => "HTTPLocalRateLimitPolicy",
        }
    }

    /// API group (empty for core) and lower-case plural, as in the resource's URL.
    fn group_and_plural(self) -> (&'static str, &'static str) {
        match self {
            Kind::Namespace => ("", "namespaces"),
            Kind::Node => ("", "nodes"),
            Kind::Pod => ("", "pods"),
            Kind::Service => ("", "services"),
            Kind::EndpointSlice => (DISCOVERY, "endpointslices"),
            Kind::ServiceAccount => ("", "serviceaccounts"),
            Kind::Gateway => (GATEWAY_API, "gateways"),
            Kind::HttpRoute => (GATEWAY_API, "httproutes"),
            Kind::GrpcRoute => (GATEWAY_API, "grpcroutes"),
            Kind::AuthorizationPolicy => (ISTIO_SECURITY, "authorizationpolicies"),
            Kind::PeerAuthentication => (ISTIO_SECURITY, "peerauthentications"),
            Kind::RequestAuthentication => (ISTIO_SECURITY, "requestauthentications"),
            Kind::VirtualService => (ISTIO_NETWORKING, "virtualservices"),
            Kind::DestinationRule => (ISTIO_NETWORKING, "destinationrules"),
            Kind::HttpLocalRateLimitPolicy => (AMESH_POLICY, "httplocalratelimitpolicies"),
        }
    }

    /// Where the API serves the kind (`v1`, but amesh's own `v1alpha1` policy kind).
    pub fn api_resource(self) -> ApiResource {
        let (group, plural) = self.group_and_plural();
        let version = if group == AMESH_POLICY {
            "v1alpha1"
        } else {
            "v1"
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.name()),
            plural,
        )
    }

    /// The label selector of the kind's list and watch, when the translation needs only part
    /// of it. The EndpointSlices that Kubernetes' EndpointSlice controller manages are those of
    /// Services with a selector, which the translation never reads (their endpoints are the
    /// pods): left on the API server, they cost no memory and no copy in every snapshot.
    pub fn label_selector(self) -> Option<&'static str> {
        match self {
            Kind::EndpointSlice => {
                Some("endpointslice.kubernetes.io/managed-by!=endpointslice-controller.k8s.io")
            }
            _ => None,
        }
    }

    /// Whether the kind is a security policy: a malformed new version of one keeps the last
    /// valid version in force, because dropping it could open what a DENY closed (fail
    /// closed), where a malformed pod or service simply leaves the config.
    pub fn is_policy(self) -> bool {
        matches!(
            self,
            Kind::AuthorizationPolicy
                | Kind::PeerAuthentication
                | Kind::RequestAuthentication
                | Kind::HttpLocalRateLimitPolicy
        )
    }

    /// Whether the kind comes from a CRD, which a cluster may not have installed.
    pub fn is_custom(self) -> bool {
        matches!(
            self.group_and_plural().0,
            GATEWAY_API | ISTIO_SECURITY | ISTIO_NETWORKING | AMESH_POLICY
        )
    }

    /// Whether objects of the kind live outside namespaces.
    pub fn is_cluster_scoped(self) -> bool {
        matches!(self, Kind::Namespace | Kind::Node)
    }

    /// The key of a served object: its name for cluster-scoped kinds, else namespace (the
    /// default one if unset, as [`Object::normalize_namespace`] does) and name.
    pub fn key_of(self, object: &DynamicObject) -> ObjectKey {
        let meta = &object.metadata;
        let name = meta.name.clone().unwrap_or_default();
        if self.is_cluster_scoped() {
            return ObjectKey::new(String::new(), name);
        }
        let namespace = meta
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        ObjectKey::new(namespace, name)
    }

    /// Types one served object, validated as the folder loader validates it. `managedFields`
    /// are dropped first: nothing reads them and they are often the bulk of an object.
    pub fn convert(self, mut object: DynamicObject) -> Result<Object, Box<Rejected>> {
        object.metadata.managed_fields = None;
        let key = self.key_of(&object);
        let rejected = |field: Option<String>, detail: String| {
            Box::new(Rejected {
                kind: self,
                key: key.clone(),
                field,
                detail,
            })
        };
        if key.name.is_empty() {
            return Err(rejected(
                Some("metadata.name".into()),
                "missing or empty".into(),
            ));
        }
        let mut value = serde_json::to_value(&object).map_err(|e| rejected(None, e.to_string()))?;
        // List items of built-in kinds come without `apiVersion` and `kind`; our own types
        // require them.
        if let Some(map) = value.as_object_mut() {
            let resource = self.api_resource();
            map.insert("apiVersion".into(), Value::String(resource.api_version));
            map.insert("kind".into(), Value::String(resource.kind));
        }
        let mut typed = match self.typed(&value) {
            Ok(typed) => typed,
            Err(Fault::Field(e)) => return Err(rejected(Some(e.field.clone()), e.to_string())),
            Err(Fault::Serde(e)) => return self.explain(&key, &value, e),
        };
        typed.normalize_namespace();
        Ok(typed)
    }

    /// The fast path: serde straight from the JSON value.
    fn typed(self, value: &Value) -> Result<Object, Fault> {
        let object = match self {
            Kind::Namespace => Object::Namespace(from_value(value)?),
            Kind::Node => Object::Node(from_value(value)?),
            Kind::Pod => Object::Pod(from_value(value)?),
            Kind::Service => Object::Service(from_value(value)?),
            Kind::EndpointSlice => Object::EndpointSlice(from_value(value)?),
            Kind::ServiceAccount => Object::ServiceAccount(from_value(value)?),
            Kind::Gateway => Object::Gateway(from_value(value)?),
            Kind::HttpRoute => Object::HttpRoute(from_value(value)?),
            Kind::GrpcRoute => Object::GrpcRoute(from_value(value)?),
            Kind::AuthorizationPolicy => Object::AuthorizationPolicy(from_value(value)?),
            Kind::PeerAuthentication => Object::PeerAuthentication(from_value(value)?),
            Kind::RequestAuthentication => Object::RequestAuthentication(from_value(value)?),
            Kind::VirtualService => Object::VirtualService(from_value(value)?),
            Kind::DestinationRule => Object::DestinationRule(from_value(value)?),
            Kind::HttpLocalRateLimitPolicy => Object::HttpLocalRateLimitPolicy(from_value(value)?),
        };
        validate::object(&object).map_err(Fault::Field)?;
        Ok(object)
    }

    /// The slow path, for a rejected object only: JSON is YAML, and the YAML loader's errors
    /// name the field (`spec.ports[0].port: invalid type ...`), which serde_json's do not.
    fn explain(
        self,
        key: &ObjectKey,
        value: &Value,
        json_error: serde_json::Error,
    ) -> Result<Object, Box<Rejected>> {
        let rejected = |field: Option<String>, detail: String| {
            Box::new(Rejected {
                kind: self,
                key: key.clone(),
                field,
                detail,
            })
        };
        let mut loaded = load_yaml(format!("{} {key}", self.name()), &value.to_string());
        match loaded.errors.pop() {
            Some(ManifestError::Invalid { field, detail, .. }) => Err(rejected(field, detail)),
            Some(other) => Err(rejected(None, other.to_string())),
            // The YAML reading accepted what JSON did not (it is laxer on a few scalars):
            // take its reading, as the folder source would have.
            None => self
                .take(&mut loaded.manifests, key)
                .ok_or_else(|| rejected(None, json_error.to_string())),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A served object that could not be typed: it is left out, the rest still applies.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} {key}: {detail}")]
pub struct Rejected {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (empty for cluster-scoped kinds) and name.
    pub key: ObjectKey,
    /// The field at fault, when known (`spec.rules[0].to[0].operation.ports[1]`).
    pub field: Option<String>,
    /// What is wrong.
    pub detail: String,
}

/// Why the fast path refused an object.
enum Fault {
    Serde(serde_json::Error),
    Field(validate::FieldError),
}

fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Fault> {
    T::deserialize(value).map_err(Fault::Serde)
}

impl Kind {
    /// Takes the object of this kind at `key` out of `m` (cluster-scoped kinds: by name).
    pub fn take(self, m: &mut Manifests, key: &ObjectKey) -> Option<Object> {
        let name = &key.name;
        Some(match self {
            Kind::Namespace => Object::Namespace(m.namespaces.remove(name)?),
            Kind::Node => Object::Node(m.nodes.remove(name)?),
            Kind::Pod => Object::Pod(m.pods.remove(key)?),
            Kind::Service => Object::Service(m.services.remove(key)?),
            Kind::EndpointSlice => Object::EndpointSlice(m.endpoint_slices.remove(key)?),
            Kind::ServiceAccount => Object::ServiceAccount(m.service_accounts.remove(key)?),
            Kind::Gateway => Object::Gateway(m.gateways.remove(key)?),
            Kind::HttpRoute => Object::HttpRoute(m.http_routes.remove(key)?),
            Kind::GrpcRoute => Object::GrpcRoute(m.grpc_routes.remove(key)?),
            Kind::AuthorizationPolicy => {
                Object::AuthorizationPolicy(m.authorization_policies.remove(key)?)
            }
            Kind::PeerAuthentication => {
                Object::PeerAuthentication(m.peer_authentications.remove(key)?)
            }
            Kind::RequestAuthentication => {
                Object::RequestAuthentication(m.request_authentications.remove(key)?)
            }
            Kind::VirtualService => Object::VirtualService(m.virtual_services.remove(key)?),
            Kind::DestinationRule => Object::DestinationRule(m.destination_rules.remove(key)?),
            Kind::HttpLocalRateLimitPolicy => {
                Object::HttpLocalRateLimitPolicy(m.rate_limit_policies.remove(key)?)
            }
        })
    }

    /// Replaces every object of this kind in `to` by those in `from`.
    pub fn move_all(self, from: &mut Manifests, to: &mut Manifests) {
        use std::mem::take;
        match self {
            Kind::Namespace => to.namespaces = take(&mut from.namespaces),
            Kind::Node => to.nodes = take(&mut from.nodes),
            Kind::Pod => to.pods = take(&mut from.pods),
            Kind::Service => to.services = take(&mut from.services),
            Kind::EndpointSlice => to.endpoint_slices = take(&mut from.endpoint_slices),
            Kind::ServiceAccount => to.service_accounts = take(&mut from.service_accounts),
            Kind::Gateway => to.gateways = take(&mut from.gateways),
            Kind::HttpRoute => to.http_routes = take(&mut from.http_routes),
            Kind::GrpcRoute => to.grpc_routes = take(&mut from.grpc_routes),
            Kind::AuthorizationPolicy => {
                to.authorization_policies = take(&mut from.authorization_policies)
            }
            Kind::PeerAuthentication => {
                to.peer_authentications = take(&mut from.peer_authentications)
            }
            Kind::RequestAuthentication => {
                to.request_authentications = take(&mut from.request_authentications)
            }
            Kind::VirtualService => to.virtual_services = take(&mut from.virtual_services),
            Kind::DestinationRule => to.destination_rules = take(&mut from.destination_rules),
            Kind::HttpLocalRateLimitPolicy => {
                to.rate_limit_policies = take(&mut from.rate_limit_policies)
            }
        }
    }

    /// How many objects of this kind `m` holds.
    pub fn count(self, m: &Manifests) -> usize {
        match self {
            Kind::Namespace => m.namespaces.len(),
            Kind::Node => m.nodes.len(),
            Kind::Pod => m.pods.len(),
            Kind::Service => m.services.len(),
            Kind::EndpointSlice => m.endpoint_slices.len(),
            Kind::ServiceAccount => m.service_accounts.len(),
            Kind::Gateway => m.gateways.len(),
            Kind::HttpRoute => m.http_routes.len(),
            Kind::GrpcRoute => m.grpc_routes.len(),
            Kind::AuthorizationPolicy => m.authorization_policies.len(),
            Kind::PeerAuthentication => m.peer_authentications.len(),
            Kind::RequestAuthentication => m.request_authentications.len(),
            Kind::VirtualService => m.virtual_services.len(),
            Kind::DestinationRule => m.destination_rules.len(),
            Kind::HttpLocalRateLimitPolicy => m.rate_limit_policies.len(),
        }
    }
}
