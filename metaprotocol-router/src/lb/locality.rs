//! Locality-aware balancing: the proxy's own zone first, then its region, then everywhere else,
//! failing over as a locality loses its healthy endpoints (Envoy's priority levels with an
//! overprovisioning factor).
//!
//! The set's endpoints fall into three tiers by their `locality` against the proxy's own. A tier
//! keeps all the traffic that reaches it while at least the failover threshold (a percentage of
//! its members) is in rotation, and proportionally less below it; what it does not keep goes to
//! the next tier. When the tiers together cannot take everything, the traffic is spread over
//! them in proportion to what each can take. Within a tier, the cluster's policy picks.
//!
//! Tiers are computed when the set is built (membership and health are what rebuild it), and a
//! pick that lands on an avoided endpoint (one backing off after connect failures, or one this
//! request already tried) moves on to the other tiers before settling for it.

use std::sync::Arc;

use super::{LoadBalancer, LocalityPreference, PickContext, build_policy};
use crate::cluster::Host;
use crate::config::{LbPolicy, LocalitySpec};

/// Tier shares are in parts of this.
const SHARES: u64 = 10_000;

/// One tier: its endpoints (indexes into the set) and their balancer.
#[derive(Debug)]
struct Tier {
    members: Box<[usize]>,
    balancer: Box<dyn LoadBalancer>,
    /// The running total of the tiers' shares up to this one, in parts of [`SHARES`].
    until: u64,
}

/// Tiers by locality, each with its share of the traffic.
#[derive(Debug)]
pub(crate) struct LocalityAware {
    tiers: Vec<Tier>,
}

/// How close an endpoint runs to the proxy: 0 in its zone, 1 in its region, 2 elsewhere.
fn distance(local: &LocalitySpec, endpoint: &LocalitySpec) -> usize {
    match (endpoint.region == local.region, endpoint.zone == local.zone) {
        (true, true) => 0,
        (true, false) => 1,
        (false, _) => 2,
    }
}

impl LocalityAware {
    /// Tiers of `hosts` (the endpoints in rotation) by distance, with shares from how many of
    /// each tier's `members` are in rotation.
    pub fn new(
        policy: LbPolicy,
        preference: &LocalityPreference,
        hosts: &[Arc<Host>],
        members: &[Arc<Host>],
    ) -> Self {
        let mut total = [0u64; 3];
        for member in members {
            total[distance(&preference.local, &member.locality)] += 1;
        }
        let mut in_tier: [Vec<usize>; 3] = Default::default();
        for (index, host) in hosts.iter().enumerate() {
            in_tier[distance(&preference.local, &host.locality)].push(index);
        }
        // What each tier can take: its healthy share over the threshold, at most everything.
        let capacity: Vec<u64> = (0..3)
            .map(|tier| {
                if total[tier] == 0 {
                    return 0;
                }
                let healthy = in_tier[tier].len() as f64 / total[tier] as f64;
                let share = healthy * 100.0 / preference.failover_threshold;
                (share.min(1.0) * SHARES as f64) as u64
            })
            .collect();
        let shares = shares(&capacity);
        let mut until = 0;
        let tiers = in_tier
            .into_iter()
            .zip(shares)
            .filter(|(members, _)| !members.is_empty())
            .map(|(members, share)| {
                until += share;
                let tier_hosts: Vec<Arc<Host>> = members
                    .iter()
                    .filter_map(|&i| hosts.get(i).cloned())
                    .collect();
                Tier {
                    balancer: build_policy(policy, &tier_hosts),
                    members: members.into_boxed_slice(),
                    until,
                }
            })
            .collect();
        Self { tiers }
    }

    /// Tier `tier`'s pick, as an index into the set.
    fn pick_in(&self, tier: &Tier, ctx: &PickContext<'_>) -> Option<usize> {
        let avoid = |i: usize| tier.members.get(i).is_none_or(|&index| (ctx.avoid)(index));
        let inner = PickContext {
            avoid: &avoid,
            hash: ctx.hash,
        };
        let index = tier.balancer.pick(&inner)?;
        tier.members.get(index).copied()
    }
}

