//! HTTPRoute and GRPCRoute (Gateway API, mesh / GAMMA style) → `amesh.l7.v1.ServiceRoutes`,
//! one resource per service that routes attach to, for the waypoint that service is bound to.
//!
//! The controller does what needs the whole cluster, so the waypoint only walks a list:
//!
//! - **Parents.** A parentRef of kind `Service` (group `""` or `core`; namespace defaults to the
//!   route's) attaches the route to that service, on one port if `port` is set. A parentRef of
//!   a Gateway of class `istio-waypoint` attaches it to every service bound to that waypoint
//!   (only those matching `hostnames`, when the route has any: exact, or `*.suffix`). A
//!   Service in another namespace (a GAMMA "consumer route", which changes only what that
//!   namespace's clients see) is not supported: a warning, the parent ignored. Other parents
//!   (ingress Gateways) are not mesh routes: ignored with a debug log.
//! - **Backends.** `backendRefs` of kind Service (the default) become
//!   `<ns>/<name>.<ns>.svc.<domain suffix>` (the service's Address key) with their port and
//!   weight (default 1). Gateway API says a request sent to an invalid backend gets a 500, so
//!   an unknown service, a missing port or another kind is kept (with an empty service for a
//!   kind that is not Service), with a warning, and the waypoint answers 500 for that share.
//!   amesh does not read ReferenceGrants: a backend in another namespace is accepted.
//! - **Matches.** No match means one match of path prefix `/`; a match without a path has
//!   path prefix `/` (the API's default). GRPCRoute matches become path matches: service and
//!   method → exact `/<service>/<method>`, service alone → prefix `/<service>/`, method alone
//!   → regex `/[^/]+/<method>`; with type RegularExpression the parts are regexes
//!   (`/(<service>)/(<method>)`, `[^/]+` for a missing part). The method is not required to be
//!   POST. Headers are header matches.
//! - **Filters** (on the rule and per backend): header modifiers, redirect, URL rewrite and
//!   mirror (`percent`, or `fraction` converted to percent; default 100). ExtensionRef and
//!   unknown types are warnings and left out.
//! - **Timeouts** `request` and `backendRequest` are Gateway API durations (`1h2m`, `500ms`);
//!   zero means "no timeout" and is left out, as is an unparsable one (with a warning).
//!   Fields amesh does not implement yet (`sessionPersistence`) are warnings.
//! - **Retry** (`rules[].retry`, GEP-1731): `attempts` retries (default 2, as Istio; 0 = none)
//!   of a request answered with one of `codes`, and, as the API's
//!   HTTPRouteRetryConnectionError feature describes, of one that failed to connect or was
//!   reset; another endpoint each time; `backoff` is the base interval (default 25 ms).
//! - **Order.** Every (rule, match) pair of every route on a service is one `Route`, sorted by
//!   [`precedence`]: Gateway API's rules for HTTPRoute (GRPCRoutes take part through the
//!   path matches they become).
//!
//! A service whose routes exist but which is bound to no waypoint still gets its resource (seen
//! in renders), sent to nobody, with a warning: nothing enforces those routes.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use amesh_proto::amesh::l7::v1::{
    filter, path_match, path_modifier, Backend, Filter, Header, HeaderMatch, HeaderModifier,
    PathMatch, PathModifier, QueryParamMatch, RequestMirror, RequestRedirect, RetryPolicy, Route,
    RouteMatch, ServiceRoutes, Timeouts, UrlRewrite,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{L7Resource, TranslateOptions};
use crate::manifests::gateway::{
    self, GrpcMethodMatch, GrpcRouteMatch, HttpBackendRef, HttpHeaderMatch, HttpRouteFilter,
    HttpRouteMatch, ParentReference, PathMatchType, ValueMatchType,
};
use crate::manifests::{Manifests, ObjectKey};
use crate::model::{Bound, Model, ServiceInfo};
use crate::warnings::Warnings;

