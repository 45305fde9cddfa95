//! A value that every request reads and an update replaces now and then (a listener's route
//! table), read through caches that its readers keep.
//!
//! An `ArcSwap` load is wait-free, but not free: it claims a debt slot with a sequentially
//! consistent store and gives it back with a compare-and-swap, about a hundred instructions and
//! two locked ones, on every request. A [`Published`] value also counts its replacements; a
//! reader that keeps a [`Cached`] copy compares that count with the one it copied at (a plain
//! load) and loads the value again only when they differ.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};

/// A shared value, replaced whole, with a count of its replacements.
#[derive(Debug)]
pub(crate) struct Published<T> {
    current: ArcSwap<T>,
    /// Bumped after each replacement: a reader that sees the new count loads the new value (or
    /// a later one).
    generation: AtomicU64,
}

impl<T> Published<T> {
    /// Publishes `value`.
    pub fn new(value: Arc<T>) -> Self {
        Self {
            current: ArcSwap::new(value),
            generation: AtomicU64::new(0),
        }
    }

    /// The current value, for a reader without a cache.
    pub fn load(&self) -> Guard<Arc<T>> {
        self.current.load()
    }

    /// The current value, shared.
    pub fn load_full(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Replaces the value, returning the one it replaced. Caches see the new one at their next
    /// read.
    pub fn swap(&self, value: Arc<T>) -> Arc<T> {
        let old = self.current.swap(value);
        self.generation.fetch_add(1, Ordering::Release);
        old
    }

    /// A cache of the current value.
    pub fn cached(&self) -> Cached<T> {
        // The count first: a replacement between the two reads leaves the cache a count
        // behind its value, and its next read loads the value again.
        let generation = self.generation.load(Ordering::Acquire);
        Cached {
            generation,
            value: self.current.load_full(),
        }
    }
}

/// A reader's copy of a [`Published`] value, and the count of replacements it was copied at.
///
/// A cache keeps its copy alive until its next read after a replacement: its owner drops it
/// when it goes idle, so that an old value is not held for long.
#[derive(Debug)]
pub(crate) struct Cached<T> {
    generation: u64,
    value: Arc<T>,
}

impl<T> Cached<T> {
    /// The current value of `published` (which this cache must be of): the copy, unless a
    /// replacement came since it was made.
    pub fn get(&mut self, published: &Published<T>) -> &Arc<T> {
        self.refresh(published);
        &self.value
    }

    /// Copies the current value of `published` (which this cache must be of) if a replacement
    /// came since the copy was made; true if one did.
    pub fn refresh(&mut self, published: &Published<T>) -> bool {
        let stale = !self.is_current(published);
        if stale {
            *self = published.cached();
        }
        stale
    }

    /// True unless a replacement of `published` (which this cache must be of) came since the
    /// copy was made.
    pub fn is_current(&self, published: &Published<T>) -> bool {
        published.generation.load(Ordering::Acquire) == self.generation
    }

    /// The copy, as of its last read (no look at the published value).
    pub fn copy(&self) -> &Arc<T> {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_reads_its_copy_until_a_replacement_then_the_new_value() {
        let published = Published::new(Arc::new(1));
        let mut cache = published.cached();
        let first = Arc::clone(cache.get(&published));
        assert!(Arc::ptr_eq(&first, cache.get(&published)), "no reload");
        assert_eq!(*published.swap(Arc::new(2)), 1);
        assert_eq!(**cache.get(&published), 2);
        assert_eq!(**published.load(), 2);
        assert_eq!(*published.load_full(), 2);
        drop(first);
        published.swap(Arc::new(3));
        published.swap(Arc::new(4));
        assert_eq!(**cache.get(&published), 4, "several replacements at once");
        assert!(cache.is_current(&published));
        assert!(!cache.refresh(&published), "no replacement: nothing copied");
        published.swap(Arc::new(5));
        assert!(!cache.is_current(&published));
        assert_eq!(**cache.copy(), 4, "the copy stays until it is read again");
        assert!(cache.refresh(&published));
        assert!(cache.is_current(&published));
        assert_eq!(**cache.copy(), 5);
    }

    #[test]
    fn a_cache_of_another_thread_never_goes_back_and_reaches_the_last_replacement() {
        let published = Arc::new(Published::new(Arc::new(0u64)));
        let reader = {
            let published = Arc::clone(&published);
            std::thread::spawn(move || {
                let mut cache = published.cached();
                let mut last = 0;
                // Bounded: a cache that missed the last replacement fails here, not hangs.
                let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while last < 1_000 && std::time::Instant::now() < give_up {
                    let value = **cache.get(&published);
                    assert!(value >= last, "went back from {last} to {value}");
                    last = value;
                }
                last
            })
        };
        for value in 1..=1_000 {
            published.swap(Arc::new(value));
        }
        assert_eq!(reader.join().ok(), Some(1_000));
    }
}
