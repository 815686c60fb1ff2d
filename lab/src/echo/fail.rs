//! The deterministic failure share of `ECHO_FAIL_PERCENT`: not random, so tests can assert
//! exact counts. Request n (from 1) fails when `floor(n·p/100)` steps up, i.e. after n
//! requests exactly `floor(n·p/100)` have failed: at 50 % every second request fails, at 33 %
//! the 4th, 7th, 10th…, at 100 % all, at 0 % none.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts a pod's requests that may fail (those answered with an echo reply) and says which do.
/// One per pod, shared by all its ports and connections.
#[derive(Debug, Default)]
pub struct FailShare {
    /// Requests counted so far.
    seen: AtomicU64,
}

impl FailShare {
    /// Counts one request; whether it is to fail at `percent` (above 100 is 100). Lock-free:
    /// concurrent requests each get their own number, so the total over any n requests is
    /// exact whatever their order.
    pub fn next_fails(&self, percent: u8) -> bool {
        let percent = u64::from(percent.min(100));
        if percent == 0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        (n * percent) / 100 > ((n - 1) * percent) / 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(percent: u8, n: usize) -> String {
        let share = FailShare::default();
        (0..n)
            .map(|_| if share.next_fails(percent) { 'F' } else { '.' })
            .collect()
    }

    #[test]
    fn half_fails_every_other_request() {
        assert_eq!(pattern(50, 8), ".F.F.F.F");
    }

    #[test]
    fn a_third_fails_one_in_three() {
        assert_eq!(pattern(34, 9), "..F..F..F");
        assert_eq!(pattern(33, 10), "...F..F..F");
        assert_eq!(pattern(33, 100).matches('F').count(), 33);
    }

    #[test]
    fn the_count_after_n_requests_is_exact() {
        for percent in [1u8, 10, 25, 33, 50, 66, 90, 99] {
            let share = FailShare::default();
            let mut failed = 0u64;
            for n in 1..=1000u64 {
                failed += u64::from(share.next_fails(percent));
                assert_eq!(
                    failed,
                    n * u64::from(percent) / 100,
                    "{percent} % after {n}"
                );
            }
        }
    }

    #[test]
    fn none_and_all() {
        assert_eq!(pattern(0, 5), ".....");
        assert_eq!(pattern(100, 5), "FFFFF");
        assert_eq!(pattern(200, 3), "FFF");
    }
}
