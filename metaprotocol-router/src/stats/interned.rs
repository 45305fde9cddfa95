//! A small, bounded, append-only table that the request path reads without a lock: where series
//! whose label values are only known at run time (a method name, an outcome and its flags) get
//! their handles resolved once, the first time each value is seen.

use std::borrow::Borrow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Up to `capacity` entries, found by a linear scan (the tables are small and keys compare
/// cheaply), never removed.
#[derive(Debug)]
pub(crate) struct Interned<K, V> {
    slots: Box<[OnceLock<(K, V)>]>,
    /// Slots below this are filled.
    len: AtomicUsize,
    /// Serialises inserts, which are rare (once per key).
    insert: Mutex<()>,
}

impl<K, V> Interned<K, V> {
    /// An empty table of `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            insert: Mutex::new(()),
        }
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let len = self.len.load(Ordering::Acquire);
        self.slots[..len.min(self.slots.len())]
            .iter()
            .filter_map(OnceLock::get)
            .find(|(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    /// The value of `key`, made by `make` (which returns the key to store, and the value) the
    /// first time; `None` once the table is full.
    pub fn get_or_insert_with<Q>(&self, key: &Q, make: impl FnOnce() -> (K, V)) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        if let Some(value) = self.get(key) {
            return Some(value);
        }
        // Full: every other key goes without (and without the lock, which a stream of new keys
        // would otherwise take on every request).
        if self.len.load(Ordering::Acquire) >= self.slots.len() {
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
        let slot = self.slots.get(len)?;
        let _ = slot.set(make());
        self.len.store(len + 1, Ordering::Release);
        slot.get().map(|(_, v)| v)
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
