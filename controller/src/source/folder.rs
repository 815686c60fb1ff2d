//! The folder source: loads every YAML file under a directory, then reloads it when something
//! in it changes. Changes are watched (inotify, through `notify`), not polled: a reload reads
//! every file, and re-reading a large folder every few hundred milliseconds kept a quarter of
//! a core busy while nothing changed. A burst of events (an editor's save, `kubectl cp`, a
//! ConfigMap update) settles for `settle` before the one reload it causes.
//!
//! Watching alone is not trusted: inotify misses changes on some filesystems (network shares,
//! some bind mounts) and a watch dies with its directory. So every `recheck` (30 s) the source
//! also compares a stat-only fingerprint of the folder (each file's path, inode, size, mtime
//! and ctime; no file is opened) with the one taken at the last load, reloads on a difference,
//! and then re-arms the watcher, which evidently missed it. The directory itself is watched,
//! recursively, so a Kubernetes ConfigMap volume's atomic update (a new timestamped directory,
//! then the `..data` symlink renamed over the old one) is an event in the watched directory.
//!
//! A malformed object is logged with its file, object and field; the rest of the folder still
//! applies. An edit that makes a file invalid removes nothing that file held while it was
//! valid: its last valid version stays in force until the file is fixed ([`LastValid`]), so a
//! typo in a DENY policy never stops it denying.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::manifests::{LastValid, ManifestError, Manifests};

/// Default quiet time after a change before the folder is reloaded.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Default time between two stat-only checks for changes the watcher did not report.
pub const DEFAULT_RECHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Time between those checks while no watcher could be set up (inotify limits reached, or a
/// filesystem without it): stat-only, so still cheap, and changes apply within seconds.
const UNWATCHED_RECHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Longest a stream of events delays a reload: a folder that never stops changing still
/// reloads.
const MAX_SETTLE: Duration = Duration::from_secs(2);
/// How deep the fingerprint descends, as the loader does.
const MAX_DEPTH: usize = 16;

/// A watched folder of manifests.
#[derive(Debug)]
pub struct FolderSource {
    dir: PathBuf,
    settle: Duration,
    recheck: Duration,
    watch: bool,
    stats: Arc<FolderStats>,
}

/// What the source has done so far: for tests and diagnostics.
#[derive(Debug, Default)]
pub struct FolderStats {
    loads: AtomicU64,
    rechecks: AtomicU64,
    watching: AtomicBool,
}

impl FolderStats {
    /// How many times the folder's files were read (the first load included).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// How many stat-only checks ran (whether or not they found a change).
    pub fn rechecks(&self) -> u64 {
        self.rechecks.load(Ordering::Relaxed)
    }

    /// Whether a filesystem watcher is armed now.
    pub fn watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }
}

impl FolderSource {
    /// Watches `dir` (a folder, or a single file), reloading `settle` after the last of a
    /// burst of changes.
    pub fn new(dir: impl Into<PathBuf>, settle: Duration) -> Self {
        FolderSource {
            dir: dir.into(),
            settle,
            recheck: DEFAULT_RECHECK_INTERVAL,
            watch: true,
            stats: Arc::default(),
        }
    }

    /// Time between two stat-only checks for changes the watcher missed (default 30 s).
    pub fn with_recheck(mut self, every: Duration) -> Self {
        self.recheck = every;
        self
    }

    /// No filesystem watcher: only the stat-only checks find changes, as on a filesystem
    /// where inotify reports nothing.
    pub fn without_watcher(mut self) -> Self {
        self.watch = false;
        self
    }

    /// Counters of what the source does; shared with its task.
    pub fn stats(&self) -> Arc<FolderStats> {
        self.stats.clone()
    }

