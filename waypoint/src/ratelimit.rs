//! Local rate limiting (`amesh.l7.v1.RateLimit`, Linkerd's HTTPLocalRateLimitPolicy shape):
//! token buckets for all clients together (`total`) and for each client identity
//! (`identity`, with per-identity `overrides`), checked after authorization. A request beyond
//! a limit is answered 429 `local_rate_limited` with response flag `RL`, as Envoy's local rate
//! limit filter answers.
//!
//! Buckets refill continuously at the policy's rate and hold at most one second's worth (the
//! burst). The buckets live in a [`Limiter`] that the L7 store carries over from one snapshot
//! to the next while the policy's limits stay the same, so a config push for another resource
//! does not hand every client a fresh burst. The per-identity map is bounded: buckets that
//! have refilled completely carry no state and are swept when the map is full.

use std::collections::HashMap;
use std::sync::Arc;

use amesh_proto::amesh::l7::v1 as pb;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::l7::authz::Target;
use crate::l7::ConvertError;

/// Most client identities tracked per policy; past it, full buckets are swept, then the
/// longest idle one goes.
pub const MAX_IDENTITIES: usize = 10_000;

/// One converted rate limit policy.
#[derive(Debug)]
pub struct RateLimitPolicy {
    /// `<namespace>/<name>`.
    pub key: String,
    pub targets: Vec<Target>,
    /// What the limiter was built from: an update with the same limits keeps the limiter.
    source: pb::RateLimit,
    pub limiter: Arc<Limiter>,
}

impl RateLimitPolicy {
    /// Converts `p`, keeping `previous`'s buckets when its limits are the same.
    pub fn from_proto(
        p: pb::RateLimit,
        previous: Option<&RateLimitPolicy>,
    ) -> Result<Self, ConvertError> {
        let key = format!("{}/{}", p.namespace, p.name);
        let targets = crate::l7::authz::targets(&key, &p.namespace, p.targets.clone())?;
        let same_limits = |old: &pb::RateLimit| {
            old.total_rps == p.total_rps
                && old.identity_rps == p.identity_rps
                && old.overrides == p.overrides
        };
        let limiter = match previous {
            Some(old) if same_limits(&old.source) => old.limiter.clone(),
            _ => Arc::new(Limiter::new(&p)),
        };
        Ok(RateLimitPolicy {
            key,
            targets,
            source: p,
            limiter,
        })
    }
}

