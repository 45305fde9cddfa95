//! An unbounded queue between connection tasks: requests to an upstream connection, answers to
//! a downstream one.
//!
//! Each call crosses two queues, and a tokio queue costs about nine atomic read-modify-writes
//! a value: a sender clone and drop (two counts each, the sender count and the allocation's),
//! then a permit, a slot, the slot's ready bit and the receiver's waker on the way in, and the
//! permit again on the way out. Here a value costs the sender a lock and an unlock (the lock
//! holds the values, the receiver's waker and whether it was woken), a clone only the shared
//! allocation's count, and the receiver one lock for every value queued since it last looked:
//! it swaps the queue's values for its own empty buffer and hands them out from there. A
//! sender wakes the receiver only for the first value after the receiver found the queue
//! empty; those that follow before it runs find it woken already.
//!
//! The queue is open until either end closes it ([`Sender::close`], [`Receiver::close`]) or the
//! receiver goes: senders do not count themselves (that would be two more read-modify-writes a
//! clone), and a queue that should close when its last sender goes gives that sender to a
//! [`Closer`] shared by whoever holds it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::Registered;

/// An empty buffer with room for more values than this gives it back: the two buffers a queue
/// swaps keep no more than this after a burst.
const KEPT_CAPACITY: usize = 1024;

/// Makes a queue: its sending end (cloned for each sender) and its receiving end.
pub(crate) fn queue<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            values: VecDeque::new(),
            waker: None,
            woken: false,
            closed: false,
        }),
        news: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        queued: AtomicUsize::new(0),
        taken: AtomicUsize::new(0),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            taken: VecDeque::new(),
            registered: None,
        },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Set when a value arrives or the queue closes, cleared when the receiver takes the
    /// values: read without the lock, so that a receiver polled with nothing new takes none.
    news: AtomicBool,
    /// The state's `closed`, readable without the lock.
    closed: AtomicBool,
    /// How many values the queue holds, stored under the lock.
    queued: AtomicUsize,
    /// How many values the receiver took and has not handed out, stored by the receiver. Two
    /// counts written by one side each: a store, where one count would take an atomic addition
    /// and subtraction a value.
    taken: AtomicUsize,
}

impl<T> Shared<T> {
    fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.taken.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock but a waker: the state is whole either way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Swaps the queue's values for the receiver's (empty) buffer `taken`, under the lock it
    /// returns.
    fn take(&self, taken: &mut VecDeque<T>) -> MutexGuard<'_, State<T>> {
        if taken.capacity() > KEPT_CAPACITY {
            // A burst's room goes (before the lock), rather than staying with an idle queue.
            *taken = VecDeque::new();
        }
        let mut state = self.lock();
        std::mem::swap(&mut state.values, taken);
        self.news.store(false, Ordering::Relaxed);
        self.queued.store(0, Ordering::Relaxed);
        self.taken.store(taken.len(), Ordering::Relaxed);
        state
    }

    /// Closes the queue and wakes the receiver; the values queued can still be taken.
    fn close(&self) {
        let mut state = self.lock();
        self.close_locked(&mut state);
        state.wake();
    }

    /// Marks the queue closed, under its lock `state`.
    fn close_locked(&self, state: &mut State<T>) {
        state.closed = true;
        self.closed.store(true, Ordering::Release);
        self.news.store(true, Ordering::Release);
    }

    /// Says that values arrived, under the lock `state` they were queued under: their count,
    /// the news flag, and the receiver's wake-up if it waits.
    fn arrived(&self, state: &mut State<T>) {
        self.queued.store(state.values.len(), Ordering::Relaxed);
        self.news.store(true, Ordering::Release);
        state.wake();
    }
}

struct State<T> {
    values: VecDeque<T>,
    /// The receiver's waker, stored when it found the queue empty.
    waker: Option<Waker>,
    /// The stored waker was woken since it was stored: the receiver will look again.
    woken: bool,
    closed: bool,
}

impl<T> State<T> {
    fn wake(&mut self) {
        if !self.woken
            && let Some(waker) = &self.waker
        {
            self.woken = true;
            waker.wake_by_ref();
        }
    }
}

/// The sending end of a queue. A clone sends into the same queue.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<T> Sender<T> {
    /// Queues `value`, or gives it back if the queue is closed.
    pub fn send(&self, value: T) -> Result<(), T> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(value);
        }
        state.values.push_back(value);
        self.shared.arrived(&mut state);
        Ok(())
    }

    /// Queues every value in `values` (emptied) under one lock, or drops them if the queue is
    /// closed: returns how many it dropped.
    pub fn send_all(&self, values: &mut Vec<T>) -> usize {
        let mut state = self.shared.lock();
        if state.closed {
            drop(state);
            let dropped = values.len();
            values.clear();
            return dropped;
        }
        state.values.extend(values.drain(..));
        self.shared.arrived(&mut state);
        0
    }

    /// True if `other` sends into the same queue.
    pub fn same_queue(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Values sent and not yet handed out by the receiver.
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// True once the queue is closed (by either end, or its receiver gone).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Closes the queue: sends are refused; the receiver takes what is queued, then `None`.
    pub fn close(&self) {
        self.shared.close();
    }
}

