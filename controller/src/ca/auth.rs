//! Who is calling the CA or the xDS server: the node behind a request's
//! `authorization: Bearer <token>`. In the lab the token is a node bootstrap token
//! ([`NodeTokens`]); in Kubernetes it is the node agent's projected ServiceAccount token, checked
//! with the API server's TokenReview ([`TokenReviewer`]).

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::Status;

use super::token_review::TokenReviewer;
use super::tokens::NodeTokens;

/// How callers are authenticated. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Node bootstrap tokens (`--tokens`): the lab, or clusters without TokenReview.
    NodeTokens(Arc<NodeTokens>),
    /// ServiceAccount tokens reviewed by the Kubernetes API.
    TokenReview(Arc<TokenReviewer>),
}

impl Authenticator {
    /// The node name the request's bearer token stands for, or why it is refused:
    /// UNAUTHENTICATED for a missing or unknown token, PERMISSION_DENIED for a valid token of
    /// someone who is not a node agent, UNAVAILABLE if the Kubernetes API cannot be asked.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let token = bearer(metadata)?;
        match self {
            Authenticator::NodeTokens(tokens) => {
                tokens.node_of(token).map(str::to_owned).ok_or_else(|| {
                    Status::unauthenticated(
                    "the bearer token is not a known node token; check the node's token against \
                     the controller's --tokens file",
                )
                })
            }
            Authenticator::TokenReview(reviewer) => reviewer.node_of(token).await,
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
