//! ztunnel's `/config_dump` in Istio ztunnel's shape, the one `istioctl ztunnel-config` reads:
//! top-level `workloads`, `services` and `policies` (the local-file format, which is Istio's
//! own, adjusted where istioctl's reader is stricter than the file: service `ports` always a
//! map, waypoint `destination` always a string, services list their `endpoints`),
//! `certificates` and `workloadState`. amesh's extras sit beside them: `version` (of the
//! config snapshot), `pods` (the captured pods with their netns) and `proxy` (build version,
//! node, capture mode, xDS client state).

use serde_json::{json, Map, Value};

use mesh::state::{GatewayAddress, GatewayDestination, LocalConfig, Snapshot};

use crate::proxy::PodInfo;

/// The config part: `workloads`, `services`, `policies` and `version`.
pub fn snapshot(snapshot: &Snapshot) -> Map<String, Value> {
    let config = LocalConfig::from_snapshot(snapshot);
    let mut out = Map::new();
    let workloads: Vec<Value> = config
        .workloads
        .iter()
        .map(|w| {
            let mut v = to_value(w);
            set_waypoint(&mut v, w.waypoint.as_ref());
            if let Some(obj) = v.as_object_mut() {
                // The file may leave it out; istioctl joins endpoints to workloads by it.
                obj.insert("uid".into(), w.uid().into());
            }
            v
        })
        .collect();
    let services: Vec<Value> = config
        .services
        .iter()
        .map(|s| {
            let mut v = to_value(s);
            set_waypoint(&mut v, s.waypoint.as_ref());
            if let Some(obj) = v.as_object_mut() {
                // istioctl decodes `ports` as a map only; the list form (with app protocols)
                // would make it reject the whole dump.
                let ports: Map<String, Value> = s
                    .ports
                    .0
                    .iter()
                    .map(|p| (p.service_port.to_string(), p.target_port.into()))
                    .collect();
                obj.insert("ports".into(), ports.into());
                obj.insert("endpoints".into(), endpoints(&config, &s.key()).into());
            }
            v
        })
        .collect();
    let policies: Vec<Value> = config.policies.iter().map(to_value).collect();
    out.insert("workloads".into(), workloads.into());
    out.insert("services".into(), services.into());
    out.insert("policies".into(), policies.into());
    out.insert("version".into(), snapshot.version().into());
    out
}

/// `proxy`: what this ztunnel is and how it runs, for `amesh status`: its build `version`,
/// `node`, `captureMode` (the backend in use: `nft`, `ebpf`, or `none` where ztunnel does not
/// capture) and `xds`, the xDS client's state (`null` with a local config file).
pub fn proxy(capture_mode: &str, node: &str, xds: Option<mesh::xds::XdsStatus>) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node": node,
        "captureMode": capture_mode,
        "xds": xds,
    })
}

/// `workloadState`: one entry per captured pod, keyed by its uid, as Istio's in-pod handler
/// reports a proxy that is up.
pub fn workload_state(pods: &[PodInfo]) -> Value {
    pods.iter()
        .map(|p| {
            (
                p.uid.clone(),
                json!({
                    "state": "Up",
                    "info": {
                        "name": p.name,
                        "namespace": p.namespace,
                        "serviceAccount": p.service_account,
                    },
                }),
            )
        })
        .collect::<Map<String, Value>>()
        .into()
}

/// The workloads selected by service `key` (`ns/hostname`), keyed by workload uid.
fn endpoints(config: &LocalConfig, key: &str) -> Map<String, Value> {
    config
        .workloads
        .iter()
        .filter_map(|w| {
            let ports = w.services.get(key)?;
            let uid = w.uid();
            let port: Map<String, Value> = ports
                .iter()
                .map(|(from, to)| (from.to_string(), (*to).into()))
                .collect();
            let entry = json!({
                "workloadUid": uid,
                "service": key,
                "address": w.workload_ips.first().map(|ip| format!("{}/{ip}", w.network)),
                "port": port,
            });
            Some((uid, entry))
        })
        .collect()
}

/// A gateway as istioctl reads it: `{destination: "<network>/<ip>" | "<ns>/<hostname>"}`.
fn set_waypoint(v: &mut Value, waypoint: Option<&GatewayAddress>) {
    let (Some(obj), Some(w)) = (v.as_object_mut(), waypoint) else {
        return;
    };
    let destination = match &w.destination {
        GatewayDestination::Address(a) => a.to_string(),
        GatewayDestination::Hostname(h) => format!("{}/{}", h.namespace, h.hostname),
    };
    obj.insert(
        "waypoint".into(),
        json!({ "destination": destination, "hboneMtlsPort": w.hbone_mtls_port }),
    );
}

fn to_value<T: serde::Serialize>(item: &T) -> Value {
    serde_json::to_value(item).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}
