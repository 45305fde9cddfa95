//! Consistent hashing with a Maglev lookup table (Google's Maglev, as Envoy's `MAGLEV`): a
//! table of [`TABLE_SIZE`] slots (a prime) is filled by the endpoints in turn, each following
//! its own permutation of the slots (an offset and a step from the xxHash64 of its address) and
//! taking slots in proportion to its weight; a request goes to the slot of its hash.
//!
//! Lookups are one index into the table. An endpoint that joins or leaves moves about its share
//! of the keys, a little more than a ring would, in exchange for the constant-time lookup and
//! an even spread. A retry that must avoid the endpoint takes the next slot's owner.

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
    /// Weight earned towards its next slot.
    credit: u64,
}

impl Permutation {
    fn new(key: &str) -> Self {
        Self {
            offset: xxh64(key.as_bytes(), 0) % TABLE_SIZE,
            skip: xxh64(key.as_bytes(), 1) % (TABLE_SIZE - 1) + 1,
            next: 0,
            credit: 0,
        }
    }

    /// The next slot of its permutation.
    fn slot(&mut self) -> usize {
        let slot = (self.offset + self.skip * self.next) % TABLE_SIZE;
        self.next += 1;
        slot as usize
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
        let heaviest = (0..hosts.len())
            .map(|i| weights.weight(i))
            .max()
            .unwrap_or(1);
        let mut table = vec![u32::MAX; TABLE_SIZE as usize];
        let mut filled = 0u64;
        // Each round, every endpoint earns its weight; one of `heaviest` weight earns a slot
        // every round, lighter ones proportionally less often.
        while filled < TABLE_SIZE {
            for (index, permutation) in permutations.iter_mut().enumerate() {
                permutation.credit += weights.weight(index);
                if permutation.credit < heaviest {
                    continue;
                }
                permutation.credit -= heaviest;
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
    use crate::config::LbPolicy;

    /// Taking one endpoint of ten out moves its tenth of the keys, and at most 1% of the keys more.
    #[test]
    fn a_membership_change_moves_few_keys_beyond_its_own() {
        crate::lb::tests::assert_minimal_disruption(LbPolicy::Maglev, 0.01);
    }
}
