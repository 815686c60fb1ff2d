//! The parts of a VirtualService http route that convert on their own: match conditions,
//! header operations, retries and faults.

use std::collections::BTreeMap;

use amesh_proto::amesh::l7::v1::{
    fault_injection, filter, path_match, FaultInjection, Filter, Header, HeaderMatch,
    HeaderModifier, PathMatch, QueryParamMatch, RetryPolicy, RouteMatch,
};

use super::report;
use crate::manifests::networking::{
    grpc_status_code, parse_istio_duration, VsHeaderOperations, VsHeaders, VsHttpMatch,
    VsHttpRoute, VsPercent, VsRetries, VsStringMatch,
};
use crate::warnings::Warnings;

/// Istio's default `retryOn` (with status 503 under `retriable-status-codes`).
pub(super) const DEFAULT_RETRY_ON: [&str; 5] = [
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
];

/// Envoy's default base interval between retries.
pub(super) const BACKOFF_BASE: prost_types::Duration = prost_types::Duration {
    seconds: 0,
    nanos: 25_000_000,
};

pub(super) fn percent(p: &Option<VsPercent>) -> f64 {
    p.as_ref().map_or(100.0, |p| p.value)
}

pub(super) fn to_proto(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(super) fn retry_policy(
    r: Option<&VsRetries>,
    what: &str,
    at: &str,
    warnings: &mut Warnings,
) -> Option<RetryPolicy> {
    let default = RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: DEFAULT_RETRY_ON.iter().map(|s| (*s).to_owned()).collect(),
        retriable_status_codes: vec![503],
        backoff_base: Some(BACKOFF_BASE),
        other_host: true,
    };
    let Some(r) = r else {
        return Some(default);
    };
    report(what, &format!("{at}.retries"), &r.other, warnings);
    let attempts = u32::try_from(r.attempts.unwrap_or(0)).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    let mut out = RetryPolicy {
        attempts,
        ..default
    };
    if let Some(text) = r.retry_on.as_deref().filter(|t| !t.trim().is_empty()) {
        let (codes, conditions): (Vec<&str>, Vec<&str>) = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .partition(|s| s.bytes().all(|b| b.is_ascii_digit()));
        out.retry_on = conditions.into_iter().map(str::to_owned).collect();
        out.retriable_status_codes = codes.iter().filter_map(|c| c.parse().ok()).collect();
        if !out.retriable_status_codes.is_empty()
            && !out.retry_on.iter().any(|c| c == "retriable-status-codes")
        {
            out.retry_on.push("retriable-status-codes".to_owned());
        }
    }
    out.per_try_timeout = r
        .per_try_timeout
        .as_deref()
        .and_then(|t| parse_istio_duration(t).ok())
        .filter(|d| !d.is_zero())
        .map(to_proto);
    Some(out)
}

