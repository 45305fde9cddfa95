//! Smooth weighted round robin (nginx's): each endpoint `weight` times per cycle, interleaved
//! rather than in runs, so that a heavy endpoint never takes a burst of consecutive requests.
//!
//! The cycle depends only on the weights, so it is computed when the set is built, and a pick
//! is one atomic increment into it. Each step of the construction adds every endpoint's weight
//! to its running credit, picks the endpoint with the most credit (the first of those) and takes
//! the total weight from it. Endpoints of equal weight earn alike, so a step compares one
//! candidate per distinct weight, not every endpoint (see [`Turns`]).
//!
//! A cycle is at most [`MAX_CYCLE`] turns. Weights whose total (reduced by their common
//! divisor) is larger cannot be scaled down to it without distorting their shares once there
//! are thousands of endpoints (each keeps at least one turn, and rounding takes up to a turn
//! from each), so such a set is walked instead: turn `t` goes to the endpoint whose band of the
//! cumulative weights holds the fractional part of `t` times the golden ratio. Those fractions
//! spread evenly over the bands (each new one falls in the largest gap left), so every endpoint
//! gets its exact share, interleaved; a pick is one atomic increment and a binary search.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{LoadBalancer, PickContext, Weights, gcd, weighted_allowed};

/// The longest cycle built: sets whose reduced weight total is larger are walked by the golden
/// ratio, which bounds both the memory and the build time of a set.
const MAX_CYCLE: u64 = 16_384;

/// 2^64 divided by the golden ratio: turn `t` times it, wrapping, is the fractional part of
/// `t` times the golden ratio, in 64-bit fixed point.
const GOLDEN_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// Smooth weighted round robin over a set, and a shared turn counter.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    schedule: Schedule,
    /// The set's weights, to walk by and to spread the turns of avoided endpoints by.
    weights: Weights,
    next: AtomicU64,
}

/// How a turn is mapped to an endpoint.
#[derive(Debug)]
enum Schedule {
    /// A precomputed cycle of endpoint indexes (empty for an empty set).
    Cycle(Box<[u32]>),
    /// The golden-ratio walk over the cumulative weights, for totals above [`MAX_CYCLE`].
    Walk,
}

impl RoundRobin {
    pub fn new(weights: &Weights) -> Self {
        let reduced = reduced(weights);
        let total: u64 = reduced.iter().sum();
        let (schedule, turns) = if total <= MAX_CYCLE {
            (Schedule::Cycle(smooth_cycle(&reduced)), total)
        } else {
            (Schedule::Walk, u64::MAX)
        };
        // Start at a random turn, so that proxies (and rebuilt sets) do not all send their first
        // requests to the same endpoint.
        let start = match turns {
            0 => 0,
            turns => fastrand::u64(..turns),
        };
        Self {
            schedule,
            weights: weights.clone(),
            next: AtomicU64::new(start),
        }
    }
}

impl LoadBalancer for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let index = match &self.schedule {
            Schedule::Cycle(cycle) => {
                let len = cycle.len() as u64;
                if len == 0 {
                    return None;
                }
                let turn = self.next.fetch_add(1, Ordering::Relaxed) % len;
                *cycle.get(turn as usize)? as usize
            }
            Schedule::Walk => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                let fraction = turn.wrapping_mul(GOLDEN_STEP);
                // The fraction scaled to the total weight: below it, so it fits.
                let point = (u128::from(fraction) * u128::from(self.weights.total())) >> 64;
                self.weights.at(u64::try_from(point).unwrap_or(0))
            }
        };
        Some(weighted_allowed(&self.weights, index, ctx))
    }
}

/// The weights reduced by their greatest common divisor.
fn reduced(weights: &Weights) -> Vec<u64> {
    let raw: Vec<u64> = (0..weights.len()).map(|i| weights.weight(i)).collect();
    let divisor = raw.iter().copied().fold(0, gcd).max(1);
    raw.iter().map(|w| w / divisor).collect()
}

