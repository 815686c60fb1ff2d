//! The config part of `/config_dump`: the current snapshot in the local-file format, which is
//! Istio ztunnel's own shape for workloads, services and policies.

use mesh::state::Snapshot;

pub fn snapshot(snapshot: &Snapshot) -> serde_json::Value {
    let config = mesh::state::LocalConfig::from_snapshot(snapshot);
    let mut value = serde_json::to_value(&config)
        .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
    if let Some(obj) = value.as_object_mut() {
        obj.insert("version".into(), snapshot.version().into());
    }
    value
}
