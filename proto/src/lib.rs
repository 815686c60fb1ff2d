//! Protobuf messages and gRPC services that amesh shares with Istio ambient.
//!
//! The Rust code is generated at build time (see `build.rs`) from the `.proto` files under
//! `proto/`, which follow Istio's wire contract: same packages, messages, field names and
//! numbers. The modules here mirror the protobuf packages:
//!
//! | package | module |
//! |---|---|
//! | `envoy.service.discovery.v3` | [`envoy::service::discovery::v3`] (ADS client and server) |
//! | `envoy.config.core.v3` | [`envoy::config::core::v3`] |
//! | `google.rpc` | [`google::rpc`] |
//! | `istio.workload` | [`istio::workload`] |
//! | `istio.workload.zds` | [`istio::workload::zds`] |
//! | `istio.security` | [`istio::security`] |
//! | `istio.v1.auth` | [`istio::v1::auth`] (CA client and server) |
//! | `amesh.l7.v1` | [`amesh::l7::v1`] (waypoint routes and L7 policy) |
//!
//! Well-known types (`google.protobuf.Any`, `Struct`, `Duration`, `Empty`) are the ones from
//! [`prost_types`]; `google.protobuf.UInt32Value` becomes `Option<u32>`.

/// xDS type URL of [`istio::workload::Address`] resources.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// xDS type URL of [`istio::security::Authorization`] resources.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Envoy's packages (only the parts xDS needs).
pub mod envoy {
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.discovery.*`
        pub mod discovery {
            /// `envoy.service.discovery.v3`: the aggregated discovery service and its messages.
            #[allow(clippy::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }

    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core.*`
        pub mod core {
            /// `envoy.config.core.v3`: the proxy's `Node` identity.
            #[allow(clippy::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
}

/// Google's shared packages that `protox` does not bundle.
pub mod google {
    /// `google.rpc`: the `Status` error payload.
    #[allow(clippy::all)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// Istio's packages.
pub mod istio {
    /// `istio.workload`: the `Address` resource (workloads and services), plus ZDS.
    #[allow(clippy::all)]
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));

        /// `istio.workload.zds`: the CNI agent to node proxy protocol.
        pub mod zds {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
        }
    }

    /// `istio.security`: the `Authorization` resource.
    #[allow(clippy::all)]
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }

    /// `istio.v1.*`
    pub mod v1 {
        /// `istio.v1.auth`: the certificate signing service.
        #[allow(clippy::all)]
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

/// xDS type URL of [`amesh::l7::v1::ServiceRoutes`] resources (waypoints only).
pub const SERVICE_ROUTES_TYPE_URL: &str = "type.googleapis.com/amesh.l7.v1.ServiceRoutes";

/// xDS type URL of [`amesh::l7::v1::Authorization`] resources (waypoints only).
pub const L7_AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/amesh.l7.v1.Authorization";

/// xDS type URL of [`amesh::l7::v1::RequestAuthentication`] resources (waypoints only).
pub const REQUEST_AUTHENTICATION_TYPE_URL: &str =
    "type.googleapis.com/amesh.l7.v1.RequestAuthentication";

/// xDS type URL of [`amesh::l7::v1::RateLimit`] resources (waypoints only).
pub const RATE_LIMIT_TYPE_URL: &str = "type.googleapis.com/amesh.l7.v1.RateLimit";

/// amesh's own packages.
pub mod amesh {
    /// `amesh.l7.*`
    pub mod l7 {
        /// `amesh.l7.v1`: what a waypoint needs beyond ztunnel's types: HTTP routes per
        /// service and L7 authorization policies (see `proto/amesh/l7/v1/l7.proto`).
        #[allow(clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/amesh.l7.v1.rs"));
        }
    }
}
