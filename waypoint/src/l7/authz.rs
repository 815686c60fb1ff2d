//! L7 authorization with Istio's semantics, evaluated per request at the waypoint.
//!
//! Policies that apply to a request: those whose targetRefs name this waypoint's Gateway,
//! and those naming the destination service. Any matching DENY denies; otherwise, if ALLOW
//! policies apply, one must match; AUDIT policies never change the decision. Rules are OR-ed;
//! `from`, `to` and `when` are AND-ed; sources (and operations) are OR-ed; every field set in
//! a source must hold; a field's values are OR-ed; a `not_` field holds when none match.
//! Strings take Istio's forms: `*` (any), `prefix*`, `*suffix`, or exact.
//!
//! A condition the waypoint cannot evaluate fails closed: it matches in a DENY policy and does
//! not in an ALLOW policy.

use std::net::IpAddr;

use amesh_proto::amesh::l7::v1 as pb;
use http::HeaderMap;
use ipnet::IpNet;

use super::jwt::Verified;
use super::ConvertError;

/// Action of an L7 policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

/// What a policy is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Gateway: every request through that waypoint.
    Gateway { namespace: String, name: String },
    /// A Service: requests to it.
    Service { namespace: String, name: String },
}

/// One converted policy.
#[derive(Debug)]
pub struct L7Policy {
    /// `<namespace>/<name>`.
    pub key: String,
    pub action: Action,
    pub targets: Vec<Target>,
    rules: Vec<Rule>,
    pub dry_run: bool,
}

#[derive(Debug, Default)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

#[derive(Debug, Default)]
struct Source {
    principals: Strings,
    not_principals: Strings,
    namespaces: Strings,
    not_namespaces: Strings,
    ip_blocks: Vec<IpNet>,
    not_ip_blocks: Vec<IpNet>,
    request_principals: Strings,
    not_request_principals: Strings,
}

#[derive(Debug, Default)]
struct Operation {
    hosts: Strings,
    not_hosts: Strings,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Strings,
    not_methods: Strings,
    paths: Strings,
    not_paths: Strings,
}

#[derive(Debug)]
struct Condition {
    key: ConditionKey,
    values: Strings,
    not_values: Strings,
}

#[derive(Debug)]
enum ConditionKey {
    Header(http::HeaderName),
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    RequestPrincipal,
    /// `request.auth.audiences`: the token's `aud` (any of a list).
    RequestAudiences,
    /// `request.auth.presenter`: the token's `azp`.
    RequestPresenter,
    /// `request.auth.claims[a][b]...`: a claim, nested objects by name; a list claim holds
    /// when one of its elements does.
    RequestClaim(Vec<String>),
    /// Known to Istio, not evaluated here (`connection.sni`, `destination.ip`, `experimental.*`).
    Unsupported,
}

/// Istio's string patterns.
#[derive(Debug, Default)]
struct Strings(Vec<Pattern>);

#[derive(Debug)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

/// A request as policy sees it. Everything here is proven (identity from mTLS, address from the
/// socket) or is the request itself.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// The client's SPIFFE ID without `spiffe://`.
    pub principal: &'a str,
    pub namespace: &'a str,
    pub source_ip: IpAddr,
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub host: &'a str,
    /// The service port addressed.
    pub port: u16,
    pub headers: &'a HeaderMap,
    /// The request's verified JWT (RequestAuthentication), if it carried one.
    pub auth: Option<&'a Verified>,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, by this policy (`None`: no ALLOW policy matched).
    Deny(Option<String>),
}

