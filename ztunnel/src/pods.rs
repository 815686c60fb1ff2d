//! The set of captured pods on this node: capture on CNI ADD, release on DEL, persist the set,
//! and re-capture every persisted pod after a restart before ztunnel reports ready.
//!
//! Order on ADD matters: listeners first, then the redirect rules, so there is never a moment
//! where capture sends the pod's traffic to a port nobody listens on. Any failure rolls back.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh::hbone::{Drain, Server};
use mesh::state::TunnelProtocol;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use crate::capture::{Capture, CaptureError, ListenerFds, PodNetns};
use crate::netns::{Netns, NetnsError};
use crate::proxy::{inbound::Inbound, inbound_plain, outbound, Pod, PodInfo, Shared};
use crate::sockets::PodListeners;

/// How long ADD waits for the pod to appear in the configuration, unless configured
/// (`AMESH_POD_CONFIG_WAIT_SECONDS`, see [`PodManager::with_config_wait`]).
pub const CONFIG_WAIT: Duration = Duration::from_secs(15);
/// How long ADD waits for the pod's certificate.
const CERT_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {pod} ({ip}) is not in ztunnel's configuration after {secs}s: is amesh-controller serving this node, and does it know the pod?")]
    NotInConfig { pod: String, ip: IpAddr, secs: u64 },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod {pod}: invalid identity: {source}")]
    Identity {
        pod: String,
        #[source]
        source: mesh::IdentityError,
    },
    #[error("pod {pod}: no certificate for {identity} after {secs}s: is the CA reachable?")]
    NoCertificate {
        pod: String,
        identity: String,
        secs: u64,
    },
    #[error("pod {pod}: opening listeners in its network namespace: {source}")]
    Listeners {
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: installing capture: {source}")]
    Capture {
        pod: String,
        #[source]
        source: CaptureError,
    },
    #[error("writing the pod state file {path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A pod to capture, as the CNI plugin (or istio-cni, or the state file) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    /// Path of the pod's network namespace.
    pub netns: PathBuf,
    /// The pod's service account when the caller knows it (and so that the pod is ambient).
    pub service_account: Option<String>,
}

impl From<PodInfo> for AddPod {
    fn from(p: PodInfo) -> AddPod {
        AddPod {
            uid: p.uid,
            name: p.name,
            namespace: p.namespace,
            ip: p.ip,
            netns: p.netns,
            service_account: Some(p.service_account),
        }
    }
}

/// A captured pod and the tasks serving it.
struct Running {
    pod: Arc<Pod>,
    /// The listeners' sockets as the capture backend knows them (kept for a repeated ADD).
    fds: ListenerFds,
    drain: Drain,
    tasks: JoinSet<()>,
}

pub struct PodManager {
    shared: Arc<Shared>,
    capture: Arc<dyn Capture>,
    /// Where the captured set is persisted (`None`: not persisted).
    state_file: Option<PathBuf>,
    /// How long ADD waits for the pod to appear in the configuration.
    config_wait: Duration,
    /// Whether inbound connections reach the app from the client's address.
    original_source: bool,
    /// Whether a pod may live in ztunnel's own netns (dedicated mode serves the workload it
    /// runs beside); otherwise such a pod is refused.
    own_netns: bool,
    pods: tokio::sync::Mutex<HashMap<String, Running>>,
}

