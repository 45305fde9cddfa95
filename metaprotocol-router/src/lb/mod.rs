//! Load balancers: pick one endpoint of a set for each request.
//!
//! A balancer is built from one endpoint set (its weights and, for load-aware policies, its
//! endpoints' live counts) and rebuilt whenever the set changes. A pick sees a
//! [`PickContext`]: the endpoints to avoid (those a retry already failed on, those backing off
//! after connect failures), which a balancer skips when another endpoint is available. Picks
//! never allocate.

mod least_request;
mod random;
mod round_robin;

use std::sync::Arc;

use crate::cluster::Host;
use crate::config::{ConfigError, LbPolicy};

pub(crate) use least_request::LeastRequest;
pub(crate) use random::WeightedRandom;
pub(crate) use round_robin::RoundRobin;

/// What a pick may depend on besides the endpoints.
pub(crate) struct PickContext<'a> {
    /// True for endpoint indexes to skip when another is available.
    pub avoid: &'a dyn Fn(usize) -> bool,
}

/// Picks an endpoint index of the set it was built from.
pub(crate) trait LoadBalancer: Send + Sync + std::fmt::Debug {
    /// An index into the set, or `None` when the set is empty.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;
}

/// Builds the balancer of `policy` over `hosts`.
pub(crate) fn build(
    policy: LbPolicy,
    hosts: &[Arc<Host>],
) -> Result<Box<dyn LoadBalancer>, ConfigError> {
    let weights = Weights::new(hosts);
    match policy {
        LbPolicy::RoundRobin => Ok(Box::new(RoundRobin::new(weights))),
        LbPolicy::Random => Ok(Box::new(WeightedRandom::new(weights))),
        LbPolicy::LeastRequest => Ok(Box::new(LeastRequest::new(weights, hosts))),
        LbPolicy::RingHash | LbPolicy::Maglev => Err(ConfigError::new(
            "lb_policy",
            format!(
                "{} is not available yet; use round_robin, random or least_request",
                policy.name()
            ),
        )),
    }
}

/// Cumulative weights of a set: a weighted pick is a binary search.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    cumulative: Box<[u64]>,
}

impl Weights {
    fn new(hosts: &[Arc<Host>]) -> Self {
        let cumulative = hosts
            .iter()
            .scan(0u64, |sum, host| {
                *sum += u64::from(host.weight.max(1));
                Some(*sum)
            })
            .collect();
        Self { cumulative }
    }

    fn len(&self) -> usize {
        self.cumulative.len()
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The index whose weight band contains `point` (`0 <= point < total`).
    fn at(&self, point: u64) -> usize {
        self.cumulative
            .partition_point(|&end| end <= point)
            .min(self.len().saturating_sub(1))
    }

    /// A weighted random index; `None` for an empty set.
    fn random(&self) -> Option<usize> {
        match self.total() {
            0 => None,
            total => Some(self.at(fastrand::u64(..total))),
        }
    }
}

/// `index`, or the next index (cyclically) that is not avoided; `index` itself when every
/// index is avoided (a retry on the only endpoint beats no attempt at all).
fn first_allowed(index: usize, len: usize, ctx: &PickContext<'_>) -> usize {
    (0..len)
        .map(|step| (index + step) % len)
        .find(|&i| !(ctx.avoid)(i))
        .unwrap_or(index)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::cluster::{Endpoint, Host};
    use crate::stats::{ClusterStats, Metrics};
    use crate::transport::Connector;
    use crate::upstream::{PoolSettings, UpstreamPool};

    /// Hosts on ports 1.. with `weights`, whose pools are never used.
    pub(crate) fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        let stats = ClusterStats::new(&Metrics::new().root());
        let codec = Arc::new(crate::testing::NullCodec) as Arc<dyn metaprotocol_core::CodecFactory>;
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let address = SocketAddr::from(([127, 0, 0, 1], u16::try_from(i + 1).unwrap_or(1)));
                let pool = UpstreamPool::new(
                    address,
                    codec.clone(),
                    PoolSettings {
                        connect_timeout: Duration::from_secs(1),
                        connections: 1,
                    },
                    Connector::Plain,
                    stats.clone(),
                );
                Arc::new(Host {
                    endpoint: Arc::new(Endpoint::new(address, pool)),
                    weight,
                    labels: BTreeMap::new(),
                    istio: None,
                })
            })
            .collect()
    }

    /// How often each index is picked in `n` picks.
    pub(crate) fn histogram(lb: &dyn LoadBalancer, len: usize, n: usize) -> Vec<usize> {
        let mut counts = vec![0; len];
        let ctx = PickContext { avoid: &|_| false };
        for _ in 0..n {
            if let Some(i) = lb.pick(&ctx) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn weighted_bands() {
        let weights = Weights::new(&hosts(&[1, 3, 1]));
        let picks: Vec<usize> = (0..5).map(|p| weights.at(p)).collect();
        assert_eq!(picks, [0, 1, 1, 1, 2]);
    }

    #[test]
    fn every_policy_respects_weights_and_avoids() -> Result<(), ConfigError> {
        let set = hosts(&[1, 3]);
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
        ] {
            let lb = build(policy, &set)?;
            let counts = histogram(&*lb, 2, 10_000);
            let share = counts[1] as f64 / 10_000.0;
            assert!((0.70..=0.80).contains(&share), "{policy:?}: {counts:?}");
            let avoid_second = PickContext { avoid: &|i| i == 1 };
            for _ in 0..100 {
                assert_eq!(lb.pick(&avoid_second), Some(0), "{policy:?}");
            }
            let avoid_all = PickContext { avoid: &|_| true };
            assert!(lb.pick(&avoid_all).is_some(), "{policy:?}");
        }
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
        ] {
            let empty = build(policy, &[])?;
            assert!(empty.pick(&PickContext { avoid: &|_| false }).is_none());
        }
        Ok(())
    }

    #[test]
    fn consistent_hashing_is_not_available_yet() {
        let err = build(LbPolicy::RingHash, &hosts(&[1])).err();
        assert!(err.is_some_and(|e| e.reason.starts_with("ring_hash is not available yet")));
    }
}
