//! The forward phase of one request: the destination's policy (DestinationRule subset, load
//! balancer, circuit breakers, outlier detection), then attempts at endpoints with the route's
//! retry policy and timeouts, until an answer goes to the client. Envoy's router semantics:
//! the route timeout bounds everything (504 `UT`), a per-try timeout bounds each attempt, a
//! retriable failure is retried after a jittered backoff while attempts, the retry budget
//! (`maxRetries`) and a replayable body allow, and a retriable failure left when the attempts
//! are used up is answered as it is, flagged `URX`.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::balance::{self, pick_endpoint, Choice, Dest, Pick};
use crate::body::{self, Counted, Finishing, RespBody};
use crate::breaker::{Held, Overflow};
use crate::cluster::Cluster;
use crate::l7::routes::{HeaderModifier, Route};
use crate::metrics::RetryLabels;
use crate::mirror;
use crate::outlier::Report;
use crate::pipeline::upstream_request;
use crate::policy::{DestinationPolicy, Effective, LoadBalancer};
use crate::record::Record;
use crate::replay::{clone_head, Replay};
use crate::retry::{backoff, Outcome, RetryPolicy, MAX_REPLAY_BODY};
use crate::upstream::{SendOptions, UpBody, UpstreamError, Version};
use crate::Waypoint;

/// Envoy's body of a request refused by a circuit breaker.
pub const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

/// Everything the forward phase needs from the earlier phases.
pub(crate) struct Forward<'a> {
    pub wp: &'a Arc<Waypoint>,
    pub route: Option<&'a Route>,
    pub dest: Dest,
    /// The backend's DestinationRule subset.
    pub subset: Option<Arc<str>>,
    /// The destination service's DestinationRule.
    pub policy: Option<Arc<DestinationPolicy>>,
    pub authority: &'a str,
    pub source_ip: IpAddr,
    pub response_filters: Vec<HeaderModifier>,
    pub mirrors: Vec<mirror::Plan>,
}

