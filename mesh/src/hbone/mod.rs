//! HBONE: TCP connections carried as HTTP/2 CONNECT streams over mutual TLS (port 15008).
//!
//! - [`Pool`] (client) keeps HTTP/2 connections per (source identity, destination identity,
//!   destination address) and opens one CONNECT stream per tunnelled TCP connection.
//! - [`Server`] terminates mTLS + HTTP/2 and hands each CONNECT to a [`ConnectHandler`].
//! - [`H2Stream`] is one tunnel: an `AsyncRead + AsyncWrite` byte stream; [`relay`] copies
//!   between it and a TCP socket, propagating half-close and resets; [`relay_tcp`] does the
//!   same between two TCP sockets, through `splice(2)`.

mod bufio;
mod conn;
mod error;
mod pool;
mod relay;
mod request;
mod server;
mod settings;
mod slot;
mod splice;
mod stream;

// Drain belongs to every listener, not only HBONE's; re-exported where it was first found.
pub use crate::drain::{Drain, DrainWatch};
pub use error::{HboneError, InboundError, Side};
pub use pool::{Connecting, Pool, PoolKey, PoolStats, SocketFactory, TunnelRequest};
pub use relay::{
    abort_on_close, close_gracefully, relay, relay_connecting, RelayError, RelayStats,
};
pub use request::{
    baggage_header, connect_headers, forwarded_header, traceparent_header, ConnectRequest, Refusal,
};
// The sans-IO request checks, public for the fuzz targets (`fuzz/`), not an API to build on.
#[doc(hidden)]
pub use request::{build_connect, inspect, Inspection};
pub use server::{ConnectHandler, PendingTunnel, Server, ServerStats, ServerTls};
pub use settings::H2Settings;
pub use splice::relay_tcp;
pub use stream::{H2Reader, H2Stream, H2Writer};

/// The well-known HBONE port.
pub const HBONE_PORT: u16 = 15008;
