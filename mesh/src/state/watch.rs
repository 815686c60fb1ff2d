//! Keeps a [`StateStore`] in step with a local config file by polling it.
//!
//! Polling (mtime and size, then content) rather than inotify: it also works when the file
//! is replaced by a rename or lives on a bind mount, and 500 ms is fast enough for a file
//! that people or the lab edit.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::{interval, MissedTickBehavior};

use super::local::{LocalConfig, LocalConfigError};
use super::StateStore;

/// How often the file is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Reads `path` once and replaces the store's content with it.
pub fn load_file(path: impl AsRef<Path>, store: &StateStore) -> Result<(), LocalConfigError> {
    store.replace_all(LocalConfig::load(path)?)
}

/// Polls `path` every [`POLL_INTERVAL`] and applies it whenever its content changes. A file
/// that cannot be read or is invalid is logged (once per distinct content) and the last good
/// config stays. The task runs until aborted.
pub fn watch_file(path: impl Into<PathBuf>, store: StateStore) -> JoinHandle<()> {
    let path = path.into();
    tokio::spawn(async move {
        let mut watcher = Watcher {
            path,
            store,
            stamp: None,
            content: None,
            last_error: None,
        };
        let mut tick = interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            watcher.poll().await;
        }
    })
}

struct Watcher {
    path: PathBuf,
    store: StateStore,
    /// mtime and size seen last time: unchanged means the content is not read again.
    stamp: Option<(Option<SystemTime>, u64)>,
    /// Content last read, applied or not: an unchanged invalid file is not re-reported.
    content: Option<String>,
    /// Last error logged, so that a missing file is reported once, not twice a second.
    last_error: Option<String>,
}

impl Watcher {
    async fn poll(&mut self) {
        let stamp = match tokio::fs::metadata(&self.path).await {
            Ok(m) => (m.modified().ok(), m.len()),
            Err(e) => return self.report(format!("cannot read {}: {e}", self.path.display())),
        };
        if self.stamp == Some(stamp) {
            return;
        }
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => t,
            Err(e) => return self.report(format!("cannot read {}: {e}", self.path.display())),
        };
        self.stamp = Some(stamp);
        if self.content.as_deref() == Some(text.as_str()) {
            return;
        }
        let result = LocalConfig::parse(&text, Some(self.path.clone()))
            .and_then(|config| self.store.replace_all(config));
        self.content = Some(text);
        match result {
            Ok(()) => {
                self.last_error = None;
                tracing::info!(
                    path = %self.path.display(),
                    version = self.store.snapshot().version(),
                    "local config applied"
                );
            }
            Err(e) => self.report(format!("{e}; keeping the last good config")),
        }
    }

    fn report(&mut self, error: String) {
        if self.last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(path = %self.path.display(), "{error}");
            self.last_error = Some(error);
        }
        // Read again next time: the file may come back with the same mtime and size.
        self.stamp = None;
    }
}
