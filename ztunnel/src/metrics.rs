//! The ztunnel's Prometheus families, with the names, types, labels and label values of
//! Istio's ztunnel, so Istio's ztunnel dashboard, its workload/service dashboards and Kiali read
//! amesh unchanged:
//!
//! - `istio_tcp_connections_{opened,closed,failed}_total`, `istio_tcp_{received,sent}_bytes_total`
//!   per connection label set. Byte directions follow Istio: "received" is what the client
//!   sent, "sent" is what went back to it, for both reporters.
//! - `istio_build{component="ztunnel",tag}`: 1, the running version.
//! - `istio_dns_requests_total`, `istio_dns_upstream_{requests,failures}_total`,
//!   `istio_dns_upstream_request_duration_seconds`: the DNS proxy.
//! - `istio_xds_connection_terminations_total{reason}`, `istio_xds_message_total{url}` and
//!   `istio_xds_message_bytes_total`: the xDS client, read from its status at scrape time.
//! - `workload_manager_{active,pending}_proxy_count`, `workload_manager_proxies_{started,stopped}_total`:
//!   the pod manager (Istio's in-pod "workload manager").

use mesh::intern::Interner;
use mesh::state::{Service, Workload};
use mesh::Identity;
use std::fmt::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mesh::state::Snapshot;
use mesh::xds::XdsStatus;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    MutualTls,
    /// No mTLS on this leg (plain TCP, passthrough). Istio's ztunnel writes `unknown` here, not
    /// Envoy's `none`.
    None,
}

// Istio's label values are lower case; the derive would print the variant names.
impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        })
    }
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "unknown",
        })
    }
}

/// One connection's labels (Istio's names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: SecurityPolicy,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s.to_string()
    }
}

impl ConnLabels {
    pub fn new(
        reporter: Reporter,
        src: Option<&Workload>,
        src_identity: Option<&Identity>,
        dst: Option<&Workload>,
        service: Option<&Service>,
        policy: SecurityPolicy,
    ) -> ConnLabels {
        let field =
            |w: Option<&Workload>, f: fn(&Workload) -> &str| or_unknown(w.map(f).unwrap_or(""));
        ConnLabels {
            reporter,
            source_workload: field(src, |w| &w.workload_name),
            source_canonical_service: field(src, |w| &w.canonical_name),
            source_canonical_revision: field(src, |w| &w.canonical_revision),
            source_workload_namespace: field(src, |w| &w.namespace),
            source_principal: src_identity
                .map(|i| i.to_string())
                .unwrap_or_else(|| "unknown".into()),
            source_app: field(src, |w| &w.canonical_name),
            source_version: field(src, |w| &w.canonical_revision),
            source_cluster: field(src, |w| &w.cluster_id),
            destination_service: or_unknown(service.map(|s| s.hostname.as_str()).unwrap_or("")),
            destination_service_namespace: or_unknown(
                service.map(|s| s.namespace.as_str()).unwrap_or(""),
            ),
            destination_service_name: or_unknown(service.map(|s| s.name.as_str()).unwrap_or("")),
            destination_workload: field(dst, |w| &w.workload_name),
            destination_canonical_service: field(dst, |w| &w.canonical_name),
            destination_canonical_revision: field(dst, |w| &w.canonical_revision),
            destination_workload_namespace: field(dst, |w| &w.namespace),
            destination_principal: dst
                .map(|w| w.identity().to_string())
                .unwrap_or_else(|| "unknown".into()),
            destination_app: field(dst, |w| &w.canonical_name),
            destination_version: field(dst, |w| &w.canonical_revision),
            destination_cluster: field(dst, |w| &w.cluster_id),
            request_protocol: "tcp".into(),
            response_flags: "-".into(),
            connection_security_policy: policy,
        }
    }
}

/// The ztunnel's metric families.
pub struct Metrics {
    registry: Registry,
    opened: Family<ConnLabels, Counter>,
    closed: Family<ConnLabels, Counter>,
    received: Family<ConnLabels, Counter>,
    sent: Family<ConnLabels, Counter>,
    /// One entry per label set seen, holding that set's counters: a connection keeps an `Arc`
    /// of it (not its own copy of ~20 strings) and counts without hashing the labels again.
    /// Sharded, so connections do not meet on one lock. Grows as the families do (they keep
    /// every label set too).
    sets: Interner<ConnLabels, LabelSet>,
    /// The `closed` and `failed` counters of each label set with a response flag (`DENY`,
    /// `CONNECT`), found the same way: a flood of refused connections does not queue on the
    /// family's lock.
    flagged: Interner<ConnLabels, (Counter, Counter)>,
    failed: Family<ConnLabels, Counter>,
    /// The DNS proxy's families.
    pub dns: DnsMetrics,
    /// The pod manager's families.
    pub pods: PodMetrics,
    /// Where the xDS collector reads the client's status; unset with a file config source.
    xds: Arc<OnceLock<watch::Receiver<XdsStatus>>>,
}

/// The labels of Istio's `istio_build`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: String,
    tag: String,
}

