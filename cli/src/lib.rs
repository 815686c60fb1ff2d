//! `amesh`, the operator's command line. Every subcommand reads what the running mesh reports
//! (the controller's debug API, each ztunnel's and waypoint's admin endpoints) through a
//! [`target`]: a Kubernetes cluster (the API server's pod proxy, no port-forward) or a lab on
//! this machine (`--lab <id>`).

pub mod args;
pub mod config;
pub mod explain;
pub mod graph;
pub mod status;
pub mod target;
