//! The proxy-wide load: requests in flight, the bytes of their frames (held until each ends,
//! for a retry), the bytes read from clients not yet decoded (frames partly received) and the
//! bytes of answers waiting for clients, across every connection of every listener, checked
//! against the config's `limits`: the requests against `max_requests`, the three kinds of bytes
//! together against `max_buffered_bytes`.
//!
//! Each connection moves its share of each count once per pass over its work, not once per
//! request: a request started and another finished in the same pass write the shared counts
//! not at all, where they used to cost two atomic writes every worker contends for. While a
//! pass runs, the connection judges new requests on the shared counts plus its own share not
//! yet moved; other connections see the share at the end of the pass, before the connection's
//! task waits again.
//!
//! A connection whose large frame waits for room ([`ReadRoom::Wait`]) sleeps until a share of
//! bytes goes down or the bound is raised ([`Load::wait_for_room`]): the pass that gives bytes
//! back in all (its shares together went down) reads one more shared count (the connections
//! waiting), and wakes them only if there are any; a pass that gives nothing back, and the
//! calls themselves, pay nothing for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, futures::OwnedNotified};

use crate::config::LimitsSpec;
use crate::stats::MetricsScope;

/// Counts shared by every connection; each is also a gauge operators can watch.
#[derive(Debug)]
pub(crate) struct Load {
    requests: Gauge,
    /// The bytes of the frames of the requests in flight.
    request_bytes: Gauge,
    /// The bytes read from clients and not yet decoded.
    read_buffered: Gauge,
    /// The bytes of answers waiting for clients.
    buffered: Gauge,
    max_requests: AtomicI64,
    max_buffered: AtomicI64,
    /// The connections whose large frame waits for room ([`RoomWait`]s alive).
    waiting: AtomicUsize,
    /// Wakes them when bytes are given back or the bound is raised.
    room: Arc<Notify>,
}

impl Load {
    pub fn new(scope: &MetricsScope, limits: &LimitsSpec) -> Self {
        let load = Self {
            requests: scope.gauge(
                "requests_in_flight",
                "Requests in flight across every client connection",
            ),
            request_bytes: scope.gauge(
                "requests_in_flight_bytes",
                "Bytes of the frames of requests in flight across every client connection, held until each ends",
            ),
            read_buffered: scope.gauge(
                "read_buffered_bytes",
                "Bytes read from clients not yet decoded: frames partly received, and whole ones waiting for their connection to take more calls",
            ),
            buffered: scope.gauge(
                "buffered_bytes",
                "Bytes of answers waiting to be written to clients",
            ),
            max_requests: AtomicI64::new(0),
            max_buffered: AtomicI64::new(0),
            waiting: AtomicUsize::new(0),
            room: Arc::new(Notify::new()),
        };
        load.set_limits(limits);
        load
    }

    /// Applies new limits (a config update): the connections waiting for room look again.
    pub fn set_limits(&self, limits: &LimitsSpec) {
        let cap = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.max_requests
            .store(cap(limits.max_requests), Ordering::Relaxed);
        self.max_buffered
            .store(cap(limits.max_buffered_bytes), Ordering::SeqCst);
        self.gave_back();
    }

    /// True if a new request may be taken on by a connection with `unmoved` requests in flight,
    /// and `unmoved_bytes` held (their frames, and its bytes read not yet decoded), not yet
    /// moved into the shared counts (negative: that many ended, or were decoded, since).
    pub fn admits(&self, unmoved: i64, unmoved_bytes: i64) -> bool {
        self.requests.get().saturating_add(unmoved) < self.max_requests.load(Ordering::Relaxed)
            && self.holds_room(unmoved_bytes)
    }

    /// True while the bytes held for clients, with a connection's `unmoved_bytes` not yet
    /// moved into the shared counts, are under `max_buffered_bytes`.
    fn holds_room(&self, unmoved_bytes: i64) -> bool {
        self.room_left(unmoved_bytes) > 0
    }

