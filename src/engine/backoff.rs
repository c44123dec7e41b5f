//! Backoff arithmetic, kept pure so it can be tested without SQS or wall-clock time.

use std::time::Duration;

use rand::Rng;

use crate::config::{Jitter, RetryConfig};

/// The largest delay before the next receive after `receive_count` failed receives:
/// `min(cap, base * multiplier^(receive_count - 1))`.
pub fn retry_ceiling(retry: &RetryConfig, receive_count: u32) -> Duration {
    let exponent = receive_count.saturating_sub(1).min(64) as i32;
    let secs = f64::from(retry.base_secs) * retry.multiplier.powi(exponent);
    Duration::from_secs_f64(secs.min(f64::from(retry.cap_secs)))
}

/// The visibility timeout, in whole seconds, that delays the next receive of a message that
/// failed with a retryable error: uniform in `[0, ceiling]` ("full jitter", so a burst of
/// failures does not come back as a burst).
pub fn retry_delay_secs(retry: &RetryConfig, receive_count: u32, rng: &mut impl Rng) -> u32 {
    let ceiling = retry_ceiling(retry, receive_count).as_secs() as u32;
    match retry.jitter {
        Jitter::Full => rng.random_range(0..=ceiling),
        Jitter::None => ceiling,
    }
}

/// Backoff for failing SQS calls (endpoint down, throttled): full jitter over a doubling
/// ceiling from 100 ms to 10 s, so many pollers do not hammer a recovering endpoint in step.
#[derive(Debug, Default)]
pub struct CallBackoff {
    failures: u32,
}

impl CallBackoff {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(10);

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = Self::BASE
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::CAP);
        // Never zero: a tight loop against a dead endpoint helps nobody.
        Self::BASE.min(ceiling) / 2 + ceiling.mul_f64(rng.random::<f64>())
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn retry(base: u32, multiplier: f64, cap: u32) -> RetryConfig {
        RetryConfig {
            base_secs: base,
            multiplier,
            cap_secs: cap,
            jitter: Jitter::Full,
        }
    }

    #[test]
    fn without_jitter_the_delay_is_the_ceiling() {
        let r = RetryConfig {
            jitter: Jitter::None,
            ..retry(2, 3.0, 100)
        };
        let delays: Vec<u32> = (1..=5)
            .map(|n| retry_delay_secs(&r, n, &mut rand::rng()))
            .collect();
        assert_eq!(delays, [2, 6, 18, 54, 100]);
    }

    #[test]
    fn ceiling_grows_exponentially_with_receive_count_up_to_the_cap() {
        let r = retry(5, 2.0, 60);
        let ceilings: Vec<u64> = (1..=6).map(|n| retry_ceiling(&r, n).as_secs()).collect();
        assert_eq!(ceilings, [5, 10, 20, 40, 60, 60]);
        assert_eq!(retry_ceiling(&r, u32::MAX).as_secs(), 60, "no overflow");
        assert_eq!(
            retry_ceiling(&r, 0).as_secs(),
            5,
            "a first receive counts as 1"
        );
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling_and_cover_it() {
        let r = retry(4, 3.0, 900);
        let mut rng = StdRng::seed_from_u64(7);
        for n in 1..=5 {
            let ceiling = retry_ceiling(&r, n).as_secs() as u32;
            let delays: Vec<u32> = (0..2000)
                .map(|_| retry_delay_secs(&r, n, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            assert!(delays.contains(&0) || ceiling > 50);
            assert!(
                delays.iter().any(|d| *d >= ceiling * 9 / 10),
                "jitter spans the range"
            );
        }
    }

    #[test]
    fn call_backoff_doubles_to_a_cap_and_resets() {
        let mut b = CallBackoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay(&mut rng)).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(50)));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(10_050)));
        assert_eq!(b.failures(), 12);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(250));
    }
}
