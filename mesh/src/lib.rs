//! Library shared by the amesh binaries (ztunnel, waypoint, controller): SPIFFE identities,
//! mutual TLS, workload certificates and the HBONE tunnel (mTLS + HTTP/2 CONNECT).

pub mod authz;
pub mod certs;
pub mod control;
pub mod hbone;
pub mod identity;
pub mod limits;
pub mod state;
pub mod tls;
pub mod xds;

pub use identity::{Identity, IdentityError};
