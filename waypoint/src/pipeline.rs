//! The request pipeline, one phase after another with a per-request [`Record`]:
//! authorization → route (match, filters, redirect) → backend and endpoint choice → forward over
//! HBONE with timeouts → response filters. Faults are injected between route and forward; the
//! forward phase (`forward`) owns the attempts: DestinationRule policy, retries, circuit
//! breakers and outlier detection. Routing only *decides*.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh::state::{Service, Snapshot, Workload};
use mesh::Identity;
use rand::Rng;
use tracing::debug;

use crate::body::{self, Finishing, RespBody};
use crate::fault;
use crate::forward::{self, local_reply, Forward};
use crate::headers::{authority_of, ensure_request_id, propagate_trace, redirect_location};
use crate::l7::authz::{self, Target as PolicyTarget};
use crate::l7::routes::{rewrite_path, Filter, Route};
use crate::l7::{Decision, RequestAttrs, RouteView};
use crate::mirror;
use crate::record::Record;
use crate::upstream::{Endpoint, UpBody, Version};
use crate::Waypoint;

/// What a tunnel was addressed to.
#[derive(Debug, Clone)]
pub enum Target {
    Service(Arc<Service>),
    Workload(Arc<Workload>),
}

/// One downstream tunnel: who the client is (proven) and what it addressed.
#[derive(Debug)]
pub struct ConnCtx {
    pub peer_identity: Identity,
    /// `peer_identity` as a SPIFFE URI, made once for the connection's requests (policies
    /// and the access log read it on every request).
    pub peer_principal: String,
    /// The connection's metric series (see `record::SeriesCache`).
    pub series: crate::record::SeriesCache,
    pub peer_addr: SocketAddr,
    pub source_workload: Option<Arc<Workload>>,
    pub target: Target,
    /// The `ip:port` of the CONNECT.
    pub addr: SocketAddr,
}

/// Headers that belong to one hop and are never forwarded.
pub(crate) const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
];

