//! `networking.istio.io` kinds (`v1`, also served as `v1beta1` and `v1alpha3`): VirtualService
//! and DestinationRule, the Istio traffic-management API a waypoint applies.
//!
//! Unlike the security kinds, these accept fields amesh does not implement: Istio's API is
//! large (TCP/TLS routes, CORS, locality load balancing, client TLS...) and refusing a whole
//! VirtualService for its `corsPolicy` would drop the routing the user relies on. Every struct
//! keeps what it does not model in `other`, and the translation reports each such field once,
//! by its path, as ignored. A field amesh models but whose value is malformed (a duration that
//! does not parse, a percentage out of range) rejects the object, as Istio's webhook would.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use super::de::nullable;

mod check;
#[cfg(test)]
mod tests;

pub use check::{
    grpc_status_code, parse_istio_duration, validate_destination_rule, validate_virtual_service,
};

/// Fields of an object that amesh does not model, by name (reported, never applied).
pub type Unsupported = BTreeMap<String, Value>;

/// `networking.istio.io/v1` VirtualService.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    /// `networking.istio.io/v1`, `v1beta1` or `v1alpha3`.
    pub api_version: String,
    /// `VirtualService`.
    pub kind: String,
    /// Name and namespace (short hosts resolve in the namespace).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The routing.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: VirtualServiceSpec,
}

