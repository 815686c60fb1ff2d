//! Kubernetes authentication of callers: the bearer token is a projected ServiceAccount
//! token (audience `istio-ca`, as Istio's ztunnel and waypoints mount it), checked with a
//! TokenReview (`authentication.k8s.io/v1`). A node-agent service account
//! (`system:serviceaccount:istio-system:ztunnel` by default) is a node: its node is the one the
//! token is bound to, the `authentication.kubernetes.io/node-name` extra (Kubernetes ≥ 1.30),
//! else the node of the pod named in `…/pod-name` (and `…/pod-uid`), looked up in the
//! controller's own view of the cluster. Any other ServiceAccount is that workload (as istiod
//! treats it: it may obtain its own identity only); a user that is no ServiceAccount is refused.
//!
//! Reviews are cached for [`CACHE_TTL`] by a hash of the token, so that a ztunnel asking for
//! many certificates at start costs the API server one review, not one per pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::Status;
use tracing::debug;

use super::auth::Caller;
use crate::manifests::Manifests;

/// Istio's audience for tokens sent to the CA and to xDS.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// The ServiceAccount Istio's ztunnel DaemonSet runs as.
pub const DEFAULT_NODE_AGENT: &str = "system:serviceaccount:istio-system:ztunnel";
/// How long a successful review is trusted without asking again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Reviews kept at most; beyond it the cache starts over (bounded memory under token churn).
const CACHE_MAX: usize = 4096;

const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// What a successful review said about the caller.
#[derive(Debug, Clone)]
struct Reviewed {
    username: String,
    extra: BTreeMap<String, Vec<String>>,
}

/// Authenticates node agents through TokenReview.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    node_agents: Vec<String>,
    /// Pods and their nodes, for tokens bound to a pod but not (yet) carrying the node name.
    manifests: watch::Receiver<Arc<Manifests>>,
    cache: Mutex<HashMap<[u8; 32], (Instant, Reviewed)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .field("node_agents", &self.node_agents)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// Reviews tokens with `client`'s API server for `audiences` (none: the API server's own
    /// audience), accepting the users in `node_agents` (full user names,
    /// `system:serviceaccount:<ns>:<name>`).
    pub fn new(
        client: Client,
        audiences: Vec<String>,
        node_agents: Vec<String>,
        manifests: watch::Receiver<Arc<Manifests>>,
    ) -> Self {
        TokenReviewer {
            api: Api::all(client),
            audiences,
            node_agents,
            manifests,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller `token` belongs to, or why not.
    pub async fn caller_of(&self, token: &str) -> Result<Caller, Status> {
        let reviewed = self.review(token).await?;
        if self.node_agents.contains(&reviewed.username) {
            return self.bound_node(&reviewed).map(Caller::Node);
        }
        let workload = reviewed
            .username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty());
        match workload {
            Some((namespace, service_account)) => Ok(Caller::Workload {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            }),
            None => Err(Status::permission_denied(format!(
                "{} is neither a node agent ({:?}, controller flag --node-agent) nor a \
                 ServiceAccount: it may not obtain certificates or read the mesh config",
                reviewed.username, self.node_agents
            ))),
        }
    }

    /// The review of `token`, from the cache or the API server.
    async fn review(&self, token: &str) -> Result<Reviewed, Status> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((at, reviewed)) = self.cache.lock().get(&key) {
            if at.elapsed() < CACHE_TTL {
                return Ok(reviewed.clone());
            }
        }
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot review the token with the Kubernetes API ({e}); the controller \
                     needs `create` on tokenreviews.authentication.k8s.io"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "no reason given".into());
            return Err(Status::unauthenticated(format!(
                "the Kubernetes API did not authenticate the token: {why}"
            )));
        }
        if !self.audiences.is_empty() {
            // An API server that ignores spec.audiences would otherwise let a token minted for
            // some other service in.
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Err(Status::unauthenticated(format!(
                    "the token is valid for audiences {granted:?}, not {:?}",
                    self.audiences
                )));
            }
        }
        let user = status.user.unwrap_or_default();
        let reviewed = Reviewed {
            username: user.username.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        };
        debug!(user = reviewed.username, "TokenReview: authenticated");
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), reviewed.clone()));
        Ok(reviewed)
    }

    /// The node the reviewed token is bound to.
    fn bound_node(&self, reviewed: &Reviewed) -> Result<String, Status> {
        let first = |key: &str| {
            reviewed
                .extra
                .get(key)
                .and_then(|v| v.first())
                .filter(|v| !v.is_empty())
        };
        if let Some(node) = first(EXTRA_NODE_NAME) {
            return Ok(node.clone());
        }
        let Some(pod) = first(EXTRA_POD_NAME) else {
            return Err(Status::permission_denied(format!(
                "the token of {} is not bound to a pod, so its node is unknown: mount a \
                 projected ServiceAccount token (audience {:?}) in the node agent",
                reviewed.username, self.audiences
            )));
        };
        let namespace = reviewed
            .username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, _)| ns)
            .unwrap_or_default();
        let manifests = self.manifests.borrow();
        let found = manifests
            .pods
            .iter()
            .find(|(key, _)| key.namespace == namespace && &key.name == pod)
            .map(|(_, p)| p);
        let Some(found) = found else {
            return Err(Status::permission_denied(format!(
                "the token is bound to pod {namespace}/{pod}, which the controller does not \
                 know (yet)"
            )));
        };
        if let Some(uid) = first(EXTRA_POD_UID) {
            if found.metadata.uid.as_ref() != Some(uid) {
                return Err(Status::permission_denied(format!(
                    "the token is bound to an earlier pod {namespace}/{pod} (uid {uid}), not \
                     the one running now"
                )));
            }
        }
        found
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "the token is bound to pod {namespace}/{pod}, which is not scheduled on a \
                     node"
                ))
            })
    }
}
