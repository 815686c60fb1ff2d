//! Istio ztunnel's local config file (`LOCAL_XDS_PATH`): workloads, services and policies in
//! YAML, read instead of xDS.
//!
//! ```yaml
//! workloads:
//! - uid: Kubernetes//v1/Pod/shop/cart-0     # optional: <clusterId>//v1/Pod/<ns>/<name>
//!   name: cart-0
//!   namespace: shop
//!   serviceAccount: cart                    # default "default"
//!   trustDomain: cluster.local              # default "cluster.local"
//!   workloadIps: [10.0.1.5]
//!   protocol: HBONE                         # HBONE | TCP (default)
//!   node: node-1
//!   services:
//!     shop/cart.shop.svc.cluster.local: {80: 8080}    # servicePort: targetPort
//!   authorizationPolicies: [shop/cart-only]
//!   canonicalName: cart
//!   canonicalRevision: v1
//!   workloadName: cart
//!   workloadType: deployment                # deployment | cronjob | pod | job
//!   status: Healthy                         # Healthy (default) | Unhealthy
//!   clusterId: Kubernetes
//!   network: ""
//!   waypoint: {destination: /10.0.9.9, hboneMtlsPort: 15008}   # or destination: {namespace, hostname}
//! services:
//! - name: cart
//!   namespace: shop
//!   hostname: cart.shop.svc.cluster.local
//!   vips: [/10.96.0.20]                     # <network>/<ip>, or a bare IP
//!   ports: {80: 8080}                       # or [{servicePort: 80, targetPort: 8080, appProtocol: HTTP11}]
//!   subjectAltNames: []
//! policies:
//! - name: cart-only
//!   namespace: shop
//!   scope: WorkloadSelector                 # Global | Namespace | WorkloadSelector
//!   action: Allow                           # Allow | Deny
//!   dryRun: false
//!   rules:                                  # rules (OR) → clauses (AND) → matches (OR)
//!   - - - principals: [{exact: cluster.local/ns/shop/sa/web}]
//!         destinationPorts: [8080]
//! ```
//!
//! Match fields: `namespaces`, `notNamespaces`, `principals`, `notPrincipals` (string matches
//! `{exact: x}`, `{prefix: x}`, `{suffix: x}`, `{presence: {}}`), `sourceIps`, `notSourceIps`,
//! `destinationIps`, `notDestinationIps` (CIDRs or IPs), `destinationPorts`,
//! `notDestinationPorts`, `serviceAccounts`, `notServiceAccounts` (`{namespace,
//! serviceAccount}`). Unknown fields are errors everywhere, so a typo cannot silently widen a
//! policy.

mod forms;
mod policy;
mod service;
mod workload;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use amesh_proto::istio::security::Authorization;
use amesh_proto::istio::workload::Address;
use serde::{Deserialize, Serialize};

pub use forms::LocalPorts;
pub(crate) use forms::StringMatchForm;
pub use policy::LocalPolicy;
pub use service::LocalService;
pub use workload::{HealthStatus, LocalWorkload};

use super::error::{ConvertError, ResourceKind};
use super::{Model, Snapshot};

/// The whole local file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<LocalWorkload>,
    #[serde(default)]
    pub services: Vec<LocalService>,
    #[serde(default)]
    pub policies: Vec<LocalPolicy>,
    /// The file this was read from, for error messages.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

/// Why a local config cannot be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("cannot read local config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("local config {origin} is not valid YAML for this format: {source}")]
    Parse {
        origin: String,
        source: serde_yaml::Error,
    },
    #[error("local config {origin}: {source}")]
    Invalid {
        origin: String,
        source: ConvertError,
    },
    #[error("local config {origin}: {kind} {name:?} is defined more than once")]
    Duplicate {
        origin: String,
        kind: ResourceKind,
        name: String,
    },
    #[error("cannot write local config as YAML: {0}")]
    Serialize(serde_yaml::Error),
}

impl LocalConfig {
    /// Reads and parses `path` (not yet converted: see [`LocalConfig::into_model`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LocalConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, Some(path.to_path_buf()))
    }

    /// Parses YAML text that does not come from a file.
    pub fn from_yaml(text: &str) -> Result<Self, LocalConfigError> {
        Self::parse(text, None)
    }

    pub(crate) fn parse(text: &str, origin: Option<PathBuf>) -> Result<Self, LocalConfigError> {
        // An empty (or comment-only) file is an empty config, not a YAML error.
        let blank = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        let mut config: LocalConfig = if blank {
            LocalConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| LocalConfigError::Parse {
                origin: origin_name(origin.as_deref()),
                source,
            })?
        };
        config.origin = origin;
        Ok(config)
    }

    pub fn to_yaml(&self) -> Result<String, LocalConfigError> {
        serde_yaml::to_string(self).map_err(LocalConfigError::Serialize)
    }

    /// The file for xDS resources (how the lab turns controller output into this file).
    pub fn from_resources(
        addresses: &[Address],
        policies: &[Authorization],
    ) -> Result<LocalConfig, ConvertError> {
        Ok(Self::from_model(&Model::from_protos(addresses, policies)?))
    }

    pub fn from_model(model: &Model) -> LocalConfig {
        LocalConfig {
            workloads: model.workloads.iter().map(LocalWorkload::from).collect(),
            services: model.services.iter().map(LocalService::from).collect(),
            policies: model.policies.iter().map(LocalPolicy::from).collect(),
            origin: None,
        }
    }

    pub fn from_snapshot(snapshot: &Snapshot) -> LocalConfig {
        Self::from_model(&snapshot.to_model())
    }

    /// Converts to the model, checking every field and that no name is used twice.
    pub fn into_model(self) -> Result<Model, LocalConfigError> {
        let origin = origin_name(self.origin.as_deref());
        let invalid = |source| LocalConfigError::Invalid {
            origin: origin.clone(),
            source,
        };
        let duplicate = |kind, name| LocalConfigError::Duplicate {
            origin: origin.clone(),
            kind,
            name,
        };
        let mut model = Model::default();
        let mut seen = HashSet::new();
        for w in &self.workloads {
            let w = w.to_model().map_err(invalid)?;
            if !seen.insert(w.uid.clone()) {
                return Err(duplicate(ResourceKind::Workload, w.uid));
            }
            model.workloads.push(w);
        }
        for s in &self.services {
            let s = s.to_model().map_err(invalid)?;
            // Workload uids and service keys share the xDS name space.
            if !seen.insert(s.key()) {
                return Err(duplicate(ResourceKind::Service, s.key()));
            }
            model.services.push(s);
        }
        let mut seen = HashSet::new();
        for p in &self.policies {
            let p = p.to_model().map_err(invalid)?;
            if !seen.insert(p.key()) {
                return Err(duplicate(ResourceKind::Policy, p.key()));
            }
            model.policies.push(p);
        }
        Ok(model)
    }
}

fn origin_name(origin: Option<&Path>) -> String {
    match origin {
        Some(p) => p.display().to_string(),
        None => "(not from a file)".to_string(),
    }
}
