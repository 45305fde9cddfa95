//! Per-thread cells for counters and histograms, so that counting a call costs plain loads and
//! stores rather than atomic read-modify-writes (a locked addition costs a few nanoseconds even
//! uncontended, and a call touches about twenty of them).
//!
//! Every thread that counts claims one of [`THREAD_SLOTS`] arenas for as long as it lives; a
//! series owns a range of cell indices, the same in every arena. A thread adds to its own
//! arena's cells with a load and a store (it is their only writer), and a scrape sums the range
//! over every arena. A thread that finds no arena free (or counts while its thread-local
//! storage is being torn down) adds atomically to the shared overflow arena. A slot released
//! by an exiting thread keeps its counts for the next thread that claims it (the claim's lock
//! orders the two). When a series' last handle goes, its range is zeroed in every arena and
//! handed to the next series of the same width.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::lock;

/// Arenas that threads can own at once; the others share the overflow arena.
const THREAD_SLOTS: usize = 64;
/// Cells per segment: an arena allocates its cells a segment (one 4 KiB page) at a time, the
/// first time its thread counts in it.
const SEGMENT_CELLS: usize = 512;
/// Segments an arena can hold: 4 Mi cells, about 200,000 latency histograms. Series past
/// that (or wider than a segment) keep atomic cells of their own.
const SEGMENTS: usize = 8192;

type Segment = [AtomicU64; SEGMENT_CELLS];
/// An arena's segments. Of a length known when compiled: a count finds its segment without
/// loading the length.
type Segments = [OnceLock<Box<Segment>>; SEGMENTS];

/// One thread's cells (or the overflow arena's), a segment allocated when first written.
struct Arena {
    segments: Box<Segments>,
}

impl Arena {
    fn new() -> Self {
        let segments: Box<[OnceLock<Box<Segment>>]> =
            (0..SEGMENTS).map(|_| OnceLock::new()).collect();
        Self {
            segments: match segments.try_into() {
                Ok(segments) => segments,
                Err(_) => unreachable!("SEGMENTS segments were made"),
            },
        }
    }

    /// The value of cell `index`, 0 where its segment was never written.
    fn load(&self, index: usize, order: Ordering) -> u64 {
        self.segments
            .get(index / SEGMENT_CELLS)
            .and_then(OnceLock::get)
            .map_or(0, |segment| segment[index % SEGMENT_CELLS].load(order))
    }

    /// Zeroes cell `index` where its segment exists.
    fn clear(&self, index: usize) {
        if let Some(segment) = self
            .segments
            .get(index / SEGMENT_CELLS)
            .and_then(OnceLock::get)
        {
            segment[index % SEGMENT_CELLS].store(0, Ordering::Relaxed);
        }
    }
}

/// The segment of `segments` holding cell `first` (allocated if this is its first use), and
/// the index of that cell in it.
fn segment_of(segments: &Segments, first: usize) -> Option<(&Segment, usize)> {
    let segment = segments.get(first / SEGMENT_CELLS)?;
    let segment = segment.get_or_init(|| Box::new([const { AtomicU64::new(0) }; SEGMENT_CELLS]));
    Some((segment, first % SEGMENT_CELLS))
}

/// Which cell indices are free, by width.
#[derive(Default)]
struct Ranges {
    /// The first index never handed out.
    next: usize,
    /// Ranges handed back, by width, for the next series of that width.
    free: BTreeMap<usize, Vec<usize>>,
}

impl Ranges {
    /// A range of `width` cells within one segment, if the arenas have room.
    fn take(&mut self, width: usize) -> Option<usize> {
        if let Some(first) = self.free.get_mut(&width).and_then(Vec::pop) {
            return Some(first);
        }
        if width == 0 || width > SEGMENT_CELLS {
            return None;
        }
        let mut first = self.next;
        if first % SEGMENT_CELLS + width > SEGMENT_CELLS {
            first = first.next_multiple_of(SEGMENT_CELLS);
        }
        let end = first + width;
        (end <= SEGMENTS * SEGMENT_CELLS).then(|| {
            self.next = end;
            first
        })
    }
}

