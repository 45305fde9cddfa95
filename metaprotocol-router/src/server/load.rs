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

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::metrics::gauge::Gauge;

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
        };
        load.set_limits(limits);
        load
    }

    /// Applies new limits (a config update).
    pub fn set_limits(&self, limits: &LimitsSpec) {
        let cap = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.max_requests
            .store(cap(limits.max_requests), Ordering::Relaxed);
        self.max_buffered
            .store(cap(limits.max_buffered_bytes), Ordering::Relaxed);
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
        let held = self
            .buffered
            .get()
            .saturating_add(self.request_bytes.get())
            .saturating_add(self.read_buffered.get())
            .saturating_add(unmoved_bytes);
        held < self.max_buffered.load(Ordering::Relaxed)
    }

    /// Whether a connection whose read buffer holds `own` bytes (as last moved) may read more of
    /// a large frame: the frames other connections are receiving, alone, may fill the bound
    /// (they give nothing back until whole, so waiting for them could last until their
    /// `frame_timeout`), or, with the rest the proxy holds (which calls ending and clients
    /// reading give back), leave no room.
    pub fn room_to_read(&self, own: usize) -> ReadRoom {
        let max = self.max_buffered.load(Ordering::Relaxed);
        let others_reading = self
            .read_buffered
            .get()
            .saturating_sub(i64::try_from(own).unwrap_or(i64::MAX));
        if others_reading >= max {
            return ReadRoom::Full;
        }
        let held = others_reading
            .saturating_add(self.buffered.get())
            .saturating_add(self.request_bytes.get());
        if held >= max {
            ReadRoom::Wait
        } else {
            ReadRoom::Free
        }
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
        gauge.inc_by(delta);
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