/// Forwards the request and makes the client's response.
pub(crate) async fn forward(
    f: Forward<'_>,
    mut record: Record,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let wp = f.wp;
    let version = if req.version() == http::Version::HTTP_2 {
        Version::Http2
    } else {
        Version::Http1
    };
    let port = match &f.dest {
        Dest::Service { port, .. } => *port,
        _ => 0,
    };

    // The destination's policy: its subset's (or its own) merged for the port.
    let level = match (&f.policy, f.subset.as_deref()) {
        (Some(p), subset) => match p.level(subset) {
            Some(l) => Some(l),
            None => {
                debug!(subset = ?f.subset, policy = %p.source, "unknown subset");
                return local_reply(
                    record,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream",
                    "UH",
                );
            }
        },
        // A subset without a DestinationRule to define it has no endpoints.
        (None, Some(subset)) => {
            debug!(subset, "subset of a service without a DestinationRule");
            return local_reply(
                record,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                "UH",
            );
        }
        (None, None) => None,
    };
    let effective: Option<&Effective> = level.map(|(l, _)| l.for_port(port));
    let cluster: Option<Arc<Cluster>> = match (level, effective) {
        (Some((l, _)), Some(e)) if e.stateful() => {
            Some(wp.clusters.get(&l.cluster, port, &wp.metrics))
        }
        _ => None,
    };
    let pool = effective.and_then(|e| e.pool);
    let limits = pool.filter(|p| p.any());
    let send_opts = SendOptions {
        max_requests_per_connection: pool.map_or(0, |p| p.max_requests_per_connection),
        connect_timeout: pool.and_then(|p| p.connect_timeout),
    };
    let outlier_cfg = effective.and_then(|e| e.outlier);

    if let (Some(c), Some(l)) = (&cluster, &limits) {
        match c.breaker.request(l) {
            Ok(held) => record.admission = Some(held),
            Err(o) => return overflow(record, Some(c), wp, o),
        }
    }

    // The hash key, and the cookie to issue when the request had none.
    let lb = effective.and_then(|e| e.load_balancer.as_ref());
    let (hash, set_cookie) = match lb {
        Some(LoadBalancer::Hash(on)) => {
            balance::hash_key(on, req.headers(), req.uri().query(), f.source_ip)
        }
        _ => (None, None),
    };

    // Timeouts: the route's bounds the whole exchange; each attempt also by the per-try one.
    let retry: Option<&RetryPolicy> = f
        .route
        .and_then(|r| r.retry.as_ref())
        .filter(|r| r.attempts > 0);
    let per_try = match (
        retry.and_then(|r| r.per_try_timeout),
        f.route.and_then(|r| r.backend_timeout),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let deadline = f
        .route
        .and_then(|r| r.request_timeout)
        .map(|t| Instant::now() + t);

    let upgrade = version == Version::Http1 && req.headers().contains_key(header::UPGRADE);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut mirrors = f.mirrors;
    // An upgraded connection is not a request body: it is never mirrored.
    if upgrade {
        mirrors.clear();
    }
    let (parts, body) = req.into_parts();
    // A request without a body (most GETs) is replayed by sending its head again: no copy of
    // the body is kept for it.
    let bodiless = hyper::body::Body::is_end_stream(&body);
    let retryable = retry.is_some() && !upgrade;
    let body = Counted::new(
        mirror::start(wp, mirrors, body),
        record.request_bytes.clone(),
    );
    // Only a request that may be retried has its body kept (up to MAX_REPLAY_BODY), as it
    // streams to the first attempt.
    let body = body.map_err(Into::into).boxed();
    let (replay, mut once) = if retryable && !bodiless {
        (Some(Replay::new(body, MAX_REPLAY_BODY)), None)
    } else {
        (None, Some(body))
    };
    let mut head = Some(Request::from_parts(parts, ()));

    let mut tried: Vec<IpAddr> = Vec::new();
    let mut retries_done = 0u32;
    let mut _retry_held: Option<Held> = None;
    let snapshot = wp.state.snapshot();
    let dest_label = || match &f.dest {
        Dest::Service { key, .. } => key
            .split_once('/')
            .map_or(key.as_str(), |(_, h)| h)
            .to_string(),
        _ => "unknown".to_string(),
    };
    loop {
        let choice = Choice {
            lb,
            subset: level.and_then(|(_, s)| s),
            outlier: cluster
                .as_deref()
                .filter(|_| outlier_cfg.is_some())
                .map(|c| &c.outlier),
            hash,
            exclude: if retry.is_some_and(|r| r.other_host) {
                &tried
            } else {
                &[]
            },
            rr_key: level.map(|(l, _)| &*l.cluster),
        };
        let (endpoint, workload) = match pick_endpoint(wp, &snapshot, &f.dest, version, &choice) {
            Ok(x) => x,
            Err(Pick::UnknownService(key)) => {
                warn!(service = %key, "route backend is not a known service");
                return local_reply(
                    record,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "backend service not found\n",
                    "-",
                );
            }
            Err(Pick::NoHealthy) => {
                return local_reply(
                    record,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream",
                    "UH",
                )
            }
        };
        // Outlier detection's bound on ejections needs the cluster's size, counted only when
        // an attempt failed (the common success costs nothing).
        let subset = choice.subset;
        let total_endpoints = || {
            snapshot
                .endpoints(match &f.dest {
                    Dest::Service { key, .. } => key,
                    _ => "",
                })
                .iter()
                .filter(|e| subset.is_none_or(|s| s.uids.contains(e.workload.uid.as_str())))
                .count()
        };
        let ip = endpoint.addr.ip();
        record.destination = Some(workload);
        record.upstream = Some(endpoint.addr);
        record.in_flight = Some(wp.in_flight.start(ip));

        let body = match (&replay, once.take()) {
            (Some(r), _) => r.attempt().boxed(),
            (None, Some(b)) => b,
            (None, None) => body::empty().map_err(Into::into).boxed(),
        };
        let up_version = if upgrade {
            Version::Http1
        } else {
            endpoint.version
        };
        // Only a replayable request is sent more than once: the others move their head.
        let attempt_head = match (retryable, head.take()) {
            (true, Some(h)) => {
                let copy = clone_head(&h);
                head = Some(h);
                copy
            }
            (_, Some(h)) => h,
            // Cannot happen: only a replayable request is retried. Answered, never a panic.
            (_, None) => {
                return local_reply(
                    record,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "request cannot be replayed",
                    "-",
                )
            }
        };
        let up_req = upstream_request(
            attempt_head.map(|()| body),
            f.authority,
            up_version,
            upgrade,
        );
        let attempt = async {
            // An HTTP/1.1 connection carries one request: under maxConnections, wait for one.
            let conn = match (&cluster, &limits) {
                (Some(c), Some(l)) if up_version == Version::Http1 && l.max_connections > 0 => {
                    Some(
                        c.breaker
                            .connection(l)
                            .await
                            .map_err(AttemptError::Overflow)?,
                    )
                }
                _ => None,
            };
            let sent = match per_try {
                Some(t) => {
                    tokio::time::timeout(t, send(wp, &endpoint, up_req, upgrade, &send_opts))
                        .await
                        .map_err(|_| AttemptError::PerTryTimeout)?
                }
                None => send(wp, &endpoint, up_req, upgrade, &send_opts).await,
            };
            sent.map(|r| (r, conn)).map_err(AttemptError::Upstream)
        };
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    return local_reply(
                        record,
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                        "UT",
                    )
                }
            },
            None => attempt.await,
        };
        let outcome = match &result {
            Ok((resp, _)) => Outcome::Response {
                status: resp.status(),
                grpc: resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            },
            Err(AttemptError::Overflow(o)) => return overflow(record, cluster.as_deref(), wp, *o),
            Err(AttemptError::PerTryTimeout) => Outcome::PerTryTimeout,
            Err(AttemptError::Upstream(e)) => classify(e),
        };
        if let (Some(c), Some(cfg)) = (&cluster, &outlier_cfg) {
            let report = match outcome {
                Outcome::Response { status, .. } if status.as_u16() >= 500 => {
                    Report::Status(status.as_u16())
                }
                Outcome::Response { .. } => Report::Success,
                _ => Report::LocalFailure,
            };
            let total = if report == Report::Success {
                0
            } else {
                total_endpoints()
            };
            c.report(ip, report, cfg, total);
        }

        let reason = retry.and_then(|r| r.retriable(&outcome));
        let mut flags_extra = None;
        if let (Some(policy), Some(reason)) = (retry, reason) {
            let replayable = bodiless || replay.as_ref().is_some_and(Replay::replayable);
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if retries_done < policy.attempts && replayable && !expired {
                let budget = match (&cluster, &limits) {
                    (Some(c), Some(l)) => c.breaker.retry(l).map(Some),
                    _ => Ok(None),
                };
                match budget {
                    Ok(held) => {
                        retries_done += 1;
                        _retry_held = held;
                        wp.metrics
                            .retries
                            .get_or_create(&RetryLabels {
                                destination_service: dest_label(),
                                destination_subset: f.subset.as_deref().unwrap_or("").to_string(),
                                reason,
                            })
                            .inc();
                        debug!(reason, retry = retries_done, endpoint = %endpoint.addr, "retrying");
                        tried.push(ip);
                        // The failed attempt's response (and HTTP/1.1 connection) goes now.
                        drop(result);
                        let wait = backoff(policy.backoff_base, retries_done, &mut rand::rng());
                        match deadline {
                            Some(d) if Instant::now() + wait >= d => {
                                tokio::time::sleep_until(d).await;
                                return local_reply(
                                    record,
                                    StatusCode::GATEWAY_TIMEOUT,
                                    "upstream request timeout",
                                    "UT",
                                );
                            }
                            _ => tokio::time::sleep(wait).await,
                        }
                        continue;
                    }
                    Err(o) => {
                        // Envoy answers with what it has and flags the overflow.
                        if let Some(c) = &cluster {
                            c.count_overflow(&wp.metrics, o);
                        }
                        flags_extra = Some("UO");
                    }
                }
            } else if retries_done >= policy.attempts {
                wp.metrics
                    .retries
                    .get_or_create(&RetryLabels {
                        destination_service: dest_label(),
                        destination_subset: f.subset.as_deref().unwrap_or("").to_string(),
                        reason: "limit_exceeded",
                    })
                    .inc();
                flags_extra = Some("URX");
            }
        }

        // The answer.
        let (mut resp, conn) = match result {
            Ok(x) => x,
            Err(e) => {
                let (status, text, flag) = match &e {
                    AttemptError::PerTryTimeout => (
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                        "UT",
                    ),
                    AttemptError::Upstream(UpstreamError::Request { .. }) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers",
                        "UC",
                    ),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers",
                        "UF",
                    ),
                };
                debug!(error = %e, "upstream failed");
                if let Some(extra) = flags_extra {
                    record.add_flag(extra);
                }
                return local_reply(record, status, text, flag);
            }
        };
        record.connection = conn;
        if let Some(extra) = flags_extra {
            record.add_flag(extra);
        }
        if let (Some(down), true) = (
            downstream_upgrade,
            resp.status() == StatusCode::SWITCHING_PROTOCOLS,
        ) {
            splice_upgrade(down, hyper::upgrade::on(&mut resp));
        }
        for m in &f.response_filters {
            m.apply(resp.headers_mut());
        }
        if let Some(c) = set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        if let Some(status) = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
        {
            record.grpc_status = Some(status.to_string());
        }
        record.responding(resp.status().as_u16());
        return resp.map(|b| Finishing::new(b, record).boxed());
    }
}

