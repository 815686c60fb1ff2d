//! The delta-ADS (`DeltaAggregatedResources`) client that feeds ztunnel and waypoints from
//! amesh-controller (or istiod): wildcard subscriptions, ACK/NACK, reconnect with
//! `initial_resource_versions`, and the last good config kept while the server is away.
//!
//! Layout: [`AdsState`] is the protocol state machine without IO (responses in, requests and
//! handler calls out); `client` owns the gRPC stream, reconnects and publishes [`XdsStatus`].
//! What the resources mean is the [`ResourceHandler`]'s business (e.g. the state store).

mod backoff;
mod client;
mod config;
pub(crate) mod error;
mod handler;
mod state;
mod status;

pub use backoff::Backoff;
pub use client::{spawn, XdsClient, XdsHandle};
pub use config::{
    ztunnel_node_id, XdsConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_INITIAL_BACKOFF,
    DEFAULT_MAX_BACKOFF,
};
pub use error::XdsError;
pub use handler::ResourceHandler;
pub use state::{AdsState, Reply, Verdict, INVALID_ARGUMENT, WILDCARD};
pub use status::{Nack, TypeStatus, XdsStatus};
