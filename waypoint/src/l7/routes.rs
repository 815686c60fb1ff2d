//! HTTP routes of a service (from `amesh.l7.v1.ServiceRoutes`): match a request, in the order
//! the controller already sorted by Gateway API precedence, and say what to do with it; plus
//! the service's DestinationRule (`destination`), which applies to requests sent to it.

use std::sync::Arc;
use std::time::Duration;

use amesh_proto::amesh::l7::v1 as pb;
use http::{HeaderMap, Method};
use regex::Regex;

use super::ConvertError;
use crate::fault::Fault;
use crate::policy::DestinationPolicy;
use crate::retry::RetryPolicy;

/// The routes of one service, ready to evaluate.
#[derive(Debug)]
pub struct RouteTable {
    /// `<namespace>/<hostname>`.
    pub name: String,
    /// Empty: the resource carries only a destination policy, and requests take the
    /// service's default routing.
    pub routes: Vec<Route>,
    /// The service's DestinationRule, for requests sent to it.
    pub destination: Option<Arc<DestinationPolicy>>,
}

/// One (rule, match) pair.
#[derive(Debug)]
pub struct Route {
    /// `<namespace>/<route name>`, for metrics and logs.
    pub route_name: String,
    pub rule_index: u32,
    /// 0 = every port.
    pub port: u16,
    matcher: Matcher,
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<Fault>,
}

/// A request as routing sees it.
#[derive(Debug, Clone, Copy)]
pub struct RouteView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The service port the client addressed.
    pub port: u16,
}

#[derive(Debug)]
struct Matcher {
    path: Option<PathMatcher>,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    method: Option<Method>,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Gateway API prefix: whole path segments (`/foo` matches `/foo` and `/foo/bar`, not
    /// `/foobar`).
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

/// A filter, applied to the request before forwarding or to the response.
#[derive(Debug, Clone)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    Rewrite(Rewrite),
    Mirror(Mirror),
}

#[derive(Debug, Clone, Default)]
pub struct HeaderModifier {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderModifier {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathModifier {
    Full(String),
    Prefix(String),
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: http::StatusCode,
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub backend: Backend,
    /// 0.0..=100.0
    pub percent: f64,
}

/// A weighted destination service.
#[derive(Debug, Clone)]
pub struct Backend {
    /// `<namespace>/<hostname>`.
    pub service: String,
    pub port: u16,
    pub weight: u32,
    pub filters: Vec<Filter>,
    /// DestinationRule subset of the service.
    pub subset: Option<Arc<str>>,
}

impl RouteTable {
    pub fn from_proto(p: pb::ServiceRoutes) -> Result<Self, ConvertError> {
        let name = p.name.clone();
        let destination = p
            .destination
            .map(|d| DestinationPolicy::from_proto(&name, d).map(Arc::new))
            .transpose()?;
        let routes = p
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| Route::from_proto(&name, i, r))
            .collect::<Result<_, _>>()?;
        Ok(RouteTable {
            name,
            routes,
            destination,
        })
    }

    /// Whether any route attaches to `port` (a route's parentRef may name one port of the
    /// service; the others keep the service's default routing). A table without routes (only
    /// a destination policy) covers no port.
    pub fn covers(&self, port: u16) -> bool {
        self.routes.iter().any(|r| r.port == 0 || r.port == port)
    }