impl L7Policy {
    pub fn from_proto(p: pb::Authorization) -> Result<Self, ConvertError> {
        let key = format!("{}/{}", p.namespace, p.name);
        let action = match pb::authorization::Action::try_from(p.action) {
            Ok(pb::authorization::Action::Allow) => Action::Allow,
            Ok(pb::authorization::Action::Deny) => Action::Deny,
            Ok(pb::authorization::Action::Audit) => Action::Audit,
            Err(_) => {
                return Err(ConvertError::new(
                    &key,
                    "action",
                    format!("unknown action {}", p.action),
                ))
            }
        };
        let targets = targets(&key, &p.namespace, p.targets)?;
        let mut rules = Vec::new();
        for (i, r) in p.rules.into_iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            let from = r
                .from
                .into_iter()
                .map(|s| {
                    Ok(Source {
                        principals: strings(s.principals),
                        not_principals: strings(s.not_principals),
                        namespaces: strings(s.namespaces),
                        not_namespaces: strings(s.not_namespaces),
                        ip_blocks: cidrs(s.ip_blocks.into_iter().chain(s.remote_ip_blocks))
                            .map_err(|e| ConvertError::new(&key, at("from.ipBlocks"), e))?,
                        not_ip_blocks: cidrs(
                            s.not_ip_blocks.into_iter().chain(s.not_remote_ip_blocks),
                        )
                        .map_err(|e| ConvertError::new(&key, at("from.notIpBlocks"), e))?,
                        request_principals: strings(s.request_principals),
                        not_request_principals: strings(s.not_request_principals),
                    })
                })
                .collect::<Result<_, ConvertError>>()?;
            let to =
                r.to.into_iter()
                    .map(|o| {
                        Ok(Operation {
                            hosts: strings(
                                o.hosts
                                    .into_iter()
                                    .map(|h| h.to_ascii_lowercase())
                                    .collect(),
                            ),
                            not_hosts: strings(
                                o.not_hosts
                                    .into_iter()
                                    .map(|h| h.to_ascii_lowercase())
                                    .collect(),
                            ),
                            ports: ports(o.ports)
                                .map_err(|e| ConvertError::new(&key, at("to.ports"), e))?,
                            not_ports: ports(o.not_ports)
                                .map_err(|e| ConvertError::new(&key, at("to.notPorts"), e))?,
                            methods: strings(o.methods),
                            not_methods: strings(o.not_methods),
                            paths: strings(o.paths),
                            not_paths: strings(o.not_paths),
                        })
                    })
                    .collect::<Result<_, ConvertError>>()?;
            let when = r
                .when
                .into_iter()
                .map(|c| {
                    Ok(Condition {
                        key: condition_key(&c.key)
                            .map_err(|e| ConvertError::new(&key, at("when.key"), e))?,
                        values: strings(c.values),
                        not_values: strings(c.not_values),
                    })
                })
                .collect::<Result<_, ConvertError>>()?;
            rules.push(Rule { from, to, when });
        }
        Ok(L7Policy {
            key,
            action,
            targets,
            rules,
            dry_run: p.dry_run,
        })
    }

    /// Whether one of the policy's rules holds for `req`.
    pub fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        let fail_closed = self.action == Action::Deny;
        self.rules.iter().any(|r| r.matches(req, fail_closed))
    }
}

/// The converted targets of a policy in `namespace` (a target without a namespace is in the
/// policy's own).
pub(crate) fn targets(
    key: &str,
    namespace: &str,
    refs: Vec<pb::TargetRef>,
) -> Result<Vec<Target>, ConvertError> {
    let mut targets = Vec::with_capacity(refs.len());
    for (i, t) in refs.into_iter().enumerate() {
        let namespace = if t.namespace.is_empty() {
            namespace.to_owned()
        } else {
            t.namespace
        };
        targets.push(match t.kind.as_str() {
            "Gateway" => Target::Gateway {
                namespace,
                name: t.name,
            },
            "Service" => Target::Service {
                namespace,
                name: t.name,
            },
            other => {
                return Err(ConvertError::new(
                    key,
                    format!("targets[{i}].kind"),
                    format!("{other:?} is not Gateway or Service"),
                ))
            }
        });
    }
    Ok(targets)
}

