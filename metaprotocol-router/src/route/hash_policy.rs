//! A route's `hash_policy`: the metadata keys whose values make a request's consistent-hashing
//! key, for `ring_hash` and `maglev` clusters.
//!
//! The key is the xxHash64 of the keys present and their values, taken in sorted key order: the
//! order the config lists them in does not matter, nor the order the request carries them in,
//! and every proxy instance computes the same key for the same request, so all of them send it
//! to the same endpoint. Values are looked up as route matching sees them (routing keys set by
//! filters first, then the request's metadata). A request carrying none of the keys has no
//! hash key (its cluster picks at random, by weight). Computing it does not allocate.

use metaprotocol_core::{MetadataKey, RoutingView};
use xxhash_rust::xxh64::Xxh64;

/// The keys of one route's hash policy, sorted and without duplicates.
#[derive(Debug, Default)]
pub(crate) struct HashPolicy {
    keys: Box<[MetadataKey]>,
}

impl HashPolicy {
    pub fn new(keys: &[String]) -> Self {
        let mut names: Vec<&str> = keys.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        Self {
            keys: names.into_iter().map(MetadataKey::new).collect(),
        }
    }

    /// The request's hash key; `None` when the policy is empty or the request has none of its
    /// keys.
    pub fn hash(&self, request: &RoutingView<'_>) -> Option<u64> {
        let mut hasher = Xxh64::new(0);
        let mut found = false;
        for key in &*self.keys {
            if let Some(value) = request.get_bytes_of(key) {
                found = true;
                let key = key.as_str();
                // Lengths keep ("ab", "c") and ("a", "bc") apart.
                hasher.update(&(key.len() as u64).to_le_bytes());
                hasher.update(key.as_bytes());
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(value);
            }
        }
        found.then(|| hasher.digest())
    }
}

#[cfg(test)]
mod tests {
    use metaprotocol_core::{ByteStr, Metadata, RoutingKeys};

    use super::*;

    fn hash_of(policy: &[&str], metadata: &[(&str, &str)], keys: &[(&str, &str)]) -> Option<u64> {
        let policy = HashPolicy::new(&policy.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>());
        let metadata: Metadata = metadata
            .iter()
            .map(|(k, v)| (ByteStr::copy_from_str(k), ByteStr::copy_from_str(v)))
            .collect();
        let mut routing = RoutingKeys::new();
        for (k, v) in keys {
            routing.set(ByteStr::copy_from_str(k), ByteStr::copy_from_str(v));
        }
        policy.hash(&RoutingView {
            metadata: &metadata,
            keys: &routing,
        })
    }

    #[test]
    fn the_key_depends_on_values_not_on_order() {
        let a = hash_of(
            &["user", "tenant"],
            &[("user", "u1"), ("tenant", "t1"), ("x", "1")],
            &[],
        );
        let b = hash_of(
            &["tenant", "user"],
            &[("tenant", "t1"), ("user", "u1")],
            &[],
        );
        assert!(a.is_some());
        assert_eq!(a, b, "order-independent; other keys do not count");
        assert_ne!(
            a,
            hash_of(
                &["user", "tenant"],
                &[("user", "u2"), ("tenant", "t1")],
                &[]
            )
        );
        assert_ne!(
            hash_of(&["a", "b"], &[("a", "xy"), ("b", "z")], &[]),
            hash_of(&["a", "b"], &[("a", "x"), ("b", "yz")], &[])
        );
        assert_eq!(
            hash_of(&["user"], &[("user", "meta")], &[("user", "u1")]),
            hash_of(&["user"], &[("user", "u1")], &[]),
            "a filter's routing key wins over the metadata"
        );
        assert_eq!(hash_of(&["user"], &[("tenant", "t1")], &[]), None);
        assert_eq!(hash_of(&[], &[("user", "u1")], &[]), None);
        assert_eq!(
            hash_of(&["user"], &[("user", "u1")], &[]),
            Some(10_526_257_410_155_405_164),
            "stable across builds and instances"
        );
    }
}
