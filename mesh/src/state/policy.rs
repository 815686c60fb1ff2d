//! An L4 authorization policy: scope, action and rules → clauses → matches, as typed Rust.
//!
//! Evaluation lives in [`crate::authz`]; this is the data. The serde form is the local file's
//! (see [`super::LocalConfig`]): camelCase match fields, CIDR strings, `{exact: ...}` matches.

use amesh_proto::istio::security as proto;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::convert::{ip_from_octets, known, port_or_zero, required};
use super::error::{ConvertError, FieldError, Problem, ResourceKind};
use super::local::StringMatchForm;

/// Which workloads a policy applies to. In YAML: `Global`, `Namespace`, `WorkloadSelector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyScope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that name the policy in `authorization_policies`.
    WorkloadSelector,
}

/// What a matching policy does. In YAML: `Allow`, `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// One authorization policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    /// Only log what the policy would do; never change the decision.
    pub dry_run: bool,
    /// OR-ed; a policy without rules matches nothing.
    pub rules: Vec<Rule>,
}

/// Holds when all of its clauses hold (so a rule without clauses always holds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// Holds when any of its matches holds; Istio treats a clause without matches as holding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// Conditions on a connection: every non-empty field must hold; values of a field are OR-ed;
/// a `not_` field holds when none of its values match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    /// Source identity's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    /// Source identity without `spiffe://`: `<td>/ns/<ns>/sa/<sa>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "cidrs")]
    pub source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "cidrs")]
    pub not_source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "cidrs")]
    pub destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "cidrs")]
    pub not_destination_ips: Vec<IpNet>,
    /// The app's target port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

impl Match {
    /// No condition at all. Istio skips such a match (it matches nothing): istiod emits one
    /// only when every condition was dropped, and "no condition" must not widen an ALLOW.
    pub fn is_empty(&self) -> bool {
        *self == Match::default()
    }
}

/// A string condition. In YAML a one-key map: `{exact: x}`, `{prefix: x}`, `{suffix: x}` or
/// `{presence: {}}` (Istio's capitalised keys are accepted too).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "StringMatchForm", into = "StringMatchForm")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

/// A service account in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

impl Policy {
    /// The xDS resource name and the form workloads use in `authorization_policies`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Converts the xDS proto, checking every field.
    pub fn from_proto(p: proto::Authorization) -> Result<Self, ConvertError> {
        let name = format!("{}/{}", p.namespace, p.name);
        convert(p).map_err(|e| ConvertError::new(ResourceKind::Policy, &name, e))
    }
}

fn convert(p: proto::Authorization) -> Result<Policy, FieldError> {
    let scope = match known(p.scope).map_err(|e| FieldError::new("scope", e))? {
        proto::Scope::Global => PolicyScope::Global,
        proto::Scope::Namespace => PolicyScope::Namespace,
        proto::Scope::WorkloadSelector => PolicyScope::WorkloadSelector,
    };
    let action = match known(p.action).map_err(|e| FieldError::new("action", e))? {
        proto::Action::Allow => PolicyAction::Allow,
        proto::Action::Deny => PolicyAction::Deny,
    };
    let mut rules = Vec::with_capacity(p.rules.len());
    for (r, rule) in p.rules.iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (c, clause) in rule.clauses.iter().enumerate() {
            let matches = clause
                .matches
                .iter()
                .enumerate()
                .map(|(m, mt)| {
                    convert_match(mt)
                        .map_err(|e| e.within(format!("rules[{r}].clauses[{c}].matches[{m}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            clauses.push(Clause { matches });
        }
        rules.push(Rule { clauses });
    }
    Ok(Policy {
        name: required("name", p.name)?,
        namespace: required("namespace", p.namespace)?,
        scope,
        action,
        dry_run: p.dry_run,
        rules,
    })
}

fn convert_match(m: &proto::Match) -> Result<Match, FieldError> {
    Ok(Match {
        namespaces: strings("namespaces", &m.namespaces)?,
        not_namespaces: strings("not_namespaces", &m.not_namespaces)?,
        principals: strings("principals", &m.principals)?,
        not_principals: strings("not_principals", &m.not_principals)?,
        source_ips: nets("source_ips", &m.source_ips)?,
        not_source_ips: nets("not_source_ips", &m.not_source_ips)?,
        destination_ips: nets("destination_ips", &m.destination_ips)?,
        not_destination_ips: nets("not_destination_ips", &m.not_destination_ips)?,
        destination_ports: ports("destination_ports", &m.destination_ports)?,
        not_destination_ports: ports("not_destination_ports", &m.not_destination_ports)?,
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
    })
}

fn strings(field: &str, list: &[proto::StringMatch]) -> Result<Vec<StringMatch>, FieldError> {
    use proto::string_match::MatchType;
    list.iter()
        .enumerate()
        .map(|(i, s)| match &s.match_type {
            Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
            Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
            Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v.clone())),
            Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
            // Dropping it (as Istio does) would silently change what the policy means.
            None => Err(FieldError::new(
                format!("{field}[{i}]"),
                Problem::EmptyStringMatch,
            )),
        })
        .collect()
}

fn nets(field: &str, list: &[proto::Address]) -> Result<Vec<IpNet>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let at = |p| FieldError::new(format!("{field}[{i}]"), p);
            let ip = ip_from_octets(&a.address).map_err(at)?;
            let len = u8::try_from(a.length).ok();
            len.and_then(|l| IpNet::new(ip, l).ok())
                .ok_or_else(|| at(Problem::PrefixLength { ip, len: a.length }))
        })
        .collect()
}

fn ports(field: &str, list: &[u32]) -> Result<Vec<u16>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| port_or_zero(*p).map_err(|e| FieldError::new(format!("{field}[{i}]"), e)))
        .collect()
}

fn accounts(list: &[proto::ServiceAccountMatch]) -> Vec<ServiceAccountMatch> {
    list.iter()
        .map(|s| ServiceAccountMatch {
            namespace: s.namespace.clone(),
            service_account: s.service_account.clone(),
        })
        .collect()
}

/// Serde for CIDR lists: `10.0.0.0/8`, or a bare IP meaning a single address.
mod cidrs {
    use ipnet::IpNet;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::IpAddr;

    pub(super) fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| D::Error::custom(format!("{s:?} is not a CIDR or an IP")))
            })
            .collect()
    }
}