/// Every arena, and which are claimed.
struct Arenas {
    threads: [OnceLock<Arena>; THREAD_SLOTS],
    overflow: OnceLock<Arena>,
    /// Bit `i` set while a thread owns `threads[i]`.
    claimed: Mutex<u64>,
    ranges: Mutex<Ranges>,
}

static ARENAS: Arenas = Arenas {
    threads: [const { OnceLock::new() }; THREAD_SLOTS],
    overflow: OnceLock::new(),
    claimed: Mutex::new(0),
    ranges: Mutex::new(Ranges {
        next: 0,
        free: BTreeMap::new(),
    }),
};

impl Arenas {
    fn overflow(&self) -> &Arena {
        self.overflow.get_or_init(Arena::new)
    }

    /// Every arena that may hold counts.
    fn all(&self) -> impl Iterator<Item = &Arena> {
        self.threads
            .iter()
            .filter_map(OnceLock::get)
            .chain(self.overflow.get())
    }
}

/// A thread's arena, released when the thread exits.
struct Claim {
    slot: Option<usize>,
    arena: Option<&'static Arena>,
}

impl Claim {
    fn new() -> Self {
        let mut claimed = lock(&ARENAS.claimed);
        let slot = (0..THREAD_SLOTS).find(|i| *claimed & (1 << i) == 0);
        if let Some(i) = slot {
            *claimed |= 1 << i;
        }
        let arena = slot.map(|i| ARENAS.threads[i].get_or_init(Arena::new));
        OWN.set(arena.map(|arena| &*arena.segments));
        Self { slot, arena }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Counts made after this (by other thread-local destructors) go to the overflow arena:
        // the slot may be claimed by another thread as soon as it is released.
        OWN.set(None);
        if let Some(i) = self.slot {
            *lock(&ARENAS.claimed) &= !(1 << i);
        }
    }
}

thread_local! {
    static CLAIM: Claim = Claim::new();
    /// The segments of this thread's claimed arena while it holds one. A count reads it with
    /// one thread-local load: the claim itself, made on first use and dropped at thread exit,
    /// costs a check of its state on every access.
    static OWN: Cell<Option<&'static Segments>> = const { Cell::new(None) };
}

/// The segments of this thread's own arena, claimed on the thread's first count; `None` when it
/// has none, or no longer (its thread-local storage being torn down): the overflow arena is
/// used then.
#[inline]
fn own_arena() -> Option<&'static Segments> {
    OWN.get().or_else(claim_arena)
}

#[cold]
fn claim_arena() -> Option<&'static Segments> {
    CLAIM
        .try_with(|claim| claim.arena.map(|arena| &*arena.segments))
        .ok()
        .flatten()
}

/// Adds `amount` to a cell of this thread's own arena: it is the cell's only writer, so a
/// plain load and store do.
#[inline]
fn add_own(cell: &AtomicU64, amount: u64, order: Ordering) {
    let value = cell.load(Ordering::Relaxed);
    cell.store(value.wrapping_add(amount), order);
}

/// The ordering of an [`Cells::add`]'s `nth` addition: the first relaxed, each later one a
/// release, so that a reader that sees an addition sees the ones before it
/// ([`Cells::read_whole`]). A release store is a plain store on x86 and costs nothing to a
/// counter's single addition.
#[inline]
const fn add_order(nth: usize) -> Ordering {
    if nth == 0 {
        Ordering::Relaxed
    } else {
        Ordering::Release
    }
}

/// Reads of one arena's cells that [`Cells::read_whole`] makes back to back before it lets other
/// threads run between reads: a thread adds in nanoseconds, so a few reads settle unless it
/// was descheduled midway through an add, and then only once it runs again.
const READS_TO_SETTLE: usize = 64;
/// How long [`Cells::read_whole`] waits for one arena's cells to settle before it takes its
/// last read as it is: a scrape must not wait for good behind a thread that adds without
/// pause or is kept from running. A histogram read so shows in its sum an observation its
/// buckets do not have yet (its adds write the sum before the bucket); its count, the buckets'
/// total, agrees with the buckets always.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Where a series' cells live.
#[derive(Debug)]
enum Storage {
    /// Cells `first..first + width` of every arena.
    Arenas { first: usize },
    /// Atomic cells of its own (no room left in the arenas).
    Own(Box<[AtomicU64]>),
}

