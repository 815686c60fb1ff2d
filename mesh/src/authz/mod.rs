//! L4 authorization of inbound connections, with Istio's semantics.
//!
//! The policies that apply to a destination workload are the global ones, the NAMESPACE-scoped
//! ones of its namespace and the ones it names ([`Snapshot::policies_for`]). Then: any matching
//! DENY denies; else, with no ALLOW policy the connection is allowed; else a matching ALLOW
//! allows; else it is denied. Dry-run policies take no part in the decision: they are
//! evaluated on the side and what they would have changed is logged.

mod matcher;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::state::{Policy, PolicyAction, Snapshot, Workload};
use crate::Identity;

use matcher::{matching_rule, Peer};

/// What authorization knows about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub src_ip: IpAddr,
    /// The peer's verified identity; `None` for plaintext (15006) connections.
    pub src_identity: Option<Identity>,
    pub dst_ip: IpAddr,
    /// The app's target port (after service port → target port mapping).
    pub dst_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Reason {
    /// No DENY matched and no ALLOW policy applies.
    NoAllowPolicies,
    /// The named ALLOW policy matched.
    AllowMatched,
    /// The named DENY policy matched.
    DenyMatched,
    /// ALLOW policies apply, and none matched.
    NoAllowMatched,
}

/// The outcome of [`authorize`], for the data path, access logs and the 401 reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The deciding policy, `ns/name`, when one policy decided.
    pub policy: Option<String>,
    /// The index of the deciding policy's first rule that matched, when one policy decided.
    pub rule: Option<usize>,
    pub reason: Reason,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    fn by(verdict: Verdict, reason: Reason, policy: &Policy, rule: usize) -> Decision {
        Decision {
            verdict,
            policy: Some(policy.key()),
            rule: Some(rule),
            reason,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = self.policy.as_deref().unwrap_or("?");
        match self.reason {
            Reason::NoAllowPolicies => f.write_str("allowed: no ALLOW policy applies"),
            Reason::AllowMatched => write!(f, "allowed by policy {policy}"),
            Reason::DenyMatched => write!(f, "denied by DENY policy {policy}"),
            Reason::NoAllowMatched => f.write_str("denied: no ALLOW policy matched"),
        }
    }
}

/// Decides whether `conn` may reach `dst`.
pub fn authorize(snapshot: &Snapshot, dst: &Workload, conn: &ConnInfo) -> Decision {
    let peer = Peer::new(conn);
    let decision = decide(snapshot.policies_for(dst).filter(|p| !p.dry_run), &peer);
    if snapshot.policies_for(dst).any(|p| p.dry_run) {
        // What the decision would be if dry-run policies were enforced.
        let shadow = decide(snapshot.policies_for(dst), &peer);
        if shadow != decision {
            tracing::info!(
                src = %conn.src_ip,
                identity = ?conn.src_identity,
                dst = %conn.dst_ip,
                port = conn.dst_port,
                workload = %dst.uid,
                actual = %decision,
                dry_run = %shadow,
                "dry-run policy would change the decision"
            );
        } else {
            tracing::debug!(workload = %dst.uid, decision = %decision, "dry-run policies agree");
        }
    }
    decision
}

fn decide<'a>(policies: impl Iterator<Item = &'a Arc<Policy>>, peer: &Peer<'_>) -> Decision {
    let mut any_allow = false;
    let mut allowed_by: Option<(&Policy, usize)> = None;
    for p in policies {
        match p.action {
            PolicyAction::Deny => {
                if let Some(rule) = matching_rule(p, peer) {
                    return Decision::by(Verdict::Deny, Reason::DenyMatched, p, rule);
                }
            }
            PolicyAction::Allow => {
                any_allow = true;
                // Keep looking after a match: a later DENY still wins.
                if allowed_by.is_none() {
                    allowed_by = matching_rule(p, peer).map(|rule| (&**p, rule));
                }
            }
        }
    }
    match (allowed_by, any_allow) {
        (Some((p, rule)), _) => Decision::by(Verdict::Allow, Reason::AllowMatched, p, rule),
        (None, false) => Decision {
            verdict: Verdict::Allow,
            policy: None,
            rule: None,
            reason: Reason::NoAllowPolicies,
        },
        (None, true) => Decision {
            verdict: Verdict::Deny,
            policy: None,
            rule: None,
            reason: Reason::NoAllowMatched,
        },
    }
}

/// One policy that applies to a destination, and whether it matches a connection: what
/// `amesh explain` lists next to the [`Decision`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyMatch {
    /// `ns/name`.
    pub policy: String,
    pub action: PolicyAction,
    pub dry_run: bool,
    /// The first rule that matches, `None` if none does.
    pub rule: Option<usize>,
}

/// Every policy that applies to `dst`, in evaluation order, with the rule of each that
/// matches `conn`: the same matching [`authorize`] decides with.
pub fn policy_matches(snapshot: &Snapshot, dst: &Workload, conn: &ConnInfo) -> Vec<PolicyMatch> {
    let peer = Peer::new(conn);
    snapshot
        .policies_for(dst)
        .map(|p| PolicyMatch {
            policy: p.key(),
            action: p.action,
            dry_run: p.dry_run,
            rule: matching_rule(p, &peer),
        })
        .collect()
}
