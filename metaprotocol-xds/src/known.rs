//! The encoded form of every resource the client has accepted, so that one sent again unchanged
//! is known without decoding it.
//!
//! A control plane sends what it has again and again: every state-of-the-world response carries
//! all the resources of its type, a reconnect sends everything, and a delta response, merged
//! into what the client holds, is handled as a complete one. Decoding, translating and applying
//! all of it for each change would make one endpoint's change among 10,000 clusters cost as
//! much as the first load, and show every resource as updated in `/config_dump`. A resource
//! whose bytes are those last accepted under its name is neither decoded nor applied again, as
//! Envoy skips a cluster whose hash is unchanged. One in other bytes that translate to what is
//! held is not applied either, and is known by its new bytes from then on (see the state's
//! `decode_all`).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// The bytes each accepted resource of one type was sent as, by name, and an index from their
/// hash back to the name.
#[derive(Debug, Default)]
pub(crate) struct Known {
    by_name: HashMap<String, Vec<u8>>,
    /// The hash of each resource's bytes, to its name (two resources of one hash keep one entry:
    /// the other is decoded, as if unknown).
    by_hash: HashMap<u64, String>,
    hasher: RandomState,
}

impl Known {
    /// The name of the accepted resource sent as `bytes`, if there is one.
    pub fn name_of(&self, bytes: &[u8]) -> Option<&str> {
        let name = self.by_hash.get(&self.hasher.hash_one(bytes))?;
        (self.by_name.get(name)?.as_slice() == bytes).then_some(name.as_str())
    }

    /// Records that resource `name` was accepted as `bytes`.
    pub fn insert(&mut self, name: String, bytes: Vec<u8>) {
        let old_hash = self
            .by_name
            .get(&name)
            .map(|old| self.hasher.hash_one(old.as_slice()));
        if let Some(old_hash) = old_hash {
            self.forget_hash(old_hash, &name);
        }
        self.by_hash
            .insert(self.hasher.hash_one(bytes.as_slice()), name.clone());
        self.by_name.insert(name, bytes);
    }

    /// Keeps only the resources `held` still holds.
    pub fn retain(&mut self, held: impl Fn(&str) -> bool) {
        self.by_name.retain(|name, _| held(name));
        self.by_hash.retain(|_, name| held(name));
    }

    /// Removes the index entry `hash` if it names `name`.
    fn forget_hash(&mut self, hash: u64, name: &str) {
        if self.by_hash.get(&hash).is_some_and(|n| n == name) {
            self.by_hash.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_known_by_the_bytes_it_was_last_accepted_as() {
        let mut known = Known::default();
        known.insert("a".to_owned(), b"one".to_vec());
        known.insert("b".to_owned(), b"two".to_vec());
        assert_eq!(known.name_of(b"one"), Some("a"));
        known.insert("a".to_owned(), b"three".to_vec());
        assert_eq!(
            known.name_of(b"one"),
            None,
            "a's earlier form is not a's any more"
        );
        assert_eq!(known.name_of(b"three"), Some("a"));
        known.retain(|name| name == "a");
        assert_eq!(known.name_of(b"two"), None);
        assert_eq!(known.name_of(b"three"), Some("a"));
    }
}
