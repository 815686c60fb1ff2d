//! The delta-ADS server (`DeltaAggregatedResources`) that feeds ztunnels and waypoints: the
//! translated resources, versioned by content, pushed incrementally to each client.
//!
//! - [`client`]: what kind of client a stream is (ztunnel, or the waypoint of which Gateway),
//!   which decides the waypoint-scoped resources (`amesh.l7.v1` types) it may see, and
//!   whether the authenticated caller may claim to be it.
//! - [`resources`]: [`ResourceSet`], one immutable snapshot of every resource by type and name,
//!   each with a content-hash version; what the translation publishes.
//! - [`publish`]: the debounced pipeline manifests → translation → [`ResourceSet`].
//! - [`session`]: the per-stream protocol state without IO (subscriptions, what the client
//!   holds, nonces, ACK/NACK); tests drive it with no socket.
//! - [`server`]: the tonic service gluing sessions to gRPC streams and to the snapshot watch.

pub mod client;
pub mod publish;
pub mod resources;
pub mod server;
pub mod session;

pub use client::{Client, WaypointAccounts};
pub use publish::{spawn_publisher, spawn_publisher_with_jwks, DEFAULT_DEBOUNCE};
pub use resources::ResourceSet;
pub use server::AdsServer;
pub use session::Session;

/// The resource name that subscribes to every resource of a type.
pub const WILDCARD: &str = "*";
