//! A random endpoint, in proportion to its weight.

use super::{LoadBalancer, PickContext, Weights, weighted_allowed};

/// Weighted random choice.
#[derive(Debug)]
pub(crate) struct WeightedRandom {
    weights: Weights,
}

impl WeightedRandom {
    pub fn new(weights: Weights) -> Self {
        Self { weights }
    }
}

impl LoadBalancer for WeightedRandom {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let index = self.weights.random()?;
        Some(weighted_allowed(&self.weights, index, ctx))
    }
}
