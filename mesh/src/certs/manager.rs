//! Keeps a certificate for every local identity: fetch on first use (new key and CSR every
//! time), refresh at half life with jitter, back off on failure while the old certificate keeps
//! serving until it expires. One task per identity; all end with the manager.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rustls_pki_types::CertificateDer;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};

use super::csr::generate_csr;
use super::error::CaError;
use super::provider::CertificateProvider;
use super::roots::TrustRoots;
use super::store::CertStore;
use super::workload::WorkloadCert;
use crate::Identity;

/// First retry delay after a failed fetch; doubles per failure up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two attempts while the CA keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Refreshes happen at half life ± this fraction of the lifetime, so that the certificates of
/// a node restarted at once do not all hit the CA in the same second.
const JITTER: f64 = 0.1;

/// Fetches and refreshes certificates into a [`CertStore`]. Dropping it (or
/// [`CertManager::shutdown`]) stops every refresh task; certificates already in the store stay.
pub struct CertManager {
    shared: Arc<Shared>,
    /// Runtime the refresh tasks run on: the one `new` was called on.
    runtime: tokio::runtime::Handle,
}

/// What the refresh tasks share with the manager.
struct Shared {
    store: CertStore,
    /// Updated from the root at the end of each chain the CA returns.
    roots: TrustRoots,
    provider: Arc<dyn CertificateProvider>,
    /// Validity asked of the CA for every certificate.
    ttl: Duration,
    /// Which identities are managed. Installing a certificate happens under this lock after
    /// checking the task still owns its identity, so a `forget` can never be undone by a
    /// fetch that was in flight.
    workers: Mutex<Workers>,
    /// Woken whenever a certificate is installed, for [`CertManager::wait_for`].
    installed: Notify,
}

#[derive(Default)]
struct Workers {
    next_id: u64,
    active: HashMap<Identity, Worker>,
    shut_down: bool,
}

struct Worker {
    /// Distinguishes this task from an earlier one for the same identity.
    id: u64,
    task: AbortHandle,
}

