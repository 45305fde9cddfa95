//! Busy polling: a worker about to sleep until its sockets have news first watches them for a
//! moment without sleeping, while such moments have recently been enough.
//!
//! A worker that sleeps in `epoll_wait` pays to be woken: the scheduler's work on both sides and,
//! when its core had nothing else to do, the core's way back from idle, which on a virtual
//! machine goes through the hypervisor and takes tens of microseconds. When the answer a worker
//! waits for comes from an upstream a few microseconds away, and clients send their next request
//! as soon as they have an answer, those wake-ups are most of what the proxy adds to a call: in
//! the load benchmark (one client, one call at a time, the proxy alone on its core) calls took
//! 117 us with them and 44 us without.
//!
//! So a worker about to park first looks at its sockets: it glances at them again and again for
//! up to its budget, yielding its core between glances to anything else that wants it (on a
//! shared core the client or server it waits for runs then). A glance that finds news ends the
//! look, and the tasks it woke run at once. A look that finds nothing costs the whole budget, so
//! a worker keeps looking only while its looks find news at least [`MISS_COST`] times as often
//! as they miss; otherwise it leaves out more and more parks between tries (twice as many after
//! each failed try, up to [`MAX_BACKOFF`] doublings), and a worker whose clients think between
//! calls, or whose upstreams are far, soon stops looking.
//!
//! A glance is the runtime's own poll of its sockets, without a wait: the look wakes a task of
//! its own that does nothing ([`Glancer`]), and a runtime that has a task to run when it was
//! about to park polls its sockets without sleeping (as tokio does since 1.52.4; this crate
//! requires 1.54). So a glance costs one `epoll_wait` and finds what the runtime would have
//! found, and when news is already there at the first glance the look costs no more than the
//! sleep it replaces. The tasks that serve sockets say when they run ([`served`]): a glance
//! after which one ran found news. A wake from another thread (a connection handed to the
//! worker, an answer through another worker's upstream connection) ends a look the same way.
//!
//! Where the kernel itself polls for work as long as the budget when a core idles (see
//! [`IdlePoll`]), a worker alone on its core that sleeps wakes as quickly, and the kernel's
//! polling is not the worker's CPU time. There, unless told to look, a worker looks only while
//! busy processes share its core ([`kernel_idle_poll`]): then the yields between its glances let
//! its clients and servers run first, and it serves the calls they made meanwhile together. In
//! the load benchmark with the kernel polling up to 200 µs (8 x 64, everything on one core) the
//! proxy that looked spent 1.4 µs of CPU a call and served 176-178k calls/s; the one that slept,
//! 2.9 µs and 134-135k.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{IdlePoll, core_crowded, watch_core};
use crate::stats::Counter;

/// How long a worker looks at its sockets before it sleeps, unless the proxy is told otherwise
/// ([`ProxyBuilder::busy_poll`](crate::ProxyBuilder::busy_poll)). Where the kernel polls as long
/// when a core idles ([`kernel_idle_poll`]), a worker looks only while busy processes share its
/// core.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// The kernel's polling when a core idles, where it lasts [`DEFAULT_BUSY_POLL`] or more: there
/// a proxy's workers, unless told how long to look, look only while busy processes share their
/// core. Alone on its core a worker that sleeps wakes as quickly, and the kernel's polling is
/// idle time, not the worker's; on a shared core the yields between its glances let its clients
/// and servers run first, and it serves the calls they made meanwhile together. `None` where the
/// kernel polls less, or not at all.
pub fn kernel_idle_poll() -> Option<IdlePoll> {
    IdlePoll::of_host().filter(|poll| poll.covers(DEFAULT_BUSY_POLL))
}

/// A worker looking only while its core is crowded asks whether it is once in this many starts
/// of a look, not at each: the answer changes over milliseconds, a park comes every few
/// microseconds.
const STARTS_PER_CROWDING: u32 = 8;

/// A worker keeps looking while its looks find news at least this many times as often as they
/// miss: a miss costs the budget, a hit saves a wake-up, worth a fraction of it.
const MISS_COST: u32 = 8;

/// The most credit hits build up, so that a worker whose waits grow long stops looking after a
/// few misses.
const MAX_CREDIT: u32 = 8 * MISS_COST;

/// A worker that keeps missing leaves out at most `2^MAX_BACKOFF` parks between tries.
const MAX_BACKOFF: u32 = 10;

thread_local! {
    static WATCH: Watch = const {
        Watch {
            glancer: RefCell::new(None),
            served: Cell::new(0),
            look: Cell::new(None),
            record: Cell::new(Record::new()),
            crowding: Cell::new(Crowding { starts: 0, crowded: false }),
        }
    };
}