/// Gateway API group.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Where one flattened route comes from, for [`precedence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOrder {
    /// The path match's kind (`None`: no path condition, i.e. any path).
    pub path_kind: Option<path_match::Kind>,
    /// Characters in the path value.
    pub path_len: usize,
    /// The match names a method.
    pub has_method: bool,
    /// Number of header matches.
    pub headers: usize,
    /// Number of query parameter matches.
    pub query_params: usize,
    /// The route's creation time (`None`: unknown, as in hand-written manifests).
    pub created: Option<Time>,
    /// `<ns>/<name>` of the route.
    pub route: String,
    /// Rule index within the route.
    pub rule: usize,
    /// Match index within the rule.
    pub matched: usize,
}

impl RouteOrder {
    fn of(m: &RouteMatch, created: Option<Time>, route: &str, rule: usize, matched: usize) -> Self {
        RouteOrder {
            path_kind: m.path.as_ref().map(PathMatch::kind),
            path_len: m.path.as_ref().map_or(0, |p| p.value.chars().count()),
            has_method: !m.method.is_empty(),
            headers: m.headers.len(),
            query_params: m.query_params.len(),
            created,
            route: route.to_owned(),
            rule,
            matched,
        }
    }
}

/// Gateway API's precedence between two matches (`Less`: `a` is tried first):
/// 1. an exact path match; then path prefixes, the longest first; then regular expressions
///    (implementation-specific in the spec; the longest first here); no path condition last,
/// 2. a method match,
/// 3. more header matches,
/// 4. more query parameter matches,
/// 5. across routes: the oldest creation time (unknown counts as oldest, as for policies),
///    then `<ns>/<name>` alphabetically,
/// 6. within a route: rule order, then match order.
pub fn precedence(a: &RouteOrder, b: &RouteOrder) -> Ordering {
    let rank = |k: Option<path_match::Kind>| match k {
        Some(path_match::Kind::Exact) => 0,
        Some(path_match::Kind::PathPrefix) => 1,
        Some(path_match::Kind::RegularExpression) => 2,
        None => 3,
    };
    rank(a.path_kind)
        .cmp(&rank(b.path_kind))
        .then(b.path_len.cmp(&a.path_len))
        .then(b.has_method.cmp(&a.has_method))
        .then(b.headers.cmp(&a.headers))
        .then(b.query_params.cmp(&a.query_params))
        .then_with(|| a.created.cmp(&b.created))
        .then_with(|| a.route.cmp(&b.route))
        .then(a.rule.cmp(&b.rule))
        .then(a.matched.cmp(&b.matched))
}

/// A route of either kind, reduced to what the translation needs.
struct Source<'a> {
    kind: &'static str,
    key: &'a ObjectKey,
    created: Option<Time>,
    parents: &'a [ParentReference],
    hostnames: &'a [String],
    rules: Vec<SourceRule<'a>>,
}

struct SourceRule<'a> {
    matches: Vec<RouteMatch>,
    filters: &'a [HttpRouteFilter],
    backends: &'a [HttpBackendRef],
    timeouts: Option<&'a gateway::HttpRouteTimeouts>,
    retry: Option<RetryPolicy>,
}

