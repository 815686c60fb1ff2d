//! Who is calling the CA or the xDS server: the [`Caller`] behind a request's
//! `authorization: Bearer <token>`. A node agent (ztunnel) may obtain the identities of the
//! pods on its node; a workload (a waypoint, which runs as its own ServiceAccount, as under
//! istiod) may obtain only its own identity. In the lab the token is a bootstrap token of
//! either kind ([`NodeTokens`]); in Kubernetes it is a projected ServiceAccount token, checked
//! with the API server's TokenReview ([`TokenReviewer`]).

use std::fmt;
use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::Status;

use super::token_review::TokenReviewer;
use super::tokens::NodeTokens;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node agent, by node name.
    Node(String),
    /// A workload running as ServiceAccount `service_account` of `namespace`.
    Workload {
        /// The ServiceAccount's namespace.
        namespace: String,
        /// The ServiceAccount's name.
        service_account: String,
    },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Node(node) => write!(f, "node {node}"),
            Caller::Workload {
                namespace,
                service_account,
            } => write!(f, "workload {namespace}/{service_account}"),
        }
    }
}

/// How callers are authenticated. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Node bootstrap tokens (`--tokens`): the lab, or clusters without TokenReview.
    NodeTokens(Arc<NodeTokens>),
    /// ServiceAccount tokens reviewed by the Kubernetes API.
    TokenReview(Arc<TokenReviewer>),
}

impl Authenticator {
    /// The caller the request's bearer token stands for, or why it is refused:
    /// UNAUTHENTICATED for a missing or unknown token, PERMISSION_DENIED for a valid token of
    /// someone who is neither a node agent nor a ServiceAccount, UNAVAILABLE if the Kubernetes
    /// API cannot be asked.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer(metadata)?;
        match self {
            Authenticator::NodeTokens(tokens) => {
                tokens.caller_of(token).cloned().ok_or_else(|| {
                    Status::unauthenticated(
                        "the bearer token is not a known token; check it against the controller's \
                     --tokens file",
                    )
                })
            }
            Authenticator::TokenReview(reviewer) => reviewer.caller_of(token).await,
        }
    }

    /// Whether no caller can ever authenticate (no node tokens configured).
    pub fn accepts_nobody(&self) -> bool {
        matches!(self, Authenticator::NodeTokens(t) if t.is_empty())
    }
}

impl From<NodeTokens> for Authenticator {
    fn from(tokens: NodeTokens) -> Self {
        Authenticator::NodeTokens(Arc::new(tokens))
    }
}

impl From<TokenReviewer> for Authenticator {
    fn from(reviewer: TokenReviewer) -> Self {
        Authenticator::TokenReview(Arc::new(reviewer))
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let header = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("no `authorization: Bearer <token>` header"))?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer <token>`"))
}
