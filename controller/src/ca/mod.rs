//! The certificate authority (`istio.v1.auth.IstioCertificateService`): signs workload CSRs with
//! a [`LocalCa`](mesh::certs::LocalCa) whose root is generated once and kept: in a folder (the
//! lab; also Istio's plug-in `cacerts` files), or in a Kubernetes Secret.
//!
//! - [`root_secret`]: the root kept in the Secret `istio-system/istio-ca-secret`, as istiod
//!   keeps its self-signed root: created by the first controller, used by the others.
//! - [`root_configmap`]: the root published as the ConfigMap `istio-ca-root-cert` for ztunnel.
//! - [`auth`]: who is calling: the node or workload behind a bearer token, by one of
//!   - [`tokens`]: bootstrap tokens (token → node name, or workload ServiceAccount), the lab's
//!     way, or
//!   - [`token_review`]: Kubernetes TokenReview of a ServiceAccount token (node agents are
//!     nodes, other ServiceAccounts workloads).
//! - [`placement`]: which identities a node may obtain: those of the pods scheduled on it (a
//!   workload may obtain only its own).
//! - [`csr`]: the request's CSR, parsed strictly (one PEM block, no bytes after the DER).
//! - [`service`]: the gRPC service: authenticate, pick the identity, authorize, sign.

pub mod auth;
pub mod csr;
pub mod placement;
pub mod root_configmap;
pub mod root_secret;
pub mod service;
pub mod token_review;
pub mod tokens;

pub use auth::{Authenticator, Caller};
pub use root_configmap::RootPublisher;
pub use root_secret::ObjectName;
pub use service::{CaService, DEFAULT_MAX_TTL};
pub use token_review::TokenReviewer;
pub use tokens::{NodeTokens, TokenError};
