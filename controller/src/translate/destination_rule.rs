//! DestinationRule (`networking.istio.io`) → `ServiceRoutes.destination` (an
//! `amesh.l7.v1.DestinationPolicy`) of the service its `host` names, and who gets it.
//!
//! - **Host** resolves as a VirtualService host does (`virtual_service::resolve_host`), in the
//!   rule's namespace. Several rules for one service: the one in the service's namespace first,
//!   then the oldest, then by `<ns>/<name>`; the first one's `trafficPolicy` applies, subsets
//!   are merged (the first definition of a name wins), with a warning naming them all.
//! - **Subsets** list the uids (the Workload Address keys, `translate::pod_uid`) of the
//!   service's pods (selected by its selector, in its namespace) whose labels include the
//!   subset's labels; the list follows pod changes because every snapshot retranslates.
//!   Endpoints of selector-less Services are not subset members.
//! - **Defaults.** Istio's, written out where a section is present: outlier detection
//!   `consecutive5xxErrors` 5 (0 turns it off), `consecutiveGatewayErrors` 0, `interval` 10s,
//!   `baseEjectionTime` 30s, `maxEjectionPercent` 10. Connection pool numbers 0 = unlimited.
//!   `LEAST_CONN` is read as `LEAST_REQUEST`; `PASSTHROUGH` is reported and left to the
//!   waypoint's default.
//! - **Resources.** A service with a DestinationRule but no routes gets a `ServiceRoutes`
//!   with no routes (requests go to the service itself) and the destination.
//! - **Visibility.** A `ServiceRoutes` goes to the waypoint its service is bound to, and also to
//!   every waypoint that gets routes naming the service as a backend or mirror: that waypoint
//!   sends to the service and needs its subsets and policy ([`widen_visibility`]).

use std::collections::{BTreeMap, BTreeSet};

use amesh_proto::amesh::l7::v1::{
    consistent_hash, filter, load_balancer, ConnectionPool, ConsistentHash, DestinationPolicy,
    LoadBalancer, OutlierDetection, PortTrafficPolicy, ServiceRoutes, Subset, TrafficPolicy,
};

use super::virtual_service::{empty_resource, report, resolve_host, service_address};
use super::{pod_uid, L7Resource, TranslateOptions};
use crate::manifests::networking::{
    parse_istio_duration, DestinationRule, DrConnectionPool, DrLoadBalancer, DrOutlierDetection,
    DrTrafficPolicy,
};
use crate::manifests::{Manifests, ObjectKey};
use crate::model::{Model, ServiceInfo};
use crate::warnings::Warnings;

