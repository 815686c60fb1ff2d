//! The certificate authority (`istio.v1.auth.IstioCertificateService`): signs workload CSRs with
//! a [`LocalCa`](mesh::certs::LocalCa) whose root is generated once and kept in a folder.
//!
//! - [`tokens`]: node bootstrap tokens (token → node name), the lab's stand-in for
//!   Kubernetes TokenReview.
//! - [`placement`]: which identities a node may obtain: those of the pods scheduled on it.
//! - [`service`]: the gRPC service: authenticate, pick the identity, authorize, sign.

pub mod placement;
pub mod service;
pub mod tokens;

pub use service::{CaService, DEFAULT_MAX_TTL};
pub use tokens::{NodeTokens, TokenError};