/// Decides `req` under `policies` (those that apply to it).
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p L7Policy>,
    req: &RequestAttrs<'_>,
) -> Decision {
    let mut allow_seen = false;
    let mut allowed = false;
    for p in policies {
        match p.action {
            Action::Audit => {
                if p.matches(req) {
                    tracing::info!(policy = %p.key, principal = req.principal, path = req.path, "AUDIT policy matched");
                }
            }
            Action::Deny => {
                if p.matches(req) {
                    if p.dry_run {
                        tracing::info!(policy = %p.key, "dry-run DENY policy would deny");
                    } else {
                        return Decision::Deny(Some(p.key.clone()));
                    }
                }
            }
            Action::Allow => {
                if p.dry_run {
                    if !p.matches(req) {
                        tracing::info!(policy = %p.key, "dry-run ALLOW policy would not allow");
                    }
                    continue;
                }
                allow_seen = true;
                if !allowed && p.matches(req) {
                    allowed = true;
                }
            }
        }
    }
    if allow_seen && !allowed {
        Decision::Deny(None)
    } else {
        Decision::Allow
    }
}

impl Rule {
    fn matches(&self, req: &RequestAttrs<'_>, fail_closed: bool) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req, fail_closed))
    }
}

/// `values` set → one must match; `not_values` set → none may match.
fn field(values: &Strings, not_values: &Strings, actual: Option<&str>) -> bool {
    if !values.0.is_empty() && !actual.is_some_and(|a| values.matches(a)) {
        return false;
    }
    if !not_values.0.is_empty() && actual.is_some_and(|a| not_values.matches(a)) {
        return false;
    }
    true
}

impl Source {
    fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        field(&self.principals, &self.not_principals, Some(req.principal))
            && field(&self.namespaces, &self.not_namespaces, Some(req.namespace))
            && field(
                &self.request_principals,
                &self.not_request_principals,
                req.auth.map(|a| a.principal.as_str()),
            )
            && (self.ip_blocks.is_empty()
                || self.ip_blocks.iter().any(|n| n.contains(&req.source_ip)))
            && !self
                .not_ip_blocks
                .iter()
                .any(|n| n.contains(&req.source_ip))
    }
}

impl Operation {
    fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        let host = req.host.to_ascii_lowercase();
        // Istio compares hosts with and without the port.
        let host_no_port = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host.as_str(), |(h, _)| h);
        let host_ok = self.hosts.0.is_empty()
            || self.hosts.matches(&host)
            || self.hosts.matches(host_no_port);
        let not_host = self.not_hosts.matches(&host) || self.not_hosts.matches(host_no_port);
        host_ok
            && !not_host
            && (self.ports.is_empty() || self.ports.contains(&req.port))
            && !self.not_ports.contains(&req.port)
            && field(&self.methods, &self.not_methods, Some(req.method))
            && field(&self.paths, &self.not_paths, Some(req.path))
    }
}

impl Condition {
    fn matches(&self, req: &RequestAttrs<'_>, fail_closed: bool) -> bool {
        match &self.key {
            ConditionKey::Header(name) => {
                let v = req.headers.get(name).and_then(|v| v.to_str().ok());
                field(&self.values, &self.not_values, v)
            }
            ConditionKey::SourceIp => {
                let in_any = |s: &Strings| {
                    s.0.iter().any(|p| match p {
                        Pattern::Exact(v) => v
                            .parse::<IpNet>()
                            .map(|n| n.contains(&req.source_ip))
                            .or_else(|_| v.parse::<IpAddr>().map(|ip| ip == req.source_ip))
                            .unwrap_or(false),
                        Pattern::Any => true,
                        _ => false,
                    })
                };
                (self.values.0.is_empty() || in_any(&self.values)) && !in_any(&self.not_values)
            }
            ConditionKey::SourceNamespace => {
                field(&self.values, &self.not_values, Some(req.namespace))
            }
            ConditionKey::SourcePrincipal => {
                field(&self.values, &self.not_values, Some(req.principal))
            }
            ConditionKey::DestinationPort => {
                let port = req.port.to_string();
                field(&self.values, &self.not_values, Some(&port))
            }
            ConditionKey::RequestPrincipal => field(
                &self.values,
                &self.not_values,
                req.auth.map(|a| a.principal.as_str()),
            ),
            ConditionKey::RequestAudiences => self.claim_matches(req, &["aud"]),
            ConditionKey::RequestPresenter => self.claim_matches(req, &["azp"]),
            ConditionKey::RequestClaim(path) => self.claim_matches(req, path),
            ConditionKey::Unsupported => fail_closed,
        }
    }
}

