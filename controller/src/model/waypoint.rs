//! Waypoints (Gateways of class `istio-waypoint`) and the `istio.io/use-waypoint` bindings of
//! services and pods to them.
//!
//! A binding on the object itself wins over one on its namespace; `none` disables. A waypoint
//! serves services, workloads or both (`istio.io/waypoint-for`, default `service`): a namespace
//! binding silently skips the kind a waypoint does not serve, while an explicit label on the
//! object that cannot be honoured (missing Gateway, wrong class, wrong kind) is reported.

use std::collections::{BTreeMap, BTreeSet};

use super::labels::{self, labels};
use crate::manifests::{Gateway, ObjectKey};
use crate::warnings::Warnings;

/// HBONE port of a waypoint when its Gateway has no HBONE listener.
pub const DEFAULT_HBONE_PORT: u16 = 15008;

/// What a waypoint accepts traffic for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaypointFor {
    /// Traffic addressed to services (the default).
    Service,
    /// Traffic addressed to workloads.
    Workload,
    /// Both.
    All,
    /// Neither.
    None,
}

impl WaypointFor {
    fn parse(value: Option<&str>) -> Option<Self> {
        Some(match value {
            None | Some("service") => WaypointFor::Service,
            Some("workload") => WaypointFor::Workload,
            Some("all") => WaypointFor::All,
            Some("none") => WaypointFor::None,
            Some(_) => return None,
        })
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WaypointFor::Service => "service",
            WaypointFor::Workload => "workload",
            WaypointFor::All => "all",
            WaypointFor::None => "none",
        }
    }

    fn serves(self, kind: Bound) -> bool {
        matches!(
            (self, kind),
            (WaypointFor::All, _)
                | (WaypointFor::Service, Bound::Service)
                | (WaypointFor::Workload, Bound::Workload)
        )
    }
}

/// A waypoint Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waypoint {
    /// The Gateway's namespace and name.
    pub key: ObjectKey,
    /// What it serves.
    pub serves: WaypointFor,
    /// Hostname of its service, `<name>.<namespace>.svc.<domain suffix>`.
    pub hostname: String,
    /// Port of its HBONE listener.
    pub hbone_port: u16,
}

/// What kind of object a binding is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A Service.
    Service,
    /// A pod.
    Workload,
}

/// Every waypoint, and the names of the other Gateways (to explain a bad binding).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waypoints {
    waypoints: BTreeMap<ObjectKey, Waypoint>,
    other_gateways: BTreeSet<ObjectKey>,
}

impl Waypoints {
    /// Collects the waypoints among `gateways`.
    pub(crate) fn build(
        gateways: &BTreeMap<ObjectKey, Gateway>,
        domain_suffix: &str,
        warnings: &mut Warnings,
    ) -> Self {
        let mut out = Waypoints::default();
        for (key, gw) in gateways {
            if gw.spec.gateway_class_name != labels::WAYPOINT_GATEWAY_CLASS {
                out.other_gateways.insert(key.clone());
                continue;
            }
            let label = labels(&gw.metadata).get(labels::WAYPOINT_FOR).or_else(|| {
                gw.spec
                    .infrastructure
                    .as_ref()
                    .and_then(|i| i.labels.get(labels::WAYPOINT_FOR))
            });
            let serves = WaypointFor::parse(label.map(String::as_str)).unwrap_or_else(|| {
                warnings.push(format!(
                    "waypoint {key}: {} {:?} is not service, workload, all or none; using service",
                    labels::WAYPOINT_FOR,
                    label.map(String::as_str).unwrap_or_default()
                ));
                WaypointFor::Service
            });
            let hbone_port = gw
                .spec
                .listeners
                .iter()
                .find(|l| l.protocol == "HBONE")
                .map_or(DEFAULT_HBONE_PORT, |l| l.port);
            out.waypoints.insert(
                key.clone(),
                Waypoint {
                    key: key.clone(),
                    serves,
                    hostname: format!("{}.{}.svc.{domain_suffix}", key.name, key.namespace),
                    hbone_port,
                },
            );
        }
        out
    }

    /// The waypoint Gateway `key`, if it is one.
    pub fn get(&self, key: &ObjectKey) -> Option<&Waypoint> {
        self.waypoints.get(key)
    }

    /// The waypoint `subject` (a service or pod in `namespace`, described as `what` in
    /// warnings) is bound to by its own labels or, failing that, its namespace's labels.
    pub(crate) fn binding(
        &self,
        what: &str,
        kind: Bound,
        namespace: &str,
        own: &BTreeMap<String, String>,
        namespace_labels: Option<&BTreeMap<String, String>>,
        warnings: &mut Warnings,
    ) -> Option<&Waypoint> {
        let (source, explicit) = if own.contains_key(labels::USE_WAYPOINT) {
            (own, true)
        } else {
            (namespace_labels?, false)
        };
        let name = source.get(labels::USE_WAYPOINT)?;
        if name == labels::NONE || name.is_empty() {
            return None;
        }
        let wp_namespace = source
            .get(labels::USE_WAYPOINT_NAMESPACE)
            .filter(|ns| !ns.is_empty())
            .map_or(namespace, String::as_str);
        let key = ObjectKey::new(wp_namespace, name);
        let origin = if explicit {
            format!("its {} label", labels::USE_WAYPOINT)
        } else {
            format!(
                "the {} label of namespace {namespace}",
                labels::USE_WAYPOINT
            )
        };
        let Some(waypoint) = self.waypoints.get(&key) else {
            let why = if self.other_gateways.contains(&key) {
                format!(
                    "Gateway {key} is not of class {}",
                    labels::WAYPOINT_GATEWAY_CLASS
                )
            } else {
                format!("there is no Gateway {key}")
            };
            warnings.push(format!(
                "{what} is bound to waypoint {key} by {origin}, but {why}: its traffic does not go through a waypoint"
            ));
            return None;
        };
        if !waypoint.serves.serves(kind) {
            if explicit {
                warnings.push(format!(
                    "{what} is bound to waypoint {key} by {origin}, but that waypoint has {}={}: its traffic does not go through a waypoint",
                    labels::WAYPOINT_FOR,
                    waypoint.serves.as_str(),
                ));
            }
            return None;
        }
        Some(waypoint)
    }
}
