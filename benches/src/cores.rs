//! How far apart two cores are: the time a cache line takes to go from one to the other and back.
//! Two threads, one pinned to each core, hand a counter back and forth.
//!
//! On a virtual machine the host decides which physical cores the virtual ones run on, and moves
//! them as it likes. On the AMD EPYC host these benchmarks ran on, the two virtual cores were on
//! physical cores sharing an L3 cache at some times (a round trip of 50-110 ns) and on cores that
//! do not share one at others (310-530 ns), and a call at 1 x 1 through a proxy on its own core
//! took half as long again in the second case (see benches/README.md, "Near and far cores"). The
//! load generator measures it before and after its run (`--cores-probe`), and the comparison
//! table gives runs on near and far cores rows of their own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Round trips in one of a probe's tries.
const TRIPS_A_TRY: u64 = 4_000;

/// Tries in a probe. Its answer is their median, so that a burst of work on either core during
/// one try (a proxy finishing its last calls) does not decide it.
const TRIES: u32 = 5;

/// How long a probe may take before it gives up (a core too busy to run its thread).
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// The two cores' round trip, measured by the load generator before and after its run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoresApart {
    /// Nanoseconds a round trip before the run, if the probe finished.
    pub before_ns: Option<f64>,
    /// Nanoseconds a round trip after the run, if the probe finished.
    pub after_ns: Option<f64>,
}

/// Where the host has put cores `a` and `b`: the median of five tries' mean round trip in
/// nanoseconds, within 2 s in all; `None` unless most tries finished.
pub fn probe(a: usize, b: usize) -> Option<f64> {
    let mut tries: Vec<f64> = (0..TRIES)
        .filter_map(|_| round_trip(a, b, TRIPS_A_TRY, PROBE_LIMIT / TRIES))
        .collect();
    if tries.len() <= TRIES as usize / 2 {
        return None;
    }
    tries.sort_by(f64::total_cmp);
    tries.get(tries.len() / 2).copied()
}

/// The mean time in nanoseconds of `trips` round trips of a cache line between cores `a` and
/// `b`; `None` if a thread cannot be pinned to its core (no such core) or the round trips do not
/// finish within `limit` (a core busy with something else, or `a` and `b` the same core).
fn round_trip(a: usize, b: usize, trips: u64, limit: Duration) -> Option<f64> {
    let deadline = Instant::now() + limit;
    // The counter is odd while `a`'s thread waits for `b`'s, even while `b`'s waits.
    let ball = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let answerer = scope.spawn(|| {
            let answered = pin(b).and_then(|()| {
                (0..trips).try_for_each(|trip| {
                    wait_for(&ball, 2 * trip + 1, &stop, deadline)?;
                    ball.store(2 * trip + 2, Ordering::Release);
                    Some(())
                })
            });
            if answered.is_none() {
                stop.store(true, Ordering::Relaxed);
            }
        });
        let asker = scope.spawn(|| {
            let asked = pin(a).and_then(|()| {
                let start = Instant::now();
                (0..trips).try_for_each(|trip| {
                    ball.store(2 * trip + 1, Ordering::Release);
                    wait_for(&ball, 2 * trip + 2, &stop, deadline)
                })?;
                Some(start.elapsed())
            });
            if asked.is_none() {
                stop.store(true, Ordering::Relaxed);
            }
            asked
        });
        let elapsed = asker.join().ok().flatten();
        answerer.join().ok()?;
        Some(elapsed?.as_nanos() as f64 / trips.max(1) as f64)
    })
}

/// Pins the calling thread to `core`.
fn pin(core: usize) -> Option<()> {
    if core >= rustix::thread::CpuSet::MAX_CPU {
        return None;
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    rustix::thread::sched_setaffinity(None, &set).ok()
}

/// Spins until `ball` holds `value`; `None` once the other thread gave up or `deadline` passed.
fn wait_for(ball: &AtomicU64, value: u64, stop: &AtomicBool, deadline: Instant) -> Option<()> {
    let mut spins: u32 = 0;
    while ball.load(Ordering::Acquire) != value {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        // The clock is read now and then: it costs more than a look at the counter.
        if spins.is_multiple_of(1024)
            && (stop.load(Ordering::Relaxed) || Instant::now() >= deadline)
        {
            stop.store(true, Ordering::Relaxed);
            return None;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    #[test]
    fn two_cores_hand_a_cache_line_back_and_forth() {
        if cores() < 2 {
            return;
        }
        // Few round trips and a long limit: the test threads of other tests may share the cores.
        let ns = round_trip(0, 1, 1_000, Duration::from_secs(30));
        assert!(
            ns.is_some_and(|ns| ns > 1.0 && ns < 1_000_000.0),
            "{ns:?} ns"
        );
    }

    #[test]
    fn a_probe_that_cannot_finish_gives_up_in_time() {
        // Both threads on one core: each wait lasts until the scheduler switches threads.
        let started = Instant::now();
        assert_eq!(round_trip(0, 0, 100_000, Duration::from_millis(300)), None);
        // A core that does not exist.
        assert_eq!(round_trip(0, 1 << 20, 10, Duration::from_secs(1)), None);
        assert_eq!(probe(1 << 20, 0), None);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
