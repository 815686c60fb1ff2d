//! Circuit breaking of one cluster (Istio's `connectionPool`, Envoy's circuit breakers):
//! requests in flight (`http2MaxRequests`, which Envoy applies to every HTTP version),
//! HTTP/1.1 connections busy at once (`maxConnections`; an HTTP/1.1 connection carries one
//! request at a time, so a request that needs one while all are busy waits as pending), the
//! pending queue (`http1MaxPendingRequests`) and retries in flight (`maxRetries`). Beyond a
//! limit the request fails at once (503 `UO`), as in Envoy, instead of queueing without bound.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::policy::PoolLimits;

/// Which limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    MaxRequests,
    MaxPending,
    MaxRetries,
}

impl Overflow {
    /// Label value in `amesh_waypoint_upstream_overflow_total`.
    pub fn label(self) -> &'static str {
        match self {
            Overflow::MaxRequests => "max_requests",
            Overflow::MaxPending => "max_pending_requests",
            Overflow::MaxRetries => "max_retries",
        }
    }
}

/// One cluster's counters.
#[derive(Debug, Default)]
pub struct Breaker {
    requests: AtomicU32,
    connections: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
    /// Woken when a connection is handed back.
    released: Notify,
}

#[derive(Debug, Clone, Copy)]
enum Counter {
    Requests,
    Connections,
    Pending,
    Retries,
}

/// A unit of a limit, held until dropped.
#[derive(Debug)]
pub struct Held {
    breaker: Arc<Breaker>,
    counter: Counter,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.breaker
            .counter(self.counter)
            .fetch_sub(1, Ordering::AcqRel);
        if let Counter::Connections = self.counter {
            self.breaker.released.notify_one();
        }
    }
}

/// Takes one unit of `c` if it stays within `limit` (0 = unlimited).
fn take(c: &AtomicU32, limit: u32) -> bool {
    c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (limit == 0 || n < limit).then_some(n + 1)
    })
    .is_ok()
}

impl Breaker {
    fn counter(&self, c: Counter) -> &AtomicU32 {
        match c {
            Counter::Requests => &self.requests,
            Counter::Connections => &self.connections,
            Counter::Pending => &self.pending,
            Counter::Retries => &self.retries,
        }
    }

    fn held(self: &Arc<Self>, counter: Counter, limit: u32) -> Option<Held> {
        take(self.counter(counter), limit).then(|| Held {
            breaker: self.clone(),
            counter,
        })
    }

    /// Admits a request (held for its whole life).
    pub fn request(self: &Arc<Self>, limits: &PoolLimits) -> Result<Held, Overflow> {
        self.held(Counter::Requests, limits.max_requests)
            .ok_or(Overflow::MaxRequests)
    }

    /// Admits one retry (held while the retry is in flight).
    pub fn retry(self: &Arc<Self>, limits: &PoolLimits) -> Result<Held, Overflow> {
        self.held(Counter::Retries, limits.max_retries)
            .ok_or(Overflow::MaxRetries)
    }

    /// A busy HTTP/1.1 connection for one attempt (held until its response ends): at once if
    /// under `max_connections`, else after waiting in the pending queue, or `MaxPending` when
    /// that queue is full.
    pub async fn connection(self: &Arc<Self>, limits: &PoolLimits) -> Result<Held, Overflow> {
        // Under the limit (the normal case): no waiter registered, no lock taken.
        if let Some(h) = self.held(Counter::Connections, limits.max_connections) {
            return Ok(h);
        }
        let mut pending: Option<Held> = None;
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the check and the wait wakes us.
            notified.as_mut().enable();
            if let Some(h) = self.held(Counter::Connections, limits.max_connections) {
                if pending.is_some() {
                    // Others may be waiting too: pass the wake-up on if another slot is free.
                    self.released.notify_one();
                }
                return Ok(h);
            }
            if pending.is_none() {
                pending = Some(
                    self.held(Counter::Pending, limits.max_pending)
                        .ok_or(Overflow::MaxPending)?,
                );
            }
            notified.await;
        }
    }

    /// Requests in flight, busy connections, pending requests, retries in flight.
    pub fn counts(&self) -> (u32, u32, u32, u32) {
        (
            self.requests.load(Ordering::Acquire),
            self.connections.load(Ordering::Acquire),
            self.pending.load(Ordering::Acquire),
            self.retries.load(Ordering::Acquire),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(conns: u32, pending: u32, requests: u32, retries: u32) -> PoolLimits {
        PoolLimits {
            max_connections: conns,
            max_pending: pending,
            max_requests: requests,
            max_requests_per_connection: 0,
            max_retries: retries,
            connect_timeout: None,
        }
    }

    #[test]
    fn requests_and_retries_overflow_at_their_limits() {
        let b = Arc::new(Breaker::default());
        let l = limits(0, 0, 2, 1);
        let r1 = b.request(&l).unwrap();
        let _r2 = b.request(&l).unwrap();
        assert_eq!(b.request(&l).unwrap_err(), Overflow::MaxRequests);
        drop(r1);
        assert!(b.request(&l).is_ok());
        let t = b.retry(&l).unwrap();
        assert_eq!(b.retry(&l).unwrap_err(), Overflow::MaxRetries);
        drop(t);
        assert!(b.retry(&l).is_ok());
        // 0 = unlimited.
        let free = limits(0, 0, 0, 0);
        let held: Vec<_> = (0..1000).map(|_| b.request(&free).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn one_connection_one_pending_the_rest_overflow() {
        // Istio's classic: maxConnections 1, http1MaxPendingRequests 1, 20 at once.
        let b = Arc::new(Breaker::default());
        let l = limits(1, 1, 0, 0);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                match b.connection(&l).await {
                    Ok(held) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        drop(held);
                        true
                    }
                    Err(e) => {
                        assert_eq!(e, Overflow::MaxPending);
                        false
                    }
                }
            }));
        }
        let mut served = 0;
        for t in tasks {
            served += usize::from(t.await.unwrap());
        }
        assert_eq!(served, 2, "one on the connection, one pending");
        assert_eq!(b.counts(), (0, 0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_get_the_connection_in_turn() {
        let b = Arc::new(Breaker::default());
        let l = limits(2, 10, 0, 0);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let held = b.connection(&l).await.unwrap();
                let busy = b.counts().1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(held);
                busy
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap() <= 2);
        }
        assert_eq!(b.counts(), (0, 0, 0, 0));
    }
}
