//! Header edits that a codec applies on encode.

use thin_vec::ThinVec;

use crate::{ByteStr, Metadata};

/// Header set/remove operations for one frame.
///
/// What a "header" is belongs to the codec: Dubbo attachments, THeader info headers, bRPC
/// `user_fields`. Removals apply first, then sets, so `set` wins over `remove` of the same key.
/// An empty mutation means a pure passthrough: the codec writes the original bytes, patching
/// only the request id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mutation {
    // `ThinVec`s: nearly every mutation is empty, and an empty one is dropped with a pointer
    // compare where a `Vec` takes a call into its drop glue (the engine drops several a call).
    set: ThinVec<(ByteStr, ByteStr)>,
    remove: ThinVec<ByteStr>,
}

impl Mutation {
    /// An empty mutation (does not allocate).
    pub const fn new() -> Self {
        Self {
            set: ThinVec::new(),
            remove: ThinVec::new(),
        }
    }

    /// Sets header `key` to `value`, replacing an earlier set of the same key.
    pub fn set(&mut self, key: ByteStr, value: ByteStr) {
        match self.set.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.set.push((key, value)),
        }
    }

    /// Removes header `key`.
    pub fn remove(&mut self, key: ByteStr) {
        if !self.remove.contains(&key) {
            self.remove.push(key);
        }
    }

    /// The headers to set, in order.
    pub fn sets(&self) -> &[(ByteStr, ByteStr)] {
        &self.set
    }

    /// The headers to remove.
    pub fn removals(&self) -> &[ByteStr] {
        &self.remove
    }

    /// True if this mutation changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// True if `key` is removed and not set again: a codec drops such a header.
    pub fn drops(&self, key: &[u8]) -> bool {
        self.remove.iter().any(|k| k.as_bytes() == key)
            && !self.set.iter().any(|(k, _)| k.as_bytes() == key)
    }

    /// True if the header `key` is overridden (set or removed) by this mutation: a codec that
    /// rewrites a header block skips such original entries and then appends [`Mutation::sets`].
    pub fn overrides(&self, key: &[u8]) -> bool {
        self.remove.iter().any(|k| k.as_bytes() == key)
            || self.set.iter().any(|(k, _)| k.as_bytes() == key)
    }

    /// Adds every operation of `other` after this mutation's own.
    pub fn extend(&mut self, other: &Mutation) {
        for key in &other.remove {
            self.set.retain(|(k, _)| k != key);
            self.remove(key.clone());
        }
        for (k, v) in &other.set {
            self.set(k.clone(), v.clone());
        }
    }

    /// Applies this mutation to `metadata`, as the peer will see the headers after encode.
    pub fn apply_to(&self, metadata: &mut Metadata) {
        for key in &self.remove {
            metadata.remove(key.as_str());
        }
        for (k, v) in &self.set {
            metadata.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_wins_over_remove_and_extend_keeps_order() {
        let mut m = Mutation::new();
        m.remove("debug".into());
        m.set("x".into(), "1".into());
        assert!(m.drops(b"debug"));
        assert!(!m.drops(b"x"));
        assert!(m.overrides(b"x"));

        let mut other = Mutation::new();
        other.remove("x".into());
        other.set("debug".into(), "on".into());
        m.extend(&other);
        assert!(m.drops(b"x"));
        assert!(!m.drops(b"debug"));

        let mut md = Metadata::new();
        md.insert("x", "0");
        m.apply_to(&mut md);
        assert!(!md.contains("x"));
        assert_eq!(md.get("debug"), Some("on"));
    }
}