/// The buckets of one policy.
#[derive(Debug)]
pub struct Limiter {
    total: Option<Mutex<Bucket>>,
    /// Default per-identity rate; 0 = none.
    identity_rps: u32,
    /// Principal → rate replacing `identity_rps`.
    overrides: HashMap<String, u32>,
    identities: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(p: &pb::RateLimit) -> Self {
        let now = Instant::now();
        let mut overrides = HashMap::new();
        for o in &p.overrides {
            for principal in &o.principals {
                // The first override naming a client wins, as Linkerd reads them in order.
                overrides
                    .entry(principal.trim_start_matches("spiffe://").to_owned())
                    .or_insert(o.rps);
            }
        }
        Limiter {
            total: (p.total_rps > 0).then(|| Mutex::new(Bucket::full(p.total_rps, now))),
            identity_rps: p.identity_rps,
            overrides,
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for a request of `principal` (without `spiffe://`); false → over a limit.
    pub fn try_acquire(&self, principal: &str) -> bool {
        let now = Instant::now();
        let rps = self
            .overrides
            .get(principal)
            .copied()
            .unwrap_or(self.identity_rps);
        // Both limits are checked before either is charged, so a request refused by one does
        // not use up the other's tokens.
        let mut total = self.total.as_ref().map(|b| b.lock());
        if let Some(t) = total.as_mut() {
            if !t.available(now) {
                return false;
            }
        }
        if rps > 0 {
            let mut ids = self.identities.lock();
            if !ids.contains_key(principal) && ids.len() >= MAX_IDENTITIES {
                sweep(&mut ids, now);
            }
            let bucket = ids
                .entry(principal.to_owned())
                .or_insert_with(|| Bucket::full(rps, now));
            if !bucket.available(now) {
                return false;
            }
            bucket.take();
        }
        if let Some(t) = total.as_mut() {
            t.take();
        }
        true
    }

    /// How many identities have a bucket (tests, admin).
    pub fn tracked_identities(&self) -> usize {
        self.identities.lock().len()
    }
}

/// Drops the buckets that have refilled (they hold no state a new one would not), and if
/// none has, the one idle longest.
fn sweep(ids: &mut HashMap<String, Bucket>, now: Instant) {
    ids.retain(|_, b| {
        b.refill(now);
        b.tokens < b.capacity
    });
    if ids.len() >= MAX_IDENTITIES {
        let oldest = ids
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            ids.remove(&k);
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `capacity` (one second's worth).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn full(rps: u32, now: Instant) -> Self {
        let rate = f64::from(rps);
        Bucket {
            tokens: rate,
            capacity: rate,
            rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(total: u32, identity: u32, overrides: Vec<(u32, &str)>) -> pb::RateLimit {
        pb::RateLimit {
            name: "rl".into(),
            namespace: "ns".into(),
            targets: vec![pb::TargetRef {
                kind: "Gateway".into(),
                namespace: String::new(),
                name: "waypoint".into(),
            }],
            total_rps: total,
            identity_rps: identity,
            overrides: overrides
                .into_iter()
                .map(|(rps, p)| pb::RateLimitOverride {
                    rps,
                    principals: vec![p.into()],
                })
                .collect(),
        }
    }

    fn admitted(l: &Limiter, who: &str, n: usize) -> usize {
        (0..n).filter(|_| l.try_acquire(who)).count()
    }

    #[tokio::test(start_paused = true)]
    async fn total_burst_is_one_second_then_refills_continuously() {
        let l = Limiter::new(&limit(10, 0, vec![]));
        assert_eq!(admitted(&l, "a", 100), 10, "burst = one second's worth");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            admitted(&l, "b", 5),
            1,
            "100 ms at 10 rps refills one token"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            admitted(&l, "c", 100),
            10,
            "the bucket never holds more than its burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn identities_have_their_own_buckets_and_overrides() {
        let l = Limiter::new(&limit(0, 2, vec![(5, "spiffe://td/ns/x/sa/vip")]));
        assert_eq!(admitted(&l, "td/ns/x/sa/a", 10), 2);
        assert_eq!(
            admitted(&l, "td/ns/x/sa/b", 10),
            2,
            "another client is not charged"
        );
        assert_eq!(
            admitted(&l, "td/ns/x/sa/vip", 10),
            5,
            "override replaces the default"
        );
        assert_eq!(l.tracked_identities(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_by_identity_does_not_spend_total() {
        let l = Limiter::new(&limit(3, 1, vec![]));
        assert_eq!(admitted(&l, "a", 5), 1);
        assert_eq!(admitted(&l, "b", 1), 1);
        assert_eq!(
            admitted(&l, "c", 1),
            1,
            "a's refusals left the total's tokens"
        );
        assert_eq!(admitted(&l, "d", 1), 0, "total spent");
    }

    #[tokio::test(start_paused = true)]
    async fn identity_map_is_bounded() {
        let l = Limiter::new(&limit(0, 1, vec![]));
        for i in 0..MAX_IDENTITIES + 50 {
            assert!(l.try_acquire(&format!("c{i}")));
        }
        assert!(l.tracked_identities() <= MAX_IDENTITIES);
        // Once refilled, buckets are swept as a whole when a new client comes.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(l.try_acquire("newcomer"));
        assert!(l.tracked_identities() < 10, "{}", l.tracked_identities());
    }

    #[test]
    fn same_limits_keep_the_buckets() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        let a = RateLimitPolicy::from_proto(limit(1, 0, vec![]), None).unwrap();
        assert!(a.limiter.try_acquire("x"));
        let b = RateLimitPolicy::from_proto(limit(1, 0, vec![]), Some(&a)).unwrap();
        assert!(Arc::ptr_eq(&a.limiter, &b.limiter));
        assert!(!b.limiter.try_acquire("x"), "the spent burst stays spent");
        let c = RateLimitPolicy::from_proto(limit(2, 0, vec![]), Some(&b)).unwrap();
        assert!(
            !Arc::ptr_eq(&b.limiter, &c.limiter),
            "new limits, new buckets"
        );
    }
}
