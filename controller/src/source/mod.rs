//! Where the manifests come from. Each source publishes whole snapshots of [`Manifests`]
//! through a `watch`; the xDS publisher and the CA read the latest.
//!
//! - [`folder`]: a directory of YAML files, polled for changes (the lab's and the demo's).

pub mod folder;

pub use folder::{FolderSource, DEFAULT_POLL_INTERVAL};
