//! Routable key/values extracted from a frame.

use smallvec::SmallVec;

use crate::ByteStr;

/// Well-known metadata keys. Codecs use these names so that routes, rate limits and RBAC
/// policies read the same way across protocols.
pub mod keys {
    /// The service or interface being called (Dubbo interface, Thrift multiplexed service name,
    /// bRPC `service_name`).
    pub const SERVICE: &str = "service";
    /// Dubbo's name for the service: the Java interface.
    pub const INTERFACE: &str = "interface";
    /// The method being called.
    pub const METHOD: &str = "method";
    /// The service version (Dubbo).
    pub const VERSION: &str = "version";
    /// The service group (Dubbo).
    pub const GROUP: &str = "group";
}

/// Inline capacity: a typical Dubbo request has 4 header fields and up to 8 attachments.
const INLINE_ENTRIES: usize = 12;

/// The routable key/values a codec extracted from one frame.
///
/// Keys and values are [`ByteStr`]s, normally sliced from the frame itself. Storage is inline for
/// up to a dozen entries, so building the metadata of an ordinary request does not allocate.
/// Lookups are linear: real messages carry a handful of keys, where a scan beats hashing.
/// Inserting a key that is already present replaces its value, so the last writer wins.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: SmallVec<[(ByteStr, ByteStr); INLINE_ENTRIES]>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key.
    pub fn insert(&mut self, key: ByteStr, value: ByteStr) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&ByteStr> {
        self.get_bytes(key.as_bytes())
    }

    /// The value of the key whose bytes are `key`, if present.
    pub fn get_bytes(&self, key: &[u8]) -> Option<&ByteStr> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_bytes() == key)
            .map(|(_, v)| v)
    }

    /// True if `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<ByteStr> {
        let index = self.entries.iter().position(|(k, _)| *k == key)?;
        Some(self.entries.remove(index).1)
    }

    /// All entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&ByteStr, &ByteStr)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(ByteStr, ByteStr)> for Metadata {
    fn from_iter<T: IntoIterator<Item = (ByteStr, ByteStr)>>(iter: T) -> Self {
        let mut metadata = Self::new();
        for (k, v) in iter {
            metadata.insert(k, v);
        }
        metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_and_remove_removes() {
        let mut m = Metadata::new();
        m.insert("a".into(), "1".into());
        m.insert("b".into(), "2".into());
        m.insert("a".into(), "3".into());
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a").map(ByteStr::as_str), Some("3"));
        assert_eq!(m.remove("a").map(|v| v.to_string()), Some("3".to_owned()));
        assert!(!m.contains("a"));
        assert!(m.contains("b"));
    }
}