/// The `ServiceRoutes` of every service some route attaches to, sorted by resource name.
/// `bindings` maps each service to the waypoint it is bound to.
pub(crate) fn service_routes(
    m: &Manifests,
    model: &Model,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    opts: &TranslateOptions,
    warnings: &mut Warnings,
) -> Vec<L7Resource<ServiceRoutes>> {
    let services: BTreeMap<&ObjectKey, &ServiceInfo> =
        model.services.iter().map(|s| (&s.key, s)).collect();
    let mut per_service: BTreeMap<ObjectKey, Vec<(RouteOrder, Route)>> = BTreeMap::new();

    for source in sources(m, warnings) {
        for (service, port) in parents(&source, &services, bindings, warnings) {
            let what = format!("{} {}", source.kind, source.key);
            let routes = per_service.entry(service.clone()).or_default();
            for (rule_index, rule) in source.rules.iter().enumerate() {
                let at = format!("{what} spec.rules[{rule_index}]");
                let ctx = Context {
                    route_namespace: &source.key.namespace,
                    services: &services,
                    opts,
                };
                let filters = filters(rule.filters, &ctx, &at, warnings);
                let backends = rule
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let at = format!("{at}.backendRefs[{i}]");
                        let reference = BackendReference {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            name: &b.name,
                            namespace: b.namespace.as_deref(),
                            port: b.port,
                        };
                        let mut backend = backend(&reference, &ctx, &at, warnings);
                        backend.weight = b.weight.unwrap_or(1);
                        backend.filters = self::filters(&b.filters, &ctx, &at, warnings);
                        backend
                    })
                    .collect::<Vec<_>>();
                let timeouts = rule.timeouts.and_then(|t| timeouts(t, &at, warnings));
                for (match_index, matched) in rule.matches.iter().enumerate() {
                    let order = RouteOrder::of(
                        matched,
                        source.created.clone(),
                        &source.key.to_string(),
                        rule_index,
                        match_index,
                    );
                    let route = Route {
                        route_name: source.key.to_string(),
                        route_kind: source.kind.to_owned(),
                        rule_index: u32::try_from(rule_index).unwrap_or(u32::MAX),
                        port: u32::from(port),
                        r#match: Some(matched.clone()),
                        filters: filters.clone(),
                        backends: backends.clone(),
                        timeouts,
                        retry: rule.retry.clone(),
                        fault: None,
                    };
                    routes.push((order, route));
                }
            }
        }
    }

    per_service
        .into_iter()
        .filter_map(|(key, mut routes)| {
            let svc = services.get(&key)?;
            routes.sort_by(|a, b| precedence(&a.0, &b.0));
            let name = format!("{}/{}", key.namespace, svc.hostname);
            let waypoints: Vec<ObjectKey> = bindings.get(&key).cloned().into_iter().collect();
            if waypoints.is_empty() {
                warnings.push(format!(
                    "service {key} has routes ({}) but uses no waypoint: they are not enforced",
                    route_names(&routes)
                ));
            }
            Some(L7Resource {
                name,
                waypoints,
                resource: ServiceRoutes {
                    name: format!("{}/{}", key.namespace, svc.hostname),
                    namespace: key.namespace.clone(),
                    hostname: svc.hostname.clone(),
                    routes: routes.into_iter().map(|(_, r)| r).collect(),
                    destination: None,
                },
            })
        })
        .collect()
}

fn route_names(routes: &[(RouteOrder, Route)]) -> String {
    let mut names: Vec<&str> = routes.iter().map(|(o, _)| o.route.as_str()).collect();
    names.dedup();
    names.join(", ")
}

/// Every HTTPRoute, then every GRPCRoute, in the common form; unsupported fields reported.
fn sources<'a>(m: &'a Manifests, warnings: &mut Warnings) -> Vec<Source<'a>> {
    let mut out = Vec::new();
    for (key, route) in &m.http_routes {
        let mut rules = Vec::new();
        for (i, rule) in route.spec.rules.iter().enumerate() {
            let at = format!("HTTPRoute {key} spec.rules[{i}]");
            if rule.session_persistence.is_some() {
                warnings.push(format!(
                    "{at}.sessionPersistence is not supported by amesh's waypoint; ignored"
                ));
            }
            let matches = if rule.matches.is_empty() {
                vec![http_match(&HttpRouteMatch::default())]
            } else {
                rule.matches.iter().map(http_match).collect()
            };
            rules.push(SourceRule {
                matches,
                filters: &rule.filters,
                backends: &rule.backend_refs,
                timeouts: rule.timeouts.as_ref(),
                retry: rule.retry.as_ref().and_then(|r| retry(r, &at, warnings)),
            });
        }
        out.push(Source {
            kind: "HTTPRoute",
            key,
            created: route.metadata.creation_timestamp.clone(),
            parents: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
            rules,
        });
    }
    for (key, route) in &m.grpc_routes {
        let mut rules = Vec::new();
        for (i, rule) in route.spec.rules.iter().enumerate() {
            if rule.session_persistence.is_some() {
                warnings.push(format!(
                    "GRPCRoute {key} spec.rules[{i}].sessionPersistence is not supported by \
                     amesh's waypoint; ignored"
                ));
            }
            let matches = if rule.matches.is_empty() {
                vec![grpc_match(&GrpcRouteMatch::default())]
            } else {
                rule.matches.iter().map(grpc_match).collect()
            };
            rules.push(SourceRule {
                matches,
                filters: &rule.filters,
                backends: &rule.backend_refs,
                timeouts: None,
                retry: None,
            });
        }
        out.push(Source {
            kind: "GRPCRoute",
            key,
            created: route.metadata.creation_timestamp.clone(),
            parents: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
            rules,
        });
    }
    out
}