/// After a 101, the client's and the endpoint's upgraded connections are copied both ways.
fn splice_upgrade(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
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

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("circuit breaker: {0:?}")]
    Overflow(Overflow),
    #[error("per-try timeout")]
    PerTryTimeout,
    #[error(transparent)]
    Upstream(UpstreamError),
}

/// What a failed attempt means for retries.
fn classify(e: &UpstreamError) -> Outcome {
    match e {
        UpstreamError::Connect { .. } | UpstreamError::Handshake { .. } => Outcome::ConnectFailure,
        UpstreamError::Request { source, .. } => Outcome::Reset {
            refused_stream: refused_stream(source),
        },
    }
}

/// Whether an HTTP/2 stream was refused (RFC 9113 §8.7: never processed, safe to retry).
/// hyper does not expose the h2 reason, so the cause chain's wording is read: h2 describes
/// REFUSED_STREAM as "refused stream before processing any application logic".
fn refused_stream(e: &hyper::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("refused stream") {
            return true;
        }
        cause = c.source();
    }
    false
}

async fn send(
    wp: &Waypoint,
    ep: &crate::upstream::Endpoint,
    req: Request<UpBody>,
    upgrade: bool,
    opts: &SendOptions,
) -> Result<Response<Incoming>, UpstreamError> {
    if upgrade {
        wp.upstream.send_upgrade(ep, req).await
    } else {
        wp.upstream.send_with(ep, req, opts).await
    }
}

/// 503 `UO`: a circuit breaker limit was reached.
fn overflow(
    record: Record,
    cluster: Option<&Cluster>,
    wp: &Waypoint,
    o: Overflow,
) -> Response<RespBody> {
    if let Some(c) = cluster {
        c.count_overflow(&wp.metrics, o);
    }
    local_reply(record, StatusCode::SERVICE_UNAVAILABLE, OVERFLOW_BODY, "UO")
}

/// A response the waypoint makes itself.
pub(crate) fn local_reply(
    mut record: Record,
    status: StatusCode,
    text: &'static str,
    flags: &'static str,
) -> Response<RespBody> {
    // Added to what is set already (a fault's `DI`, a retry's `URX`).
    record.add_flag(flags);
    record.responding(status.as_u16());
    let mut resp = Response::new(body::text(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.map(|b| Finishing::new(b, record).boxed())
}
