//! A counter that only goes up, counted per thread ([`super::cells`]): an increment is a load
//! and a store, not an atomic read-modify-write.

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
}
