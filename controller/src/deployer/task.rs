//! The deployer's loop: follows the Kubernetes source's snapshots and reconciles each waypoint
//! Gateway when it appears or changes, when the mesh root changes, every resync period (which
//! repairs an edited or deleted object), and with backoff while its Deployment has no available
//! replica yet or the API fails. Deleted Gateways need nothing: the garbage collector deletes
//! what they own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{reconcile, Outcome, WaypointSettings};
use crate::manifests::{Gateway, Manifests, ObjectKey};
use crate::model::labels::WAYPOINT_GATEWAY_CLASS;

/// Time between two reconciles of a programmed waypoint that nothing changed.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
/// First wait before looking again at a waypoint that is starting or failed; doubled each time,
/// up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two looks at a waypoint that is starting or failing.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Deploys the waypoint Gateways of a cluster.
#[derive(Clone)]
pub struct WaypointDeployer {
    client: Client,
    settings: WaypointSettings,
    resync: Duration,
    first_retry: Duration,
}

impl std::fmt::Debug for WaypointDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaypointDeployer")
            .field("settings", &self.settings)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

/// What the loop remembers of one waypoint Gateway.
struct Tracked {
    /// The Gateway as last seen in a snapshot: a different one is reconciled at once.
    seen: Gateway,
    /// When to reconcile it next.
    due: Instant,
    /// The wait after the next failure or pending result.
    retry: Duration,
    /// The last outcome, so that only changes are logged at info level.
    last: Option<String>,
}

impl WaypointDeployer {
    /// Deploys through `client` with `settings`, resyncing every `DEFAULT_RESYNC`.
    pub fn new(client: Client, settings: WaypointSettings) -> Self {
        WaypointDeployer {
            client,
            settings,
            resync: DEFAULT_RESYNC,
            first_retry: FIRST_RETRY,
        }
    }

    /// Sets the time between two reconciles of a waypoint when nothing changed.
    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every;
        self
    }

    /// Sets the first wait before looking again at a starting or failed waypoint.
    pub fn first_retry(mut self, wait: Duration) -> Self {
        self.first_retry = wait;
        self
    }

    /// Follows `manifests` (the Kubernetes source's snapshots) and `root` (the mesh root's PEM)
    /// until either sender is dropped, or the task is aborted.
    pub fn spawn(
        self,
        mut manifests: watch::Receiver<Arc<Manifests>>,
        mut root: watch::Receiver<String>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tracked: BTreeMap<ObjectKey, Tracked> = BTreeMap::new();
            loop {
                let snapshot = manifests.borrow_and_update().clone();
                let root_changed = root.has_changed().unwrap_or(false);
                let pem = root.borrow_and_update().clone();
                let now = Instant::now();
                self.track(&snapshot, &mut tracked, root_changed, now);
                for (key, entry) in tracked.iter_mut().filter(|(_, t)| t.due <= now) {
                    self.reconcile_one(key, entry, &pem).await;
                }
                let next = tracked.values().map(|t| t.due).min();
                tokio::select! {
                    changed = manifests.changed() => if changed.is_err() { return },
                    changed = root.changed() => if changed.is_err() { return },
                    () = sleep_until(next) => {}
                }
            }
        })
    }

    /// Brings `tracked` to the waypoint Gateways of `snapshot`: new and changed ones are due
    /// now (all of them when the root changed), deleted ones are forgotten.
    fn track(
        &self,
        snapshot: &Manifests,
        tracked: &mut BTreeMap<ObjectKey, Tracked>,
        root_changed: bool,
        now: Instant,
    ) {
        let waypoints: BTreeMap<&ObjectKey, &Gateway> = snapshot
            .gateways
            .iter()
            .filter(|(_, g)| g.spec.gateway_class_name == WAYPOINT_GATEWAY_CLASS)
            .collect();
        tracked.retain(|key, _| waypoints.contains_key(key));
        for (key, gateway) in waypoints {
            match tracked.get_mut(key) {
                Some(entry) if entry.seen == *gateway && !root_changed => {}
                Some(entry) => {
                    entry.seen = gateway.clone();
                    entry.due = now;
                    entry.retry = self.first_retry;
                }
                None => {
                    tracked.insert(
                        key.clone(),
                        Tracked {
                            seen: gateway.clone(),
                            due: now,
                            retry: self.first_retry,
                            last: None,
                        },
                    );
                }
            }
        }
    }

    async fn reconcile_one(&self, key: &ObjectKey, entry: &mut Tracked, pem: &str) {
        let result = reconcile(&self.client, &self.settings, key, pem).await;
        let (wait, said) = match &result {
            Ok(Outcome::Programmed) => {
                entry.retry = self.first_retry;
                (self.resync, "programmed".to_owned())
            }
            Ok(Outcome::Pending) => (self.backoff(entry), "pending".to_owned()),
            Ok(Outcome::Conflict(why) | Outcome::Invalid(why)) => (self.resync, why.clone()),
            // The snapshot has not caught up yet; it will drop or change the entry.
            Ok(Outcome::NotWaypoint | Outcome::Gone) => (self.resync, "gone".to_owned()),
            Err(error) => (self.backoff(entry), error.to_string()),
        };
        entry.due = Instant::now() + wait;
        if entry.last.as_deref() == Some(said.as_str()) {
            debug!(gateway = %key, outcome = said, "waypoint reconciled");
            return;
        }
        match &result {
            Ok(Outcome::Programmed | Outcome::Pending) => {
                info!(gateway = %key, outcome = said, "waypoint")
            }
            Ok(Outcome::NotWaypoint | Outcome::Gone) => {
                debug!(gateway = %key, "waypoint Gateway no longer served")
            }
            Ok(Outcome::Conflict(_) | Outcome::Invalid(_)) => {
                warn!(gateway = %key, "waypoint not deployed: {said}")
            }
            Err(_) => warn!(
                gateway = %key,
                retry_secs = wait.as_secs_f32(),
                "waypoint not deployed: {said}"
            ),
        }
        entry.last = Some(said);
    }

    /// The wait before looking at `entry` again after a pending or failed reconcile.
    fn backoff(&self, entry: &mut Tracked) -> Duration {
        let wait = entry.retry;
        entry.retry = (entry.retry * 2).min(MAX_RETRY.max(self.first_retry));
        wait
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
