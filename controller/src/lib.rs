//! amesh-controller library: Kubernetes manifests → model → Istio xDS resources.
//!
//! - [`manifests`]: typed Kubernetes, Gateway API and Istio security and networking objects,
//!   loaded from a folder of YAML files (the lab's and the demo's source) or the Kubernetes API.
//! - [`model`]: the mesh as the translation sees it (ambient pods with IPs, identities and
//!   workload names, services with VIPs, waypoints, localities).
//! - [`translate`](mod@translate): the model and policies → `istio.workload.Address` and
//!   `istio.security.Authorization` resources, as Istio's control plane builds them for ztunnel.
//! - [`render`]: a stable, readable rendering of those resources (golden tests, config dumps).
//! - [`source`]: where manifests come from (a watched folder), as a stream of snapshots.
//! - [`xds`]: the delta-ADS server pushing the translated resources to ztunnels.
//! - [`ca`]: the certificate authority (`IstioCertificateService`) for node agents, and its
//!   root: kept in a folder or a Kubernetes Secret, published as a ConfigMap for ztunnel.
//! - [`deployer`]: on the Kubernetes API, the waypoint Gateways made into ServiceAccounts,
//!   Services and Deployments they own (from the template `deploy/waypoint/waypoint.yaml`),
//!   with their status reported on the Gateway.
//! - [`crds`]: amesh's own CRDs (`deploy/base/policy-crds.yaml`), generated from the types.
//! - [`tls`]: the TLS port's serving certificate (from the mesh CA) and handshakes.
//! - [`listen`]: the gRPC ports' accept loops and bounds (connections, streams, sizes).
//! - [`istio_status`]: on the Kubernetes API, what amesh ignored in each VirtualService and
//!   DestinationRule, written on the object's status.
//! - [`jwks`]: RequestAuthentication `jwksUri` keys fetched and refreshed as istiod does
//!   (feature `jwks`, part of `server`; the lab's file mode uses it alone).
//! - [`graph`]: the service graph from the proxies' Prometheus metrics (parser, rates, DOT,
//!   SVG, JSON), shared with `amesh graph`; [`graph_page`]: the live graph page the controller
//!   serves with `--graph-addr` (feature `server`); [`debug`]: the read-only debug listener
//!   (`--debug-addr`); [`page_server`]: the HTTP/1 accept loop both of them use.
//! - [`app`]: all of it wired on the gRPC ports, as the `amesh-controller` binary runs it.
//!
//! `source`, `xds`, `ca`, `deployer`, `crds`, `tls` and `app` are the `server` feature (on by default); without it the
//! library is the translation alone (the lab's use).

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod ca;
#[cfg(feature = "server")]
pub mod crds;
#[cfg(feature = "server")]
pub mod debug;
#[cfg(feature = "server")]
pub mod deployer;
pub mod graph;
#[cfg(feature = "server")]
pub mod graph_page;
#[cfg(feature = "server")]
pub mod istio_status;
#[cfg(feature = "jwks")]
pub mod jwks;
#[cfg(feature = "server")]
pub mod listen;
pub mod manifests;
pub mod model;
#[cfg(feature = "server")]
pub mod page_server;
pub mod render;
#[cfg(feature = "server")]
pub mod source;
#[cfg(feature = "server")]
pub mod tls;
pub mod translate;
mod warnings;
#[cfg(feature = "server")]
pub mod xds;

pub use manifests::{load_dir, LoadResult, ManifestError, Manifests};
pub use translate::{translate, TranslateOptions, Translated};
