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

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long samples count towards the estimate (between one and two windows).
const WINDOW: Duration = Duration::from_secs(10);

/// The offset of a server's clock from this host's, in microseconds.
#[derive(Debug, Default)]
pub(super) struct ClockOffset {
    windows: Mutex<Windows>,
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
        let windows = self.lock();
        match (windows.current, windows.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes in `sample`: the server's time when it ran a check, less this host's when the
    /// check was sent.
    pub fn observe(&self, sample: i64, now: Instant) {
        let mut windows = self.lock();
        match windows.started {
            Some(started) if now.saturating_duration_since(started) < WINDOW => {}
            _ => {
                windows.previous = windows.current.take();
                windows.started = Some(now);
            }
        }
        windows.current = Some(windows.current.map_or(sample, |c| c.min(sample)));
    }

    /// Forgets every sample but `sample`: the clocks moved against each other.
    pub fn restart(&self, sample: i64, now: Instant) {
        *self.lock() = Windows {
            started: Some(now),
            current: Some(sample),
            previous: None,
        };
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
}
