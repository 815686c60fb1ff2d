//! Outlier detection of one cluster (a service, or one subset of it, on one port), Envoy's
//! consecutive-errors detectors: each endpoint's consecutive 5xx answers and consecutive
//! gateway errors (502/503/504) are counted from real responses and from local failures (a
//! tunnel that could not be opened, a reset, a per-try timeout: Envoy maps these to 503 when
//! local-origin errors are not split). At a threshold the endpoint is ejected for
//! `base_ejection_time × times ejected`, unless `max_ejection_percent` of the cluster's
//! endpoints already are (one endpoint may always be ejected, as in Envoy). The balancer skips
//! ejected endpoints; re-admission happens when a pick or the `interval` sweep sees the time
//! has passed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::policy::OutlierConfig;

/// What an attempt told about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Any answer below 500.
    Success,
    /// A 5xx answer from the endpoint.
    Status(u16),
    /// A failure before any answer: connect failure, reset, per-try timeout.
    LocalFailure,
}

#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// One cluster's detector.
#[derive(Debug, Default)]
pub struct Outlier {
    hosts: Mutex<HashMap<IpAddr, Host>>,
    /// Endpoints ejected now (possibly past their time until the next sweep or pick): lets
    /// the balancer skip the lock when nothing is ejected, the normal case.
    ejected: AtomicUsize,
    /// Endpoints with a failure counted since their last success: a success is then counted
    /// without the lock when there is none, the normal case.
    failing: AtomicUsize,
}

impl Outlier {
    /// Counts one attempt's outcome at `ip`; `total` is the cluster's endpoint count. Returns
    /// whether this ejected the endpoint.
    pub fn report(
        &self,
        ip: IpAddr,
        report: Report,
        cfg: &OutlierConfig,
        total: usize,
        now: Instant,
    ) -> bool {
        if report == Report::Success && self.failing.load(Ordering::Acquire) == 0 {
            // The common case: no endpoint has a failure to forget.
            return false;
        }
        let mut hosts = self.hosts.lock();
        if report == Report::Success {
            if let Some(h) = hosts.get_mut(&ip) {
                if h.consecutive_5xx > 0 || h.consecutive_gateway > 0 {
                    self.failing.fetch_sub(1, Ordering::AcqRel);
                }
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
            }
            return false;
        }
        let (five_xx, gateway) = match report {
            Report::Status(code) => (code >= 500, matches!(code, 502..=504)),
            Report::LocalFailure => (true, true),
            Report::Success => (false, false),
        };
        let h = hosts.entry(ip).or_default();
        if h.ejected_until.is_some() {
            // Already out (an attempt that started before the ejection).
            return false;
        }
        let was_failing = h.consecutive_5xx > 0 || h.consecutive_gateway > 0;
        if five_xx {
            h.consecutive_5xx += 1;
        } else {
            h.consecutive_5xx = 0;
        }
        if gateway {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let is_failing = h.consecutive_5xx > 0 || h.consecutive_gateway > 0;
        let tripped = (cfg.consecutive_5xx > 0 && h.consecutive_5xx >= cfg.consecutive_5xx)
            || (cfg.consecutive_gateway > 0 && h.consecutive_gateway >= cfg.consecutive_gateway);
        match (was_failing, is_failing && !tripped) {
            (false, true) => {
                self.failing.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.failing.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        if !tripped {
            return false;
        }
        let ejected_now = hosts
            .values()
            .filter(|h| h.ejected_until.is_some_and(|t| t > now))
            .count();
        // Envoy: never beyond max_ejection_percent of the hosts, but at least one may go.
        let allowed = ejected_now == 0
            || (ejected_now + 1) * 100 <= cfg.max_ejection_percent as usize * total.max(1);
        let h = hosts.get_mut(&ip).expect("inserted above");
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        if !allowed {
            return false;
        }
        h.times_ejected += 1;
        let factor = h.times_ejected.min(1000);
        h.ejected_until = Some(now + cfg.base_ejection.saturating_mul(factor));
        self.ejected.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether any endpoint may be ejected (a lock-free check for the balancer).
    pub fn any_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed) > 0
    }

    /// Runs `f` with a check "is this endpoint ejected at `now`?"; endpoints whose time has
    /// passed are re-admitted on the way.
    pub fn with_ejected<R>(&self, now: Instant, f: impl FnOnce(&dyn Fn(IpAddr) -> bool) -> R) -> R {
        if !self.any_ejected() {
            return f(&|_| false);
        }
        self.sweep(now);
        let hosts = self.hosts.lock();
        f(&|ip| hosts.get(&ip).is_some_and(|h| h.ejected_until.is_some()))
    }

    /// Re-admits endpoints whose ejection has ended; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        if !self.any_ejected() {
            return 0;
        }
        let mut hosts = self.hosts.lock();
        let mut readmitted = 0;
        for h in hosts.values_mut() {
            if h.ejected_until.is_some_and(|t| t <= now) {
                h.ejected_until = None;
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
                readmitted += 1;
            }
        }
        self.ejected.fetch_sub(readmitted, Ordering::Relaxed);
        readmitted
    }

