//! How the Redis server's clock stands against this host's, learned from the checks' answers,
//! so that a check can say when, on the server's clock, the proxy stops waiting for it.
//!
//! Each answer carries the server's time when it ran the check. That time less this host's
//! when the check was sent is the clocks' offset plus the check's way there (its network trip
//! and its wait in the server's queue), never less than the offset: so the smallest such sample
//! is the best estimate, and one on the late side (a check is then taken as fresh a little
//! longer, and counted: the safe way). Samples are kept in windows of [`WINDOW`], the estimate
//! being the smallest of this window and the last, so that it follows clocks that drift apart.
//! A clock that jumps shows as a fresh check the server took as stale; the caller then starts
//! over from that check's sample ([`ClockOffset::restart`]), so a jump costs one uncounted
//! check, not a window of them.
//!
//! Every check reads the estimate and most samples change nothing (they are not the window's
//! smallest): both take no lock, only atomic loads. The lock serializes the rare changes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long samples count towards the estimate (between one and two windows).
const WINDOW: Duration = Duration::from_secs(10);

/// No sample, in the atomics (a sample this large is a saturated one, taken as none).
const NONE: i64 = i64::MAX;

/// The offset of a server's clock from this host's, in microseconds.
#[derive(Debug)]
pub(super) struct ClockOffset {
    /// What the window starts below count from.
    origin: Instant,
    /// The estimate ([`NONE`] before any sample), published by each change of `windows`.
    estimate: AtomicI64,
    /// The current window's smallest sample ([`NONE`] before any) and its start (µs since
    /// `origin`), published too: a sample no smaller, in the window, changes nothing. Read
    /// apart from each other, a sample may race a change and be missed: the estimate then errs
    /// late, the safe way.
    current: AtomicI64,
    started_us: AtomicU64,
    windows: Mutex<Windows>,
}

impl Default for ClockOffset {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            estimate: AtomicI64::new(NONE),
            current: AtomicI64::new(NONE),
            started_us: AtomicU64::new(0),
            windows: Mutex::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Windows {
    /// When the current window started; `None` before the first sample.
    started: Option<Instant>,
    /// The smallest sample of the current window.
    current: Option<i64>,
    /// The smallest sample of the window before.
    previous: Option<i64>,
}

impl ClockOffset {
    /// The server's clock less this host's, at most; `None` before any answer.
    pub fn estimate(&self) -> Option<i64> {
        Some(self.estimate.load(Ordering::Acquire)).filter(|estimate| *estimate != NONE)
    }

    /// Takes in `sample`: the server's time when it ran a check, less this host's when the
    /// check was sent.
    pub fn observe(&self, sample: i64, now: Instant) {
        let current = self.current.load(Ordering::Acquire);
        let started = self.started_us.load(Ordering::Acquire);
        let in_window =
            Duration::from_micros(self.micros_since_origin(now).saturating_sub(started)) < WINDOW;
        if current != NONE && sample >= current && in_window {
            return;
        }
        let mut windows = self.lock();
        match windows.started {
            Some(started) if now.saturating_duration_since(started) < WINDOW => {}
            _ => {
                windows.previous = windows.current.take();
                windows.started = Some(now);
            }
        }
        windows.current = Some(windows.current.map_or(sample, |c| c.min(sample)));
        self.publish(&windows);
    }

    /// Forgets every sample but `sample`: the clocks moved against each other.
    pub fn restart(&self, sample: i64, now: Instant) {
        let mut windows = self.lock();
        *windows = Windows {
            started: Some(now),
            current: Some(sample),
            previous: None,
        };
        self.publish(&windows);
    }

    /// Makes `windows` (just changed, still locked) what the lock-free readers see.
    fn publish(&self, windows: &Windows) {
        let estimate = match (windows.current, windows.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let started = windows
            .started
            .map_or(0, |started| self.micros_since_origin(started));
        self.started_us.store(started, Ordering::Release);
        self.current
            .store(windows.current.unwrap_or(NONE), Ordering::Release);
        self.estimate
            .store(estimate.unwrap_or(NONE), Ordering::Release);
    }

    fn micros_since_origin(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        match self.windows.lock() {
            Ok(windows) => windows,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// This host's clock, in microseconds since the Unix epoch (0 for a clock set before it).
pub(super) fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_the_smallest_recent_sample() {
        let clock = ClockOffset::default();
        let start = Instant::now();
        assert_eq!(clock.estimate(), None);
        clock.observe(500, start);
        clock.observe(300, start + Duration::from_secs(1));
        clock.observe(900, start + Duration::from_secs(2));
        assert_eq!(clock.estimate(), Some(300));
        // The next window keeps the last one's smallest until it is over too.
        clock.observe(700, start + WINDOW);
        assert_eq!(clock.estimate(), Some(300));
        clock.observe(800, start + WINDOW * 2);
        assert_eq!(clock.estimate(), Some(700));
        // A jump starts over from the sample that showed it.
        clock.restart(5_000_000, start + WINDOW * 2);
        assert_eq!(clock.estimate(), Some(5_000_000));
    }

    /// Each check read the estimate and took in its sample under one lock shared by every
    /// check on the connection, on every thread: one that changes nothing (most) takes none.
    #[test]
    fn a_check_that_changes_nothing_takes_no_lock() {
        let clock = std::sync::Arc::new(ClockOffset::default());
        let start = Instant::now();
        clock.observe(300, start);
        let held = clock.lock();
        let (done, finished) = std::sync::mpsc::channel();
        let checking = clock.clone();
        let check = std::thread::spawn(move || {
            let estimate = checking.estimate();
            checking.observe(400, start + Duration::from_secs(1));
            let _ = done.send(estimate);
        });
        let estimate = finished.recv_timeout(Duration::from_secs(5));
        drop(held);
        let _ = check.join();
        assert_eq!(estimate, Ok(Some(300)), "the check waited for the lock");
        assert_eq!(clock.estimate(), Some(300));
    }
}
