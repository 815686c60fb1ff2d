//! A service: a hostname, its virtual IPs and ports. Its endpoints are the workloads that
//! name it in their `services` map (see [`super::Snapshot::endpoints`]).

use amesh_proto::istio::workload as proto;
use serde::{Deserialize, Serialize};

use super::address::{GatewayAddress, NetworkAddress};
use super::convert::{known, port, port_or_zero, required};
use super::error::{ConvertError, FieldError, Problem, ResourceKind};

/// Application protocol of a service port. In YAML: the proto's names (`HTTP11`, `GRPC`, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AppProtocol {
    #[default]
    Unknown,
    Http11,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

impl AppProtocol {
    pub(crate) fn is_unknown(&self) -> bool {
        *self == AppProtocol::Unknown
    }
}

/// One port of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub service_port: u16,
    /// Port on the endpoints; 0 means "see each endpoint's own port map".
    #[serde(default)]
    pub target_port: u16,
    #[serde(default, skip_serializing_if = "AppProtocol::is_unknown")]
    pub app_protocol: AppProtocol,
}

/// A service fronting a set of workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Fully qualified hostname, e.g. `reviews.bookinfo.svc.cluster.local`.
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    pub ports: Vec<ServicePort>,
    /// Extra identities accepted for this service's endpoints.
    pub subject_alt_names: Vec<String>,
    /// Waypoint that handles traffic addressed to this service, if any.
    pub waypoint: Option<GatewayAddress>,
}

impl Service {
    /// The xDS resource name and the key workloads use in their `services` map.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// The port entry for `service_port`, if the service exposes it.
    pub fn port(&self, service_port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.service_port == service_port)
    }

    /// Converts the xDS proto, checking every field.
    pub fn from_proto(p: proto::Service) -> Result<Self, ConvertError> {
        let name = format!("{}/{}", p.namespace, p.hostname);
        convert(p).map_err(|e| ConvertError::new(ResourceKind::Service, &name, e))
    }
}

fn convert(p: proto::Service) -> Result<Service, FieldError> {
    let vips = p
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            NetworkAddress::from_proto(a).map_err(|e| e.within(format!("addresses[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports: Vec<ServicePort> = Vec::with_capacity(p.ports.len());
    for (i, sp) in p.ports.iter().enumerate() {
        let field = |name: &str| format!("ports[{i}].{name}");
        let service_port =
            port(sp.service_port).map_err(|e| FieldError::new(field("service_port"), e))?;
        if ports.iter().any(|q| q.service_port == service_port) {
            return Err(FieldError::new(
                field("service_port"),
                Problem::DuplicatePort(service_port),
            ));
        }
        let target_port =
            port_or_zero(sp.target_port).map_err(|e| FieldError::new(field("target_port"), e))?;
        let app_protocol =
            match known(sp.app_protocol).map_err(|e| FieldError::new(field("app_protocol"), e))? {
                proto::AppProtocol::Unknown => AppProtocol::Unknown,
                proto::AppProtocol::Http11 => AppProtocol::Http11,
                proto::AppProtocol::Http2 => AppProtocol::Http2,
                proto::AppProtocol::Grpc => AppProtocol::Grpc,
                proto::AppProtocol::Tcp => AppProtocol::Tcp,
                proto::AppProtocol::Tls => AppProtocol::Tls,
            };
        ports.push(ServicePort {
            service_port,
            target_port,
            app_protocol,
        });
    }
    // Order carries no meaning; sorting makes equal services compare equal whatever order
    // (or YAML form) they came in.
    ports.sort_by_key(|p| p.service_port);
    let waypoint = p
        .waypoint
        .as_ref()
        .map(GatewayAddress::from_proto)
        .transpose()
        .map_err(|e| e.within("waypoint"))?;
    Ok(Service {
        name: required("name", p.name)?,
        namespace: required("namespace", p.namespace)?,
        hostname: required("hostname", p.hostname)?,
        vips,
        ports,
        subject_alt_names: p.subject_alt_names,
        waypoint,
    })
}
