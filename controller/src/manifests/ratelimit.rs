//! `policy.amesh.io/v1alpha1` HTTPLocalRateLimitPolicy: amesh's local rate limit for waypoints,
//! shaped like Linkerd's `policy.linkerd.io` kind of the same name (`total`, `identity`,
//! `overrides` with `clientRefs` to ServiceAccounts) but bound with Gateway API `targetRef(s)`
//! to a waypoint Gateway or a Service, like Istio's waypoint policies.
//!
//! The spec rejects unknown fields: a misspelt `requestPerSecond` must fail loudly instead of
//! silently removing a limit.
//!
//! With the `server` feature the spec types also derive their JSON schema and
//! [`HttpLocalRateLimitPolicyResource`], the kind as kube-rs knows it, whose CRD
//! ([`crate::crds`]) is what `deploy/base/policy-crds.yaml` holds: the CRD is generated from
//! these types, so the schema and the parser cannot drift apart.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::de::nullable;
use super::security::PolicyTargetReference;
use super::validate::FieldError;

/// API group of amesh's own policy kinds.
pub const GROUP: &str = "policy.amesh.io";

/// `policy.amesh.io/v1alpha1` HTTPLocalRateLimitPolicy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpLocalRateLimitPolicy {
    /// `policy.amesh.io/v1alpha1`.
    pub api_version: String,
    /// `HTTPLocalRateLimitPolicy`.
    pub kind: String,
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The limits.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: HttpLocalRateLimitPolicySpec,
}

/// What is limited, and how much.
// Two printcolumns each say `type_ = "integer"`, which clippy takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(
    feature = "server",
    derive(serde::Serialize, schemars::JsonSchema, kube::CustomResource)
)]
#[cfg_attr(
    feature = "server",
    kube(
        group = "policy.amesh.io",
        version = "v1alpha1",
        kind = "HTTPLocalRateLimitPolicy",
        root = "HttpLocalRateLimitPolicyResource",
        plural = "httplocalratelimitpolicies",
        namespaced,
        status = "crate::crds::OpenStatus",
        category = "amesh",
        label("app.kubernetes.io/part-of", "amesh"),
        doc = "The local rate limit a waypoint enforces (policy.amesh.io/v1alpha1).",
        printcolumn(
            name = "Total_RPS",
            type_ = "integer",
            json_path = ".spec.total.requestsPerSecond"
        ),
        printcolumn(
            name = "Identity_RPS",
            type_ = "integer",
            json_path = ".spec.identity.requestsPerSecond"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpLocalRateLimitPolicySpec {
    /// The waypoint Gateway (all its requests) or Service (requests to it) limited; Linkerd's
    /// single form.
    #[serde(default)]
    #[cfg_attr(
        feature = "server",
        schemars(transform = crate::crds::gateway_or_service)
    )]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several targets, as Istio's waypoint policies name them.
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(
        feature = "server",
        schemars(transform = crate::crds::gateway_or_service)
    )]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Requests per second for all clients together.
    #[serde(default)]
    pub total: Option<Limit>,
    /// Requests per second for each client identity.
    #[serde(default)]
    pub identity: Option<Limit>,
    /// Per-client limits replacing `identity` for the clients they name.
    #[serde(default, deserialize_with = "nullable")]
    pub overrides: Vec<Override>,
}

impl HttpLocalRateLimitPolicySpec {
    /// All target references, the singular one first.
    pub fn all_target_refs(&self) -> impl Iterator<Item = &PolicyTargetReference> {
        self.target_ref.iter().chain(&self.target_refs)
    }
}

/// A rate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "server", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    /// Requests per second; the burst is one second's worth.
    #[cfg_attr(feature = "server", schemars(range(min = 1, max = u32::MAX)))]
    pub requests_per_second: u32,
}

/// A limit for some clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "server", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Override {
    /// Requests per second for each of the clients named.
    #[cfg_attr(feature = "server", schemars(range(min = 1, max = u32::MAX)))]
    pub requests_per_second: u32,
    /// The clients: ServiceAccounts.
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(feature = "server", schemars(length(min = 1)))]
    pub client_refs: Vec<ClientRef>,
}

