//! The pipeline from manifests to served resources: translate each new manifest snapshot and
//! publish the [`ResourceSet`], at most once per debounce interval, so that a burst of edits
//! (an editor saving several files, a lab writing pod statuses) costs one push, not one each.
//! Fetched JWKS keys (`crate::jwks`) are the other input: a change of keys re-translates too.

use std::sync::Arc;
use std::time::Duration;

use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::client::WaypointAccounts;
use super::resources::ResourceSet;
use crate::manifests::Manifests;
use crate::translate::{translate_with_jwks, JwksDocuments, TranslateOptions};

/// Shortest time between two publications.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// Translates the current manifests at once (so the first client never sees an empty set),
/// then follows `manifests` in a task. The returned watch closes when that task ends: when
/// `manifests`' sender is dropped, which is how shutdown ends the ADS streams.
pub fn spawn_publisher(
    manifests: watch::Receiver<Arc<Manifests>>,
    options: TranslateOptions,
    debounce: Duration,
) -> (watch::Receiver<Arc<ResourceSet>>, JoinHandle<()>) {
    // No keys, and a sender kept by nobody: the watch never changes.
    let (_, keys) = watch::channel(Arc::new(JwksDocuments::new()));
    spawn_publisher_with_jwks(manifests, keys, options, debounce)
}

/// [`spawn_publisher`] that also follows the fetched JWKS documents (`crate::jwks`).
pub fn spawn_publisher_with_jwks(
    mut manifests: watch::Receiver<Arc<Manifests>>,
    mut keys: watch::Receiver<Arc<JwksDocuments>>,
    options: TranslateOptions,
    debounce: Duration,
) -> (watch::Receiver<Arc<ResourceSet>>, JoinHandle<()>) {
    let first = build(
        &manifests.borrow_and_update(),
        &keys.borrow_and_update(),
        &options,
    );
    let (tx, rx) = watch::channel(Arc::new(first));
    let task = tokio::spawn(async move {
        loop {
            // At most one publication per interval: changes that arrive meanwhile are seen
            // together once it is over (the watch keeps only the latest).
            tokio::time::sleep(debounce).await;
            let source_closed = tokio::select! {
                changed = manifests.changed() => changed.is_err(),
                // Keys without a fetcher (closed) change nothing: wait for the manifests.
                Ok(()) = keys.changed() => false,
            };
            if source_closed {
                debug!("xDS publisher: source closed, stopping");
                return;
            }
            let snapshot = manifests.borrow_and_update().clone();
            let jwks = keys.borrow_and_update().clone();
            let options = options.clone();
            // Translation of a large cluster takes milliseconds of CPU: off the IO threads.
            let set = match tokio::task::spawn_blocking(move || build(&snapshot, &jwks, &options))
                .await
            {
                Ok(set) => set,
                Err(e) => {
                    tracing::error!("xDS publisher: translation panicked: {e}");
                    continue;
                }
            };
            let counts = (set.len(ADDRESS_TYPE_URL), set.len(AUTHORIZATION_TYPE_URL));
            let published = tx.send_if_modified(|current| {
                if current.same_as(&set) {
                    return false;
                }
                *current = Arc::new(set);
                true
            });
            if published {
                info!(
                    addresses = counts.0,
                    authorizations = counts.1,
                    "xDS: publishing changed resources"
                );
            } else {
                debug!("xDS: manifests changed but no resource did");
            }
        }
    });
    (rx, task)
}

fn build(manifests: &Manifests, jwks: &JwksDocuments, options: &TranslateOptions) -> ResourceSet {
    let translated = translate_with_jwks(manifests, options, jwks);
    let mut set = ResourceSet::from_translated(&translated);
    set.set_waypoint_accounts(WaypointAccounts::from_manifests(manifests));
    debug!(
        addresses = translated.addresses.len(),
        authorizations = translated.authorizations.len(),
        warnings = translated.warnings.len(),
        "translated manifests"
    );
    set
}
