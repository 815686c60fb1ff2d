//! ztunnel's bounds on work that peers cause before they have proven anything: the node-wide
//! ones (shared by every pod) and each pod's own for its DNS proxy. The settings come from
//! [`LimitSettings`]; what a limit refuses, it refuses to that one connection or query.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mesh::limits::{RefusalCounter, SourceLimits};
use tokio::sync::Semaphore;

use crate::config::LimitSettings;

/// Node-wide limits, shared by every captured pod.
#[derive(Debug)]
pub struct Limits {
    /// HBONE connections in their handshakes, per source address and in all.
    pub hbone_pending: Arc<SourceLimits>,
    /// Open plaintext (15006) connections per client address.
    pub plaintext: Arc<SourceLimits>,
    /// Plaintext connections refused by `plaintext` or the descriptor headroom.
    pub plaintext_refused: RefusalCounter,
    /// DNS queries forwarded upstream and not yet answered, all pods together.
    pub dns_forwards: Arc<Ceiling>,
    pub settings: LimitSettings,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Limits {
        Limits {
            hbone_pending: SourceLimits::new(
                "pending HBONE handshakes",
                settings.hbone_pending_per_source,
                settings.hbone_pending_total,
            ),
            // The total is left to the descriptor headroom check: each of these connections
            // passed authorization, so only a per-client share needs bounding.
            plaintext: SourceLimits::new(
                "open plaintext connections",
                settings.plaintext_per_source,
                usize::MAX,
            ),
            plaintext_refused: RefusalCounter::default(),
            dns_forwards: Ceiling::new(settings.dns_forwards_total),
            settings: settings.clone(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(&LimitSettings::default())
    }
}

/// A count of things in flight with a ceiling, node-wide. An atomic, not a tokio `Semaphore`:
/// nothing ever waits for a slot here (past the ceiling the work is refused), and a semaphore
/// locks its list of waiters on every release, which would put one lock shared by every pod
/// on every query.
#[derive(Debug)]
pub struct Ceiling {
    in_use: AtomicUsize,
    max: usize,
}

/// One slot of a [`Ceiling`], given back on drop.
#[derive(Debug)]
pub struct CeilingSlot(Arc<Ceiling>);

impl Ceiling {
    pub fn new(max: usize) -> Arc<Ceiling> {
        Arc::new(Ceiling {
            in_use: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot, unless `max` are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<CeilingSlot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| CeilingSlot(self.clone()))
    }

    /// Slots taken and not yet given back.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

impl Drop for CeilingSlot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One pod's DNS proxy limits: its app can exhaust these and nothing of other pods'.
#[derive(Debug, Clone)]
pub struct PodDnsLimits {
    /// Open DNS-over-TCP connections.
    pub tcp: Arc<Semaphore>,
    /// Queries forwarded upstream and not yet answered.
    pub forwards: Arc<Semaphore>,
    /// UDP queries received and not yet answered (answered ones, forwarded ones and the
    /// reply sockets of both).
    pub udp_queries: Arc<Semaphore>,
}

impl PodDnsLimits {
    pub fn new(settings: &LimitSettings) -> PodDnsLimits {
        PodDnsLimits {
            tcp: Arc::new(Semaphore::new(settings.dns_tcp_per_pod)),
            forwards: Arc::new(Semaphore::new(settings.dns_forwards_per_pod)),
            // Room for every forward plus as many quick answers beside them.
            udp_queries: Arc::new(Semaphore::new(settings.dns_forwards_per_pod * 2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ceiling;

    #[test]
    fn a_ceiling_refuses_past_its_max_and_a_dropped_slot_makes_room() {
        let ceiling = Ceiling::new(2);
        let a = ceiling.try_take().expect("first slot");
        let _b = ceiling.try_take().expect("second slot");
        assert!(
            ceiling.try_take().is_none(),
            "a third slot past the ceiling"
        );
        assert_eq!(ceiling.in_use(), 2);
        drop(a);
        assert_eq!(ceiling.in_use(), 1);
        let _c = ceiling.try_take().expect("the freed slot");
        assert!(ceiling.try_take().is_none());
    }

    #[test]
    fn threads_never_take_more_than_the_ceiling() {
        let ceiling = Ceiling::new(3);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(_slot) = ceiling.try_take() {
                            peak.fetch_max(ceiling.in_use(), std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert!(peak.into_inner() <= 3);
        assert_eq!(ceiling.in_use(), 0);
    }
}