/// Serves one request; never fails (errors become responses).
pub async fn handle(
    wp: Arc<Waypoint>,
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let request_id = ensure_request_id(req.headers_mut());
    propagate_trace(req.headers_mut());
    let authority: Arc<str> = match authority_of(&req) {
        Some(a) => a.into(),
        None => ctx.addr.to_string().into(),
    };
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let service = match &ctx.target {
        Target::Service(s) => Some(s.clone()),
        Target::Workload(_) => None,
    };
    let mut record = Record::new(
        wp.clone(),
        ctx.clone(),
        req.method().clone(),
        req.uri().clone(),
        authority.clone(),
        if grpc { "grpc" } else { "http" },
        req.version(),
        request_id,
        req.headers().get(header::USER_AGENT).cloned(),
        service.clone(),
    );
    let l7 = wp.l7.snapshot();

    // Request authentication (JWT), then authorization, then local rate limits: all bound to
    // this waypoint or to the service addressed.
    // The URI is shared bytes: cloning it lets the query be read while headers change.
    let uri = req.uri().clone();
    let jwt = match crate::l7::jwt::authenticate(
        applicable(
            wp.gateway_ref(),
            service.as_deref(),
            &l7.authentications,
            |p| &p.targets,
        ),
        req.headers_mut(),
        uri.query(),
    ) {
        crate::l7::jwt::Outcome::Verified(v) => Some(v),
        crate::l7::jwt::Outcome::NoToken => None,
        crate::l7::jwt::Outcome::Failed { message, detail } => {
            debug!(reason = message, detail, "JWT rejected");
            return Ok(jwt_rejected(record, message, &authority, uri.path()));
        }
    };
    let attrs = RequestAttrs {
        principal: ctx.peer_principal.trim_start_matches("spiffe://"),
        namespace: ctx.peer_identity.namespace(),
        source_ip: ctx.peer_addr.ip(),
        method: req.method().as_str(),
        path: req.uri().path(),
        host: &authority,
        port: ctx.addr.port(),
        headers: req.headers(),
        auth: jwt.as_deref(),
    };
    if let Decision::Deny(policy) = decide(wp.gateway_ref(), &l7, service.as_deref(), &attrs) {
        debug!(?policy, principal = attrs.principal, "request denied");
        return Ok(local_reply(
            record,
            StatusCode::FORBIDDEN,
            "RBAC: access denied",
            "-",
        ));
    }
    let mut limits = applicable(wp.gateway_ref(), service.as_deref(), &l7.rate_limits, |p| {
        &p.targets
    });
    if let Some(limit) = limits.find(|p| !p.limiter.try_acquire(attrs.principal)) {
        debug!(policy = %limit.key, principal = attrs.principal, "rate limited");
        return Ok(local_reply(
            record,
            StatusCode::TOO_MANY_REQUESTS,
            "local_rate_limited",
            "RL",
        ));
    }

    // Routing.
    // Made once: routing and the endpoint choice both key by it.
    let mut service_key = service.as_ref().map(|s| s.key());
    let view = RouteView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        port: ctx.addr.port(),
    };
    let route: Option<&Route> = match select_route(&l7, service_key.as_deref(), &view) {
        RouteChoice::Default => None,
        RouteChoice::Matched(r) => Some(r),
        RouteChoice::NoMatch => {
            return Ok(local_reply(
                record,
                StatusCode::NOT_FOUND,
                "no route matched\n",
                "NR",
            ))
        }
    };
    if let Some(r) = route {
        record.route = Some((r.route_name.clone(), r.rule_index));
    }

    // Faults (VirtualService `fault`): a delay, then maybe an abort, before anything else.
    if let Some(f) = route.and_then(|r| r.fault.as_ref()) {
        let decision = f.decide(|| rand::rng().random::<f64>());
        if let Some(d) = decision.delay {
            // Flagged as the delay starts (as Envoy's fault filter does): a client that gives
            // up during it is recorded `DI,DC`.
            record.add_flag("DI");
            tokio::time::sleep(d).await;
        }
        if let Some(abort) = decision.abort {
            let (parts, text) = fault::abort_response(abort).into_parts();
            record.add_flag("FI");
            if let fault::Abort::Grpc(code) = abort {
                record.grpc_status = Some(code.to_string());
            }
            record.responding(parts.status.as_u16());
            let resp = Response::from_parts(parts, body::text(text));
            return Ok(resp.map(|b| Finishing::new(b, record).boxed()));
        }
    }

    let snapshot = wp.state.snapshot();
    // The destination: a weighted backend of the route, else what the client addressed.
    let mut filters: Vec<&Filter> = route
        .map(|r| r.filters.iter().collect())
        .unwrap_or_default();
    let mut subset = None;
    let destination = match route {
        Some(r) => {
            let roll = rand::rng().random::<u64>();
            match r.pick_backend(roll) {
                Some(b) => {
                    filters.extend(b.filters.iter());
                    subset = b.subset.clone();
                    Dest::Service {
                        key: b.service.clone(),
                        port: b.port,
                    }
                }
                None if r.filters.iter().any(|f| matches!(f, Filter::Redirect(_))) => Dest::None,
                None => {
                    return Ok(local_reply(
                        record,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "route has no backend\n",
                        "-",
                    ))
                }
            }
        }
        None => match &ctx.target {
            Target::Service(s) => Dest::Service {
                key: service_key.take().unwrap_or_else(|| s.key()),
                port: ctx.addr.port(),
            },
            Target::Workload(w) => Dest::Workload(w.clone(), ctx.addr),
        },
    };

    // Request filters; a redirect answers here.
    let matched_prefix = route.and_then(|r| r.matched_prefix());
    let mut response_filters = Vec::new();
    let mut mirrors = Vec::new();
    for f in &filters {
        match f {
            Filter::Redirect(r) => {
                let location = redirect_location(&req, &authority, r, matched_prefix);
                let mut resp = Response::new(body::empty());
                *resp.status_mut() = r.status;
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                record.responding(r.status.as_u16());
                return Ok(resp.map(|b| Finishing::new(b, record).boxed()));
            }
            Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
            Filter::ResponseHeaders(m) => response_filters.push(m.clone()),
            Filter::Rewrite(rw) => {
                if let Some(host) = &rw.hostname {
                    if let Ok(v) = HeaderValue::from_str(host) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                }
                if let Some(p) = &rw.path {
                    let new_path = rewrite_path(req.uri().path(), p, matched_prefix);
                    let pq = match req.uri().query() {
                        Some(q) => format!("{new_path}?{q}"),
                        None => new_path,
                    };
                    if let Ok(uri) = Uri::builder().path_and_query(pq).build() {
                        *req.uri_mut() = uri;
                    }
                }
            }
            Filter::Mirror(m) => {
                if rand::rng().random::<f64>() * 100.0 < m.percent {
                    mirrors.extend(mirror::plan(&wp, &snapshot, &l7, &req, &m.backend));
                }
            }
        }
    }

    drop(snapshot);
    // The destination service's DestinationRule travels with its routes resource.
    let policy = match &destination {
        Dest::Service { key, .. } => l7.routes.get(key).and_then(|t| t.destination.clone()),
        _ => None,
    };
    let fwd = Forward {
        wp: &wp,
        route,
        dest: destination,
        subset,
        policy,
        authority: &authority,
        source_ip: ctx.peer_addr.ip(),
        response_filters,
        mirrors,
    };
    Ok(forward::forward(fwd, record, req).await)
}

/// The Gateway a waypoint implements, as the `targetRefs` of its policies name it.
#[derive(Debug, Clone, Copy)]
pub struct GatewayRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

impl Waypoint {
    pub fn gateway_ref(&self) -> GatewayRef<'_> {
        GatewayRef {
            namespace: &self.namespace,
            name: &self.gateway,
        }
    }
}