/// A client, by its ServiceAccount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "server", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientRef {
    /// `""` or `core`.
    #[serde(default)]
    pub group: String,
    /// `ServiceAccount`.
    #[cfg_attr(feature = "server", schemars(extend("enum" = ["ServiceAccount"])))]
    pub kind: String,
    /// The ServiceAccount's name.
    #[cfg_attr(feature = "server", schemars(length(min = 1)))]
    pub name: String,
    /// Its namespace; absent → the policy's.
    #[serde(default)]
    pub namespace: Option<String>,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Validates a spec as a CRD schema and Linkerd's admission webhook would: a target, a
/// positive rate, no per-client rate above the total, clients that are ServiceAccounts.
pub fn validate(spec: &HttpLocalRateLimitPolicySpec) -> Result<(), FieldError> {
    if spec.all_target_refs().next().is_none() {
        return Err(err(
            "spec.targetRef",
            "a target is required (targetRef or targetRefs: a waypoint Gateway or a Service)",
        ));
    }
    let total = spec.total.as_ref().map(|l| l.requests_per_second);
    let check = |field: String, rps: u32| -> Result<(), FieldError> {
        if rps == 0 {
            return Err(err(field, "must be at least 1"));
        }
        if let Some(total) = total.filter(|t| rps > *t) {
            return Err(err(
                field,
                format!("{rps} is more than spec.total.requestsPerSecond ({total})"),
            ));
        }
        Ok(())
    };
    if let Some(t) = total {
        if t == 0 {
            return Err(err("spec.total.requestsPerSecond", "must be at least 1"));
        }
    }
    if let Some(i) = &spec.identity {
        check(
            "spec.identity.requestsPerSecond".into(),
            i.requests_per_second,
        )?;
    }
    for (i, o) in spec.overrides.iter().enumerate() {
        check(
            format!("spec.overrides[{i}].requestsPerSecond"),
            o.requests_per_second,
        )?;
        if o.client_refs.is_empty() {
            return Err(err(
                format!("spec.overrides[{i}].clientRefs"),
                "must name at least one client",
            ));
        }
        for (j, c) in o.client_refs.iter().enumerate() {
            let at = format!("spec.overrides[{i}].clientRefs[{j}]");
            if !matches!(c.group.as_str(), "" | "core") || c.kind != "ServiceAccount" {
                return Err(err(
                    format!("{at}.kind"),
                    format!(
                        "{:?}/{:?}: only ServiceAccount clients are supported",
                        c.group, c.kind
                    ),
                ));
            }
            if c.name.is_empty() {
                return Err(err(format!("{at}.name"), "must not be empty"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> HttpLocalRateLimitPolicySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn linkerd_shape_parses_and_validates() {
        let s = spec(
            "targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}\n\
             total: {requestsPerSecond: 100}\n\
             identity: {requestsPerSecond: 20}\n\
             overrides:\n\
             - requestsPerSecond: 50\n  \
               clientRefs: [{kind: ServiceAccount, name: batch, namespace: jobs}]\n",
        );
        assert_eq!(s.total.as_ref().unwrap().requests_per_second, 100);
        assert_eq!(
            s.overrides[0].client_refs[0].namespace.as_deref(),
            Some("jobs")
        );
        validate(&s).unwrap();
    }

    #[test]
    fn bad_specs_name_the_field() {
        let field = |yaml: &str| validate(&spec(yaml)).unwrap_err().field;
        assert_eq!(field("total: {requestsPerSecond: 1}"), "spec.targetRef");
        let target = "targetRefs: [{kind: Service, name: api}]\n";
        assert_eq!(
            field(&format!(
                "{target}total: {{requestsPerSecond: 5}}\nidentity: {{requestsPerSecond: 6}}"
            )),
            "spec.identity.requestsPerSecond"
        );
        assert_eq!(
            field(&format!("{target}total: {{requestsPerSecond: 0}}")),
            "spec.total.requestsPerSecond"
        );
        assert_eq!(
            field(&format!(
                "{target}overrides: [{{requestsPerSecond: 1, clientRefs: [{{kind: Pod, name: x}}]}}]"
            )),
            "spec.overrides[0].clientRefs[0].kind"
        );
        assert!(serde_yaml::from_str::<HttpLocalRateLimitPolicySpec>(
            "total: {requestPerSecond: 1}"
        )
        .is_err());
    }
}
