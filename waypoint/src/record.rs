//! One request's telemetry: Istio's request metrics with `reporter="waypoint"`, amesh's
//! per-route count and an access log line, written exactly once when the response ends, fails,
//! or the client goes away (`DC`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mesh::state::{Service, Workload};

use crate::metrics::{RequestLabels, RouteLabels};
use crate::Waypoint;

/// Everything logged and counted about one request.
pub struct Record {
    pub wp: Arc<Waypoint>,
    pub start: Instant,
    pub method: http::Method,
    pub path: String,
    pub authority: String,
    pub protocol: &'static str,
    pub http_version: http::Version,
    pub request_id: String,
    pub user_agent: String,
    pub peer: SocketAddr,
    pub source_principal: String,
    pub source_workload: Option<Arc<Workload>>,
    pub service: Option<Arc<Service>>,
    pub destination: Option<Arc<Workload>>,
    pub upstream: Option<SocketAddr>,
    pub route: Option<(String, u32)>,
    pub request_bytes: Arc<AtomicU64>,
    pub code: u16,
    /// Envoy's response flags: `-`, `UH`, `UF`, `UT`, `NR`, `DC`, `UR`, ...
    pub flags: &'static str,
    pub grpc_status: Option<String>,
    /// Set once the response head went to the client; until then a drop means `DC`.
    pub responded: bool,
    /// Counts the request against its endpoint until the record is written.
    pub in_flight: Option<crate::balance::InFlightGuard>,
    done: bool,
}

impl Record {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        wp: Arc<Waypoint>,
        method: http::Method,
        path: String,
        authority: String,
        protocol: &'static str,
        http_version: http::Version,
        request_id: String,
        user_agent: String,
        peer: SocketAddr,
        source_principal: String,
        source_workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    ) -> Self {
        Record {
            wp,
            start: Instant::now(),
            method,
            path,
            authority,
            protocol,
            http_version,
            request_id,
            user_agent,
            peer,
            source_principal,
            source_workload,
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
            done: false,
        }
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
        let elapsed = self.start.elapsed();
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let labels = RequestLabels {
            reporter: "waypoint",
            request_protocol: self.protocol,
            response_code: self.code,
            grpc_response_status: self.grpc_status.clone().unwrap_or_default(),
            response_flags: self.flags.to_string(),
            connection_security_policy: "mutual_tls",
            ..Default::default()
        }
        .with_source(&self.source_principal, self.source_workload.as_deref())
        .with_service(self.service.as_deref())
        .with_destination(self.destination.as_deref());
        let m = &self.wp.metrics;
        m.requests.get_or_create(&labels).inc();
        m.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64() * 1000.0);
        m.request_bytes
            .get_or_create(&labels)
            .observe(request_bytes as f64);
        m.response_bytes
            .get_or_create(&labels)
            .observe(response_bytes as f64);
        let (route, rule) = match &self.route {
            Some((r, i)) => (r.clone(), i.to_string()),
            None => ("default".to_string(), "-".to_string()),
        };
        m.route_requests
            .get_or_create(&RouteLabels {
                route: route.clone(),
                rule,
                destination_service: labels.destination_service.clone(),
                response_code: self.code,
            })
            .inc();
        // Istio's access log fields, one line per request.
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            protocol = ?self.http_version,
            response_code = self.code,
            response_flags = self.flags,
            bytes_received = request_bytes,
            bytes_sent = response_bytes,
            duration_ms = elapsed.as_millis() as u64,
            upstream_host = %self.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            downstream_peer = %self.peer,
            source_principal = %self.source_principal,
            destination_service = %labels.destination_service,
            route = %route,
            x_request_id = %self.request_id,
            authority = %self.authority,
            user_agent = %self.user_agent,
            "request"
        );
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            // The handler's future was dropped: the client went away before the response.
            if !self.responded {
                self.flags = "DC";
            }
            self.write(0);
        }
    }
}
