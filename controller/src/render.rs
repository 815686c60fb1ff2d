//! A stable, readable rendering of translated resources as YAML values: field names in
//! proto3-JSON camelCase, enums by name, addresses as text, map entries sorted, default values
//! left out (except enums, and `rules`, whose emptiness is meaningful). Used by the golden
//! tests and for config dumps; not a wire format.

use std::net::IpAddr;

use amesh_proto::amesh::l7::v1 as l7;
use amesh_proto::istio::security::{
    self, string_match::MatchType, Authorization, Match, StringMatch,
};
use amesh_proto::istio::workload::{
    self, address::Type, gateway_address::Destination, Address, GatewayAddress, NetworkAddress,
    Port, Service, Workload,
};
use serde_yaml::{Mapping, Value};

use crate::translate::{L7Resource, Translated};

mod policy;

mod traffic;

/// The whole translation: `addresses`, `authorizations`, the waypoints' `serviceRoutes`,
/// `l7Authorizations`, `requestAuthentications` and `rateLimits` (each entry led by its xDS resource name, `resource`; L7 ones then by
/// the `waypoints` they are sent to) and `warnings`.
pub fn translated(t: &Translated) -> Value {
    let mut m = Obj::default();
    m.list(
        "addresses",
        t.addresses
            .iter()
            .map(|(name, a)| named(name, address(a)))
            .collect(),
    );
    m.list(
        "authorizations",
        t.authorizations
            .iter()
            .map(|(name, a)| named(name, authorization(a)))
            .collect(),
    );
    m.list(
        "serviceRoutes",
        t.service_routes
            .iter()
            .map(|r| l7_named(r, service_routes(&r.resource)))
            .collect(),
    );
    m.list(
        "l7Authorizations",
        t.l7_authorizations
            .iter()
            .map(|r| l7_named(r, l7_authorization(&r.resource)))
            .collect(),
    );
    m.list(
        "requestAuthentications",
        t.request_authentications
            .iter()
            .map(|r| l7_named(r, policy::request_authentication(&r.resource)))
            .collect(),
    );
    m.list(
        "rateLimits",
        t.rate_limits
            .iter()
            .map(|r| l7_named(r, policy::rate_limit(&r.resource)))
            .collect(),
    );
    m.list(
        "warnings",
        t.warnings.iter().map(|w| Value::from(w.as_str())).collect(),
    );
    m.done()
}

/// [`translated`] as YAML text.
pub fn translated_yaml(t: &Translated) -> String {
    // Serializing a `Value` built from strings, numbers, lists and maps cannot fail.
    serde_yaml::to_string(&translated(t)).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// `resource: <xDS resource name>` followed by the resource's own fields.
fn named(name: &str, body: Value) -> Value {
    let mut m = Obj::default();
    m.str("resource", name);
    if let Value::Mapping(body) = body {
        m.0.extend(body);
    }
    m.done()
}

/// `resource`, `waypoints` (`[]` when no waypoint gets it), then the resource's fields.
fn l7_named<T>(r: &L7Resource<T>, body: Value) -> Value {
    let mut m = Obj::default();
    m.str("resource", &r.name);
    m.val(
        "waypoints",
        Value::Sequence(
            r.waypoints
                .iter()
                .map(|w| Value::from(w.to_string()))
                .collect(),
        ),
    );
    if let Value::Mapping(body) = body {
        m.0.extend(body);
    }
    m.done()
}

/// An `amesh.l7.v1.ServiceRoutes`.
pub fn service_routes(s: &l7::ServiceRoutes) -> Value {
    let mut m = Obj::default();
    m.str("hostname", &s.hostname);
    // Always shown, in order: the order is the precedence.
    m.val(
        "routes",
        Value::Sequence(s.routes.iter().map(route).collect()),
    );
    m.opt(
        "destination",
        s.destination.as_ref().map(traffic::destination),
    );
    m.done()
}

fn route(r: &l7::Route) -> Value {
    let mut m = Obj::default();
    m.str("route", &format!("{} {}", r.route_kind, r.route_name));
    m.val("rule", Value::from(r.rule_index));
    m.num("port", r.port);
    if let Some(x) = &r.r#match {
        let mut mm = Obj::default();
        if let Some(p) = &x.path {
            let mut pm = Obj::default();
            pm.enumeration("kind", p.kind, |v| {
                l7::path_match::Kind::try_from(v)
                    .ok()
                    .map(|e| e.as_str_name())
            });
            pm.str("value", &p.value);
            mm.val("path", pm.done());
        }
        let pairs = |name: &str, value: &str, regex: bool| {
            let mut h = Obj::default();
            h.str("name", name);
            h.str(if regex { "regex" } else { "exact" }, value);
            h.done()
        };
        mm.list(
            "headers",
            x.headers
                .iter()
                .map(|h| pairs(&h.name, &h.value, h.regex))
                .collect(),
        );
        mm.list(
            "queryParams",
            x.query_params
                .iter()
                .map(|q| pairs(&q.name, &q.value, q.regex))
                .collect(),
        );
        mm.str("method", &x.method);
        m.val("match", mm.done());
    }
    m.list("filters", r.filters.iter().map(filter).collect());
    // Always shown: no backend means the waypoint answers 500.
    m.val(
        "backends",
        Value::Sequence(r.backends.iter().map(backend).collect()),
    );
    if let Some(t) = &r.timeouts {
        let mut tm = Obj::default();
        tm.opt("request", t.request.as_ref().map(duration));
        tm.opt("backendRequest", t.backend_request.as_ref().map(duration));
        m.val("timeouts", tm.done());
    }
    m.opt("retry", r.retry.as_ref().map(traffic::retry));
    m.opt("fault", r.fault.as_ref().map(traffic::fault));
    m.done()
}

