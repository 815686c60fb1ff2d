//! VirtualService (`networking.istio.io`) → `amesh.l7.v1.Route`s in the `ServiceRoutes` of each
//! service the VirtualService's `hosts` name, for the waypoint that service is bound to.
//!
//! - **Hosts.** `reviews` (the VirtualService's namespace), `reviews.ns`, `reviews.ns.svc` and
//!   `reviews.ns.svc.<domain suffix>` name the Service `ns/reviews`; a host that names no
//!   Service (external names, wildcards) is reported and skipped. `gateways` empty or listing
//!   `mesh` means the mesh; other gateways are reported; a list without `mesh` leaves the
//!   VirtualService out (it is for ingress gateways only).
//! - **Order.** Istio semantics: the `http` routes in order, the first match wins; each `match`
//!   entry is one Route (OR-ed), no `match` is one catch-all Route. Several VirtualServices on
//!   one service are concatenated oldest first (then by `<ns>/<name>`), as istiod merges them
//!   for waypoints and gateways.
//! - **Precedence over HTTPRoute.** Istio documents mixing VirtualService and HTTPRoute on one
//!   service as unsupported, with undefined behaviour, and recommends HTTPRoute. amesh picks one
//!   deterministic rule: when a service has any HTTPRoute or GRPCRoute, its VirtualServices are
//!   not applied (a warning names both); the DestinationRule applies either way.
//! - **Destinations.** host as above, `subset` kept as is (an undefined subset is reported;
//!   the waypoint then finds no endpoint and answers 503), weight default 100 for a lone
//!   destination. A destination without `port` takes the destination service's only port; for
//!   a multi-port service Istio sends to the port the request came in on, so the Route is
//!   emitted once per port of the addressed service (Route.port = that port, the backend port
//!   the same) — the waypoint never sees port 0 in a backend.
//! - **Retries.** Without `retries`: Istio's default policy (2 retries on connect-failure,
//!   refused-stream, unavailable, cancelled and status 503, another host each time, 25 ms
//!   backoff base). `attempts: 0` (or unset) disables retries. `retryOn`: conditions and bare
//!   status codes; a code turns on `retriable-status-codes`.
//! - **Other.** `timeout` → request timeout (0 = none), `fault` → FaultInjection (missing
//!   percentage = 100), `mirror`/`mirrors` → RequestMirror filters, `headers` → header
//!   modifier filters (per destination: backend filters), `rewrite` → URLRewrite (a `uri`
//!   rewrite of a prefix match replaces the prefix, else the whole path), `redirect` →
//!   RequestRedirect (default 301).
//! - **Matches.** `uri`, `headers`, `queryParams` (exact, prefix as a regex, regex; a header
//!   with no value = present), `method` (exact), `port` (the Route's port), `ignoreUriCase`
//!   (a case-insensitive path regex).
//! - **Unsupported** fields (`corsPolicy`, `directResponse`, `tcp`, `tls`, `exportTo`,
//!   `retryRemoteLocalities`, ...) are reported once each by path. A match condition amesh
//!   cannot evaluate (`sourceLabels`, `authority`, `withoutHeaders`, a method regex, ...) leaves
//!   that match entry out, so the route never matches through it: ignoring the condition
//!   instead would widen the route to requests its author excluded.

use std::collections::BTreeMap;

use amesh_proto::amesh::l7::v1::{
    filter, path_match, path_modifier, Backend, Filter, PathModifier, RequestMirror,
    RequestRedirect, Route, RouteMatch, ServiceRoutes, Timeouts, UrlRewrite,
};

mod parts;

use parts::{fault, header_filters, modifier, percent, retry_policy, route_match, to_proto};

use super::{L7Resource, TranslateOptions};
use crate::manifests::networking::{
    parse_istio_duration, Unsupported, VirtualService, VsDestination, VsHttpRoute,
};
use crate::manifests::{Manifests, ObjectKey};
use crate::model::{Model, ServiceInfo};
use crate::warnings::Warnings;

