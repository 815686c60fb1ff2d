//! The request pipeline, one phase after another with a per-request [`Record`]:
//! authorization → route (match, filters, redirect) → backend and endpoint choice → forward over
//! HBONE with timeouts → response filters. Retries, faults and outlier detection slot in
//! between route and forward (see `forward`), which is why routing only *decides* and the
//! forward phase owns the attempt.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh::state::{AppProtocol, Service, Snapshot, Workload};
use mesh::Identity;
use rand::Rng;
use tracing::{debug, warn};

use crate::balance::{least_of_two, Balancer};
use crate::body::{self, Counted, Finishing, RespBody};
use crate::headers::{authority_of, ensure_request_id, propagate_trace, redirect_location};
use crate::l7::authz::{self, Target as PolicyTarget};
use crate::l7::routes::{rewrite_path, Filter, Route};
use crate::l7::{Decision, RequestAttrs, RouteView};
use crate::mirror;
use crate::record::Record;
use crate::upstream::{Endpoint, UpBody, UpstreamError, Version};
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
        applicable(&wp, service.as_deref(), &l7.authentications, |p| &p.targets),
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
    if let Decision::Deny(policy) = decide(&wp, &l7, service.as_deref(), &attrs) {
        debug!(?policy, principal = attrs.principal, "request denied");
        return Ok(local_reply(
            record,
            StatusCode::FORBIDDEN,
            "RBAC: access denied",
            "-",
        ));
    }
    let mut limits = applicable(&wp, service.as_deref(), &l7.rate_limits, |p| &p.targets);
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
    let table = service_key
        .as_ref()
        .and_then(|k| l7.routes.get(k))
        .filter(|t| t.covers(ctx.addr.port()));
    let route: Option<&Route> = match table {
        Some(table) => {
            let view = RouteView {
                method: req.method(),
                path: req.uri().path(),
                query: req.uri().query(),
                headers: req.headers(),
                port: ctx.addr.port(),
            };
            match table.find(&view) {
                Some(r) => Some(r),
                None => {
                    return Ok(local_reply(
                        record,
                        StatusCode::NOT_FOUND,
                        "no route matched\n",
                        "NR",
                    ))
                }
            }
        }
        None => None,
    };
    if let Some(r) = route {
        record.route = Some((r.route_name.clone(), r.rule_index));
    }

    let snapshot = wp.state.snapshot();
    // The destination: a weighted backend of the route, else what the client addressed.
    let mut filters: Vec<&Filter> = route
        .map(|r| r.filters.iter().collect())
        .unwrap_or_default();
    let destination = match route {
        Some(r) => {
            let roll = rand::rng().random::<u64>();
            match r.pick_backend(roll) {
                Some(b) => {
                    filters.extend(b.filters.iter());
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
                    mirrors.extend(mirror::plan(
                        &wp,
                        &snapshot,
                        &req,
                        m.backend.service.clone(),
                        m.backend.port,
                    ));
                }
            }
        }
    }

    let version = if req.version() == http::Version::HTTP_2 {
        Version::Http2
    } else {
        Version::Http1
    };
    let (endpoint, workload) = match pick_endpoint(&wp, &snapshot, &destination, version) {
        Ok(x) => x,
        Err(Pick::UnknownService(key)) => {
            warn!(service = %key, "route backend is not a known service");
            return Ok(local_reply(
                record,
                StatusCode::INTERNAL_SERVER_ERROR,
                "backend service not found\n",
                "-",
            ));
        }
        Err(Pick::NoHealthy) => {
            return Ok(local_reply(
                record,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                "UH",
            ))
        }
    };
    drop(snapshot);
    record.destination = Some(workload);
    record.upstream = Some(endpoint.addr);
    record.in_flight = Some(wp.in_flight.start(endpoint.addr.ip()));

    // Forward: one attempt, bounded by the route's timeouts.
    let timeout = match route.map(|r| (r.request_timeout, r.backend_timeout)) {
        Some((Some(a), Some(b))) => Some(a.min(b)),
        Some((a, b)) => a.or(b),
        None => None,
    };
    let upgrade = version == Version::Http1 && req.headers().contains_key(header::UPGRADE);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // An upgraded connection is not a request body: it is never mirrored.
    if upgrade {
        mirrors.clear();
    }
    let (parts, body) = req.into_parts();
    let body = mirror::start(&wp, mirrors, body);
    let up_req = upstream_request(
        Request::from_parts(parts, body),
        &authority,
        // An upgrade is an HTTP/1.1 mechanism and gets a connection of its own.
        if upgrade {
            Version::Http1
        } else {
            endpoint.version
        },
        upgrade,
        record.request_bytes.clone(),
    );
    let send = async {
        if upgrade {
            wp.upstream.send_upgrade(&endpoint, up_req).await
        } else {
            wp.upstream.send(&endpoint, up_req).await
        }
    };
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => {
                return Ok(local_reply(
                    record,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    "UT",
                ))
            }
        },
        None => send.await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "upstream failed");
            let flags = match e {
                UpstreamError::Connect { .. } | UpstreamError::Handshake { .. } => "UF",
                UpstreamError::Request { .. } => "UC",
            };
            return Ok(local_reply(
                record,
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers",
                flags,
            ));
        }
    };
    if let (Some(down), true) = (
        downstream_upgrade,
        resp.status() == StatusCode::SWITCHING_PROTOCOLS,
    ) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(down, up) {
                Ok((d, u)) => {
                    let mut d = hyper_util::rt::TokioIo::new(d);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
        });
    }
    for m in &response_filters {
        m.apply(resp.headers_mut());
    }
    if let Some(status) = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        record.grpc_status = Some(status.to_string());
    }
    record.responding(resp.status().as_u16());
    Ok(resp.map(|b| Finishing::new(b, record).boxed()))
}