/// The labels of Istio's DNS families: the query type and transport in lower case (`a`,
/// `aaaa`; `udp`, `tcp`) and the asking pod's canonical service and revision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub request_query_type: String,
    pub request_protocol: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
}

impl DnsLabels {
    pub fn new(query_type: &str, protocol: &str, source: Option<&Workload>) -> DnsLabels {
        let field = |f: fn(&Workload) -> &str| or_unknown(source.map(f).unwrap_or(""));
        DnsLabels {
            request_query_type: query_type.to_ascii_lowercase(),
            request_protocol: protocol.to_string(),
            source_canonical_service: field(|w| &w.canonical_name),
            source_canonical_revision: field(|w| &w.canonical_revision),
        }
    }
}

/// The DNS proxy's families (Istio's names).
#[derive(Clone)]
pub struct DnsMetrics {
    pub requests: Family<DnsLabels, Counter>,
    pub upstream_requests: Family<DnsLabels, Counter>,
    pub upstream_failures: Family<DnsLabels, Counter>,
    upstream_duration: Family<DnsLabels, Histogram>,
}

// The families are keyed per query, not per byte or per connection: a DNS query already costs
// a parse and often an upstream round trip, so one family lock per query is not worth an
// interned label set (the rule `get_or_create` is disallowed for is the connection path's).
#[allow(clippy::disallowed_methods)]
impl DnsMetrics {
    /// Counts one query a pod sent to the DNS proxy.
    pub fn received(&self, labels: &DnsLabels) {
        self.requests.get_or_create(labels).inc();
    }

    /// Counts one forward to the upstream nameservers and how long it took; `answered` is
    /// false when none of them answered.
    pub fn forwarded(&self, labels: &DnsLabels, took: Duration, answered: bool) {
        self.upstream_requests.get_or_create(labels).inc();
        if answered {
            self.upstream_duration
                .get_or_create(labels)
                .observe(took.as_secs_f64());
        } else {
            self.upstream_failures.get_or_create(labels).inc();
        }
    }
}

/// The pod manager's families: Istio's in-pod "workload manager".
#[derive(Clone, Default)]
pub struct PodMetrics {
    /// Pods served now.
    pub active: Gauge,
    /// Pods being set up (netns, listeners, certificate) and not served yet.
    pub pending: Gauge,
    pub started: Counter,
    pub stopped: Counter,
}