    /// Whether a connection whose read buffer holds `own` bytes (as last moved) may read more of
    /// a large frame: the frames other connections are receiving, alone, may fill the bound
    /// (they give nothing back until whole, so waiting for them could last until their
    /// `frame_timeout`), or, with the rest the proxy holds (which calls ending and clients
    /// reading give back), leave no room.
    pub fn room_to_read(&self, own: usize) -> ReadRoom {
        // In the one order of every connection's moves and registrations (see
        // `Load::wait_for_room`).
        let bytes = |gauge: &Gauge| gauge.inner().load(Ordering::SeqCst);
        let max = self.max_buffered.load(Ordering::SeqCst);
        let others_reading =
            bytes(&self.read_buffered).saturating_sub(i64::try_from(own).unwrap_or(i64::MAX));
        if others_reading >= max {
            return ReadRoom::Full;
        }
        let held = others_reading
            .saturating_add(bytes(&self.buffered))
            .saturating_add(bytes(&self.request_bytes));
        if held >= max {
            ReadRoom::Wait
        } else {
            ReadRoom::Free
        }
    }

    /// The bytes left under `max_buffered_bytes`, counting what a connection holds and has not
    /// moved into the shared counts, `unmoved_bytes` (negative: it gave back that many since);
    /// 0 past it.
    pub fn room_left(&self, unmoved_bytes: i64) -> usize {
        let held = self
            .buffered
            .get()
            .saturating_add(self.request_bytes.get())
            .saturating_add(self.read_buffered.get())
            .saturating_add(unmoved_bytes);
        let left = self
            .max_buffered
            .load(Ordering::Relaxed)
            .saturating_sub(held);
        usize::try_from(left).unwrap_or(0)
    }

    /// Moves a connection's share of requests in flight from `before` to `now`.
    pub fn requests(&self, before: usize, now: usize) {
        shift(&self.requests, before, now);
    }

    /// Moves a connection's share of the bytes of requests' frames from `before` to `now`.
    pub fn request_bytes(&self, before: usize, now: usize) {
        shift(&self.request_bytes, before, now);
    }

    /// Moves a connection's share of bytes read and not yet decoded from `before` to `now`.
    pub fn read_buffered(&self, before: usize, now: usize) {
        shift(&self.read_buffered, before, now);
    }

    /// Moves a connection's share of waiting bytes from `before` to `now`.
    pub fn buffered(&self, before: usize, now: usize) {
        shift(&self.buffered, before, now);
    }

    /// Wakes the connections waiting for room, if any: a connection's moves of a pass left
    /// fewer bytes counted in all (it gave bytes back), or the bound was raised. A connection
    /// judges its pass as a whole, after its moves, not each share that went down: a frame
    /// decoded moves its bytes from those read to those in flight, and an answer taken from
    /// upstream turns the bytes of its call's frame into the answer's, giving nothing back, and
    /// waking every waiting connection on each would wake them all on most passes of every
    /// busy connection, for nothing, when the proxy is shortest of CPU.
    pub fn gave_back(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Registers a connection whose large frame waits for room: the returned wait ends when
    /// bytes are given back or the bound is raised, from now on. The connection looks at the
    /// room again once registered ([`Load::room_to_read`]), and sleeps on the wait only if
    /// there is still none: every count moves, registrations and looks at them are in one
    /// order (sequentially consistent), so either its look sees bytes given back, or the
    /// connection that gave them back sees it waiting, and wakes it.
    pub fn wait_for_room(self: &Arc<Self>) -> RoomWait {
        let given_back = Box::pin(Arc::clone(&self.room).notified_owned());
        self.waiting.fetch_add(1, Ordering::SeqCst);
        RoomWait {
            given_back,
            load: Arc::clone(self),
        }
    }
}

/// A connection's wait for room under `max_buffered_bytes` ([`Load::wait_for_room`]); it
/// counts among the connections waiting while it lives.
pub(crate) struct RoomWait {
    given_back: Pin<Box<OwnedNotified>>,
    load: Arc<Load>,
}

impl RoomWait {
    /// Ready once bytes were given back, or the bound raised, since the wait was made.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.given_back.as_mut().poll(cx)
    }
}