/// A fixed number of counts (a counter's one, a histogram's buckets and sum) that any thread
/// adds to and a scrape sums. Freed when dropped.
#[derive(Debug)]
pub(crate) struct Cells {
    storage: Storage,
    width: usize,
    /// Where [`Cells::add`] looks for this thread's cells: the first cell in the arenas, or,
    /// for cells of their own, an index past every arena's segments, so that the look-up of
    /// the segment also tells where the cells are.
    arena_first: usize,
    /// The last index, `width - 1` (0 for no cells, never looked up in the arenas, which hold
    /// no empty series): [`Cells::add`] checks an index against it, and a constant 0 (a
    /// counter's one cell, a histogram's first) passes without a comparison.
    last: usize,
}

impl Cells {
    /// `width` counts, all 0.
    pub fn new(width: usize) -> Self {
        let (storage, arena_first) = match lock(&ARENAS.ranges).take(width) {
            Some(first) => (Storage::Arenas { first }, first),
            None => (
                Storage::Own((0..width).map(|_| AtomicU64::new(0)).collect()),
                usize::MAX,
            ),
        };
        Self {
            storage,
            width,
            arena_first,
            last: width.saturating_sub(1),
        }
    }

    /// Adds each `(index, amount)` (indices below the width; others are ignored).
    #[inline]
    pub fn add<const N: usize>(&self, adds: [(usize, u64); N]) {
        // The common case, a thread with its own arena whose segment holding these cells is
        // there, in as few instructions as it takes: a call makes about twenty counts.
        let first = self.arena_first;
        if let Some(segment) = OWN
            .get()
            .and_then(|segments| segments.get(first / SEGMENT_CELLS))
            .and_then(OnceLock::get)
        {
            let offset = first % SEGMENT_CELLS;
            for (nth, (index, amount)) in adds.into_iter().enumerate() {
                if index <= self.last
                    && let Some(cell) = segment.get(offset + index)
                {
                    add_own(cell, amount, add_order(nth));
                }
            }
            return;
        }
        self.add_first(adds);
    }

    /// [`Cells::add`] for the rest: a thread's first count (its claim), a segment's first
    /// count, threads without an arena, and series with cells of their own.
    #[cold]
    fn add_first<const N: usize>(&self, adds: [(usize, u64); N]) {
        // This thread's own cells take a plain load and store (it is their only writer); the
        // overflow arena's and a series' own cells are shared, and take an atomic addition.
        let (cells, only_writer): (&[AtomicU64], bool) = match &self.storage {
            Storage::Arenas { first } => {
                let (segments, only_writer) = match own_arena() {
                    Some(segments) => (segments, true),
                    None => (&*ARENAS.overflow().segments, false),
                };
                let Some((segment, offset)) = segment_of(segments, *first) else {
                    return;
                };
                (&segment[offset..offset + self.width], only_writer)
            }
            Storage::Own(cells) => (cells, false),
        };
        for (nth, (index, amount)) in adds.into_iter().enumerate() {
            if let Some(cell) = cells.get(index) {
                if only_writer {
                    add_own(cell, amount, add_order(nth));
                } else {
                    cell.fetch_add(amount, add_order(nth));
                }
            }
        }
    }

    /// The count at `index`, summed over every thread.
    pub fn get(&self, index: usize) -> u64 {
        if index >= self.width {
            return 0;
        }
        match &self.storage {
            Storage::Arenas { first } => ARENAS
                .all()
                .map(|arena| arena.load(first + index, Ordering::Relaxed))
                .fold(0, u64::wrapping_add),
            Storage::Own(cells) => cells[index].load(Ordering::Relaxed),
        }
    }
}

