//! An index over a large route table: its routes found by the value of the metadata key most of
//! them match exactly (`method`, say), so that routing a request tries, in table order, only the
//! routes that can match it: those matching its value of the key exactly, and those with no
//! exact condition on the key. Without it, a request to the last of 10,000 routes tried all of
//! them.

use std::collections::HashMap;

use metaprotocol_core::{MetadataKey, RoutingView};
use rustc_hash::FxBuildHasher;

use super::RequestMatcher;

/// Tables shorter than this are scanned: an index would save next to nothing.
const MIN_ROUTES: usize = 16;
/// How many keys (those most routes match exactly) are weighed for the index.
const KEYS_TRIED: usize = 4;

/// The routes of a table by the value their exact condition on one key asks for.
#[derive(Debug)]
pub(super) struct ExactIndex {
    key: MetadataKey,
    /// Routes with an exact (not inverted) condition on `key`, by the value it asks for; their
    /// positions in the table, ascending.
    by_value: HashMap<Box<[u8]>, Box<[u32]>, FxBuildHasher>,
    /// Routes without one, which a request with any value (or none) may match; ascending.
    others: Box<[u32]>,
}

impl ExactIndex {
    /// The index of a table whose routes have `matchers`, in order, on the key that leaves a
    /// request the fewest routes to try; `None` for a table as well scanned (short, or with no
    /// key that leaves fewer than half).
    pub fn build(matchers: &[&RequestMatcher]) -> Option<Self> {
        if matchers.len() < MIN_ROUTES || u32::try_from(matchers.len()).is_err() {
            return None;
        }
        let mut routes_by_key: HashMap<&str, (&MetadataKey, usize), FxBuildHasher> =
            HashMap::default();
        for matcher in matchers {
            let mut keys: Vec<&MetadataKey> = matcher.exact_values().map(|(key, _)| key).collect();
            keys.sort_by_key(|key| key.as_str());
            keys.dedup();
            for key in keys {
                routes_by_key.entry(key.as_str()).or_insert((key, 0)).1 += 1;
            }
        }
        // The keys most routes match exactly, by name among as many (so that a table builds
        // alike each time); of those, the one whose index leaves a request the fewest routes
        // at worst. Not simply the most used: a key every route matches to one value (the
        // service's name, say) leaves every route to try.
        let mut keys: Vec<(&str, (&MetadataKey, usize))> = routes_by_key.into_iter().collect();
        keys.sort_by(|(a, (_, m)), (b, (_, n))| n.cmp(m).then_with(|| a.cmp(b)));
        keys.iter()
            .take(KEYS_TRIED)
            .map(|(_, (key, _))| Self::on(key, matchers))
            .min_by_key(Self::most_tried)
            .filter(|index| index.most_tried() * 2 <= matchers.len())
    }

    /// The index of the routes with `matchers` on `key`.
    fn on(key: &MetadataKey, matchers: &[&RequestMatcher]) -> Self {
        let mut by_value: HashMap<Box<[u8]>, Vec<u32>, FxBuildHasher> = HashMap::default();
        let mut others = Vec::new();
        for (position, matcher) in (0u32..).zip(matchers) {
            // Any of a route's exact values for the key will do: it matches only a request
            // whose value is every one of them.
            match matcher
                .exact_values()
                .find(|(k, _)| k.as_str() == key.as_str())
            {
                Some((_, value)) => by_value.entry(value.into()).or_default().push(position),
                None => others.push(position),
            }
        }
        Self {
            key: key.clone(),
            by_value: by_value
                .into_iter()
                .map(|(value, positions)| (value, positions.into_boxed_slice()))
                .collect(),
            others: others.into_boxed_slice(),
        }
    }

    /// The most routes a request tries.
    fn most_tried(&self) -> usize {
        let largest = self.by_value.values().map(|p| p.len()).max().unwrap_or(0);
        largest + self.others.len()
    }

    /// The positions of the routes that may match `request`, ascending.
    pub fn candidates(&self, request: &RoutingView<'_>) -> Candidates<'_> {
        let exact = request
            .get_bytes_of(&self.key)
            .and_then(|value| self.by_value.get(value))
            .map_or(&[][..], |positions| positions);
        Candidates {
            exact,
            others: &self.others,
        }
    }
}

/// Two ascending lists of positions, merged.
#[derive(Debug)]
pub(super) struct Candidates<'a> {
    exact: &'a [u32],
    others: &'a [u32],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let next = match (self.exact.split_first(), self.others.split_first()) {
            (Some((&a, rest)), Some((&b, _))) if a < b => {
                self.exact = rest;
                a
            }
            (_, Some((&b, rest))) => {
                self.others = rest;
                b
            }
            (Some((&a, rest)), None) => {
                self.exact = rest;
                a
            }
            (None, None) => return None,
        };
        usize::try_from(next).ok()
    }
}