    /// The first route whose port and match hold, with the prefix it matched (for
    /// `ReplacePrefixMatch`).
    pub fn find(&self, req: &RouteView<'_>) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| (r.port == 0 || r.port == req.port) && r.matcher.matches(req))
    }
}

impl Route {
    fn from_proto(table: &str, index: usize, p: pb::Route) -> Result<Self, ConvertError> {
        let at = |field: &str| format!("routes[{index}] ({}).{field}", p.route_name);
        let port = u16::try_from(p.port)
            .map_err(|_| ConvertError::new(table, at("port"), "not a port number"))?;
        let m = p.r#match.unwrap_or_default();
        let path = match m.path {
            None => None,
            Some(path) => Some(match pb::path_match::Kind::try_from(path.kind) {
                Ok(pb::path_match::Kind::Exact) => PathMatcher::Exact(path.value),
                Ok(pb::path_match::Kind::PathPrefix) => {
                    let trimmed = path.value.trim_end_matches('/');
                    PathMatcher::Prefix(trimmed.to_string())
                }
                Ok(pb::path_match::Kind::RegularExpression) => {
                    PathMatcher::Regex(full_regex(&path.value).map_err(|e| {
                        ConvertError::new(table, at("match.path.value"), e.to_string())
                    })?)
                }
                Err(_) => {
                    return Err(ConvertError::new(
                        table,
                        at("match.path.kind"),
                        format!("unknown kind {}", path.kind),
                    ))
                }
            }),
        };
        let mut headers = Vec::new();
        for (i, h) in m.headers.into_iter().enumerate() {
            let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|e| {
                    ConvertError::new(
                        table,
                        at(&format!("match.headers[{i}].name")),
                        e.to_string(),
                    )
                })?;
            let value = value_matcher(h.value, h.regex).map_err(|e| {
                ConvertError::new(table, at(&format!("match.headers[{i}].value")), e)
            })?;
            headers.push((name, value));
        }
        let mut query = Vec::new();
        for (i, q) in m.query_params.into_iter().enumerate() {
            let value = value_matcher(q.value, q.regex).map_err(|e| {
                ConvertError::new(table, at(&format!("match.query_params[{i}].value")), e)
            })?;
            query.push((q.name, value));
        }
        let method = if m.method.is_empty() {
            None
        } else {
            Some(
                Method::from_bytes(m.method.as_bytes())
                    .map_err(|e| ConvertError::new(table, at("match.method"), e.to_string()))?,
            )
        };
        let filters = p
            .filters
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                filter(f).map_err(|e| ConvertError::new(table, at(&format!("filters[{i}]")), e))
            })
            .collect::<Result<_, _>>()?;
        let backends = p
            .backends
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                backend(b).map_err(|e| ConvertError::new(table, at(&format!("backends[{i}]")), e))
            })
            .collect::<Result<_, _>>()?;
        let retry = p
            .retry
            .as_ref()
            .map(RetryPolicy::from_proto)
            .transpose()
            .map_err(|(f, e)| ConvertError::new(table, at(&format!("retry.{f}")), e))?;
        let fault = p
            .fault
            .as_ref()
            .map(Fault::from_proto)
            .transpose()
            .map_err(|(f, e)| ConvertError::new(table, at(&format!("fault.{f}")), e))?;
        let t = p.timeouts.unwrap_or_default();
        Ok(Route {
            route_name: p.route_name,
            rule_index: p.rule_index,
            port,
            matcher: Matcher {
                path,
                headers,
                query,
                method,
            },
            filters,
            backends,
            request_timeout: duration(t.request),
            backend_timeout: duration(t.backend_request),
            retry,
            fault,
        })
    }

    /// The prefix a `PathPrefix` match matched, if this route matched by prefix.
    pub fn matched_prefix(&self) -> Option<&str> {
        match &self.matcher.path {
            Some(PathMatcher::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    /// Chooses a backend by weight; `None` when there is none with a weight.
    pub fn pick_backend(&self, roll: u64) -> Option<&Backend> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = roll % total;
        for b in &self.backends {
            let w = u64::from(b.weight);
            if point < w {
                return Some(b);
            }
            point -= w;
        }
        None
    }
}

impl Matcher {
    fn matches(&self, req: &RouteView<'_>) -> bool {
        if let Some(m) = &self.method {
            if m != req.method {
                return false;
            }
        }
        if let Some(path) = &self.path {
            let ok = match path {
                PathMatcher::Exact(p) => req.path == p,
                PathMatcher::Prefix(p) => {
                    p.is_empty()
                        || (req.path.starts_with(p.as_str())
                            && matches!(req.path.as_bytes().get(p.len()), None | Some(b'/')))
                }
                PathMatcher::Regex(r) => r.is_match(req.path),
            };
            if !ok {
                return false;
            }
        }
        for (name, value) in &self.headers {
            // Repeated headers are compared joined with ",", as the spec allows.
            let mut values = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok());
            let Some(first) = values.next() else {
                return false;
            };
            let joined;
            let actual = match values.next() {
                None => first,
                Some(second) => {
                    joined = std::iter::once(first)
                        .chain(std::iter::once(second))
                        .chain(values)
                        .collect::<Vec<_>>()
                        .join(",");
                    joined.as_str()
                }
            };
            if !value.matches(actual) {
                return false;
            }
        }
        for (name, value) in &self.query {
            // The first occurrence of a parameter is the one compared (Gateway API).
            let found = req.query.and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v)
                })
            });
            match found {
                Some(v) if value.matches(v) => {}
                _ => return false,
            }
        }
        true
    }
}