    /// Loads the folder now, then keeps reloading it in a task; the watch always holds the
    /// latest snapshot and closes when the task ends (when every receiver is dropped).
    pub fn start(self) -> (watch::Receiver<Arc<Manifests>>, JoinHandle<()>) {
        let changed = Arc::new(Notify::new());
        // Armed before the first load, so that no change slips between the two.
        let mut watcher = self.arm(&changed, true);
        // Taken before the read, so that a change during it shows at the next check.
        let mut seen = fingerprint(&self.dir);
        let history = Arc::new(parking_lot::Mutex::new(LastValid::default()));
        let first = load_keeping(&self.dir, &mut history.lock());
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Arc::new(first));
        let task = tokio::spawn(async move {
            let mut next_check = Instant::now() + self.recheck_interval(&watcher);
            loop {
                let recheck = tokio::select! {
                    () = changed.notified() => false,
                    () = tokio::time::sleep_until(next_check) => true,
                    () = tx.closed() => return,
                };
                if recheck {
                    self.stats.rechecks.fetch_add(1, Ordering::Relaxed);
                } else {
                    settle(&changed, self.settle).await;
                }
                let dir = self.dir.clone();
                let previous = seen;
                let history = history.clone();
                // File IO and parsing block: keep them off the runtime's IO threads.
                let scanned = tokio::task::spawn_blocking(move || {
                    let now = fingerprint(&dir);
                    // An event always reloads: an editor can rewrite a file within one mtime
                    // tick at the same size, which no stat shows.
                    (!recheck || now != previous)
                        .then(|| (now, load_keeping(&dir, &mut history.lock())))
                })
                .await;
                match scanned {
                    Ok(Some((now, manifests))) => {
                        seen = now;
                        self.stats.loads.fetch_add(1, Ordering::Relaxed);
                        if recheck {
                            // A change no event reported: the watch is broken or was never
                            // possible here; set it up again.
                            info!(dir = %self.dir.display(), "manifest folder changed without a watch event; re-arming the watcher");
                            watcher = self.arm(&changed, watcher.is_some());
                        }
                        if tx.send(Arc::new(manifests)).is_err() {
                            return;
                        }
                    }
                    Ok(None) if watcher.is_none() && self.watch => {
                        watcher = self.arm(&changed, false);
                    }
                    Ok(None) => {}
                    Err(e) => warn!("manifest folder scan failed: {e}"),
                }
                if recheck {
                    next_check = Instant::now() + self.recheck_interval(&watcher);
                }
            }
        });
        (rx, task)
    }

    fn recheck_interval(&self, watcher: &Option<RecommendedWatcher>) -> Duration {
        if watcher.is_some() {
            self.recheck
        } else {
            self.recheck.min(UNWATCHED_RECHECK_INTERVAL)
        }
    }

    /// Sets up a watcher that wakes `changed` on every change under the folder; `None` when
    /// disabled or impossible (logged as a warning when `loud`, at debug level on retries).
    fn arm(&self, changed: &Arc<Notify>, loud: bool) -> Option<RecommendedWatcher> {
        self.stats.watching.store(false, Ordering::Relaxed);
        if !self.watch {
            return None;
        }
        // A single file is watched through its directory: editors replace a file by renaming
        // another over it, which ends a watch on the file itself.
        let (target, only, mode) = if self.dir.is_file() {
            let parent = match self.dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (parent, Some(self.dir.clone()), RecursiveMode::NonRecursive)
        } else {
            (self.dir.clone(), None, RecursiveMode::Recursive)
        };
        let wake = changed.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                // Our own reads open and close files: those events are not changes.
                Ok(e) => match e.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Access(_) => false,
                    _ => {
                        e.need_rescan()
                            || only
                                .as_ref()
                                .is_none_or(|file| e.paths.iter().any(|p| p == file))
                    }
                },
                // An error (a lost event queue among them) may hide a change.
                Err(_) => true,
            };
            if relevant {
                wake.notify_one();
            }
        };
        let armed = RecommendedWatcher::new(handler, notify::Config::default())
            .and_then(|mut w| w.watch(&target, mode).map(|()| w));
        match armed {
            Ok(w) => {
                debug!(dir = %target.display(), "watching the manifest folder");
                self.stats.watching.store(true, Ordering::Relaxed);
                Some(w)
            }
            Err(e) if loud => {
                warn!(
                    dir = %target.display(),
                    "cannot watch the manifest folder ({e}); checking it every {:?} instead \
                     (check the inotify limits: fs.inotify.max_user_watches and \
                     max_user_instances)",
                    self.recheck.min(UNWATCHED_RECHECK_INTERVAL)
                );
                None
            }
            Err(e) => {
                debug!(dir = %target.display(), "still cannot watch the manifest folder: {e}");
                None
            }
        }
    }
}

/// Waits until no change has been reported for `quiet` (at most [`MAX_SETTLE`]), so that a
/// burst of events costs one reload, of the folder as the burst left it.
async fn settle(changed: &Notify, quiet: Duration) {
    let deadline = Instant::now() + MAX_SETTLE;
    loop {
        let wake = (Instant::now() + quiet).min(deadline);
        tokio::select! {
            () = changed.notified() => {
                if Instant::now() >= deadline {
                    return;
                }
            }
            () = tokio::time::sleep_until(wake) => return,
        }
    }
}

/// A hash of what `stat` says of every file the loader would consider under `path` (hidden
/// entries skipped, symlinks followed, as the loader does): path, device and inode (a
/// ConfigMap update links to new files), size, mtime and ctime. No file is opened.
fn fingerprint(path: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    let mut entries = Vec::new();
    stat_tree(path, 0, &mut entries);
    entries.sort();
    entries.hash(&mut hasher);
    hasher.finish()
}

/// One entry of the fingerprint: the path and its stat fields (an error's kind where `stat`
/// failed).
type StatEntry = (PathBuf, Result<[i64; 7], String>);

fn stat_tree(path: &Path, depth: usize, out: &mut Vec<StatEntry>) {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            out.push((path.to_path_buf(), Err(format!("{:?}", e.kind()))));
            return;
        }
    };
    if !meta.is_dir() {
        // Signed for hashing only: the values are compared, never interpreted.
        let fields = [
            meta.dev() as i64,
            meta.ino() as i64,
            meta.len() as i64,
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ];
        out.push((path.to_path_buf(), Ok(fields)));
        return;
    }
    if depth > MAX_DEPTH {
        return;
    }
    match fs::read_dir(path) {
        Ok(children) => {
            for child in children.flatten() {
                if !child.file_name().to_string_lossy().starts_with('.') {
                    stat_tree(&child.path(), depth + 1, out);
                }
            }
        }
        Err(e) => out.push((path.to_path_buf(), Err(format!("{:?}", e.kind())))),
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
        skipped = result.skipped.len(),
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