/// The policies of `all` bound to the waypoint `gw` or to `service`.
pub fn applicable<'a, P>(
    gw: GatewayRef<'a>,
    service: Option<&'a Service>,
    all: &'a std::collections::BTreeMap<String, Arc<P>>,
    targets: impl Fn(&P) -> &[PolicyTarget] + 'a,
) -> impl Iterator<Item = &'a P> + 'a {
    all.values()
        .map(|p| &**p)
        .filter(move |p| targets(p).iter().any(|t| binds(t, gw, service)))
}

/// Whether a policy target names the waypoint `gw` or `service`.
fn binds(t: &PolicyTarget, gw: GatewayRef<'_>, service: Option<&Service>) -> bool {
    match t {
        PolicyTarget::Gateway { namespace, name } => namespace == gw.namespace && name == gw.name,
        PolicyTarget::Service { namespace, name } => {
            service.is_some_and(|s| s.namespace == *namespace && s.name == *name)
        }
    }
}

/// How a request's route is chosen.
#[derive(Debug, Clone, Copy)]
pub enum RouteChoice<'a> {
    /// No route attaches to the service's port: the service's default routing (the addressed
    /// service or pod).
    Default,
    /// The first route whose port and match hold.
    Matched(&'a Route),
    /// Routes attach to the port and none matches: 404 `NR`.
    NoMatch,
}

/// The route of a request to the service `service_key` (`<namespace>/<hostname>`, `None`
/// for a request addressed to a pod), as the request path and `amesh explain` choose it.
pub fn select_route<'a>(
    l7: &'a crate::l7::L7Snapshot,
    service_key: Option<&str>,
    view: &RouteView<'_>,
) -> RouteChoice<'a> {
    let table = service_key
        .and_then(|k| l7.routes.get(k))
        .filter(|t| t.covers(view.port));
    match table {
        None => RouteChoice::Default,
        Some(table) => match table.find(view) {
            Some(r) => RouteChoice::Matched(r),
            None => RouteChoice::NoMatch,
        },
    }
}

/// Envoy's answer to a token that verifies under no rule: 401 with the reason and a
/// `www-authenticate` challenge naming the request's URL as the realm.
fn jwt_rejected(
    record: Record,
    message: &'static str,
    authority: &str,
    path: &str,
) -> Response<RespBody> {
    let mut resp = local_reply(record, StatusCode::UNAUTHORIZED, message, "-");
    let challenge = format!("Bearer realm=\"http://{authority}{path}\", error=\"invalid_token\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The decision of the L7 policies bound to the waypoint `gw` or to `service`.
pub fn decide(
    gw: GatewayRef<'_>,
    l7: &crate::l7::L7Snapshot,
    service: Option<&Service>,
    attrs: &RequestAttrs<'_>,
) -> Decision {
    let applicable = l7
        .policies
        .values()
        .filter(|p| p.targets.iter().any(|t| binds(t, gw, service)));
    authz::evaluate(applicable.map(|p| &**p), attrs)
}

pub(crate) use crate::balance::{Dest, Pick};

/// An endpoint of `dest` by the waypoint's default balancer, with no DestinationRule applied
/// (plain TCP through the waypoint).
pub(crate) fn pick_endpoint(
    wp: &Waypoint,
    snapshot: &Snapshot,
    dest: &Dest,
    version: Version,
) -> Result<(Endpoint, Arc<Workload>), Pick> {
    crate::balance::pick_endpoint(wp, snapshot, dest, version, &Default::default())
}

/// The request as it goes upstream: hop-by-hop headers dropped (kept for an upgrade), the URI
/// in the form the upstream version needs, the body streamed and counted.
pub(crate) fn upstream_request(
    req: Request<UpBody>,
    authority: &str,
    version: Version,
    upgrade: bool,
) -> Request<UpBody> {
    let (mut parts, body) = req.into_parts();
    let keep_upgrade = upgrade.then(|| {
        (
            parts.headers.get(header::CONNECTION).cloned(),
            parts.headers.get(header::UPGRADE).cloned(),
        )
    });
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(named.iter()) {
        parts.headers.remove(h);
    }
    if let Some((conn, up)) = keep_upgrade {
        if let Some(c) = conn {
            parts.headers.insert(header::CONNECTION, c);
        }
        if let Some(u) = up {
            parts.headers.insert(header::UPGRADE, u);
        }
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    match version {
        Version::Http2 => {
            parts.version = http::Version::HTTP_2;
            if let Ok(uri) = format!("http://{authority}{pq}").parse() {
                parts.uri = uri;
            }
            parts.headers.remove(header::HOST);
        }
        Version::Http1 => {
            parts.version = http::Version::HTTP_11;
            if let Ok(uri) = pq.parse() {
                parts.uri = uri;
            }
            if !parts.headers.contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(authority) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
    }
    Request::from_parts(parts, body)
}