/// The services (and parent port, 0 for any) a route attaches to.
fn parents(
    source: &Source<'_>,
    services: &BTreeMap<&ObjectKey, &ServiceInfo>,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    warnings: &mut Warnings,
) -> Vec<(ObjectKey, u16)> {
    let ns = &source.key.namespace;
    let mut out = Vec::new();
    for (i, parent) in source.parents.iter().enumerate() {
        let at = format!("{} {} spec.parentRefs[{i}]", source.kind, source.key);
        let group = parent.group.as_deref();
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        let parent_ns = parent.namespace.as_deref().unwrap_or(ns);
        let key = ObjectKey::new(parent_ns, &parent.name);
        match (group, kind) {
            // The API's default group is gateway.networking.k8s.io, but a Service parent
            // without `group: ""` is a common slip whose meaning is clear.
            (None | Some("" | "core"), "Service") => {
                if parent_ns != ns {
                    warnings.push(format!(
                        "{at}: Service {key} is in another namespace (a consumer route), which \
                         amesh does not support; parent ignored"
                    ));
                    continue;
                }
                if !services.contains_key(&key) {
                    warnings.push(format!("{at}: there is no Service {key}; parent ignored"));
                    continue;
                }
                out.push((key, parent.port.unwrap_or(0)));
            }
            (None | Some(GATEWAY_GROUP), "Gateway") => {
                let bound: Vec<&ObjectKey> = bindings
                    .iter()
                    .filter(|(_, waypoint)| **waypoint == key)
                    .map(|(svc, _)| svc)
                    .filter(|svc| {
                        services.get(svc).is_some_and(|s| {
                            source.hostnames.is_empty()
                                || source
                                    .hostnames
                                    .iter()
                                    .any(|h| host_matches(h, &s.hostname))
                        })
                    })
                    .collect();
                if bound.is_empty() {
                    tracing::debug!(
                        route = %source.key,
                        gateway = %key,
                        "parent Gateway is no waypoint with (matching) services; ignored"
                    );
                }
                out.extend(bound.into_iter().map(|svc| (svc.clone(), 0)));
            }
            _ => tracing::debug!(
                route = %source.key,
                group = group.unwrap_or(GATEWAY_GROUP),
                kind,
                "parent is not a mesh parent (Service or waypoint); ignored"
            ),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A route hostname (`name.ns.svc.cluster.local` or `*.ns.svc.cluster.local`) against a
/// service's hostname.
fn host_matches(pattern: &str, hostname: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => hostname.ends_with(suffix) && hostname.len() > suffix.len(),
        None => pattern.eq_ignore_ascii_case(hostname),
    }
}

fn http_match(m: &HttpRouteMatch) -> RouteMatch {
    let path = m.path.clone().unwrap_or_default();
    let kind = match path.type_.unwrap_or(PathMatchType::PathPrefix) {
        PathMatchType::Exact => path_match::Kind::Exact,
        PathMatchType::PathPrefix => path_match::Kind::PathPrefix,
        PathMatchType::RegularExpression => path_match::Kind::RegularExpression,
    };
    RouteMatch {
        path: Some(PathMatch {
            kind: kind as i32,
            value: path.value.unwrap_or_else(|| "/".to_owned()),
        }),
        headers: m.headers.iter().map(header_match).collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| QueryParamMatch {
                name: q.name.clone(),
                value: q.value.clone(),
                regex: q.type_ == Some(ValueMatchType::RegularExpression),
            })
            .collect(),
        method: m
            .method
            .as_deref()
            .map(str::to_ascii_uppercase)
            .unwrap_or_default(),
    }
}

fn header_match(h: &HttpHeaderMatch) -> HeaderMatch {
    HeaderMatch {
        name: h.name.clone(),
        value: h.value.clone(),
        regex: h.type_ == Some(ValueMatchType::RegularExpression),
    }
}

fn grpc_match(m: &GrpcRouteMatch) -> RouteMatch {
    RouteMatch {
        path: Some(m.method.as_ref().and_then(grpc_path).unwrap_or(PathMatch {
            kind: path_match::Kind::PathPrefix as i32,
            value: "/".to_owned(),
        })),
        headers: m.headers.iter().map(header_match).collect(),
        query_params: Vec::new(),
        method: String::new(),
    }
}

/// The path match of a gRPC method match (`None`: any method of any service).
fn grpc_path(m: &GrpcMethodMatch) -> Option<PathMatch> {
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let (service, method) = (non_empty(&m.service), non_empty(&m.method));
    let (kind, value) = match (m.type_.unwrap_or(ValueMatchType::Exact), service, method) {
        (_, None, None) => return None,
        (ValueMatchType::Exact, Some(s), Some(me)) => {
            (path_match::Kind::Exact, format!("/{s}/{me}"))
        }
        (ValueMatchType::Exact, Some(s), None) => (path_match::Kind::PathPrefix, format!("/{s}/")),
        (ValueMatchType::Exact, None, Some(me)) => (
            path_match::Kind::RegularExpression,
            format!("/[^/]+/{}", regex_escape(&me)),
        ),
        (ValueMatchType::RegularExpression, s, me) => (
            path_match::Kind::RegularExpression,
            format!(
                "/({})/({})",
                s.as_deref().unwrap_or("[^/]+"),
                me.as_deref().unwrap_or("[^/]+")
            ),
        ),
    };
    Some(PathMatch {
        kind: kind as i32,
        value,
    })
}

/// A literal in RE2 syntax.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What backends and filters are resolved against.
struct Context<'a> {
    route_namespace: &'a str,
    services: &'a BTreeMap<&'a ObjectKey, &'a ServiceInfo>,
    opts: &'a TranslateOptions,
}

