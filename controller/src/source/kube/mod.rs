//! The Kubernetes API source: one kube-rs watcher per kind (Namespace, Node, Pod, Service,
//! EndpointSlice, ServiceAccount; Gateway, HTTPRoute, GRPCRoute; AuthorizationPolicy,
//! PeerAuthentication, RequestAuthentication), each keeping a typed copy of its objects; every
//! change publishes a whole [`Manifests`] snapshot, as the folder source does, into the same
//! debounced pipeline.
//!
//! - Objects are read as `DynamicObject`s and typed one by one ([`Kind::convert`]), so a
//!   malformed object costs only itself: it is logged with kind, namespace, name and field and
//!   left out. An update that makes a pod or service malformed removes it, as an edit would
//!   in the folder; a malformed new version of a policy (listed or updated) leaves the last
//!   valid version in force, since dropping a DENY would open what it closes.
//! - After a `410 Gone` (expired resourceVersion) the kind is listed again, and the new list
//!   replaces its objects: those deleted meanwhile disappear.
//! - A kind the API server does not serve (CRD not installed: 404) is logged once and asked
//!   for again every [`KubeSource::missing_retry`]; the other kinds go on.
//! - The first snapshot waits until every kind is listed or known missing, so ztunnels are
//!   never served a half-listed cluster (pods without their policies).

mod follow;
mod kinds;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

pub use kinds::{Kind, Rejected};
use state::State;

use crate::manifests::Manifests;

/// Default time between two requests for a kind the API server does not serve.
pub const DEFAULT_MISSING_RETRY: Duration = Duration::from_secs(60);
/// How often the first list says what it still waits for.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Changes queued between the watchers and the snapshot builder (backpressure on watchers).
const UPDATE_QUEUE: usize = 1024;

/// Why the source could not reach the API server's configuration.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file given could not be read or used.
    #[error("kubeconfig {}: {source} (check the file, its current context and its credentials)", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    /// Neither `$KUBECONFIG`, `~/.kube/config` nor the in-cluster service account worked.
    #[error("no Kubernetes configuration found: {0} (give --kubeconfig, set KUBECONFIG, or run in a pod with a service account)")]
    Infer(#[source] ::kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("Kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
}

/// A client for the API server of `kubeconfig`, or else of `$KUBECONFIG`, `~/.kube/config`
/// or the pod's service account (kube's `Config::infer`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| KubeError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(error)?;
            ::kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => ::kube::Config::infer().await.map_err(KubeError::Infer)?,
    };
    info!(server = %config.cluster_url, "Kubernetes API source");
    Client::try_from(config).map_err(KubeError::Client)
}

/// The cluster behind a Kubernetes client, as a source of manifests.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    missing_retry: Duration,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("missing_retry", &self.missing_retry)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// Follows the cluster `client` talks to.
    pub fn new(client: Client) -> Self {
        KubeSource {
            client,
            missing_retry: DEFAULT_MISSING_RETRY,
        }
    }

    /// Sets the time between two requests for a kind the API server does not serve.
    pub fn missing_retry(mut self, retry: Duration) -> Self {
        self.missing_retry = retry;
        self
    }

    /// Lists every kind (waiting as long as that takes: until then there is nothing right to
    /// serve), then follows the changes in a task; the watch always holds the latest snapshot
    /// and closes when the task ends (when every receiver is dropped, or it is aborted).
    pub async fn start(self) -> (watch::Receiver<Arc<Manifests>>, JoinHandle<()>) {
        let (updates_tx, mut updates) = mpsc::channel(UPDATE_QUEUE);
        // Dropping the set (with the task, or with this future) stops the watchers.
        let mut watchers = JoinSet::new();
        for kind in Kind::ALL {
            let client = self.client.clone();
            let updates = updates_tx.clone();
            watchers.spawn(follow::follow(client, kind, updates, self.missing_retry));
        }
        drop(updates_tx);

        let mut state = State::new(&Kind::ALL);
        let mut waiting = tokio::time::interval(WAITING_LOG_INTERVAL);
        waiting.tick().await;
        while !state.ready() {
            tokio::select! {
                update = updates.recv() => match update {
                    Some(update) => {
                        state.apply(update);
                    }
                    None => break,
                },
                _ = waiting.tick() => {
                    let pending: Vec<_> = state.pending().map(Kind::name).collect();
                    warn!(?pending, "waiting for the Kubernetes API to list every kind");
                }
            }
        }
        log_snapshot(&state, "Kubernetes API listed");

        let (tx, rx) = watch::channel(Arc::new(state.manifests().clone()));
        let task = tokio::spawn(async move {
            let _watchers = watchers;
            loop {
                let mut changed = tokio::select! {
                    update = updates.recv() => match update {
                        Some(update) => state.apply(update),
                        None => return,
                    },
                    () = tx.closed() => return,
                };
                // Everything already queued goes into the same snapshot: a burst (a relist,
                // a rollout) costs one copy of the cluster, not one per object.
                while let Ok(update) = updates.try_recv() {
                    changed |= state.apply(update);
                }
                if changed && tx.send(Arc::new(state.manifests().clone())).is_err() {
                    return;
                }
            }
        });
        (rx, task)
    }
}

fn log_snapshot(state: &State, message: &str) {
    let m = state.manifests();
    let missing: Vec<_> = state.missing().map(Kind::name).collect();
    info!(
        namespaces = m.namespaces.len(),
        pods = m.pods.len(),
        services = m.services.len(),
        endpoint_slices = m.endpoint_slices.len(),
        authorization_policies = m.authorization_policies.len(),
        peer_authentications = m.peer_authentications.len(),
        ?missing,
        "{message}"
    );
}
