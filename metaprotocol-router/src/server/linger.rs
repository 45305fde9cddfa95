//! Lingering: a worker whose clients pipeline requests waits a moment before it next polls its
//! sockets, so that each poll finds many requests and answers ready instead of two or three.
//!
//! Every `epoll_wait`, read and write costs the kernel about the same whatever it carries: on
//! TCP a read that empties a socket also sends an ACK, and a write wakes the peer. A worker with
//! hundreds of calls in flight that polls as soon as it runs out of work finds a few calls' bytes
//! per socket and pays those costs for each few. Waiting before the next poll gathers many more
//! per system call, the way a network card coalesces interrupts, and the bigger batches it
//! forwards make the servers and clients cheaper too.
//!
//! A worker lingers only while its clients' reads carry [`REQUESTS_PER_READ`] requests or more on
//! average (clients pipeline, so requests already queue behind each other) and at least
//! [`REQUESTS_PER_DELAY`] requests arrive per delay. A client that waits for each answer before
//! it sends the next request is never delayed: its reads carry one request each. Nor does a
//! worker linger once reads carry [`ENOUGH_PER_READ`] requests or more (clients that batch their
//! writes): each read's cost is spread thin already, and a wait would add a sleep for little.

use std::cell::Cell;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// How long a worker whose clients pipeline waits before polling its sockets, unless the proxy is
/// told otherwise ([`ProxyBuilder::linger`](crate::ProxyBuilder::linger)).
pub const DEFAULT_LINGER: Duration = Duration::from_micros(25);

/// A worker lingers only while its clients' reads carry at least this many requests on average.
const REQUESTS_PER_READ: u64 = 2;

/// A worker lingers only while its clients' reads carry fewer than this many requests on average.
const ENOUGH_PER_READ: u64 = 32;

/// A worker lingers only while at least this many requests arrive per delay: with fewer a wait
/// gathers too little to pay for itself.
const REQUESTS_PER_DELAY: u64 = 1;

/// The reads within at least this long decide the worker's next lingers.
const WINDOW: Duration = Duration::from_millis(1);

/// A worker reads the clock to see whether its window ended once in this many parks, not at
/// each: a lone caller's call parks twice.
const PARKS_PER_LOOK: u32 = 8;

/// How late the kernel may end a linger. Its default, 50 us, would stretch each wait by that
/// much.
#[cfg(target_os = "linux")]
const TIMER_SLACK_NS: u64 = 1_000;

thread_local! {
    static READS: Reads = const {
        Reads {
            total: Cell::new(Counts { reads: 0, requests: 0 }),
            window: Cell::new(None),
            parks: Cell::new(0),
            lingering: Cell::new(false),
        }
    };
}

/// The reads of the thread's client connections.
struct Reads {
    total: Cell<Counts>,
    /// When the current window began, and `total` then.
    window: Cell<Option<(Instant, Counts)>>,
    parks: Cell<u32>,
    /// What the last window decided.
    lingering: Cell<bool>,
}

/// Reads that brought requests, and the requests they brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    reads: u64,
    requests: u64,
}

/// The reads of a stretch of time.
#[derive(Clone, Copy, Debug)]
struct Window {
    counts: Counts,
    over: Duration,
}

/// Counts a read of one of the thread's client connections that brought `requests` requests.
pub(crate) fn client_read(requests: u64) {
    if requests > 0 {
        READS.with(|reads| {
            let total = reads.total.get();
            reads.total.set(Counts {
                reads: total.reads + 1,
                requests: total.requests + requests,
            });
        });
    }
}

/// How long workers whose clients pipeline wait before polling their sockets, and the count of
/// the waits.
#[derive(Clone, Debug)]
pub(crate) struct Linger {
    delay: Duration,
    lingered: Counter,
}

impl Linger {
    /// Lingers of `delay` (zero: never), counted in `lingered`.
    pub fn new(delay: Duration, lingered: Counter) -> Self {
        Self { delay, lingered }
    }

