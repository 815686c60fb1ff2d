//! HTTPLocalRateLimitPolicy (`policy.amesh.io/v1alpha1`) → `amesh.l7.v1.RateLimit`, for the
//! waypoints its targets name (the same targeting rules as AuthorizationPolicy, `l7_authz.rs`).
//! `total` and `identity` become the two rates; each override's ServiceAccounts become client
//! principals `<trust domain>/ns/<ns>/sa/<name>` (namespace: the policy's when unset), the
//! identities a waypoint sees from the client's mTLS certificate. A policy failing validation
//! (only from a source that does not validate on load) is skipped with a warning.

use std::collections::BTreeMap;

use amesh_proto::amesh::l7::v1::{RateLimit, RateLimitOverride};

use super::l7_authz::resolve_targets;
use super::{L7Resource, TranslateOptions};
use crate::manifests::{ratelimit, Manifests, ObjectKey};
use crate::model::Model;
use crate::warnings::Warnings;

/// The rate limits of every HTTPLocalRateLimitPolicy, sorted by `<ns>/<name>`.
pub(crate) fn rate_limits(
    m: &Manifests,
    model: &Model,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    opts: &TranslateOptions,
    warnings: &mut Warnings,
) -> Vec<L7Resource<RateLimit>> {
    let mut out = Vec::new();
    for (key, policy) in &m.rate_limit_policies {
        let spec = &policy.spec;
        let what = format!("HTTPLocalRateLimitPolicy {key}");
        if let Err(e) = ratelimit::validate(spec) {
            warnings.push(format!("{what} is invalid ({e}); skipped"));
            continue;
        }
        let (targets, waypoints) = resolve_targets(
            key,
            &what,
            spec.all_target_refs(),
            model,
            bindings,
            warnings,
        );
        let rps = |l: &Option<ratelimit::Limit>| l.as_ref().map_or(0, |l| l.requests_per_second);
        let overrides = spec
            .overrides
            .iter()
            .map(|o| RateLimitOverride {
                rps: o.requests_per_second,
                principals: o
                    .client_refs
                    .iter()
                    .map(|c| {
                        let ns = c.namespace.as_deref().unwrap_or(&key.namespace);
                        format!("{}/ns/{ns}/sa/{}", opts.trust_domain, c.name)
                    })
                    .collect(),
            })
            .collect();
        out.push(L7Resource {
            name: key.to_string(),
            waypoints,
            resource: RateLimit {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                targets,
                total_rps: rps(&spec.total),
                identity_rps: rps(&spec.identity),
                overrides,
            },
        });
    }
    out
}
