//! The echo app's settings from its container's environment, as a real app is configured
//! from its pod manifest (`env: [{name: ECHO_CALLS, value: ...}]`): next hops, a deterministic
//! share of failures, a delay, one static document. Every name is a constant here; parsing takes
//! a lookup function, so tests pass a map and the app passes `std::env::var`.

use std::time::Duration;

use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;

/// Comma-separated `http://host[:port][/path]` URLs called, in order, per request.
pub const CALLS: &str = "ECHO_CALLS";
/// Time limit of one next-hop call, in milliseconds (default [`DEFAULT_CALL_TIMEOUT`]).
pub const CALL_TIMEOUT_MS: &str = "ECHO_CALL_TIMEOUT_MS";
/// Whole percent (0..=100) of requests answered with [`FAIL_STATUS`]; deterministic.
pub const FAIL_PERCENT: &str = "ECHO_FAIL_PERCENT";
/// The status of a failed request (default 503).
pub const FAIL_STATUS: &str = "ECHO_FAIL_STATUS";
/// Milliseconds to wait before answering (at most a minute).
pub const DELAY_MS: &str = "ECHO_DELAY_MS";
/// A path served with a fixed body (e.g. `/.well-known/jwks.json`).
pub const STATIC: &str = "ECHO_STATIC";
/// The body served at [`STATIC`].
pub const STATIC_BODY: &str = "ECHO_STATIC_BODY";
/// Its content type (default `application/json`).
pub const STATIC_CONTENT_TYPE: &str = "ECHO_STATIC_CONTENT_TYPE";

/// Every variable the echo app reads: the lab clears them from its own environment before it
/// starts a pod's app, so only the manifest configures it.
pub const ALL: [&str; 8] = [
    CALLS,
    CALL_TIMEOUT_MS,
    FAIL_PERCENT,
    FAIL_STATUS,
    DELAY_MS,
    STATIC,
    STATIC_BODY,
    STATIC_CONTENT_TYPE,
];

/// A next hop's time limit unless [`CALL_TIMEOUT_MS`] says otherwise: generous, so that a
/// slow hop in a test is a 504 only when a test means it.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest [`DELAY_MS`] honoured, as `/delay/MS`.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// A setting the echo app cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("{name}={value:?}: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error("{set} is set but {missing} is not: both are needed to serve a static document")]
    Incomplete {
        set: &'static str,
        missing: &'static str,
    },
    #[error("pod {pod}, container {container}: env {name} uses valueFrom, which the lab cannot resolve; give it a plain value")]
    ValueFrom {
        pod: String,
        container: String,
        name: String,
    },
    #[error("pod {pod}: env {name} is {first:?} in one container and {second:?} in another; the lab runs one app per pod")]
    Conflict {
        pod: String,
        name: String,
        first: String,
        second: String,
    },
    #[error("pod {pod}: {source}")]
    Pod {
        pod: String,
        #[source]
        source: Box<EnvError>,
    },
}

/// One next hop: where to connect and what to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The URL as written, for the reply.
    pub url: String,
    /// Name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written: the `Host` header.
    pub authority: String,
    /// Path and query (`/` if none).
    pub path: String,
}

/// A fixed document at one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticDoc {
    pub path: String,
    pub body: String,
    pub content_type: String,
}

/// What the environment asks of the echo app. The default is the plain echo app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppEnv {
    pub calls: Vec<NextHop>,
    pub call_timeout: Duration,
    /// 0..=100.
    pub fail_percent: u8,
    pub fail_status: StatusCode,
    pub delay: Duration,
    pub static_doc: Option<StaticDoc>,
}

