//! The set of captured pods on this node: capture on CNI ADD, release on DEL, persist the set,
//! and re-capture every persisted pod after a restart before ztunnel reports ready.
//!
//! Order on ADD matters: listeners first, then the redirect rules, so there is never a moment
//! where capture sends the pod's traffic to a port nobody listens on. Any failure rolls back.
//!
//! Locking: the pod set is locked only to look, insert or take out, never across a wait. An
//! ADD waits for the pod's configuration and certificate (up to 15 s each) without it, so a
//! slow ADD delays neither another pod's ADD or DEL nor `list` (`/config_dump`). ADD and DEL
//! of the same uid are still ordered, by a lock of that uid alone.
//!
//! DEL drains, as shutdown does: the pod's listeners stop accepting, its HBONE connections
//! get GOAWAY, and its open connections get up to the drain deadline
//! (`DRAIN_DEADLINE_SECONDS`) to finish before they are cut. The CNI plugin gives DEL 10 s, so
//! DEL answers after at most [`DEL_WAIT`] of that drain, and removes the capture only then
//! (the rules refuse new connections meanwhile, and the policy route keeps carrying the
//! replies of connections made from the client's address). Usually that is the whole drain
//! (the app is gone by DEL, so its connections end at once), and everything the pod held is
//! released when the plugin hears back. What is still open then drains on in the background,
//! tracked by the manager, cut at the deadline, and cut at once by shutdown's own deadline.

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
/// Connections get this long to finish after a DEL or at shutdown, unless configured
/// (`DRAIN_DEADLINE_SECONDS`, see [`PodManager::with_drain_deadline`]).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// The most a DEL waits for the pod's drain before answering (the rest continues in the
/// background): half the 10 s the CNI plugin waits for the answer.
pub const DEL_WAIT: Duration = Duration::from_secs(5);

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
    /// The listeners' sockets as the capture backend knows them (kept for a repeated ADD,
    /// which re-installs the rules outside the set lock).
    fds: Arc<ListenerFds>,
    /// Tells the pod's listeners and connections to finish (DEL, shutdown).
    drain: Drain,
    /// The pod's listeners; each owns its connections, so these end when they have.
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
    /// How long a removed pod's connections get to finish (DEL, shutdown).
    drain_deadline: Duration,
    /// The captured pods by uid. Locked only to look, insert or take out: never across a
    /// wait (see the module doc).
    pods: tokio::sync::Mutex<HashMap<String, Running>>,
    /// One lock per uid with an ADD or DEL in progress, so those of the same pod run in
    /// order; an entry lives while someone holds or waits for it.
    ops: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Drains of removed pods that outlived [`DEL_WAIT`]; each ends by the drain deadline,
    /// and shutdown cuts them at its own.
    draining: parking_lot::Mutex<JoinSet<()>>,
    /// The identities of ADDs in progress (one entry per ADD), whose certificates a DEL of
    /// another pod must not forget while they wait for them outside the set lock.
    adding: parking_lot::Mutex<Vec<mesh::Identity>>,
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
            drain_deadline: DRAIN_DEADLINE,
            pods: tokio::sync::Mutex::new(HashMap::new()),
            ops: parking_lot::Mutex::new(HashMap::new()),
            draining: parking_lot::Mutex::new(JoinSet::new()),
            adding: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Sets how long a removed pod's connections (and every pod's HBONE streams at
    /// shutdown) get to finish before they are cut.
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
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
        let _op = self.lock_uid(&info.uid).await;
        self.add_locked(info, handle).await
    }

    /// The part of [`PodManager::add`] that runs while holding the uid's lock.
    async fn add_locked(&self, info: PodInfo, handle: Netns) -> Result<bool, PodError> {
        let same = {
            let pods = self.pods.lock().await;
            pods.get(&info.uid)
                .filter(|running| running.pod.info == info)
                .map(|running| (running.pod.clone(), running.fds.clone()))
        };
        if let Some((pod, fds)) = same {
            // A repeated ADD (runtime retry): make sure the rules are there and stop.
            self.install(&pod, &fds).await?;
            return Ok(true);
        }
        let old = {
            let mut pods = self.pods.lock().await;
            let old = pods.remove(&info.uid);
            if let Some(old) = &old {
                self.forget_unused(&pods, &old.pod.identity);
                self.shared.metrics.pods.stopped.inc();
                self.shared.metrics.pods.active.set(pods.len() as i64);
            }
            old
        };
        if let Some(old) = old {
            // The same uid in another netns or with another identity: the old listeners may
            // sit on the ports the new ones need, so they go now.
            self.stop(old).await;
        }
        // Announced until the pod is in the set (an invalid identity fails in `start`).
        let _adding = mesh::Identity::new(
            self.shared.tls.trust_domain(),
            &info.namespace,
            &info.service_account,
        )
        .ok()
        .map(|identity| Adding::new(&self.adding, identity));
        // The wait for the certificate happens here, with no lock but the uid's. Pending in
        // the metrics until then, whatever the outcome.
        let pending = &self.shared.metrics.pods.pending;
        pending.inc();
        let started = self.start(info, handle).await;
        pending.dec();
        let running = started?;
        let mut pods = self.pods.lock().await;
        pods.insert(running.pod.info.uid.clone(), running);
        self.shared.metrics.pods.started.inc();
        self.shared.metrics.pods.active.set(pods.len() as i64);
        self.persist(&pods)?;
        Ok(true)
    }

    /// Stops capturing a pod and drains its connections (see the module doc: the answer
    /// comes after at most [`DEL_WAIT`]); returns whether it was captured.
    pub async fn remove(&self, uid: &str) -> Result<bool, PodError> {
        let _op = self.lock_uid(uid).await;
        self.remove_locked(uid).await
    }

    async fn remove_locked(&self, uid: &str) -> Result<bool, PodError> {
        let running = {
            let mut pods = self.pods.lock().await;
            let Some(running) = pods.remove(uid) else {
                return Ok(false);
            };
            self.shared.metrics.pods.stopped.inc();
            self.shared.metrics.pods.active.set(pods.len() as i64);
            self.forget_unused(&pods, &running.pod.identity);
            running
        };
        let Running {
            pod,
            fds,
            drain,
            tasks,
        } = running;
        // Listeners close first; the capture's copies of them too, or the kernel would keep
        // queueing connections nobody accepts any more.
        drain.start();
        drop(fds);
        let label = format!("{}/{}", pod.info.namespace, pod.info.name);
        // The drain, for as long as DEL may wait, runs with the rules still in place: they
        // send new connections to the closed listeners (refused, never let through
        // uncaptured), and the policy route still brings the app's replies back to the
        // connections made from the client's own address.
        let mut tasks = tasks;
        let all = async { while tasks.join_next().await.is_some() {} };
        let drained = tokio::time::timeout(self.drain_deadline.min(DEL_WAIT), all)
            .await
            .is_ok();
        if let Err(e) = self.capture.remove(&self.pod_netns(&pod)).await {
            warn!(pod = %label, error = %e, "removing capture failed (the netns may be gone)");
        }
        drop(pod);
        if !drained {
            self.drain_on(label, drain, tasks).await;
        }
        self.persist(&*self.pods.lock().await)?;
        Ok(true)
    }

    /// A removed pod's connections still open after [`DEL_WAIT`]: a background drain cuts
    /// them at the drain deadline (at once if that has passed).
    async fn drain_on(&self, label: String, drain: Drain, mut tasks: JoinSet<()>) {
        let rest = self.drain_deadline.saturating_sub(DEL_WAIT);
        if rest.is_zero() {
            warn!(pod = %label, open = tasks.len(), "drain deadline passed; closing the removed pod's connections");
            return tasks.shutdown().await;
        }
        info!(pod = %label, open = tasks.len(), "pod removed; its connections drain in the background");
        let mut draining = self.draining.lock();
        // Reap the background drains that are over, so the set holds only live ones.
        while draining.try_join_next().is_some() {}
        draining.spawn(async move {
            // Kept until the end: a dropped trigger reads as "drain", but say it plainly.
            let _drain = drain;
            let all = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(rest, all).await.is_err() {
                warn!(pod = %label, open = tasks.len(), "drain deadline passed; closing the removed pod's connections");
                tasks.shutdown().await;
            }
        });
    }

    /// Waits for the lock of `uid`: ADD and DEL of one pod run in order, those of different
    /// pods side by side. Held until the returned guard drops (also when the caller's future
    /// is dropped mid-way).
    async fn lock_uid(&self, uid: &str) -> UidOp<'_> {
        let lock = self.ops.lock().entry(uid.to_string()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        UidOp {
            ops: &self.ops,
            uid: uid.to_string(),
            lock,
            guard: Some(guard),
        }
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
    /// whatever is left at `deadline` is cut, as are removed pods still draining.
    pub async fn shutdown(&self, deadline: Duration) {
        let taken: Vec<Running> = {
            let mut pods = self.pods.lock().await;
            pods.drain().map(|(_, running)| running).collect()
        };
        self.shared.metrics.pods.stopped.inc_by(taken.len() as u64);
        self.shared.metrics.pods.active.set(0);
        // Every listener closes now, the capture's copies too (else the kernel would keep
        // queueing new connections that nobody accepts any more): new connections are
        // refused while the open ones finish.
        let mut all: Vec<(Drain, JoinSet<()>)> = taken
            .into_iter()
            .map(|Running { drain, tasks, .. }| {
                drain.start();
                (drain, tasks)
            })
            .collect();
        let mut draining = std::mem::take(&mut *self.draining.lock());
        let wait = async {
            for (_, tasks) in all.iter_mut() {
                while tasks.join_next().await.is_some() {}
            }
            while draining.join_next().await.is_some() {}
        };
        if tokio::time::timeout(deadline, wait).await.is_err() {
            warn!("drain deadline passed; closing the connections still open");
        }
        for (_, tasks) in all.iter_mut() {
            tasks.shutdown().await;
        }
        draining.shutdown().await;
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
                .serve(listeners.hbone, watch.clone(), self.drain_deadline)
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
            fds: Arc::new(fds),
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

    /// Stops a pod's tasks at once (a failed ADD, a pod replaced under the same uid).
    async fn stop(&self, running: Running) {
        running.drain.start();
        let mut tasks = running.tasks;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// Stops refreshing `identity`'s certificate unless another captured pod still uses it,
    /// or an ADD in progress is about to (it may be waiting for that very certificate).
    fn forget_unused(&self, pods: &HashMap<String, Running>, identity: &mesh::Identity) {
        if let Some(certs) = &self.shared.certs {
            let used = pods.values().any(|r| &r.pod.identity == identity)
                || self.adding.lock().contains(identity);
            if !used {
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

/// An ADD or DEL in progress for one uid (see [`PodManager::lock_uid`]).
struct UidOp<'a> {
    ops: &'a parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    uid: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UidOp<'_> {
    /// Gives the uid's lock back, and forgets it when nobody else holds or waits for it.
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut ops = self.ops.lock();
        // Referenced by the map and `self.lock` alone: no other ADD or DEL of this uid holds
        // or waits for it (a new one clones it from the map, under this same lock).
        if Arc::strong_count(&self.lock) == 2 {
            ops.remove(&self.uid);
        }
    }
}

/// An identity announced in [`PodManager::adding`] for as long as this lives.
struct Adding<'a> {
    adding: &'a parking_lot::Mutex<Vec<mesh::Identity>>,
    identity: mesh::Identity,
}

impl<'a> Adding<'a> {
    fn new(adding: &'a parking_lot::Mutex<Vec<mesh::Identity>>, identity: mesh::Identity) -> Self {
        adding.lock().push(identity.clone());
        Adding { adding, identity }
    }
}

impl Drop for Adding<'_> {
    fn drop(&mut self) {
        let mut adding = self.adding.lock();
        if let Some(i) = adding.iter().position(|id| id == &self.identity) {
            adding.swap_remove(i);
        }
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
