//! Istio's TCP metrics (`istio_tcp_*`) with Istio's labels, so Istio dashboards and Kiali read
//! amesh unchanged. Byte directions follow Istio: "received" is what the client sent, "sent" is
//! what went back to it, for both reporters.

use mesh::intern::Interner;
use mesh::state::{Service, Workload};
use mesh::Identity;
use std::fmt::Write;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    MutualTls,
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
            SecurityPolicy::None => "none",
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
    /// The `closed` counter of each label set with a response flag (`DENY`, `UF`, ...), found
    /// the same way: a flood of refused connections does not queue on the family's lock.
    flagged: Interner<ConnLabels, Counter>,
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
        Metrics {
            registry,
            opened,
            closed,
            received,
            sent,
            sets: Interner::new(),
            flagged: Interner::new(),
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
    /// Counts the close with the bytes each way and Istio-style response flags (`UF` upstream
    /// failure, `UC` upstream connection termination, `DENY`).
    pub fn close(self, from_client: u64, to_client: u64, flags: Option<&str>) {
        self.set.received.inc_by(from_client);
        self.set.sent.inc_by(to_client);
        match flags {
            None => {
                self.set.closed.inc();
            }
            Some(f) => {
                // A label set of their own, interned like the unflagged ones.
                let mut labels = self.set.labels.clone();
                labels.response_flags = f.to_string();
                let closed = &self.metrics.closed;
                // The family's lock only the first time this flagged set is seen.
                #[allow(clippy::disallowed_methods)]
                self.metrics
                    .flagged
                    .get_or_insert_with(labels, |labels| closed.get_or_create(labels).clone())
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests;
