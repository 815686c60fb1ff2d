//! SPIFFE workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//!
//! Parsing is strict ("parse, don't validate"): an [`Identity`] that exists is well formed, so
//! code further on never re-checks the shape of a peer's name.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";

/// The identity of a workload: the trust domain it belongs to and its Kubernetes service account.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Trust domain, e.g. `cluster.local`; compared exactly (lower case by construction).
    trust_domain: String,
    /// Kubernetes namespace of the service account.
    namespace: String,
    /// Kubernetes service account name.
    service_account: String,
}

/// Why a string is not a SPIFFE workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    Scheme(String),
    #[error("{0:?} is not a workload SPIFFE ID: expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    Shape(String),
    #[error("{id:?} has an invalid trust domain {domain:?}: use lower-case letters, digits, '.', '-' and '_'")]
    TrustDomain { id: String, domain: String },
    #[error("{id:?} has an invalid {what} {value:?}: it must be a non-empty DNS label-like name without '/', '?' or '#'")]
    Segment {
        id: String,
        what: &'static str,
        value: String,
    },
}

impl Identity {
    /// Builds an identity from its parts, checking each as [`FromStr`] would.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The form Istio policies use for principals: the SPIFFE ID without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn valid_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn valid_segment(s: &str) -> bool {
    // Kubernetes names are DNS subdomains/labels; we accept the SPIFFE path character set that
    // such names can produce, and refuse anything that would change the meaning of the path.
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'%' | b':')
        })
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::Scheme(s.to_string()))?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(IdentityError::Shape(s.to_string()));
        };
        if !valid_trust_domain(td) {
            return Err(IdentityError::TrustDomain {
                id: s.to_string(),
                domain: td.to_string(),
            });
        }
        for (what, value) in [("namespace", ns), ("service account", sa)] {
            if !valid_segment(value) {
                return Err(IdentityError::Segment {
                    id: s.to_string(),
                    what,
                    value: value.to_string(),
                });
            }
        }
        Ok(Identity {
            trust_domain: td.to_string(),
            namespace: ns.to_string(),
            service_account: sa.to_string(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(
            id.principal(),
            "cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(
            Identity::new("cluster.local", "default", "bookinfo-productpage"),
            Ok(id)
        );
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", "Scheme"),
            ("spiffe://cluster.local/ns/a", "Shape"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "Shape"),
            ("spiffe://cluster.local/namespace/a/sa/b", "Shape"),
            ("spiffe://cluster.local/ns/a/serviceaccount/b", "Shape"),
            ("spiffe:///ns/a/sa/b", "TrustDomain"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "TrustDomain"),
            ("spiffe://cluster.local/ns//sa/b", "Segment"),
            ("spiffe://cluster.local/ns/a/sa/", "Segment"),
            ("spiffe://cluster.local/ns/../sa/b", "Segment"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "Segment"),
        ];
        for (input, kind) in cases {
            let err = input.parse::<Identity>().unwrap_err();
            let got = format!("{err:?}");
            assert!(got.starts_with(kind), "{input}: expected {kind}, got {got}");
            // Every message names the offending input so an operator can find it.
            assert!(err.to_string().contains(input), "{input}: {err}");
        }
    }
}