/// Sets the destination policy of every service a DestinationRule names, adding resources
/// for services without routes (`resources` sorted by name, kept sorted).
pub(crate) fn apply(
    resources: &mut Vec<L7Resource<ServiceRoutes>>,
    m: &Manifests,
    model: &Model,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    opts: &TranslateOptions,
    warnings: &mut Warnings,
) {
    let services: BTreeMap<&ObjectKey, &ServiceInfo> =
        model.services.iter().map(|s| (&s.key, s)).collect();
    let mut per_service: BTreeMap<ObjectKey, Vec<(&ObjectKey, &DestinationRule)>> = BTreeMap::new();
    for (key, dr) in &m.destination_rules {
        let what = format!("DestinationRule {key}");
        let host = &dr.spec.host;
        match resolve_host(host, &key.namespace, &services, &opts.domain_suffix) {
            Some(service) => per_service.entry(service).or_default().push((key, dr)),
            None => warnings.push(format!(
                "{what}: spec.host: {host:?} names no Service amesh knows; ignored"
            )),
        }
    }

    for (service, mut rules) in per_service {
        rules.sort_by(|a, b| {
            let foreign = |k: &ObjectKey| k.namespace != service.namespace;
            let created = |d: &DestinationRule| d.metadata.creation_timestamp.clone();
            foreign(a.0)
                .cmp(&foreign(b.0))
                .then_with(|| created(a.1).cmp(&created(b.1)))
                .then(a.0.cmp(b.0))
        });
        if rules.len() > 1 {
            let names: Vec<String> = rules.iter().map(|(k, _)| k.to_string()).collect();
            warnings.push(format!(
                "service {service}: several DestinationRules ({}): the traffic policy of {} \
                 applies, subsets are merged",
                names.join(", "),
                names[0]
            ));
        }
        let svc = services[&service];
        let mut policy = DestinationPolicy {
            source: rules[0].0.to_string(),
            traffic_policy: None,
            subsets: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for (i, (key, dr)) in rules.iter().enumerate() {
            let what = format!("DestinationRule {key}");
            report(&what, "spec", &dr.spec.other, warnings);
            if let Some(p) = &dr.spec.traffic_policy {
                let converted = traffic_policy(&what, "spec.trafficPolicy", p, warnings);
                if i == 0 {
                    policy.traffic_policy = Some(converted);
                }
            }
            for (j, s) in dr.spec.subsets.iter().enumerate() {
                let at = format!("spec.subsets[{j}]");
                report(&what, &at, &s.other, warnings);
                if !seen.insert(s.name.clone()) {
                    warnings.push(format!(
                        "{what}: {at}: subset {:?} is already defined for service {service}; \
                         ignored",
                        s.name
                    ));
                    continue;
                }
                policy.subsets.push(Subset {
                    name: s.name.clone(),
                    workload_uids: members(model, svc, &s.labels, opts),
                    traffic_policy: s.traffic_policy.as_ref().map(|p| {
                        traffic_policy(&what, &format!("{at}.trafficPolicy"), p, warnings)
                    }),
                });
            }
        }
        let name = service_address(svc);
        let at = match resources.binary_search_by(|r| r.name.cmp(&name)) {
            Ok(at) => at,
            Err(at) => {
                resources.insert(at, empty_resource(svc, bindings));
                at
            }
        };
        resources[at].resource.destination = Some(policy);
    }
}

/// Uids of the service's pods carrying every label of `labels`.
fn members(
    model: &Model,
    svc: &ServiceInfo,
    labels: &BTreeMap<String, String>,
    opts: &TranslateOptions,
) -> Vec<String> {
    let mut uids: Vec<String> = model
        .pods
        .iter()
        .filter(|p| model.services_of(p).any(|s| s.key == svc.key))
        .filter(|p| labels.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .map(|p| pod_uid(&opts.cluster_id, &p.key.namespace, &p.key.name))
        .collect();
    uids.sort();
    uids
}

fn traffic_policy(
    what: &str,
    at: &str,
    p: &DrTrafficPolicy,
    warnings: &mut Warnings,
) -> TrafficPolicy {
    report(what, at, &p.other, warnings);
    TrafficPolicy {
        load_balancer: p
            .load_balancer
            .as_ref()
            .map(|lb| load_balancer(what, &format!("{at}.loadBalancer"), lb, warnings)),
        connection_pool: p
            .connection_pool
            .as_ref()
            .map(|c| connection_pool(what, &format!("{at}.connectionPool"), c, warnings)),
        outlier_detection: p
            .outlier_detection
            .as_ref()
            .map(|o| outlier(what, &format!("{at}.outlierDetection"), o, warnings)),
        port_policies: p
            .port_level_settings
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let at = format!("{at}.portLevelSettings[{i}]");
                report(what, &at, &s.other, warnings);
                PortTrafficPolicy {
                    port: s.port.as_ref().map_or(0, |p| p.number),
                    load_balancer: s
                        .load_balancer
                        .as_ref()
                        .map(|lb| load_balancer(what, &format!("{at}.loadBalancer"), lb, warnings)),
                    connection_pool: s.connection_pool.as_ref().map(|c| {
                        connection_pool(what, &format!("{at}.connectionPool"), c, warnings)
                    }),
                    outlier_detection: s
                        .outlier_detection
                        .as_ref()
                        .map(|o| outlier(what, &format!("{at}.outlierDetection"), o, warnings)),
                }
            })
            .collect(),
    }
}

fn load_balancer(
    what: &str,
    at: &str,
    lb: &DrLoadBalancer,
    warnings: &mut Warnings,
) -> LoadBalancer {
    report(what, at, &lb.other, warnings);
    let simple = match lb.simple.as_deref() {
        Some("ROUND_ROBIN") => load_balancer::Simple::RoundRobin,
        Some("LEAST_REQUEST" | "LEAST_CONN") => load_balancer::Simple::LeastRequest,
        Some("RANDOM") => load_balancer::Simple::Random,
        Some("PASSTHROUGH") => {
            warnings.push(format!(
                "{what}: {at}.simple: PASSTHROUGH is not supported by amesh waypoints; the \
                 waypoint's default balancing applies"
            ));
            load_balancer::Simple::Unspecified
        }
        _ => load_balancer::Simple::Unspecified,
    };
    let consistent_hash = lb.consistent_hash.as_ref().and_then(|h| {
        let at = format!("{at}.consistentHash");
        report(what, &at, &h.other, warnings);
        let key = if let Some(name) = &h.http_header_name {
            consistent_hash::Key::HttpHeaderName(name.to_ascii_lowercase())
        } else if let Some(c) = &h.http_cookie {
            report(what, &format!("{at}.httpCookie"), &c.other, warnings);
            consistent_hash::Key::HttpCookie(consistent_hash::Cookie {
                name: c.name.clone(),
                path: c.path.clone().unwrap_or_default(),
                ttl: duration(&c.ttl).filter(|d| *d != prost_types::Duration::default()),
            })
        } else if let Some(ip) = h.use_source_ip {
            consistent_hash::Key::UseSourceIp(ip)
        } else {
            consistent_hash::Key::HttpQueryParameterName(h.http_query_parameter_name.clone()?)
        };
        Some(ConsistentHash { key: Some(key) })
    });
    LoadBalancer {
        simple: simple as i32,
        consistent_hash,
    }
}

