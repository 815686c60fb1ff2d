//! AuthorizationPolicy → `istio.security.Authorization`, the L4 part that ztunnel enforces,
//! following what Istio's control plane sends to its ztunnel.
//!
//! - **Which policies.** Policies with `targetRefs` (or the older `targetRef`) are bound to a
//!   waypoint or a service and enforced there, with HTTP attributes: none is sent to ztunnel.
//!   `AUDIT` and `CUSTOM` policies are not enforced by ztunnel either (skipped, with a warning).
//! - **Scope.** No selector: `NAMESPACE`, or `GLOBAL` in the root namespace. With a selector:
//!   `WORKLOAD_SELECTOR`, and each selected pod lists the policy in its
//!   `authorization_policies` (a selector policy in the root namespace selects pods in every
//!   namespace).
//! - **Rules.** Each Istio rule becomes one Rule whose clauses (AND-ed) are, in order: one for
//!   `to` (its operations OR-ed: `ports`, `notPorts`), one for `from` (its sources OR-ed:
//!   `principals`, `namespaces`, `serviceAccounts`, `ipBlocks` and their `not` forms), one per
//!   `when` condition on `source.ip`, `source.namespace`, `source.principal`, `destination.ip`
//!   or `destination.port` (`notValues` into the `not_` field). Principals and namespaces are
//!   written without `spiffe://`; `*` means "present", `prefix*` and `*suffix` match a prefix
//!   or suffix.
//! - **HTTP-only attributes** (`hosts`, `methods`, `paths` and their `not` forms,
//!   `requestPrincipals`, `remoteIpBlocks`, `when` keys other than the five above) cannot be
//!   checked on a TCP connection. ztunnel must never become *more permissive* because of them:
//!   - in an **ALLOW** policy, a rule using any of them is dropped whole (a warning says so).
//!     The policy is still sent, so a workload it selects allows only what its other rules
//!     allow — possibly nothing — rather than everything the HTTP condition would have
//!     narrowed;
//!   - in a **DENY** policy, those attributes are left out and the rest of the rule kept (an
//!     operation or source made only of them becomes a match-everything entry), so the rule
//!     denies at L4 whatever the request would have been — stricter, never looser.
//! - `dry_run` comes from the annotation `istio.io/dry-run: "true"`.
//!
//! Values are validated (ports are numbers, IP blocks parse) so that no malformed value can turn
//! into "any"; a policy that fails validation (only possible from a source that does not
//! validate on load) fails closed: as ALLOW it allows nothing, as DENY it denies everything.

use std::collections::BTreeMap;

use amesh_proto::istio::security::{
    string_match::MatchType, Action, Address, Authorization, Clause, Match, Rule, Scope,
    ServiceAccountMatch, StringMatch,
};

use super::TranslateOptions;
use crate::manifests::security::{AuthorizationAction, Operation, Source};
use crate::manifests::validate::{
    self, parse_ip_block, parse_port, parse_service_account, L4_CONDITION_KEYS,
};
use crate::manifests::{AuthorizationPolicy, Manifests, ObjectKey};
use crate::model::labels;
use crate::warnings::Warnings;

/// A translated policy, with what is needed to bind it to workloads.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslatedPolicy {
    /// xDS resource name, `<ns>/<name>`.
    pub resource_name: String,
    /// The policy's namespace.
    pub namespace: String,
    /// Pod selector of a `WORKLOAD_SELECTOR` policy.
    pub selector: Option<BTreeMap<String, String>>,
    /// The resource.
    pub authorization: Authorization,
}

impl TranslatedPolicy {
    /// Whether this selector policy applies to a pod in `namespace` with `pod_labels`.
    pub fn selects(
        &self,
        root_namespace: &str,
        namespace: &str,
        pod_labels: &BTreeMap<String, String>,
    ) -> bool {
        let Some(selector) = &self.selector else {
            return false;
        };
        (self.namespace == namespace || self.namespace == root_namespace)
            && labels::selects(selector, pod_labels)
    }
}

