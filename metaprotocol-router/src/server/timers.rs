//! The timers of one connection's requests (deadlines, per-try timeouts, retry pauses): a heap
//! under one timer.
//!
//! Why not tokio-util's `DelayQueue`: inserting into and removing from its hierarchical wheel
//! cost about 1,600 instructions per request, more than routing it. Here arming a timer is a
//! heap push (constant time when deadlines arrive in order, as one route's do) and cancelling
//! one costs nothing: its owner forgets the timer's id, and the entry is dropped unseen when it
//! comes due, or earlier, when cancelled entries make up half the heap ([`Timers::compact`]).
//! The one timer is armed at the earliest entry and moved only when that changes.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::task::{Context, Poll, ready};

use tokio::time::Instant;

use crate::waiting::Timer;

/// Cancelled entries tolerated before a compaction is considered: compacting a small heap
/// often would cost more than the entries it drops.
const COMPACT_AFTER: usize = 32;

/// Names one armed timer. Its owner keeps the id to recognize the timer when it fires: a
/// timer whose id the owner no longer holds was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TimerId(u64);

/// A timer that came due.
pub(super) struct Expired<T> {
    pub id: TimerId,
    pub what: T,
}

struct Entry<T> {
    at: Instant,
    id: TimerId,
    what: T,
}

impl<T> Entry<T> {
    /// Earlier deadlines first; among equal deadlines, the timer armed first.
    fn order(&self) -> (Instant, u64) {
        (self.at, self.id.0)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.order() == other.order()
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order().cmp(&other.order())
    }
}

/// Timers carrying a `T` each (what the timer is for).
pub(super) struct Timers<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    next_id: u64,
    /// Timers cancelled since the last compaction (some may have come due since).
    cancelled: usize,
    timer: Timer,
    /// The deadline `timer` is set to.
    armed: Option<Instant>,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_id: 0,
            cancelled: 0,
            timer: Timer::at(Instant::now()),
            armed: None,
        }
    }
}

impl<T> Timers<T> {
    /// Arms a timer for `at`. The caller polls [`Timers::poll_expired`] afterwards, before
    /// it waits: that is where the timer moves to an earlier deadline.
    pub fn insert(&mut self, what: T, at: Instant) -> TimerId {
        self.next_id += 1;
        let id = TimerId(self.next_id);
        self.heap.push(Reverse(Entry { at, id, what }));
        id
    }

    /// Notes that the owner forgot a timer it armed (it will ignore it when it fires). True
    /// when cancelled entries make up half the heap: time to [`Timers::compact`].
    pub fn cancel(&mut self) -> bool {
        self.cancelled += 1;
        self.cancelled >= COMPACT_AFTER && self.cancelled * 2 >= self.heap.len()
    }

    /// Drops every entry `wanted` says the owner forgot. Compactions are at least
    /// `COMPACT_AFTER` cancellations apart and each scans fewer than twice as many entries as
    /// were cancelled since the last: constant time per timer, amortized.
    pub fn compact(&mut self, mut wanted: impl FnMut(TimerId, &T) -> bool) {
        self.heap
            .retain(|Reverse(entry)| wanted(entry.id, &entry.what));
        self.cancelled = 0;
    }

    /// The next timer due, cancelled or not, once its deadline passed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired<T>> {
        let Some(Reverse(head)) = self.heap.peek() else {
            return Poll::Pending;
        };
        if self.armed != Some(head.at) {
            self.timer.reset(head.at);
            self.armed = Some(head.at);
        }
        ready!(self.timer.poll(cx));
        match self.heap.pop() {
            Some(Reverse(Entry { id, what, .. })) => Poll::Ready(Expired { id, what }),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    async fn next(timers: &mut Timers<&'static str>) -> (TimerId, &'static str) {
        let expired = poll_fn(|cx| timers.poll_expired(cx)).await;
        (expired.id, expired.what)
    }

    #[tokio::test(start_paused = true)]
    async fn timers_fire_in_deadline_order_then_arming_order() {
        let start = Instant::now();
        let mut timers = Timers::default();
        let late = timers.insert("late", start + Duration::from_secs(3));
        let early = timers.insert("early", start + Duration::from_secs(1));
        let tie = timers.insert("tie", start + Duration::from_secs(3));
        assert_eq!(next(&mut timers).await, (early, "early"));
        assert_eq!(Instant::now(), start + Duration::from_secs(1));
        assert_eq!(next(&mut timers).await, (late, "late"));
        assert_eq!(next(&mut timers).await, (tie, "tie"));
        assert_eq!(Instant::now(), start + Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_timer_armed_while_waiting_moves_the_sleep() {
        let start = Instant::now();
        let mut timers = Timers::default();
        timers.insert("late", start + Duration::from_secs(10));
        let waker = futures::task::noop_waker();
        assert!(
            timers
                .poll_expired(&mut Context::from_waker(&waker))
                .is_pending()
        );
        timers.insert("soon", start + Duration::from_secs(1));
        assert_eq!(next(&mut timers).await.1, "soon");
        assert_eq!(Instant::now(), start + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn compaction_drops_what_the_owner_forgot_and_keeps_the_rest() {
        let start = Instant::now();
        let mut timers = Timers::default();
        let mut kept = Vec::new();
        let mut compacted = false;
        for n in 0..200u64 {
            let id = timers.insert("t", start + Duration::from_secs(n + 1));
            if n % 10 == 0 {
                kept.push(id);
            } else if timers.cancel() {
                timers.compact(|id, _| kept.contains(&id));
                compacted = true;
            }
        }
        assert!(compacted);
        // Every cancelled entry armed before the last compaction is gone.
        assert!(timers.heap.len() < 200 - 180 + COMPACT_AFTER * 2);
        for id in kept {
            loop {
                let (fired, _) = next(&mut timers).await;
                if fired == id {
                    break;
                }
            }
        }
    }
}
