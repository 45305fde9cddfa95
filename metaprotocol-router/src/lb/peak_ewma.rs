//! Peak EWMA (linkerd's latency-aware balancer): of two weighted-random endpoints, the one whose
//! latency estimate times its requests in flight (plus one) is lower. Weights choose the
//! candidates; the cost compares them, so that two idle endpoints of equal latency are picked
//! by weight.
//!
//! An endpoint's estimate ([`RttEstimate`]) is an exponentially weighted moving average of its
//! latencies that jumps at once to a slower sample (a peak) and decays towards faster ones, and
//! towards zero while the endpoint is not heard from, so that an endpoint that was slow is
//! tried again eventually. An endpoint not heard from yet (or whose estimate has faded away) is
//! taken to be as fast as the endpoint it is compared with, so that load decides between them:
//! a new endpoint is tried at once rather than starved, but not sent every request while its
//! first answers are on their way (costing nothing, a new endpoint with 50 requests in flight
//! won 75% of the picks of two endpoints). The router records a sample where it concludes an
//! attempt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{LoadBalancer, LoadedSet, PickContext};

/// How fast an estimate forgets: the weight of a sample `DECAY` old has fallen to 1/e.
const DECAY: Duration = Duration::from_secs(10);

/// An endpoint's latency estimate. Lock-free: two atomics, written where attempts conclude and
/// read by picks; a sample racing another may be lost, which an average shrugs off.
#[derive(Debug)]
pub(crate) struct RttEstimate {
    epoch: Instant,
    /// The estimate in nanoseconds, as `f64` bits.
    rtt_ns: AtomicU64,
    /// When it was last updated, in nanoseconds after `epoch`.
    updated_ns: AtomicU64,
}

impl Default for RttEstimate {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            rtt_ns: AtomicU64::new(0f64.to_bits()),
            updated_ns: AtomicU64::new(0),
        }
    }
}

impl RttEstimate {
    /// Records an attempt that took `rtt`, concluded at `now`.
    pub fn record(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let (estimate, elapsed_ns) = self.last(now);
        let next = if sample > estimate {
            sample
        } else {
            let kept = decay(elapsed_ns);
            estimate * kept + sample * (1.0 - kept)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.updated_ns.store(self.nanos(now), Ordering::Relaxed);
    }

    /// The estimate at `now`, in nanoseconds: the last one, decayed for the time since.
    pub fn estimate(&self, now: Instant) -> f64 {
        let (estimate, elapsed_ns) = self.last(now);
        estimate * decay(elapsed_ns)
    }

    /// The last estimate, and how long ago it was made.
    fn last(&self, now: Instant) -> (f64, u64) {
        let estimate = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let at = self.updated_ns.load(Ordering::Relaxed);
        (estimate, self.nanos(now).saturating_sub(at))
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The weight an estimate keeps after `elapsed_ns`.
fn decay(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / DECAY.as_nanos() as f64).exp()
}

/// Power of two choices by latency estimate times load.
#[derive(Debug)]
pub(crate) struct PeakEwma(pub(super) LoadedSet);

impl LoadBalancer for PeakEwma {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let now = Instant::now();
        // An endpoint's latency estimate and its requests in flight (plus the one to send).
        let state = |index: usize| {
            self.0
                .endpoint(index)
                .map(|e| (e.rtt().estimate(now), e.active_requests() as f64 + 1.0))
        };
        self.0.power_of_two(ctx, |a, b| match (state(a), state(b)) {
            (Some((rtt_a, load_a)), Some((rtt_b, load_b))) => {
                // What sending to each now is expected to cost; an endpoint without an
                // estimate is taken to be as fast as the other (with neither, load decides).
                let rtt = |own: f64, other: f64| if own > 0.0 { own } else { other.max(1.0) };
                rtt(rtt_a, rtt_b) * load_a < rtt(rtt_b, rtt_a) * load_b
            }
            (found, _) => found.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::Weights;
    use crate::lb::tests::{histogram, hosts};

    #[tokio::test(start_paused = true)]
    async fn estimates_jump_to_peaks_and_decay() {
        let rtt = RttEstimate::default();
        let now = Instant::now();
        let ms = |d: f64| d / 1e6;
        assert_eq!(rtt.estimate(now), 0.0, "not heard from yet");
        rtt.record(Duration::from_millis(50), now);
        assert_eq!(ms(rtt.estimate(now)).round(), 50.0, "a peak counts at once");
        let later = now + DECAY;
        rtt.record(Duration::from_millis(10), later);
        let moved = ms(rtt.estimate(later));
        assert!((24.0..26.0).contains(&moved), "{moved}: 50/e + 10(1-1/e)");
        let idle = ms(rtt.estimate(later + DECAY * 5));
        assert!(idle < 0.2, "{idle}: an idle endpoint's estimate fades");
    }

    /// A new endpoint (no estimate yet) is compared by its load: with 50 requests in flight it
    /// wins only the picks whose two candidates are both it (a quarter, with two endpoints).
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_without_an_estimate_is_judged_by_its_load() {
        let set = hosts(&[1, 1]);
        set[0]
            .endpoint
            .rtt()
            .record(Duration::from_millis(10), Instant::now());
        let in_flight: Vec<_> = (0..50).map(|_| set[1].endpoint.track()).collect();
        let lb = PeakEwma(LoadedSet::new(Weights::new(&set), &set));
        let counts = histogram(&lb, 2, 10_000, false);
        assert!(counts[1] < 3_000, "{counts:?}");
        drop(in_flight);
        // Idle, and neither heard from: the load (none) ties, and weights decide.
        let fresh = hosts(&[1, 1]);
        let lb = PeakEwma(LoadedSet::new(Weights::new(&fresh), &fresh));
        let counts = histogram(&lb, 2, 10_000, false);
        assert!(counts[0] > 4_000 && counts[1] > 4_000, "{counts:?}");
    }

    /// The fast endpoint gets most of the traffic; the slow one is still tried.
    #[tokio::test(start_paused = true)]
    async fn the_fast_endpoint_is_preferred() {
        let set = hosts(&[1, 1]);
        let now = Instant::now();
        set[0].endpoint.rtt().record(Duration::from_millis(1), now);
        set[1].endpoint.rtt().record(Duration::from_millis(40), now);
        let lb = PeakEwma(LoadedSet::new(Weights::new(&set), &set));
        let counts = histogram(&lb, 2, 10_000, false);
        assert!(counts[0] > 7_000, "{counts:?}");
        assert!(
            counts[1] > 1_000,
            "{counts:?}: both candidates slow, a quarter of picks"
        );
    }
}
