//! Rendering of the traffic-management parts of `ServiceRoutes`: retries, faults and the
//! destination policy (DestinationRule), in the same style as the rest of [`super`].

use amesh_proto::amesh::l7::v1 as l7;
use serde_yaml::Value;

use super::{duration, Obj};

/// A route's retry policy.
pub(super) fn retry(r: &l7::RetryPolicy) -> Value {
    let mut m = Obj::default();
    // Always shown: the number is the point of the policy.
    m.val("attempts", Value::from(r.attempts));
    m.opt("perTryTimeout", r.per_try_timeout.as_ref().map(duration));
    m.list(
        "retryOn",
        r.retry_on.iter().map(|s| Value::from(s.as_str())).collect(),
    );
    m.list(
        "retriableStatusCodes",
        r.retriable_status_codes
            .iter()
            .map(|c| Value::from(*c))
            .collect(),
    );
    m.opt("backoffBase", r.backoff_base.as_ref().map(duration));
    m.flag("otherHost", r.other_host);
    m.done()
}

/// A route's fault injection.
pub(super) fn fault(f: &l7::FaultInjection) -> Value {
    let mut m = Obj::default();
    if let Some(d) = &f.delay {
        let mut dm = Obj::default();
        dm.opt("fixedDelay", d.fixed_delay.as_ref().map(duration));
        dm.val("percent", Value::from(d.percent));
        m.val("delay", dm.done());
    }
    if let Some(a) = &f.abort {
        let mut am = Obj::default();
        am.num("httpStatus", a.http_status);
        am.num("grpcStatus", a.grpc_status);
        am.val("percent", Value::from(a.percent));
        m.val("abort", am.done());
    }
    m.done()
}

/// A service's destination policy.
pub(super) fn destination(d: &l7::DestinationPolicy) -> Value {
    let mut m = Obj::default();
    m.str("source", &d.source);
    m.opt(
        "trafficPolicy",
        d.traffic_policy.as_ref().map(traffic_policy),
    );
    m.list(
        "subsets",
        d.subsets
            .iter()
            .map(|s| {
                let mut sm = Obj::default();
                sm.str("name", &s.name);
                // Always shown: no member means requests to the subset find no endpoint.
                sm.val(
                    "workloadUids",
                    Value::Sequence(
                        s.workload_uids
                            .iter()
                            .map(|u| Value::from(u.as_str()))
                            .collect(),
                    ),
                );
                sm.opt(
                    "trafficPolicy",
                    s.traffic_policy.as_ref().map(traffic_policy),
                );
                sm.done()
            })
            .collect(),
    );
    m.done()
}

fn traffic_policy(p: &l7::TrafficPolicy) -> Value {
    let mut m = Obj::default();
    parts(
        &mut m,
        p.load_balancer.as_ref(),
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
    );
    m.list(
        "portPolicies",
        p.port_policies
            .iter()
            .map(|pp| {
                let mut pm = Obj::default();
                pm.num("port", pp.port);
                parts(
                    &mut pm,
                    pp.load_balancer.as_ref(),
                    pp.connection_pool.as_ref(),
                    pp.outlier_detection.as_ref(),
                );
                pm.done()
            })
            .collect(),
    );
    m.done()
}

fn parts(
    m: &mut Obj,
    lb: Option<&l7::LoadBalancer>,
    pool: Option<&l7::ConnectionPool>,
    outlier: Option<&l7::OutlierDetection>,
) {
    m.opt("loadBalancer", lb.map(load_balancer));
    m.opt(
        "connectionPool",
        pool.map(|c| {
            let mut cm = Obj::default();
            cm.num("maxConnections", c.max_connections);
            cm.num("http1MaxPendingRequests", c.http1_max_pending_requests);
            cm.num("http2MaxRequests", c.http2_max_requests);
            cm.num("maxRequestsPerConnection", c.max_requests_per_connection);
            cm.num("maxRetries", c.max_retries);
            cm.opt("connectTimeout", c.connect_timeout.as_ref().map(duration));
            cm.opt("idleTimeout", c.idle_timeout.as_ref().map(duration));
            cm.done()
        }),
    );
    m.opt(
        "outlierDetection",
        outlier.map(|o| {
            let mut om = Obj::default();
            // Always shown: 0 turns the check off, which is worth seeing.
            om.val(
                "consecutive5xxErrors",
                Value::from(o.consecutive_5xx_errors),
            );
            om.val(
                "consecutiveGatewayErrors",
                Value::from(o.consecutive_gateway_errors),
            );
            om.opt("interval", o.interval.as_ref().map(duration));
            om.opt(
                "baseEjectionTime",
                o.base_ejection_time.as_ref().map(duration),
            );
            om.val("maxEjectionPercent", Value::from(o.max_ejection_percent));
            om.done()
        }),
    );
}

fn load_balancer(lb: &l7::LoadBalancer) -> Value {
    let mut m = Obj::default();
    m.enumeration("simple", lb.simple, |v| {
        l7::load_balancer::Simple::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    if let Some(h) = &lb.consistent_hash {
        use l7::consistent_hash::Key;
        let mut hm = Obj::default();
        match &h.key {
            Some(Key::HttpHeaderName(n)) => hm.str("httpHeaderName", n),
            Some(Key::HttpCookie(c)) => {
                let mut cm = Obj::default();
                cm.str("name", &c.name);
                cm.str("path", &c.path);
                cm.opt("ttl", c.ttl.as_ref().map(duration));
                hm.val("httpCookie", cm.done());
            }
            Some(Key::UseSourceIp(b)) => hm.val("useSourceIp", Value::from(*b)),
            Some(Key::HttpQueryParameterName(n)) => hm.str("httpQueryParameterName", n),
            None => {}
        }
        m.val("consistentHash", hm.done());
    }
    m.done()
}