/// The Service a VirtualService or DestinationRule host names, if it is one amesh knows.
pub(super) fn resolve_host(
    host: &str,
    namespace: &str,
    services: &BTreeMap<&ObjectKey, &ServiceInfo>,
    domain_suffix: &str,
) -> Option<ObjectKey> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let parts: Vec<&str> = host.split('.').collect();
    let key = match parts.as_slice() {
        [name] => ObjectKey::new(namespace, *name),
        [name, ns] | [name, ns, "svc"] => ObjectKey::new(*ns, *name),
        [name, ns, "svc", rest @ ..] if rest.join(".") == domain_suffix => {
            ObjectKey::new(*ns, *name)
        }
        _ => return None,
    };
    services.contains_key(&key).then_some(key)
}

/// Reports every field of `other` as unsupported, at `at`.
pub(super) fn report(what: &str, at: &str, other: &Unsupported, warnings: &mut Warnings) {
    for field in other.keys() {
        warnings.push(format!(
            "{what}: {at}.{field}: not supported by amesh waypoints; ignored"
        ));
    }
}

/// `<ns>/<hostname>` of a service, its Address key.
pub(super) fn service_address(svc: &ServiceInfo) -> String {
    format!("{}/{}", svc.key.namespace, svc.hostname)
}

/// An empty `ServiceRoutes` resource for a service, for the waypoint it is bound to.
pub(super) fn empty_resource(
    svc: &ServiceInfo,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
) -> L7Resource<ServiceRoutes> {
    L7Resource {
        name: service_address(svc),
        waypoints: bindings.get(&svc.key).cloned().into_iter().collect(),
        resource: ServiceRoutes {
            name: service_address(svc),
            namespace: svc.key.namespace.clone(),
            hostname: svc.hostname.clone(),
            routes: Vec::new(),
            destination: None,
        },
    }
}

/// Adds the routes of every VirtualService to `resources` (sorted by name, kept sorted): to a
/// service without Gateway API routes only.
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
    let mut ordered: Vec<(&ObjectKey, &VirtualService)> = m.virtual_services.iter().collect();
    ordered.sort_by(|a, b| {
        let created = |v: &VirtualService| v.metadata.creation_timestamp.clone();
        created(a.1).cmp(&created(b.1)).then(a.0.cmp(b.0))
    });

    let mut per_service: BTreeMap<ObjectKey, (Vec<String>, Vec<Route>)> = BTreeMap::new();
    for (key, vs) in ordered {
        let what = format!("VirtualService {key}");
        report(&what, "spec", &vs.spec.other, warnings);
        let other_gateways: Vec<&str> = vs
            .spec
            .gateways
            .iter()
            .map(String::as_str)
            .filter(|g| *g != "mesh")
            .collect();
        if !other_gateways.is_empty() {
            warnings.push(format!(
                "{what}: spec.gateways: {} not served by amesh waypoints; ignored",
                other_gateways.join(", ")
            ));
            if !vs.spec.gateways.iter().any(|g| g == "mesh") {
                continue;
            }
        }
        // The routes' problems are reported for the first host that resolves only, not once
        // per host.
        let mut reported = false;
        for (i, host) in vs.spec.hosts.iter().enumerate() {
            let Some(service) = resolve_host(host, &key.namespace, &services, &opts.domain_suffix)
            else {
                warnings.push(format!(
                    "{what}: spec.hosts[{i}]: {host:?} names no Service amesh knows; ignored"
                ));
                continue;
            };
            let svc = services[&service];
            let ctx = Ctx {
                what: &what,
                namespace: &key.namespace,
                host_service: svc,
                services: &services,
                opts,
            };
            let mut local = Warnings::default();
            let sink = if reported { &mut local } else { &mut *warnings };
            reported = true;
            let mut routes = Vec::new();
            for (index, http) in vs.spec.http.iter().enumerate() {
                routes.extend(http_routes(&ctx, key, index, http, sink));
            }
            let entry = per_service.entry(service).or_default();
            entry.0.push(key.to_string());
            entry.1.extend(routes);
        }
    }

    for (service, (names, routes)) in per_service {
        let svc = services[&service];
        let name = service_address(svc);
        match resources.binary_search_by(|r| r.name.cmp(&name)) {
            Ok(at) => {
                let gateway_routes: Vec<String> = {
                    let mut list: Vec<String> = resources[at]
                        .resource
                        .routes
                        .iter()
                        .map(|r| format!("{} {}", r.route_kind, r.route_name))
                        .collect();
                    list.dedup();
                    list
                };
                warnings.push(format!(
                    "service {service}: VirtualService {} not applied: the service has Gateway \
                     API routes ({}), which take precedence (Istio leaves mixing them undefined)",
                    names.join(", "),
                    gateway_routes.join(", ")
                ));
            }
            Err(at) => {
                let mut resource = empty_resource(svc, bindings);
                if resource.waypoints.is_empty() {
                    warnings.push(format!(
                        "service {service} has routes (VirtualService {}) but uses no \
                         waypoint: they are not enforced",
                        names.join(", ")
                    ));
                }
                resource.resource.routes = routes;
                resources.insert(at, resource);
            }
        }
    }
}

