//! Reading the input folder through the controller's manifest loader, so that the lab and the
//! controller agree on what a folder of manifests means (kinds, defaults, validation).

use std::path::Path;

use super::expand::Input;
use super::LabError;

/// Loads the manifests under `dir`; any manifest error stops the lab before it starts.
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
        gateways: m.gateways.into_values().collect(),
        service_accounts: m.service_accounts.into_values().collect(),
    })
}
