//! How a failing record is retried.

use std::time::Duration;

/// How a failing record is retried: its whole batch runs again, in place, so the partition's
/// order holds; the consumer keeps polling meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per record before it is dead-lettered; 0 retries forever (the partition waits).
    pub max_attempts: u32,
    /// Wait after the first failure; doubles each attempt, with ±25% jitter.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (1-based `attempt`), with jitter from `seed`.
    pub(crate) fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff);
        // ±25% jitter, from a cheap hash of the seed and the attempt.
        let mut x = seed ^ (u64::from(attempt) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let factor = 0.75 + (x % 1000) as f64 / 2000.0;
        exp.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for seed in 0..50 {
            let d1 = p.delay(1, seed).as_millis();
            let d3 = p.delay(3, seed).as_millis();
            let d9 = p.delay(9, seed).as_millis();
            assert!((75..=125).contains(&d1), "{d1}");
            assert!((300..=500).contains(&d3), "{d3}");
            assert!((750..=1250).contains(&d9), "{d9}");
        }
        assert_ne!(p.delay(2, 1), p.delay(2, 2), "jitter varies with the seed");
    }
}
