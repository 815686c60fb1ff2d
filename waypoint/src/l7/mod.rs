//! The waypoint's L7 configuration: HTTP routes per service, L7 authorization policies,
//! request authentication (JWT) and local rate limits,
//! converted once from their `amesh.l7.v1` resources into forms the request path evaluates
//! without allocating (compiled regexes, parsed CIDRs), and kept as one immutable snapshot.

pub mod authz;
pub mod jwt;
pub mod routes;
pub mod store;

pub use authz::{Decision, L7Policy, RequestAttrs};
pub use routes::{RouteTable, RouteView};
pub use store::{L7Snapshot, L7Store};

/// Why a resource could not be converted; names the resource and the field.
#[derive(Debug, thiserror::Error)]
#[error("{resource}: {field}: {problem}")]
pub struct ConvertError {
    pub resource: String,
    pub field: String,
    pub problem: String,
}

impl ConvertError {
    pub(crate) fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ConvertError {
            resource: resource.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}
