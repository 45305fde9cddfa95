//! The less loaded of two weighted-random endpoints ("power of two choices").

use super::{LoadBalancer, LoadedSet, PickContext};

/// Power of two choices over requests in flight per unit of weight: an endpoint of weight 2
/// is as loaded with two requests in flight as one of weight 1 with one, so a busy set still
/// spreads its load by weight.
#[derive(Debug)]
pub(crate) struct LeastRequest(pub(super) LoadedSet);

impl LoadBalancer for LeastRequest {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let set = &self.0;
        let active = |i: usize| set.endpoint(i).map_or(u64::MAX, |e| e.active_requests());
        // `a` is less loaded than `b` when active(a) / weight(a) < active(b) / weight(b).
        set.power_of_two(ctx, |a, b| {
            u128::from(active(a)) * u128::from(set.weights.weight(b))
                < u128::from(active(b)) * u128::from(set.weights.weight(a))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::Weights;
    use crate::lb::tests::{histogram, hosts};

    /// With one endpoint slow (its requests pile up in flight), the idle ones get the traffic.
    #[test]
    fn the_idle_endpoint_is_preferred_over_the_slow_one() {
        let set = hosts(&[1, 1, 1]);
        let stuck: Vec<_> = (0..20).map(|_| set[0].endpoint.track()).collect();
        let lb = LeastRequest(LoadedSet::new(Weights::new(&set), &set));
        let counts = histogram(&lb, 3, 10_000, false);
        // The slow endpoint wins only when both candidates are it: 1/9 of picks.
        assert!(counts[0] < 1_300, "{counts:?}");
        assert!(counts[1] > 4_000 && counts[2] > 4_000, "{counts:?}");
        drop(stuck);
    }
}
