//! The node proxy's view of the mesh: workloads, services and authorization policies.
//!
//! Config arrives as xDS resources (`istio.workload.Address`, `istio.security.Authorization`)
//! or as Istio ztunnel's local YAML file ([`LocalConfig`]). Either is converted into the typed
//! model here — [`Workload`], [`Service`], [`Policy`] — and conversion checks every field, so a
//! model value is valid by construction and errors name the resource and the field. The model
//! is gathered into an immutable, indexed [`Snapshot`]; the [`StateStore`] swaps whole
//! snapshots atomically, so the data path reads config without taking a lock, and tells
//! subscribers about every change (to re-check live connections against new policy).

mod address;
mod convert;
mod error;
mod local;
mod model;
mod policy;
mod service;
mod snapshot;
mod store;
mod watch;
mod workload;

pub use address::{
    GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress, NetworkAddressError,
};
pub use error::{ConvertError, Problem, ResourceKind};
pub use local::{
    HealthStatus, LocalConfig, LocalConfigError, LocalPolicy, LocalPorts, LocalService,
    LocalWorkload,
};
pub use model::Model;
pub use policy::{
    Clause, Match, Policy, PolicyAction, PolicyScope, Rule, ServiceAccountMatch, StringMatch,
};
pub use service::{AppProtocol, Service, ServicePort};
pub use snapshot::{Endpoint, Snapshot};
pub use store::{ApplyError, RejectReason, RejectedResource, StateStore};
pub use watch::{load_file, watch_file, POLL_INTERVAL};
pub use workload::{PortMap, TunnelProtocol, Workload, WorkloadType};
