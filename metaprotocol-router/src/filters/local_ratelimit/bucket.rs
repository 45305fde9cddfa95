//! A token bucket that many threads take from without a lock.
//!
//! The bucket holds up to `max_tokens`; every `fill_interval` it gains `tokens_per_fill`
//! (Envoy's local rate limit). Fills are not driven by a timer: each take works out how many
//! intervals passed since the last fill it knows of and adds those tokens first. The token
//! count and the index of the last fill share one `AtomicU64`, updated by compare-and-swap, so a
//! take is a load, some arithmetic and one CAS (retried only when another thread took a token
//! in between).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shortest fill interval. Fill indexes are 32 bits: at 50 ms they wrap after six years,
/// and only a bucket left untouched that long could miss a refill.
pub(crate) const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// A lock-free token bucket.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval_nanos: u64,
    /// Fill indexes count intervals from here.
    origin: Instant,
    /// `fill_index << 32 | tokens`.
    state: AtomicU64,
}

fn pack(fill: u32, tokens: u32) -> u64 {
    (u64::from(fill) << 32) | u64::from(tokens)
}

fn unpack(state: u64) -> (u32, u32) {
    ((state >> 32) as u32, state as u32)
}

impl TokenBucket {
    /// A full bucket; `fill_interval` is at least [`MIN_FILL_INTERVAL`] (validated with the
    /// config).
    pub fn new(
        max_tokens: u32,
        tokens_per_fill: u32,
        fill_interval: Duration,
        now: Instant,
    ) -> Self {
        Self {
            max_tokens,
            tokens_per_fill,
            // An interval past u64 nanoseconds (584 years) is "never", not a wrapped one.
            fill_interval_nanos: u64::try_from(fill_interval.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            origin: now,
            state: AtomicU64::new(pack(0, max_tokens)),
        }
    }

    /// Takes a token at `now`; false if the bucket is empty.
    pub fn try_take(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos() as u64;
        // Wrapping on purpose: only differences of fill indexes are used.
        let fill = (elapsed / self.fill_interval_nanos) as u32;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (last, tokens) = unpack(current);
            let passed = fill.wrapping_sub(last);
            // A "negative" difference: another thread already filled for a later instant.
            let (fill_index, tokens) = if passed == 0 || passed > u32::MAX / 2 {
                (last, tokens)
            } else {
                let added = u64::from(passed) * u64::from(self.tokens_per_fill);
                let tokens = (u64::from(tokens) + added).min(u64::from(self.max_tokens));
                (fill, tokens as u32)
            };
            if tokens == 0 {
                return false;
            }
            match self.state.compare_exchange_weak(
                current,
                pack(fill_index, tokens - 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn takes(bucket: &TokenBucket, at: Instant, n: usize) -> usize {
        (0..n).filter(|_| bucket.try_take(at)).count()
    }

    #[test]
    fn starts_full_and_refills_by_interval_up_to_the_max() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10, 4, 100 * MS, t0);
        assert_eq!(takes(&bucket, t0, 20), 10);
        assert_eq!(takes(&bucket, t0 + 99 * MS, 20), 0);
        assert_eq!(takes(&bucket, t0 + 100 * MS, 20), 4);
        // Three intervals later: 12 tokens, capped at 10.
        assert_eq!(takes(&bucket, t0 + 400 * MS, 20), 10);
        assert_eq!(takes(&bucket, t0 + 450 * MS, 20), 0);
    }

    #[test]
    fn an_interval_of_centuries_never_refills_and_never_panics() {
        let t0 = Instant::now();
        // 2^64 ns: its low 64 bits are 0.
        let forever = Duration::new(18_446_744_073, 709_551_616);
        let bucket = TokenBucket::new(1, 1, forever, t0);
        assert_eq!(takes(&bucket, t0, 2), 1);
        assert_eq!(takes(&bucket, t0 + Duration::from_secs(3600), 1), 0);
    }

    #[test]
    fn an_earlier_instant_than_the_last_fill_takes_no_new_tokens() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(2, 2, 100 * MS, t0);
        assert_eq!(takes(&bucket, t0, 2), 2);
        assert_eq!(takes(&bucket, t0 + 200 * MS, 1), 1);
        // A thread that read the clock before that fill: one token left, no refill.
        assert_eq!(takes(&bucket, t0 + 150 * MS, 5), 1);
    }

    #[test]
    fn concurrent_takers_never_get_more_than_the_tokens() {
        let t0 = Instant::now();
        let bucket = Arc::new(TokenBucket::new(1000, 1, Duration::from_secs(3600), t0));
        let taken = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (bucket, taken) = (bucket.clone(), taken.clone());
                std::thread::spawn(move || {
                    taken.fetch_add(takes(&bucket, t0, 600), Ordering::Relaxed);
                })
            })
            .collect();
        for thread in threads {
            let _ = thread.join();
        }
        assert_eq!(taken.load(Ordering::Relaxed), 1000);
    }
}