pub(super) fn fault(
    http: &VsHttpRoute,
    what: &str,
    at: &str,
    warnings: &mut Warnings,
) -> Option<FaultInjection> {
    let f = http.fault.as_ref()?;
    let at = format!("{at}.fault");
    report(what, &at, &f.other, warnings);
    let delay = f.delay.as_ref().and_then(|d| {
        report(what, &format!("{at}.delay"), &d.other, warnings);
        let fixed = d.fixed_delay.as_deref()?;
        Some(fault_injection::Delay {
            fixed_delay: parse_istio_duration(fixed).ok().map(to_proto),
            percent: percent(&d.percentage),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        report(what, &format!("{at}.abort"), &a.other, warnings);
        let grpc_status = a
            .grpc_status
            .as_ref()
            .and_then(grpc_status_code)
            .unwrap_or(0);
        let http_status = a.http_status.unwrap_or(0);
        if grpc_status == 0 && http_status == 0 {
            warnings.push(format!(
                "{what}: {at}.abort: neither httpStatus nor a non-OK grpcStatus; abort ignored"
            ));
            return None;
        }
        Some(fault_injection::Abort {
            http_status,
            grpc_status,
            percent: percent(&a.percentage),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(FaultInjection { delay, abort })
}

pub(super) fn header_filters(
    what: &str,
    at: &str,
    h: &VsHeaders,
    warnings: &mut Warnings,
) -> Vec<Filter> {
    report(what, at, &h.other, warnings);
    let mut out = Vec::new();
    if let Some(req) = &h.request {
        let m = modifier(what, &format!("{at}.request"), req, warnings);
        out.push(filter::Kind::RequestHeaderModifier(m));
    }
    if let Some(resp) = &h.response {
        let m = modifier(what, &format!("{at}.response"), resp, warnings);
        out.push(filter::Kind::ResponseHeaderModifier(m));
    }
    out.into_iter().map(|k| Filter { kind: Some(k) }).collect()
}

pub(super) fn modifier(
    what: &str,
    at: &str,
    h: &VsHeaderOperations,
    warnings: &mut Warnings,
) -> HeaderModifier {
    report(what, at, &h.other, warnings);
    let pairs = |map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(name, value)| Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    };
    HeaderModifier {
        set: pairs(&h.set),
        add: pairs(&h.add),
        remove: h.remove.clone(),
    }
}

/// A match entry → RouteMatch; `None` (reported) when it holds a condition amesh cannot
/// evaluate, so that it never matches rather than matching too much.
pub(super) fn route_match(
    what: &str,
    at: &str,
    m: &VsHttpMatch,
    warnings: &mut Warnings,
) -> Option<RouteMatch> {
    let unusable = |warnings: &mut Warnings, field: &str| {
        warnings.push(format!(
            "{what}: {at}.{field}: not supported by amesh waypoints; this match is left out \
             (it never matches)"
        ));
    };
    let mut usable = true;
    for field in m.other.keys() {
        unusable(warnings, field);
        usable = false;
    }
    let mut out = RouteMatch::default();
    if let Some(uri) = &m.uri {
        match string_value(uri) {
            // Case-insensitive: as a regular expression (the waypoint matches regexes against
            // the whole path).
            Some((kind, value)) if m.ignore_uri_case == Some(true) => {
                let re = match kind {
                    path_match::Kind::Exact => regex_escape(&value),
                    path_match::Kind::PathPrefix => format!("{}.*", regex_escape(&value)),
                    path_match::Kind::RegularExpression => format!("(?:{value})"),
                };
                out.path = Some(PathMatch {
                    kind: path_match::Kind::RegularExpression as i32,
                    value: format!("(?i){re}"),
                })
            }
            Some((kind, value)) => {
                out.path = Some(PathMatch {
                    kind: kind as i32,
                    value,
                })
            }
            None => {
                unusable(warnings, "uri");
                usable = false;
            }
        }
    }
    if let Some(method) = &m.method {
        match (&method.exact, method.other.is_empty()) {
            (Some(exact), true) => out.method = exact.to_ascii_uppercase(),
            _ => {
                unusable(warnings, "method (only exact)");
                usable = false;
            }
        }
    }
    for (name, sm) in &m.headers {
        let present = sm.exact.is_none() && sm.prefix.is_none() && sm.regex.is_none();
        // Istio: a header match with no value means "the header is present".
        let matched = if present && sm.other.is_empty() {
            Some((".*".to_owned(), true))
        } else {
            value_match(sm)
        };
        match matched {
            Some((value, regex)) => out.headers.push(HeaderMatch {
                name: name.to_ascii_lowercase(),
                value,
                regex,
            }),
            None => {
                unusable(warnings, &format!("headers.{name}"));
                usable = false;
            }
        }
    }
    for (name, sm) in &m.query_params {
        match value_match(sm) {
            Some((value, regex)) => out.query_params.push(QueryParamMatch {
                name: name.clone(),
                value,
                regex,
            }),
            None => {
                unusable(warnings, &format!("queryParams.{name}"));
                usable = false;
            }
        }
    }
    usable.then_some(out)
}

fn string_value(m: &VsStringMatch) -> Option<(path_match::Kind, String)> {
    if !m.other.is_empty() {
        return None;
    }
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), None, None) => Some((path_match::Kind::Exact, v.clone())),
        (None, Some(v), None) => Some((path_match::Kind::PathPrefix, v.clone())),
        (None, None, Some(v)) => Some((path_match::Kind::RegularExpression, v.clone())),
        _ => None,
    }
}

/// A header or query value match: (value, is a regex). A prefix becomes a regex.
fn value_match(m: &VsStringMatch) -> Option<(String, bool)> {
    let (kind, value) = string_value(m)?;
    Some(match kind {
        path_match::Kind::Exact => (value, false),
        path_match::Kind::PathPrefix => (format!("{}.*", regex_escape(&value)), true),
        path_match::Kind::RegularExpression => (value, true),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policies() {
        let mut w = Warnings::default();
        let default = retry_policy(None, "vs", "spec.http[0]", &mut w).expect("default");
        assert_eq!(default.attempts, 2);
        assert_eq!(default.retriable_status_codes, vec![503]);
        assert_eq!(default.retry_on, DEFAULT_RETRY_ON);
        assert!(default.other_host);

        let off = VsRetries {
            attempts: Some(0),
            ..VsRetries::default()
        };
        assert_eq!(retry_policy(Some(&off), "vs", "x", &mut w), None);

        let custom = VsRetries {
            attempts: Some(3),
            per_try_timeout: Some("2s".into()),
            retry_on: Some("gateway-error, 409,connect-failure".into()),
            ..VsRetries::default()
        };
        let p = retry_policy(Some(&custom), "vs", "x", &mut w).expect("policy");
        assert_eq!(p.attempts, 3);
        assert_eq!(
            p.retry_on,
            ["gateway-error", "connect-failure", "retriable-status-codes"]
        );
        assert_eq!(p.retriable_status_codes, vec![409]);
        assert_eq!(p.per_try_timeout.map(|d| d.seconds), Some(2));
        assert_eq!(p.backoff_base, Some(BACKOFF_BASE));
    }

    #[test]
    fn header_prefix_becomes_regex() {
        let m = VsStringMatch {
            prefix: Some("a.b".into()),
            ..VsStringMatch::default()
        };
        assert_eq!(value_match(&m), Some(("a\\.b.*".into(), true)));
        let both = VsStringMatch {
            exact: Some("a".into()),
            regex: Some("b".into()),
            ..VsStringMatch::default()
        };
        assert_eq!(value_match(&both), None);
    }
}
