//! Runtime state of the "clusters" DestinationRules make (Istio makes one Envoy cluster per
//! service port and subset): circuit breaker counters and outlier detection, kept across
//! config updates by cluster id and port, and created only for clusters whose policy needs
//! them, so services without a DestinationRule never touch this registry. One sweeper task
//! re-admits ejected endpoints on each cluster's `interval`, with or without traffic.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::breaker::{Breaker, Overflow};
use crate::metrics::{ClusterLabels, Metrics, OverflowLabels, RetryLabels};
use crate::outlier::{sweep_interval, Outlier, Report};
use crate::policy::OutlierConfig;

/// How often the sweeper wakes to look for clusters due a sweep.
const SWEEPER_TICK: Duration = Duration::from_millis(250);

/// One cluster's state.
#[derive(Debug)]
pub struct Cluster {
    pub breaker: Arc<Breaker>,
    pub outlier: Outlier,
    /// The service hostname and subset, for metrics.
    labels: ClusterLabels,
    ejections: Counter,
    ejected: Gauge,
    /// The outlier settings last seen on a request, and when the cluster was last swept.
    sweep: Mutex<(Option<OutlierConfig>, Instant)>,
}

impl Cluster {
    /// Counts an attempt's outcome for outlier detection.
    pub fn report(&self, ip: std::net::IpAddr, report: Report, cfg: &OutlierConfig, total: usize) {
        if self.outlier.report(ip, report, cfg, total, Instant::now()) {
            tracing::info!(
                service = %self.labels.destination_service,
                subset = %self.labels.destination_subset,
                endpoint = %ip,
                "outlier detection ejected an endpoint"
            );
            self.ejections.inc();
            self.ejected.set(self.outlier.ejected_count() as i64);
            // The sweeper needs the interval only once something is ejected.
            self.sweep.lock().0 = Some(*cfg);
        }
    }

    /// Re-admits endpoints if this cluster's interval has passed since its last sweep.
    fn sweep_if_due(&self, now: Instant) {
        let mut s = self.sweep.lock();
        let Some(cfg) = s.0 else { return };
        if now.duration_since(s.1) < sweep_interval(&cfg) {
            return;
        }
        s.1 = now;
        drop(s);
        if self.outlier.sweep(now) > 0 {
            tracing::info!(
                service = %self.labels.destination_service,
                subset = %self.labels.destination_subset,
                "outlier detection re-admitted endpoints"
            );
        }
        self.ejected.set(self.outlier.ejected_count() as i64);
    }

    pub fn count_retry(&self, metrics: &Metrics, reason: &'static str) {
        metrics
            .retries
            .get_or_create(&RetryLabels {
                destination_service: self.labels.destination_service.clone(),
                destination_subset: self.labels.destination_subset.clone(),
                reason,
            })
            .inc();
    }

    pub fn count_overflow(&self, metrics: &Metrics, o: Overflow) {
        metrics
            .overflows
            .get_or_create(&OverflowLabels {
                destination_service: self.labels.destination_service.clone(),
                destination_subset: self.labels.destination_subset.clone(),
                limit: o.label(),
            })
            .inc();
    }
}

type Key = (Arc<str>, u16);

/// Every cluster's state, by cluster id (`<ns>/<host>` or `<ns>/<host>|<subset>`) and port.
#[derive(Debug, Default)]
pub struct Clusters {
    inner: Arc<RwLock<HashMap<Key, Arc<Cluster>>>>,
    sweeper: Mutex<bool>,
}

impl Clusters {
    /// The state of cluster `id` on `port`, made on first use.
    pub fn get(&self, id: &Arc<str>, port: u16, metrics: &Metrics) -> Arc<Cluster> {
        let key = (id.clone(), port);
        if let Some(c) = self.inner.read().get(&key) {
            return c.clone();
        }
        let (host, subset) = match id.split_once('|') {
            Some((s, sub)) => (s, sub),
            None => (&**id, ""),
        };
        let host = host.split_once('/').map_or(host, |(_, h)| h);
        let labels = ClusterLabels {
            destination_service: host.to_string(),
            destination_subset: subset.to_string(),
        };
        let cluster = self
            .inner
            .write()
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Cluster {
                    breaker: Arc::default(),
                    outlier: Outlier::default(),
                    ejections: metrics.ejections.get_or_create(&labels).clone(),
                    ejected: metrics.ejected.get_or_create(&labels).clone(),
                    labels,
                    sweep: Mutex::new((None, Instant::now())),
                })
            })
            .clone();
        self.start_sweeper();
        cluster
    }

    /// Starts the sweeper once, if a runtime is there to run it; it ends with the registry.
    fn start_sweeper(&self) {
        let mut started = self.sweeper.lock();
        if *started {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *started = true;
        let weak: Weak<RwLock<HashMap<Key, Arc<Cluster>>>> = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(SWEEPER_TICK);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let clusters: Vec<Arc<Cluster>> = inner.read().values().cloned().collect();
                drop(inner);
                let now = Instant::now();
                for c in clusters {
                    c.sweep_if_due(now);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_readmits_without_traffic() {
        let metrics = Metrics::new(&mut Registry::default());
        let clusters = Clusters::default();
        let id: Arc<str> = "ns/svc.ns.svc.cluster.local|v1".into();
        let c = clusters.get(&id, 80, &metrics);
        assert!(Arc::ptr_eq(&c, &clusters.get(&id, 80, &metrics)));
        let cfg = OutlierConfig {
            consecutive_5xx: 1,
            consecutive_gateway: 0,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(5),
            max_ejection_percent: 100,
        };
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        c.report(ip, Report::Status(503), &cfg, 3);
        let labels = ClusterLabels {
            destination_service: "svc.ns.svc.cluster.local".into(),
            destination_subset: "v1".into(),
        };
        assert_eq!(metrics.ejected.get_or_create(&labels).get(), 1);
        assert_eq!(metrics.ejections.get_or_create(&labels).get(), 1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            c.outlier.ejected_count(),
            1,
            "still within base_ejection_time"
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            c.outlier.ejected_count(),
            0,
            "swept back in with no request"
        );
        assert_eq!(metrics.ejected.get_or_create(&labels).get(), 0);
    }
}
