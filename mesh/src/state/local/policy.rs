//! A policy as Istio ztunnel's local file writes it: `rules` is a list of rules, each a list
//! of clauses, each a list of matches.

use serde::{Deserialize, Serialize};

use crate::state::convert::required;
use crate::state::error::{ConvertError, FieldError, ResourceKind};
use crate::state::{Clause, Match, Policy, PolicyAction, PolicyScope, Rule};

/// One entry of `policies:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalPolicy {
    pub name: String,
    pub namespace: String,
    /// `Global`, `Namespace` or `WorkloadSelector`.
    pub scope: PolicyScope,
    /// `Allow` or `Deny`.
    pub action: PolicyAction,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// rules (OR) → clauses (AND) → matches (OR).
    #[serde(default)]
    pub rules: Vec<Vec<Vec<Match>>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl From<&Policy> for LocalPolicy {
    fn from(p: &Policy) -> Self {
        LocalPolicy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            scope: p.scope,
            action: p.action,
            dry_run: p.dry_run,
            rules: p
                .rules
                .iter()
                .map(|r| r.clauses.iter().map(|c| c.matches.clone()).collect())
                .collect(),
        }
    }
}

impl LocalPolicy {
    /// `ns/name`, the policy's key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub(crate) fn to_model(&self) -> Result<Policy, ConvertError> {
        self.convert()
            .map_err(|e| ConvertError::new(ResourceKind::Policy, &self.key(), e))
    }

    fn convert(&self) -> Result<Policy, FieldError> {
        Ok(Policy {
            name: required("name", self.name.clone())?,
            namespace: required("namespace", self.namespace.clone())?,
            scope: self.scope,
            action: self.action,
            dry_run: self.dry_run,
            rules: self
                .rules
                .iter()
                .map(|r| Rule {
                    clauses: r.iter().map(|c| Clause { matches: c.clone() }).collect(),
                })
                .collect(),
        })
    }
}