/// Translates every AuthorizationPolicy ztunnel must enforce.
pub fn authorization_policies(
    m: &Manifests,
    opts: &TranslateOptions,
    warnings: &mut Warnings,
) -> Vec<TranslatedPolicy> {
    m.authorization_policies
        .iter()
        .filter_map(|(key, policy)| convert(key, policy, opts, warnings))
        .collect()
}

fn convert(
    key: &ObjectKey,
    policy: &AuthorizationPolicy,
    opts: &TranslateOptions,
    warnings: &mut Warnings,
) -> Option<TranslatedPolicy> {
    let spec = &policy.spec;
    if spec.all_target_refs().next().is_some() {
        tracing::debug!(policy = %key, "policy has targetRefs: enforced by its waypoint, not ztunnel");
        return None;
    }
    let action = match spec.action.unwrap_or(AuthorizationAction::Allow) {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        other => {
            let name = if other == AuthorizationAction::Audit {
                "AUDIT"
            } else {
                "CUSTOM"
            };
            warnings.push(format!(
                "AuthorizationPolicy {key}: action {name} is not enforced by ztunnel; policy skipped (bind it to a waypoint with targetRefs)"
            ));
            return None;
        }
    };
    let selector = spec.selector.as_ref().map(|s| s.match_labels.clone());
    let scope = match (&selector, key.namespace == opts.root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    };
    let rules = match validate::authorization_policy(spec) {
        Ok(()) => spec
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let what = format!(
                    "AuthorizationPolicy {key}: {} rule spec.rules[{i}]",
                    action.as_str_name()
                );
                convert_rule(action, rule, &what, warnings)
            })
            .collect(),
        // The folder source never gets here (it rejects such objects); another source might.
        // Fail closed: an ALLOW policy allows nothing, a DENY policy denies everything.
        Err(e) => {
            let closed = match action {
                Action::Allow => "allows nothing",
                Action::Deny => "denies everything",
            };
            warnings.push(format!(
                "AuthorizationPolicy {key} is invalid ({e}); failing closed, it {closed}"
            ));
            match action {
                Action::Allow => Vec::new(),
                Action::Deny => vec![Rule::default()],
            }
        }
    };
    let dry_run = labels::annotations(&policy.metadata)
        .get(labels::DRY_RUN)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Some(TranslatedPolicy {
        resource_name: key.to_string(),
        namespace: key.namespace.clone(),
        selector,
        authorization: Authorization {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            scope: scope as i32,
            action: action as i32,
            rules,
            dry_run,
            extensions: Vec::new(),
        },
    })
}

