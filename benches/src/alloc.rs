//! A counting global allocator: the system allocator, plus a count of allocations made by every
//! thread and, apart, by the threads marked with [`count_this_thread`] (the engine's runtime
//! threads in [`crate::in_process`]), so the engine's own allocations per call can be told from
//! those of the clients and the echo server in the same process.
//!
//! A binary installs it with `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
//! Only `alloc`, `alloc_zeroed` and `realloc` are counted (a `realloc` apart: it may grow in
//! place); frees are not.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static ALL: AtomicU64 = AtomicU64::new(0);
static MARKED: AtomicU64 = AtomicU64::new(0);
static ALL_REALLOCS: AtomicU64 = AtomicU64::new(0);
static MARKED_REALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates, so the allocator
    // may read it.
    static MARKED_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Counts this thread's allocations apart from now on.
pub fn count_this_thread() {
    MARKED_THREAD.set(true);
}

/// Allocation counts since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allocations by every thread.
    pub all: u64,
    /// Allocations by the marked threads.
    pub marked: u64,
    /// Reallocations by every thread.
    pub all_reallocs: u64,
    /// Reallocations by the marked threads.
    pub marked_reallocs: u64,
}

impl Counts {
    /// The counts now.
    pub fn now() -> Self {
        Self {
            all: ALL.load(Ordering::Relaxed),
            marked: MARKED.load(Ordering::Relaxed),
            all_reallocs: ALL_REALLOCS.load(Ordering::Relaxed),
            marked_reallocs: MARKED_REALLOCS.load(Ordering::Relaxed),
        }
    }

    /// What happened since `earlier`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            all: self.all - earlier.all,
            marked: self.marked - earlier.marked,
            all_reallocs: self.all_reallocs - earlier.all_reallocs,
            marked_reallocs: self.marked_reallocs - earlier.marked_reallocs,
        }
    }
}

/// The system allocator, counting.
#[derive(Debug)]
pub struct CountingAlloc;

fn count(all: &AtomicU64, marked: &AtomicU64) {
    all.fetch_add(1, Ordering::Relaxed);
    if MARKED_THREAD.try_with(Cell::get).unwrap_or(false) {
        marked.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// contract; the counting touches only atomics and a const thread-local, never the heap.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(&ALL, &MARKED);
        // SAFETY: the caller's guarantees are System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(&ALL, &MARKED);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(&ALL_REALLOCS, &MARKED_REALLOCS);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}