/// One cycle of smooth weighted round robin over `weights`.
fn smooth_cycle(weights: &[u64]) -> Box<[u32]> {
    let total: u64 = weights.iter().sum();
    let mut turns = Turns::new(weights);
    (0..total).map(|_| turns.next_turn()).collect()
}

/// The construction of a smooth weighted cycle, by weight class. After `t` steps an endpoint of
/// weight `w` picked `c` times has `t * w - c * total` credit: among endpoints of equal weight
/// the one with the most is the one picked least often, the first of those, so they take their
/// turns in index order. A step thus compares one candidate per distinct weight, the next of
/// each class: the same turns as comparing every endpoint, at a cost that no longer grows with
/// the endpoints (distinct weights adding up to at most a cycle are at most about
/// `sqrt(2 * cycle)`: 181 for [`MAX_CYCLE`]; comparing every endpoint took 16 million credit
/// updates for 1,000 endpoints of random weights).
struct Turns {
    /// Endpoint indexes by weight, then index: each class is a run of it.
    order: Box<[u32]>,
    classes: Vec<WeightClass>,
    /// The cycle's length: what a turn costs its endpoint's credit.
    total: i64,
}

/// The endpoints of one weight (`Turns::order[start..end]`), and the next of them to take a
/// turn with its credit.
struct WeightClass {
    weight: i64,
    start: usize,
    end: usize,
    next: usize,
    /// The credit of the endpoint at `next`; those before it took one more turn, so have
    /// `total` less.
    credit: i64,
}

impl Turns {
    fn new(weights: &[u64]) -> Self {
        let weight = |index: u32| weights.get(index as usize).copied().unwrap_or(0);
        let mut order: Box<[u32]> = (0..weights.len() as u32).collect();
        // Stable: index order within a weight.
        order.sort_by_key(|&index| weight(index));
        let mut classes = Vec::new();
        let mut start = 0;
        for run in order.chunk_by(|a, b| weight(*a) == weight(*b)) {
            let first = run.first().copied().unwrap_or(0);
            classes.push(WeightClass {
                weight: i64::try_from(weight(first)).unwrap_or(i64::MAX),
                start,
                end: start + run.len(),
                next: start,
                credit: 0,
            });
            start += run.len();
        }
        let total = weights.iter().sum::<u64>();
        Self {
            order,
            classes,
            total: i64::try_from(total).unwrap_or(i64::MAX),
        }
    }

    /// The next turn: every endpoint earns its weight; the one with the most credit (the first
    /// of those) takes the turn and pays the total.
    fn next_turn(&mut self) -> u32 {
        let mut best = 0;
        for class in 0..self.classes.len() {
            self.classes[class].credit += self.classes[class].weight;
            if self.ahead(class, best) {
                best = class;
            }
        }
        let Some(class) = self.classes.get_mut(best) else {
            return 0;
        };
        let index = self.order[class.next];
        class.next += 1;
        if class.next == class.end {
            // Every endpoint of the class has taken one more turn.
            class.next = class.start;
            class.credit -= self.total;
        }
        index
    }

    /// True if the next endpoint of class `a` has more credit than that of class `b`, or as
    /// much and a lower index.
    fn ahead(&self, a: usize, b: usize) -> bool {
        let (a, b) = (&self.classes[a], &self.classes[b]);
        (a.credit, self.order[b.next]) > (b.credit, self.order[a.next])
    }
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

    /// nginx's construction as written: every step, every endpoint.
    fn reference_cycle(weights: &[u64]) -> Vec<u32> {
        let total: u64 = weights.iter().sum();
        let mut credit = vec![0i64; weights.len()];
        let mut cycle = Vec::new();
        for _ in 0..total {
            let mut best = 0;
            for (i, weight) in weights.iter().enumerate() {
                credit[i] += *weight as i64;
                if credit[i] > credit[best] {
                    best = i;
                }
            }
            credit[best] -= total as i64;
            cycle.push(best as u32);
        }
        cycle
    }

