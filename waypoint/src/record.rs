//! One request's telemetry: Istio's request metrics with `reporter="waypoint"`, amesh's
//! per-route count and an access log line, written exactly once when the response ends, fails,
//! or the client goes away (`DC`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use http::Uri;
use mesh::state::{Service, Workload};
use parking_lot::Mutex;

use crate::metrics::{RequestLabels, RouteLabels, Series};
use crate::pipeline::ConnCtx;
use crate::Waypoint;

/// Everything logged and counted about one request.
pub struct Record {
    pub wp: Arc<Waypoint>,
    /// The downstream connection: the source's identity, workload and address.
    pub ctx: Arc<ConnCtx>,
    pub start: Instant,
    pub method: http::Method,
    /// The request's URI as it arrived (before rewrites); a clone shares hyper's buffer.
    pub uri: Uri,
    pub authority: Arc<str>,
    pub protocol: &'static str,
    pub http_version: http::Version,
    pub request_id: http::HeaderValue,
    pub user_agent: Option<http::HeaderValue>,
    pub service: Option<Arc<Service>>,
    pub destination: Option<Arc<Workload>>,
    pub upstream: Option<SocketAddr>,
    pub route: Option<(String, u32)>,
    pub request_bytes: Arc<AtomicU64>,
    pub code: u16,
    /// Envoy's response flags: `-`, `UH`, `UF`, `UT`, `NR`, `DC`, `UR`, `URX`, `UO`, `FI`,
    /// `DI`, ... (several joined with `,` in Envoy's order, e.g. `UF,URX`).
    pub flags: &'static str,
    pub grpc_status: Option<String>,
    /// Set once the response head went to the client; until then a drop means `DC`.
    pub responded: bool,
    /// Counts the request against its endpoint until the record is written.
    pub in_flight: Option<crate::balance::InFlightGuard>,
    /// The request's place under its cluster's `http2MaxRequests`, until the record is written.
    pub admission: Option<crate::breaker::Held>,
    /// The busy HTTP/1.1 connection counted under `maxConnections`, until the response ends.
    pub connection: Option<crate::breaker::Held>,
    done: bool,
}

impl Record {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        wp: Arc<Waypoint>,
        ctx: Arc<ConnCtx>,
        method: http::Method,
        uri: Uri,
        authority: Arc<str>,
        protocol: &'static str,
        http_version: http::Version,
        request_id: http::HeaderValue,
        user_agent: Option<http::HeaderValue>,
        service: Option<Arc<Service>>,
    ) -> Self {
        Record {
            wp,
            ctx,
            start: Instant::now(),
            method,
            uri,
            authority,
            protocol,
            http_version,
            request_id,
            user_agent,
            service,
            destination: None,
            upstream: None,
            route: None,
            request_bytes: Arc::default(),
            code: 0,
            flags: "-",
            grpc_status: None,
            responded: false,
            in_flight: None,
            admission: None,
            connection: None,
            done: false,
        }
    }

    /// Adds Envoy response flag `flag` to those already set (`-` adds nothing).
    pub fn add_flag(&mut self, flag: &'static str) {
        self.flags = join_flags(self.flags, flag);
    }

    /// The response head is going out; the body follows (see `body::Finishing`).
    pub fn responding(&mut self, code: u16) {
        self.code = code;
        self.responded = true;
    }

    /// The response body ended (`complete`) or was dropped before its end.
    pub fn finish_body(mut self, response_bytes: u64, complete: bool) {
        if !complete && self.flags == "-" {
            self.flags = "DC";
        }
        self.write(response_bytes);
    }

    fn write(&mut self, response_bytes: u64) {
        if self.done {
            return;
        }
        self.done = true;
        // The response is over: its connection and place go back to the cluster now, not when
        // the record is dropped.
        self.connection = None;
        self.admission = None;
        let elapsed = self.start.elapsed();
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let series = self.ctx.series.get(self, || self.series());
        series.requests.inc();
        series.duration.observe(elapsed.as_secs_f64() * 1000.0);
        series.request_bytes.observe(request_bytes as f64);
        series.response_bytes.observe(response_bytes as f64);
        series.route_requests.inc();
        if !self.wp.access_log {
            return;
        }
        let ua = self.user_agent.as_ref().and_then(|v| v.to_str().ok());
        // Istio's access log fields (the names of its default JSON access log: Envoy's
        // `duration` in ms, `downstream_remote_address`, `request_id`, `route_name`), plus
        // `source_principal` and `destination_service`, one line per request. Every value is
        // borrowed or displayed in place: the line is the only thing formatted.
        tracing::info!(
            target: "access",
            // `%`: values printed as they are (a bare `&str` field would be quoted).
            method = %self.method.as_str(),
            path = %self.uri.path(),
            protocol = ?self.http_version,
            response_code = self.code,
            response_flags = %self.flags,
            bytes_received = request_bytes,
            bytes_sent = response_bytes,
            duration = elapsed.as_millis() as u64,
            upstream_host = %OrDash(self.upstream),
            downstream_remote_address = %self.ctx.peer_addr,
            source_principal = %&*self.ctx.peer_principal,
            destination_service = %self.service.as_ref().map_or("unknown", |s| s.hostname.as_str()),
            route_name = %self.route.as_ref().map_or("default", |(r, _)| r.as_str()),
            request_id = %self.request_id.to_str().unwrap_or("-"),
            authority = %&*self.authority,
            user_agent = %ua.unwrap_or("-"),
            "request"
        );
    }

    /// The metric handles of this request's labels: the slow path, once per series and
    /// connection (see [`SeriesCache`]).
    fn series(&self) -> Series {
        let labels = RequestLabels {
            reporter: "waypoint",
            request_protocol: self.protocol,
            response_code: self.code,
            grpc_response_status: self.grpc_status.clone().unwrap_or_default(),
            response_flags: self.flags.to_string(),
            connection_security_policy: "mutual_tls",
            ..Default::default()
        }
        .with_source(
            &self.ctx.peer_principal,
            self.ctx.source_workload.as_deref(),
        )
        .with_service(self.service.as_deref())
        .with_destination(self.destination.as_deref());
        let (route, rule) = match &self.route {
            Some((r, i)) => (r.clone(), i.to_string()),
            None => ("default".to_string(), "-".to_string()),
        };
        let route = RouteLabels {
            route,
            rule,
            destination_service: labels.destination_service.clone(),
            response_code: self.code,
        };
        self.wp.metrics.series(&labels, &route)
    }
}

