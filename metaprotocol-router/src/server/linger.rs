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
//! average (clients pipeline, so requests already queue behind each other). A client that waits
//! for each answer before it sends the next request is never delayed: its reads carry one request
//! each. Nor does a worker linger once reads carry [`ENOUGH_PER_READ`] requests or more (clients
//! that batch their writes): each read's cost is spread thin already, and a wait would add a
//! sleep for little.
//!
//! Whether and how long it lingers follows its clients' round trip. A linger delays a call by up
//! to its length in each direction, and clients that keep a fixed number of calls in flight
//! (each sends as its answers come) lose calls a second to that delay unless the bigger batches
//! make up for it. Measured on loopback with pipelining clients, four calls in flight on each of
//! eight connections go round in about 300 us, and any linger there costs more calls than it
//! wins; with eight in flight (about 500 us) 25-50 us lingers make the proxy serve more calls at
//! less CPU a call. So a worker does not linger while its clients' round trip is under
//! [`SHORTEST_ROUND_TRIP`], and otherwise lingers a [`SHARE_OF_ROUND_TRIP`]th of it, up to the
//! proxy's linger. It knows the round trip by Little's law: its clients' calls in flight (each
//! connection's most within a window, which a linger does not hide the way it hides calls from
//! a count at one moment: they wait in the socket meanwhile) over the rate their requests arrive
//! at.
//!
//! Nor does a worker linger while busy processes share its core: while it sleeps they run, and
//! once they wait on it (clients for answers, servers for requests) the core sits idle until the
//! linger ends. They already batch its calls, which gather while they run. In the load benchmark
//! with everything on one core, a linger of up to 200 us left the core idle 4-8% of the time
//! against 1-2% at 50 us, and served that many fewer calls. A worker judges its core crowded when
//! it waited for it a tenth of the time or more since its last look ([`super::run_delay`]).

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::{core_crowded, watch_core};
use crate::stats::{Counter, DurationHistogram};

/// The longest a worker whose clients pipeline waits before polling its sockets, unless the proxy
/// is told otherwise ([`ProxyBuilder::linger`](crate::ProxyBuilder::linger)).
// Each sleep costs the sleeper its wake-up, about 17 us of CPU on a KVM guest, so longer and
// fewer lingers cost less. In the load benchmark (8 x 64, one write a call, the proxy alone on a
// core) up to 200 us took its CPU a call from 0.47-0.67x haproxy's to 0.32-0.44x, against
// 50 us, and served more calls with a lower p99; up to 400 us saved no more.
pub const DEFAULT_LINGER: Duration = Duration::from_micros(200);

/// The upper bounds, in seconds, of `metaprotocol_worker_linger_seconds`: lingers are a tenth of
/// a round trip of 400 us or more, up to the longest (200 us unless told otherwise).
pub(crate) const LINGER_BUCKETS: [f64; 6] = [0.000_05, 0.000_1, 0.000_2, 0.000_4, 0.001, 0.005];

/// A worker lingers only while its clients' reads carry at least this many requests on average.
const REQUESTS_PER_READ: u64 = 2;

/// A worker lingers only while its clients' reads carry fewer than this many requests on average.
const ENOUGH_PER_READ: u64 = 32;

/// A worker lingers this share of its clients' round trip (up to the linger).
const SHARE_OF_ROUND_TRIP: u32 = 10;

/// A worker does not linger while its clients' round trip is shorter than this: with so few
/// calls in flight a wait costs them more calls a second than its bigger batches win.
const SHORTEST_ROUND_TRIP: Duration = Duration::from_micros(400);

/// The activity within at least this long decides the worker's next lingers.
const WINDOW: Duration = Duration::from_millis(1);

/// A worker reads the clock to see whether its window ended once in this many parks, not at
/// each: a lone caller's call parks twice.
const PARKS_PER_LOOK: u32 = 8;

/// How late the kernel may end a linger. Its default, 50 us, would stretch each wait by that
/// much.
#[cfg(target_os = "linux")]
const TIMER_SLACK_NS: u64 = 1_000;

thread_local! {
    static ACTIVITY: Activity = const {
        Activity {
            reads: Cell::new(Reads { reads: 0, requests: 0 }),
            calls: Cell::new(0),
            window: Cell::new(Window { number: 0, start: None }),
            parks: Cell::new(0),
            linger: Cell::new(Duration::ZERO),
        }
    };
}

/// What the thread's client connections did.
struct Activity {
    /// Their reads since the window began.
    reads: Cell<Reads>,
    /// The most calls each had in flight at once since the window began, summed.
    calls: Cell<u64>,
    window: Cell<Window>,
    parks: Cell<u32>,
    /// What the last window decided: how long to linger (zero: not at all).
    linger: Cell<Duration>,
}

/// Reads that brought requests, and the requests they brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Reads {
    reads: u64,
    requests: u64,
}

/// The stretch of time whose activity decides the next lingers.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// Counts the windows, so that a connection knows when its most calls count afresh.
    number: u64,
    /// When it began: none before the worker first ran out of work.
    start: Option<Instant>,
}

