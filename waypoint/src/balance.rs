//! Endpoint choice within a service: round robin (the default) or least request (the less
//! loaded of two random endpoints, by requests in flight through this waypoint).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

/// How the waypoint picks among a service's healthy endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    /// In turn (Istio's default for waypoints).
    RoundRobin,
    /// The less loaded of two endpoints drawn at random (Envoy's LEAST_REQUEST): requests in
    /// flight per endpoint, counted by the waypoint.
    LeastRequest,
}

/// Of `n` candidates, the less loaded of two distinct random ones (ties: the first drawn).
pub fn least_of_two(n: usize, load: impl Fn(usize) -> usize, rng: &mut impl Rng) -> usize {
    if n < 2 {
        return 0;
    }
    let a = rng.random_range(0..n);
    let b = (a + rng.random_range(1..n)) % n;
    if load(b) < load(a) {
        b
    } else {
        a
    }
}

/// Requests in flight per endpoint address (for [`Balancer::LeastRequest`]).
#[derive(Default)]
pub struct InFlight(
    parking_lot::RwLock<std::collections::HashMap<std::net::IpAddr, Arc<AtomicUsize>>>,
);

/// One request in flight to an endpoint; the count drops when it is dropped.
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    pub fn load(&self, ip: std::net::IpAddr) -> usize {
        self.0
            .read()
            .get(&ip)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn start(&self, ip: std::net::IpAddr) -> InFlightGuard {
        // The read guard must be gone before the write lock is taken.
        let known = self.0.read().get(&ip).cloned();
        let counter = known.unwrap_or_else(|| self.0.write().entry(ip).or_default().clone());
        counter.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(counter)
    }
}

/// Round-robin position per service.
#[derive(Default)]
pub struct RoundRobin(parking_lot::RwLock<std::collections::HashMap<String, Arc<AtomicUsize>>>);

impl RoundRobin {
    pub fn next(&self, key: &str) -> usize {
        if let Some(c) = self.0.read().get(key) {
            return c.fetch_add(1, Ordering::Relaxed);
        }
        let c = self.0.write().entry(key.to_string()).or_default().clone();
        c.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_of_two_prefers_the_idle_endpoint() {
        let loads = [5usize, 0, 5, 5];
        let mut rng = rand::rng();
        let mut picks = [0usize; 4];
        for _ in 0..4000 {
            picks[least_of_two(4, |i| loads[i], &mut rng)] += 1;
        }
        // The idle endpoint wins every draw it is in: half of all draws (3 of 6 pairs).
        assert!(picks[1] > 1700, "{picks:?}");
        assert_eq!(least_of_two(1, |_| 9, &mut rng), 0);
    }

    #[test]
    fn in_flight_counts_follow_guards() {
        let f = InFlight::default();
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let a = f.start(ip);
        let b = f.start(ip);
        assert_eq!(f.load(ip), 2);
        drop(a);
        drop(b);
        assert_eq!(f.load(ip), 0);
    }
}
