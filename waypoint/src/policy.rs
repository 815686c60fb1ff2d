//! A service's DestinationRule (`amesh.l7.v1.DestinationPolicy`) converted once per xDS update
//! into the merged policy of every (subset, port) the rule distinguishes, so a request finds
//! its load balancer, connection pool limits and outlier detection settings with two short
//! scans and no allocation.
//!
//! Istio's precedence, field by field (a set field replaces the one before it): the service's
//! policy, then its port-level policy for the port, then the subset's policy, then the
//! subset's port-level policy.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::amesh::l7::v1 as pb;

use crate::l7::ConvertError;

/// How endpoints are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancer {
    /// The waypoint's default (`AMESH_WAYPOINT_LB`).
    Default,
    RoundRobin,
    LeastRequest,
    Random,
    /// Rendezvous hashing on a key taken from the request.
    Hash(HashOn),
}

/// Where a consistent hash takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    Cookie {
        name: String,
        path: Option<String>,
        /// Set → the waypoint issues the cookie when the request has none.
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

/// Circuit breaker limits of one cluster (Istio's `connectionPool`); 0 = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_requests_per_connection: u32,
    pub max_retries: u32,
    /// `tcp.connectTimeout`; `None` = the waypoint's default.
    pub connect_timeout: Option<Duration>,
}

impl PoolLimits {
    /// Whether any limit is set (else the breaker is skipped).
    pub fn any(&self) -> bool {
        PoolLimits {
            connect_timeout: None,
            ..*self
        } != PoolLimits::default()
    }
}

/// Outlier detection settings of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// 0 = off.
    pub consecutive_5xx: u32,
    /// 0 = off.
    pub consecutive_gateway: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// Istio's defaults for fields the rule leaves out (the controller normally fills them).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);

/// The policy in force for one (subset, port).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    pub load_balancer: Option<LoadBalancer>,
    pub pool: Option<PoolLimits>,
    pub outlier: Option<OutlierConfig>,
}

impl Effective {
    /// Whether this cluster needs runtime state (breaker counters, outlier bookkeeping).
    pub fn stateful(&self) -> bool {
        self.pool.is_some_and(|p| p.any()) || self.outlier.is_some()
    }

    /// `over`'s set fields replace ours.
    fn overlaid(&self, over: &Partial) -> Effective {
        Effective {
            load_balancer: over
                .load_balancer
                .clone()
                .or_else(|| self.load_balancer.clone()),
            pool: over.pool.or(self.pool),
            outlier: over.outlier.or(self.outlier),
        }
    }
}

/// One level of a TrafficPolicy as written (before merging).
#[derive(Debug, Clone, Default)]
struct Partial {
    load_balancer: Option<LoadBalancer>,
    pool: Option<PoolLimits>,
    outlier: Option<OutlierConfig>,
}

/// The merged policy of a subset (or of the whole service), per port.
#[derive(Debug)]
pub struct Level {
    /// Identifies this cluster's runtime state: `<service>` or `<service>|<subset>`.
    pub cluster: Arc<str>,
    pub base: Effective,
    /// Ports with their own merged policy.
    pub ports: Vec<(u16, Effective)>,
}

impl Level {
    /// The policy for `port`.
    pub fn for_port(&self, port: u16) -> &Effective {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(&self.base, |(_, e)| e)
    }
}

/// A subset: its endpoints and merged policy.
#[derive(Debug)]
pub struct Subset {
    pub name: String,
    /// Workload uids of its endpoints.
    pub uids: HashSet<String>,
    pub level: Level,
}

/// A service's converted DestinationRule.
#[derive(Debug)]
pub struct DestinationPolicy {
    /// `<namespace>/<name>` of the DestinationRule.
    pub source: String,
    /// The service-wide policy.
    pub service: Level,
    pub subsets: Vec<Subset>,
}

