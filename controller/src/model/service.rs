//! Services: hostname, virtual IPs, TCP ports with their target ports and application
//! protocols, and the load-balancing hints ztunnel understands.

use std::collections::BTreeMap;
use std::net::IpAddr;

use amesh_proto::istio::workload::AppProtocol;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, annotations, labels};
use crate::manifests::ObjectKey;
use crate::warnings::Warnings;

/// Where a service port lands on a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number, the same on every pod.
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

/// One TCP port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// Port name (may be empty on single-port services).
    pub name: String,
    /// Port on the service's VIPs.
    pub port: u16,
    /// Port on the pods.
    pub target: TargetPort,
    /// Protocol spoken, from `appProtocol` or the name's prefix.
    pub app_protocol: AppProtocol,
}

/// A Service as the mesh sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `<name>.<namespace>.svc.<domain suffix>`.
    pub hostname: String,
    /// Service labels (waypoint binding).
    pub labels: BTreeMap<String, String>,
    /// Pod selector; empty means the service selects no pods (manually managed endpoints).
    pub selector: BTreeMap<String, String>,
    /// Cluster IPs; none for headless services.
    pub vips: Vec<IpAddr>,
    /// `spec.ipFamilies` (`IPv4`, `IPv6`), if set.
    pub ip_families: Vec<String>,
    /// TCP ports.
    pub ports: Vec<ServicePortInfo>,
    /// Prefer endpoints close to the client (`trafficDistribution: PreferClose`).
    pub prefer_close: bool,
    /// Traffic from ingress gateways also goes through the waypoint.
    pub ingress_use_waypoint: bool,
    /// The service belongs to a waypoint (it never uses a waypoint itself).
    pub is_waypoint: bool,
}

impl ServiceInfo {
    /// Reads a service; `None` for ExternalName services (DNS aliases without endpoints).
    pub(crate) fn from_service(
        key: &ObjectKey,
        svc: &Service,
        domain_suffix: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
        warnings: &mut Warnings,
    ) -> Option<Self> {
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            tracing::debug!(service = %key, "skipping an ExternalName service");
            return None;
        }
        let svc_labels = labels(&svc.metadata).clone();

        let listed: Vec<&String> = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => ips.iter().collect(),
            _ => spec.cluster_ip.iter().collect(),
        };
        let mut vips = Vec::new();
        for text in listed {
            if text.is_empty() || text == "None" {
                continue;
            }
            match text.parse::<IpAddr>() {
                Ok(ip) if !vips.contains(&ip) => vips.push(ip),
                Ok(_) => {}
                Err(_) => warnings.push(format!(
                    "service {key}: cluster IP {text:?} is not an IP address; ignored"
                )),
            }
        }

        let mut ports = Vec::new();
        for port in spec.ports.iter().flatten() {
            if let Some(p) = service_port(key, port, warnings) {
                ports.push(p);
            }
        }

        let distribution = spec.traffic_distribution.as_deref().or_else(|| {
            annotations(&svc.metadata)
                .get(labels::TRAFFIC_DISTRIBUTION)
                .map(String::as_str)
        });
        let label_true = |l: Option<&BTreeMap<String, String>>| {
            l.and_then(|l| l.get(labels::INGRESS_USE_WAYPOINT))
                .is_some_and(|v| v == "true")
        };
        Some(ServiceInfo {
            key: key.clone(),
            hostname: format!("{}.{}.svc.{domain_suffix}", key.name, key.namespace),
            selector: spec.selector.clone().unwrap_or_default(),
            vips,
            ip_families: spec.ip_families.clone().unwrap_or_default(),
            ports,
            prefer_close: matches!(distribution, Some("PreferClose" | "PreferSameZone")),
            ingress_use_waypoint: label_true(Some(&svc_labels)) || label_true(namespace_labels),
            is_waypoint: svc_labels.contains_key(labels::GATEWAY_NAME)
                || svc_labels.contains_key(labels::GATEWAY_MANAGED),
            labels: svc_labels,
        })
    }
}

/// One port; `None` (reported) for ports ztunnel cannot carry or that are out of range.
fn service_port(
    key: &ObjectKey,
    port: &ServicePort,
    warnings: &mut Warnings,
) -> Option<ServicePortInfo> {
    let name = port.name.clone().unwrap_or_default();
    if let Some(proto) = port.protocol.as_deref().filter(|p| *p != "TCP") {
        // ztunnel carries TCP only; a UDP twin of a TCP port (DNS) must not shadow it.
        tracing::debug!(service = %key, port = port.port, proto, "skipping a non-TCP port");
        return None;
    }
    let Some(number) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
        warnings.push(format!(
            "service {key}: port {} is out of range; ignored",
            port.port
        ));
        return None;
    };
    let target = match &port.target_port {
        None => TargetPort::Number(number),
        Some(IntOrString::Int(n)) => match u16::try_from(*n).ok().filter(|p| *p != 0) {
            Some(n) => TargetPort::Number(n),
            None => {
                warnings.push(format!(
                    "service {key}: port {number} has targetPort {n}, out of range; port ignored"
                ));
                return None;
            }
        },
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(n) if n != 0 => TargetPort::Number(n),
            _ if s.is_empty() => TargetPort::Number(number),
            _ => TargetPort::Name(s.clone()),
        },
    };
    Some(ServicePortInfo {
        app_protocol: app_protocol(port.app_protocol.as_deref(), &name),
        name,
        port: number,
        target,
    })
}

/// The application protocol of a port: `appProtocol` if set, else the port name up to its
/// first `-` (`http-web` → HTTP/1.1), as Istio's protocol selection does.
pub fn app_protocol(app_protocol: Option<&str>, port_name: &str) -> AppProtocol {
    if let Some(p) = app_protocol.filter(|p| !p.is_empty()) {
        return protocol_of(p);
    }
    let prefix = port_name.split('-').next().unwrap_or_default();
    protocol_of(prefix)
}

fn protocol_of(name: &str) -> AppProtocol {
    match name.to_ascii_lowercase().as_str() {
        "http" | "http_proxy" | "grpc-web" | "kubernetes.io/ws" => AppProtocol::Http11,
        "http2" | "kubernetes.io/h2c" => AppProtocol::Http2,
        "grpc" => AppProtocol::Grpc,
        "tcp" | "mongo" | "mysql" | "redis" => AppProtocol::Tcp,
        "tls" | "https" | "kubernetes.io/wss" => AppProtocol::Tls,
        _ => AppProtocol::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        assert_eq!(app_protocol(None, "http-web"), AppProtocol::Http11);
        assert_eq!(app_protocol(None, "HTTP2"), AppProtocol::Http2);
        assert_eq!(app_protocol(None, "grpc-api"), AppProtocol::Grpc);
        assert_eq!(app_protocol(None, "tcp-db"), AppProtocol::Tcp);
        assert_eq!(app_protocol(None, "https"), AppProtocol::Tls);
        assert_eq!(app_protocol(None, "web"), AppProtocol::Unknown);
        assert_eq!(
            app_protocol(Some("kubernetes.io/h2c"), "http"),
            AppProtocol::Http2
        );
        assert_eq!(app_protocol(Some("grpc"), "tcp"), AppProtocol::Grpc);
        assert_eq!(app_protocol(Some(""), "http"), AppProtocol::Http11);
    }
}