/// A `backendRef` (weighted or a mirror's).
struct BackendReference<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<u16>,
}

/// A backend of weight 1 and no filters; `port` is required for Service backends.
fn backend(
    r: &BackendReference<'_>,
    ctx: &Context<'_>,
    at: &str,
    warnings: &mut Warnings,
) -> Backend {
    let (group, name) = (r.group, r.name);
    let ns = r.namespace.unwrap_or(ctx.route_namespace);
    let kind = r.kind.unwrap_or("Service");
    let port = u32::from(r.port.unwrap_or(0));
    if !(matches!(group, None | Some("" | "core")) && kind == "Service") {
        warnings.push(format!(
            "{at}: backend {}/{kind} {ns}/{name} is not a Service; requests to it get 500",
            group.unwrap_or("")
        ));
        return Backend {
            port,
            ..Backend::default()
        };
    }
    let key = ObjectKey::new(ns, name);
    if !ctx.services.contains_key(&key) {
        warnings.push(format!(
            "{at}: there is no Service {key}; requests sent to this backend get 500"
        ));
    }
    if port == 0 {
        warnings.push(format!(
            "{at}: a Service backend needs a port; requests sent to this backend get 500"
        ));
    }
    Backend {
        service: format!("{ns}/{name}.{ns}.svc.{}", ctx.opts.domain_suffix),
        port,
        weight: 1,
        filters: Vec::new(),
        subset: String::new(),
    }
}