impl PodManager {
    pub fn new(
        shared: Arc<Shared>,
        capture: Arc<dyn Capture>,
        state_file: Option<PathBuf>,
    ) -> Self {
        PodManager {
            shared,
            capture,
            state_file,
            config_wait: CONFIG_WAIT,
            original_source: true,
            own_netns: false,
            pods: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long ADD waits for the pod to appear in the configuration (tests and labs
    /// shorten it so a pod that is not in the config fails fast).
    pub fn with_config_wait(mut self, wait: Duration) -> Self {
        self.config_wait = wait;
        self
    }

    /// Sets whether inbound connections reach the app from the client's own address (default
    /// on; off where no policy route brings the app's replies back, as in dedicated mode).
    pub fn with_original_source(mut self, on: bool) -> Self {
        self.original_source = on;
        self
    }

    /// Lets pods live in ztunnel's own network namespace (dedicated mode only: a node's
    /// ztunnel must never capture its own or the host's netns).
    pub fn with_own_netns(mut self) -> Self {
        self.own_netns = true;
        self
    }

    /// How long ADD waits for the pod to appear in the configuration.
    pub fn config_wait(&self) -> Duration {
        self.config_wait
    }

    /// Captures a pod. With `service_account` (the CNI plugin read it from the API server, or
    /// istio-cni sent it), the pod is in the mesh and is captured at once, whatever the
    /// control plane knows yet. Without it (a plugin without API access), ztunnel waits for
    /// the pod in its configuration and captures it if that says HBONE. Returns whether it
    /// was captured. Idempotent for a pod that is already captured.
    pub async fn add(&self, req: AddPod) -> Result<bool, PodError> {
        let AddPod {
            uid,
            name,
            namespace,
            ip,
            netns,
            service_account,
        } = req;
        let label = format!("{namespace}/{name}");
        // Before anything else, and before any running pod is touched: the path comes from
        // the CNI request (or istio-cni), and must name a pod's network namespace.
        let handle = self.open_netns(&netns)?;
        let service_account = match service_account {
            Some(sa) => sa,
            None => {
                let Some(workload) = self.wait_for_workload(ip).await else {
                    return Err(PodError::NotInConfig {
                        pod: label,
                        ip,
                        secs: self.config_wait.as_secs(),
                    });
                };
                if workload.protocol != TunnelProtocol::Hbone {
                    return Ok(false);
                }
                workload.service_account().to_string()
            }
        };
        let info = PodInfo {
            uid,
            name,
            namespace,
            service_account,
            ip,
            netns,
        };
        let mut pods = self.pods.lock().await;
        if let Some(running) = pods.get(&info.uid) {
            if running.pod.info == info {
                // A repeated ADD (runtime retry): make sure the rules are there and stop.
                self.install(&running.pod, &running.fds).await?;
                return Ok(true);
            }
        }
        if let Some(old) = pods.remove(&info.uid) {
            let identity = old.pod.identity.clone();
            self.stop(old).await;
            self.forget_unused(&pods, &identity);
        }
        let running = self.start(info, handle).await?;
        pods.insert(running.pod.info.uid.clone(), running);
        self.persist(&pods)?;
        Ok(true)
    }

    /// Stops capturing a pod; returns whether it was captured.
    pub async fn remove(&self, uid: &str) -> Result<bool, PodError> {
        let mut pods = self.pods.lock().await;
        let Some(running) = pods.remove(uid) else {
            return Ok(false);
        };
        let pod = running.pod.clone();
        self.stop(running).await;
        self.forget_unused(&pods, &pod.identity);
        if let Err(e) = self.capture.remove(&self.pod_netns(&pod)).await {
            warn!(pod = %pod.info.name, error = %e, "removing capture failed (the netns may be gone)");
        }
        self.persist(&pods)?;
        Ok(true)
    }

    /// Stops capturing every pod whose uid is not in `keep` (after a pod source replayed its
    /// whole set, e.g. ZDS's snapshot). Returns the uids removed; a failure to persist the set
    /// is returned after every removal was attempted.
    pub async fn retain(&self, keep: &HashSet<String>) -> Result<Vec<String>, PodError> {
        let gone: Vec<String> = self
            .pods
            .lock()
            .await
            .keys()
            .filter(|uid| !keep.contains(*uid))
            .cloned()
            .collect();
        let mut result = Ok(());
        for uid in &gone {
            if let Err(e) = self.remove(uid).await {
                result = Err(e);
            }
        }
        result.map(|()| gone)
    }

    /// Pods currently captured.
    pub async fn list(&self) -> Vec<PodInfo> {
        let mut v: Vec<_> = self
            .pods
            .lock()
            .await
            .values()
            .map(|r| r.pod.info.clone())
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    /// Re-captures every pod of the state file whose netns still exists. Returns the number of
    /// pods restored; failures are logged and the pod is dropped from the set.
    pub async fn restore(&self) -> usize {
        let Some(path) = &self.state_file else {
            return 0;
        };
        let saved: Vec<PodInfo> = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "ignoring unreadable pod state file");
                    return 0;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read pod state file");
                return 0;
            }
        };
        let mut restored = 0;
        for info in saved {
            if !info.netns.exists() {
                info!(pod = %info.name, "pod netns is gone; not restoring");
                continue;
            }
            let name = info.name.clone();
            match self.add(AddPod::from(info)).await {
                Ok(true) => restored += 1,
                Ok(false) => {}
                Err(e) => warn!(pod = %name, error = %e, "restoring pod failed"),
            }
        }
        // Persist what actually came back (drops pods that are gone).
        let pods = self.pods.lock().await;
        if let Err(e) = self.persist(&pods) {
            warn!(error = %e, "persisting restored pod set failed");
        }
        restored
    }

    /// Drains every pod at once (not its capture: a restarted ztunnel takes the pods back):
    /// listeners stop accepting, HBONE connections get GOAWAY and finish their streams, and
    /// whatever is left at `deadline` is cut.
    pub async fn shutdown(&self, deadline: Duration) {
        let mut pods = self.pods.lock().await;
        let mut all = Vec::new();
        for (_, running) in pods.drain() {
            running.drain.start();
            all.push(running);
        }
        let wait = async {
            for running in all.iter_mut() {
                while running.tasks.join_next().await.is_some() {}
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        for mut running in all {
            running.tasks.abort_all();
        }
    }

    async fn wait_for_workload(&self, ip: IpAddr) -> Option<Arc<mesh::state::Workload>> {
        let mut changes = self.shared.state.subscribe();
        let wait = async {
            loop {
                if let Some(w) = self.shared.state.snapshot().workload_by_ip(ip) {
                    return w.clone();
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(self.config_wait, wait).await.ok()
    }

    fn pod_netns(&self, pod: &Pod) -> PodNetns {
        PodNetns {
            netns: pod.info.netns.clone(),
            mark: self.shared.mark,
            ip: pod.info.ip,
            worker: pod.netns.clone(),
            dns: self.shared.dns_capture,
        }
    }

    async fn install(&self, pod: &Pod, fds: &ListenerFds) -> Result<(), PodError> {
        self.capture
            .install(&self.pod_netns(pod), fds)
            .await
            .map_err(|source| PodError::Capture {
                pod: format!("{}/{}", pod.info.namespace, pod.info.name),
                source,
            })
    }

    fn open_netns(&self, path: &Path) -> Result<Netns, NetnsError> {
        if self.own_netns {
            Netns::open_own(path)
        } else {
            Netns::open(path)
        }
    }

    async fn start(&self, info: PodInfo, netns: Netns) -> Result<Running, PodError> {
        let label = format!("{}/{}", info.namespace, info.name);
        let mut pod = Pod::new(&self.shared, info, netns.clone(), self.original_source).map_err(
            |source| PodError::Identity {
                pod: label.clone(),
                source,
            },
        )?;
        pod.destination = self.capture.destination();
        if let Some(certs) = &self.shared.certs {
            certs.ensure(&pod.identity);
            if tokio::time::timeout(CERT_WAIT, certs.wait_for(&pod.identity))
                .await
                .is_err()
            {
                return Err(PodError::NoCertificate {
                    pod: label,
                    identity: pod.identity.to_string(),
                    secs: CERT_WAIT.as_secs(),
                });
            }
        }
        let listeners = PodListeners::open(&netns, self.shared.mark, self.shared.dns_capture)
            .map_err(|source| PodError::Listeners {
                pod: label.clone(),
                source,
            })?;
        let fds = listeners.fds().map_err(|source| PodError::Listeners {
            pod: label.clone(),
            source,
        })?;
        let pod = Arc::new(pod);
        let (drain, watch) = Drain::new();
        let mut tasks = JoinSet::new();
        let span = tracing::info_span!("pod", pod = %label);
        let server_config =
            self.shared
                .tls
                .server_config(&pod.identity)
                .map_err(|e| PodError::Listeners {
                    pod: label.clone(),
                    source: std::io::Error::other(e),
                })?;
        let server = Server::new(
            Arc::new(server_config),
            Inbound {
                shared: self.shared.clone(),
                pod: pod.clone(),
            },
            self.shared.settings.clone(),
        )
        .with_pending_limits(self.shared.limits.hbone_pending.clone());
        tasks.spawn(
            server
                .serve(listeners.hbone, watch.clone(), Duration::from_secs(5))
                .instrument(span.clone()),
        );
        tasks.spawn(
            outbound::serve(
                self.shared.clone(),
                pod.clone(),
                listeners.outbound,
                watch.clone(),
            )
            .instrument(span.clone()),
        );
        tasks.spawn(
            inbound_plain::serve(
                self.shared.clone(),
                pod.clone(),
                listeners.inbound_plain,
                watch.clone(),
            )
            .instrument(span.clone()),
        );
        if let (Some(udp), Some(tcp)) = (listeners.dns_udp, listeners.dns_tcp) {
            tasks.spawn(
                crate::dns::serve(self.shared.clone(), pod.clone(), udp, tcp, watch)
                    .instrument(span),
            );
        }
        let running = Running {
            pod,
            fds,
            drain,
            tasks,
        };
        if let Err(e) = self.install(&running.pod, &running.fds).await {
            // Roll back: rules may be half there, listeners are open.
            let _ = self.capture.remove(&self.pod_netns(&running.pod)).await;
            self.stop(running).await;
            return Err(e);
        }
        if let Some(bypass) = self.capture.bypass(&self.pod_netns(&running.pod)) {
            let _ = running.pod.sockets.bypass.set(bypass);
        }
        info!(pod = %label, identity = %running.pod.identity, "pod captured");
        Ok(running)
    }

    async fn stop(&self, running: Running) {
        running.drain.start();
        let mut tasks = running.tasks;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// Stops refreshing `identity`'s certificate unless another captured pod still uses it.
    fn forget_unused(&self, pods: &HashMap<String, Running>, identity: &mesh::Identity) {
        if let Some(certs) = &self.shared.certs {
            if !pods.values().any(|r| &r.pod.identity == identity) {
                certs.forget(identity);
            }
        }
    }

    fn persist(&self, pods: &HashMap<String, Running>) -> Result<(), PodError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let mut infos: Vec<&PodInfo> = pods.values().map(|r| &r.pod.info).collect();
        infos.sort_by(|a, b| a.uid.cmp(&b.uid));
        let bytes = serde_json::to_vec_pretty(&infos).map_err(|e| PodError::StateFile {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(path, &bytes).map_err(|source| PodError::StateFile {
            path: path.clone(),
            source,
        })
    }
}

/// Writes via a temporary file and rename, so a crash never leaves a torn state file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