impl CertManager {
    /// A manager asking `provider` for certificates valid `ttl`. Must be called within a Tokio
    /// runtime; the refresh tasks run on it.
    pub fn new(
        store: CertStore,
        roots: TrustRoots,
        provider: Arc<dyn CertificateProvider>,
        ttl: Duration,
    ) -> Self {
        CertManager {
            shared: Arc::new(Shared {
                store,
                roots,
                provider,
                ttl,
                workers: Mutex::new(Workers::default()),
                installed: Notify::new(),
            }),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Starts keeping a certificate for `identity` (idempotent). Returns at once; the first
    /// fetch runs in the background, see [`CertManager::wait_for`].
    pub fn ensure(&self, identity: &Identity) {
        let mut workers = self.shared.workers.lock();
        if workers.shut_down || workers.active.contains_key(identity) {
            return;
        }
        let id = workers.next_id;
        workers.next_id += 1;
        let task = self
            .runtime
            .spawn(refresh_loop(self.shared.clone(), identity.clone(), id));
        let task = task.abort_handle();
        workers.active.insert(identity.clone(), Worker { id, task });
    }

    /// Stops refreshing `identity` and removes its certificate from the store.
    pub fn forget(&self, identity: &Identity) {
        let mut workers = self.shared.workers.lock();
        if let Some(worker) = workers.active.remove(identity) {
            worker.task.abort();
        }
        self.shared.store.remove(identity);
    }

    /// The identities being kept fresh, sorted.
    pub fn managed(&self) -> Vec<Identity> {
        let mut ids: Vec<_> = self.shared.workers.lock().active.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Waits until the store holds an unexpired certificate for `identity`. Call
    /// [`CertManager::ensure`] first, and bound the wait with a timeout: while the CA fails this
    /// waits forever.
    pub async fn wait_for(&self, identity: &Identity) -> Arc<WorkloadCert> {
        loop {
            // Register interest before looking, so an install between the look and the wait
            // is not missed.
            let notified = self.shared.installed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(cert) = self.shared.store.get(identity) {
                if !cert.is_expired() {
                    return cert;
                }
            }
            notified.await;
        }
    }

    /// Stops every refresh task; later `ensure` calls do nothing.
    pub fn shutdown(&self) {
        let mut workers = self.shared.workers.lock();
        workers.shut_down = true;
        for (_, worker) in workers.active.drain() {
            worker.task.abort();
        }
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("managed", &self.managed())
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

/// When the held certificate needs attention, in runtime time.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    refresh: Instant,
    expiry: Instant,
}

impl Deadlines {
    fn of(cert: &WorkloadCert) -> Self {
        let jitter = rand::random_range(-JITTER..=JITTER);
        let (refresh_in, expires_in) = refresh_schedule(
            cert.not_before(),
            cert.not_after(),
            SystemTime::now(),
            jitter,
        );
        // Certificate times are wall-clock; timers run on the runtime clock (which tests pause),
        // so convert once, here.
        let now = Instant::now();
        Deadlines {
            refresh: now + refresh_in,
            expiry: now + expires_in,
        }
    }
}

/// How long until a certificate valid `not_before..not_after` should be refreshed (half life
/// plus `jitter` × lifetime, never past expiry) and until it expires, seen from `now`.
fn refresh_schedule(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> (Duration, Duration) {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let fraction = (0.5 + jitter).clamp(0.0, 1.0);
    let target = not_before
        .checked_add(lifetime.mul_f64(fraction))
        .unwrap_or(not_after)
        .min(not_after);
    let until = |t: SystemTime| t.duration_since(now).unwrap_or_default();
    (until(target), until(not_after))
}

/// Delay before attempt number `failures + 1`: 1 s, 2 s, 4 s, … capped at [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    INITIAL_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// One identity's life: fetch, install, sleep until refresh, repeat; on failure back off and,
/// if the held certificate runs out meanwhile, remove it at its expiry.
async fn refresh_loop(shared: Arc<Shared>, identity: Identity, worker: u64) {
    let mut held: Option<Deadlines> = None;
    // A certificate already in the store (placed by the lab, or by an earlier manager) is used
    // until its own refresh time instead of being replaced at once.
    if let Some(cert) = shared.store.get(&identity).filter(|c| !c.is_expired()) {
        let deadlines = Deadlines::of(&cert);
        held = Some(deadlines);
        sleep_until(deadlines.refresh).await;
    }
    let mut failures = 0u32;
    loop {
        match fetch(&shared, &identity).await {
            Ok((cert, root)) => {
                let deadlines = Deadlines::of(&cert);
                tracing::info!(
                    %identity,
                    serial = cert.serial(),
                    refresh_in = ?deadlines.refresh.saturating_duration_since(Instant::now()),
                    "workload certificate installed"
                );
                if !shared.install(worker, cert, root) {
                    return;
                }
                failures = 0;
                held = Some(deadlines);
                sleep_until(deadlines.refresh).await;
            }
            Err(error) => {
                failures += 1;
                let delay = backoff(failures);
                if error.is_retryable() {
                    tracing::warn!(%identity, %error, retry_in = ?delay, "cannot get a workload certificate");
                } else {
                    tracing::error!(%identity, %error, retry_in = ?delay, "cannot get a workload certificate");
                }
                let wake = Instant::now() + delay;
                if let Some(deadlines) = held.filter(|d| d.expiry <= wake) {
                    sleep_until(deadlines.expiry).await;
                    shared.remove_expired(worker, &identity);
                    held = None;
                }
                sleep_until(wake).await;
            }
        }
    }
}

/// A fresh key, a CSR, and the provider's answer turned into a certificate.
async fn fetch(
    shared: &Shared,
    identity: &Identity,
) -> Result<(WorkloadCert, Option<CertificateDer<'static>>), CaError> {
    let csr = generate_csr(identity)?;
    let chain = shared.provider.sign(identity, &csr.pem, shared.ttl).await?;
    WorkloadCert::from_ca_chain(identity.clone(), &chain, csr.key).map_err(|e| {
        CaError::BadResponse {
            identity: identity.clone(),
            reason: e.to_string(),
        }
    })
}

impl Shared {
    /// Installs `cert` if task `worker` still owns its identity; false means the task must end.
    fn install(
        &self,
        worker: u64,
        cert: WorkloadCert,
        root: Option<CertificateDer<'static>>,
    ) -> bool {
        let workers = self.workers.lock();
        if workers.active.get(cert.identity()).map(|w| w.id) != Some(worker) {
            return false;
        }
        if let Some(root) = root {
            self.update_root(root);
        }
        self.store.insert(cert);
        drop(workers);
        self.installed.notify_waiters();
        true
    }

    /// Trusts the root the CA signed under if it is not trusted yet. The CA reports one root;
    /// when it changes (root rotation), the new one replaces the set.
    fn update_root(&self, root: CertificateDer<'static>) {
        if self.roots.snapshot().contains(&root) {
            return;
        }
        match self.roots.replace(vec![root]) {
            Ok(()) => tracing::info!("trust root updated from the CA's certificate chain"),
            Err(error) => {
                tracing::warn!(%error, "CA returned a root that cannot be trusted; keeping the old roots")
            }
        }
    }

    fn remove_expired(&self, worker: u64, identity: &Identity) {
        let workers = self.workers.lock();
        if workers.active.get(identity).map(|w| w.id) == Some(worker) {
            tracing::error!(%identity, "workload certificate expired and could not be renewed; removed");
            self.store.remove(identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_half_life_with_bounded_jitter() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(1000);
        let (r, e) = refresh_schedule(nb, na, nb, 0.0);
        assert_eq!(
            (r, e),
            (Duration::from_secs(500), Duration::from_secs(1000))
        );
        let (r, _) = refresh_schedule(nb, na, nb, 0.1);
        assert_eq!(r, Duration::from_secs(600));
        let (r, _) = refresh_schedule(nb, na, nb, -0.1);
        assert_eq!(r, Duration::from_secs(400));
        // Absurd jitter still never goes past expiry.
        let (r, _) = refresh_schedule(nb, na, nb, 7.0);
        assert_eq!(r, Duration::from_secs(1000));
        // Already past the refresh point: refresh now.
        let (r, e) = refresh_schedule(nb, na, nb + Duration::from_secs(700), 0.0);
        assert_eq!((r, e), (Duration::ZERO, Duration::from_secs(300)));
        // Inverted validity (malformed certificate): refresh at once, no panic.
        assert_eq!(
            refresh_schedule(na, nb, nb, 0.0),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
