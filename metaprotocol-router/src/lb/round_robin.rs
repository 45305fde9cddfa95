//! Smooth weighted round robin (nginx's): each endpoint `weight` times per cycle, interleaved
//! rather than in runs, so that a heavy endpoint never takes a burst of consecutive requests.
//!
//! The cycle depends only on the weights, so it is computed when the set is built, and a pick
//! is one atomic increment into it. Each step of the construction adds every endpoint's weight
//! to its running credit, picks the endpoint with the most credit and takes the total weight
//! from it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{LoadBalancer, PickContext, Weights, gcd, weighted_allowed};

/// The longest cycle built: larger weight totals are scaled down to it (each endpoint keeping
/// at least one turn), which bounds both the memory and the build time of a set.
const MAX_CYCLE: u64 = 16_384;

/// A precomputed smooth weighted cycle and a shared turn counter.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    cycle: Box<[u32]>,
    /// The set's weights, to spread the turns of avoided endpoints by.
    weights: Weights,
    next: AtomicU64,
}

impl RoundRobin {
    pub fn new(weights: &Weights) -> Self {
        let cycle = smooth_cycle(&scaled(weights));
        // Start at a random turn, so that proxies (and rebuilt sets) do not all send their first
        // requests to the same endpoint.
        let start = match cycle.len() {
            0 => 0,
            len => fastrand::u64(..len as u64),
        };
        Self {
            cycle,
            weights: weights.clone(),
            next: AtomicU64::new(start),
        }
    }
}

impl LoadBalancer for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.cycle.len() as u64;
        if len == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let index = *self.cycle.get(turn as usize)? as usize;
        Some(weighted_allowed(&self.weights, index, ctx))
    }
}

/// The weights reduced by their greatest common divisor and, when their total is still above
/// [`MAX_CYCLE`], scaled down to about it (never below one turn each).
fn scaled(weights: &Weights) -> Vec<u64> {
    let raw: Vec<u64> = (0..weights.len()).map(|i| weights.weight(i)).collect();
    let divisor = raw.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<u64> = raw.iter().map(|w| w / divisor).collect();
    let total: u64 = reduced.iter().sum();
    if total <= MAX_CYCLE {
        return reduced;
    }
    reduced
        .iter()
        .map(|w| (w.saturating_mul(MAX_CYCLE) / total).max(1))
        .collect()
}

/// One cycle of smooth weighted round robin over `weights`.
fn smooth_cycle(weights: &[u64]) -> Box<[u32]> {
    let total: u64 = weights.iter().sum();
    if weights.iter().all(|w| *w == 1) {
        // Equal weights: plain turns, without the quadratic construction.
        return (0..weights.len()).map(|i| i as u32).collect();
    }
    let total_credit = i64::try_from(total).unwrap_or(i64::MAX);
    let mut credit = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, weight) in weights.iter().enumerate() {
            credit[i] += i64::try_from(*weight).unwrap_or(i64::MAX);
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total_credit;
        cycle.push(best as u32);
    }
    cycle.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::tests::hosts;

    #[test]
    fn the_cycle_interleaves_by_weight() {
        let cycle = smooth_cycle(&[5, 1, 1]);
        assert_eq!(&*cycle, &[0, 0, 1, 0, 2, 0, 0], "nginx's example");
        let cycle = smooth_cycle(&[1, 1, 1]);
        assert_eq!(&*cycle, &[0, 1, 2]);
        assert!(smooth_cycle(&[]).is_empty());
    }

    #[test]
    fn weights_are_reduced_and_large_totals_scaled() {
        assert_eq!(scaled(&Weights::new(&hosts(&[200, 400, 600]))), [1, 2, 3]);
        let big = scaled(&Weights::new(&hosts(&[1_000_000, 3_000_000, 1])));
        assert!(big.iter().sum::<u64>() <= MAX_CYCLE + 3, "{big:?}");
        assert_eq!(big[1] / big[0], 3);
        assert_eq!(big[2], 1, "every endpoint keeps a turn");
    }

    #[test]
    fn picks_follow_the_cycle() {
        let lb = RoundRobin::new(&Weights::new(&hosts(&[2, 1])));
        let ctx = PickContext {
            avoid: &|_| false,
            hash: None,
        };
        let picks: Vec<usize> = (0..6).filter_map(|_| lb.pick(&ctx)).collect();
        let ones = picks.iter().filter(|i| **i == 1).count();
        assert_eq!(ones, 2, "{picks:?}");
        assert!(picks.windows(2).all(|w| w != [1, 1]), "{picks:?}");
    }
}
