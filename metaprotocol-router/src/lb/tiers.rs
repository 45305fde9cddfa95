//! Failover tiers: Envoy's priority levels, and locality-aware balancing (the proxy's own
//! zone first, then its region, then everywhere else), failing over as a tier loses its healthy
//! endpoints (Envoy's overprovisioning factor).
//!
//! The set's endpoints fall into tiers by their `priority`, and within a priority, for a
//! locality-aware cluster, by their `locality` against the proxy's own. A tier keeps all the
//! traffic that reaches it while at least the failover threshold (a percentage of its members)
//! is in rotation, and proportionally less below it; what it does not keep goes to the next
//! tier. When the tiers together cannot take everything, the traffic is spread over them in
//! proportion to what each can take. Within a tier, the cluster's policy picks.
//!
//! Tiers are computed when the set is built (membership and health are what rebuild it), and a
//! pick that lands on an avoided endpoint (one backing off after connect failures, or one this
//! request already tried) moves on to the other tiers before settling for it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{LbSettings, LoadBalancer, PickContext, build_policy};
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

/// Tiers by priority and locality, each with its share of the traffic.
#[derive(Debug)]
pub(crate) struct Tiered {
    tiers: Vec<Tier>,
}

/// A tier's place in the failover order: the endpoints' priority, then how close they run to
/// the proxy.
type TierKey = (u32, Distance);

/// How close an endpoint runs to the proxy: in its zone, in its region, elsewhere (and, in a
/// cluster that is not locality-aware, nowhere in particular: every endpoint is `Zone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Distance {
    Zone,
    Region,
    Elsewhere,
}

fn distance(local: &LocalitySpec, endpoint: &LocalitySpec) -> Distance {
    match (endpoint.region == local.region, endpoint.zone == local.zone) {
        (true, true) => Distance::Zone,
        (true, false) => Distance::Region,
        (false, _) => Distance::Elsewhere,
    }
}

/// True when `settings` split `members` into tiers: the cluster is locality-aware, or one of
/// its endpoints has a priority after the first.
pub(super) fn applies(settings: &LbSettings, members: &[Arc<Host>]) -> bool {
    settings.local.is_some() || members.iter().any(|member| member.priority != 0)
}

impl Tiered {
    /// Tiers of `hosts` (the endpoints in rotation) by priority and, with `local`, distance,
    /// with shares from how many of each tier's `members` are in rotation.
    pub fn new(
        policy: LbPolicy,
        local: Option<&LocalitySpec>,
        failover_threshold: f64,
        hosts: &[Arc<Host>],
        members: &[Arc<Host>],
    ) -> Self {
        let key = |host: &Host| -> TierKey {
            let distance = local.map_or(Distance::Zone, |local| distance(local, &host.locality));
            (host.priority, distance)
        };
        // Each tier's members and those of them in rotation, in failover order.
        let mut by_key: BTreeMap<TierKey, (u64, Vec<usize>)> = BTreeMap::new();
        for member in members {
            by_key.entry(key(member)).or_default().0 += 1;
        }
        for (index, host) in hosts.iter().enumerate() {
            by_key.entry(key(host)).or_default().1.push(index);
        }
        // What each tier can take: its healthy share over the threshold, at most everything.
        let capacity: Vec<u64> = by_key
            .values()
            .map(|(total, in_rotation)| {
                if *total == 0 {
                    return 0;
                }
                let healthy = in_rotation.len() as f64 / *total as f64;
                let share = healthy * 100.0 / failover_threshold;
                (share.min(1.0) * SHARES as f64) as u64
            })
            .collect();
        let shares = shares(&capacity);
        let mut until = 0;
        let tiers = by_key
            .into_values()
            .map(|(_, members)| members)
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

impl LoadBalancer for Tiered {
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
    use crate::lb::tests::{host, host_at};

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

    fn local() -> LocalitySpec {
        at("r1", "z1")
    }

    /// Counts picks of `lb` over `hosts` per tier, as `tier_of` numbers them.
    fn counts(
        lb: &Tiered,
        hosts: &[Arc<Host>],
        avoid: &dyn Fn(usize) -> bool,
        tier_of: impl Fn(&Host) -> usize,
    ) -> [usize; 3] {
        let mut counts = [0; 3];
        for _ in 0..10_000 {
            let ctx = PickContext { avoid, hash: None };
            if let Some(i) = lb.pick(&ctx) {
                counts[tier_of(&hosts[i])] += 1;
            }
        }
        counts
    }

    /// Counts picks per tier (zone, region, elsewhere) with `in_rotation` of `world()`.
    fn tier_counts(in_rotation: &[usize], avoid: &dyn Fn(usize) -> bool) -> [usize; 3] {
        let members = world();
        let hosts: Vec<Arc<Host>> = in_rotation.iter().map(|&i| members[i].clone()).collect();
        let lb = Tiered::new(LbPolicy::RoundRobin, Some(&local()), 70.0, &hosts, &members);
        counts(&lb, &hosts, avoid, |host| {
            distance(&local(), &host.locality) as usize
        })
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

    /// Two endpoints at each of priorities 0, 1 and 2, all in one place.
    fn priorities() -> Vec<Arc<Host>> {
        (0..6u16)
            .map(|i| host_at(i + 1, 1, at("r1", "z1"), u32::from(i / 2)))
            .collect()
    }

    #[test]
    fn traffic_stays_at_the_first_priority_while_it_is_healthy_enough() {
        let members = priorities();
        let by_priority = |in_rotation: &[usize]| {
            let hosts: Vec<Arc<Host>> = in_rotation.iter().map(|&i| members[i].clone()).collect();
            let lb = Tiered::new(LbPolicy::RoundRobin, None, 70.0, &hosts, &members);
            counts(&lb, &hosts, &|_| false, |host| host.priority as usize)
        };
        assert_eq!(by_priority(&[0, 1, 2, 3, 4, 5]), [10_000, 0, 0]);
        let [first, second, third] = by_priority(&[1, 2, 3, 4, 5]);
        assert!((6_800..7_500).contains(&first), "{first}");
        assert_eq!(first + second, 10_000);
        assert_eq!(third, 0);
        assert_eq!(by_priority(&[4, 5]), [0, 0, 10_000]);
    }

    /// Priorities come first, localities within them: endpoints of priority 0 in the proxy's
    /// region take the traffic before those of priority 1 in its zone.
    #[test]
    fn priorities_order_tiers_before_localities() {
        let members = vec![
            host_at(1, 1, at("r1", "z2"), 0),
            host_at(2, 1, at("r1", "z1"), 0),
            host_at(3, 1, at("r1", "z1"), 1),
        ];
        let lb = Tiered::new(
            LbPolicy::RoundRobin,
            Some(&local()),
            70.0,
            &members,
            &members,
        );
        let port = |host: &Host| usize::from(host.endpoint.address().port() - 1);
        assert_eq!(counts(&lb, &members, &|_| false, port), [0, 10_000, 0]);
        // The zone's endpoint of priority 0 is avoided: its region's is next, not priority 1.
        assert_eq!(counts(&lb, &members, &|i| i == 1, port), [10_000, 0, 0]);
    }

    #[test]
    fn shares_fill_in_order_or_in_proportion() {
        assert_eq!(shares(&[10_000, 10_000, 10_000]), [10_000, 0, 0]);
        assert_eq!(shares(&[7_000, 10_000, 0]), [7_000, 3_000, 0]);
        assert_eq!(shares(&[2_000, 3_000, 0]), [4_000, 6_000, 0]);
        assert_eq!(shares(&[0, 0, 0]), [0, 0, 0]);
    }
}
