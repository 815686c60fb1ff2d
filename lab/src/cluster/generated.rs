//! The generated manifests folder (`<run dir>/manifests/`): what a real cluster's API server
//! would hold once the lab has scheduled and started everything. The controller's folder source
//! reads it.
//!
//! - `generated/nodes.yaml`, `generated/pods.yaml`, `generated/services.yaml`,
//!   `generated/endpointslices.yaml`: Nodes, Pods with `spec.nodeName` (and, once the node
//!   has started them, `status.podIP`: rewritten as the kubelet would update it), Services
//!   with `spec.clusterIP`, the hand-kept EndpointSlice of `default/kubernetes`.
//! - `generated/gateways.yaml`: the input's Gateways, whose status the lab writes as istiod
//!   does once a waypoint's pod is Ready (its Service's address, `Programmed`).
//! - `generated/waypoints.yaml`: the ServiceAccounts and Deployments made for waypoints (their
//!   pods and Services are in the files above).
//! - `input/...`: every other document of the input folder, same relative paths (kinds the
//!   lab does not know included), so policies, routes and namespaces reach the controller as
//!   written.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::expand::Expanded;
use super::waypoint;

/// Kinds the lab regenerates (`apiVersion: v1`); input documents of these kinds are replaced.
const REGENERATED: [&str; 3] = ["Pod", "Service", "Node"];
/// The Gateway API's group: its Gateways move to `generated/gateways.yaml`.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io/";

/// The generated folder could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GeneratedError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML: {source}")]
    Yaml {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GeneratedError {
    let path = path.display().to_string();
    move |source| GeneratedError::Io { what, path, source }
}

/// Writes the generated folder `out` from the input folder and the planned cluster. Returns the
/// Gateways, as the API server holds them (their status changes later: [`set_programmed`]).
pub fn write(
    input_dir: &Path,
    expanded: &Expanded,
    out: &Path,
) -> Result<Vec<Value>, GeneratedError> {
    let gen = out.join("generated");
    std::fs::create_dir_all(&gen).map_err(io("cannot create", &gen))?;
    write_docs(&gen.join("nodes.yaml"), &expanded.nodes)?;
    let pods: Vec<_> = expanded.pods.iter().map(|p| &p.pod).collect();
    write_docs(&gen.join("pods.yaml"), &pods)?;
    write_docs(&gen.join("services.yaml"), &expanded.services)?;
    write_docs(&gen.join("endpointslices.yaml"), &expanded.endpoint_slices)?;
    let mut made: Vec<Value> = Vec::new();
    for w in &expanded.waypoints {
        made.extend(w.service_account.iter().map(to_value));
        made.push(to_value(&w.deployment));
    }
    write_docs(&gen.join("waypoints.yaml"), &made)?;
    let mut gateways = Vec::new();
    for file in yaml_files(input_dir)? {
        let rel = file.strip_prefix(input_dir).unwrap_or(&file);
        let rel = if rel.as_os_str().is_empty() {
            // The input is a single file.
            Path::new(file.file_name().unwrap_or_default())
        } else {
            rel
        };
        let text = std::fs::read_to_string(&file).map_err(io("cannot read", &file))?;
        let (kept, found) = kept_documents(&text).map_err(|source| GeneratedError::Yaml {
            path: file.display().to_string(),
            source,
        })?;
        gateways.extend(found);
        if kept.is_empty() {
            continue;
        }
        let target = out.join("input").join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        write_docs(&target, &kept)?;
    }
    for gw in gateways.iter_mut() {
        give_uid(gw);
    }
    write_gateways(out, &gateways)?;
    Ok(gateways)
}

/// The documents of a YAML text that the lab does not regenerate, and apart its Gateways.
fn kept_documents(text: &str) -> Result<(Vec<Value>, Vec<Value>), serde_yaml::Error> {
    let mut kept = Vec::new();
    let mut gateways = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
        let api_version = field("apiVersion").unwrap_or_default();
        let kind = field("kind").unwrap_or_default();
        if api_version.starts_with(GATEWAY_GROUP) && kind == "Gateway" {
            gateways.push(value);
        } else if !(api_version == "v1" && REGENERATED.contains(&kind.as_str())) {
            kept.push(value);
        }
    }
    Ok((kept, gateways))
}

/// Rewrites `generated/gateways.yaml` with the Gateways as the API server holds them now.
pub fn write_gateways(out: &Path, gateways: &[Value]) -> Result<(), GeneratedError> {
    write_docs(&out.join("generated").join("gateways.yaml"), gateways)
}