impl Drop for RoomWait {
    fn drop(&mut self) {
        self.load.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`Load::room_to_read`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadRoom {
    /// The bytes held, but for the connection's own, are under `max_buffered_bytes`.
    Free,
    /// They are not, but the frames other connections are receiving alone are under it.
    Wait,
    /// Those frames alone are not.
    Full,
}

/// Moves a share of `gauge` from `before` to `now`; no write when it did not change.
fn shift(gauge: &Gauge, before: usize, now: usize) {
    let delta = difference(now, before);
    if delta != 0 {
        // Sequentially consistent for `Load::wait_for_room` (the same instruction as a relaxed
        // add on x86).
        gauge.inner().fetch_add(delta, Ordering::SeqCst);
    }
}

/// `now - before`, signed.
pub(crate) fn difference(now: usize, before: usize) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Metrics;

    #[test]
    fn a_wait_for_room_ends_when_bytes_are_given_back_or_the_bound_is_raised() {
        let metrics = Metrics::new();
        let limits = |max_buffered_bytes| LimitsSpec {
            max_requests: 100,
            max_buffered_bytes,
        };
        let load = Arc::new(Load::new(&metrics.root(), &limits(100)));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        load.request_bytes(0, 100);
        let mut wait = load.wait_for_room();
        assert!(wait.poll(&mut cx).is_pending());
        load.request_bytes(100, 100);
        load.buffered(0, 10);
        assert!(wait.poll(&mut cx).is_pending(), "nothing given back");
        load.request_bytes(100, 50);
        load.read_buffered(0, 50);
        assert!(
            wait.poll(&mut cx).is_pending(),
            "moves alone wake no one: 50 bytes moved from one share to another, nothing given back"
        );
        load.read_buffered(50, 0);
        load.gave_back();
        assert!(wait.poll(&mut cx).is_ready(), "50 bytes given back");
        wait = load.wait_for_room();
        load.set_limits(&limits(1000));
        assert!(wait.poll(&mut cx).is_ready(), "the bound raised");
        assert_eq!(load.waiting.load(Ordering::SeqCst), 1);
        drop(wait);
        assert_eq!(load.waiting.load(Ordering::SeqCst), 0, "no wait left");
    }

    #[test]
    fn past_either_limit_nothing_new_is_admitted() {
        let metrics = Metrics::new();
        let load = Load::new(
            &metrics.root(),
            &LimitsSpec {
                max_requests: 2,
                max_buffered_bytes: 100,
            },
        );
        load.requests(0, 1);
        assert!(load.admits(0, 0));
        assert!(!load.admits(1, 0), "one moved, one not yet");
        load.requests(1, 2);
        assert!(!load.admits(0, 0), "two in flight");
        assert!(load.admits(-1, 0), "one of them ended, not yet moved");
        load.requests(2, 1);
        load.buffered(0, 100);
        assert!(!load.admits(0, 0), "100 bytes waiting");
        load.buffered(100, 40);
        assert!(load.admits(0, 0));
        load.requests(1, 0);
        load.buffered(40, 0);
        let text = metrics.render();
        assert!(text.contains("metaprotocol_requests_in_flight 0"), "{text}");
    }

    #[test]
    fn the_frames_of_requests_in_flight_count_with_the_answers_waiting() {
        let metrics = Metrics::new();
        let load = Load::new(
            &metrics.root(),
            &LimitsSpec {
                max_requests: 100,
                max_buffered_bytes: 100,
            },
        );
        load.request_bytes(0, 60);
        assert!(load.admits(0, 0));
        assert!(!load.admits(0, 40), "60 moved, 40 not yet");
        load.buffered(0, 40);
        assert!(!load.admits(0, 0), "60 bytes of requests and 40 of answers");
        assert!(load.admits(0, -1), "a byte of them ended, not yet moved");
        load.request_bytes(60, 0);
        assert!(load.admits(0, 0));
        load.read_buffered(0, 60);
        assert!(
            !load.admits(0, 0),
            "60 bytes read not yet decoded and 40 of answers"
        );
        assert_eq!(load.room_to_read(60), ReadRoom::Free, "its own 60");
        assert_eq!(load.room_to_read(0), ReadRoom::Wait, "another's 60");
        load.read_buffered(0, 40);
        assert_eq!(load.room_to_read(0), ReadRoom::Full, "others' 100");
        load.read_buffered(100, 0);
        load.buffered(40, 0);
        let text = metrics.render();
        assert!(
            text.contains("metaprotocol_requests_in_flight_bytes 0")
                && text.contains("metaprotocol_read_buffered_bytes 0"),
            "{text}"
        );
    }
}
