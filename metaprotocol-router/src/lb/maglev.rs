//! Consistent hashing with a Maglev lookup table (Google's Maglev, as Envoy's `MAGLEV`): a
//! table of [`TABLE_SIZE`] slots (a prime) is filled by the endpoints in turn, each following
//! its own permutation of the slots (an offset and a step from the xxHash64 of its address) and
//! taking slots in proportion to its weight; a request goes to the slot of its hash.
//!
//! Lookups are one index into the table. An endpoint that joins or leaves moves about its share
//! of the keys, a little more than a ring would, in exchange for the constant-time lookup and
//! an even spread. A retry that must avoid the endpoint takes the next slot's owner.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use super::{LoadBalancer, PickContext, Weights, first_owner_allowed, host_key, random_allowed};
use crate::cluster::Host;

/// Slots in the table: a prime, Envoy's default. Far more slots than endpoints keeps the
/// disruption of a membership change near the minimum.
const TABLE_SIZE: u64 = 65_537;

/// A filled lookup table of endpoint indexes.
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Box<[u32]>,
    /// For requests without a hash key.
    weights: Weights,
}

/// One endpoint's permutation of the slots, and how far along it is.
struct Permutation {
    offset: u64,
    skip: u64,
    next: u64,
}

impl Permutation {
    fn new(key: &str) -> Self {
        Self {
            offset: xxh64(key.as_bytes(), 0) % TABLE_SIZE,
            skip: xxh64(key.as_bytes(), 1) % (TABLE_SIZE - 1) + 1,
            next: 0,
        }
    }

    /// The next slot of its permutation.
    fn slot(&mut self) -> usize {
        let slot = (self.offset + self.skip * self.next) % TABLE_SIZE;
        self.next += 1;
        slot as usize
    }
}

/// Rounds may visit this many endpoints per slot claimed, on average, before the claims come
/// from a queue instead: a visit is an addition and a comparison, a queue operation a few dozen
/// of them.
const VISITS_PER_CLAIM: u64 = 32;

/// The order in which endpoints claim slots: in rounds, each endpoint earning its weight in
/// credit every round and claiming a slot for each `heaviest` earned (one of the heaviest weight
/// claims one every round, lighter ones proportionally less often), in index order within a
/// round. An endpoint's `k`-th claim is thus in round `ceil(k * heaviest / weight)`.
struct Claims<'a> {
    weights: &'a Weights,
    heaviest: u64,
    order: ClaimOrder,
}

/// How [`Claims`] finds the next claim. Visiting every endpoint every round costs
/// `heaviest / weight` visits per claim on average: nothing wasted with equal weights, nearly
/// every visit with one endpoint far heavier than the rest (65,537 rounds of its claims, times
/// the endpoints). Such sets take their claims from a queue instead: the same order, at one
/// queue operation a claim.
enum ClaimOrder {
    /// Every endpoint in turn, with the credit each has earned, and the next to visit.
    Rounds { credit: Vec<u64>, visit: usize },
    /// Each endpoint's next claim: (its round, the endpoint, which of its claims), first first.
    Queue(BinaryHeap<Reverse<(u64, u32, u64)>>),
}

/// The greatest weight of `weights`.
fn heaviest(weights: &Weights) -> u64 {
    (0..weights.len())
        .map(|i| weights.weight(i))
        .max()
        .unwrap_or(1)
}

/// The round of the `k`-th claim of an endpoint of `weight`.
fn round_of(k: u64, weight: u64, heaviest: u64) -> u64 {
    k.saturating_mul(heaviest).div_ceil(weight.max(1))
}

impl<'a> Claims<'a> {
    /// The claims of the endpoints of `weights`, by rounds or from a queue, whichever is
    /// cheaper.
    fn new(weights: &'a Weights) -> Self {
        // Rounds visit every endpoint once per `heaviest` weight claimed.
        let visits = heaviest(weights).saturating_mul(weights.len() as u64);
        let queued = visits > VISITS_PER_CLAIM.saturating_mul(weights.total());
        Self::ordered(weights, queued)
    }

    /// The claims found by rounds, or from the queue when `queued`.
    fn ordered(weights: &'a Weights, queued: bool) -> Self {
        let heaviest = heaviest(weights);
        let order = if queued {
            let first = |index: u32| round_of(1, weights.weight(index as usize), heaviest);
            ClaimOrder::Queue(
                (0..weights.len() as u32)
                    .map(|index| Reverse((first(index), index, 1)))
                    .collect(),
            )
        } else {
            ClaimOrder::Rounds {
                credit: vec![0; weights.len()],
                visit: 0,
            }
        };
        Self {
            weights,
            heaviest,
            order,
        }
    }
}

impl Iterator for Claims<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match &mut self.order {
            ClaimOrder::Rounds { credit, visit } => {
                // The heaviest claims every round: one round of visits finds a claim.
                for _ in 0..credit.len() {
                    let index = *visit;
                    *visit = (index + 1) % credit.len();
                    let earned = credit.get_mut(index)?;
                    *earned += self.weights.weight(index);
                    if *earned >= self.heaviest {
                        *earned -= self.heaviest;
                        return Some(index as u32);
                    }
                }
                None
            }
            ClaimOrder::Queue(queue) => {
                let mut first = queue.peek_mut()?;
                let Reverse((_, index, k)) = *first;
                let weight = self.weights.weight(index as usize);
                *first = Reverse((round_of(k + 1, weight, self.heaviest), index, k + 1));
                Some(index)
            }
        }
    }
}