fn filters(
    list: &[HttpRouteFilter],
    ctx: &Context<'_>,
    at: &str,
    warnings: &mut Warnings,
) -> Vec<Filter> {
    let mut out = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let at = format!("{at}.filters[{i}]");
        let missing = |warnings: &mut Warnings, field: &str| {
            warnings.push(format!(
                "{at}: type {} without its {field} field; filter ignored",
                f.type_
            ));
        };
        let kind = match f.type_.as_str() {
            "RequestHeaderModifier" => match &f.request_header_modifier {
                Some(h) => filter::Kind::RequestHeaderModifier(header_modifier(h)),
                None => {
                    missing(warnings, "requestHeaderModifier");
                    continue;
                }
            },
            "ResponseHeaderModifier" => match &f.response_header_modifier {
                Some(h) => filter::Kind::ResponseHeaderModifier(header_modifier(h)),
                None => {
                    missing(warnings, "responseHeaderModifier");
                    continue;
                }
            },
            "RequestRedirect" => match &f.request_redirect {
                Some(r) => filter::Kind::RequestRedirect(RequestRedirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r
                        .path
                        .as_ref()
                        .and_then(|p| path_modifier(p, &at, warnings)),
                    port: u32::from(r.port.unwrap_or(0)),
                    status_code: u32::from(r.status_code.unwrap_or(302)),
                }),
                None => {
                    missing(warnings, "requestRedirect");
                    continue;
                }
            },
            "URLRewrite" => match &f.url_rewrite {
                Some(r) => filter::Kind::UrlRewrite(UrlRewrite {
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r
                        .path
                        .as_ref()
                        .and_then(|p| path_modifier(p, &at, warnings)),
                }),
                None => {
                    missing(warnings, "urlRewrite");
                    continue;
                }
            },
            "RequestMirror" => match &f.request_mirror {
                Some(r) => {
                    let b = &r.backend_ref;
                    let reference = BackendReference {
                        group: b.group.as_deref(),
                        kind: b.kind.as_deref(),
                        name: &b.name,
                        namespace: b.namespace.as_deref(),
                        port: b.port,
                    };
                    let mirror_at = format!("{at}.requestMirror.backendRef");
                    let backend = backend(&reference, ctx, &mirror_at, warnings);
                    let percent = match (r.percent, r.fraction) {
                        (Some(p), _) => f64::from(p.min(100)),
                        (None, Some(fr)) => {
                            let den = fr.denominator.unwrap_or(100);
                            if den == 0 {
                                warnings.push(format!(
                                    "{at}.requestMirror.fraction: denominator 0; nothing is \
                                     mirrored"
                                ));
                                0.0
                            } else {
                                (f64::from(fr.numerator) * 100.0 / f64::from(den)).min(100.0)
                            }
                        }
                        (None, None) => 100.0,
                    };
                    filter::Kind::RequestMirror(RequestMirror {
                        backend: Some(backend),
                        percent,
                    })
                }
                None => {
                    missing(warnings, "requestMirror");
                    continue;
                }
            },
            other => {
                warnings.push(format!(
                    "{at}: filter type {other} is not supported by amesh's waypoint; ignored"
                ));
                continue;
            }
        };
        out.push(Filter { kind: Some(kind) });
    }
    out
}