/// One Istio rule → one Rule, or `None` when an ALLOW rule needs HTTP attributes.
fn convert_rule(
    action: Action,
    rule: &crate::manifests::security::Rule,
    what: &str,
    warnings: &mut Warnings,
) -> Option<Rule> {
    let mut l7: Vec<&str> = Vec::new();
    let operations: Vec<&Operation> = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .collect();
    let sources: Vec<&Source> = rule.from.iter().filter_map(|f| f.source.as_ref()).collect();
    for op in &operations {
        l7.extend(operation_l7_fields(op));
    }
    for src in &sources {
        l7.extend(source_l7_fields(src));
    }
    for cond in &rule.when {
        if !L4_CONDITION_KEYS.contains(&cond.key.as_str()) {
            l7.push(cond.key.as_str());
        }
    }
    if !l7.is_empty() {
        l7.sort_unstable();
        l7.dedup();
        let fields = l7.join(", ");
        if action == Action::Allow {
            warnings.push(format!(
                "{what} uses HTTP attributes ztunnel cannot check ({fields}): the rule is dropped and allows nothing at L4; bind the policy to a waypoint with targetRefs to enforce it"
            ));
            return None;
        }
        warnings.push(format!(
            "{what} uses HTTP attributes ztunnel cannot check ({fields}): they are ignored and the rule denies at L4 whatever the request"
        ));
    }

    let mut clauses = Vec::new();
    if !operations.is_empty() {
        let matches = operations
            .iter()
            .map(|op| Match {
                destination_ports: ports(&op.ports),
                not_destination_ports: ports(&op.not_ports),
                ..Match::default()
            })
            .collect();
        clauses.push(Clause { matches });
    }
    if !sources.is_empty() {
        let matches = sources
            .iter()
            .map(|s| Match {
                namespaces: string_matches(&s.namespaces),
                not_namespaces: string_matches(&s.not_namespaces),
                principals: string_matches(&s.principals),
                not_principals: string_matches(&s.not_principals),
                source_ips: ip_blocks(&s.ip_blocks),
                not_source_ips: ip_blocks(&s.not_ip_blocks),
                service_accounts: service_accounts(&s.service_accounts),
                not_service_accounts: service_accounts(&s.not_service_accounts),
                ..Match::default()
            })
            .collect();
        clauses.push(Clause { matches });
    }
    for cond in &rule.when {
        let (values, not_values) = (&cond.values, &cond.not_values);
        let m = match cond.key.as_str() {
            "source.ip" => Match {
                source_ips: ip_blocks(values),
                not_source_ips: ip_blocks(not_values),
                ..Match::default()
            },
            "source.namespace" => Match {
                namespaces: string_matches(values),
                not_namespaces: string_matches(not_values),
                ..Match::default()
            },
            "source.principal" => Match {
                principals: string_matches(values),
                not_principals: string_matches(not_values),
                ..Match::default()
            },
            "destination.ip" => Match {
                destination_ips: ip_blocks(values),
                not_destination_ips: ip_blocks(not_values),
                ..Match::default()
            },
            "destination.port" => Match {
                destination_ports: ports(values),
                not_destination_ports: ports(not_values),
                ..Match::default()
            },
            // Only reachable for DENY (ALLOW returned above): an empty match always holds.
            _ => Match::default(),
        };
        clauses.push(Clause { matches: vec![m] });
    }
    Some(Rule { clauses })
}

fn operation_l7_fields(op: &Operation) -> Vec<&'static str> {
    let fields = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, _)| n)
        .collect()
}

fn source_l7_fields(src: &Source) -> Vec<&'static str> {
    let fields = [
        ("requestPrincipals", &src.request_principals),
        ("notRequestPrincipals", &src.not_request_principals),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ];
    fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, _)| n)
        .collect()
}

/// Istio's string syntax: `*` present, `*suffix`, `prefix*`, else exact.
pub fn string_match(value: &str) -> StringMatch {
    let match_type = if value == "*" {
        MatchType::Presence(())
    } else if let Some(suffix) = value.strip_prefix('*') {
        MatchType::Suffix(suffix.to_owned())
    } else if let Some(prefix) = value.strip_suffix('*') {
        MatchType::Prefix(prefix.to_owned())
    } else {
        MatchType::Exact(value.to_owned())
    };
    StringMatch {
        match_type: Some(match_type),
    }
}

fn string_matches(values: &[String]) -> Vec<StringMatch> {
    values.iter().map(|v| string_match(v)).collect()
}

// The policy was validated (`convert`), so every value parses.
fn ports(values: &[String]) -> Vec<u32> {
    values
        .iter()
        .filter_map(|v| parse_port(v))
        .map(u32::from)
        .collect()
}

fn ip_blocks(values: &[String]) -> Vec<Address> {
    values
        .iter()
        .filter_map(|v| parse_ip_block(v))
        .map(|net| Address {
            address: match net.addr() {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            },
            length: u32::from(net.prefix_len()),
        })
        .collect()
}

fn service_accounts(values: &[String]) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .filter_map(|v| parse_service_account(v))
        .map(|(ns, sa)| ServiceAccountMatch {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        })
        .collect()
}