/// What destinations resolve against.
struct Ctx<'a> {
    what: &'a str,
    namespace: &'a str,
    /// The service the VirtualService host names (the one requests were addressed to).
    host_service: &'a ServiceInfo,
    services: &'a BTreeMap<&'a ObjectKey, &'a ServiceInfo>,
    opts: &'a TranslateOptions,
}

/// The Routes of one `http` entry: one per usable match (per port where destinations need
/// the request's port).
fn http_routes(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    index: usize,
    http: &VsHttpRoute,
    warnings: &mut Warnings,
) -> Vec<Route> {
    let at = format!("spec.http[{index}]");
    let what = ctx.what;
    report(what, &at, &http.other, warnings);

    let mut backends = Vec::new();
    let single = http.route.len() == 1;
    for (j, d) in http.route.iter().enumerate() {
        let at = format!("{at}.route[{j}]");
        report(what, &at, &d.other, warnings);
        let mut b = destination(ctx, &d.destination, &format!("{at}.destination"), warnings);
        b.weight = match d.weight {
            Some(w) => u32::try_from(w).unwrap_or(0),
            None if single => 100,
            None => 0,
        };
        if let Some(h) = &d.headers {
            b.filters = header_filters(what, &format!("{at}.headers"), h, warnings);
        }
        backends.push(b);
    }
    if backends.len() > 1 && backends.iter().all(|b| b.weight == 0) {
        warnings.push(format!(
            "{what}: {at}.route: no destination has a weight; requests get 500"
        ));
    }

    let mut mirrors = Vec::new();
    if let Some(m) = &http.mirror {
        let b = destination(ctx, m, &format!("{at}.mirror"), warnings);
        mirrors.push((b, percent(&http.mirror_percentage)));
    }
    for (j, m) in http.mirrors.iter().enumerate() {
        let at = format!("{at}.mirrors[{j}]");
        report(what, &at, &m.other, warnings);
        let b = destination(ctx, &m.destination, &format!("{at}.destination"), warnings);
        mirrors.push((b, percent(&m.percentage)));
    }

    let timeouts = http.timeout.as_deref().and_then(|t| {
        let d = to_proto(parse_istio_duration(t).ok()?);
        (d != prost_types::Duration::default()).then_some(Timeouts {
            request: Some(d),
            backend_request: None,
        })
    });
    let retry = retry_policy(http.retries.as_ref(), what, &at, warnings);
    let fault = fault(http, what, &at, warnings);

    let matches: Vec<Option<RouteMatch>> = if http.matches.is_empty() {
        vec![Some(RouteMatch::default())]
    } else {
        http.matches
            .iter()
            .enumerate()
            .map(|(j, m)| route_match(what, &format!("{at}.match[{j}]"), m, warnings))
            .collect()
    };

    let mut out = Vec::new();
    for (j, matched) in matches.into_iter().enumerate() {
        let Some(matched) = matched else { continue };
        let prefix = matched
            .path
            .as_ref()
            .is_some_and(|p| p.kind() == path_match::Kind::PathPrefix);
        let mut filters = Vec::new();
        if let Some(r) = &http.redirect {
            report(what, &format!("{at}.redirect"), &r.other, warnings);
            filters.push(filter::Kind::RequestRedirect(RequestRedirect {
                scheme: r.scheme.clone().unwrap_or_default(),
                hostname: r.authority.clone().unwrap_or_default(),
                path: r.uri.as_ref().map(|u| PathModifier {
                    kind: path_modifier::Kind::ReplaceFullPath as i32,
                    value: u.clone(),
                }),
                port: r.port.unwrap_or(0),
                status_code: r.redirect_code.unwrap_or(301),
            }));
        }
        if let Some(h) = &http.headers {
            report(what, &format!("{at}.headers"), &h.other, warnings);
            if let Some(req) = &h.request {
                let at = format!("{at}.headers.request");
                filters.push(filter::Kind::RequestHeaderModifier(modifier(
                    what, &at, req, warnings,
                )));
            }
        }
        if let Some(r) = &http.rewrite {
            report(what, &format!("{at}.rewrite"), &r.other, warnings);
            let kind = if prefix {
                path_modifier::Kind::ReplacePrefixMatch
            } else {
                path_modifier::Kind::ReplaceFullPath
            };
            filters.push(filter::Kind::UrlRewrite(UrlRewrite {
                hostname: r.authority.clone().unwrap_or_default(),
                path: r.uri.as_ref().map(|u| PathModifier {
                    kind: kind as i32,
                    value: u.clone(),
                }),
            }));
        }
        for (b, percent) in &mirrors {
            filters.push(filter::Kind::RequestMirror(RequestMirror {
                backend: Some(b.clone()),
                percent: *percent,
            }));
        }
        if let Some(resp) = http.headers.as_ref().and_then(|h| h.response.as_ref()) {
            let at = format!("{at}.headers.response");
            filters.push(filter::Kind::ResponseHeaderModifier(modifier(
                what, &at, resp, warnings,
            )));
        }
        let route = Route {
            route_name: key.to_string(),
            route_kind: "VirtualService".to_owned(),
            rule_index: u32::try_from(index).unwrap_or(u32::MAX),
            port: http.matches.get(j).and_then(|m| m.port).unwrap_or(0),
            r#match: Some(matched),
            filters: filters
                .into_iter()
                .map(|k| Filter { kind: Some(k) })
                .collect(),
            backends: backends.clone(),
            timeouts,
            retry: retry.clone(),
            fault,
        };
        out.extend(per_port(route, ctx.host_service));
    }
    out
}

