//! Whether one policy matches one connection: rules OR-ed, clauses AND-ed, matches OR-ed,
//! and inside a match every set field must hold.

use std::net::IpAddr;

use crate::state::{Clause, Match, Policy, StringMatch};
use crate::Identity;

use super::ConnInfo;

/// The connection as matching sees it, computed once per decision.
pub(super) struct Peer<'a> {
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: u16,
    identity: Option<&'a Identity>,
    /// `<td>/ns/<ns>/sa/<sa>`: the form principals are written in (SPIFFE ID without scheme).
    principal: Option<String>,
}

impl<'a> Peer<'a> {
    pub(super) fn new(conn: &'a ConnInfo) -> Self {
        Peer {
            // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; policies use v4.
            src_ip: conn.src_ip.to_canonical(),
            dst_ip: conn.dst_ip.to_canonical(),
            dst_port: conn.dst_port,
            identity: conn.src_identity.as_ref(),
            principal: conn.src_identity.as_ref().map(Identity::principal),
        }
    }
}

/// The index of the policy's first rule that holds for `peer`; a policy without rules
/// matches nothing.
pub(super) fn matching_rule(policy: &Policy, peer: &Peer<'_>) -> Option<usize> {
    policy
        .rules
        .iter()
        .position(|rule| rule.clauses.iter().all(|c| clause_holds(c, peer)))
}

fn clause_holds(clause: &Clause, peer: &Peer<'_>) -> bool {
    // Istio: a clause without matches holds; a match without conditions is skipped.
    clause.matches.is_empty()
        || clause
            .matches
            .iter()
            .any(|m| !m.is_empty() && match_holds(m, peer))
}

fn match_holds(m: &Match, peer: &Peer<'_>) -> bool {
    let id = peer.identity;
    // Without an identity no principal, namespace or service account matches: the positive
    // form fails and the `not_` form holds. That is what makes STRICT work as a DENY policy
    // with `notPrincipals: [{presence: {}}]`.
    field(&m.source_ips, &m.not_source_ips, |n| {
        n.contains(&peer.src_ip)
    }) && field(&m.destination_ips, &m.not_destination_ips, |n| {
        n.contains(&peer.dst_ip)
    }) && field(&m.destination_ports, &m.not_destination_ports, |p| {
        *p == peer.dst_port
    }) && field(&m.principals, &m.not_principals, |s| {
        peer.principal
            .as_deref()
            .is_some_and(|p| string_matches(s, p))
    }) && field(&m.namespaces, &m.not_namespaces, |s| {
        id.is_some_and(|id| string_matches(s, id.namespace()))
    }) && field(&m.service_accounts, &m.not_service_accounts, |sa| {
        id.is_some_and(|id| {
            id.namespace() == sa.namespace && id.service_account() == sa.service_account
        })
    })
}

/// One field and its `not_` twin: the positive list (if set) must have a match, the negative
/// list must have none.
fn field<T>(positive: &[T], negative: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&matches)) && !negative.iter().any(&matches)
}

fn string_matches(m: &StringMatch, value: &str) -> bool {
    match m {
        StringMatch::Exact(s) => value == s,
        StringMatch::Prefix(s) => value.starts_with(s.as_str()),
        StringMatch::Suffix(s) => value.ends_with(s.as_str()),
        StringMatch::Presence => !value.is_empty(),
    }
}
