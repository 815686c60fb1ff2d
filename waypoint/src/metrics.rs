//! Istio's request metrics with `reporter="waypoint"` and Istio's label set, so Istio's
//! dashboards and Kiali read an amesh waypoint as they read Envoy's; plus amesh's own: requests
//! per route, retries, circuit breaker overflows and outlier ejections (Envoy keeps these as
//! cluster stats, which Istio does not export by default).

use mesh::state::{Service, Workload};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's bucket boundaries for `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's bucket boundaries for the request and response size histograms.
pub const SIZE_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// One request's labels (Istio's names and order).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

/// amesh's per-route count (Istio has no route label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `<namespace>/<HTTPRoute name>`, or `default` when the service's own endpoints served.
    pub route: String,
    pub rule: String,
    pub destination_service: String,
    pub response_code: u16,
}

/// A retry, by the condition that allowed it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The service's hostname.
    pub destination_service: String,
    /// DestinationRule subset, empty for the whole service.
    pub destination_subset: String,
    /// The `retryOn` condition that held (`5xx`, `reset`, `per-try-timeout`, ...), or
    /// `limit_exceeded` for a retriable failure answered because the attempts were used up
    /// (Envoy's `URX`; a retry refused by `maxRetries` counts in the overflow metric).
    pub reason: &'static str,
}

/// A request refused by a circuit breaker limit (503 `UO`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub destination_service: String,
    pub destination_subset: String,
    /// `max_requests`, `max_pending_requests` or `max_retries`.
    pub limit: &'static str,
}

/// One cluster (service, or subset of it) for the outlier metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub destination_service: String,
    pub destination_subset: String,
}

/// The waypoint's metric families.
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram>,
    pub route_requests: Family<RouteLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub overflows: Family<OverflowLabels, Counter>,
    pub ejections: Family<ClusterLabels, Counter>,
    pub ejected: Family<ClusterLabels, Gauge>,
}

impl Metrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS_MS.iter().copied())
            }),
            request_bytes: Family::new_with_constructor(|| {
                Histogram::new(SIZE_BUCKETS.iter().copied())
            }),
            response_bytes: Family::new_with_constructor(|| {
                Histogram::new(SIZE_BUCKETS.iter().copied())
            }),
            route_requests: Family::default(),
            retries: Family::default(),
            overflows: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
        };
        // prometheus-client adds `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests through the waypoint",
            m.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            m.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes",
            m.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes",
            m.response_bytes.clone(),
        );
        registry.register(
            "amesh_waypoint_route_requests",
            "Requests per HTTPRoute rule",
            m.route_requests.clone(),
        );
        registry.register(
            "amesh_waypoint_upstream_retries",
            "Retries of requests to a service (reason: the retryOn condition that held; limit_exceeded: a retriable failure answered with the attempts used up, URX)",
            m.retries.clone(),
        );
        registry.register(
            "amesh_waypoint_upstream_overflow",
            "Requests refused by a DestinationRule connectionPool limit (503 UO)",
            m.overflows.clone(),
        );
        registry.register(
            "amesh_waypoint_outlier_ejections",
            "Endpoints ejected by outlier detection",
            m.ejections.clone(),
        );
        registry.register(
            "amesh_waypoint_outlier_ejected",
            "Endpoints ejected now by outlier detection",
            m.ejected.clone(),
        );
        m
    }
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s.to_string()
    }
}

impl RequestLabels {
    /// The source part, from the proven peer (identity from mTLS, workload by the socket's
    /// address).
    pub fn with_source(mut self, principal: &str, workload: Option<&Workload>) -> Self {
        self.source_principal = principal.to_string();
        match workload {
            Some(w) => {
                self.source_workload = or_unknown(&w.workload_name);
                self.source_workload_namespace = or_unknown(&w.namespace);
                self.source_canonical_service = or_unknown(&w.canonical_name);
                self.source_canonical_revision = or_unknown(&w.canonical_revision);
                self.source_app = or_unknown(&w.canonical_name);
                self.source_version = or_unknown(&w.canonical_revision);
                self.source_cluster = or_unknown(&w.cluster_id);
            }
            None => {
                for f in [
                    &mut self.source_workload,
                    &mut self.source_workload_namespace,
                    &mut self.source_canonical_service,
                    &mut self.source_canonical_revision,
                    &mut self.source_app,
                    &mut self.source_version,
                    &mut self.source_cluster,
                ] {
                    *f = "unknown".into();
                }
            }
        }
        self
    }

    pub fn with_service(mut self, service: Option<&Service>) -> Self {
        match service {
            Some(s) => {
                self.destination_service = s.hostname.clone();
                self.destination_service_name = s.name.clone();
                self.destination_service_namespace = s.namespace.clone();
            }
            None => {
                self.destination_service = "unknown".into();
                self.destination_service_name = "unknown".into();
                self.destination_service_namespace = "unknown".into();
            }
        }
        self
    }

    pub fn with_destination(mut self, workload: Option<&Workload>) -> Self {
        match workload {
            Some(w) => {
                self.destination_principal = w.identity.to_string();
                self.destination_workload = or_unknown(&w.workload_name);
                self.destination_workload_namespace = or_unknown(&w.namespace);
                self.destination_canonical_service = or_unknown(&w.canonical_name);
                self.destination_canonical_revision = or_unknown(&w.canonical_revision);
                self.destination_app = or_unknown(&w.canonical_name);
                self.destination_version = or_unknown(&w.canonical_revision);
                self.destination_cluster = or_unknown(&w.cluster_id);
            }
            None => {
                for f in [
                    &mut self.destination_principal,
                    &mut self.destination_workload,
                    &mut self.destination_workload_namespace,
                    &mut self.destination_canonical_service,
                    &mut self.destination_canonical_revision,
                    &mut self.destination_app,
                    &mut self.destination_version,
                    &mut self.destination_cluster,
                ] {
                    *f = "unknown".into();
                }
            }
        }
        self
    }
}

/// One request series' metric handles. prometheus-client hands out handles that share their
/// value with the family's entry, so holding them skips the family's lookup, which hashes and
/// compares all 25 labels, on every request after the first of the series.
#[derive(Debug)]
pub struct Series {
    pub requests: Counter,
    pub duration: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
    pub route_requests: Counter,
}

impl Metrics {
    /// The handles of one label set, created in the families if new.
    pub fn series(&self, labels: &RequestLabels, route: &RouteLabels) -> Series {
        Series {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
            route_requests: self.route_requests.get_or_create(route).clone(),
        }
    }
}