impl ValueMatcher {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatcher::Exact(e) => e == v,
            ValueMatcher::Regex(r) => r.is_match(v),
        }
    }
}

/// A regex anchored at both ends: Gateway API and Envoy match the whole value.
fn full_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn value_matcher(value: String, regex: bool) -> Result<ValueMatcher, String> {
    if regex {
        full_regex(&value)
            .map(ValueMatcher::Regex)
            .map_err(|e| e.to_string())
    } else {
        Ok(ValueMatcher::Exact(value))
    }
}

fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn header_pairs(
    headers: Vec<pb::Header>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    headers
        .into_iter()
        .map(|h| {
            let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("header name {:?}: {e}", h.name))?;
            let value = http::HeaderValue::from_str(&h.value)
                .map_err(|e| format!("header {:?} value: {e}", h.name))?;
            Ok((name, value))
        })
        .collect()
}

fn modifier(m: pb::HeaderModifier) -> Result<HeaderModifier, String> {
    Ok(HeaderModifier {
        set: header_pairs(m.set)?,
        add: header_pairs(m.add)?,
        remove: m
            .remove
            .into_iter()
            .map(|n| {
                http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                    .map_err(|e| format!("header name {n:?}: {e}"))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(p: Option<pb::PathModifier>) -> Result<Option<PathModifier>, String> {
    let Some(p) = p else { return Ok(None) };
    match pb::path_modifier::Kind::try_from(p.kind) {
        Ok(pb::path_modifier::Kind::ReplaceFullPath) => Ok(Some(PathModifier::Full(p.value))),
        Ok(pb::path_modifier::Kind::ReplacePrefixMatch) => Ok(Some(PathModifier::Prefix(p.value))),
        Err(_) => Err(format!("unknown path modifier kind {}", p.kind)),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn filter(f: pb::Filter) -> Result<Filter, String> {
    use pb::filter::Kind;
    match f.kind {
        Some(Kind::RequestHeaderModifier(m)) => Ok(Filter::RequestHeaders(modifier(m)?)),
        Some(Kind::ResponseHeaderModifier(m)) => Ok(Filter::ResponseHeaders(modifier(m)?)),
        Some(Kind::RequestRedirect(r)) => {
            let status = match r.status_code {
                0 => http::StatusCode::FOUND,
                code => http::StatusCode::from_u16(
                    u16::try_from(code).map_err(|_| format!("status code {code}"))?,
                )
                .map_err(|e| e.to_string())?,
            };
            Ok(Filter::Redirect(Redirect {
                scheme: non_empty(r.scheme),
                hostname: non_empty(r.hostname),
                path: path_modifier(r.path)?,
                port: match r.port {
                    0 => None,
                    p => Some(u16::try_from(p).map_err(|_| format!("port {p}"))?),
                },
                status,
            }))
        }
        Some(Kind::UrlRewrite(r)) => Ok(Filter::Rewrite(Rewrite {
            hostname: non_empty(r.hostname),
            path: path_modifier(r.path)?,
        })),
        Some(Kind::RequestMirror(m)) => {
            let backend = backend(m.backend.ok_or("request_mirror without a backend")?)?;
            Ok(Filter::Mirror(Mirror {
                backend,
                percent: m.percent.clamp(0.0, 100.0),
            }))
        }
        None => Err("empty filter".into()),
    }
}

fn backend(b: pb::Backend) -> Result<Backend, String> {
    if b.service.is_empty() {
        return Err("backend without a service".into());
    }
    Ok(Backend {
        service: b.service,
        port: u16::try_from(b.port).map_err(|_| format!("port {}", b.port))?,
        weight: b.weight,
        filters: b
            .filters
            .into_iter()
            .map(filter)
            .collect::<Result<_, _>>()?,
        subset: (!b.subset.is_empty()).then(|| b.subset.into()),
    })
}

/// Applies a path modifier to `path` (which matched `matched_prefix`, if any).
pub fn rewrite_path(path: &str, modifier: &PathModifier, matched_prefix: Option<&str>) -> String {
    match modifier {
        PathModifier::Full(p) => p.clone(),
        PathModifier::Prefix(replacement) => {
            let prefix = matched_prefix.unwrap_or("");
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let replacement = replacement.trim_end_matches('/');
            match (replacement.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_string(),
                (true, false) => rest.to_string(),
                (false, _) => format!("{replacement}{rest}"),
            }
        }
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
