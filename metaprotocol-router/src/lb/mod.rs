//! Load balancers: pick one endpoint of a set for each request.
//!
//! A balancer is built from one endpoint set (its hosts' weights and addresses and, for
//! load-aware policies, their live counts) and rebuilt whenever the set changes: membership,
//! weights, health. Every policy is weight-aware:
//!
//! | policy | file | a pick |
//! |---|---|---|
//! | `round_robin` | [`round_robin`] | the next turn of a precomputed smooth weighted sequence |
//! | `random` | [`random`] | a weighted random endpoint |
//! | `least_request` | [`least_request`] | the less loaded (requests in flight per weight) of two weighted random endpoints |
//! | `peak_ewma` | [`peak_ewma`] | the cheaper (latency estimate times load, per weight) of two weighted random endpoints |
//! | `ring_hash` | [`ring_hash`] | the first ring entry at or after the request's hash |
//! | `maglev` | [`maglev`] | the Maglev table entry of the request's hash |
//!
//! The hashing policies pick by [`PickContext::hash`] (the route's `hash_policy` over the
//! request); a request without one gets a weighted random endpoint. When the set's endpoints
//! have priorities, or the cluster is `locality_aware`, a [`tiers::Tiered`] balancer splits the
//! set into failover tiers (by priority, then the proxy's zone, its region and the rest), and
//! runs the policy within the tier it picks.
//!
//! A pick sees a [`PickContext`]: besides the hash, the endpoints to avoid (those a retry
//! already failed on, those backing off after connect failures), which a balancer skips when
//! another endpoint is available: a hashing balancer walks on along its ring or table, the
//! others spread what an avoided endpoint would have had over the rest by weight. Picks never
//! allocate and never lock.

mod least_request;
mod maglev;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;
mod tiers;

use std::sync::Arc;

use crate::cluster::{Endpoint, Host};
use crate::config::{LbPolicy, LocalitySpec};

pub(crate) use peak_ewma::RttEstimate;

/// What a pick may depend on besides the endpoints.
pub(crate) struct PickContext<'a> {
    /// True for endpoint indexes to skip when another is available.
    pub avoid: &'a dyn Fn(usize) -> bool,
    /// The request's key for consistent hashing (its route's `hash_policy` over its metadata),
    /// if it has one.
    pub hash: Option<u64>,
}

/// Picks an endpoint index of the set it was built from.
pub(crate) trait LoadBalancer: Send + Sync + std::fmt::Debug {
    /// An index into the set, or `None` when the set is empty.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;
}

/// How a cluster's sets are balanced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LbSettings {
    pub policy: LbPolicy,
    /// The proxy's own region and zone, for `locality_aware` clusters.
    pub local: Option<LocalitySpec>,
    /// The share of a tier's endpoints (a priority, a locality), in percent, that must be in
    /// rotation for it to keep all of its traffic.
    pub failover_threshold: f64,
    /// The share of a set's members, in percent, that must be in rotation for the set to
    /// balance over those alone (below: over all of them, panic mode); 0 never panics.
    pub healthy_panic_threshold: f64,
}

/// The endpoints a set's picks choose among, and their balancer, for a set of `members` of which
/// those `routable` are in rotation (one flag each, in order). In rotation, or all of them in
/// panic mode: when fewer than `healthy_panic_threshold` percent are in rotation (with most
/// endpoints marked bad, the few left would take the whole load and fall too, and spreading it
/// beats refusing it), each failover tier on its own when the set has tiers. Decided here,
/// when health changes, so that a pick pays nothing for it.
pub(crate) fn build(
    settings: &LbSettings,
    members: &[Arc<Host>],
    routable: &[bool],
) -> (Vec<Arc<Host>>, Box<dyn LoadBalancer>) {
    if tiers::applies(settings, members) {
        let (tiered, hosts) = tiers::Tiered::new(settings, members, routable);
        return (hosts, Box::new(tiered));
    }
    let in_rotation: Vec<Arc<Host>> = members
        .iter()
        .zip(routable)
        .filter(|(_, routable)| **routable)
        .map(|(host, _)| host.clone())
        .collect();
    let panic = (in_rotation.len() as f64) * 100.0
        < settings.healthy_panic_threshold * members.len() as f64;
    let hosts = if panic { members.to_vec() } else { in_rotation };
    let balancer = build_policy(settings.policy, &hosts);
    (hosts, balancer)
}

