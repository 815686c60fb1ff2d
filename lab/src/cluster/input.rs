//! Reading the input folder through the controller's manifest loader, so that the lab and the
//! controller agree on what a folder of manifests means (kinds, defaults, validation).

use std::path::Path;

use super::expand::Input;
use super::LabError;

/// Loads the manifests under `dir`; any manifest error stops the lab before it starts.
#[cfg(feature = "controller")]
pub fn load(dir: &Path) -> Result<Input, LabError> {
    let loaded = controller::manifests::load_dir(dir);
    if !loaded.errors.is_empty() {
        return Err(LabError::Manifests {
            dir: dir.display().to_string(),
            errors: loaded.errors.iter().map(ToString::to_string).collect(),
        });
    }
    let m = loaded.manifests;
    Ok(Input {
        pods: m.pods.into_values().collect(),
        deployments: m.deployments.into_values().collect(),
        services: m.services.into_values().collect(),
        nodes: m.nodes,
    })
}

/// TEMPORARY stand-in while `controller::manifests` does not build: reads just the kinds the
/// lab needs. Remove with the `controller` feature.
#[cfg(not(feature = "controller"))]
pub fn load(dir: &Path) -> Result<Input, LabError> {
    use serde::Deserialize;
    use serde_yaml::Value;

    let mut input = Input::default();
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    if dir.is_file() {
        files.push(dir.to_path_buf());
        stack.clear();
    }
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", d.display()));
                continue;
            }
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", f.display()));
                continue;
            }
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = match Value::deserialize(doc) {
                Ok(v) if !v.is_null() => v,
                Ok(_) => continue,
                Err(e) => {
                    errors.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let res = match (field("apiVersion").as_deref(), field("kind").as_deref()) {
                (Some("v1"), Some("Pod")) => serde_yaml::from_value(v).map(|p| input.pods.push(p)),
                (Some("v1"), Some("Service")) => {
                    serde_yaml::from_value(v).map(|s| input.services.push(s))
                }
                (Some("apps/v1"), Some("Deployment")) => {
                    serde_yaml::from_value(v).map(|d| input.deployments.push(d))
                }
                _ => Ok(()),
            };
            if let Err(e) = res {
                errors.push(format!("{}: {e}", f.display()));
            }
        }
    }
    if errors.is_empty() {
        Ok(input)
    } else {
        Err(LabError::Manifests {
            dir: dir.display().to_string(),
            errors,
        })
    }
}