impl Maglev {
    pub fn new(weights: Weights, hosts: &[Arc<Host>]) -> Self {
        if hosts.is_empty() {
            return Self {
                table: Box::new([]),
                weights,
            };
        }
        let mut permutations: Vec<Permutation> = hosts
            .iter()
            .map(|h| Permutation::new(&host_key(h)))
            .collect();
        let mut table = vec![u32::MAX; TABLE_SIZE as usize];
        for index in Claims::new(&weights).take(TABLE_SIZE as usize) {
            let Some(permutation) = permutations.get_mut(index as usize) else {
                break;
            };
            loop {
                let slot = permutation.slot();
                if table[slot] == u32::MAX {
                    table[slot] = index;
                    break;
                }
            }
        }
        Self {
            table: table.into_boxed_slice(),
            weights,
        }
    }
}

impl LoadBalancer for Maglev {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let Some(hash) = ctx.hash else {
            return random_allowed(&self.weights, ctx);
        };
        let start = (hash % TABLE_SIZE) as usize;
        let (wrapped, onward) = self.table.split_at(start.min(self.table.len()));
        let owners = onward.iter().chain(wrapped).map(|index| *index as usize);
        first_owner_allowed(owners, self.weights.len(), ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LbPolicy;
    use crate::lb::tests::hosts;

    /// Taking one endpoint of ten out moves its tenth of the keys, and at most 1% of the keys more.
    #[test]
    fn a_membership_change_moves_few_keys_beyond_its_own() {
        crate::lb::tests::assert_minimal_disruption(LbPolicy::Maglev, 0.01);
    }

    /// The table filled in rounds as written: every round, every endpoint earns its weight,
    /// and claims a slot for each `heaviest` earned.
    fn reference_table(weights: &Weights, hosts: &[Arc<Host>]) -> Vec<u32> {
        let mut permutations: Vec<Permutation> = hosts
            .iter()
            .map(|h| Permutation::new(&host_key(h)))
            .collect();
        let heaviest = heaviest(weights);
        let mut credit = vec![0; hosts.len()];
        let mut table = vec![u32::MAX; TABLE_SIZE as usize];
        let mut filled = 0;
        while filled < TABLE_SIZE {
            for (index, permutation) in permutations.iter_mut().enumerate() {
                credit[index] += weights.weight(index);
                if credit[index] < heaviest {
                    continue;
                }
                credit[index] -= heaviest;
                loop {
                    let slot = permutation.slot();
                    if table[slot] == u32::MAX {
                        table[slot] = index as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == TABLE_SIZE {
                    break;
                }
            }
        }
        table
    }

    /// The claims come in the rounds' order, so the table is slot for slot the one rounds over
    /// every endpoint fill: equal, random and skewed weights.
    #[test]
    fn the_table_is_the_one_rounds_fill() {
        let mut rng = fastrand::Rng::with_seed(11);
        let sets: Vec<Vec<u32>> = vec![
            vec![1; 50],
            (0..200).map(|_| rng.u32(1..=100)).collect(),
            (0..300).map(|i| if i == 0 { 1_000 } else { 1 }).collect(),
            (0..40).map(|_| rng.u32(1..=u32::MAX)).collect(),
            vec![7],
        ];
        for weights in sets {
            let set = hosts(&weights);
            let maglev = Maglev::new(Weights::new(&set), &set);
            assert_eq!(
                *maglev.table,
                *reference_table(&Weights::new(&set), &set),
                "{weights:?}"
            );
        }
    }

    /// Both ways of finding claims give the same order.
    #[test]
    fn rounds_and_the_queue_claim_alike() {
        let mut rng = fastrand::Rng::with_seed(5);
        for round in 0..50 {
            let top = [1, 10, 1_000, u32::MAX][round % 4];
            let weights: Vec<u32> = (0..rng.usize(1..60)).map(|_| rng.u32(1..=top)).collect();
            let weights = Weights::new(&hosts(&weights));
            let rounds: Vec<u32> = Claims::ordered(&weights, false).take(5_000).collect();
            let queued: Vec<u32> = Claims::ordered(&weights, true).take(5_000).collect();
            assert_eq!(rounds, queued);
        }
        let weights = Weights::new(&hosts(&[3, 1, 2]));
        let order: Vec<u32> = Claims::ordered(&weights, true).take(12).collect();
        // Rounds 1 to 6: 0 every round, 1 every third, 2 two rounds of three.
        assert_eq!(order, [0, 0, 2, 0, 1, 2, 0, 0, 2, 0, 1, 2]);
    }

    /// Rounds waste at most [`VISITS_PER_CLAIM`] visits per claim: a set with one endpoint far
    /// heavier than the rest (whose rounds would visit 5,000 endpoints 10,000 times for 65,537
    /// claims) takes its claims from the queue.
    #[test]
    fn a_skewed_set_claims_from_the_queue() {
        let skewed: Vec<u32> = (0..5_000).map(|i| if i == 0 { 1_000 } else { 1 }).collect();
        let weights = Weights::new(&hosts(&skewed));
        assert!(matches!(Claims::new(&weights).order, ClaimOrder::Queue(_)));
        let mut rng = fastrand::Rng::with_seed(3);
        for set in [
            vec![1; 5_000],
            (0..5_000).map(|_| rng.u32(1..=100)).collect(),
        ] {
            let weights = Weights::new(&hosts(&set));
            assert!(matches!(
                Claims::new(&weights).order,
                ClaimOrder::Rounds { .. }
            ));
        }
    }
}