/// The calling worker thread's looks.
struct Watch {
    /// Wakes the thread's [`Glancer`]; none on a thread that does not busy poll.
    glancer: RefCell<Option<Waker>>,
    /// How many times a task serving sockets ran on the thread (wrapping).
    served: Cell<u64>,
    /// The look under way, if one is.
    look: Cell<Option<Look>>,
    record: Cell<Record>,
    /// Whether busy processes share the thread's core, as last asked.
    crowding: Cell<Crowding>,
}

/// What a worker that looks only while its core is crowded last found.
#[derive(Clone, Copy, Debug)]
struct Crowding {
    /// Starts of a look since it last asked (up to [`STARTS_PER_CROWDING`]).
    starts: u32,
    crowded: bool,
}

/// A look under way.
#[derive(Clone, Copy, Debug)]
struct Look {
    /// [`Watch::served`] at its last glance: a change is news.
    served: u64,
    /// When its first glance missed (the clock is read only then).
    since: Option<Instant>,
}

/// Tells the calling thread's busy polls that a task serving sockets runs: the glance that let
/// it run found news. Costs an increment; does nothing useful on a thread that does not look.
pub(crate) fn served() {
    WATCH.with(|watch| watch.served.set(watch.served.get().wrapping_add(1)));
}

/// A task that does nothing but give a look something to wake: a runtime with a task to run
/// polls its sockets without sleeping. One runs on each worker that busy polls, for as long as
/// the worker's runtime does.
pub(crate) struct Glancer;

impl Future for Glancer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        WATCH.with(|watch| {
            let mut glancer = watch.glancer.borrow_mut();
            if !glancer
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                *glancer = Some(cx.waker().clone());
            }
        });
        Poll::Pending
    }
}

/// How long workers look at their sockets before they sleep, and the counts of their looks.
#[derive(Clone, Debug)]
pub(crate) struct BusyPoll {
    budget: Duration,
    /// Looks only while busy processes share the worker's core.
    when_crowded: bool,
    looks: Counter,
    misses: Counter,
}

impl BusyPoll {
    /// Looks of up to `budget` (zero: never), counted in `looks`; those that found nothing in
    /// `misses`.
    pub fn new(budget: Duration, looks: Counter, misses: Counter) -> Self {
        Self {
            budget,
            when_crowded: false,
            looks,
            misses,
        }
    }

    /// Looks of up to [`DEFAULT_BUSY_POLL`], only while busy processes share the worker's core
    /// where the kernel polls as long when a core idles ([`kernel_idle_poll`]).
    pub fn by_default(looks: Counter, misses: Counter) -> Self {
        Self {
            when_crowded: kernel_idle_poll().is_some(),
            ..Self::new(DEFAULT_BUSY_POLL, looks, misses)
        }
    }

    /// Readies the calling thread (a worker's) to look.
    pub fn prepare_thread(&self) {
        if self.when_crowded && !self.budget.is_zero() {
            watch_core();
        }
    }

    /// The task a worker runs to busy poll, if it does (see [`Glancer`]).
    pub fn glancer(&self) -> Option<Glancer> {
        (!self.budget.is_zero()).then_some(Glancer)
    }

    /// Called by a worker about to wait for its sockets, first: goes on with the look under way,
    /// if one is and its glances found nothing yet. True if this park is taken care of: the look
    /// glances again, or it used up its budget and the worker sleeps. False if no look is under
    /// way, or the last glance found news (the worker has done what it brought): the park is a
    /// new wait.
    pub fn go_on(&self) -> bool {
        WATCH.with(|watch| {
            let Some(mut look) = watch.look.take() else {
                return false;
            };
            let mut record = watch.record.get();
            if look.served != watch.served.get() {
                record.hit();
                watch.record.set(record);
                return false;
            }
            let since = *look.since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.budget {
                self.misses.inc();
                record.miss();
                watch.record.set(record);
                // The runtime sleeps until news comes.
                return true;
            }
            // Anything else that wants the core runs before the next glance.
            std::thread::yield_now();
            watch.look.set(Some(look));
            glance(watch);
            true
        })
    }

    /// Called by a worker about to wait for its sockets, when it neither goes on with a look nor
    /// lingers: starts a look while looks have paid (see the module docs).
    pub fn start(&self) {
        WATCH.with(|watch| {
            if self.when_crowded && !crowded(watch) {
                return;
            }
            let mut record = watch.record.get();
            if watch.glancer.borrow().is_some() && record.tries() {
                self.looks.inc();
                watch.look.set(Some(Look {
                    served: watch.served.get(),
                    since: None,
                }));
                glance(watch);
            }
            watch.record.set(record);
        });
    }
}

