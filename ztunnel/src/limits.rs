//! ztunnel's bounds on work that peers cause before they have proven anything: the node-wide
//! ones (shared by every pod) and each pod's own for its DNS proxy. The settings come from
//! [`LimitSettings`]; what a limit refuses, it refuses to that one connection or query.

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
    pub dns_forwards: Arc<Semaphore>,
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
            dns_forwards: Arc::new(Semaphore::new(settings.dns_forwards_total)),
            settings: settings.clone(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(&LimitSettings::default())
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
