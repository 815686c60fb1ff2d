//! Mutual TLS for HBONE: rustls configs with SPIFFE peer verification (TLS 1.3, ALPN h2).

mod aead;
mod config;
mod error;
mod resolve;
mod verify;

pub use aead::provider;
pub use config::{TlsContext, ALPN_H2};
pub use error::{find_tls_error, tls_error_of, TlsError};
pub use verify::peer_identity;
