//! amesh-lab: a whole cluster on one Linux machine. Nodes and pods are network namespaces
//! behind a private bridge, every container is replaced by the built-in echo app, and all names
//! and addresses derive from the lab's id and index so that labs never collide and leftovers of
//! a crash can always be found and removed.
//!
//! - [`plan`]: names and the address plan.
//! - [`topology`] over [`netns`] and [`cmd`]: the network (bridge, nodes, pods, routes).
//! - [`cluster`]: [`Lab`] — manifests in, a running cluster out; [`hooks`] for the mesh.
//! - [`reap`]: `down`, `down_all`, `cleanup_stale` from any process, via [`rundir`] and [`state`].
//! - [`caps`]: the capabilities the lab's ztunnels run with (the DaemonSet's list).
//! - [`waypoints`]: the `waypoint` binary in each waypoint Gateway's pod; [`probe`]: the
//!   kubelet's readiness probe; [`ztunnels`]: a node's ztunnel rolled over (an upgrade).
//! - [`echo`]: the app in every pod; [`client`]: talking to it from inside a pod; [`apps`]: the
//!   subcommands that run it (and the keeper) from the lab's binary or any other.

pub mod apiserver;
pub mod apps;
pub mod caps;
pub mod client;
pub mod cluster;
pub mod clusterdns;
pub mod cmd;
pub mod demo;
mod demo_callgraph;
mod demo_waypoint;
pub mod echo;
pub mod hooks;
pub mod loaded;
pub mod mesh;
pub mod mesh_options;
pub mod netns;
pub mod plan;
pub mod probe;
pub mod process;
pub mod reap;
pub mod rundir;
pub mod runtime;
pub mod state;
pub mod summary;
pub mod topology;
pub mod waypoints;
pub mod ztunnels;

pub use cluster::{Lab, LabError, LabOptions};
pub use plan::{AddressPlan, LabId};
pub use reap::{cleanup_stale, down, down_all};
pub use state::{LabState, NodeInfo, PodInfo, ServiceInfo, WaypointInfo, ZtunnelPod};