impl DestinationPolicy {
    /// Converts the policy of service `service` (its Address key, e.g. `ns/host`).
    pub fn from_proto(service: &str, p: pb::DestinationPolicy) -> Result<Self, ConvertError> {
        let at = |field: String| format!("destination ({}).{field}", p.source);
        let (base, port_partials) = traffic_policy(p.traffic_policy.as_ref())
            .map_err(|(f, e)| ConvertError::new(service, at(format!("traffic_policy{f}")), e))?;
        let root = Effective::default().overlaid(&base);
        let service_ports: Vec<(u16, Effective)> = port_partials
            .iter()
            .map(|(port, partial)| (*port, root.overlaid(partial)))
            .collect();
        let service_level = Level {
            cluster: service.into(),
            base: root.clone(),
            ports: service_ports.clone(),
        };
        let mut subsets = Vec::with_capacity(p.subsets.len());
        let mut seen = HashSet::new();
        for (i, s) in p.subsets.iter().enumerate() {
            if s.name.is_empty() {
                return Err(ConvertError::new(
                    service,
                    at(format!("subsets[{i}].name")),
                    "empty subset name",
                ));
            }
            if !seen.insert(s.name.as_str()) {
                return Err(ConvertError::new(
                    service,
                    at(format!("subsets[{i}].name")),
                    format!("subset {:?} defined twice", s.name),
                ));
            }
            let (own, own_ports) =
                traffic_policy(s.traffic_policy.as_ref()).map_err(|(f, e)| {
                    ConvertError::new(service, at(format!("subsets[{i}].traffic_policy{f}")), e)
                })?;
            // Every port either level names gets its own merge: service → service port →
            // subset → subset port.
            let mut ports: Vec<u16> = service_ports
                .iter()
                .map(|(p, _)| *p)
                .chain(own_ports.iter().map(|(p, _)| *p))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            let merged_ports = ports
                .into_iter()
                .map(|port| {
                    let svc_port = service_level.for_port(port);
                    let with_subset = svc_port.overlaid(&own);
                    let e = match own_ports.iter().find(|(p, _)| *p == port) {
                        Some((_, partial)) => with_subset.overlaid(partial),
                        None => with_subset,
                    };
                    (port, e)
                })
                .collect();
            subsets.push(Subset {
                name: s.name.clone(),
                uids: s.workload_uids.iter().cloned().collect(),
                level: Level {
                    cluster: format!("{service}|{}", s.name).into(),
                    base: root.overlaid(&own),
                    ports: merged_ports,
                },
            });
        }
        Ok(DestinationPolicy {
            source: p.source,
            service: service_level,
            subsets,
        })
    }

    /// The level of `subset` (`None` → the service's); `None` when the subset is unknown.
    pub fn level(&self, subset: Option<&str>) -> Option<(&Level, Option<&Subset>)> {
        match subset {
            None => Some((&self.service, None)),
            Some(name) => self
                .subsets
                .iter()
                .find(|s| s.name == name)
                .map(|s| (&s.level, Some(s))),
        }
    }
}

type FieldError = (String, String);

/// One TrafficPolicy: its own fields and its per-port overrides.
fn traffic_policy(
    p: Option<&pb::TrafficPolicy>,
) -> Result<(Partial, Vec<(u16, Partial)>), FieldError> {
    let Some(p) = p else {
        return Ok((Partial::default(), Vec::new()));
    };
    let own = partial(
        p.load_balancer.as_ref(),
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
    )?;
    let mut ports = Vec::with_capacity(p.port_policies.len());
    for (i, pp) in p.port_policies.iter().enumerate() {
        let port = u16::try_from(pp.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                (
                    format!(".port_policies[{i}].port"),
                    format!("{} is not a port number", pp.port),
                )
            })?;
        if ports.iter().any(|(p, _)| *p == port) {
            return Err((
                format!(".port_policies[{i}].port"),
                format!("port {port} has two policies"),
            ));
        }
        let part = partial(
            pp.load_balancer.as_ref(),
            pp.connection_pool.as_ref(),
            pp.outlier_detection.as_ref(),
        )
        .map_err(|(f, e)| (format!(".port_policies[{i}]{f}"), e))?;
        ports.push((port, part));
    }
    Ok((own, ports))
}

