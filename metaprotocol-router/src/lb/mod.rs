//! Load balancers: pick one endpoint of a set for each request.
//!
//! A balancer sees the endpoints' weights (as cumulative sums, so a weighted pick is a binary
//! search) and their live load, and never allocates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cluster::Endpoint;
use crate::config::{ConfigError, LbPolicy};

/// What a pick may depend on besides the endpoints.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickContext<'a> {
    /// An endpoint to avoid (the one a retried attempt just failed on), if another exists.
    pub avoid: Option<&'a Endpoint>,
}

/// Picks an endpoint index from a non-empty set.
pub trait LoadBalancer: Send + Sync + std::fmt::Debug {
    /// An index into `endpoints`, whose cumulative weights are `cumulative` (same length, last
    /// element the total weight, every entry at least 1 more than the previous).
    fn pick(&self, endpoints: &[Arc<Endpoint>], cumulative: &[u64], ctx: &PickContext<'_>)
    -> usize;
}

/// Builds the balancer for `policy`.
pub fn for_policy(policy: LbPolicy) -> Result<Box<dyn LoadBalancer>, ConfigError> {
    match policy {
        LbPolicy::RoundRobin => Ok(Box::new(RoundRobin::default())),
        LbPolicy::Random => Ok(Box::new(WeightedRandom)),
        LbPolicy::LeastRequest => Ok(Box::new(LeastRequest)),
        LbPolicy::RingHash | LbPolicy::Maglev => Err(ConfigError::new(
            "lb_policy",
            format!("{policy:?} is not available yet; use round_robin, random or least_request"),
        )),
    }
}

/// The endpoint whose weight band contains `point` (`0 <= point < total`).
fn by_weight(cumulative: &[u64], point: u64) -> usize {
    cumulative
        .partition_point(|&end| end <= point)
        .min(cumulative.len().saturating_sub(1))
}

fn total(cumulative: &[u64]) -> u64 {
    cumulative.last().copied().unwrap_or(0).max(1)
}

/// Steps past `avoid` to the next endpoint, if the pick landed on it and there is another.
fn step_past(endpoints: &[Arc<Endpoint>], index: usize, ctx: &PickContext<'_>) -> usize {
    match ctx.avoid {
        Some(avoid) if endpoints.len() > 1 && std::ptr::eq(&*endpoints[index], avoid) => {
            (index + 1) % endpoints.len()
        }
        _ => index,
    }
}

/// Each endpoint in turn, `weight` times per cycle.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicU64,
}

impl LoadBalancer for RoundRobin {
    fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        cumulative: &[u64],
        ctx: &PickContext<'_>,
    ) -> usize {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % total(cumulative);
        step_past(endpoints, by_weight(cumulative, turn), ctx)
    }
}

/// A random endpoint, in proportion to weight.
#[derive(Debug, Default)]
pub struct WeightedRandom;

impl LoadBalancer for WeightedRandom {
    fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        cumulative: &[u64],
        ctx: &PickContext<'_>,
    ) -> usize {
        let point = fastrand::u64(..total(cumulative));
        step_past(endpoints, by_weight(cumulative, point), ctx)
    }
}

/// The less loaded of two weighted-random endpoints ("power of two choices").
#[derive(Debug, Default)]
pub struct LeastRequest;

impl LoadBalancer for LeastRequest {
    fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        cumulative: &[u64],
        ctx: &PickContext<'_>,
    ) -> usize {
        let a = WeightedRandom.pick(endpoints, cumulative, ctx);
        let b = WeightedRandom.pick(endpoints, cumulative, ctx);
        if endpoints[b].active_requests() < endpoints[a].active_requests() {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_bands() {
        let cumulative = [1, 4, 5];
        let picks: Vec<usize> = (0..5).map(|p| by_weight(&cumulative, p)).collect();
        assert_eq!(picks, [0, 1, 1, 1, 2]);
    }
}