/// What a VirtualService routes and how.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// Services the routes apply to (short, partly or fully qualified names).
    #[serde(default, deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    /// Gateways the routes apply to; empty or `mesh` = the mesh (what a waypoint serves).
    #[serde(default, deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    /// HTTP routes, evaluated in order.
    #[serde(default, deserialize_with = "nullable")]
    pub http: Vec<VsHttpRoute>,
    /// Everything else (`tcp`, `tls`, `exportTo`): reported as unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// One HTTP route of a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsHttpRoute {
    /// Name (logs only).
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions, OR-ed; none matches every request.
    #[serde(default, rename = "match", deserialize_with = "nullable")]
    pub matches: Vec<VsHttpMatch>,
    /// Weighted destinations.
    #[serde(default, deserialize_with = "nullable")]
    pub route: Vec<VsRouteDestination>,
    /// Redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<VsRedirect>,
    /// Path / authority rewrite before forwarding.
    #[serde(default)]
    pub rewrite: Option<VsRewrite>,
    /// Whole-request timeout (Istio duration).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retry policy; absent → Istio's default policy.
    #[serde(default)]
    pub retries: Option<VsRetries>,
    /// Delays and aborts.
    #[serde(default)]
    pub fault: Option<VsFault>,
    /// One mirror destination (older form of `mirrors`).
    #[serde(default)]
    pub mirror: Option<VsDestination>,
    /// Share of requests `mirror` receives (default 100).
    #[serde(default)]
    pub mirror_percentage: Option<VsPercent>,
    /// Mirror destinations.
    #[serde(default, deserialize_with = "nullable")]
    pub mirrors: Vec<VsMirror>,
    /// Header changes of the request and the response.
    #[serde(default)]
    pub headers: Option<VsHeaders>,
    /// Everything else (`corsPolicy`, `delegate`, `directResponse`...): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// One match condition; every field set must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsHttpMatch {
    /// Name (logs only).
    #[serde(default)]
    pub name: Option<String>,
    /// Path condition.
    #[serde(default)]
    pub uri: Option<VsStringMatch>,
    /// Method condition (exact only at a waypoint).
    #[serde(default)]
    pub method: Option<VsStringMatch>,
    /// Header conditions, by header name.
    #[serde(default, deserialize_with = "nullable")]
    pub headers: BTreeMap<String, VsStringMatch>,
    /// Query parameter conditions, by name.
    #[serde(default, deserialize_with = "nullable")]
    pub query_params: BTreeMap<String, VsStringMatch>,
    /// Service port the request was sent to.
    #[serde(default)]
    pub port: Option<u32>,
    /// Compare the path case-insensitively.
    #[serde(default)]
    pub ignore_uri_case: Option<bool>,
    /// Everything else (`sourceLabels`, `authority`, `withoutHeaders`...): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// Istio's string match: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsStringMatch {
    /// The whole value.
    #[serde(default)]
    pub exact: Option<String>,
    /// The value's start.
    #[serde(default)]
    pub prefix: Option<String>,
    /// An RE2 expression matching the whole value.
    #[serde(default)]
    pub regex: Option<String>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// A weighted destination.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsRouteDestination {
    /// Where to send.
    #[serde(default)]
    pub destination: VsDestination,
    /// Relative weight (Istio: the weights of a route add up to 100; default 100 when alone).
    #[serde(default)]
    pub weight: Option<i64>,
    /// Header changes when this destination is chosen.
    #[serde(default)]
    pub headers: Option<VsHeaders>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// A service (and subset and port) to send to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsDestination {
    /// The service's name (short, partly or fully qualified).
    #[serde(default)]
    pub host: String,
    /// DestinationRule subset.
    #[serde(default)]
    pub subset: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `port: {number: 9080}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    /// The port number.
    #[serde(default)]
    pub number: u32,
}

/// `{value: 12.5}`: a share in percent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsPercent {
    /// 0..=100.
    #[serde(default)]
    pub value: f64,
}

/// One mirror destination.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsMirror {
    /// Where copies go.
    #[serde(default)]
    pub destination: VsDestination,
    /// Share of requests copied (default 100).
    #[serde(default)]
    pub percentage: Option<VsPercent>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `headers: {request: ..., response: ...}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsHeaders {
    /// Changes to the request sent upstream.
    #[serde(default)]
    pub request: Option<VsHeaderOperations>,
    /// Changes to the response sent back.
    #[serde(default)]
    pub response: Option<VsHeaderOperations>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `set`, `add` and `remove` of headers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsHeaderOperations {
    /// Replace (or add) these.
    #[serde(default, deserialize_with = "nullable")]
    pub set: BTreeMap<String, String>,
    /// Append these.
    #[serde(default, deserialize_with = "nullable")]
    pub add: BTreeMap<String, String>,
    /// Remove these.
    #[serde(default, deserialize_with = "nullable")]
    pub remove: Vec<String>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `rewrite`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsRewrite {
    /// New path, or new prefix when the route matched a prefix.
    #[serde(default)]
    pub uri: Option<String>,
    /// New `:authority` / `Host`.
    #[serde(default)]
    pub authority: Option<String>,
    /// Anything else (`uriRegexRewrite`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `redirect`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsRedirect {
    /// New path.
    #[serde(default)]
    pub uri: Option<String>,
    /// New host.
    #[serde(default)]
    pub authority: Option<String>,
    /// New port.
    #[serde(default)]
    pub port: Option<u32>,
    /// New scheme.
    #[serde(default)]
    pub scheme: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default)]
    pub redirect_code: Option<u32>,
    /// Anything else (`derivePort`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `retries`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsRetries {
    /// Retries after the first attempt; 0 disables retries.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Bound on each attempt (Istio duration).
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Comma-separated conditions and status codes.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Anything else (`retryRemoteLocalities`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `fault`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsFault {
    /// Delay before forwarding.
    #[serde(default)]
    pub delay: Option<VsDelay>,
    /// Answer instead of forwarding.
    #[serde(default)]
    pub abort: Option<VsAbort>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `fault.delay`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsDelay {
    /// How long (Istio duration).
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// Share of requests delayed (default 100).
    #[serde(default)]
    pub percentage: Option<VsPercent>,
    /// Anything else (`percent`, `exponentialDelay`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `fault.abort`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsAbort {
    /// HTTP status to answer.
    #[serde(default)]
    pub http_status: Option<u32>,
    /// gRPC status to answer, by name (`UNAVAILABLE`) or number.
    #[serde(default)]
    pub grpc_status: Option<Value>,
    /// Share of requests aborted (default 100).
    #[serde(default)]
    pub percentage: Option<VsPercent>,
    /// Anything else (`http2Error`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `networking.istio.io/v1` DestinationRule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    /// `networking.istio.io/v1`, `v1beta1` or `v1alpha3`.
    pub api_version: String,
    /// `DestinationRule`.
    pub kind: String,
    /// Name and namespace (a short host resolves in the namespace).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: DestinationRuleSpec,
}

/// What a DestinationRule applies to and how.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service.
    #[serde(default)]
    pub host: String,
    /// Service-wide policy.
    #[serde(default)]
    pub traffic_policy: Option<DrTrafficPolicy>,
    /// Named subsets of the service's endpoints.
    #[serde(default, deserialize_with = "nullable")]
    pub subsets: Vec<DrSubset>,
    /// Anything else (`exportTo`, `workloadSelector`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `trafficPolicy` (also a subset's).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrTrafficPolicy {
    /// Endpoint choice.
    #[serde(default)]
    pub load_balancer: Option<DrLoadBalancer>,
    /// Limits of connections and requests.
    #[serde(default)]
    pub connection_pool: Option<DrConnectionPool>,
    /// Ejection of failing endpoints.
    #[serde(default)]
    pub outlier_detection: Option<DrOutlierDetection>,
    /// Per-port overrides.
    #[serde(default, deserialize_with = "nullable")]
    pub port_level_settings: Vec<DrPortTrafficPolicy>,
    /// Anything else (`tls`, `tunnel`, `proxyProtocol`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// One `portLevelSettings` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrPortTrafficPolicy {
    /// The service port.
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// Endpoint choice.
    #[serde(default)]
    pub load_balancer: Option<DrLoadBalancer>,
    /// Limits.
    #[serde(default)]
    pub connection_pool: Option<DrConnectionPool>,
    /// Ejection.
    #[serde(default)]
    pub outlier_detection: Option<DrOutlierDetection>,
    /// Anything else (`tls`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrLoadBalancer {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, `PASSTHROUGH`, `UNSPECIFIED` (`LEAST_CONN`
    /// is the old name of `LEAST_REQUEST`).
    #[serde(default)]
    pub simple: Option<String>,
    /// Hash-based affinity.
    #[serde(default)]
    pub consistent_hash: Option<DrConsistentHash>,
    /// Anything else (`localityLbSetting`, `warmup`...): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `consistentHash`: exactly one key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrConsistentHash {
    /// Hash of this request header.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// Hash of this cookie (issued when absent and a ttl is set).
    #[serde(default)]
    pub http_cookie: Option<DrHttpCookie>,
    /// Hash of the client's address.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    /// Hash of this query parameter.
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// Anything else (`ringHash`, `maglev`, `minimumRingSize`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `httpCookie`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrHttpCookie {
    /// Cookie name.
    #[serde(default)]
    pub name: String,
    /// Cookie path.
    #[serde(default)]
    pub path: Option<String>,
    /// Lifetime of an issued cookie (Istio duration).
    #[serde(default)]
    pub ttl: Option<String>,
    /// Anything else (`attributes`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrConnectionPool {
    /// TCP-level limits.
    #[serde(default)]
    pub tcp: Option<DrTcpSettings>,
    /// HTTP-level limits.
    #[serde(default)]
    pub http: Option<DrHttpSettings>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrTcpSettings {
    /// Connections to the destination at once.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Connect timeout (Istio duration).
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Anything else (`tcpKeepalive`, `maxConnectionDuration`, `idleTimeout`): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrHttpSettings {
    /// Requests waiting for a connection.
    #[serde(default)]
    pub http1_max_pending_requests: Option<i64>,
    /// Requests in flight.
    #[serde(default)]
    pub http2_max_requests: Option<i64>,
    /// Requests per connection before it is closed.
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    /// Retries in flight.
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Idle time before an upstream connection closes (Istio duration).
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Anything else (`h2UpgradePolicy`, `useClientProtocol`...): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrOutlierDetection {
    /// Consecutive 5xx → ejection (default 5; 0 disables).
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    /// Consecutive gateway errors → ejection (default 0: off).
    #[serde(default)]
    pub consecutive_gateway_errors: Option<i64>,
    /// Sweep interval (default 10s).
    #[serde(default)]
    pub interval: Option<String>,
    /// Base ejection time (default 30s).
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once, in percent (default 10).
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    /// Anything else (`splitExternalLocalOriginErrors`, `minHealthPercent`...): unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}

/// `subsets[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrSubset {
    /// Name routes use.
    #[serde(default)]
    pub name: String,
    /// Labels an endpoint must all carry.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// Overrides of the service-wide policy.
    #[serde(default)]
    pub traffic_policy: Option<DrTrafficPolicy>,
    /// Anything else: unsupported.
    #[serde(flatten)]
    pub other: Unsupported,
}
