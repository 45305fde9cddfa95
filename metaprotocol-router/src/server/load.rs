//! The proxy-wide load: requests in flight and bytes of answers waiting for clients, across
//! every connection of every listener, checked against the config's `limits`.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::metrics::gauge::Gauge;

use crate::config::LimitsSpec;
use crate::stats::MetricsScope;

/// Counts shared by every connection; each is also a gauge operators can watch.
#[derive(Debug)]
pub(crate) struct Load {
    requests: Gauge,
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

    /// True if a new request may be taken on.
    pub fn admits(&self) -> bool {
        self.requests.get() < self.max_requests.load(Ordering::Relaxed)
            && self.buffered.get() < self.max_buffered.load(Ordering::Relaxed)
    }

    pub fn request_started(&self) {
        self.requests.inc();
    }

    pub fn request_ended(&self) {
        self.requests.dec();
    }

    /// Moves a connection's share of waiting bytes from `before` to `now`.
    pub fn buffered(&self, before: usize, now: usize) {
        let delta =
            i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
        if delta != 0 {
            self.buffered.inc_by(delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Metrics;

    #[test]
    fn past_either_limit_nothing_new_is_admitted() {
        let load = Load::new(
            &Metrics::new().root(),
            &LimitsSpec {
                max_requests: 2,
                max_buffered_bytes: 100,
            },
        );
        load.request_started();
        assert!(load.admits());
        load.request_started();
        assert!(!load.admits(), "two in flight");
        load.request_ended();
        load.buffered(0, 100);
        assert!(!load.admits(), "100 bytes waiting");
        load.buffered(100, 40);
        assert!(load.admits());
    }
}