impl Cells {
    /// Every cell's count summed over every thread, each thread's cells read as they were
    /// between two of its [`Cells::add`]s, for series whose cells must agree (a histogram's
    /// buckets and sum). Such a series' adds begin with `(0, 1)` (cell 0 counts the adds
    /// begun), and `settled` tells whether one thread's cells show only whole adds (its other
    /// cells account for every add cell 0 counts). Cells are read in index order, then cell 0
    /// again: an add's later cells are written after its earlier ones (released), so a read
    /// in which cell 0 did not move and `settled` holds saw each add whole or not at all.
    pub fn read_whole(&self, settled: impl Fn(&[u64]) -> bool) -> Vec<u64> {
        let mut total: Vec<u64> = vec![0; self.width];
        let mut read: Vec<u64> = vec![0; self.width];
        let mut add_settled = |load: &dyn Fn(usize) -> u64| {
            let mut waiting_since = None;
            for tries in 1.. {
                for (index, value) in read.iter_mut().enumerate() {
                    *value = load(index);
                }
                if load(0) == read[0] && settled(&read) {
                    break;
                }
                if tries >= READS_TO_SETTLE {
                    let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= SETTLE_WAIT {
                        break;
                    }
                    std::thread::yield_now();
                }
            }
            for (sum, value) in total.iter_mut().zip(&read) {
                *sum = sum.wrapping_add(*value);
            }
        };
        match &self.storage {
            Storage::Arenas { first } => {
                for arena in ARENAS.all() {
                    add_settled(&|index| arena.load(first + index, Ordering::Acquire));
                }
            }
            Storage::Own(cells) => add_settled(&|index| cells[index].load(Ordering::Acquire)),
        }
        total
    }
}

impl Drop for Cells {
    fn drop(&mut self) {
        if let Storage::Arenas { first } = self.storage {
            // No handle is left, so no thread writes these cells any more; the zeroes reach the
            // next series' writers through the ranges' lock and however its handles travel.
            for arena in ARENAS.all() {
                for index in first..first + self.width {
                    arena.clear(index);
                }
            }
            let mut ranges = lock(&ARENAS.ranges);
            ranges.free.entry(self.width).or_default().push(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up_exactly() {
        let cells = std::sync::Arc::new(Cells::new(3));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cells = cells.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        cells.add([(0, 1), (2, 5)]);
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        assert_eq!(cells.get(0), 80_000);
        assert_eq!(cells.get(1), 0);
        assert_eq!(cells.get(2), 400_000);
        assert_eq!(cells.get(3), 0, "past the width");
    }

    #[test]
    fn counts_survive_their_threads_and_freed_cells_start_at_zero() {
        let cells = Cells::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| cells.add([(1, 7)]));
        });
        std::thread::scope(|scope| {
            scope.spawn(|| cells.add([(1, 3)]));
        });
        cells.add([(1, 1)]);
        assert_eq!(cells.get(1), 11);
        drop(cells);
        let reused: Vec<Cells> = (0..4).map(|_| Cells::new(2)).collect();
        assert!(
            reused.iter().all(|c| c.get(0) == 0 && c.get(1) == 0),
            "a freed range is handed out zeroed"
        );
    }

    #[test]
    fn threads_beyond_the_slots_share_the_overflow_arena() {
        let cells = Cells::new(1);
        let barrier = std::sync::Barrier::new(THREAD_SLOTS + 8);
        std::thread::scope(|scope| {
            for _ in 0..THREAD_SLOTS + 8 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        cells.add([(0, 1)]);
                    }
                    // Every thread holds its claim until all have counted.
                    barrier.wait();
                });
            }
        });
        assert_eq!(cells.get(0), (THREAD_SLOTS as u64 + 8) * 1_000);
        let Storage::Arenas { first } = cells.storage else {
            panic!("a one-cell series has room in the arenas");
        };
        let overflowed = ARENAS
            .overflow
            .get()
            .map_or(0, |arena| arena.load(first, Ordering::Relaxed));
        assert!(
            overflowed >= 8 * 1_000,
            "at least the 8 threads past the slots counted in the overflow arena: {overflowed}"
        );
    }

    #[test]
    fn ranges_stay_within_a_segment_and_too_wide_ones_have_their_own_cells() {
        let mut ranges = Ranges::default();
        assert_eq!(ranges.take(SEGMENT_CELLS - 1), Some(0));
        assert_eq!(
            ranges.take(2),
            Some(SEGMENT_CELLS),
            "skips to the next segment"
        );
        assert_eq!(ranges.take(SEGMENT_CELLS + 1), None);
        let wide = Cells::new(SEGMENT_CELLS + 1);
        wide.add([(SEGMENT_CELLS, 4)]);
        assert_eq!(wide.get(SEGMENT_CELLS), 4);
    }
}
