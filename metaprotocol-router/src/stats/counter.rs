//! Counts kept per thread ([`super::cells`]): an increment is a load and a store, not an atomic
//! read-modify-write. A [`Counter`] only goes up; an [`UpDownCounter`] also goes down, for a
//! level (requests in flight) that only a scrape reads.

use std::sync::Arc;

use super::cells::Cells;

/// A monotonic count (exposed as a Prometheus counter). Cheap to clone; clones share the count.
#[derive(Clone, Debug)]
pub struct Counter {
    cells: Arc<Cells>,
}

impl Default for Counter {
    /// A counter at 0, registered nowhere.
    fn default() -> Self {
        Self {
            cells: Arc::new(Cells::new(1)),
        }
    }
}

impl Counter {
    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `amount`.
    #[inline]
    pub fn inc_by(&self, amount: u64) {
        self.cells.add([(0, amount)]);
    }

    /// The count so far, summed over every thread that counted.
    pub fn get(&self) -> u64 {
        self.cells.get(0)
    }
}

/// A level that goes up and down (exposed as a Prometheus gauge), kept in per-thread cells like a
/// [`Counter`]: for levels the engine moves on the request path and never reads for a decision
/// (reading one sums every thread's cells). Cheap to clone; clones share the level.
#[derive(Clone, Debug)]
pub struct UpDownCounter {
    cells: Arc<Cells>,
}

impl Default for UpDownCounter {
    /// A level at 0, registered nowhere.
    fn default() -> Self {
        Self {
            cells: Arc::new(Cells::new(1)),
        }
    }
}

impl UpDownCounter {
    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.cells.add([(0, 1)]);
    }

    /// Takes 1 away (on whatever thread: the cells' sum wraps, so one thread's count may go
    /// below zero while the sum is right).
    #[inline]
    pub fn dec(&self) {
        self.cells.add([(0, u64::MAX)]);
    }

    /// Takes `amount` away.
    #[inline]
    pub fn dec_by(&self, amount: u64) {
        self.cells.add([(0, amount.wrapping_neg())]);
    }

    /// The level, summed over every thread.
    pub fn get(&self) -> i64 {
        // Two's complement: the wrapped sum read as signed.
        self.cells.get(0) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_count_together_across_threads() {
        let counter = Counter::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let counter = counter.clone();
                scope.spawn(move || {
                    for _ in 0..1_000 {
                        counter.inc();
                    }
                    counter.inc_by(10);
                });
            }
        });
        assert_eq!(counter.get(), 4_040);
        assert_eq!(Counter::default().get(), 0);
    }

    #[test]
    fn a_level_raised_on_one_thread_and_lowered_on_another_sums_right() {
        let level = UpDownCounter::default();
        let raiser = level.clone();
        std::thread::spawn(move || {
            for _ in 0..100 {
                raiser.inc();
            }
        })
        .join()
        .ok();
        for _ in 0..70 {
            level.dec();
        }
        assert_eq!(level.get(), 30);
        level.dec_by(40);
        assert_eq!(level.get(), -10, "a level below zero reads as negative");
    }
}
