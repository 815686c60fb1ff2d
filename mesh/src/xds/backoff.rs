//! Exponential reconnect backoff with jitter, so that every ztunnel of a cluster does not hit a
//! restarted controller in the same millisecond.

use std::time::Duration;

/// Doubling delays from an initial step up to a cap; each delay is drawn from the upper half of
/// the current step ("equal jitter"): never shorter than half the step, so the backoff still
/// backs off, and spread enough to break up synchronized reconnects.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The step the next delay is drawn from.
    step: Duration,
}

impl Backoff {
    /// Steps start at `initial` (at least 1 ms, so that doubling makes progress) and stop growing
    /// at `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            step: initial,
        }
    }

    /// The delay before the next attempt; doubles the step for the one after.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random_range(0.0..=1.0))
    }

    /// [`Self::next_delay`] with the random draw given: `jitter` in `0.0..=1.0` picks a delay
    /// between half the step and the full step.
    pub fn next_delay_with(&mut self, jitter: f64) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Back to the initial step, after a connection that worked.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(100 * MS, 15_000 * MS);
        let full: Vec<u128> = (0..10)
            .map(|_| backoff.next_delay_with(1.0).as_millis())
            .collect();
        assert_eq!(
            full,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay_with(0.0), 50 * MS);
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_step() {
        let mut backoff = Backoff::new(100 * MS, 100 * MS);
        for _ in 0..1000 {
            let delay = backoff.next_delay();
            assert!((50 * MS..=100 * MS).contains(&delay), "{delay:?}");
        }
        // Out-of-range draws are clamped rather than trusted.
        assert_eq!(backoff.next_delay_with(7.0), 100 * MS);
        assert_eq!(backoff.next_delay_with(-1.0), 50 * MS);
    }

    #[test]
    fn degenerate_settings_still_back_off() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(backoff.next_delay_with(1.0), MS);
        let mut backoff = Backoff::new(200 * MS, 100 * MS);
        assert_eq!(backoff.next_delay_with(1.0), 200 * MS);
        assert_eq!(backoff.next_delay_with(1.0), 200 * MS);
    }
}