/// Reads the xDS client's status when `/metrics` is scraped.
#[derive(Debug)]
struct XdsCollector(Arc<OnceLock<watch::Receiver<XdsStatus>>>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UrlLabel {
    url: String,
}

impl Collector for XdsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.get().map(|rx| rx.borrow().clone());
        // The families are declared with a file config source too, with no samples: there is
        // no xDS connection to count.
        let mut family = encoder.encode_descriptor(
            "istio_xds_connection_terminations",
            "Streams to the xDS server that ended, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in status.iter().flat_map(|s| s.terminations.iter()) {
            ConstCounter::new(*n).encode(family.encode_family(&ReasonLabel { reason })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "istio_xds_message",
            "xDS responses received, by type URL",
            None,
            MetricType::Counter,
        )?;
        for t in status.iter().flat_map(|s| s.types.iter()) {
            let url = UrlLabel {
                url: t.type_url.clone(),
            };
            ConstCounter::new(t.acks + t.nacks).encode(family.encode_family(&url)?)?;
        }
        let family = encoder.encode_descriptor(
            "istio_xds_message_bytes",
            "Bytes of resources received from the xDS server",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(status.map_or(0, |s| s.message_bytes)).encode(family)?;
        Ok(())
    }
}

/// The service whose target port is `port` among those `workload` belongs to (the first by
/// key), for the `destination_service*` labels of traffic addressed to a pod IP, as Istio's
/// ztunnel fills them.
pub fn service_for_port(
    snapshot: &Snapshot,
    workload: &Workload,
    port: u16,
) -> Option<Arc<Service>> {
    workload.services.iter().find_map(|(key, ports)| {
        let service = snapshot.service(key)?;
        let by_workload = ports.values().any(|target| *target == port);
        let by_service = service.ports.iter().any(|p| {
            p.target_port == port
                || (p.target_port == 0
                    && p.service_port == port
                    && ports.get(&p.service_port).is_none_or(|t| *t == 0))
        });
        (by_workload || by_service).then(|| service.clone())
    })
}

/// The counters of one label set.
struct LabelSet {
    labels: ConnLabels,
    opened: Counter,
    /// Closes without a response flag.
    closed: Counter,
    received: Counter,
    sent: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let opened = Family::<ConnLabels, Counter>::default();
        let closed = Family::<ConnLabels, Counter>::default();
        let received = Family::<ConnLabels, Counter>::default();
        let sent = Family::<ConnLabels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client",
            received.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client",
            sent.clone(),
        );
        let failed = Family::<ConnLabels, Counter>::default();
        registry.register(
            "istio_tcp_connections_failed",
            "TCP connections that were refused by policy (DENY) or could not reach the destination (CONNECT)",
            failed.clone(),
        );

        let build = Family::<BuildLabels, Gauge>::default();
        registry.register("istio_build", "Build of this component", build.clone());
        // Set once at start, never on a connection's path.
        #[allow(clippy::disallowed_methods)]
        build
            .get_or_create(&BuildLabels {
                component: "ztunnel".into(),
                tag: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);

        let dns = DnsMetrics {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            // Sorted bounds (Istio's set: 1 ms to 5 s).
            upstream_duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.1, 1.0, 5.0])
            }),
        };
        registry.register(
            "istio_dns_requests",
            "DNS queries received from captured pods",
            dns.requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_requests",
            "DNS queries forwarded to the node's nameservers",
            dns.upstream_requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_failures",
            "Forwarded DNS queries no nameserver answered",
            dns.upstream_failures.clone(),
        );
        registry.register_with_unit(
            "istio_dns_upstream_request_duration",
            "Time the node's nameservers took to answer a forwarded query",
            Unit::Seconds,
            dns.upstream_duration.clone(),
        );

        let pods = PodMetrics::default();
        registry.register(
            "workload_manager_active_proxy_count",
            "Pods this ztunnel serves now",
            pods.active.clone(),
        );
        registry.register(
            "workload_manager_pending_proxy_count",
            "Pods being set up and not served yet",
            pods.pending.clone(),
        );
        registry.register(
            "workload_manager_proxies_started",
            "Pods this ztunnel started serving",
            pods.started.clone(),
        );
        registry.register(
            "workload_manager_proxies_stopped",
            "Pods this ztunnel stopped serving",
            pods.stopped.clone(),
        );

        let xds = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(XdsCollector(xds.clone())));
        Metrics {
            registry,
            opened,
            closed,
            received,
            sent,
            sets: Interner::new(),
            flagged: Interner::new(),
            failed,
            dns,
            pods,
            xds,
        }
    }

    // The families' own (family-wide) locks are taken only the first time a set is seen.
    #[allow(clippy::disallowed_methods)]
    fn label_set(&self, labels: ConnLabels) -> Arc<LabelSet> {
        self.sets.get_or_insert_with(labels, |labels| LabelSet {
            opened: self.opened.get_or_create(labels).clone(),
            closed: self.closed.get_or_create(labels).clone(),
            received: self.received.get_or_create(labels).clone(),
            sent: self.sent.get_or_create(labels).clone(),
            labels: labels.clone(),
        })
    }

    /// Counts a connection as opened; close the returned handle when it ends.
    pub fn open(&self, labels: ConnLabels) -> OpenConn<'_> {
        let set = self.label_set(labels);
        set.opened.inc();
        OpenConn { metrics: self, set }
    }

    /// Counts a connection refused by policy: opened and closed at once with flag `DENY`.
    pub fn denied(&self, labels: ConnLabels) {
        self.open(labels).close(0, 0, Some("DENY"));
    }

    /// Reads the xDS families from this client's status from now on (once; later calls are
    /// ignored: one process has one xDS client).
    pub fn watch_xds(&self, status: watch::Receiver<XdsStatus>) {
        let _ = self.xds.set(status);
    }

    /// The xDS client's status now; `None` with a file config source.
    pub fn xds_status(&self) -> Option<XdsStatus> {
        self.xds.get().map(|rx| rx.borrow().clone())
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A connection counted as opened.
pub struct OpenConn<'a> {
    metrics: &'a Metrics,
    set: Arc<LabelSet>,
}

impl OpenConn<'_> {
    /// Counts the close with the bytes each way. `flags` is what the access log says, in
    /// Envoy's words (`UF` upstream failure, `UC` upstream connection termination, `DENY`);
    /// the metrics use Istio ztunnel's values: `DENY`, `CONNECT` (the destination could not be
    /// reached, Envoy's `UF`), and `-` for everything else (a connection that broke after it
    /// was up, `UC`, is closed, not failed, in Istio's ztunnel). A `DENY` or `CONNECT` close
    /// counts in `istio_tcp_connections_failed_total` too.
    pub fn close(self, from_client: u64, to_client: u64, flags: Option<&str>) {
        self.set.received.inc_by(from_client);
        self.set.sent.inc_by(to_client);
        let flags = match flags {
            Some("DENY") => Some("DENY"),
            Some("UF" | "CONNECT") => Some("CONNECT"),
            _ => None,
        };
        match flags {
            None => {
                self.set.closed.inc();
            }
            Some(f) => {
                // A label set of their own, interned like the unflagged ones.
                let mut labels = self.set.labels.clone();
                labels.response_flags = f.to_string();
                let (closed, failed) = (&self.metrics.closed, &self.metrics.failed);
                // The families' locks only the first time this flagged set is seen.
                #[allow(clippy::disallowed_methods)]
                let counters = self.metrics.flagged.get_or_insert_with(labels, |labels| {
                    (
                        closed.get_or_create(labels).clone(),
                        failed.get_or_create(labels).clone(),
                    )
                });
                counters.0.inc();
                counters.1.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests;