fn duration(d: &prost_types::Duration) -> Value {
    Value::from(format!("{}.{:03}s", d.seconds, d.nanos / 1_000_000))
}

fn backend(b: &l7::Backend) -> Value {
    let mut m = Obj::default();
    m.str("service", &b.service);
    m.num("port", b.port);
    // Always shown: weight 0 means "never chosen".
    m.val("weight", Value::from(b.weight));
    m.str("subset", &b.subset);
    m.list("filters", b.filters.iter().map(filter).collect());
    m.done()
}

fn filter(f: &l7::Filter) -> Value {
    let headers = |list: &[l7::Header]| {
        list.iter()
            .map(|h| Value::from(format!("{}: {}", h.name, h.value)))
            .collect()
    };
    let modifier = |h: &l7::HeaderModifier| {
        let mut m = Obj::default();
        m.list("set", headers(&h.set));
        m.list("add", headers(&h.add));
        m.list(
            "remove",
            h.remove.iter().map(|r| Value::from(r.as_str())).collect(),
        );
        m.done()
    };
    let path = |p: &l7::PathModifier| {
        let mut m = Obj::default();
        m.enumeration("kind", p.kind, |v| {
            l7::path_modifier::Kind::try_from(v)
                .ok()
                .map(|e| e.as_str_name())
        });
        m.str("value", &p.value);
        m.done()
    };
    let mut m = Obj::default();
    use l7::filter::Kind;
    match &f.kind {
        Some(Kind::RequestHeaderModifier(h)) => m.val("requestHeaderModifier", modifier(h)),
        Some(Kind::ResponseHeaderModifier(h)) => m.val("responseHeaderModifier", modifier(h)),
        Some(Kind::RequestRedirect(r)) => {
            let mut rm = Obj::default();
            rm.str("scheme", &r.scheme);
            rm.str("hostname", &r.hostname);
            rm.opt("path", r.path.as_ref().map(path));
            rm.num("port", r.port);
            rm.num("statusCode", r.status_code);
            m.val("requestRedirect", rm.done());
        }
        Some(Kind::UrlRewrite(r)) => {
            let mut rm = Obj::default();
            rm.str("hostname", &r.hostname);
            rm.opt("path", r.path.as_ref().map(path));
            m.val("urlRewrite", rm.done());
        }
        Some(Kind::RequestMirror(r)) => {
            let mut rm = Obj::default();
            rm.opt("backend", r.backend.as_ref().map(backend));
            rm.val("percent", Value::from(r.percent));
            m.val("requestMirror", rm.done());
        }
        None => {}
    }
    m.done()
}

