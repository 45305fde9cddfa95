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
use crate::config::LocalitySpec;

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

/// One tier's members, and which of them are in rotation, as indexes into the set's members.
#[derive(Default)]
struct Members {
    all: Vec<usize>,
    in_rotation: Vec<usize>,
}

impl Tiered {
    /// Tiers of `members` by priority and, for a locality-aware cluster, distance, with shares
    /// from how many of each tier's members are `routable`; and the endpoints its picks index,
    /// each tier's in rotation, or all of a tier's in panic mode.
    ///
    /// Panic mode is Envoy's with priorities: while the tiers in rotation can take all the
    /// traffic between them, none panics; else a tier with fewer than the panic threshold
    /// percent of its members in rotation spreads its share over all of them.
    pub fn new(
        settings: &LbSettings,
        members: &[Arc<Host>],
        routable: &[bool],
    ) -> (Self, Vec<Arc<Host>>) {
        let key = |host: &Host| -> TierKey {
            let distance = settings
                .local
                .as_ref()
                .map_or(Distance::Zone, |local| distance(local, &host.locality));
            (host.priority, distance)
        };
        let mut by_key: BTreeMap<TierKey, Members> = BTreeMap::new();
        for (index, member) in members.iter().enumerate() {
            let tier = by_key.entry(key(member)).or_default();
            tier.all.push(index);
            if routable.get(index).copied().unwrap_or(false) {
                tier.in_rotation.push(index);
            }
        }
        // What each tier can take: its healthy share over the threshold, at most everything.
        let capacity: Vec<u64> = by_key
            .values()
            .map(|tier| {
                let healthy = tier.in_rotation.len() as f64 / tier.all.len().max(1) as f64;
                let share = healthy * 100.0 / settings.failover_threshold;
                (share.min(1.0) * SHARES as f64) as u64
            })
            .collect();
        let all_taken = capacity.iter().sum::<u64>() >= SHARES;
        let shares = shares(&capacity);
        let mut hosts = Vec::new();
        let mut until = 0;
        let mut tiers = Vec::new();
        for (tier, share) in by_key.into_values().zip(shares) {
            let panic = !all_taken
                && (tier.in_rotation.len() as f64) * 100.0
                    < settings.healthy_panic_threshold * tier.all.len() as f64;
            let picked = if panic { tier.all } else { tier.in_rotation };
            if picked.is_empty() {
                continue;
            }
            until += share;
            let tier_hosts: Vec<Arc<Host>> = picked
                .iter()
                .filter_map(|&i| members.get(i).cloned())
                .collect();
            let first = hosts.len();
            hosts.extend(tier_hosts.iter().cloned());
            tiers.push(Tier {
                balancer: build_policy(settings.policy, &tier_hosts),
                members: (first..hosts.len()).collect(),
                until,
            });
        }
        (Self { tiers }, hosts)
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
    use crate::config::LbPolicy;
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

    /// Round robin over tiers failing over at 70%, for a proxy at `local`, panicking below
    /// `panic` percent.
    fn settings(local: Option<LocalitySpec>, panic: f64) -> LbSettings {
        LbSettings {
            policy: LbPolicy::RoundRobin,
            local,
            failover_threshold: 70.0,
            healthy_panic_threshold: panic,
        }
    }

    /// The tiers of `members` with `in_rotation` of them in rotation, and the hosts they pick.
    fn tiered(
        settings: &LbSettings,
        members: &[Arc<Host>],
        in_rotation: &[usize],
    ) -> (Tiered, Vec<Arc<Host>>) {
        let routable: Vec<bool> = (0..members.len())
            .map(|i| in_rotation.contains(&i))
            .collect();
        Tiered::new(settings, members, &routable)
    }

    /// Counts picks per tier (zone, region, elsewhere) with `in_rotation` of `world()`.
    fn tier_counts(in_rotation: &[usize], avoid: &dyn Fn(usize) -> bool) -> [usize; 3] {
        let (lb, hosts) = tiered(&settings(Some(local()), 0.0), &world(), in_rotation);
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

    /// Picks per priority of `priorities()` with `in_rotation` of them, panicking below `panic`.
    fn by_priority(in_rotation: &[usize], panic: f64) -> [usize; 3] {
        let (lb, hosts) = tiered(&settings(None, panic), &priorities(), in_rotation);
        counts(&lb, &hosts, &|_| false, |host| host.priority as usize)
    }

    #[test]
    fn traffic_stays_at_the_first_priority_while_it_is_healthy_enough() {
        assert_eq!(by_priority(&[0, 1, 2, 3, 4, 5], 0.0), [10_000, 0, 0]);
        let [first, second, third] = by_priority(&[1, 2, 3, 4, 5], 0.0);
        assert!((6_800..7_500).contains(&first), "{first}");
        assert_eq!(first + second, 10_000);
        assert_eq!(third, 0);
        assert_eq!(by_priority(&[4, 5], 0.0), [0, 0, 10_000]);
    }

    /// Panic mode as Envoy has it with priorities: none while the tiers in rotation can take
    /// all the traffic (priority 0 gone whole fails over, its dead endpoints get nothing, where
    /// a threshold over the whole set, 4 of 6 in rotation, would not have panicked either, but
    /// 2 of 6 would); else each tier below the threshold spreads its share over all of its
    /// endpoints, and with none in rotation anywhere, priority 0 takes everything.
    #[test]
    fn tiers_panic_on_their_own_only_when_together_they_cannot_take_the_traffic() {
        assert_eq!(by_priority(&[2, 3, 4, 5], 50.0), [0, 10_000, 0]);
        assert_eq!(by_priority(&[4, 5], 50.0), [0, 0, 10_000], "no panic");
        assert_eq!(
            by_priority(&[], 50.0),
            [10_000, 0, 0],
            "priority 0 in panic"
        );
        assert_eq!(
            by_priority(&[], 0.0),
            [0, 0, 0],
            "never panics: no endpoint"
        );
        // One of two at priority 2 takes 50/70 of the traffic; the others, none in rotation,
        // panic and share the rest in proportion to what they can take: nothing.
        assert_eq!(by_priority(&[5], 50.0), [0, 0, 10_000]);
        // Priority 0 with one endpoint of four in rotation, priority 1 with none: together they
        // cannot take the traffic, so priority 0 panics and spreads it over all four.
        let members: Vec<Arc<Host>> = (0..5u16)
            .map(|i| host_at(i + 1, 1, at("r1", "z1"), u32::from(i / 4)))
            .collect();
        let (lb, hosts) = tiered(&settings(None, 50.0), &members, &[0]);
        let role = |host: &Host| match host.endpoint.address().port() {
            1 => 0,
            5 => 2,
            _ => 1,
        };
        let [live, dead, second] = counts(&lb, &hosts, &|_| false, role);
        assert!(live > 0 && dead > live, "{live} {dead}");
        assert_eq!(second, 0);
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
        let (lb, hosts) = tiered(&settings(Some(local()), 50.0), &members, &[0, 1, 2]);
        let port = |host: &Host| usize::from(host.endpoint.address().port() - 1);
        assert_eq!(counts(&lb, &hosts, &|_| false, port), [0, 10_000, 0]);
        // The zone's endpoint of priority 0 is avoided: its region's is next, not priority 1.
        let zone = |i: usize| hosts[i].endpoint.address().port() == 2;
        assert_eq!(counts(&lb, &hosts, &zone, port), [10_000, 0, 0]);
    }

    #[test]
    fn shares_fill_in_order_or_in_proportion() {
        assert_eq!(shares(&[10_000, 10_000, 10_000]), [10_000, 0, 0]);
        assert_eq!(shares(&[7_000, 10_000, 0]), [7_000, 3_000, 0]);
        assert_eq!(shares(&[2_000, 3_000, 0]), [4_000, 6_000, 0]);
        assert_eq!(shares(&[0, 0, 0]), [0, 0, 0]);
    }
}
