//! The mesh root published for the data plane, Istio's way: the ConfigMap `istio-ca-root-cert`
//! (key `root-cert.pem`, label `istio.io/config: "true"`), which ztunnel mounts to verify the
//! control plane on 15012. Istio writes it into every namespace; amesh writes it into the root
//! namespace (`istio-system`), where the ztunnel DaemonSet runs and mounts it from.
//!
//! [`publish`] creates the ConfigMap when absent, updates it when its root differs and leaves it
//! alone when equal, so that restarts and resyncs cost one read. [`RootPublisher`] does that at
//! start, whenever the root changes, and every resync period, which also repairs a ConfigMap
//! someone deleted or edited.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Istio's name for the ConfigMap holding the mesh root.
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its data key, also the file name ztunnel reads.
pub const ROOT_CERT_KEY: &str = mesh::certs::ROOT_CERT_FILE;
/// Istio's root namespace, where ztunnel runs.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// How often the publisher checks the ConfigMap without a reason to.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
/// Istio's label on the ConfigMaps it writes.
const CONFIG_LABEL: (&str, &str) = ("istio.io/config", "true");
/// Reads and writes tried when other writers keep changing the ConfigMap meanwhile.
const ATTEMPTS: usize = 3;
/// First wait after a failed publication; doubled up to the resync period.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What [`publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// There was no ConfigMap: created.
    Created,
    /// Its root differed: replaced.
    Updated,
    /// It already held this root: nothing written.
    Unchanged,
}

/// Why the root could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The ConfigMap could not be read.
    #[error("cannot read the ConfigMap {namespace}/{ROOT_CONFIGMAP}: {source} (the controller needs `get` on configmaps in namespace {namespace})")]
    Read {
        /// Its namespace.
        namespace: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// The ConfigMap could not be created or updated.
    #[error("cannot write the ConfigMap {namespace}/{ROOT_CONFIGMAP}: {source} (the controller needs `create` and `update` on configmaps in namespace {namespace}, and the namespace must exist)")]
    Write {
        /// Its namespace.
        namespace: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
}

/// Makes the ConfigMap in `namespace` of `client`'s cluster hold `root_pem`.
pub async fn publish(
    client: Client,
    namespace: &str,
    root_pem: &str,
) -> Result<Published, PublishError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let write = |source| PublishError::Write {
        namespace: namespace.to_owned(),
        source,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let found = api
            .get_opt(ROOT_CONFIGMAP)
            .await
            .map_err(|source| PublishError::Read {
                namespace: namespace.to_owned(),
                source,
            })?;
        let result = match found {
            None => api
                .create(&PostParams::default(), &new_configmap(namespace, root_pem))
                .await
                .map(|_| Published::Created),
            Some(current) => {
                let data = current.data.as_ref();
                if data.and_then(|d| d.get(ROOT_CERT_KEY)).map(String::as_str) == Some(root_pem) {
                    return Ok(Published::Unchanged);
                }
                // The read's resourceVersion stays in the object: a write by someone else in
                // between makes the API server answer 409 instead of losing theirs or ours.
                let mut next = current;
                next.data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ROOT_CERT_KEY.to_owned(), root_pem.to_owned());
                api.replace(ROOT_CONFIGMAP, &PostParams::default(), &next)
                    .await
                    .map(|_| Published::Updated)
            }
        };
        match result {
            Ok(done) => return Ok(done),
            // Created meanwhile (AlreadyExists) or changed meanwhile (Conflict): read again.
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < ATTEMPTS => {
                debug!(
                    namespace,
                    "{ROOT_CONFIGMAP} changed while publishing; reading it again"
                );
            }
            Err(source) => return Err(write(source)),
        }
    }
}

fn new_configmap(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                CONFIG_LABEL.0.to_owned(),
                CONFIG_LABEL.1.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_owned(),
            root_pem.to_owned(),
        )])),
        ..ConfigMap::default()
    }
}

/// Keeps the ConfigMap of one namespace holding the current root.
#[derive(Clone)]
pub struct RootPublisher {
    client: Client,
    namespace: String,
    resync: Duration,
}

impl std::fmt::Debug for RootPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPublisher")
            .field("namespace", &self.namespace)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl RootPublisher {
    /// Publishes into `namespace` of `client`'s cluster, checking every [`DEFAULT_RESYNC`].
    pub fn new(client: Client, namespace: &str) -> Self {
        RootPublisher {
            client,
            namespace: namespace.to_owned(),
            resync: DEFAULT_RESYNC,
        }
    }

    /// Sets the time between two checks when nothing changed.
    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every;
        self
    }

    /// Publishes the root in `root` now, again whenever it changes, and every resync period; a
    /// failure is logged and retried with backoff. The task ends when `root`'s sender is
    /// dropped (or when aborted).
    pub fn spawn(self, mut root: watch::Receiver<String>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            loop {
                let pem = root.borrow_and_update().clone();
                let wait = match publish(self.client.clone(), &self.namespace, &pem).await {
                    Ok(done) => {
                        retry = FIRST_RETRY;
                        match done {
                            Published::Unchanged => {
                                debug!(namespace = self.namespace, "mesh root already published")
                            }
                            _ => info!(
                                namespace = self.namespace,
                                outcome = ?done,
                                "published the mesh root as ConfigMap {ROOT_CONFIGMAP}"
                            ),
                        }
                        self.resync
                    }
                    Err(e) => {
                        // Not fatal: running ztunnels already hold the root; new ones wait for
                        // the ConfigMap to mount, so keep trying.
                        warn!(error = %e, "cannot publish the mesh root; retrying in {retry:?}");
                        let wait = retry;
                        retry = (retry * 2).min(self.resync.max(FIRST_RETRY));
                        wait
                    }
                };
                tokio::select! {
                    changed = root.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }
}
