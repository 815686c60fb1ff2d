//! `gateway.networking.k8s.io` kinds (`v1`, also `v1beta1`): Gateway (a waypoint when its class
//! is `istio-waypoint`), HTTPRoute and GRPCRoute (mesh routes whose parent is a Service or a
//! waypoint).
//!
//! Unlike the security kinds these accept unknown fields: the Gateway API grows fields in every
//! release and ignoring one never widens access.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::de::nullable;

/// `gateway.networking.k8s.io/v1` Gateway.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// `gateway.networking.k8s.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `Gateway`.
    pub kind: String,
    /// Name, namespace, labels (`istio.io/waypoint-for`).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Class and listeners.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: GatewaySpec,
    /// Addresses assigned by the implementation.
    #[serde(default)]
    pub status: Option<GatewayStatus>,
}

/// Desired state of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// `istio-waypoint` for waypoints.
    #[serde(default)]
    pub gateway_class_name: String,
    /// Listeners; a waypoint has `mesh`, port 15008, protocol HBONE.
    #[serde(default, deserialize_with = "nullable")]
    pub listeners: Vec<Listener>,
    /// Requested addresses.
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<GatewayAddress>,
    /// Labels and annotations for the resources the implementation creates.
    #[serde(default)]
    pub infrastructure: Option<GatewayInfrastructure>,
}

/// One listener of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Listener name (`mesh` on waypoints).
    pub name: String,
    /// Hostname filter.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Port.
    pub port: u16,
    /// `HBONE`, `HTTP`, `HTTPS`, `TLS`, `TCP`, ...
    pub protocol: String,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Which routes may attach.
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` or `Passthrough`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Certificates (Secrets).
    #[serde(default, deserialize_with = "nullable")]
    pub certificate_refs: Vec<ObjectReference>,
    /// Implementation-specific options.
    #[serde(default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

/// Which routes may attach to a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    /// Namespaces routes may come from.
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds.
    #[serde(default, deserialize_with = "nullable")]
    pub kinds: Vec<RouteGroupKind>,
}

/// Namespaces routes may come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
}

/// A route kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// API group.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind.
    pub kind: String,
}

/// An address requested for, or assigned to, a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` (default) or `Hostname`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The address.
    pub value: String,
}

/// Metadata for the resources an implementation creates for a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayInfrastructure {
    /// Labels.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Addresses the Gateway is reachable at.
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<GatewayAddress>,
}

/// A reference to an object in some namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// API group (`""` for core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the referring object's).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `gateway.networking.k8s.io/v1` HTTPRoute.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// `gateway.networking.k8s.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `HTTPRoute`.
    pub kind: String,
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Parents, hostnames and rules.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: HttpRouteSpec,
}

/// Desired state of an HTTPRoute.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Gateways or (mesh) Services the route attaches to.
    #[serde(default, deserialize_with = "nullable")]
    pub parent_refs: Vec<ParentReference>,
    /// Hostnames matched.
    #[serde(default, deserialize_with = "nullable")]
    pub hostnames: Vec<String>,
    /// Rules, first match wins.
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<HttpRouteRule>,
}

/// The parent a route attaches to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group (`""` for a Service).
    #[serde(default)]
    pub group: Option<String>,
    /// `Gateway` (default) or `Service`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Listener name.
    #[serde(default)]
    pub section_name: Option<String>,
    /// Port (of the Service for mesh routes).
    #[serde(default)]
    pub port: Option<u16>,
}

/// One routing rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Optional rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches, OR-ed; none matches every request.
    #[serde(default, deserialize_with = "nullable")]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters applied to matching requests.
    #[serde(default, deserialize_with = "nullable")]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends.
    #[serde(default, deserialize_with = "nullable")]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Retries.
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
    /// Session persistence (kept only to report that amesh ignores it).
    #[serde(default)]
    pub session_persistence: Option<serde_json::Value>,
}

/// A request match; every field set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path match (default: prefix `/`).
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    /// Header matches, AND-ed.
    #[serde(default, deserialize_with = "nullable")]
    pub headers: Vec<HttpHeaderMatch>,
    /// Query parameter matches, AND-ed.
    #[serde(default, deserialize_with = "nullable")]
    pub query_params: Vec<HttpHeaderMatch>,
    /// HTTP method.
    #[serde(default)]
    pub method: Option<String>,
}

