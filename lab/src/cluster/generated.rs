//! The generated manifests folder (`<run dir>/manifests/`): what a real cluster's API server
//! would hold once the lab has scheduled and started everything. The controller's folder source
//! reads it.
//!
//! - `generated/nodes.yaml`, `generated/pods.yaml`, `generated/services.yaml`,
//!   `generated/endpointslices.yaml`: Nodes, Pods with `spec.nodeName` (and, once the node
//!   has started them, `status.podIP`: rewritten as the kubelet would update it), Services
//!   with `spec.clusterIP`, the hand-kept EndpointSlice of `default/kubernetes`.
//! - `input/...`: every other document of the input folder, same relative paths (kinds the
//!   lab does not know included), so policies, routes and namespaces reach the controller as
//!   written.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use k8s_openapi::api::core::v1::Pod;

use super::expand::Expanded;

/// Kinds the lab regenerates (`apiVersion: v1`); input documents of these kinds are replaced.
const REGENERATED: [&str; 3] = ["Pod", "Service", "Node"];

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

/// Writes the generated folder `out` from the input folder and the planned cluster.
pub fn write(input_dir: &Path, expanded: &Expanded, out: &Path) -> Result<(), GeneratedError> {
    let gen = out.join("generated");
    std::fs::create_dir_all(&gen).map_err(io("cannot create", &gen))?;
    write_docs(&gen.join("nodes.yaml"), &expanded.nodes)?;
    let pods: Vec<_> = expanded.pods.iter().map(|p| &p.pod).collect();
    write_docs(&gen.join("pods.yaml"), &pods)?;
    write_docs(&gen.join("services.yaml"), &expanded.services)?;
    write_docs(&gen.join("endpointslices.yaml"), &expanded.endpoint_slices)?;
    for file in yaml_files(input_dir)? {
        let rel = file.strip_prefix(input_dir).unwrap_or(&file);
        let rel = if rel.as_os_str().is_empty() {
            // The input is a single file.
            Path::new(file.file_name().unwrap_or_default())
        } else {
            rel
        };
        let text = std::fs::read_to_string(&file).map_err(io("cannot read", &file))?;
        let kept = kept_documents(&text).map_err(|source| GeneratedError::Yaml {
            path: file.display().to_string(),
            source,
        })?;
        if kept.is_empty() {
            continue;
        }
        let target = out.join("input").join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        write_docs(&target, &kept)?;
    }
    Ok(())
}

/// The documents of a YAML text that the lab does not regenerate.
fn kept_documents(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut kept = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
        let regenerated = field("apiVersion").as_deref() == Some("v1")
            && field("kind").is_some_and(|k| REGENERATED.contains(&k.as_str()));
        if !regenerated {
            kept.push(value);
        }
    }
    Ok(kept)
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
        let kept = kept_documents(text).unwrap();
        let kinds: Vec<&str> = kept.iter().map(|v| v["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Namespace", "AuthorizationPolicy", "Service"]);
    }
}