/// An `amesh.l7.v1.Authorization`.
pub fn l7_authorization(a: &l7::Authorization) -> Value {
    let strings = |v: &[String]| v.iter().map(|s| Value::from(s.as_str())).collect();
    let mut m = Obj::default();
    m.enumeration("action", a.action, |v| {
        l7::authorization::Action::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    m.flag("dryRun", a.dry_run);
    m.list(
        "targets",
        a.targets
            .iter()
            .map(|t| Value::from(format!("{} {}/{}", t.kind, t.namespace, t.name)))
            .collect(),
    );
    let rules = a
        .rules
        .iter()
        .map(|r| {
            let mut rule = Obj::default();
            let from = r
                .from
                .iter()
                .map(|s| {
                    let mut o = Obj::default();
                    o.list("principals", strings(&s.principals));
                    o.list("notPrincipals", strings(&s.not_principals));
                    o.list("namespaces", strings(&s.namespaces));
                    o.list("notNamespaces", strings(&s.not_namespaces));
                    o.list("ipBlocks", strings(&s.ip_blocks));
                    o.list("notIpBlocks", strings(&s.not_ip_blocks));
                    o.list("requestPrincipals", strings(&s.request_principals));
                    o.list("notRequestPrincipals", strings(&s.not_request_principals));
                    o.list("remoteIpBlocks", strings(&s.remote_ip_blocks));
                    o.list("notRemoteIpBlocks", strings(&s.not_remote_ip_blocks));
                    o.done()
                })
                .collect();
            let to =
                r.to.iter()
                    .map(|op| {
                        let mut o = Obj::default();
                        o.list("hosts", strings(&op.hosts));
                        o.list("notHosts", strings(&op.not_hosts));
                        o.list("ports", strings(&op.ports));
                        o.list("notPorts", strings(&op.not_ports));
                        o.list("methods", strings(&op.methods));
                        o.list("notMethods", strings(&op.not_methods));
                        o.list("paths", strings(&op.paths));
                        o.list("notPaths", strings(&op.not_paths));
                        o.done()
                    })
                    .collect();
            let when = r
                .when
                .iter()
                .map(|c| {
                    let mut o = Obj::default();
                    o.str("key", &c.key);
                    o.list("values", strings(&c.values));
                    o.list("notValues", strings(&c.not_values));
                    o.done()
                })
                .collect();
            rule.list("from", from);
            rule.list("to", to);
            rule.list("when", when);
            rule.done()
        })
        .collect();
    // Always shown: no rules means "matches nothing", which is worth seeing.
    m.val("rules", Value::Sequence(rules));
    m.done()
}

/// An `istio.workload.Address`.
pub fn address(a: &Address) -> Value {
    let mut m = Obj::default();
    match &a.r#type {
        Some(Type::Workload(w)) => m.val("workload", workload(w)),
        Some(Type::Service(s)) => m.val("service", service(s)),
        None => {}
    }
    m.done()
}

fn workload(w: &Workload) -> Value {
    let mut m = Obj::default();
    m.str("uid", &w.uid);
    m.str("name", &w.name);
    m.str("namespace", &w.namespace);
    m.list(
        "addresses",
        w.addresses
            .iter()
            .map(|a| Value::from(ip_text(a)))
            .collect(),
    );
    m.str("hostname", &w.hostname);
    m.str("network", &w.network);
    m.enumeration("tunnelProtocol", w.tunnel_protocol, |v| {
        workload::TunnelProtocol::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    m.str("trustDomain", &w.trust_domain);
    m.str("serviceAccount", &w.service_account);
    m.opt("waypoint", w.waypoint.as_ref().map(gateway));
    m.opt("networkGateway", w.network_gateway.as_ref().map(gateway));
    m.str("node", &w.node);
    m.str("canonicalName", &w.canonical_name);
    m.str("canonicalRevision", &w.canonical_revision);
    m.enumeration("workloadType", w.workload_type, |v| {
        workload::WorkloadType::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    m.str("workloadName", &w.workload_name);
    m.flag("nativeTunnel", w.native_tunnel);
    if let Some(t) = &w.application_tunnel {
        let mut a = Obj::default();
        a.enumeration("protocol", t.protocol, |v| {
            workload::application_tunnel::Protocol::try_from(v)
                .ok()
                .map(|e| e.as_str_name())
        });
        a.num("port", t.port);
        m.val("applicationTunnel", a.done());
    }
    let mut services: Vec<_> = w.services.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    if !services.is_empty() {
        let mut s = Mapping::new();
        for (name, list) in services {
            s.insert(
                Value::from(name.as_str()),
                Value::Sequence(list.ports.iter().map(port).collect()),
            );
        }
        m.val("services", Value::Mapping(s));
    }
    m.list(
        "authorizationPolicies",
        w.authorization_policies
            .iter()
            .map(|p| Value::from(p.as_str()))
            .collect(),
    );
    m.enumeration("status", w.status, |v| {
        workload::WorkloadStatus::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    m.str("clusterId", &w.cluster_id);
    if let Some(l) = &w.locality {
        let mut loc = Obj::default();
        loc.str("region", &l.region);
        loc.str("zone", &l.zone);
        loc.str("subzone", &l.subzone);
        m.val("locality", loc.done());
    }
    if w.network_mode != 0 {
        m.enumeration("networkMode", w.network_mode, |v| {
            workload::NetworkMode::try_from(v)
                .ok()
                .map(|e| e.as_str_name())
        });
    }
    if let Some(c) = w.capacity {
        m.num("capacity", c);
    }
    m.done()
}

fn service(s: &Service) -> Value {
    let mut m = Obj::default();
    m.str("name", &s.name);
    m.str("namespace", &s.namespace);
    m.str("hostname", &s.hostname);
    m.list(
        "addresses",
        s.addresses.iter().map(network_address).collect(),
    );
    m.list("ports", s.ports.iter().map(port).collect());
    m.list(
        "subjectAltNames",
        s.subject_alt_names
            .iter()
            .map(|n| Value::from(n.as_str()))
            .collect(),
    );
    m.opt("waypoint", s.waypoint.as_ref().map(gateway));
    if let Some(lb) = &s.load_balancing {
        let mut l = Obj::default();
        l.list(
            "routingPreference",
            lb.routing_preference
                .iter()
                .map(|v| {
                    Value::from(
                        workload::load_balancing::Scope::try_from(*v)
                            .map_or_else(|_| v.to_string(), |e| e.as_str_name().to_owned()),
                    )
                })
                .collect(),
        );
        l.enumeration("mode", lb.mode, |v| {
            workload::load_balancing::Mode::try_from(v)
                .ok()
                .map(|e| e.as_str_name())
        });
        l.enumeration("healthPolicy", lb.health_policy, |v| {
            workload::load_balancing::HealthPolicy::try_from(v)
                .ok()
                .map(|e| e.as_str_name())
        });
        m.val("loadBalancing", l.done());
    }
    m.enumeration("ipFamilies", s.ip_families, |v| {
        workload::IpFamilies::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    m.flag("canonical", s.canonical);
    m.flag("ingressUseWaypoint", s.ingress_use_waypoint);
    if s.visibility != 0 {
        m.enumeration("visibility", s.visibility, |v| {
            workload::service::Visibility::try_from(v)
                .ok()
                .map(|e| e.as_str_name())
        });
    }
    m.done()
}

fn port(p: &Port) -> Value {
    let mut m = Obj::default();
    m.num("servicePort", p.service_port);
    // Shown even when 0: on a Service that means "named, resolved per workload".
    m.val("targetPort", Value::from(p.target_port));
    if p.app_protocol != 0 {
        m.enumeration("appProtocol", p.app_protocol, |v| {
            workload::AppProtocol::try_from(v)
                .ok()
                .map(|e| e.as_str_name())
        });
    }
    m.done()
}

fn gateway(g: &GatewayAddress) -> Value {
    let mut m = Obj::default();
    match &g.destination {
        Some(Destination::Hostname(h)) => {
            let mut host = Obj::default();
            host.str("namespace", &h.namespace);
            host.str("hostname", &h.hostname);
            m.val("hostname", host.done());
        }
        Some(Destination::Address(a)) => m.val("address", network_address(a)),
        None => {}
    }
    m.num("hboneMtlsPort", g.hbone_mtls_port);
    m.done()
}

fn network_address(a: &NetworkAddress) -> Value {
    let mut text = format!("{}/{}", a.network, ip_text(&a.address));
    if let Some(len) = a.length {
        text.push_str(&format!("/{len}"));
    }
    Value::from(text)
}

/// An `istio.security.Authorization`.
pub fn authorization(a: &Authorization) -> Value {
    let mut m = Obj::default();
    m.str("name", &a.name);
    m.str("namespace", &a.namespace);
    m.enumeration("scope", a.scope, |v| {
        security::Scope::try_from(v).ok().map(|e| e.as_str_name())
    });
    m.enumeration("action", a.action, |v| {
        security::Action::try_from(v).ok().map(|e| e.as_str_name())
    });
    m.flag("dryRun", a.dry_run);
    let rules = a
        .rules
        .iter()
        .map(|r| {
            let clauses = r
                .clauses
                .iter()
                .map(|c| {
                    let mut clause = Obj::default();
                    clause.val(
                        "matches",
                        Value::Sequence(c.matches.iter().map(match_).collect()),
                    );
                    clause.done()
                })
                .collect();
            let mut rule = Obj::default();
            rule.val("clauses", Value::Sequence(clauses));
            rule.done()
        })
        .collect();
    // Always shown: no rules means "matches nothing", which is worth seeing.
    m.val("rules", Value::Sequence(rules));
    m.done()
}

fn match_(x: &Match) -> Value {
    let mut m = Obj::default();
    let strings = |v: &[StringMatch]| v.iter().map(string_match).collect();
    let addrs = |v: &[security::Address]| {
        v.iter()
            .map(|a| Value::from(format!("{}/{}", ip_text(&a.address), a.length)))
            .collect()
    };
    let ports = |v: &[u32]| v.iter().map(|p| Value::from(*p)).collect();
    let sas = |v: &[security::ServiceAccountMatch]| {
        v.iter()
            .map(|s| Value::from(format!("{}/{}", s.namespace, s.service_account)))
            .collect()
    };
    m.list("namespaces", strings(&x.namespaces));
    m.list("notNamespaces", strings(&x.not_namespaces));
    m.list("principals", strings(&x.principals));
    m.list("notPrincipals", strings(&x.not_principals));
    m.list("sourceIps", addrs(&x.source_ips));
    m.list("notSourceIps", addrs(&x.not_source_ips));
    m.list("destinationIps", addrs(&x.destination_ips));
    m.list("notDestinationIps", addrs(&x.not_destination_ips));
    m.list("destinationPorts", ports(&x.destination_ports));
    m.list("notDestinationPorts", ports(&x.not_destination_ports));
    m.list("serviceAccounts", sas(&x.service_accounts));
    m.list("notServiceAccounts", sas(&x.not_service_accounts));
    m.done()
}

fn string_match(s: &StringMatch) -> Value {
    let mut m = Obj::default();
    match &s.match_type {
        Some(MatchType::Exact(v)) => m.val("exact", Value::from(v.as_str())),
        Some(MatchType::Prefix(v)) => m.val("prefix", Value::from(v.as_str())),
        Some(MatchType::Suffix(v)) => m.val("suffix", Value::from(v.as_str())),
        Some(MatchType::Presence(())) => m.val("presence", Value::Mapping(Mapping::new())),
        None => {}
    }
    m.done()
}

/// 4 or 16 octets as an address; anything else in hex, so that a bad value stays visible.
fn ip_text(octets: &[u8]) -> String {
    if let Ok(a) = <[u8; 4]>::try_from(octets) {
        return IpAddr::from(a).to_string();
    }
    if let Ok(a) = <[u8; 16]>::try_from(octets) {
        return IpAddr::from(a).to_string();
    }
    let hex: String = octets.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{hex}")
}

/// An ordered YAML mapping that leaves out default values.
#[derive(Default)]
struct Obj(Mapping);

impl Obj {
    fn done(self) -> Value {
        Value::Mapping(self.0)
    }

    fn val(&mut self, key: &str, v: Value) {
        self.0.insert(Value::from(key), v);
    }

    fn opt(&mut self, key: &str, v: Option<Value>) {
        if let Some(v) = v {
            self.val(key, v);
        }
    }

    fn str(&mut self, key: &str, v: &str) {
        if !v.is_empty() {
            self.val(key, Value::from(v));
        }
    }

    fn num(&mut self, key: &str, v: u32) {
        if v != 0 {
            self.val(key, Value::from(v));
        }
    }

    fn flag(&mut self, key: &str, v: bool) {
        if v {
            self.val(key, Value::from(true));
        }
    }

    fn list(&mut self, key: &str, v: Vec<Value>) {
        if !v.is_empty() {
            self.val(key, Value::Sequence(v));
        }
    }

    fn enumeration(&mut self, key: &str, v: i32, name: impl Fn(i32) -> Option<&'static str>) {
        let text = name(v).map_or_else(|| v.to_string(), str::to_owned);
        self.val(key, Value::from(text));
    }
}
