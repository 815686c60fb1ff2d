//! The manifests folder as the lab's API server and cluster DNS read it: parsed again only
//! when the folder changed (the controller's folder fingerprint), not on every request, as a
//! real API server answers from what it holds rather than from its storage.

use std::path::PathBuf;
use std::sync::Arc;

use controller::Manifests;
use parking_lot::Mutex;

/// The objects of one manifests folder, reloaded when the folder changes.
#[derive(Debug)]
pub struct LoadedManifests {
    dir: PathBuf,
    /// The folder's fingerprint when it was last loaded, and what loaded.
    last: Mutex<Option<(u64, Arc<Manifests>)>>,
}

impl LoadedManifests {
    pub fn new(dir: PathBuf) -> LoadedManifests {
        LoadedManifests {
            dir,
            last: Mutex::new(None),
        }
    }

    /// The folder's objects as they are now.
    pub fn get(&self) -> Arc<Manifests> {
        // Fingerprint before loading: a change in between makes the next call load again,
        // never keeps stale objects under a fresh fingerprint.
        let now = controller::manifests::fingerprint(&self.dir);
        let mut last = self.last.lock();
        match &*last {
            Some((seen, manifests)) if *seen == now => manifests.clone(),
            _ => {
                let manifests = Arc::new(controller::load_dir(&self.dir).manifests);
                *last = Some((now, manifests.clone()));
                manifests
            }
        }
    }
}
