//! Where the manifests come from. Each source publishes whole snapshots of [`Manifests`](crate::Manifests)
//! through a `watch`; the xDS publisher and the CA read the latest.
//!
//! - [`folder`]: a directory of YAML files, watched for changes (the lab's and the demo's).
//! - [`kube`](mod@kube): the Kubernetes API, through kube-rs watchers.

pub mod folder;
pub mod kube;

pub use self::kube::KubeSource;
pub use folder::{FolderSource, FolderStats, DEFAULT_POLL_INTERVAL, DEFAULT_RECHECK_INTERVAL};