    /// Readies the calling thread (a worker's) to linger precisely.
    pub fn prepare_thread(&self) {
        #[cfg(target_os = "linux")]
        if !self.delay.is_zero() {
            // Without it each wait is longer than asked; the worker works on regardless.
            let _ =
                rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(TIMER_SLACK_NS));
        }
    }

    /// Called by a worker about to wait for its sockets: lingers first if its clients pipeline
    /// (see the module docs); whether it lingered.
    pub fn before_park(&self) -> bool {
        if self.delay.is_zero() {
            return false;
        }
        let look = READS.with(|reads| {
            let parks = reads.parks.get().wrapping_add(1);
            reads.parks.set(parks);
            parks % PARKS_PER_LOOK == 0
        });
        if look && let Some(window) = close_window(Instant::now()) {
            let lingering = worth_lingering(self.delay, window);
            READS.with(|reads| reads.lingering.set(lingering));
        }
        let lingering = READS.with(|reads| reads.lingering.get());
        if lingering {
            self.lingered.inc();
            std::thread::sleep(self.delay);
        }
        lingering
    }
}

/// Ends the current window at `now` if it is [`WINDOW`] long or more, and starts the next:
/// the reads of the window that ended, if one did.
fn close_window(now: Instant) -> Option<Window> {
    READS.with(|reads| {
        let total = reads.total.get();
        let ended = match reads.window.get() {
            Some((start, _)) if now - start < WINDOW => return None,
            Some((start, then)) => Some(Window {
                counts: Counts {
                    reads: total.reads - then.reads,
                    requests: total.requests - then.requests,
                },
                over: now - start,
            }),
            None => None,
        };
        reads.window.set(Some((now, total)));
        ended
    })
}

/// True if a worker whose client reads went as `window` says should wait `delay` before polling.
fn worth_lingering(delay: Duration, window: Window) -> bool {
    let Counts { reads, requests } = window.counts;
    let (reads, requests) = (u128::from(reads), u128::from(requests));
    // Requests per read, `requests / reads`, and per delay, `requests * delay / over`,
    // compared without dividing.
    reads > 0
        && requests >= u128::from(REQUESTS_PER_READ) * reads
        && requests < u128::from(ENOUGH_PER_READ) * reads
        && requests * delay.as_nanos() >= u128::from(REQUESTS_PER_DELAY) * window.over.as_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_micros(25);

    fn window(reads: u64, requests: u64) -> Window {
        Window {
            counts: Counts { reads, requests },
            over: Duration::from_millis(1),
        }
    }

    #[test]
    fn a_worker_lingers_while_reads_carry_several_requests_and_many_arrive() {
        // 8 pipelining clients, 150 requests a millisecond, 3 a read.
        assert!(worth_lingering(DELAY, window(50, 150)));
        // As many requests, from clients that wait for each answer: one a read.
        assert!(!worth_lingering(DELAY, window(150, 150)));
        // Pipelined, but 30 requests a millisecond: under one per delay.
        assert!(!worth_lingering(DELAY, window(10, 30)));
        // Clients that batch their writes: 64 requests a read.
        assert!(!worth_lingering(DELAY, window(10, 640)));
        // The thresholds themselves: 2 to 31 requests a read, 1 a delay (40 a millisecond).
        assert!(worth_lingering(DELAY, window(20, 40)));
        assert!(!worth_lingering(DELAY, window(20, 39)));
        assert!(!worth_lingering(DELAY, window(19, 39)));
        assert!(worth_lingering(DELAY, window(10, 319)));
        assert!(!worth_lingering(DELAY, window(10, 320)));
    }

    #[test]
    fn no_delay_or_no_reads_never_lingers() {
        assert!(!worth_lingering(Duration::ZERO, window(50, 150)));
        assert!(!worth_lingering(DELAY, window(0, 0)));
    }

    #[test]
    fn each_window_counts_the_reads_made_in_it() -> Result<(), &'static str> {
        let start = Instant::now();
        client_read(0);
        client_read(1);
        assert!(close_window(start).is_none(), "no window began before");
        for _ in 0..50 {
            client_read(3);
        }
        assert!(
            close_window(start + WINDOW / 2).is_none(),
            "the first window is still open"
        );
        let first = close_window(start + WINDOW * 2).ok_or("the first window ended")?;
        assert_eq!(
            first.counts,
            Counts {
                reads: 50,
                requests: 150
            }
        );
        assert_eq!(first.over, WINDOW * 2);
        assert!(worth_lingering(DELAY, first));
        client_read(1);
        let second = close_window(start + WINDOW * 3).ok_or("the second window ended")?;
        assert_eq!(
            second.counts,
            Counts {
                reads: 1,
                requests: 1
            }
        );
        assert_eq!(second.over, WINDOW);
        assert!(!worth_lingering(DELAY, second));
        Ok(())
    }
}