/// Builds the balancer of `policy` over `hosts`.
fn build_policy(policy: LbPolicy, hosts: &[Arc<Host>]) -> Box<dyn LoadBalancer> {
    let weights = Weights::new(hosts);
    match policy {
        LbPolicy::RoundRobin => Box::new(round_robin::RoundRobin::new(&weights)),
        LbPolicy::Random => Box::new(random::WeightedRandom::new(weights)),
        LbPolicy::LeastRequest => {
            Box::new(least_request::LeastRequest(LoadedSet::new(weights, hosts)))
        }
        LbPolicy::PeakEwma => Box::new(peak_ewma::PeakEwma(LoadedSet::new(weights, hosts))),
        LbPolicy::RingHash => Box::new(ring_hash::RingHash::new(weights, hosts)),
        LbPolicy::Maglev => Box::new(maglev::Maglev::new(weights, hosts)),
    }
}

/// True for the policies whose balancer is a table built from the set (`ring_hash`'s ring of up
/// to 2^20 points, `maglev`'s 65,537 slots): tens to hundreds of milliseconds a build, which the
/// cluster takes off the runtime's threads.
pub(crate) fn builds_table(policy: LbPolicy) -> bool {
    matches!(policy, LbPolicy::RingHash | LbPolicy::Maglev)
}