impl Default for AppEnv {
    fn default() -> Self {
        AppEnv {
            calls: Vec::new(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            fail_percent: 0,
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            delay: Duration::ZERO,
            static_doc: None,
        }
    }
}

impl AppEnv {
    /// Reads every setting through `get` (unset and empty are the same: the default).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<AppEnv, EnvError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut env = AppEnv::default();
        if let Some(v) = get(CALLS) {
            env.calls = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| next_hop(u).map_err(|why| invalid(CALLS, &v, why)))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get(CALL_TIMEOUT_MS) {
            let ms = millis(CALL_TIMEOUT_MS, &v)?;
            if ms == 0 {
                return Err(invalid(CALL_TIMEOUT_MS, &v, "must be above 0".into()));
            }
            env.call_timeout = Duration::from_millis(ms);
        }
        if let Some(v) = get(FAIL_PERCENT) {
            env.fail_percent = match v.trim().parse::<u8>() {
                Ok(p) if p <= 100 => p,
                _ => {
                    return Err(invalid(
                        FAIL_PERCENT,
                        &v,
                        "not a whole percent 0..=100".into(),
                    ))
                }
            };
        }
        if let Some(v) = get(FAIL_STATUS) {
            env.fail_status = v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| invalid(FAIL_STATUS, &v, "not an HTTP status 100..=599".into()))?;
        }
        if let Some(v) = get(DELAY_MS) {
            env.delay = Duration::from_millis(millis(DELAY_MS, &v)?).min(MAX_DELAY);
        }
        env.static_doc = match (get(STATIC), get(STATIC_BODY)) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(EnvError::Incomplete {
                    set: STATIC,
                    missing: STATIC_BODY,
                })
            }
            (None, Some(_)) => {
                return Err(EnvError::Incomplete {
                    set: STATIC_BODY,
                    missing: STATIC,
                })
            }
            (Some(path), Some(body)) => {
                let path = path.trim().to_string();
                if !path.starts_with('/') {
                    return Err(invalid(STATIC, &path, "a path starts with /".into()));
                }
                Some(StaticDoc {
                    path,
                    body,
                    content_type: get(STATIC_CONTENT_TYPE)
                        .map(|t| t.trim().to_string())
                        .unwrap_or_else(|| "application/json".into()),
                })
            }
        };
        Ok(env)
    }
}

fn invalid(name: &'static str, value: &str, why: String) -> EnvError {
    EnvError::Invalid {
        name,
        value: value.to_string(),
        why,
    }
}

fn millis(name: &'static str, v: &str) -> Result<u64, EnvError> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| invalid(name, v, "not a whole number of milliseconds".into()))
}

/// `http://details:9080/details/0` → its parts. Only plain `http`: the mesh adds the TLS.
fn next_hop(url: &str) -> Result<NextHop, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{url:?}: {p:?} is not a port"))?,
    };
    Ok(NextHop {
        url: url.to_string(),
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        path,
    })
}

/// The plain `value:` variables of a pod's containers, for its one echo app; every container's
/// variables, since the lab runs one app for all of them. `valueFrom` cannot be resolved here:
/// an error for the echo app's own variables (the app would run misconfigured), skipped with a
/// warning for any other. The result is checked with [`AppEnv::parse`].
pub fn pod_env(pod: &Pod) -> Result<Vec<(String, String)>, EnvError> {
    let key = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let mut vars: Vec<(String, String)> = Vec::new();
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for c in containers {
        for e in c.env.iter().flatten() {
            let Some(value) = e.value.clone().or_else(|| {
                // `value` absent and no `valueFrom`: Kubernetes' empty string.
                e.value_from.is_none().then(String::new)
            }) else {
                if ALL.contains(&e.name.as_str()) {
                    return Err(EnvError::ValueFrom {
                        pod: key,
                        container: c.name.clone(),
                        name: e.name.clone(),
                    });
                }
                tracing::warn!(pod = %key, container = %c.name, env = %e.name, "valueFrom is not resolved by the lab: the variable is left out");
                continue;
            };
            match vars.iter().find(|(n, _)| *n == e.name) {
                Some((_, first)) if *first != value => {
                    return Err(EnvError::Conflict {
                        pod: key,
                        name: e.name.clone(),
                        first: first.clone(),
                        second: value,
                    })
                }
                Some(_) => {}
                None => vars.push((e.name.clone(), value)),
            }
        }
    }
    AppEnv::parse(|name| {
        (vars.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    })
    .map_err(|source| EnvError::Pod {
        pod: key,
        source: Box::new(source),
    })?;
    Ok(vars)
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