fn header_modifier(h: &gateway::HeaderModifier) -> HeaderModifier {
    let headers = |list: &[gateway::HttpHeader]| {
        list.iter()
            .map(|h| Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    HeaderModifier {
        set: headers(&h.set),
        add: headers(&h.add),
        remove: h.remove.clone(),
    }
}

fn path_modifier(
    p: &gateway::PathModifier,
    at: &str,
    warnings: &mut Warnings,
) -> Option<PathModifier> {
    let (kind, value) = match p.type_.as_str() {
        "ReplaceFullPath" => (
            path_modifier::Kind::ReplaceFullPath,
            p.replace_full_path.clone(),
        ),
        "ReplacePrefixMatch" => (
            path_modifier::Kind::ReplacePrefixMatch,
            p.replace_prefix_match.clone(),
        ),
        other => {
            warnings.push(format!(
                "{at}: path modifier type {other:?} is not ReplaceFullPath or \
                 ReplacePrefixMatch; path left unchanged"
            ));
            return None;
        }
    };
    Some(PathModifier {
        kind: kind as i32,
        value: value.unwrap_or_else(|| "/".to_owned()),
    })
}

fn timeouts(t: &gateway::HttpRouteTimeouts, at: &str, warnings: &mut Warnings) -> Option<Timeouts> {
    let mut one = |field: &str, text: &Option<String>| {
        let text = text.as_deref()?;
        match parse_duration(text) {
            Ok(d) if d == std::time::Duration::ZERO => None,
            Ok(d) => Some(prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            }),
            Err(e) => {
                warnings.push(format!(
                    "{at}.timeouts.{field}: {e}; no {field} timeout applies"
                ));
                None
            }
        }
    };
    let out = Timeouts {
        request: one("request", &t.request),
        backend_request: one("backendRequest", &t.backend_request),
    };
    (out != Timeouts::default()).then_some(out)
}

/// An HTTPRoute rule's `retry` as a RetryPolicy; `None` when it asks for no retries.
fn retry(r: &gateway::HttpRouteRetry, at: &str, warnings: &mut Warnings) -> Option<RetryPolicy> {
    let attempts = r.attempts.unwrap_or(2);
    if attempts == 0 {
        return None;
    }
    let mut retry_on = vec!["connect-failure".to_owned(), "reset".to_owned()];
    if !r.codes.is_empty() {
        retry_on.push("retriable-status-codes".to_owned());
    }
    let mut backoff = std::time::Duration::from_millis(25);
    if let Some(text) = &r.backoff {
        match parse_duration(text) {
            Ok(d) if !d.is_zero() => backoff = d,
            Ok(_) => {}
            Err(e) => warnings.push(format!("{at}.retry.backoff: {e}; 25ms applies")),
        }
    }
    Some(RetryPolicy {
        attempts,
        per_try_timeout: None,
        retry_on,
        retriable_status_codes: r.codes.iter().map(|c| u32::from(*c)).collect(),
        backoff_base: Some(prost_types::Duration {
            seconds: i64::try_from(backoff.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(backoff.subsec_nanos()).unwrap_or(0),
        }),
        other_host: true,
    })
}

/// A Gateway API duration: one to four `<number><unit>` parts, unit `h`, `m`, `s` or `ms`,
/// numbers of at most five digits (`1h2m`, `500ms`, `0s`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = |why: &str| format!("{text:?} is not a Gateway API duration ({why})");
    let mut rest = text;
    let mut total = std::time::Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad("each part is 1 to 5 digits and a unit h, m, s or ms"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number out of range"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else {
            return Err(bad("a unit h, m, s or ms must follow each number"));
        };
        rest = &rest[len..];
        // At most 99999 of the largest unit: no overflow.
        total += unit * u32::try_from(number).map_err(|_| bad("number out of range"))?;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad("1 to 4 parts"));
    }
    Ok(total)
}