/// The Gateway `namespace/name` among `gateways` (a missing namespace is `default`).
pub fn find_gateway<'a>(
    gateways: &'a mut [Value],
    namespace: &str,
    name: &str,
) -> Option<&'a mut Value> {
    gateways.iter_mut().find(|gw| {
        let meta = &gw["metadata"];
        let ns = meta["namespace"].as_str().filter(|n| !n.is_empty());
        meta["name"].as_str() == Some(name) && ns.unwrap_or("default") == namespace
    })
}

/// The API server gives every object a uid; the waypoint's objects name it as their owner.
fn give_uid(gw: &mut Value) {
    let meta = &gw["metadata"];
    if meta["uid"].as_str().is_some() {
        return;
    }
    let ns = meta["namespace"].as_str().filter(|n| !n.is_empty());
    let name = meta["name"].as_str().unwrap_or_default();
    let uid = waypoint::uid_key(ns.unwrap_or("default"), name);
    if let Some(meta) = gw.get_mut("metadata").and_then(Value::as_mapping_mut) {
        meta.insert("uid".into(), uid.into());
    }
}

/// The status istiod writes on a waypoint Gateway once its pod is Ready: reachable at its
/// Service's ClusterIP, `Accepted` and `Programmed`.
pub fn set_programmed(gw: &mut Value, address: &str) {
    let generation = gw["metadata"]["generation"].as_i64();
    let condition = |type_: &str, message: &str| Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: type_.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(now()),
    };
    let status = serde_json::json!({
        "addresses": [{"type": "IPAddress", "value": address}],
        "conditions": [
            condition("Accepted", "Resource accepted"),
            condition("Programmed", "Resource programmed, assigned to service(s) of the waypoint"),
        ],
    });
    if let Some(map) = gw.as_mapping_mut() {
        map.insert("status".into(), to_value(&status));
    }
}

/// The current time, to the second as Kubernetes keeps it.
fn now() -> k8s_openapi::jiff::Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Seconds since 1970 are within jiff's range for the next 250,000 years.
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// Plain data as a YAML value.
fn to_value<T: Serialize>(object: &T) -> Value {
    // Kubernetes objects and JSON values always serialise.
    serde_yaml::to_value(object).expect("manifest serialises")
}

/// Rewrites `generated/pods.yaml` with the pods as the API server holds them now (a pod's
/// status changes as the kubelet starts it).
pub fn write_pods(out: &Path, pods: &[&Pod]) -> Result<(), GeneratedError> {
    write_docs(&out.join("generated").join("pods.yaml"), pods)
}

/// Writes through a hidden temporary file and a rename: a watcher of the folder (which skips
/// hidden names) never reads half a file.
fn write_docs<T: Serialize>(path: &Path, docs: &[T]) -> Result<(), GeneratedError> {
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        // Kubernetes objects and YAML values always serialise.
        text.push_str(&serde_yaml::to_string(d).expect("manifest serialises"));
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot write", path))
}

/// `*.yaml` / `*.yml` files under `dir` (or `dir` itself if it is a file), sorted; names starting
/// with `.` are skipped, as the controller's folder source does.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, GeneratedError> {
    let mut out = Vec::new();
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io("cannot read", &d))? {
            let entry = entry.map_err(io("cannot read", &d))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regenerated_kinds_are_dropped_and_the_rest_kept() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n---\napiVersion: example.com/v1\nkind: Service\nmetadata: {name: not-core}\n";
        let (kept, gateways) = kept_documents(text).unwrap();
        let kinds: Vec<&str> = kept.iter().map(|v| v["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Namespace", "AuthorizationPolicy", "Service"]);
        assert!(gateways.is_empty());
    }

    #[test]
    fn gateways_move_apart_and_get_a_status() {
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, generation: 2}\nspec: {gatewayClassName: istio-waypoint}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n";
        let (kept, mut gateways) = kept_documents(text).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["kind"].as_str(), Some("HTTPRoute"));
        give_uid(&mut gateways[0]);
        assert_eq!(
            gateways[0]["metadata"]["uid"].as_str().map(str::len),
            Some(36)
        );
        let gw = find_gateway(&mut gateways, "shop", "waypoint").unwrap();
        set_programmed(gw, "10.128.128.9");
        let status = &gateways[0]["status"];
        assert_eq!(
            status["addresses"][0]["value"].as_str(),
            Some("10.128.128.9")
        );
        let programmed = &status["conditions"][1];
        assert_eq!(programmed["type"].as_str(), Some("Programmed"));
        assert_eq!(programmed["status"].as_str(), Some("True"));
        assert_eq!(programmed["observedGeneration"].as_i64(), Some(2));
        assert!(programmed["lastTransitionTime"].as_str().is_some());
        assert!(find_gateway(&mut gateways, "default", "waypoint").is_none());
    }
}
