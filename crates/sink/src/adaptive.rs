//! Adaptive batch size: grow while the projection lags and flushes are quick, shrink on
//! slow flushes and on contention (lock waits, statement timeouts, deadlocks).
//!
//! Multiplicative both ways, bounded by `[min_rows, max_rows]`: a lagging projection
//! reaches the size that amortizes round trips within a few flushes, and a sink in
//! trouble gets small transactions that hold few locks.

use std::time::Duration;

use crate::spec::BatchSpec;

/// The current batch size and the rule that moves it.
#[derive(Debug, Clone)]
pub struct Adaptive {
    size: usize,
    min: usize,
    max: usize,
    target_lag: Duration,
    slow: Duration,
}

impl Adaptive {
    /// Start at `spec.start_rows`.
    pub fn new(spec: &BatchSpec) -> Adaptive {
        Adaptive {
            size: spec.start_rows.clamp(spec.min_rows, spec.max_rows),
            min: spec.min_rows,
            max: spec.max_rows,
            target_lag: spec.target_lag,
            slow: spec.slow_flush,
        }
    }

    /// Flush when this many changes are waiting.
    pub fn size(&self) -> usize {
        self.size
    }

    /// After a flush of `rows` changes that took `took`, with the projection lagging `lag`
    /// behind the source.
    pub fn flushed(&mut self, rows: usize, took: Duration, lag: Duration) {
        if took > self.slow {
            self.shrink();
        } else if lag > self.target_lag && rows >= self.size && took < self.slow / 4 {
            self.size = (self.size * 2).min(self.max);
        }
    }

    /// A flush hit a lock wait, a statement timeout or a deadlock.
    pub fn contended(&mut self) {
        self.shrink();
    }

    fn shrink(&mut self) {
        self.size = (self.size / 2).max(self.min);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BatchSpec {
        BatchSpec {
            min_rows: 100,
            max_rows: 10_000,
            start_rows: 1_000,
            ..BatchSpec::default()
        }
    }

    #[test]
    fn grows_while_lagging_and_fast_then_stops_at_max() {
        let mut a = Adaptive::new(&spec());
        for _ in 0..10 {
            let size = a.size();
            a.flushed(size, Duration::from_millis(10), Duration::from_secs(5));
        }
        assert_eq!(a.size(), 10_000);
    }

    #[test]
    fn holds_when_caught_up_or_batches_are_not_full() {
        let mut a = Adaptive::new(&spec());
        a.flushed(1_000, Duration::from_millis(10), Duration::from_millis(10));
        a.flushed(10, Duration::from_millis(10), Duration::from_secs(5));
        assert_eq!(a.size(), 1_000);
    }

    #[test]
    fn shrinks_on_slow_flushes_and_contention_down_to_min() {
        let mut a = Adaptive::new(&spec());
        a.flushed(1_000, Duration::from_secs(3), Duration::from_secs(5));
        assert_eq!(a.size(), 500);
        for _ in 0..10 {
            a.contended();
        }
        assert_eq!(a.size(), 100);
    }
}