/// What a worker's client connections did in a window that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ended {
    reads: Reads,
    /// The most calls each connection had in flight at once, summed.
    calls: u64,
    over: Duration,
}

/// What one client connection did, as its worker's lingers count it.
#[derive(Debug, Default)]
pub(crate) struct ConnectionActivity {
    /// The most calls in flight at once in `window`.
    most: u64,
    /// The window `most` belongs to.
    window: u64,
}

impl ConnectionActivity {
    /// Counts a read that brought `requests` requests, after which the connection has
    /// `in_flight` calls in flight (its most are right after a read).
    pub fn read(&mut self, requests: u64, in_flight: usize) {
        let in_flight = in_flight as u64;
        ACTIVITY.with(|activity| {
            if requests > 0 {
                let reads = activity.reads.get();
                activity.reads.set(Reads {
                    reads: reads.reads + 1,
                    requests: reads.requests + requests,
                });
            }
            let window = activity.window.get().number;
            if self.window != window {
                self.window = window;
                self.most = 0;
            }
            if in_flight > self.most {
                activity
                    .calls
                    .set(activity.calls.get() + (in_flight - self.most));
                self.most = in_flight;
            }
        });
    }
}

/// How long workers whose clients pipeline wait at most before polling their sockets, and the
/// counts of the waits.
#[derive(Clone, Debug)]
pub(crate) struct Linger {
    longest: Duration,
    lingered: Counter,
    waited: DurationHistogram,
}

impl Linger {
    /// Lingers of up to `longest` (zero: never), counted in `lingered`, their lengths in
    /// `waited`.
    pub fn new(longest: Duration, lingered: Counter, waited: DurationHistogram) -> Self {
        Self {
            longest,
            lingered,
            waited,
        }
    }

    /// Readies the calling thread (a worker's) to linger precisely.
    pub fn prepare_thread(&self) {
        if self.longest.is_zero() {
            return;
        }
        // Without it each wait is longer than asked; the worker works on regardless.
        #[cfg(target_os = "linux")]
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(TIMER_SLACK_NS));
        watch_core();
    }

    /// Called by a worker about to wait for its sockets: lingers first if its clients pipeline
    /// (see the module docs); whether it lingered.
    pub fn before_park(&self) -> bool {
        if self.longest.is_zero() {
            return false;
        }
        let look = ACTIVITY.with(|activity| {
            let parks = activity.parks.get().wrapping_add(1);
            activity.parks.set(parks);
            parks % PARKS_PER_LOOK == 0
        });
        if look {
            let now = Instant::now();
            if let Some(ended) = close_window(now) {
                let mut linger = linger_for(self.longest, ended);
                if !linger.is_zero() && core_crowded(now) {
                    linger = Duration::ZERO;
                }
                ACTIVITY.with(|activity| activity.linger.set(linger));
            }
        }
        let linger = ACTIVITY.with(|activity| activity.linger.get());
        if linger.is_zero() {
            return false;
        }
        self.lingered.inc();
        self.waited.observe(linger);
        std::thread::sleep(linger);
        true
    }
}

/// Ends the current window at `now` if it is [`WINDOW`] long or more, and starts the next:
/// the activity of the window that ended, if one did.
fn close_window(now: Instant) -> Option<Ended> {
    ACTIVITY.with(|activity| {
        let window = activity.window.get();
        if window.start.is_some_and(|start| now - start < WINDOW) {
            return None;
        }
        let reads = activity.reads.replace(Reads::default());
        let calls = activity.calls.replace(0);
        activity.window.set(Window {
            number: window.number.wrapping_add(1),
            start: Some(now),
        });
        window.start.map(|start| Ended {
            reads,
            calls,
            over: now - start,
        })
    })
}

