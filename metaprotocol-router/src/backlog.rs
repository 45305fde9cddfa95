//! The room left in a bounded queue whose channel does not say (the access log's and the span
//! exporter's), so that the request path asks before it builds what it would queue: when the
//! queue is full, a request pays one atomic load and a dropped counter, not the capture of a
//! line or a span that would then be thrown away.
//!
//! Producers take places before they queue; the consumer gives them back as it takes items off
//! the queue, and a producer gives back a place it did not use. The count is therefore never
//! below what the channel holds, so a channel of the same capacity never refuses a producer
//! that holds a place.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The places taken in a queue of a fixed capacity.
#[derive(Debug)]
pub(crate) struct Backlog {
    taken: AtomicUsize,
    capacity: usize,
}

impl Backlog {
    /// An empty queue of `capacity` places.
    pub fn new(capacity: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Takes `places` places, all or none; false (nothing taken) when they are not free.
    pub fn take(&self, places: usize) -> bool {
        // A full queue is seen with a load, without writing the shared count.
        if self.taken.load(Ordering::Relaxed) + places > self.capacity {
            return false;
        }
        let before = self.taken.fetch_add(places, Ordering::Relaxed);
        if before + places > self.capacity {
            self.give_back(places);
            return false;
        }
        true
    }

    /// Gives back `places` places: items the consumer took off the queue, or places a producer
    /// did not use.
    pub fn give_back(&self, places: usize) {
        self.taken.fetch_sub(places, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_up_to_the_capacity_and_given_back() {
        let backlog = Backlog::new(3);
        assert!(backlog.take(2));
        assert!(!backlog.take(2), "all or none");
        assert!(backlog.take(1));
        assert!(!backlog.take(1), "full");
        backlog.give_back(2);
        assert!(backlog.take(2));
        assert!(!backlog.take(1));
    }

    #[test]
    fn concurrent_producers_never_take_more_than_the_capacity() {
        let backlog = Backlog::new(100);
        let taken: usize = std::thread::scope(|scope| {
            let producers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..1000).filter(|_| backlog.take(1)).count()))
                .collect();
            producers.into_iter().filter_map(|p| p.join().ok()).sum()
        });
        assert_eq!(taken, 100);
    }
}