impl Condition {
    /// Istio's claim conditions: `values` hold when one of the claim's values matches one;
    /// `not_values` when none does. No token, or no such claim: `values` do not hold.
    fn claim_matches<S: AsRef<str>>(&self, req: &RequestAttrs<'_>, path: &[S]) -> bool {
        let path: Vec<String> = path.iter().map(|p| p.as_ref().to_owned()).collect();
        let actual = req.auth.map(|a| a.claim_strings(&path)).unwrap_or_default();
        let any = |s: &Strings| actual.iter().any(|a| s.matches(a));
        (self.values.0.is_empty() || any(&self.values)) && !any(&self.not_values)
    }
}

impl Strings {
    fn matches(&self, actual: &str) -> bool {
        self.0.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Exact(v) => v == actual,
            Pattern::Prefix(v) => actual.starts_with(v.as_str()),
            Pattern::Suffix(v) => actual.ends_with(v.as_str()),
        })
    }
}

fn strings(values: Vec<String>) -> Strings {
    Strings(
        values
            .into_iter()
            .map(|v| {
                if v == "*" {
                    Pattern::Any
                } else if let Some(p) = v.strip_suffix('*') {
                    Pattern::Prefix(p.to_string())
                } else if let Some(s) = v.strip_prefix('*') {
                    Pattern::Suffix(s.to_string())
                } else {
                    Pattern::Exact(v)
                }
            })
            .collect(),
    )
}

fn cidrs(values: impl Iterator<Item = String>) -> Result<Vec<IpNet>, String> {
    values
        .map(|v| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{v:?} is not an IP address or CIDR"))
        })
        .collect()
}

fn ports(values: Vec<String>) -> Result<Vec<u16>, String> {
    values
        .into_iter()
        .map(|v| v.parse().map_err(|_| format!("{v:?} is not a port")))
        .collect()
}

fn condition_key(key: &str) -> Result<ConditionKey, String> {
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|r| r.strip_suffix(']'))
    {
        return http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map(ConditionKey::Header)
            .map_err(|e| format!("{key:?}: {e}"));
    }
    Ok(match key {
        "source.ip" | "remote.ip" => ConditionKey::SourceIp,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.principal" => ConditionKey::SourcePrincipal,
        "destination.port" => ConditionKey::DestinationPort,
        "request.auth.principal" => ConditionKey::RequestPrincipal,
        "request.auth.audiences" => ConditionKey::RequestAudiences,
        "request.auth.presenter" => ConditionKey::RequestPresenter,
        k if k.starts_with("request.auth.claims[") => ConditionKey::RequestClaim(claim_path(k)?),
        k if k.starts_with("experimental.") || k == "connection.sni" || k == "destination.ip" => {
            ConditionKey::Unsupported
        }
        other => return Err(format!("{other:?} is not a condition key Istio knows")),
    })
}

/// `request.auth.claims[a][b]` → `["a", "b"]`.
fn claim_path(key: &str) -> Result<Vec<String>, String> {
    let mut rest = key.strip_prefix("request.auth.claims").unwrap_or(key);
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .filter(|(name, _)| !name.is_empty());
        let Some((name, after)) = inner else {
            return Err(format!(
                "{key:?}: expected request.auth.claims[name] (nested: [a][b])"
            ));
        };
        path.push(name.to_owned());
        rest = after;
    }
    if path.is_empty() {
        return Err(format!("{key:?}: no claim named"));
    }
    Ok(path)
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
