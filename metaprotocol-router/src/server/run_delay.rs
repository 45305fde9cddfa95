//! How long a worker waited for its core: whether busy processes share it.
//!
//! Linux counts, for each thread, the time it spent ready to run but waiting for a core (the
//! second field of `/proc/thread-self/schedstat`, in nanoseconds). A worker alone on its core
//! waits little: about 1% of the time in the load benchmark with the proxy on a core of its own.
//! A worker sharing its core with its clients and servers there waited 1.5 to 2 times as long as
//! it ran.
//!
//! The linger uses it: a worker that sleeps while the processes sharing its core wait on it
//! leaves that core idle (see [`super::linger`]). So does busy polling where the kernel polls when
//! a core idles: there a worker looks only while its core is crowded (see [`super::busy_poll`]).

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// A worker whose waits for its core are this share of the time or more is crowded.
const CROWDED_SHARE: u32 = 10;

/// A look this soon after the last gives the last answer: over a shorter span one wait more or
/// less decides it.
const SHORTEST_SPAN: Duration = Duration::from_millis(1);

thread_local! {
    /// The calling worker's count, opened by [`watch_this_thread`], asked by the linger and
    /// busy polling alike.
    static THIS_THREAD: RefCell<Option<RunDelay>> = const { RefCell::new(None) };
}

/// Starts counting the calling thread's waits for its core, if it does not yet.
pub(crate) fn watch_this_thread() {
    THIS_THREAD.with_borrow_mut(|delay| {
        if delay.is_none() {
            *delay = RunDelay::of_this_thread();
        }
    });
}

/// Whether the calling thread's core is crowded, by [`RunDelay::crowded`]: `false` on a thread
/// not watched ([`watch_this_thread`]).
pub(crate) fn this_thread_crowded(now: Instant) -> bool {
    THIS_THREAD.with_borrow_mut(|delay| delay.as_mut().is_some_and(|d| d.crowded(now)))
}

/// The calling thread's count of time spent waiting for a core, read again at each look.
#[derive(Debug)]
pub(crate) struct RunDelay {
    file: File,
    /// The last look: when, and the thread's waits until then, in nanoseconds.
    last: Option<(Instant, u64)>,
    /// What the last look found.
    crowded: bool,
}

impl RunDelay {
    /// The calling thread's count; `None` where the kernel keeps none.
    pub fn of_this_thread() -> Option<Self> {
        let file = File::open("/proc/thread-self/schedstat").ok()?;
        Some(Self {
            file,
            last: None,
            crowded: false,
        })
    }

    /// Whether the thread waited for its core a [`CROWDED_SHARE`]th of the time or more since
    /// the last look (`false` at the first look, or if the count cannot be read); within
    /// [`SHORTEST_SPAN`] of the last look, what that look found.
    pub fn crowded(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|(then, _)| now.saturating_duration_since(then) < SHORTEST_SPAN)
        {
            return self.crowded;
        }
        let mut buf = [0u8; 96];
        let waited = self
            .file
            .read_at(&mut buf, 0)
            .ok()
            .and_then(|len| waited_ns(buf.get(..len)?));
        let Some(waited) = waited else {
            return false;
        };
        let last = self.last.replace((now, waited));
        self.crowded = last.is_some_and(|(then, before)| {
            is_crowded(
                Duration::from_nanos(waited.saturating_sub(before)),
                now.saturating_duration_since(then),
            )
        });
        self.crowded
    }
}

/// The waits in a `schedstat` line: its second field (time run, time waited, time slices).
fn waited_ns(schedstat: &[u8]) -> Option<u64> {
    let field = schedstat.split(u8::is_ascii_whitespace).nth(1)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Whether `waited` over `over` is a [`CROWDED_SHARE`]th or more.
fn is_crowded(waited: Duration, over: Duration) -> bool {
    !over.is_zero() && waited >= over / CROWDED_SHARE
}

/// Spins for `time` on the calling thread, pinned to its core with another thread spinning
/// there too: one runs at a time, so the caller waits for its core about half of `time` (more on
/// a busy machine, never less). The caller stays pinned.
#[cfg(test)]
pub(crate) fn wait_for_the_core(time: Duration) -> Result<(), &'static str> {
    let mut one_core = rustix::thread::CpuSet::new();
    one_core.set(rustix::thread::sched_getcpu());
    let pin = || rustix::thread::sched_setaffinity(None, &one_core).map_err(|_| "pinned");
    pin()?;
    let until = Instant::now() + time;
    let spin = || {
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    };
    std::thread::scope(|scope| {
        let other = scope.spawn(|| pin().map(|()| spin()));
        spin();
        other.join().map_err(|_| "the other thread spun")?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_waits_of_a_schedstat_line() {
        assert_eq!(waited_ns(b"37219497 429319 40\n"), Some(429_319));
        assert_eq!(waited_ns(b"37219497"), None);
        assert_eq!(waited_ns(b"1 -2 3\n"), None);
        assert_eq!(waited_ns(b""), None);
    }

    #[test]
    fn a_tenth_of_the_time_waiting_is_crowded() {
        let ms = Duration::from_millis(1);
        assert!(is_crowded(Duration::from_micros(100), ms));
        assert!(!is_crowded(Duration::from_micros(99), ms));
        assert!(is_crowded(Duration::from_micros(1_500), ms));
        assert!(!is_crowded(Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn a_thread_that_waits_for_its_core_is_crowded() -> Result<(), &'static str> {
        let Some(mut delay) = RunDelay::of_this_thread() else {
            return Ok(());
        };
        assert!(
            !delay.crowded(Instant::now()),
            "a first look has nothing to compare"
        );
        wait_for_the_core(Duration::from_millis(50))?;
        assert!(delay.crowded(Instant::now()));
        // Asked again at once: too short a span to judge, the answer stands.
        assert!(delay.crowded(Instant::now()));
        Ok(())
    }
}
