//! Library shared by the amesh binaries (ztunnel, waypoint, controller): SPIFFE identities,
//! mutual TLS, workload certificates and the HBONE tunnel (mTLS + HTTP/2 CONNECT), and what
//! every proxy serves besides traffic: the accept loop, admin endpoints, logging.

pub mod accept;
pub mod admin;
pub mod authz;
pub mod certs;
pub mod control;
pub mod drain;
pub mod env;
pub mod hbone;
pub mod identity;
pub mod intern;
pub mod limits;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod xds;

pub use identity::{Identity, IdentityError};