/// Whether busy processes share the calling worker's core, asked once in
/// [`STARTS_PER_CROWDING`] calls.
fn crowded(watch: &Watch) -> bool {
    let mut crowding = watch.crowding.get();
    crowding.starts += 1;
    if crowding.starts >= STARTS_PER_CROWDING {
        crowding = Crowding {
            starts: 0,
            crowded: core_crowded(Instant::now()),
        };
    }
    watch.crowding.set(crowding);
    crowding.crowded
}

/// Glances: wakes the thread's [`Glancer`], so that the runtime polls its sockets instead of
/// sleeping.
fn glance(watch: &Watch) {
    if let Some(glancer) = watch.glancer.borrow().as_ref() {
        glancer.wake_by_ref();
    }
}

/// What a worker's recent looks found, and so whether it looks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    /// Up one a hit, down [`MISS_COST`] a miss, at most [`MAX_CREDIT`].
    credit: u32,
    /// Parks to leave out before the next try.
    skip: u32,
    /// How many times the parks left out after a failed try have doubled.
    backoff: u32,
}

impl Record {
    const fn new() -> Self {
        Self {
            credit: 0,
            skip: 0,
            backoff: 0,
        }
    }

    /// Whether this park looks; counts the park if not.
    fn tries(&mut self) -> bool {
        if self.skip == 0 {
            return true;
        }
        self.skip -= 1;
        false
    }

    fn hit(&mut self) {
        self.credit = (self.credit + 1).min(MAX_CREDIT);
        if self.credit >= MISS_COST {
            // Looks pay again: a later miss starts the backoff over.
            self.backoff = 0;
        }
    }