    /// Endpoints ejected now.
    pub fn ejected_count(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Forgets endpoints not in `keep` (they left the service), so a returning endpoint
    /// starts clean, as Envoy resets a host removed from its cluster.
    pub fn retain(&self, keep: impl Fn(&IpAddr) -> bool) {
        let mut hosts = self.hosts.lock();
        let mut dropped_ejected = 0;
        let mut dropped_failing = 0;
        hosts.retain(|ip, h| {
            let k = keep(ip);
            if !k && h.ejected_until.is_some() {
                dropped_ejected += 1;
            }
            if !k && (h.consecutive_5xx > 0 || h.consecutive_gateway > 0) {
                dropped_failing += 1;
            }
            k
        });
        self.ejected.fetch_sub(dropped_ejected, Ordering::Relaxed);
        self.failing.fetch_sub(dropped_failing, Ordering::AcqRel);
    }
}

/// How long until the next sweep of a detector configured with `cfg`.
pub fn sweep_interval(cfg: &OutlierConfig) -> Duration {
    cfg.interval.max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(c5xx: u32, gw: u32, max_pct: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: c5xx,
            consecutive_gateway: gw,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: max_pct,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn is_ejected(o: &Outlier, now: Instant, n: u8) -> bool {
        o.with_ejected(now, |e| e(ip(n)))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_ejects_and_time_readmits() {
        let o = Outlier::default();
        let c = cfg(3, 0, 100);
        let now = Instant::now();
        assert!(!o.report(ip(1), Report::Status(503), &c, 3, now));
        assert!(!o.report(ip(1), Report::Status(500), &c, 3, now));
        assert_eq!(o.failing.load(Ordering::Relaxed), 1);
        // A success in between starts the count over (and successes go lock-free again).
        assert!(!o.report(ip(1), Report::Success, &c, 3, now));
        assert_eq!(o.failing.load(Ordering::Relaxed), 0);
        assert!(!o.report(ip(1), Report::Status(503), &c, 3, now));
        assert!(!o.report(ip(1), Report::LocalFailure, &c, 3, now));
        assert!(o.report(ip(1), Report::Status(500), &c, 3, now));
        assert_eq!(
            o.failing.load(Ordering::Relaxed),
            0,
            "counts reset at ejection"
        );
        assert!(is_ejected(&o, now, 1));
        assert!(!is_ejected(&o, now, 2));
        assert!(is_ejected(&o, now + Duration::from_secs(29), 1));
        // Re-admitted once base_ejection_time has passed.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(o.sweep(Instant::now()), 1);
        assert!(!is_ejected(&o, Instant::now(), 1));
        assert_eq!(o.ejected_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn each_ejection_lasts_longer() {
        let o = Outlier::default();
        let c = cfg(1, 0, 100);
        let t0 = Instant::now();
        assert!(o.report(ip(1), Report::Status(500), &c, 2, t0));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(o.sweep(t1), 1);
        assert!(o.report(ip(1), Report::Status(500), &c, 2, t1));
        // Second ejection: 2 × base.
        assert!(is_ejected(&o, t1 + Duration::from_secs(59), 1));
        assert!(!is_ejected(&o, t1 + Duration::from_secs(60), 1));
    }

    #[test]
    fn gateway_errors_count_only_502_to_504() {
        let o = Outlier::default();
        let c = cfg(0, 2, 100);
        let now = Instant::now();
        assert!(!o.report(ip(1), Report::Status(502), &c, 3, now));
        // A 500 is not a gateway error: the count starts over.
        assert!(!o.report(ip(1), Report::Status(500), &c, 3, now));
        assert!(!o.report(ip(1), Report::Status(504), &c, 3, now));
        assert!(o.report(ip(1), Report::LocalFailure, &c, 3, now));
    }

    #[test]
    fn max_ejection_percent_bounds_ejections_but_one_may_always_go() {
        let now = Instant::now();
        // 10 % of 3 endpoints is less than one: the first is ejected anyway, not the second.
        let o = Outlier::default();
        let c = cfg(1, 0, 10);
        assert!(o.report(ip(1), Report::Status(503), &c, 3, now));
        assert!(!o.report(ip(2), Report::Status(503), &c, 3, now));
        assert_eq!(o.ejected_count(), 1);
        // 50 % of 4: two may go, not three.
        let o = Outlier::default();
        let c = cfg(1, 0, 50);
        assert!(o.report(ip(1), Report::Status(503), &c, 4, now));
        assert!(o.report(ip(2), Report::Status(503), &c, 4, now));
        assert!(!o.report(ip(3), Report::Status(503), &c, 4, now));
        assert!(!is_ejected(&o, now, 3));
    }

    #[test]
    fn departed_endpoints_are_forgotten() {
        let o = Outlier::default();
        let c = cfg(1, 0, 100);
        let now = Instant::now();
        assert!(o.report(ip(1), Report::Status(503), &c, 2, now));
        o.retain(|a| *a != ip(1));
        assert_eq!(o.ejected_count(), 0);
        assert!(!is_ejected(&o, now, 1));
    }
}
