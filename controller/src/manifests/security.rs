//! `security.istio.io` kinds (`v1`, also served as `v1beta1`): AuthorizationPolicy,
//! PeerAuthentication, RequestAuthentication.
//!
//! Specs reject unknown fields, as Istio's CRD schemas do: a misspelt `notPrincipal` must fail
//! loudly instead of silently widening a policy.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::de::{nullable, PortKey};

/// Label selector of the workloads a policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a pod must all carry.
    #[serde(default, deserialize_with = "nullable")]
    pub match_labels: BTreeMap<String, String>,
}

/// A policy's attachment to a Gateway (waypoint) or Service instead of a workload selector.
// Its schema (feature `server`) is part of amesh's own CRDs (crate::crds): the doc comments
// here are the CRD's field descriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "server", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (`gateway.networking.k8s.io`, `""` for core).
    #[serde(default)]
    pub group: String,
    /// Kind of the target (`Gateway`, `Service`, `ServiceEntry`, `GatewayClass`).
    pub kind: String,
    /// Name of the target.
    #[cfg_attr(feature = "server", schemars(length(min = 1)))]
    pub name: String,
    /// Namespace of the target; only the policy's own namespace is allowed by Istio.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `security.istio.io/v1` AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// `security.istio.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `AuthorizationPolicy`.
    pub kind: String,
    /// Name, namespace, labels, annotations (`istio.io/dry-run`).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: AuthorizationPolicySpec,
}

/// What an AuthorizationPolicy does and to whom.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to; absent means the whole namespace (or mesh, in the root
    /// namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single form of `target_refs`.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Binds the policy to waypoints or services (enforced by the waypoint, not ztunnel).
    #[serde(default, deserialize_with = "nullable")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules, OR-ed. An ALLOW policy without rules allows nothing.
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<Rule>,
    /// What a match does; absent means ALLOW.
    #[serde(default)]
    pub action: Option<AuthorizationAction>,
    /// External authorizer for CUSTOM.
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicySpec {
    /// All target references, the deprecated singular one included.
    pub fn all_target_refs(&self) -> impl Iterator<Item = &PolicyTargetReference> {
        self.target_ref.iter().chain(&self.target_refs)
    }
}

/// AuthorizationPolicy actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow matching requests; deny others once any ALLOW policy applies.
    Allow,
    /// Deny matching requests.
    Deny,
    /// Audit only (needs an audit provider; not enforced by ztunnel).
    Audit,
    /// Delegate to an external authorizer (waypoint only).
    Custom,
}

/// External authorizer of a CUSTOM policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Name of the provider in the mesh config.
    pub name: String,
}

/// One rule: all of its `from`, `to` and `when` must hold (each of them OR-ed inside).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources, OR-ed.
    #[serde(default, deserialize_with = "nullable")]
    pub from: Vec<RuleFrom>,
    /// Operations, OR-ed.
    #[serde(default, deserialize_with = "nullable")]
    pub to: Vec<RuleTo>,
    /// Extra conditions, AND-ed.
    #[serde(default, deserialize_with = "nullable")]
    pub when: Vec<Condition>,
}

/// Wrapper of a [`Source`], as in Istio's API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source; required.
    #[serde(default)]
    pub source: Option<Source>,
}

/// Who the request comes from. Every field set must hold; values of a field are OR-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, deserialize_with = "nullable")]
    pub principals: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_principals: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub request_principals: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_request_principals: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub namespaces: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_namespaces: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub service_accounts: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// Wrapper of an [`Operation`], as in Istio's API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation; required.
    #[serde(default)]
    pub operation: Option<Operation>,
}

/// What the request does. Every field set must hold; values of a field are OR-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings in Istio's API (validated as numbers when loaded).
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_ports: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub methods: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_methods: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_paths: Vec<String>,
}

/// A `when` condition on one attribute (`source.ip`, `request.headers[x]`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute name.
    pub key: String,
    /// The attribute is one of these.
    #[serde(default, deserialize_with = "nullable")]
    pub values: Vec<String>,
    /// The attribute is none of these.
    #[serde(default, deserialize_with = "nullable")]
    pub not_values: Vec<String>,
}

/// `security.istio.io/v1` PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// `security.istio.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `PeerAuthentication`.
    pub kind: String,
    /// Name, namespace, creation time (the oldest of two conflicting policies wins).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PeerAuthenticationSpec,
}

/// Which mutual TLS mode applies to which workloads and ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads the policy applies to; absent means the namespace (or mesh, in the root
    /// namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Mode for every port not listed in `port_level_mtls`.
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Per target (container) port modes; Istio allows them only with a selector.
    #[serde(default, deserialize_with = "nullable")]
    pub port_level_mtls: BTreeMap<PortKey, MutualTls>,
}

/// A mutual TLS setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The mode; absent means UNSET (inherit).
    #[serde(default)]
    pub mode: Option<MtlsMode>,
}

impl MutualTls {
    /// The mode, UNSET when absent.
    pub fn mode(&self) -> MtlsMode {
        self.mode.unwrap_or(MtlsMode::Unset)
    }
}

/// Mutual TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh; PERMISSIVE at the top).
    Unset,
    /// Plaintext only (ambient treats it like PERMISSIVE: plaintext is accepted).
    Disable,
    /// mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}

/// `security.istio.io/v1` RequestAuthentication (JWT validation, enforced by waypoints).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthentication {
    /// `security.istio.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `RequestAuthentication`.
    pub kind: String,
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: RequestAuthenticationSpec,
}

/// Which JWTs are accepted and where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads the policy applies to.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single form of `target_refs`.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Waypoints or services the policy is bound to.
    #[serde(default, deserialize_with = "nullable")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Accepted issuers.
    #[serde(default, deserialize_with = "nullable")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted JWT issuer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any.
    #[serde(default, deserialize_with = "nullable")]
    pub audiences: Vec<String>,
    /// Where to fetch the JWKS.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Inline JWKS (JSON).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers carrying the token (default `Authorization: Bearer`).
    #[serde(default, deserialize_with = "nullable")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters carrying the token.
    #[serde(default, deserialize_with = "nullable")]
    pub from_params: Vec<String>,
    /// Cookies carrying the token.
    #[serde(default, deserialize_with = "nullable")]
    pub from_cookies: Vec<String>,
    /// Header to receive the base64 payload of a valid token.
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the forwarded request.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default, deserialize_with = "nullable")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout (duration string, e.g. `5s`).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A header that carries a JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token (e.g. `Bearer `).
    #[serde(default)]
    pub prefix: Option<String>,
}

/// A claim copied into a header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header name.
    pub header: String,
    /// Claim name.
    pub claim: String,
}
