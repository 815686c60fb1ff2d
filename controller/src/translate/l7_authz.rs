//! AuthorizationPolicy bound with `targetRefs` (or the older `targetRef`) →
//! `amesh.l7.v1.Authorization`, for the waypoints that enforce it. ztunnel never gets these
//! (`authz.rs` leaves them out); the waypoint evaluates them per HTTP request.
//!
//! - **Targets.** Kind `Gateway` (group `gateway.networking.k8s.io`) naming a waypoint: sent to
//!   that waypoint, applies to every request through it. Kind `Service` (group `""`/`core`):
//!   sent to the waypoint the service is bound to, applies to requests for that service. A
//!   target in another namespace (Istio allows only the policy's own), a Gateway that is no
//!   waypoint, a Service without a waypoint or another kind (`ServiceEntry`, `GatewayClass`)
//!   is a warning; the resource is still built (and rendered) so the operator sees it, but only
//!   waypoints named by a usable target receive it.
//! - **Action.** ALLOW, DENY, AUDIT as they are; CUSTOM (ext_authz) is not supported by the
//!   waypoint: skipped with a warning. `istio.io/dry-run: "true"` → `dry_run`.
//! - **Rules** keep Istio's strings (`*`, `prefix*`, `*suffix`, principals without
//!   `spiffe://`) for the waypoint to evaluate. `serviceAccounts` (`ns/sa`) become principals
//!   `<trust domain>/ns/<ns>/sa/<sa>` (and `notServiceAccounts` not-principals, which is exact:
//!   "none of these" over the union). A source setting both `principals` and `serviceAccounts`
//!   needs both to hold, which one principal list cannot say: in an ALLOW (or AUDIT) policy the
//!   rule is dropped (it allows less, never more), in a DENY policy the lists are merged (it
//!   denies more, never less); a warning says which.
//! - A policy failing validation (only possible from a source that does not validate on load)
//!   fails closed, as in `authz.rs`: ALLOW with no rules, DENY with one empty (match-all) rule.

use std::collections::BTreeMap;

use amesh_proto::amesh::l7::v1::TargetRef;
use amesh_proto::amesh::l7::v1::{
    authorization, Authorization, Condition, Operation, Rule, Source,
};

use super::{L7Resource, TranslateOptions};
use crate::manifests::security::{self, AuthorizationAction, PolicyTargetReference};
use crate::manifests::validate::{self, parse_service_account};
use crate::manifests::{AuthorizationPolicy, Manifests, ObjectKey};
use crate::model::{labels, Model};
use crate::warnings::Warnings;

/// The L7 policies of every AuthorizationPolicy with targets, sorted by `<ns>/<name>`.
/// `bindings` maps each service to the waypoint it is bound to.
pub(crate) fn l7_authorizations(
    m: &Manifests,
    model: &Model,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    opts: &TranslateOptions,
    warnings: &mut Warnings,
) -> Vec<L7Resource<Authorization>> {
    m.authorization_policies
        .iter()
        .filter(|(_, p)| p.spec.all_target_refs().next().is_some())
        .filter_map(|(key, policy)| convert(key, policy, model, bindings, opts, warnings))
        .collect()
}

fn convert(
    key: &ObjectKey,
    policy: &AuthorizationPolicy,
    model: &Model,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    opts: &TranslateOptions,
    warnings: &mut Warnings,
) -> Option<L7Resource<Authorization>> {
    let spec = &policy.spec;
    let what = format!("AuthorizationPolicy {key}");
    let action = match spec.action.unwrap_or(AuthorizationAction::Allow) {
        AuthorizationAction::Allow => authorization::Action::Allow,
        AuthorizationAction::Deny => authorization::Action::Deny,
        AuthorizationAction::Audit => authorization::Action::Audit,
        AuthorizationAction::Custom => {
            warnings.push(format!(
                "CUSTOM (ext_authz) is not supported by amesh's waypoint; policy {key} skipped"
            ));
            return None;
        }
    };

    let (targets, waypoints) = resolve_targets(
        key,
        &what,
        spec.all_target_refs(),
        model,
        bindings,
        warnings,
    );

    let rules = match validate::authorization_policy(spec) {
        Ok(()) => spec
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                convert_rule(
                    action,
                    rule,
                    &format!("{what} spec.rules[{i}]"),
                    opts,
                    warnings,
                )
            })
            .collect(),
        // The folder source rejects such objects on load; another source might not.
        Err(e) => {
            warnings.push(format!(
                "{what} is invalid ({e}); failing closed for the waypoint"
            ));
            match action {
                authorization::Action::Deny => vec![Rule::default()],
                _ => Vec::new(),
            }
        }
    };
    let dry_run = labels::annotations(&policy.metadata)
        .get(labels::DRY_RUN)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Some(L7Resource {
        name: key.to_string(),
        waypoints,
        resource: Authorization {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            action: action as i32,
            targets,
            rules,
            dry_run,
        },
    })
}

