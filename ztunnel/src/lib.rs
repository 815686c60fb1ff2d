//! ztunnel: amesh's per-node L4 proxy. It captures the traffic of ambient pods, carries it in
//! HBONE tunnels with each pod's own identity, enforces L4 authorization and reports Istio's TCP
//! metrics. `amesh-cni` (the chained CNI plugin) hands it pods over a unix socket, or Istio's
//! istio-cni does over ZDS ([`zds`]).

pub mod admin;
pub mod capture;
pub mod cni;
pub mod config;
pub mod destination;
pub mod dns;
pub mod dump;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod netns;
pub mod pods;
pub mod proxy;
pub mod run;
pub mod sockets;
pub mod zds;
