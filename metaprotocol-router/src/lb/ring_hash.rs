//! Consistent hashing on a ring (Ketama, as Envoy's `RING_HASH`): every endpoint owns points on
//! a 64-bit ring, in proportion to its weight, at the xxHash64 of `"<address>_<n>"`; a request
//! goes to the owner of the first point at or after its hash.
//!
//! The points depend only on the endpoints' addresses and weights, so every proxy (and every
//! restart) maps a key to the same endpoint, and an endpoint that joins or leaves moves only the
//! keys of the ring arcs it gains or loses. A retry that must avoid the endpoint walks on along
//! the ring, as the key would if that endpoint left.

use std::fmt::Write;
use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use super::{
    LoadBalancer, PickContext, Weights, first_owner_allowed, gcd, host_key, random_allowed,
};
use crate::cluster::Host;

/// Points per unit of weight (after the weights are divided by their greatest common divisor):
/// enough for each endpoint's share of the ring to be within a few percent of its weight's.
const POINTS_PER_WEIGHT: u64 = 256;
/// Points on the ring at most: past it, every endpoint gets proportionally fewer.
const MAX_RING_SIZE: u64 = 1 << 20;

/// A ring of (point, endpoint index), sorted by point.
#[derive(Debug)]
pub(crate) struct RingHash {
    ring: Box<[(u64, u32)]>,
    /// For requests without a hash key.
    weights: Weights,
}

impl RingHash {
    /// An endpoint's points depend only on its address and its weight (reduced by the weights'
    /// common divisor), not on the other endpoints: a membership change adds or removes the
    /// points of the endpoints that change, and no others (while the ring is under its cap).
    pub fn new(weights: Weights, hosts: &[Arc<Host>]) -> Self {
        let divisor = (0..hosts.len())
            .map(|i| weights.weight(i))
            .fold(0, gcd)
            .max(1);
        let units = weights.total() / divisor;
        let per_unit = POINTS_PER_WEIGHT.min(MAX_RING_SIZE / units.max(1)).max(1);
        let points_of = |index: usize| -> u64 {
            let own = weights.weight(index) / divisor;
            if units <= MAX_RING_SIZE {
                own * per_unit
            } else {
                // Weights too far apart for a point per unit (1 and 4e9, say): each endpoint
                // gets its share of the cap.
                let share = u128::from(own) * u128::from(MAX_RING_SIZE) / u128::from(units);
                u64::try_from(share).unwrap_or(MAX_RING_SIZE)
            }
            .max(1)
        };
        let size: u64 = (0..hosts.len()).map(points_of).sum();
        let mut ring = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // One buffer for every point's name: a string allocated per point (up to 2^20 of them)
        // took a third of the build.
        let mut name = String::new();
        for (index, host) in hosts.iter().enumerate() {
            let key = host_key(host);
            for n in 0..points_of(index) {
                name.clear();
                // Writing to a `String` cannot fail.
                let _ = write!(name, "{key}_{n}");
                ring.push((xxh64(name.as_bytes(), 0), index as u32));
            }
        }
        ring.sort_unstable();
        Self {
            ring: ring.into_boxed_slice(),
            weights,
        }
    }
}

impl LoadBalancer for RingHash {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let Some(hash) = ctx.hash else {
            return random_allowed(&self.weights, ctx);
        };
        let start = self.ring.partition_point(|(point, _)| *point < hash);
        let (wrapped, onward) = self.ring.split_at(start.min(self.ring.len()));
        let owners = onward
            .iter()
            .chain(wrapped)
            .map(|(_, index)| *index as usize);
        first_owner_allowed(owners, self.weights.len(), ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LbPolicy;
    use crate::lb::tests::hosts;
    use crate::lb::{LbSettings, build};

    /// Taking one endpoint of ten out moves only the keys it had (a tenth); putting it back
    /// moves exactly those back.
    #[test]
    fn a_membership_change_moves_only_the_keys_it_must() {
        crate::lb::tests::assert_minimal_disruption(LbPolicy::RingHash, 0.0);
    }

    #[test]
    fn weights_far_apart_keep_the_ring_under_its_cap() {
        let hosts = hosts(&[1, u32::MAX, 3]);
        let ring = RingHash::new(Weights::new(&hosts), &hosts).ring;
        // Each endpoint has at least one point, and the heaviest nearly all of them.
        assert!(ring.len() as u64 <= MAX_RING_SIZE + 2, "{}", ring.len());
        for index in 0..3 {
            assert!(ring.iter().any(|(_, owner)| *owner == index));
        }
        let heaviest = ring.iter().filter(|(_, owner)| *owner == 1).count() as u64;
        assert!(heaviest >= MAX_RING_SIZE - 2, "{heaviest}");
    }

    #[test]
    fn the_same_key_lands_on_the_same_endpoint_in_every_instance() {
        let settings = LbSettings {
            policy: LbPolicy::RingHash,
            local: None,
            failover_threshold: 70.0,
            healthy_panic_threshold: 50.0,
        };
        let a = build(&settings, &hosts(&[1, 2, 3]), &[true; 3]).1;
        let b = build(&settings, &hosts(&[1, 2, 3]), &[true; 3]).1;
        for key in 0..1000u64 {
            let ctx = PickContext {
                avoid: &|_| false,
                hash: Some(key.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            };
            assert_eq!(a.pick(&ctx), b.pick(&ctx));
        }
    }
}
