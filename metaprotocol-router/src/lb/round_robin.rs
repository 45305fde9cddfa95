//! Each endpoint in turn, `weight` times per cycle.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{LoadBalancer, PickContext, Weights, first_allowed};

/// Weighted round robin: a shared turn counter walks the weight bands.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    weights: Weights,
    next: AtomicU64,
}

impl RoundRobin {
    pub fn new(weights: Weights) -> Self {
        // Start at a random turn, so that proxies (and rebuilt sets) do not all send their first
        // requests to the same endpoint.
        let start = match weights.total() {
            0 => 0,
            total => fastrand::u64(..total),
        };
        Self {
            weights,
            next: AtomicU64::new(start),
        }
    }
}

impl LoadBalancer for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let total = self.weights.total();
        if total == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % total;
        Some(first_allowed(
            self.weights.at(turn),
            self.weights.len(),
            ctx,
        ))
    }
}
