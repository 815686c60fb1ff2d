//! The folder source: loads every YAML file under a directory, then polls it and reloads when
//! any file appears, disappears or changes (size, mtime or content). Polling rather than
//! inotify: it works the same on every filesystem (bind mounts, network shares, ConfigMap
//! volumes whose symlinks are swapped), and a few hundred milliseconds is well within the
//! "a manifest edit applies within a second" budget.
//!
//! A malformed object is logged with its file, object and field; the rest of the folder still
//! applies. An edit that makes a file invalid removes nothing that file held while it was
//! valid: its last valid version stays in force until the file is fixed ([`LastValid`]), so a
//! typo in a DENY policy never stops it denying.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::manifests::{fingerprint, LastValid, ManifestError, Manifests};

/// Default time between two scans of the folder.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(300);

/// A watched folder of manifests.
#[derive(Debug)]
pub struct FolderSource {
    dir: PathBuf,
    poll: Duration,
}

impl FolderSource {
    /// Watches `dir`, scanning it every `poll`.
    pub fn new(dir: impl Into<PathBuf>, poll: Duration) -> Self {
        FolderSource {
            dir: dir.into(),
            poll,
        }
    }

    /// Loads the folder now, then keeps reloading it in a task; the watch always holds the
    /// latest snapshot and closes when the task ends (when every receiver is dropped).
    pub fn start(self) -> (watch::Receiver<Arc<Manifests>>, JoinHandle<()>) {
        let mut fingerprint = fingerprint(&self.dir);
        let history = Arc::new(parking_lot::Mutex::new(LastValid::default()));
        let (tx, rx) = watch::channel(Arc::new(load_keeping(&self.dir, &mut history.lock())));
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(self.poll) => {}
                    () = tx.closed() => return,
                }
                let dir = self.dir.clone();
                let previous = fingerprint;
                let history = history.clone();
                // File IO and parsing block: keep them off the runtime's IO threads.
                let scanned = tokio::task::spawn_blocking(move || {
                    let now = self::fingerprint(&dir);
                    (now != previous).then(|| (now, load_keeping(&dir, &mut history.lock())))
                })
                .await;
                match scanned {
                    Ok(Some((now, manifests))) => {
                        fingerprint = now;
                        if tx.send(Arc::new(manifests)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!("manifest folder scan failed: {e}"),
                }
            }
        });
        (rx, task)
    }
}

/// Loads `dir` once, logging every rejected object; returns the rest. Keeps nothing from an
/// earlier load: that is what [`FolderSource`] adds.
pub fn load(dir: &Path) -> Manifests {
    load_keeping(dir, &mut LastValid::default())
}

/// Loads `dir`, keeping in force the last valid version of what a file with errors held
/// (see [`LastValid`]), and logs each rejection with what stays in force because of it.
pub fn load_keeping(dir: &Path, history: &mut LastValid) -> Manifests {
    let result = history.load_dir(dir);
    for error in &result.errors {
        let kept: Vec<&str> = result
            .kept
            .iter()
            .filter(|k| Some(k.file.as_path()) == error_file(error))
            .map(|k| k.object.as_str())
            .collect();
        let consequence = if kept.is_empty() {
            "not applied; the rest of the folder still applies".to_owned()
        } else {
            format!(
                "the last valid version stays in force: {} (fix the file to change it)",
                kept.join(", ")
            )
        };
        warn!(
            dir = %dir.display(),
            field = error.field().unwrap_or("-"),
            "manifest rejected: {error}; {consequence}"
        );
    }
    let m = &result.manifests;
    info!(
        dir = %dir.display(),
        namespaces = m.namespaces.len(),
        pods = m.pods.len(),
        services = m.services.len(),
        authorization_policies = m.authorization_policies.len(),
        peer_authentications = m.peer_authentications.len(),
        rejected = result.errors.len(),
        kept_from_earlier = result.kept.len(),
        "manifests loaded"
    );
    result.manifests
}

/// The file an error is about.
fn error_file(error: &ManifestError) -> Option<&Path> {
    match error {
        ManifestError::Read { path, .. } => Some(path),
        ManifestError::Invalid { file, .. } | ManifestError::Duplicate { file, .. } => Some(file),
    }
}