/// A path match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// Match type (default `PathPrefix`).
    #[serde(default, rename = "type")]
    pub type_: Option<PathMatchType>,
    /// Path (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// Path match types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PathMatchType {
    /// Whole path equal.
    Exact,
    /// Path prefix on `/` boundaries.
    PathPrefix,
    /// RE2 regular expression.
    RegularExpression,
}

/// A header or query parameter match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderMatch {
    /// Match type (default `Exact`).
    #[serde(default, rename = "type")]
    pub type_: Option<ValueMatchType>,
    /// Header or parameter name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Header and query parameter match types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ValueMatchType {
    /// Equal.
    Exact,
    /// RE2 regular expression.
    RegularExpression,
}

/// A request or response filter.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Which of the fields below is set.
    #[serde(rename = "type")]
    pub type_: String,
    /// `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// `RequestMirror`.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    /// `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// `URLRewrite`.
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    /// `ExtensionRef`.
    #[serde(default)]
    pub extension_ref: Option<ObjectReference>,
}

/// Header edits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers set (replacing).
    #[serde(default, deserialize_with = "nullable")]
    pub set: Vec<HttpHeader>,
    /// Headers added.
    #[serde(default, deserialize_with = "nullable")]
    pub add: Vec<HttpHeader>,
    /// Headers removed.
    #[serde(default, deserialize_with = "nullable")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Mirror requests to another backend.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where to mirror.
    pub backend_ref: BackendRef,
    /// Share of requests mirrored, in percent.
    #[serde(default)]
    pub percent: Option<u32>,
    /// Share of requests mirrored, as a fraction.
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// A fraction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fraction {
    /// Numerator.
    pub numerator: u32,
    /// Denominator (default 100).
    #[serde(default)]
    pub denominator: Option<u32>,
}

/// Redirect instead of forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// New scheme.
    #[serde(default)]
    pub scheme: Option<String>,
    /// New host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// New port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Status code (default 302).
    #[serde(default)]
    pub status_code: Option<u16>,
}

/// Rewrite host and path before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// A path rewrite.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Replacement for the whole path.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// Replacement for the matched prefix.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// A backend: a Service port, with a weight.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    /// API group (`""` for a Service).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Filters for this backend only.
    #[serde(default, deserialize_with = "nullable")]
    pub filters: Vec<HttpRouteFilter>,
}

/// A backend without weight or filters (mirror target).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// API group.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Route timeouts (Gateway API duration strings such as `10s`, `500ms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// Whole request, retries included.
    #[serde(default)]
    pub request: Option<String>,
    /// One attempt to a backend.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// Route retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRetry {
    /// Status codes that are retried.
    #[serde(default, deserialize_with = "nullable")]
    pub codes: Vec<u16>,
    /// Maximum attempts.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Backoff between attempts (duration string).
    #[serde(default)]
    pub backoff: Option<String>,
}

/// `gateway.networking.k8s.io/v1` GRPCRoute.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRoute {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `GRPCRoute`.
    pub kind: String,
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Parents, hostnames and rules.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: GrpcRouteSpec,
}

/// Desired state of a GRPCRoute.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// Gateways or (mesh) Services the route attaches to.
    #[serde(default, deserialize_with = "nullable")]
    pub parent_refs: Vec<ParentReference>,
    /// Hostnames matched.
    #[serde(default, deserialize_with = "nullable")]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<GrpcRouteRule>,
}

/// One gRPC routing rule. Its filters and backends have the HTTPRoute shapes (GRPCRoute allows
/// a subset of the filter types: header modifiers, mirror, extension).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// Optional rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches, OR-ed; none matches every request.
    #[serde(default, deserialize_with = "nullable")]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters applied to matching requests.
    #[serde(default, deserialize_with = "nullable")]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends.
    #[serde(default, deserialize_with = "nullable")]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Session persistence (kept only to report that amesh ignores it).
    #[serde(default)]
    pub session_persistence: Option<serde_json::Value>,
}

/// A gRPC request match; every field set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// Service and method.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Header (metadata) matches, AND-ed.
    #[serde(default, deserialize_with = "nullable")]
    pub headers: Vec<HttpHeaderMatch>,
}

/// Which gRPC service and method; an absent part matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// Match type (default `Exact`).
    #[serde(default, rename = "type")]
    pub type_: Option<ValueMatchType>,
    /// Fully qualified service, e.g. `helloworld.Greeter`.
    #[serde(default)]
    pub service: Option<String>,
    /// Method, e.g. `SayHello`.
    #[serde(default)]
    pub method: Option<String>,
}