/// Envoy's short response flags in the order Envoy prints them (its flag enum's order).
const FLAG_ORDER: [&str; 15] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "DC", "URX",
];

/// `a` and `b` joined as Envoy prints several flags (`UF,URX`), each once, in Envoy's order.
/// Flags are `&'static str` so a request's labels are compared without allocating; the few
/// combinations that occur are made once each and kept.
pub fn join_flags(a: &'static str, b: &'static str) -> &'static str {
    if b == "-" || a == b {
        return a;
    }
    if a == "-" {
        return b;
    }
    static JOINED: Mutex<Vec<(&'static str, &'static str, &'static str)>> = Mutex::new(Vec::new());
    let mut joined = JOINED.lock();
    if let Some((_, _, j)) = joined.iter().find(|(x, y, _)| *x == a && *y == b) {
        return j;
    }
    let mut parts: Vec<&str> = a.split(',').chain(b.split(',')).collect();
    parts.sort_by_key(|f| FLAG_ORDER.iter().position(|o| o == f).unwrap_or(usize::MAX));
    parts.dedup();
    let j: &'static str = Box::leak(parts.join(",").into_boxed_str());
    // Bounded: there are only so many flags; stop remembering past a sane number.
    if joined.len() < 256 {
        joined.push((a, b, j));
    }
    j
}

/// `-` for an absent address, as Envoy logs it.
struct OrDash(Option<SocketAddr>);

impl fmt::Display for OrDash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            // The handler's future was dropped: the client went away before the response.
            if !self.responded {
                self.add_flag("DC");
            }
            self.write(0);
        }
    }
}

/// Series seen at most this many per connection before the cache starts over; a connection
/// normally sees a handful (its endpoints times its response codes).
const SERIES_PER_CONNECTION: usize = 32;

/// One connection's metric series, by what varies between its requests. The source and the
/// addressed service are the connection's, so the rest of Istio's labels follow from the
/// destination workload, the response and the route. Finding a request's series is then a
/// short scan of borrowed values under a lock only this connection's requests take, with no
/// label strings built and no family lookup.
#[cfg(test)]
#[test]
fn flags_join_in_envoys_order() {
    assert_eq!(join_flags("-", "UT"), "UT");
    assert_eq!(join_flags("UT", "-"), "UT");
    assert_eq!(join_flags("URX", "UF"), "UF,URX");
    assert_eq!(join_flags("DI", "FI"), "DI,FI");
    assert_eq!(join_flags("DI", "DC"), "DI,DC");
    assert_eq!(join_flags("UT", "DI"), "UT,DI");
    assert_eq!(join_flags("UF,URX", "URX"), "UF,URX");
    // The same combination is the same string.
    assert!(std::ptr::eq(
        join_flags("URX", "UC"),
        join_flags("URX", "UC")
    ));
}

#[derive(Debug, Default)]
pub struct SeriesCache(Mutex<Vec<(SeriesKey, Arc<Series>)>>);

/// What a connection's series differ by.
#[derive(Debug)]
pub struct SeriesKey {
    /// Compared by address: the `Arc` held here keeps the address from being reused, and a
    /// workload that changes comes as a new `Arc`, so equal addresses mean equal labels.
    destination: Option<Arc<Workload>>,
    code: u16,
    flags: &'static str,
    protocol: &'static str,
    grpc_status: Option<String>,
    route: Option<(String, u32)>,
}

impl SeriesKey {
    fn of(r: &Record) -> SeriesKey {
        SeriesKey {
            destination: r.destination.clone(),
            code: r.code,
            flags: r.flags,
            protocol: r.protocol,
            grpc_status: r.grpc_status.clone(),
            route: r.route.clone(),
        }
    }

    fn matches(&self, r: &Record) -> bool {
        let same_destination = match (&self.destination, &r.destination) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_destination
            && self.code == r.code
            && self.flags == r.flags
            && self.protocol == r.protocol
            && self.grpc_status == r.grpc_status
            && self.route == r.route
    }
}

impl SeriesCache {
    /// The series of `r`, made by `make` the first time this connection sees it.
    fn get(&self, r: &Record, make: impl FnOnce() -> Series) -> Arc<Series> {
        if let Some((_, s)) = self.0.lock().iter().find(|(k, _)| k.matches(r)) {
            return s.clone();
        }
        // Outside the lock: the families' lookup is the slow part.
        let series = Arc::new(make());
        let mut cache = self.0.lock();
        if cache.len() >= SERIES_PER_CONNECTION {
            cache.clear();
        }
        cache.push((SeriesKey::of(r), series.clone()));
        series
    }
}
