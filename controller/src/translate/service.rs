//! Service → `istio.workload.Service`: hostname, VIPs, ports (numeric target ports; named
//! ones are 0 here and resolved per pod in each Workload's `services`), waypoint and
//! load-balancing hints.

use std::net::IpAddr;

use amesh_proto::istio::workload::{
    load_balancing, IpFamilies, LoadBalancing, NetworkAddress, Port, Service,
};

use super::workload::{gateway_address, ip_octets};
use crate::model::{Bound, Model, ServiceInfo, TargetPort};
use crate::warnings::Warnings;

/// The xDS name of a service: `<ns>/<hostname>`.
pub fn resource_name(svc: &Service) -> String {
    format!("{}/{}", svc.namespace, svc.hostname)
}

/// Builds the Service resource of one service.
pub fn service(svc: &ServiceInfo, model: &Model, warnings: &mut Warnings) -> Service {
    let ns = svc.key.namespace.as_str();
    let waypoint = if svc.is_waypoint {
        None
    } else {
        model
            .waypoints
            .binding(
                &format!("service {}", svc.key),
                Bound::Service,
                ns,
                &svc.labels,
                model.namespace_labels(ns),
                warnings,
            )
            .map(gateway_address)
    };
    let ports = svc
        .ports
        .iter()
        .map(|p| Port {
            service_port: u32::from(p.port),
            target_port: match p.target {
                TargetPort::Number(n) => u32::from(n),
                TargetPort::Name(_) => 0,
            },
            app_protocol: p.app_protocol as i32,
        })
        .collect();
    // Istio's "PreferClose": same network, then region, zone, subzone, falling back outward.
    let load_balancing = svc.prefer_close.then(|| LoadBalancing {
        routing_preference: [
            load_balancing::Scope::Network,
            load_balancing::Scope::Region,
            load_balancing::Scope::Zone,
            load_balancing::Scope::Subzone,
        ]
        .into_iter()
        .map(|s| s as i32)
        .collect(),
        mode: load_balancing::Mode::Failover as i32,
        health_policy: load_balancing::HealthPolicy::OnlyHealthy as i32,
    });
    Service {
        name: svc.key.name.clone(),
        namespace: ns.to_owned(),
        hostname: svc.hostname.clone(),
        addresses: svc
            .vips
            .iter()
            .map(|ip| NetworkAddress {
                network: String::new(),
                address: ip_octets(*ip),
                length: None,
            })
            .collect(),
        ports,
        waypoint,
        load_balancing,
        ip_families: ip_families(svc) as i32,
        canonical: true,
        ingress_use_waypoint: svc.ingress_use_waypoint,
        ..Service::default()
    }
}

/// `spec.ipFamilies` if set, else what the VIPs are.
fn ip_families(svc: &ServiceInfo) -> IpFamilies {
    let (v4, v6) = if svc.ip_families.is_empty() {
        (
            svc.vips.iter().any(IpAddr::is_ipv4),
            svc.vips.iter().any(IpAddr::is_ipv6),
        )
    } else {
        (
            svc.ip_families.iter().any(|f| f == "IPv4"),
            svc.ip_families.iter().any(|f| f == "IPv6"),
        )
    };
    match (v4, v6) {
        (true, true) => IpFamilies::Dual,
        (true, false) => IpFamilies::Ipv4Only,
        (false, true) => IpFamilies::Ipv6Only,
        (false, false) => IpFamilies::Automatic,
    }
}