/// A sender that closes its queue when it goes: shared (in an `Arc`) by the holders of a queue
/// that should close once none of them is left.
#[derive(Debug)]
pub(crate) struct Closer<T>(Sender<T>);

impl<T> Closer<T> {
    /// Closes `sender`'s queue when dropped.
    pub fn new(sender: Sender<T>) -> Self {
        Self(sender)
    }
}

impl<T> std::ops::Deref for Closer<T> {
    type Target = Sender<T>;

    fn deref(&self) -> &Sender<T> {
        &self.0
    }
}

impl<T> Drop for Closer<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The receiving end of a queue. It takes every value queued at once, under one lock, and hands
/// them out one by one; polled with its waker stored and nothing new, it looks at one flag.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Values taken from the queue and not yet handed out.
    taken: VecDeque<T>,
    /// The waker the queue holds, while the receiver found it empty.
    registered: Option<Registered>,
}

impl<T> Receiver<T> {
    /// The next value, or `None` once the queue is closed and empty; pending (and the task
    /// woken when a value arrives) otherwise. Inlined: the value is not moved once more on its
    /// way.
    #[inline(always)]
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(value) = self.pop() {
            return Poll::Ready(Some(value));
        }
        // A sender queues, raises `news`, then wakes the stored waker: a queue without news
        // that holds this task's waker has nothing to say, or will wake the task when it does.
        if self.registered.is_some()
            && !self.shared.news.load(Ordering::Acquire)
            && self.registered == Registered::of(cx.waker())
        {
            return Poll::Pending;
        }
        self.registered = None;
        let mut state = self.shared.take(&mut self.taken);
        if self.taken.is_empty() && !state.closed {
            // Stored under the lock that found the queue empty: the next value wakes it.
            let waker = cx.waker();
            match &mut state.waker {
                Some(stored) if stored.will_wake(waker) => {}
                stored => *stored = Some(waker.clone()),
            }
            state.woken = false;
            drop(state);
            self.registered = Registered::of(waker);
            return Poll::Pending;
        }
        drop(state);
        // Empty here only if closed.
        Poll::Ready(self.pop())
    }

    /// The next value if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        // This clears `news` without storing a waker: the next poll must lock, not trust it.
        self.registered = None;
        if self.taken.is_empty() {
            drop(self.shared.take(&mut self.taken));
        }
        self.pop()
    }

    /// Values sent and not yet handed out.
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Takes out every value not yet handed out for which `remove` is true, in order, and
    /// returns them; the others stay queued, in order.
    pub fn remove_where(&mut self, mut remove: impl FnMut(&T) -> bool) -> Vec<T> {
        // As in `try_recv`: the queue's news is cleared without storing a waker.
        self.registered = None;
        {
            let mut state = self.shared.lock();
            self.taken.append(&mut state.values);
            self.shared.news.store(false, Ordering::Relaxed);
            self.shared.queued.store(0, Ordering::Relaxed);
        }
        let mut removed = Vec::new();
        for value in std::mem::take(&mut self.taken) {
            if remove(&value) {
                removed.push(value);
            } else {
                self.taken.push_back(value);
            }
        }
        self.shared.taken.store(self.taken.len(), Ordering::Relaxed);
        removed
    }

    /// The next value taken, if any.
    #[inline(always)]
    fn pop(&mut self) -> Option<T> {
        let value = self.taken.pop_front()?;
        self.shared.taken.store(self.taken.len(), Ordering::Relaxed);
        Some(value)
    }

    /// Refuses further values; those queued can still be taken.
    pub fn close(&mut self) {
        self.shared.close();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Closed first, so that no value arrives after the queue's are taken; both dropped
        // outside the lock (a request's drop answers its waiter through another queue).
        let queued = {
            let mut state = self.shared.lock();
            self.shared.close_locked(&mut state);
            state.waker = None;
            std::mem::take(&mut state.values)
        };
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waiting::tests::waker;

    #[test]
    fn values_removed_from_the_queue_leave_the_rest_in_order() {
        let (tx, mut rx) = queue();
        for value in 0..4 {
            assert!(tx.send(value).is_ok());
        }
        assert_eq!(rx.try_recv(), Some(0));
        for value in 4..8 {
            assert!(tx.send(value).is_ok());
        }
        // Values taken but not handed out (1 to 3) and values still queued (4 to 7) alike.
        assert_eq!(rx.remove_where(|v| v % 2 == 0), vec![2, 4, 6]);
        assert_eq!(rx.len(), 4);
        assert_eq!(tx.len(), 4);
        let (_, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let mut rest = Vec::new();
        while let Poll::Ready(Some(value)) = rx.poll_recv(&mut cx) {
            rest.push(value);
        }
        assert_eq!(rest, vec![1, 3, 5, 7]);
        assert!(tx.send(8).is_ok());
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(8)));
    }

    #[test]
    fn a_receiver_found_empty_is_woken_once_for_the_values_that_follow() {
        let (tx, mut rx) = queue();
        let (wakes, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        // Looked at, not locked: still pending, nothing lost.
        assert!(rx.poll_recv(&mut cx).is_pending());
        for value in 1..=3 {
            assert!(tx.send(value).is_ok());
        }
        assert_eq!(wakes.count(), 1, "one wake-up for three values");
        for value in 1..=3 {
            assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(value)));
        }
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert!(tx.send(4).is_ok());
        assert_eq!(
            wakes.count(),
            2,
            "found empty again: the next value wakes it"
        );
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(4)));
    }

    #[test]
    fn the_length_counts_values_until_the_receiver_hands_them_out() {
        let (tx, mut rx) = queue();
        let (_, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        for value in 0..3 {
            assert!(tx.send(value).is_ok());
        }
        assert_eq!(tx.len(), 3);
        // The first poll takes all three; two are still to hand out.
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(0)));
        assert_eq!((tx.len(), rx.len()), (2, 2));
        assert!(tx.send(3).is_ok());
        assert_eq!(tx.len(), 3);
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(tx.len(), 0);
    }

    #[test]
    fn a_burst_leaves_no_more_room_than_kept_once_the_queue_is_empty() {
        let (tx, mut rx) = queue();
        let (_, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        for value in 0..5 * KEPT_CAPACITY {
            assert!(tx.send(value).is_ok());
        }
        for value in 0..5 * KEPT_CAPACITY {
            assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(value)));
        }
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert!(rx.taken.capacity() <= KEPT_CAPACITY);
        assert!(rx.shared.lock().values.capacity() <= KEPT_CAPACITY);
    }

    #[test]
    fn a_receiver_polled_by_another_waker_stores_that_waker() {
        let (tx, mut rx) = queue();
        let (first, first_waker) = waker();
        let (second, second_waker) = waker();
        assert!(
            rx.poll_recv(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            rx.poll_recv(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        assert!(tx.send(1).is_ok());
        assert_eq!(first.count(), 0);
        assert_eq!(second.count(), 1);
    }

    #[test]
    fn a_closed_queue_refuses_values_and_hands_out_those_queued_before() {
        let (tx, mut rx) = queue();
        let (wakes, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(tx.send(1).is_ok());
        assert!(rx.poll_recv(&mut cx).is_ready());
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert!(tx.send(2).is_ok());
        tx.close();
        assert!(tx.is_closed());
        assert_eq!(tx.send(3), Err(3));
        assert_eq!(
            wakes.count(),
            1,
            "the close found the receiver woken already"
        );
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn closing_wakes_a_waiting_receiver() {
        let (tx, mut rx) = queue::<u32>();
        let (wakes, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        rx.close();
        assert_eq!(wakes.count(), 1);
        assert!(tx.is_closed());
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn the_last_closer_closes_the_queue() {
        let (tx, mut rx) = queue();
        let closer = Arc::new(Closer::new(tx));
        let other = closer.clone();
        assert!(closer.send(1).is_ok());
        drop(closer);
        assert!(!other.is_closed());
        assert!(other.send(2).is_ok());
        drop(other);
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        let (_, waker) = waker();
        assert_eq!(
            rx.poll_recv(&mut Context::from_waker(&waker)),
            Poll::Ready(None)
        );
    }

    #[test]
    fn a_dropped_receiver_closes_the_queue_and_drops_what_it_held() {
        let (tx, rx) = queue();
        let value = Arc::new(());
        assert!(tx.send(value.clone()).is_ok());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "the queued value went with it"
        );
        assert!(tx.send(value).is_err());
    }

    #[test]
    fn values_from_many_threads_all_arrive_each_thread_in_its_order() {
        const THREADS: u64 = 4;
        const EACH: u64 = 20_000;
        let (tx, mut rx) = queue();
        let senders: Vec<_> = (0..THREADS)
            .map(|thread| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        assert!(tx.send((thread, n)).is_ok());
                    }
                })
            })
            .collect();
        let (_, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let mut next = [0; THREADS as usize];
        let mut received = 0;
        while received < THREADS * EACH {
            match rx.poll_recv(&mut cx) {
                Poll::Ready(Some((thread, n))) => {
                    assert_eq!(next[thread as usize], n, "thread {thread} out of order");
                    next[thread as usize] += 1;
                    received += 1;
                }
                Poll::Ready(None) => panic!("closed while open"),
                Poll::Pending => std::thread::yield_now(),
            }
        }
        for sender in senders {
            assert!(sender.join().is_ok());
        }
        assert_eq!(rx.try_recv(), None);
    }
}