/// Which waypoint each service is bound to (services that are waypoints themselves, and
/// services without a binding, are absent).
pub(crate) fn service_waypoints(
    model: &Model,
    warnings: &mut Warnings,
) -> BTreeMap<ObjectKey, ObjectKey> {
    model
        .services
        .iter()
        .filter(|s| !s.is_waypoint)
        .filter_map(|s| {
            let ns = s.key.namespace.as_str();
            let waypoint = model.waypoints.binding(
                &format!("service {}", s.key),
                Bound::Service,
                ns,
                &s.labels,
                model.namespace_labels(ns),
                warnings,
            )?;
            Some((s.key.clone(), waypoint.key.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(kind: Option<path_match::Kind>, path: &str) -> RouteOrder {
        RouteOrder {
            path_kind: kind,
            path_len: path.len(),
            has_method: false,
            headers: 0,
            query_params: 0,
            created: None,
            route: "ns/r".into(),
            rule: 0,
            matched: 0,
        }
    }

    fn time(text: &str) -> Time {
        serde_json::from_value(serde_json::Value::from(text)).expect("a timestamp")
    }

    fn sorted(mut list: Vec<RouteOrder>) -> Vec<RouteOrder> {
        list.sort_by(precedence);
        list
    }

    #[test]
    fn exact_then_longest_prefix_then_regex() {
        use path_match::Kind::{Exact, PathPrefix, RegularExpression};
        let list = vec![
            order(Some(PathPrefix), "/"),
            order(Some(RegularExpression), "/a.*"),
            order(Some(PathPrefix), "/api/v1"),
            order(Some(Exact), "/"),
            order(Some(PathPrefix), "/api"),
        ];
        let got: Vec<(Option<path_match::Kind>, usize)> = sorted(list)
            .into_iter()
            .map(|o| (o.path_kind, o.path_len))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(Exact), 1),
                (Some(PathPrefix), 7),
                (Some(PathPrefix), 4),
                (Some(PathPrefix), 1),
                (Some(RegularExpression), 4),
            ]
        );
    }

    #[test]
    fn method_headers_query_then_age_name_and_rule_order() {
        let base = order(Some(path_match::Kind::PathPrefix), "/");
        let with = |f: &dyn Fn(&mut RouteOrder)| {
            let mut o = base.clone();
            f(&mut o);
            o
        };
        let one_header = with(&|o| o.headers = 1);
        let two_headers = with(&|o| o.headers = 2);
        let method = with(&|o| o.has_method = true);
        let query = with(&|o| o.query_params = 1);
        let old = with(&|o| o.created = Some(time("2020-01-01T00:00:00Z")));
        let young = with(&|o| o.created = Some(time("2024-01-01T00:00:00Z")));
        let list = vec![
            young.clone(),
            query.clone(),
            one_header.clone(),
            old.clone(),
            two_headers.clone(),
            method.clone(),
        ];
        // A method beats headers; headers beat query params; then age (unknown = oldest).
        assert_eq!(
            sorted(list),
            vec![method, two_headers, one_header, query, old, young]
        );

        let a = with(&|o| o.route = "a/z".into());
        let b_rule0 = with(&|o| o.route = "b/a".into());
        let b_rule1 = with(&|o| {
            o.route = "b/a".into();
            o.rule = 1;
        });
        let b_rule1_match1 = with(&|o| {
            o.route = "b/a".into();
            o.rule = 1;
            o.matched = 1;
        });
        assert_eq!(
            sorted(vec![
                b_rule1_match1.clone(),
                b_rule1.clone(),
                a.clone(),
                b_rule0.clone()
            ]),
            vec![a, b_rule0, b_rule1, b_rule1_match1]
        );
    }

    #[test]
    fn durations() {
        let d = |t: &str| parse_duration(t);
        assert_eq!(d("10s"), Ok(std::time::Duration::from_secs(10)));
        assert_eq!(d("500ms"), Ok(std::time::Duration::from_millis(500)));
        assert_eq!(d("1h2m"), Ok(std::time::Duration::from_secs(3720)));
        assert_eq!(
            d("1h1m1s1ms"),
            Ok(std::time::Duration::from_millis(3_661_001))
        );
        assert_eq!(d("0s"), Ok(std::time::Duration::ZERO));
        for bad in ["", "10", "s", "1.5s", "1d", "123456s", "1h1m1s1ms1h", "-1s"] {
            let err = d(bad).expect_err(bad);
            assert!(err.contains("Gateway API duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn grpc_methods_become_paths() {
        let m = |t: Option<ValueMatchType>, s: Option<&str>, me: Option<&str>| {
            grpc_path(&GrpcMethodMatch {
                type_: t,
                service: s.map(Into::into),
                method: me.map(Into::into),
            })
            .map(|p| (p.kind(), p.value))
        };
        use path_match::Kind::{Exact, PathPrefix, RegularExpression};
        assert_eq!(
            m(None, Some("pkg.Svc"), Some("Get")),
            Some((Exact, "/pkg.Svc/Get".into()))
        );
        assert_eq!(
            m(None, Some("pkg.Svc"), None),
            Some((PathPrefix, "/pkg.Svc/".into()))
        );
        assert_eq!(
            m(None, None, Some("Get")),
            Some((RegularExpression, "/[^/]+/Get".into()))
        );
        assert_eq!(
            m(
                Some(ValueMatchType::RegularExpression),
                Some("pkg\\..*"),
                None
            ),
            Some((RegularExpression, "/(pkg\\..*)/([^/]+)".into()))
        );
        assert_eq!(m(None, None, None), None);
    }

    #[test]
    fn hostnames() {
        assert!(host_matches(
            "reviews.bookinfo.svc.cluster.local",
            "reviews.bookinfo.svc.cluster.local"
        ));
        assert!(host_matches(
            "*.bookinfo.svc.cluster.local",
            "reviews.bookinfo.svc.cluster.local"
        ));
        assert!(!host_matches(
            "*.bookinfo.svc.cluster.local",
            "bookinfo.svc.cluster.local"
        ));
        assert!(!host_matches(
            "ratings.bookinfo.svc.cluster.local",
            "reviews.bookinfo.svc.cluster.local"
        ));
    }
}