/// How long a worker whose client connections went as `ended` says should wait before polling,
/// up to `longest`: zero if it should not.
fn linger_for(longest: Duration, ended: Ended) -> Duration {
    let Reads { reads, requests } = ended.reads;
    let pipelined =
        reads > 0 && requests >= REQUESTS_PER_READ * reads && requests < ENOUGH_PER_READ * reads;
    if !pipelined {
        return Duration::ZERO;
    }
    // Little's law: the round trip is the calls in flight over the calls a second,
    // `requests / over`.
    let round_trip_ns = u128::from(ended.calls) * ended.over.as_nanos() / u128::from(requests);
    let round_trip = Duration::from_nanos(u64::try_from(round_trip_ns).unwrap_or(u64::MAX));
    if round_trip < SHORTEST_ROUND_TRIP {
        return Duration::ZERO;
    }
    (round_trip / SHARE_OF_ROUND_TRIP).min(longest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGEST: Duration = Duration::from_micros(50);

    /// A millisecond in which `reads` reads brought `requests` requests, on connections with
    /// `calls` calls in flight at most.
    fn ended(reads: u64, requests: u64, calls: u64) -> Ended {
        Ended {
            reads: Reads { reads, requests },
            calls,
            over: Duration::from_millis(1),
        }
    }

    #[test]
    fn a_worker_lingers_a_share_of_its_clients_round_trip() {
        // 150 requests a millisecond, 3 a read. 8 connections of 8 calls in flight: a round
        // trip of 427 us, a tenth of it 42.7 us.
        assert_eq!(
            linger_for(LONGEST, ended(50, 150, 64)),
            Duration::from_nanos(42_666)
        );
        // 8 of 16: 853 us; a tenth is more than the longest linger.
        assert_eq!(linger_for(LONGEST, ended(50, 150, 128)), LONGEST);
        assert_eq!(
            linger_for(Duration::from_millis(1), ended(50, 150, 128)),
            Duration::from_nanos(85_333)
        );
        // 8 of 4: 213 us, too short a round trip for any linger to pay.
        assert_eq!(linger_for(LONGEST, ended(50, 150, 32)), Duration::ZERO);
        // The shortest round trip itself: 400 us.
        assert_eq!(
            linger_for(LONGEST, ended(50, 125, 50)),
            Duration::from_micros(40)
        );
        assert_eq!(linger_for(LONGEST, ended(50, 126, 50)), Duration::ZERO);
    }

    #[test]
    fn a_worker_lingers_only_while_reads_carry_several_requests() {
        // As many requests and calls, from clients that wait for each answer: one a read.
        assert_eq!(linger_for(LONGEST, ended(150, 150, 512)), Duration::ZERO);
        // Clients that batch their writes: 64 requests a read.
        assert_eq!(linger_for(LONGEST, ended(10, 640, 512)), Duration::ZERO);
        // The thresholds themselves: 2 to 31 requests a read.
        assert_eq!(linger_for(LONGEST, ended(20, 40, 512)), LONGEST);
        assert_eq!(linger_for(LONGEST, ended(20, 39, 512)), Duration::ZERO);
        assert_eq!(linger_for(LONGEST, ended(10, 319, 512)), LONGEST);
        assert_eq!(linger_for(LONGEST, ended(10, 320, 512)), Duration::ZERO);
    }

    #[test]
    fn no_linger_or_no_reads_never_lingers() {
        assert_eq!(
            linger_for(Duration::ZERO, ended(50, 150, 512)),
            Duration::ZERO
        );
        assert_eq!(linger_for(LONGEST, ended(0, 0, 0)), Duration::ZERO);
        assert!(
            !Linger::new(
                Duration::ZERO,
                Counter::default(),
                DurationHistogram::default()
            )
            .before_park()
        );
    }

    /// Parks until the worker next looks at its window (every [`PARKS_PER_LOOK`]th park):
    /// whether it lingered then.
    fn park_until_a_look(linger: &Linger) -> bool {
        (0..PARKS_PER_LOOK).fold(false, |_, _| linger.before_park())
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_worker_that_waits_for_its_core_does_not_linger() -> Result<(), &'static str> {
        if crate::server::run_delay::RunDelay::of_this_thread().is_none() {
            return Ok(());
        }
        let linger = Linger::new(LONGEST, Counter::default(), DurationHistogram::default());
        linger.prepare_thread();
        let mut connection = ConnectionActivity::default();
        park_until_a_look(&linger);
        // A window of pipelined calls (3 a read, 100 in flight: a round trip of 667 us): the
        // worker lingers.
        for _ in 0..50 {
            connection.read(3, 100);
        }
        std::thread::sleep(WINDOW);
        assert!(park_until_a_look(&linger), "a pipelined worker lingers");
        // The same again, while the worker waits for its core half the time.
        for _ in 0..50 {
            connection.read(3, 100);
        }
        crate::server::run_delay::wait_for_the_core(WINDOW * 10)?;
        assert!(
            !park_until_a_look(&linger),
            "a worker that waits for its core does not linger"
        );
        Ok(())
    }

    #[test]
    fn each_window_counts_the_reads_and_the_most_calls_in_flight_in_it() -> Result<(), &'static str>
    {
        let start = Instant::now();
        let (mut first, mut second) =
            (ConnectionActivity::default(), ConnectionActivity::default());
        first.read(1, 0);
        assert!(close_window(start).is_none(), "no window began before");
        // Fifty reads of three requests: the first connection's most is 5, the second's 4 (its
        // read brought no request, and counts as no read).
        for in_flight in [3, 5, 2].into_iter().cycle().take(50) {
            first.read(3, in_flight);
        }
        second.read(0, 4);
        assert!(
            close_window(start + WINDOW / 2).is_none(),
            "the first window is still open"
        );
        let ended = close_window(start + WINDOW * 2).ok_or("the first window ended")?;
        assert_eq!(ended, self::ended(50, 150, 9).with_over(WINDOW * 2));
        // The next window counts afresh: the first connection now has 2 in flight at most.
        first.read(0, 1);
        first.read(1, 2);
        let ended = close_window(start + WINDOW * 3).ok_or("the second window ended")?;
        assert_eq!(ended, self::ended(1, 1, 2));
        Ok(())
    }

    impl Ended {
        fn with_over(self, over: Duration) -> Self {
            Self { over, ..self }
        }
    }
}
