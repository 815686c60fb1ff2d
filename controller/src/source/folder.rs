//! The folder source: loads every YAML file under a directory, then polls it and reloads when
//! any file appears, disappears or changes (size, mtime or content). Polling rather than
//! inotify: it works the same on every filesystem (bind mounts, network shares, ConfigMap
//! volumes whose symlinks are swapped), and a few hundred milliseconds is well within the
//! "a manifest edit applies within a second" budget.
//!
//! A malformed object is logged with its file, object and field, and left out; the rest of
//! the folder still applies.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::manifests::{load_dir, Manifests};

/// Default time between two scans of the folder.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Directory depth scanned, as deep as the loader goes.
const MAX_DEPTH: usize = 16;

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
        let (tx, rx) = watch::channel(Arc::new(load(&self.dir)));
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(self.poll) => {}
                    () = tx.closed() => return,
                }
                let dir = self.dir.clone();
                let previous = fingerprint;
                // File IO and parsing block: keep them off the runtime's IO threads.
                let scanned = tokio::task::spawn_blocking(move || {
                    let now = self::fingerprint(&dir);
                    (now != previous).then(|| (now, load(&dir)))
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

/// Loads `dir`, logging every rejected object; returns the rest.
pub fn load(dir: &Path) -> Manifests {
    let result = load_dir(dir);
    for error in &result.errors {
        warn!(
            dir = %dir.display(),
            field = error.field().unwrap_or("-"),
            "manifest rejected, the rest still applies: {error}"
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
        "manifests loaded"
    );
    result.manifests
}

/// A hash of every file's path, size, mtime and content under `dir` (hidden entries skipped,
/// as the loader skips them). Content is included because an editor can rewrite a file
/// within one mtime tick at the same size.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut files = Vec::new();
    collect(dir, 0, &mut files);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for path in files {
        path.hash(&mut hasher);
        match fs::metadata(&path) {
            Ok(meta) => {
                meta.len().hash(&mut hasher);
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .hash(&mut hasher);
            }
            Err(e) => e.kind().hash(&mut hasher),
        }
        match fs::read(&path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.kind().hash(&mut hasher),
        }
    }
    hasher.finish()
}

fn collect(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        // An unreadable folder still changes the fingerprint: it is in the list as itself.
        files.push(dir.to_path_buf());
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => collect(&path, depth + 1, files),
            _ => files.push(path),
        }
    }
}
