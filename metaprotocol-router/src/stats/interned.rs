//! A small, bounded, append-only table that the request path reads without a lock: where series
//! whose label values are only known at run time (a method name, an outcome and its flags) get
//! their handles resolved once, the first time each value is seen.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use rustc_hash::FxBuildHasher;

/// Tables of up to this many entries are scanned.
const SCANNED: usize = 8;

/// Up to `capacity` entries, never removed, found by a scan while they are few and through a
/// hash index beyond.
///
/// Not by a scan alone: a listener's table holds a method for each route that names one, and
/// with thousands of routes a scan made each request's lookup cost thousands of comparisons,
/// and building the table (at every route update) millions. Not by hash alone either: most
/// tables hold a handful of entries, which a scan finds for less than the hash costs (about 60
/// instructions a request in the callgrind bench).
#[derive(Debug)]
pub(crate) struct Interned<K, V> {
    /// The entries, in the order they came; those below `len` are filled.
    entries: Box<[OnceLock<(K, V)>]>,
    /// Open addressing over `entries`: a slot holds 1 + the index of an entry, or 0 when empty.
    /// A key's probe starts at its hash and walks on to the first empty slot. Twice as many
    /// slots as entries (a power of two), so that probes stay short.
    index: Box<[AtomicUsize]>,
    /// Entries filled.
    len: AtomicUsize,
    /// Serialises inserts, which are rare (once per key).
    insert: Mutex<()>,
}

impl<K, V> Interned<K, V> {
    /// An empty table of `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        let slots = capacity.saturating_mul(2).max(1).next_power_of_two();
        Self {
            entries: (0..capacity).map(|_| OnceLock::new()).collect(),
            index: (0..slots).map(|_| AtomicUsize::new(0)).collect(),
            len: AtomicUsize::new(0),
            insert: Mutex::new(()),
        }
    }

    /// The index slots `key`'s probe visits, in order.
    fn probe<Q: Hash + ?Sized>(&self, key: &Q) -> impl Iterator<Item = &AtomicUsize> {
        let mask = self.index.len() - 1;
        // Truncated on 32-bit targets: any bits of the hash do.
        let start = FxBuildHasher.hash_one(key) as usize;
        (0..self.index.len()).map(move |i| &self.index[start.wrapping_add(i) & mask])
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + PartialEq + ?Sized,
    {
        // Acquire: the entries below `len` were filled before it was written.
        let len = self.len.load(Ordering::Acquire);
        if len <= SCANNED {
            return self.entries[..len.min(self.entries.len())]
                .iter()
                .filter_map(OnceLock::get)
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v);
        }
        for slot in self.probe(key) {
            // Acquire: the entry a slot names was filled before the slot was written.
            let entry = slot.load(Ordering::Acquire).checked_sub(1)?;
            match self.entries.get(entry).and_then(OnceLock::get) {
                Some((k, v)) if k.borrow() == key => return Some(v),
                _ => {}
            }
        }
        None
    }

    /// The value of `key`, made by `make` (which returns the key to store, equal to `key`, and
    /// the value) the first time; `None` once the table is full.
    pub fn get_or_insert_with<Q>(&self, key: &Q, make: impl FnOnce() -> (K, V)) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + PartialEq + ?Sized,
    {
        if let Some(value) = self.get(key) {
            return Some(value);
        }
        // Full: every other key goes without (and without the lock, which a stream of new keys
        // would otherwise take on every request).
        if self.len.load(Ordering::Acquire) >= self.entries.len() {
            return None;
        }
        let _insert = match self.insert.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(value) = self.get(key) {
            return Some(value);
        }
        let len = self.len.load(Ordering::Acquire);
        let entry = self.entries.get(len)?;
        // There is one: at most half the slots are taken.
        let slot = self
            .probe(key)
            .find(|slot| slot.load(Ordering::Acquire) == 0)?;
        let _ = entry.set(make());
        slot.store(len + 1, Ordering::Release);
        self.len.store(len + 1, Ordering::Release);
        entry.get().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_inserted_once_up_to_the_capacity() {
        let table: Interned<String, usize> = Interned::with_capacity(2);
        let mut made = 0;
        for key in ["a", "b", "a", "c"] {
            let value = table.get_or_insert_with(key, || {
                made += 1;
                (key.to_owned(), made)
            });
            match key {
                "a" => assert_eq!(value, Some(&1)),
                "b" => assert_eq!(value, Some(&2)),
                _ => assert_eq!(value, None, "full"),
            }
        }
        assert_eq!(made, 2);
        assert_eq!(table.get("b"), Some(&2));
        assert_eq!(table.get("c"), None);
    }

    /// A key that counts the comparisons made with it.
    #[derive(Debug)]
    struct Key(u32);

    impl std::hash::Hash for Key {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    static COMPARISONS: AtomicUsize = AtomicUsize::new(0);

    impl PartialEq for Key {
        fn eq(&self, other: &Self) -> bool {
            COMPARISONS.fetch_add(1, Ordering::Relaxed);
            self.0 == other.0
        }
    }

    #[test]
    fn a_key_is_found_among_thousands_in_a_few_comparisons() {
        const KEYS: u32 = 10_000;
        let table: Interned<Key, u32> = Interned::with_capacity(KEYS as usize);
        for key in 0..KEYS {
            assert_eq!(
                table.get_or_insert_with(&Key(key), || (Key(key), key * 2)),
                Some(&(key * 2))
            );
        }
        COMPARISONS.store(0, Ordering::Relaxed);
        for key in 0..KEYS {
            assert_eq!(table.get(&Key(key)), Some(&(key * 2)));
        }
        assert_eq!(table.get(&Key(KEYS)), None);
        let per_lookup = COMPARISONS.load(Ordering::Relaxed) as f64 / f64::from(KEYS + 1);
        // A scan compared 5,000 keys a lookup on average; the index, one or two.
        assert!(per_lookup < 4.0, "{per_lookup} comparisons a lookup");
    }

    #[test]
    fn a_full_table_answers_new_keys_without_the_insert_lock() {
        let table: std::sync::Arc<Interned<String, usize>> =
            std::sync::Arc::new(Interned::with_capacity(1));
        table.get_or_insert_with("a", || ("a".to_owned(), 1));
        let held = table.insert.lock();
        let (done, finished) = std::sync::mpsc::channel();
        let reader = table.clone();
        std::thread::spawn(move || {
            let value = reader.get_or_insert_with("new", || ("new".to_owned(), 2));
            let _ = done.send(value.copied());
        });
        let answer = finished.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        assert_eq!(answer, Ok(None), "answered while an insert held the lock");
    }
}