    fn miss(&mut self) {
        match self.credit.checked_sub(MISS_COST) {
            Some(credit) => self.credit = credit,
            None => {
                self.credit = 0;
                self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
                self.skip = 1 << self.backoff;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `parks` parks, each finding news if `news(park)`: how many looked.
    fn looks(record: &mut Record, parks: u32, news: impl Fn(u32) -> bool) -> u32 {
        let mut looked = 0;
        for park in 0..parks {
            if record.tries() {
                looked += 1;
                if news(park) {
                    record.hit();
                } else {
                    record.miss();
                }
            }
        }
        looked
    }

    #[test]
    fn a_worker_whose_looks_find_news_looks_at_every_park() {
        let mut record = Record::new();
        assert_eq!(looks(&mut record, 1000, |_| true), 1000);
        assert_eq!(record.credit, MAX_CREDIT);
        // A miss now and then (one in ten) does not stop it.
        assert_eq!(looks(&mut record, 1000, |park| park % 10 != 0), 1000);
    }

    #[test]
    fn a_worker_whose_looks_miss_tries_ever_more_rarely() {
        let mut record = Record::new();
        // Every try misses: tries at parks 0, 3, 8, 17, ... (2, 4, 8, ... parks left out).
        assert_eq!(looks(&mut record, 4, |_| false), 2);
        assert_eq!(
            record.skip, 4,
            "the second miss leaves out the next four parks"
        );
        let mut record = Record::new();
        let looked = looks(&mut record, 100_000, |_| false);
        assert!(looked < 120, "{looked} tries in 100,000 parks");
        assert_eq!(record.backoff, MAX_BACKOFF);
        // Hits as often as misses (a client that thinks between calls behind a near upstream)
        // do not earn back the credit either.
        let mut record = Record::new();
        let looked = looks(&mut record, 100_000, |park| park % 2 == 0);
        assert!(looked < 250, "{looked} tries in 100,000 parks");
    }

    #[test]
    fn hits_again_end_the_backoff() {
        let mut record = Record::new();
        looks(&mut record, 10_000, |_| false);
        assert!(record.backoff > 0);
        // The waits shortened: tries hit from now on.
        let looked = looks(&mut record, 10_000, |_| true);
        assert_eq!(record.backoff, 0);
        assert!(looked > 8_900, "{looked} tries in 10,000 parks");
    }

    /// Looks on a worker thread, over real sockets (the tests read the thread's context switches
    /// from procfs).
    #[cfg(target_os = "linux")]
    mod on_a_worker {
        use std::io::Write;
        use std::net::{SocketAddr, TcpListener};
        use std::sync::mpsc;

        use tokio::io::AsyncReadExt;

        use super::*;
        use crate::server::Linger;
        use crate::server::workers::{Parking, Workers};
        use crate::stats::DurationHistogram;

        /// A worker that busy polls for up to `budget`, as the proxy starts one, with its look
        /// counters.
        fn worker(budget: Duration) -> std::io::Result<(Workers, Counter, Counter)> {
            let (looks, misses) = (Counter::default(), Counter::default());
            let parking = Parking {
                linger: Linger::new(
                    Duration::ZERO,
                    Counter::default(),
                    DurationHistogram::default(),
                ),
                busy_poll: BusyPoll::new(budget, looks.clone(), misses.clone()),
            };
            Ok((Workers::start(1, &parking)?, looks, misses))
        }

        /// How many times the calling thread slept (its voluntary context switches): a yield is
        /// not one.
        fn sleeps() -> Option<u64> {
            let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
            status
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse()
                .ok()
        }

        /// What [`read_a_byte`]'s task read, and how many times its worker slept while it waited.
        type Read = (Option<u8>, Option<u64>);

        /// Runs on `workers` a task serving a socket: it connects to `address` and reads a byte.
        fn read_a_byte(workers: &Workers, address: SocketAddr) -> mpsc::Receiver<Read> {
            let (done, read) = mpsc::channel();
            let mut task = Box::pin(async move {
                let mut byte = [0u8; 1];
                let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
                    let _ = done.send((None, None));
                    return;
                };
                let before = sleeps();
                let read = stream.read_exact(&mut byte).await.ok().map(|_| byte[0]);
                let slept = before.zip(sleeps()).map(|(before, after)| after - before);
                let _ = done.send((read, slept));
            });
            workers.spawn(std::future::poll_fn(move |cx| {
                served();
                task.as_mut().poll(cx)
            }));
            read
        }

        #[test]
        fn a_look_ends_when_the_runtime_finds_news() -> Result<(), Box<dyn std::error::Error>> {
            let (workers, looks, misses) = worker(Duration::from_secs(60))?;
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let read = read_a_byte(&workers, listener.local_addr()?);
            let (mut client, _) = listener.accept()?;
            // The worker looks meanwhile, glance after glance.
            std::thread::sleep(Duration::from_millis(50));
            client.write_all(b"x")?;
            let (byte, slept) = read.recv_timeout(Duration::from_secs(30))?;
            assert_eq!(byte, Some(b'x'));
            assert_eq!(slept, Some(0), "the worker glanced without sleeping");
            assert!(looks.get() >= 1, "the worker looked");
            assert_eq!(
                misses.get(),
                0,
                "the look found the byte long before its budget ran out"
            );
            Ok(())
        }

        #[test]
        fn a_look_that_finds_nothing_sleeps_after_its_budget()
        -> Result<(), Box<dyn std::error::Error>> {
            let (workers, looks, misses) = worker(Duration::from_millis(1))?;
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let read = read_a_byte(&workers, listener.local_addr()?);
            let (mut client, _) = listener.accept()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while misses.get() == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(misses.get() >= 1, "a look ran out of budget");
            assert!(misses.get() <= looks.get());
            // The sleeping worker still wakes for the byte.
            client.write_all(b"y")?;
            let (byte, slept) = read.recv_timeout(Duration::from_secs(30))?;
            assert_eq!(byte, Some(b'y'));
            assert!(slept >= Some(1), "the worker slept");
            Ok(())
        }

        #[test]
        fn a_worker_that_looks_when_crowded_looks_once_a_busy_thread_shares_its_core()
        -> Result<(), Box<dyn std::error::Error>> {
            if crate::server::run_delay::RunDelay::of_this_thread().is_none() {
                // The kernel keeps no count: no worker can tell its core is crowded.
                return Ok(());
            }
            let (looks, misses) = (Counter::default(), Counter::default());
            let parking = Parking {
                linger: Linger::new(
                    Duration::ZERO,
                    Counter::default(),
                    DurationHistogram::default(),
                ),
                busy_poll: BusyPoll {
                    when_crowded: true,
                    ..BusyPoll::new(Duration::from_millis(1), looks.clone(), misses)
                },
            };
            let mut one_core = rustix::thread::CpuSet::new();
            one_core.set(rustix::thread::sched_getcpu());
            std::thread::scope(|scope| {
                scope
                    .spawn(|| -> Result<(), String> {
                        // The worker inherits this thread's core, which this thread then keeps
                        // busy.
                        rustix::thread::sched_setaffinity(None, &one_core)
                            .map_err(|err| err.to_string())?;
                        let workers = Workers::start(1, &parking).map_err(|e| e.to_string())?;
                        // A task that parks the worker again and again.
                        workers.spawn(async {
                            loop {
                                tokio::time::sleep(Duration::from_micros(100)).await;
                            }
                        });
                        let deadline = Instant::now() + Duration::from_secs(30);
                        while looks.get() == 0 && Instant::now() < deadline {
                            std::hint::spin_loop();
                        }
                        Ok(())
                    })
                    .join()
                    .map_err(|_| "the busy thread panicked".to_owned())?
            })?;
            assert!(looks.get() >= 1, "the crowded worker never looked");
            Ok(())
        }
    }
}
