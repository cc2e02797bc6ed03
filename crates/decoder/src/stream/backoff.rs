//! Exponential backoff with full jitter for reconnects.

use std::time::Duration;

use rand::Rng;

/// Reconnect policy: delays grow `initial, 2×initial, …` up to `max`, each drawn uniformly
/// from `[delay/2, delay]` so a fleet of replicas does not reconnect in lock step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Give up after failing for this long (`None`: never give up).
    pub give_up_after: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = base / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms).min(half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_bounded() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            give_up_after: None,
        };
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let base = (Duration::from_millis(100) * 2u32.pow(attempt.min(20))).min(b.max);
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d:?} vs {base:?}"
            );
        }
    }
}
