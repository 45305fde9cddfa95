//! The less loaded of two weighted-random endpoints ("power of two choices").

use std::sync::Arc;

use super::{LoadBalancer, PickContext, Weights, first_allowed};
use crate::cluster::{Endpoint, Host};

/// Power of two choices over requests in flight.
#[derive(Debug)]
pub(crate) struct LeastRequest {
    weights: Weights,
    endpoints: Box<[Arc<Endpoint>]>,
}

impl LeastRequest {
    pub fn new(weights: Weights, hosts: &[Arc<Host>]) -> Self {
        Self {
            weights,
            endpoints: hosts.iter().map(|h| h.endpoint.clone()).collect(),
        }
    }
}

impl LoadBalancer for LeastRequest {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.weights.len();
        let a = first_allowed(self.weights.random()?, len, ctx);
        let b = first_allowed(self.weights.random()?, len, ctx);
        let load = |i: usize| {
            self.endpoints
                .get(i)
                .map_or(u64::MAX, |e| e.active_requests())
        };
        Some(if load(b) < load(a) { b } else { a })
    }
}