fn connection_pool(
    what: &str,
    at: &str,
    c: &DrConnectionPool,
    warnings: &mut Warnings,
) -> ConnectionPool {
    report(what, at, &c.other, warnings);
    // Validated to fit when loaded.
    let n = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    let mut out = ConnectionPool::default();
    if let Some(t) = &c.tcp {
        report(what, &format!("{at}.tcp"), &t.other, warnings);
        out.max_connections = n(t.max_connections);
        out.connect_timeout = duration(&t.connect_timeout);
    }
    if let Some(h) = &c.http {
        report(what, &format!("{at}.http"), &h.other, warnings);
        out.http1_max_pending_requests = n(h.http1_max_pending_requests);
        out.http2_max_requests = n(h.http2_max_requests);
        out.max_requests_per_connection = n(h.max_requests_per_connection);
        out.max_retries = n(h.max_retries);
        out.idle_timeout = duration(&h.idle_timeout);
    }
    out
}

fn outlier(
    what: &str,
    at: &str,
    o: &DrOutlierDetection,
    warnings: &mut Warnings,
) -> OutlierDetection {
    report(what, at, &o.other, warnings);
    let n = |v: Option<i64>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
    let secs = |s: i64| prost_types::Duration {
        seconds: s,
        nanos: 0,
    };
    OutlierDetection {
        consecutive_5xx_errors: n(o.consecutive_5xx_errors, 5),
        consecutive_gateway_errors: n(o.consecutive_gateway_errors, 0),
        interval: duration(&o.interval).or(Some(secs(10))),
        base_ejection_time: duration(&o.base_ejection_time).or(Some(secs(30))),
        max_ejection_percent: n(o.max_ejection_percent, 10),
    }
}

fn duration(text: &Option<String>) -> Option<prost_types::Duration> {
    let d = parse_istio_duration(text.as_deref()?).ok()?;
    Some(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

/// Services whose destination policy (subsets) a backend or mirror of these routes needs.
fn named_services(r: &ServiceRoutes) -> BTreeSet<&str> {
    let mut out = BTreeSet::new();
    for route in &r.routes {
        let mirrors = route.filters.iter().filter_map(|f| match &f.kind {
            Some(filter::Kind::RequestMirror(m)) => m.backend.as_ref(),
            _ => None,
        });
        for b in route.backends.iter().chain(mirrors) {
            if !b.service.is_empty() {
                out.insert(b.service.as_str());
            }
        }
    }
    out
}

/// Sends each resource also to the waypoints whose routes send to its service, so that a
/// DestinationRule on a backend applies where the backend is chosen.
pub(crate) fn widen_visibility(resources: &mut [L7Resource<ServiceRoutes>]) {
    let mut extra: BTreeMap<String, BTreeSet<ObjectKey>> = BTreeMap::new();
    for r in resources.iter() {
        for service in named_services(&r.resource) {
            if service != r.name {
                extra
                    .entry(service.to_owned())
                    .or_default()
                    .extend(r.waypoints.iter().cloned());
            }
        }
    }
    for r in resources.iter_mut() {
        if let Some(more) = extra.remove(&r.name) {
            r.waypoints.extend(more);
            r.waypoints.sort();
            r.waypoints.dedup();
        }
    }
}

/// Reports backends naming a subset their service's DestinationRule does not define (the
/// waypoint finds no endpoint for them and answers 503).
pub(crate) fn check_subsets(resources: &[L7Resource<ServiceRoutes>], warnings: &mut Warnings) {
    let defined: BTreeMap<&str, BTreeSet<&str>> = resources
        .iter()
        .map(|r| {
            let subsets = r
                .resource
                .destination
                .iter()
                .flat_map(|d| d.subsets.iter().map(|s| s.name.as_str()))
                .collect();
            (r.name.as_str(), subsets)
        })
        .collect();
    for r in resources {
        for route in &r.resource.routes {
            for b in &route.backends {
                let known = defined
                    .get(b.service.as_str())
                    .is_some_and(|s| s.contains(b.subset.as_str()));
                if !b.subset.is_empty() && !b.service.is_empty() && !known {
                    warnings.push(format!(
                        "{} {} (rule {}): subset {:?} of {} is not defined by a \
                         DestinationRule; requests sent there get 503",
                        route.route_kind, route.route_name, route.rule_index, b.subset, b.service
                    ));
                }
            }
        }
    }
}