/// Each tier's share of the traffic, in parts of [`SHARES`], from what each can take: in order
/// of distance, each takes what it can of what is left; if together they cannot take it all,
/// in proportion to what each can take.
fn shares(capacity: &[u64]) -> Vec<u64> {
    let sum: u64 = capacity.iter().sum();
    if sum == 0 {
        return capacity.to_vec();
    }
    if sum < SHARES {
        return capacity.iter().map(|c| c * SHARES / sum).collect();
    }
    let mut left = SHARES;
    capacity
        .iter()
        .map(|c| {
            let taken = (*c).min(left);
            left -= taken;
            taken
        })
        .collect()
}

impl LoadBalancer for LocalityAware {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let end = self.tiers.last()?.until.max(1);
        let point = match ctx.hash {
            Some(hash) => hash % end,
            None => fastrand::u64(..end),
        };
        let chosen = self.tiers.iter().position(|t| point < t.until).unwrap_or(0);
        let first = self.pick_in(&self.tiers[chosen], ctx);
        if first.is_some_and(|index| !(ctx.avoid)(index)) {
            return first;
        }
        // Everything the chosen tier has is avoided: the nearest tier that has another.
        self.tiers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != chosen)
            .filter_map(|(_, tier)| self.pick_in(tier, ctx))
            .find(|&index| !(ctx.avoid)(index))
            .or(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::tests::host;

    fn at(region: &str, zone: &str) -> LocalitySpec {
        LocalitySpec {
            region: region.into(),
            zone: zone.into(),
        }
    }

    /// Two endpoints in the proxy's zone, two in its region, two elsewhere.
    fn world() -> Vec<Arc<Host>> {
        [
            ("r1", "z1"),
            ("r1", "z1"),
            ("r1", "z2"),
            ("r1", "z2"),
            ("r2", "z3"),
            ("r2", "z3"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (r, z))| host(u16::try_from(i + 1).unwrap_or(1), 1, at(r, z)))
        .collect()
    }

    fn preference() -> LocalityPreference {
        LocalityPreference {
            local: at("r1", "z1"),
            failover_threshold: 70.0,
        }
    }

    /// Counts picks per tier (zone, region, elsewhere) with `in_rotation` of `world()`.
    fn tier_counts(in_rotation: &[usize], avoid: &dyn Fn(usize) -> bool) -> [usize; 3] {
        let members = world();
        let hosts: Vec<Arc<Host>> = in_rotation.iter().map(|&i| members[i].clone()).collect();
        let lb = LocalityAware::new(LbPolicy::RoundRobin, &preference(), &hosts, &members);
        let mut counts = [0; 3];
        for _ in 0..10_000 {
            let ctx = PickContext { avoid, hash: None };
            if let Some(i) = lb.pick(&ctx) {
                counts[distance(&preference().local, &hosts[i].locality)] += 1;
            }
        }
        counts
    }

    #[test]
    fn traffic_stays_in_the_zone_while_it_is_healthy_enough() {
        assert_eq!(tier_counts(&[0, 1, 2, 3, 4, 5], &|_| false), [10_000, 0, 0]);
        // Half the zone left: it keeps 50/70 of the traffic, the region the rest.
        let [zone, region, elsewhere] = tier_counts(&[1, 2, 3, 4, 5], &|_| false);
        assert!((6_800..7_500).contains(&zone), "{zone}");
        assert_eq!(zone + region, 10_000);
        assert_eq!(elsewhere, 0);
        // The zone and the region are gone: everything elsewhere.
        assert_eq!(tier_counts(&[4, 5], &|_| false), [0, 0, 10_000]);
    }

    #[test]
    fn avoided_endpoints_fail_over_at_once() {
        // Both zone endpoints back off after connect failures: the region takes over without
        // waiting for a rebuild.
        assert_eq!(tier_counts(&[0, 1, 2, 3, 4, 5], &|i| i < 2), [0, 10_000, 0]);
    }

    #[test]
    fn shares_fill_in_order_or_in_proportion() {
        assert_eq!(shares(&[10_000, 10_000, 10_000]), [10_000, 0, 0]);
        assert_eq!(shares(&[7_000, 10_000, 0]), [7_000, 3_000, 0]);
        assert_eq!(shares(&[2_000, 3_000, 0]), [4_000, 6_000, 0]);
        assert_eq!(shares(&[0, 0, 0]), [0, 0, 0]);
    }
}
