//! What ztunnel reports on the admin endpoints ([`mesh::admin`] serves them: 15000, 15020,
//! 15021): on `/config_dump` its config, certificates and captured pods in Istio ztunnel's
//! shape (see [`crate::dump`]), Istio's TCP metrics on `/metrics`.

use std::sync::Arc;

use crate::pods::PodManager;
use crate::proxy::Shared;

pub use mesh::admin::{Endpoint, Readiness};
pub use mesh::telemetry::LogReload;

/// ztunnel's admin endpoints.
pub type Admin = mesh::admin::Admin<Report>;

/// The node-wide state `/config_dump` and `/metrics` read.
pub struct Report {
    pub shared: Arc<Shared>,
    pub pods: Arc<PodManager>,
    /// The capture backend in use ([`Capture::mode`](crate::capture::Capture::mode)).
    pub capture_mode: &'static str,
}

impl mesh::admin::AdminSource for Report {
    /// Everything ztunnel currently knows, for operators and istioctl: `workloads`,
    /// `services`, `policies`, `certificates`, `workloadState`, plus `version`, `pods` and
    /// `proxy` (build version, node, capture mode, xDS client state).
    async fn config_dump(&self) -> serde_json::Value {
        let snapshot = self.shared.state.snapshot();
        let pods = self.pods.list().await;
        let mut dump = crate::dump::snapshot(&snapshot);
        let tls = &self.shared.tls;
        dump.insert(
            "certificates".into(),
            mesh::admin::certificates(tls.store(), tls.roots()),
        );
        dump.insert("workloadState".into(), crate::dump::workload_state(&pods));
        dump.insert(
            "pods".into(),
            serde_json::to_value(&pods).unwrap_or_default(),
        );
        dump.insert(
            "proxy".into(),
            crate::dump::proxy(
                self.capture_mode,
                &self.shared.node,
                self.shared.metrics.xds_status(),
            ),
        );
        dump.into()
    }

    fn metrics(&self) -> String {
        self.shared.metrics.encode()
    }
}