/// The targets of a waypoint policy (`what`, e.g. "AuthorizationPolicy ns/name") and the
/// waypoint Gateways that enforce it, sorted: a Gateway that is a waypoint, or the waypoint a
/// Service is bound to. Unusable targets are warnings (see the module's doc); Gateway and
/// Service targets are kept in `targets` even without a waypoint, so the resource still
/// shows them.
pub(crate) fn resolve_targets<'a>(
    key: &ObjectKey,
    what: &str,
    refs: impl Iterator<Item = &'a PolicyTargetReference>,
    model: &Model,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    warnings: &mut Warnings,
) -> (Vec<TargetRef>, Vec<ObjectKey>) {
    let mut targets = Vec::new();
    let mut waypoints = Vec::new();
    for (i, target) in refs.enumerate() {
        let at = format!("{what} target {i} ({} {})", target.kind, target.name);
        let ns = target.namespace.as_deref().unwrap_or(&key.namespace);
        if ns != key.namespace {
            warnings.push(format!(
                "{at}: a policy may only target objects of its own namespace {}; target ignored",
                key.namespace
            ));
            continue;
        }
        let target_key = ObjectKey::new(ns, &target.name);
        let group = target.group.as_str();
        let waypoint = match (group, target.kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway") => {
                if model.waypoints.get(&target_key).is_none() {
                    warnings.push(format!(
                        "{at}: Gateway {target_key} is not a waypoint (class istio-waypoint); \
                         amesh enforces L7 policy in waypoints only, the target is ignored"
                    ));
                    None
                } else {
                    Some(target_key.clone())
                }
            }
            ("" | "core", "Service") => {
                let bound = bindings.get(&target_key).cloned();
                if bound.is_none() {
                    warnings.push(format!(
                        "{at}: Service {target_key} uses no waypoint (or does not exist); the \
                         policy is not enforced for it"
                    ));
                }
                bound
            }
            (group, kind) => {
                warnings.push(format!(
                    "{at}: target kind {group}/{kind} is not supported by amesh (Gateway or \
                     Service only); target ignored"
                ));
                continue;
            }
        };
        targets.push(TargetRef {
            kind: target.kind.clone(),
            namespace: ns.to_owned(),
            name: target.name.clone(),
        });
        waypoints.extend(waypoint);
    }
    waypoints.sort();
    waypoints.dedup();
    (targets, waypoints)
}

fn convert_rule(
    action: authorization::Action,
    rule: &security::Rule,
    what: &str,
    opts: &TranslateOptions,
    warnings: &mut Warnings,
) -> Option<Rule> {
    let mut from = Vec::new();
    for (j, f) in rule.from.iter().enumerate() {
        let Some(s) = &f.source else { continue };
        let principal = |v: &String| {
            parse_service_account(v)
                .map(|(ns, sa)| format!("{}/ns/{ns}/sa/{sa}", opts.trust_domain))
        };
        let sa: Vec<String> = s.service_accounts.iter().filter_map(principal).collect();
        let not_sa: Vec<String> = s
            .not_service_accounts
            .iter()
            .filter_map(principal)
            .collect();
        let mut principals = s.principals.clone();
        if !sa.is_empty() && !principals.is_empty() {
            if action == authorization::Action::Deny {
                warnings.push(format!(
                    "{what}.from[{j}] sets both principals and serviceAccounts; the waypoint \
                     denies when either matches"
                ));
            } else {
                warnings.push(format!(
                    "{what}.from[{j}] sets both principals and serviceAccounts, which amesh's \
                     waypoint cannot require together; the rule is dropped"
                ));
                return None;
            }
        }
        principals.extend(sa);
        let mut not_principals = s.not_principals.clone();
        not_principals.extend(not_sa);
        from.push(Source {
            principals,
            not_principals,
            namespaces: s.namespaces.clone(),
            not_namespaces: s.not_namespaces.clone(),
            ip_blocks: s.ip_blocks.clone(),
            not_ip_blocks: s.not_ip_blocks.clone(),
            request_principals: s.request_principals.clone(),
            not_request_principals: s.not_request_principals.clone(),
            remote_ip_blocks: s.remote_ip_blocks.clone(),
            not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
        });
    }
    let to = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .map(|o| Operation {
            hosts: o.hosts.clone(),
            not_hosts: o.not_hosts.clone(),
            ports: o.ports.clone(),
            not_ports: o.not_ports.clone(),
            methods: o.methods.clone(),
            not_methods: o.not_methods.clone(),
            paths: o.paths.clone(),
            not_paths: o.not_paths.clone(),
        })
        .collect();
    let when = rule
        .when
        .iter()
        .map(|c| Condition {
            key: c.key.clone(),
            values: c.values.clone(),
            not_values: c.not_values.clone(),
        })
        .collect();
    Some(Rule { from, to, when })
}