fn partial(
    lb: Option<&pb::LoadBalancer>,
    pool: Option<&pb::ConnectionPool>,
    outlier: Option<&pb::OutlierDetection>,
) -> Result<Partial, FieldError> {
    Ok(Partial {
        load_balancer: lb
            .map(load_balancer)
            .transpose()
            .map_err(|(f, e)| (format!(".load_balancer{f}"), e))?,
        pool: pool
            .map(|c| -> Result<PoolLimits, FieldError> {
                Ok(PoolLimits {
                    max_connections: c.max_connections,
                    max_pending: c.http1_max_pending_requests,
                    max_requests: c.http2_max_requests,
                    max_requests_per_connection: c.max_requests_per_connection,
                    max_retries: c.max_retries,
                    connect_timeout: duration(c.connect_timeout.as_ref()).map_err(|e| {
                        (
                            ".connection_pool.connect_timeout".to_string(),
                            e.to_string(),
                        )
                    })?,
                })
            })
            .transpose()?,
        outlier: outlier
            .map(outlier_config)
            .transpose()
            .map_err(|(f, e)| (format!(".outlier_detection{f}"), e))?,
    })
}

fn load_balancer(lb: &pb::LoadBalancer) -> Result<LoadBalancer, FieldError> {
    use pb::consistent_hash::Key;
    if let Some(ch) = &lb.consistent_hash {
        return match &ch.key {
            Some(Key::HttpHeaderName(h)) => {
                http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map(|n| LoadBalancer::Hash(HashOn::Header(n)))
                    .map_err(|e| {
                        (
                            ".consistent_hash.http_header_name".into(),
                            format!("{h:?}: {e}"),
                        )
                    })
            }
            Some(Key::HttpCookie(c)) => {
                if c.name.is_empty() || !c.name.bytes().all(is_cookie_name_byte) {
                    return Err((
                        ".consistent_hash.http_cookie.name".into(),
                        format!("{:?} is not a cookie name", c.name),
                    ));
                }
                if c.path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
                    return Err((
                        ".consistent_hash.http_cookie.path".into(),
                        format!("{:?} is not a cookie path", c.path),
                    ));
                }
                Ok(LoadBalancer::Hash(HashOn::Cookie {
                    name: c.name.clone(),
                    path: (!c.path.is_empty()).then(|| c.path.clone()),
                    ttl: duration(c.ttl.as_ref())
                        .map_err(|e| (".consistent_hash.http_cookie.ttl".into(), e.to_string()))?,
                }))
            }
            Some(Key::UseSourceIp(true)) => Ok(LoadBalancer::Hash(HashOn::SourceIp)),
            Some(Key::HttpQueryParameterName(q)) if !q.is_empty() => {
                Ok(LoadBalancer::Hash(HashOn::QueryParameter(q.clone())))
            }
            _ => Err((
                ".consistent_hash.key".into(),
                "no hash key (header, cookie, source IP or query parameter)".into(),
            )),
        };
    }
    match pb::load_balancer::Simple::try_from(lb.simple) {
        Ok(pb::load_balancer::Simple::Unspecified) => Ok(LoadBalancer::Default),
        Ok(pb::load_balancer::Simple::RoundRobin) => Ok(LoadBalancer::RoundRobin),
        Ok(pb::load_balancer::Simple::LeastRequest) => Ok(LoadBalancer::LeastRequest),
        Ok(pb::load_balancer::Simple::Random) => Ok(LoadBalancer::Random),
        Err(_) => Err((".simple".into(), format!("unknown value {}", lb.simple))),
    }
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn outlier_config(o: &pb::OutlierDetection) -> Result<OutlierConfig, FieldError> {
    if o.max_ejection_percent > 100 {
        return Err((
            ".max_ejection_percent".into(),
            format!("{} is more than 100", o.max_ejection_percent),
        ));
    }
    let interval = duration(o.interval.as_ref())
        .map_err(|e| (".interval".to_string(), e.to_string()))?
        .unwrap_or(DEFAULT_INTERVAL);
    let base_ejection = duration(o.base_ejection_time.as_ref())
        .map_err(|e| (".base_ejection_time".to_string(), e.to_string()))?
        .unwrap_or(DEFAULT_BASE_EJECTION);
    Ok(OutlierConfig {
        consecutive_5xx: o.consecutive_5xx_errors,
        consecutive_gateway: o.consecutive_gateway_errors,
        interval,
        base_ejection,
        max_ejection_percent: o.max_ejection_percent,
    })
}

/// A protobuf duration: absent or zero → `None`; negative → error.
pub(crate) fn duration(
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, &'static str> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err("negative or malformed duration");
    }
    if d.seconds == 0 && d.nanos == 0 {
        return Ok(None);
    }
    Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