/// A set's weights, cumulated: a weighted random pick is a binary search.
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

    /// The weight of `index` (0 outside the set).
    fn weight(&self, index: usize) -> u64 {
        let end = self.cumulative.get(index).copied().unwrap_or(0);
        let start = match index.checked_sub(1) {
            Some(before) => self.cumulative.get(before).copied().unwrap_or(0),
            None => 0,
        };
        end.saturating_sub(start)
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

/// `index` (a pick of the set `weights` describes) when it is not avoided; otherwise a
/// weighted random index among those that are not, so that what an avoided endpoint would
/// have had spreads over the others by weight (taking the next index instead sent it all to
/// one neighbour: with three adjacent endpoints of ten down, the next one in line got 40% of
/// the traffic). `index` itself when every index is avoided (a retry on the only endpoint
/// beats no attempt at all).
fn weighted_allowed(weights: &Weights, index: usize, ctx: &PickContext<'_>) -> usize {
    if !(ctx.avoid)(index) {
        return index;
    }
    // A couple of fresh draws find an allowed endpoint, by weight, unless most are avoided;
    // then one pass over the allowed ones' weights draws exactly (two tests per endpoint).
    for _ in 0..2 {
        if let Some(drawn) = weights.random()
            && !(ctx.avoid)(drawn)
        {
            return drawn;
        }
    }
    let allowed = |i: &usize| !(ctx.avoid)(*i);
    let total: u64 = (0..weights.len())
        .filter(allowed)
        .map(|i| weights.weight(i))
        .sum();
    if total == 0 {
        return index;
    }
    let mut point = fastrand::u64(..total);
    let mut last = index;
    for i in (0..weights.len()).filter(allowed) {
        let weight = weights.weight(i);
        if point < weight {
            return i;
        }
        point -= weight;
        last = i;
    }
    // An endpoint left the allowed ones between the two passes (its backoff began).
    last
}

/// The first owner of `owners` (a hashing balancer's ring or table, walked on from where the
/// request's hash landed) that is not avoided; the first owner when all are (`None` when there
/// are none). `endpoints` is the size of the set the owners index.
fn first_owner_allowed(
    mut owners: impl Iterator<Item = usize>,
    endpoints: usize,
    ctx: &PickContext<'_>,
) -> Option<usize> {
    let first = owners.next()?;
    if !(ctx.avoid)(first) {
        return Some(first);
    }
    for (step, index) in owners.enumerate() {
        // A walk longer than the set has endpoints may be over a set whose every endpoint is
        // avoided (all backing off: the set is down), where it would test every entry of the
        // ring or table (65,537 for maglev, up to 2^20 for a ring) on every pick, to find
        // none. One test per endpoint tells.
        if step == endpoints && (0..endpoints).all(|i| (ctx.avoid)(i)) {
            break;
        }
        if !(ctx.avoid)(index) {
            return Some(index);
        }
    }
    Some(first)
}

/// A weighted random pick, for a hashing balancer's requests without a hash key.
fn random_allowed(weights: &Weights, ctx: &PickContext<'_>) -> Option<usize> {
    Some(weighted_allowed(weights, weights.random()?, ctx))
}

/// A set's endpoints and weights, for the balancers that compare live load: power of two
/// choices.
#[derive(Debug)]
struct LoadedSet {
    weights: Weights,
    endpoints: Box<[Arc<Endpoint>]>,
}

impl LoadedSet {
    fn new(weights: Weights, hosts: &[Arc<Host>]) -> Self {
        Self {
            weights,
            endpoints: hosts.iter().map(|h| h.endpoint.clone()).collect(),
        }
    }

    fn endpoint(&self, index: usize) -> Option<&Endpoint> {
        self.endpoints.get(index).map(|e| &**e)
    }

    /// Of two weighted random candidates, the one `cheaper` says is (ties: the first, so that
    /// an idle set is picked exactly by weight); each candidate skips avoided endpoints.
    fn power_of_two(
        &self,
        ctx: &PickContext<'_>,
        cheaper: impl Fn(usize, usize) -> bool,
    ) -> Option<usize> {
        let a = weighted_allowed(&self.weights, self.weights.random()?, ctx);
        let b = weighted_allowed(&self.weights, self.weights.random()?, ctx);
        Some(if cheaper(b, a) { b } else { a })
    }
}

/// The greatest common divisor of two weights (of a set's weights, folded from 0).
fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The stable name a hashing balancer hashes an endpoint by: its address, the same in every
/// proxy and across restarts.
fn host_key(host: &Host) -> String {
    host.endpoint.address().to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::stats::{ClusterStats, Metrics};
    use crate::transport::Connector;
    use crate::upstream::{PoolSettings, UpstreamPool};

    /// Every policy.
    pub(crate) const POLICIES: [LbPolicy; 6] = [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest,
        LbPolicy::PeakEwma,
        LbPolicy::RingHash,
        LbPolicy::Maglev,
    ];

    /// A host on 127.0.0.1:`port` of `weight` in `locality`, whose pool is never used.
    pub(crate) fn host(port: u16, weight: u32, locality: LocalitySpec) -> Arc<Host> {
        host_at(port, weight, locality, 0)
    }

    /// [`host`] at `priority`.
    pub(crate) fn host_at(
        port: u16,
        weight: u32,
        locality: LocalitySpec,
        priority: u32,
    ) -> Arc<Host> {
        let stats = ClusterStats::new(&Metrics::new().root());
        let codec = Arc::new(crate::testing::NullCodec) as Arc<dyn metaprotocol_core::CodecFactory>;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let pool = UpstreamPool::new(
            address,
            codec,
            PoolSettings {
                connect_timeout: Duration::from_secs(1),
                connections: 1,
                idle_timeout: Duration::from_secs(3600),
                frame_timeout: Duration::from_secs(30),
                max_requests_per_connection: None,
            },
            Connector::Plain,
            stats,
            None,
        );
        Arc::new(Host {
            endpoint: Arc::new(Endpoint::new(address, pool)),
            weight,
            labels: BTreeMap::new(),
            locality,
            priority,
            health_check_port: None,
            istio: None,
        })
    }

    /// Hosts on ports 1.. with `weights`, whose pools are never used.
    pub(crate) fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                host(
                    u16::try_from(i + 1).unwrap_or(1),
                    weight,
                    LocalitySpec::default(),
                )
            })
            .collect()
    }

    /// The balancer of `policy` over `hosts` (all in rotation, no locality).
    pub(crate) fn balancer(policy: LbPolicy, hosts: &[Arc<Host>]) -> Box<dyn LoadBalancer> {
        let settings = LbSettings {
            policy,
            local: None,
            failover_threshold: 70.0,
            healthy_panic_threshold: 50.0,
        };
        build(&settings, hosts, &vec![true; hosts.len()]).1
    }

    /// How often each index is picked in `n` picks, each with a fresh random hash key when
    /// `hashed`.
    pub(crate) fn histogram(
        lb: &dyn LoadBalancer,
        len: usize,
        n: usize,
        hashed: bool,
    ) -> Vec<usize> {
        let mut counts = vec![0; len];
        for _ in 0..n {
            let ctx = PickContext {
                avoid: &|_| false,
                hash: hashed.then(|| fastrand::u64(..)),
            };
            if let Some(i) = lb.pick(&ctx) {
                counts[i] += 1;
            }
        }
        counts
    }

    /// Asserts that each index got its weight's share of `counts`, within 5 percentage
    /// points.
    pub(crate) fn assert_weighted(counts: &[usize], weights: &[u32], what: &str) {
        let picks: usize = counts.iter().sum();
        let total: u32 = weights.iter().sum();
        for (count, weight) in counts.iter().zip(weights) {
            let share = *count as f64 / picks as f64;
            let expected = f64::from(*weight) / f64::from(total);
            assert!(
                (share - expected).abs() <= 0.05,
                "{what}: {counts:?} for weights {weights:?}"
            );
        }
    }

    /// The endpoint address each of 10,000 keys goes to through a `policy` balancer of `set`.
    fn owners(policy: LbPolicy, set: &[Arc<Host>]) -> Vec<SocketAddr> {
        let lb = balancer(policy, set);
        (0..10_000u64)
            .filter_map(|key| {
                let ctx = PickContext {
                    avoid: &|_| false,
                    hash: Some(xxhash_rust::xxh64::xxh64(&key.to_le_bytes(), 0)),
                };
                lb.pick(&ctx)
                    .and_then(|i| set.get(i))
                    .map(|h| h.endpoint.address())
            })
            .collect()
    }

    /// The consistent hashing property, measured: with one endpoint of ten removed, the keys
    /// it had (about a tenth) move, and of the others at most `extra` (a fraction of all keys)
    /// do; with it back, every key returns to where it was.
    pub(crate) fn assert_minimal_disruption(policy: LbPolicy, extra: f64) {
        let all = hosts(&[1; 10]);
        let gone = all[3].endpoint.address();
        let fewer: Vec<Arc<Host>> = all
            .iter()
            .filter(|h| h.endpoint.address() != gone)
            .cloned()
            .collect();
        let before = owners(policy, &all);
        let after = owners(policy, &fewer);
        let orphaned = before.iter().filter(|a| **a == gone).count();
        let moved_needlessly = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != gone && b != a)
            .count();
        // The measurement, for reports (`cargo test -- --nocapture`).
        println!(
            "{policy:?}, one endpoint of ten removed: {orphaned} of {} keys had it, \
             {moved_needlessly} others moved",
            before.len()
        );
        assert!(
            (800..1_200).contains(&orphaned),
            "{policy:?}: {orphaned} keys on one of ten"
        );
        assert!(
            moved_needlessly as f64 <= extra * before.len() as f64,
            "{policy:?}: {moved_needlessly} keys of other endpoints moved"
        );
        assert_eq!(
            owners(policy, &all),
            before,
            "{policy:?}: stable across rebuilds"
        );
    }

    #[test]
    fn weighted_bands() {
        let weights = Weights::new(&hosts(&[1, 3, 1]));
        let picks: Vec<usize> = (0..5).map(|p| weights.at(p)).collect();
        assert_eq!(picks, [0, 1, 1, 1, 2]);
        assert_eq!(
            (0..3).map(|i| weights.weight(i)).collect::<Vec<_>>(),
            [1, 3, 1]
        );
    }

    /// Every policy spreads 10,000 picks (keyed picks for the hashing ones) by weight, within
    /// 5% of each endpoint's share.
    #[test]
    fn every_policy_respects_weights() {
        let weights = [1, 2, 3, 4];
        let set = hosts(&weights);
        for policy in POLICIES {
            let hashed = matches!(policy, LbPolicy::RingHash | LbPolicy::Maglev);
            let counts = histogram(&*balancer(policy, &set), set.len(), 10_000, hashed);
            assert_weighted(&counts, &weights, policy.name());
            if hashed {
                let unkeyed = histogram(&*balancer(policy, &set), set.len(), 10_000, false);
                assert_weighted(&unkeyed, &weights, "without a key: weighted random");
            }
        }
    }

    /// The traffic of avoided endpoints (backing off after failed connects, which stay in the
    /// set when neither health checks nor outlier detection take them out) spreads over the
    /// others by weight: three adjacent endpoints of ten down leave each of the seven others a
    /// seventh, not the next one in line the traffic of all three.
    #[test]
    fn avoided_endpoints_traffic_spreads_over_the_others_by_weight() {
        let set = hosts(&[1; 10]);
        let down = |i: usize| (3..6).contains(&i);
        for policy in POLICIES {
            let lb = balancer(policy, &set);
            let mut counts = vec![0; set.len()];
            for _ in 0..10_000 {
                let ctx = PickContext {
                    avoid: &down,
                    hash: None,
                };
                if let Some(i) = lb.pick(&ctx) {
                    counts[i] += 1;
                }
            }
            let live: Vec<usize> = (0..set.len())
                .filter(|&i| !down(i))
                .map(|i| counts[i])
                .collect();
            assert_eq!(live.iter().sum::<usize>(), 10_000, "{policy:?}: {counts:?}");
            assert_weighted(&live, &[1; 7], &format!("{policy:?}"));
        }
    }

    /// A pick over a set whose every endpoint is avoided (all backing off after failed
    /// connects, or all tried by a retry) tests each endpoint a few times, not each entry of a
    /// hashing balancer's ring or table (65,537 for `maglev` whatever the set's size).
    #[test]
    fn a_pick_with_every_endpoint_avoided_tests_each_endpoint_not_each_entry() {
        let set = hosts(&[1, 1, 1]);
        for policy in POLICIES {
            let lb = balancer(policy, &set);
            let tests = std::cell::Cell::new(0usize);
            let avoid_all = |_| {
                tests.set(tests.get() + 1);
                true
            };
            let ctx = PickContext {
                avoid: &avoid_all,
                hash: Some(7),
            };
            assert!(lb.pick(&ctx).is_some(), "{policy:?}");
            assert!(
                tests.get() <= 4 * set.len() + 2,
                "{policy:?}: {} tests of 3 endpoints",
                tests.get()
            );
        }
    }

    #[test]
    fn every_policy_avoids_and_handles_the_empty_set() {
        let set = hosts(&[1, 3]);
        for policy in POLICIES {
            let lb = balancer(policy, &set);
            for _ in 0..100 {
                let avoid_second = PickContext {
                    avoid: &|i| i == 1,
                    hash: Some(fastrand::u64(..)),
                };
                assert_eq!(lb.pick(&avoid_second), Some(0), "{policy:?}");
            }
            let avoid_all = PickContext {
                avoid: &|_| true,
                hash: Some(7),
            };
            assert!(lb.pick(&avoid_all).is_some(), "{policy:?}");
            let empty = balancer(policy, &[]);
            let any = PickContext {
                avoid: &|_| false,
                hash: Some(7),
            };
            assert!(empty.pick(&any).is_none(), "{policy:?}");
        }
    }
}
