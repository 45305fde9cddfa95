//! Exponential backoff with jitter after connect failures, per endpoint: a dead endpoint costs a
//! probe every few seconds, not thousands of connect attempts per second. The same backs off
//! replacing connections whose upstream goes away before it answers anything, and opening
//! connections after the upstream closed one right after refusing the proxy's credentials.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The pause after the first failure; it doubles with each further failure.
const BASE: Duration = Duration::from_millis(100);
/// The longest pause.
const MAX: Duration = Duration::from_secs(5);

/// An endpoint's connect failures and when it may be tried again. Lock-free: picks read it on
/// every request.
#[derive(Debug)]
pub(crate) struct ConnectBackoff {
    epoch: Instant,
    failures: AtomicU32,
    /// Nanoseconds after `epoch` before which no connection is attempted.
    retry_at: AtomicU64,
}

impl ConnectBackoff {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            retry_at: AtomicU64::new(0),
        }
    }

    /// True while the endpoint is backing off.
    pub fn active(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
            && self.nanos_since_epoch() < self.retry_at.load(Ordering::Relaxed)
    }

    /// Consecutive connect failures so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records a failed connect and schedules the next attempt. A failure while the endpoint
    /// already backs off is of a connect that began before the pause (no connect begins during
    /// one): connects of several slots or workers that fail together in one outage step the
    /// pause once, not once each (eight of them took the first pause from 100 ms to 5 s).
    pub fn failed(&self) {
        if self.active() {
            return;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let exponent = failures.saturating_sub(1).min(16);
        let pause = BASE.saturating_mul(1 << exponent).min(MAX);
        // Full jitter in the upper half: many proxies that lost one endpoint do not probe it in
        // lockstep.
        let pause_ns = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
        let jittered = pause_ns / 2 + fastrand::u64(..=pause_ns / 2);
        self.retry_at.store(
            self.nanos_since_epoch().saturating_add(jittered),
            Ordering::Relaxed,
        );
    }

    /// Records a successful connect: the endpoint is healthy again.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.retry_at.store(0, Ordering::Relaxed);
    }

    fn nanos_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backs_off_exponentially_and_recovers() {
        let backoff = ConnectBackoff::new();
        assert!(!backoff.active());
        backoff.failed();
        assert!(backoff.active());
        tokio::time::advance(BASE).await;
        assert!(!backoff.active(), "the first pause is at most BASE");
        for _ in 0..10 {
            backoff.failed();
            tokio::time::advance(MAX).await;
        }
        backoff.failed();
        tokio::time::advance(MAX / 2 - Duration::from_millis(1)).await;
        assert!(backoff.active(), "later pauses are at least MAX / 2");
        tokio::time::advance(MAX).await;
        assert!(!backoff.active(), "no pause is longer than MAX");
        backoff.failed();
        backoff.succeeded();
        assert!(!backoff.active());
        assert_eq!(backoff.failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn connects_that_fail_together_step_the_pause_once() {
        let backoff = ConnectBackoff::new();
        // The connects of eight slots to an endpoint that just went down.
        for _ in 0..8 {
            backoff.failed();
        }
        assert_eq!(backoff.failures(), 1);
        tokio::time::advance(BASE).await;
        assert!(!backoff.active(), "the first pause, not the eighth");
        backoff.failed();
        assert_eq!(
            backoff.failures(),
            2,
            "the next connect after the pause steps it"
        );
    }
}
