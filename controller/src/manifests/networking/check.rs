//! Checks of VirtualService and DestinationRule values that Istio's webhook would refuse: a
//! malformed duration or percentage rejects the object (naming the field), so translation
//! only sees values it can use.

use std::time::Duration;

use serde_json::Value;

use super::{
    DestinationRuleSpec, DrConnectionPool, DrLoadBalancer, DrOutlierDetection, DrTrafficPolicy,
    PortSelector, VirtualServiceSpec, VsPercent, VsStringMatch,
};
use crate::manifests::validate::FieldError;

/// An Istio (protobuf JSON / Go) duration: `10s`, `1.5s`, `500ms`, `1m30s`, `2h`; units `h`,
/// `m`, `s`, `ms`, `us` (`µs`), `ns`. Negative durations are refused.
pub fn parse_istio_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("{text:?} is not a duration ({why}; e.g. 10s, 1.5s, 500ms)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..len]
            .parse()
            .map_err(|_| bad("each part is a number and a unit"))?;
        rest = &rest[len..];
        let units: [(&str, f64); 7] = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("h", 3600.0),
            ("m", 60.0),
            ("s", 1.0),
        ];
        let Some((unit, scale)) = units.iter().find(|(u, _)| rest.starts_with(u)) else {
            return Err(bad("a unit h, m, s, ms, us or ns must follow each number"));
        };
        rest = &rest[unit.len()..];
        total += number * scale;
    }
    // Ten years: beyond it a value is a typo, and the conversion below stays exact enough.
    if !(0.0..=315_360_000.0).contains(&total) {
        return Err(bad("out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// gRPC status names (Istio's `grpcStatus`) by code.
const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code of a `grpcStatus`, written as a name (`UNAVAILABLE`) or a number (`14`).
pub fn grpc_status_code(v: &Value) -> Option<u32> {
    let code = match v {
        Value::Number(n) => u32::try_from(n.as_u64()?).ok()?,
        Value::String(s) => match s.trim().parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let name = s.trim().to_ascii_uppercase();
                let i = GRPC_STATUS.iter().position(|g| *g == name)?;
                u32::try_from(i).ok()?
            }
        },
        _ => return None,
    };
    (code < 17).then_some(code)
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

fn duration(at: &str, text: &Option<String>) -> Result<(), FieldError> {
    match text {
        Some(t) => parse_istio_duration(t).map(|_| ()).map_err(|e| err(at, e)),
        None => Ok(()),
    }
}

fn percent(at: &str, p: &Option<VsPercent>) -> Result<(), FieldError> {
    match p {
        Some(p) if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() => Err(err(
            format!("{at}.value"),
            format!("{} is not a percentage (0 to 100)", p.value),
        )),
        _ => Ok(()),
    }
}

fn non_negative(at: &str, v: Option<i64>, max: i64) -> Result<(), FieldError> {
    match v {
        Some(n) if !(0..=max).contains(&n) => {
            Err(err(at, format!("{n} is out of range (0 to {max})")))
        }
        _ => Ok(()),
    }
}

/// `empty_ok`: a header match may set none (Istio: the header is present).
fn string_match(at: &str, m: &VsStringMatch, empty_ok: bool) -> Result<(), FieldError> {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if !(set == 1 || set == 0 && empty_ok) && m.other.is_empty() {
        return Err(err(
            at,
            "exactly one of exact, prefix and regex is required",
        ));
    }
    Ok(())
}

/// The checks Istio's webhook makes on the VirtualService fields amesh reads.
pub fn validate_virtual_service(spec: &VirtualServiceSpec) -> Result<(), FieldError> {
    if spec.hosts.is_empty() {
        return Err(err("spec.hosts", "at least one host is required"));
    }
    for (i, http) in spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        for (j, m) in http.matches.iter().enumerate() {
            let at = format!("{at}.match[{j}]");
            for (name, sm) in [("uri", &m.uri), ("method", &m.method)] {
                if let Some(sm) = sm {
                    string_match(&format!("{at}.{name}"), sm, false)?;
                }
            }
            for (field, map, empty_ok) in [
                ("headers", &m.headers, true),
                ("queryParams", &m.query_params, false),
            ] {
                for (name, sm) in map {
                    string_match(&format!("{at}.{field}.{name}"), sm, empty_ok)?;
                }
            }
            if let Some(p) = m.port {
                if !(1..=65535).contains(&p) {
                    return Err(err(format!("{at}.port"), format!("{p} is not a port")));
                }
            }
        }
        if http.redirect.is_some() && !http.route.is_empty() {
            return Err(err(
                format!("{at}.redirect"),
                "a route cannot have both redirect and route",
            ));
        }
        for (j, r) in http.route.iter().enumerate() {
            let at = format!("{at}.route[{j}]");
            if r.destination.host.trim().is_empty() {
                return Err(err(format!("{at}.destination.host"), "required"));
            }
            non_negative(&format!("{at}.weight"), r.weight, i64::from(u32::MAX))?;
        }
        duration(&format!("{at}.timeout"), &http.timeout)?;
        if let Some(r) = &http.retries {
            non_negative(&format!("{at}.retries.attempts"), r.attempts, 1_000_000)?;
            duration(&format!("{at}.retries.perTryTimeout"), &r.per_try_timeout)?;
        }
        if let Some(f) = &http.fault {
            if let Some(d) = &f.delay {
                duration(&format!("{at}.fault.delay.fixedDelay"), &d.fixed_delay)?;
                percent(&format!("{at}.fault.delay.percentage"), &d.percentage)?;
            }
            if let Some(a) = &f.abort {
                percent(&format!("{at}.fault.abort.percentage"), &a.percentage)?;
                if let Some(g) = &a.grpc_status {
                    if grpc_status_code(g).is_none() {
                        return Err(err(
                            format!("{at}.fault.abort.grpcStatus"),
                            format!(
                                "{g} is not a gRPC status (a name such as UNAVAILABLE, or 0-16)"
                            ),
                        ));
                    }
                }
                if let Some(s) = a.http_status {
                    if !(200..=599).contains(&s) {
                        return Err(err(
                            format!("{at}.fault.abort.httpStatus"),
                            format!("{s} is not an HTTP status (200 to 599)"),
                        ));
                    }
                }
            }
        }
        percent(&format!("{at}.mirrorPercentage"), &http.mirror_percentage)?;
        for (j, m) in http.mirrors.iter().enumerate() {
            percent(&format!("{at}.mirrors[{j}].percentage"), &m.percentage)?;
        }
    }
    Ok(())
}

fn traffic_policy(at: &str, p: &DrTrafficPolicy) -> Result<(), FieldError> {
    parts(
        at,
        &p.load_balancer,
        &p.connection_pool,
        &p.outlier_detection,
    )?;
    for (i, port) in p.port_level_settings.iter().enumerate() {
        let at = format!("{at}.portLevelSettings[{i}]");
        match &port.port {
            Some(PortSelector { number: 1..=65535 }) => {}
            _ => {
                return Err(err(
                    format!("{at}.port.number"),
                    "a port (1-65535) is required",
                ))
            }
        }
        parts(
            &at,
            &port.load_balancer,
            &port.connection_pool,
            &port.outlier_detection,
        )?;
    }
    Ok(())
}

fn parts(
    at: &str,
    lb: &Option<DrLoadBalancer>,
    pool: &Option<DrConnectionPool>,
    outlier: &Option<DrOutlierDetection>,
) -> Result<(), FieldError> {
    if let Some(lb) = lb {
        if let Some(s) = &lb.simple {
            const KNOWN: [&str; 6] = [
                "UNSPECIFIED",
                "ROUND_ROBIN",
                "LEAST_REQUEST",
                "LEAST_CONN",
                "RANDOM",
                "PASSTHROUGH",
            ];
            if !KNOWN.contains(&s.as_str()) {
                return Err(err(
                    format!("{at}.loadBalancer.simple"),
                    format!("{s:?} is not one of {}", KNOWN.join(", ")),
                ));
            }
        }
        if let Some(h) = &lb.consistent_hash {
            let keys = [
                h.http_header_name.is_some(),
                h.http_cookie.is_some(),
                h.use_source_ip.is_some(),
                h.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                return Err(err(
                    format!("{at}.loadBalancer.consistentHash"),
                    "exactly one of httpHeaderName, httpCookie, useSourceIp and \
                     httpQueryParameterName is required",
                ));
            }
            if let Some(c) = &h.http_cookie {
                if c.name.is_empty() {
                    return Err(err(
                        format!("{at}.loadBalancer.consistentHash.httpCookie.name"),
                        "required",
                    ));
                }
                let at = format!("{at}.loadBalancer.consistentHash.httpCookie.ttl");
                duration(&at, &c.ttl)?;
            }
            if lb.simple.is_some() {
                return Err(err(
                    format!("{at}.loadBalancer"),
                    "simple and consistentHash are mutually exclusive",
                ));
            }
        }
    }
    if let Some(pool) = pool {
        let at = format!("{at}.connectionPool");
        let max = i64::from(u32::MAX);
        if let Some(t) = &pool.tcp {
            non_negative(&format!("{at}.tcp.maxConnections"), t.max_connections, max)?;
            duration(&format!("{at}.tcp.connectTimeout"), &t.connect_timeout)?;
        }
        if let Some(h) = &pool.http {
            for (name, v) in [
                ("http1MaxPendingRequests", h.http1_max_pending_requests),
                ("http2MaxRequests", h.http2_max_requests),
                ("maxRequestsPerConnection", h.max_requests_per_connection),
                ("maxRetries", h.max_retries),
            ] {
                non_negative(&format!("{at}.http.{name}"), v, max)?;
            }
            duration(&format!("{at}.http.idleTimeout"), &h.idle_timeout)?;
        }
    }
    if let Some(o) = outlier {
        let at = format!("{at}.outlierDetection");
        let max = i64::from(u32::MAX);
        non_negative(
            &format!("{at}.consecutive5xxErrors"),
            o.consecutive_5xx_errors,
            max,
        )?;
        non_negative(
            &format!("{at}.consecutiveGatewayErrors"),
            o.consecutive_gateway_errors,
            max,
        )?;
        non_negative(
            &format!("{at}.maxEjectionPercent"),
            o.max_ejection_percent,
            100,
        )?;
        duration(&format!("{at}.interval"), &o.interval)?;
        duration(&format!("{at}.baseEjectionTime"), &o.base_ejection_time)?;
    }
    Ok(())
}

/// The checks Istio's webhook makes on the DestinationRule fields amesh reads.
pub fn validate_destination_rule(spec: &DestinationRuleSpec) -> Result<(), FieldError> {
    if spec.host.trim().is_empty() {
        return Err(err("spec.host", "required"));
    }
    if let Some(p) = &spec.traffic_policy {
        traffic_policy("spec.trafficPolicy", p)?;
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            return Err(err(format!("{at}.name"), "required"));
        }
        if !names.insert(s.name.as_str()) {
            return Err(err(
                format!("{at}.name"),
                format!("subset {:?} is defined twice", s.name),
            ));
        }
        if let Some(p) = &s.traffic_policy {
            traffic_policy(&format!("{at}.trafficPolicy"), p)?;
        }
    }
    Ok(())
}