    #[test]
    fn the_cycle_is_nginx_s_for_any_weights() {
        let mut rng = fastrand::Rng::with_seed(42);
        for round in 0..300 {
            let len = rng.usize(1..40);
            let top = [2, 5, 100][round % 3];
            let weights: Vec<u64> = (0..len).map(|_| rng.u64(1..=top)).collect();
            assert_eq!(
                &*smooth_cycle(&weights),
                reference_cycle(&weights),
                "{weights:?}"
            );
        }
        // A set as large as a cycle gets, its weights skewed.
        let weights: Vec<u64> = (0..300)
            .map(|i| if i % 7 == 0 { 100 } else { rng.u64(1..=40) })
            .collect();
        assert!(weights.iter().sum::<u64>() <= MAX_CYCLE);
        assert_eq!(&*smooth_cycle(&weights), reference_cycle(&weights));
    }

    /// A step compares one candidate per distinct weight, and only totals up to [`MAX_CYCLE`]
    /// get a cycle: the largest cycle costs a few million comparisons, and 5,000 endpoints of
    /// random weights none (they are walked), not the endpoints times the cycle (80 million).
    #[test]
    fn a_step_compares_one_candidate_per_weight_not_every_endpoint() {
        let widest: Vec<u64> = (1..=180).collect();
        let steps: u64 = widest.iter().sum();
        assert!(steps <= MAX_CYCLE);
        let candidates = Turns::new(&widest).classes.len() as u64;
        assert!(
            steps * candidates <= 4_000_000,
            "{steps} steps x {candidates}"
        );
        let mut rng = fastrand::Rng::with_seed(7);
        for top in [100, 10_000, u32::MAX] {
            let weights: Vec<u32> = (0..5_000).map(|_| rng.u32(1..=top)).collect();
            let lb = RoundRobin::new(&Weights::new(&hosts(&weights)));
            assert!(matches!(lb.schedule, Schedule::Walk), "top weight {top}");
        }
    }

    #[test]
    fn weights_are_reduced_and_large_totals_walked_by_weight() {
        assert_eq!(reduced(&Weights::new(&hosts(&[200, 400, 600]))), [1, 2, 3]);
        let equal = RoundRobin::new(&Weights::new(&hosts(&[u32::MAX; 3])));
        assert!(matches!(&equal.schedule, Schedule::Cycle(c) if c.len() == 3));
        let weights = [1_000_000, 3_000_000, 1, u32::MAX];
        let set = hosts(&weights);
        let lb = RoundRobin::new(&Weights::new(&set));
        assert!(matches!(lb.schedule, Schedule::Walk));
        let counts = crate::lb::tests::histogram(&lb, set.len(), 10_000, false);
        let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
        for (count, weight) in counts.iter().zip(weights) {
            let share = *count as f64 / 10_000.0;
            assert!(
                (share - f64::from(weight) / total).abs() <= 0.005,
                "{counts:?}"
            );
        }
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

    /// In a set of thousands of endpoints whose weights differ, each endpoint keeps its
    /// weight's share: a cycle scaled down to 16,384 turns gave 4,000 endpoints of weight 2 and
    /// 4,000 of weight 3 one and two turns (a third and two thirds, not 40% and 60%).
    #[test]
    fn round_robin_keeps_weight_shares_in_large_sets() {
        let weights: Vec<u32> = (0..8_000).map(|i| if i % 2 == 0 { 2 } else { 3 }).collect();
        let set = hosts(&weights);
        let lb = RoundRobin::new(&Weights::new(&set));
        let ctx = PickContext {
            avoid: &|_| false,
            hash: None,
        };
        let picks = 200_000;
        let heavy = (0..picks)
            .filter_map(|_| lb.pick(&ctx))
            .filter(|i| i % 2 == 1)
            .count();
        let share = heavy as f64 / picks as f64;
        assert!(
            (share - 0.6).abs() <= 0.01,
            "weight-3 endpoints took {share}"
        );
    }
}
