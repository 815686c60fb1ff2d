//! A service as Istio ztunnel's local file writes it.

use serde::{Deserialize, Serialize};

use super::forms::LocalPorts;
use crate::state::address::{GatewayAddress, NetworkAddress};
use crate::state::convert::required;
use crate::state::error::{ConvertError, FieldError, Problem, ResourceKind};
use crate::state::Service;

/// One entry of `services:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// `<network>/<ip>` (`/10.96.0.10` on the default network) or a bare IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<NetworkAddress>,
    #[serde(default, skip_serializing_if = "LocalPorts::is_empty")]
    pub ports: LocalPorts,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
}

impl From<&Service> for LocalService {
    fn from(s: &Service) -> Self {
        LocalService {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            vips: s.vips.clone(),
            ports: LocalPorts(s.ports.clone()),
            subject_alt_names: s.subject_alt_names.clone(),
            waypoint: s.waypoint.clone(),
        }
    }
}

impl LocalService {
    /// `ns/hostname`, the service's key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    pub(crate) fn to_model(&self) -> Result<Service, ConvertError> {
        self.convert()
            .map_err(|e| ConvertError::new(ResourceKind::Service, &self.key(), e))
    }

    fn convert(&self) -> Result<Service, FieldError> {
        let mut ports = self.ports.0.clone();
        ports.sort_by_key(|p| p.service_port);
        for (i, pair) in ports.windows(2).enumerate() {
            if pair[0].service_port == pair[1].service_port {
                return Err(FieldError::new(
                    format!("ports[{}]", i + 1),
                    Problem::DuplicatePort(pair[0].service_port),
                ));
            }
        }
        if ports.first().is_some_and(|p| p.service_port == 0) {
            return Err(FieldError::new("ports", Problem::Port(0)));
        }
        Ok(Service {
            name: required("name", self.name.clone())?,
            namespace: required("namespace", self.namespace.clone())?,
            hostname: required("hostname", self.hostname.clone())?,
            vips: self.vips.clone(),
            ports,
            subject_alt_names: self.subject_alt_names.clone(),
            waypoint: self.waypoint.clone(),
        })
    }
}