/// A route whose backends or mirrors lack a port, once per port it can be addressed on, with
/// that port filled in (Istio: the request's own port).
fn per_port(route: Route, host: &ServiceInfo) -> Vec<Route> {
    let mirror_ports = route.filters.iter().filter_map(|f| match &f.kind {
        Some(filter::Kind::RequestMirror(m)) => m.backend.as_ref().map(|b| b.port),
        _ => None,
    });
    let unresolved = route
        .backends
        .iter()
        .map(|b| b.port)
        .chain(mirror_ports)
        .any(|p| p == 0);
    if !unresolved {
        return vec![route];
    }
    let ports: Vec<u32> = if route.port != 0 {
        vec![route.port]
    } else {
        host.ports.iter().map(|p| u32::from(p.port)).collect()
    };
    ports
        .into_iter()
        .map(|port| {
            let mut r = route.clone();
            r.port = port;
            for b in &mut r.backends {
                if b.port == 0 {
                    b.port = port;
                }
            }
            for f in &mut r.filters {
                if let Some(filter::Kind::RequestMirror(m)) = &mut f.kind {
                    if let Some(b) = m.backend.as_mut().filter(|b| b.port == 0) {
                        b.port = port;
                    }
                }
            }
            r
        })
        .collect()
}

/// A destination as a weight-0 backend; port 0 when the request's port decides.
fn destination(ctx: &Ctx<'_>, d: &VsDestination, at: &str, warnings: &mut Warnings) -> Backend {
    report(ctx.what, at, &d.other, warnings);
    let mut port = d.port.as_ref().map_or(0, |p| p.number);
    let service = match resolve_host(
        &d.host,
        ctx.namespace,
        ctx.services,
        &ctx.opts.domain_suffix,
    ) {
        Some(key) => {
            let svc = ctx.services[&key];
            if port == 0 && svc.ports.len() == 1 {
                port = u32::from(svc.ports[0].port);
            }
            service_address(svc)
        }
        None => {
            warnings.push(format!(
                "{}: {at}.host: {:?} names no Service amesh knows; requests sent there get 500",
                ctx.what, d.host
            ));
            String::new()
        }
    };
    Backend {
        service,
        port,
        weight: 0,
        filters: Vec::new(),
        subset: d.subset.clone().unwrap_or_default(),
    }
}