/// The policies of `all` bound to this waypoint or to `service`.
fn applicable<'a, P>(
    wp: &'a Waypoint,
    service: Option<&'a Service>,
    all: &'a std::collections::BTreeMap<String, Arc<P>>,
    targets: impl Fn(&P) -> &[PolicyTarget] + 'a,
) -> impl Iterator<Item = &'a P> + 'a {
    all.values().map(|p| &**p).filter(move |p| {
        targets(p).iter().any(|t| match t {
            PolicyTarget::Gateway { namespace, name } => {
                *namespace == wp.namespace && *name == wp.gateway
            }
            PolicyTarget::Service { namespace, name } => {
                service.is_some_and(|s| s.namespace == *namespace && s.name == *name)
            }
        })
    })
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

/// The decision of the L7 policies bound to this waypoint or to `service`.
pub(crate) fn decide(
    wp: &Waypoint,
    l7: &crate::l7::L7Snapshot,
    service: Option<&Service>,
    attrs: &RequestAttrs<'_>,
) -> Decision {
    let applicable = l7.policies.values().filter(|p| {
        p.targets.iter().any(|t| match t {
            PolicyTarget::Gateway { namespace, name } => {
                *namespace == wp.namespace && *name == wp.gateway
            }
            PolicyTarget::Service { namespace, name } => {
                service.is_some_and(|s| s.namespace == *namespace && s.name == *name)
            }
        })
    });
    authz::evaluate(applicable.map(|p| &**p), attrs)
}

/// Where a request goes, before an endpoint is picked.
pub(crate) enum Dest {
    Service { key: String, port: u16 },
    Workload(Arc<Workload>, SocketAddr),
    None,
}

pub(crate) enum Pick {
    UnknownService(String),
    NoHealthy,
}

/// Round robin over the healthy endpoints of the destination.
pub(crate) fn pick_endpoint(
    wp: &Waypoint,
    snapshot: &Snapshot,
    dest: &Dest,
    version: Version,
) -> Result<(Endpoint, Arc<Workload>), Pick> {
    match dest {
        Dest::Workload(w, addr) => Ok((
            Endpoint {
                addr: *addr,
                identity: w.identity(),
                version,
            },
            w.clone(),
        )),
        Dest::None => Err(Pick::NoHealthy),
        Dest::Service { key, port } => {
            let service = snapshot
                .service(key)
                .ok_or_else(|| Pick::UnknownService(key.clone()))?;
            let endpoints: Vec<_> = snapshot
                .endpoints(key)
                .iter()
                .filter(|e| e.workload.healthy && !e.workload.addresses.is_empty())
                .collect();
            if endpoints.is_empty() {
                return Err(Pick::NoHealthy);
            }
            let i = match wp.balancer {
                Balancer::RoundRobin => wp.next_index(key) % endpoints.len(),
                Balancer::LeastRequest => {
                    let load = |i: usize| {
                        let ip = endpoints[i].workload.addresses[0];
                        wp.in_flight.load(ip)
                    };
                    let mut rng = rand::rng();
                    least_of_two(endpoints.len(), load, &mut rng)
                }
            };
            let e = endpoints[i];
            let target_port = e
                .port_map
                .get(port)
                .copied()
                .filter(|p| *p != 0)
                .or_else(|| {
                    service
                        .port(*port)
                        .map(|p| p.target_port)
                        .filter(|p| *p != 0)
                })
                .unwrap_or(*port);
            // A port declared HTTP/2 or gRPC is spoken to in HTTP/2 whatever the client used;
            // otherwise the client's version goes through (Istio's protocol selection).
            let version = match service.port(*port).map(|p| p.app_protocol) {
                Some(AppProtocol::Http2 | AppProtocol::Grpc) => Version::Http2,
                _ => version,
            };
            Ok((
                Endpoint {
                    addr: SocketAddr::new(e.workload.addresses[0], target_port),
                    identity: e.workload.identity(),
                    version,
                },
                e.workload.clone(),
            ))
        }
    }
}

/// The request as it goes upstream: hop-by-hop headers dropped (kept for an upgrade), the URI
/// in the form the upstream version needs, the body streamed and counted.
fn upstream_request<B>(
    req: Request<B>,
    authority: &str,
    version: Version,
    upgrade: bool,
    count: Arc<std::sync::atomic::AtomicU64>,
) -> Request<UpBody>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::upstream::BoxError>,
{
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
    Request::from_parts(parts, Counted::new(body, count).map_err(Into::into).boxed())
}

/// A response the waypoint makes itself.
fn local_reply(
    mut record: Record,
    status: StatusCode,
    text: &'static str,
    flags: &'static str,
) -> Response<RespBody> {
    record.flags = flags;
    record.responding(status.as_u16());
    let mut resp = Response::new(body::text(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.map(|b| Finishing::new(b, record).boxed())
}
