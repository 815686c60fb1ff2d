//! amesh-controller library: Kubernetes manifests → model → Istio xDS resources.
//!
//! - [`manifests`]: typed Kubernetes, Gateway API and Istio security objects, loaded from a
//!   folder of YAML files (the lab's and the demo's source).
//! - [`model`]: the mesh as the translation sees it (ambient pods with IPs, identities and
//!   workload names, services with VIPs, waypoints, localities).
//! - [`translate`](mod@translate): the model and policies → `istio.workload.Address` and
//!   `istio.security.Authorization` resources, as Istio's control plane builds them for ztunnel.
//! - [`render`]: a stable, readable rendering of those resources (golden tests, config dumps).

pub mod manifests;
pub mod model;
pub mod render;
pub mod translate;
mod warnings;

pub use manifests::{load_dir, LoadResult, ManifestError, Manifests};
pub use translate::{translate, TranslateOptions, Translated};
