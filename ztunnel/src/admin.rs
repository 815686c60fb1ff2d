//! What ztunnel reports on the admin endpoints ([`mesh::admin`] serves them: 15000, 15020,
//! 15021): its config, captured pods and certificates on `/config_dump`, Istio's TCP metrics
//! on `/metrics`.

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
}

impl mesh::admin::AdminSource for Report {
    /// Everything ztunnel currently knows, for operators: config, captured pods, certificates.
    async fn config_dump(&self) -> serde_json::Value {
        let snapshot = self.shared.state.snapshot();
        serde_json::json!({
            "config": crate::dump::snapshot(&snapshot),
            "pods": self.pods.list().await,
            "certificates": mesh::admin::certificates(self.shared.tls.store()),
        })
    }

    fn metrics(&self) -> String {
        self.shared.metrics.encode()
    }
}
