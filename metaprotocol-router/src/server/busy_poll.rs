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
//! look at once, and the runtime's own poll then returns without sleeping. A look that finds
//! nothing costs the whole budget, so a worker keeps looking only while its looks find news at
//! least [`MISS_COST`] times as often as they miss; otherwise it leaves out more and more parks
//! between tries (twice as many after each failed try, up to [`MAX_BACKOFF`] doublings), and a
//! worker whose clients think between calls, or whose upstreams are far, soon stops looking.
//!
//! The runtime's own epoll instance is out of reach, so each worker watches its client and
//! upstream sockets through an epoll instance of its own, level-triggered: when a worker parks,
//! its tasks have read all they want from their sockets, so a readable one has news (or is held
//! back by a full queue, which ends the look at once and costs nothing). The kernel drops a
//! socket from it when the socket closes. Wakes from other threads (a connection handed to the
//! worker, a call from another worker's client) do not end a look: they wait for its end.

use std::cell::Cell;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

/// How long a worker looks at its sockets before it sleeps, unless the proxy is told otherwise
/// ([`ProxyBuilder::busy_poll`](crate::ProxyBuilder::busy_poll)).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

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
            sockets: os::Sockets::new(),
            record: Cell::new(Record::new()),
        }
    };
}

/// The calling worker thread's watched sockets and what its looks found.
struct Watch {
    sockets: os::Sockets,
    record: Cell<Record>,
}

/// Lets the calling thread's busy polls see `socket`'s news; does nothing on a thread that does
/// not busy poll.
pub(crate) fn watch(socket: &TcpStream) {
    WATCH.with(|watch| watch.sockets.add(socket));
}

/// How long workers look at their sockets before they sleep, and the counts of their looks.
#[derive(Clone, Debug)]
pub(crate) struct BusyPoll {
    budget: Duration,
    looks: Counter,
    misses: Counter,
}

impl BusyPoll {
    /// Looks of up to `budget` (zero: never), counted in `looks`; those that found nothing in
    /// `misses`.
    pub fn new(budget: Duration, looks: Counter, misses: Counter) -> Self {
        Self {
            budget,
            looks,
            misses,
        }
    }

    /// Readies the calling thread (a worker's) to busy poll.
    pub fn prepare_thread(&self) {
        if !self.budget.is_zero() {
            WATCH.with(|watch| watch.sockets.open());
        }
    }

    /// Called by a worker about to wait for its sockets: looks at them first while that has paid
    /// (see the module docs).
    pub fn before_park(&self) {
        WATCH.with(|watch| {
            if !watch.sockets.opened() {
                return;
            }
            let mut record = watch.record.get();
            if record.tries() {
                self.looks.inc();
                if watch.sockets.news_within(self.budget) {
                    record.hit();
                } else {
                    self.misses.inc();
                    record.miss();
                }
            }
            watch.record.set(record);
        });
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

#[cfg(target_os = "linux")]
mod os {
    use std::cell::OnceCell;
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    use rustix::event::{Timespec, epoll};
    use tokio::net::TcpStream;

    /// Don't wait: a glance.
    const NOW: Timespec = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };

    /// A thread's epoll instance of watched sockets, once it busy polls.
    pub(super) struct Sockets(OnceCell<OwnedFd>);

    impl Sockets {
        pub const fn new() -> Self {
            Self(OnceCell::new())
        }

        pub fn open(&self) {
            // Without one (out of file descriptors) the worker sleeps as if told never to look.
            if let Ok(epoll) = epoll::create(epoll::CreateFlags::CLOEXEC) {
                let _ = self.0.set(epoll);
            }
        }

        pub fn opened(&self) -> bool {
            self.0.get().is_some()
        }

        pub fn add(&self, socket: &TcpStream) {
            if let Some(epoll) = self.0.get() {
                // A socket left out only never ends a look early; the runtime still serves it.
                let _ = epoll::add(
                    epoll,
                    socket,
                    epoll::EventData::new_u64(0),
                    epoll::EventFlags::IN,
                );
            }
        }

        /// Glances at the sockets until one has news or `budget` has passed, yielding the core
        /// between glances: whether news came.
        pub fn news_within(&self, budget: Duration) -> bool {
            let Some(epoll) = self.0.get() else {
                return false;
            };
            let mut events = [MaybeUninit::<epoll::Event>::uninit(); 1];
            // The clock is read only once the first glance missed: on a core shared with the
            // clients and servers, half the first glances find news already there.
            let mut start = None;
            loop {
                match epoll::wait(epoll, &mut events, Some(&NOW)) {
                    Ok((ready, _)) if !ready.is_empty() => return true,
                    Ok(_) => {}
                    // Only a signal interrupts a glance, and a signal is news for the runtime.
                    Err(_) => return true,
                }
                if start.get_or_insert_with(Instant::now).elapsed() >= budget {
                    return false;
                }
                rustix::thread::sched_yield();
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    use std::time::Duration;

    use tokio::net::TcpStream;

    /// Busy polling is for Linux only: elsewhere a thread never opens its watch.
    pub(super) struct Sockets;

    impl Sockets {
        pub const fn new() -> Self {
            Self
        }

        pub fn open(&self) {}

        pub fn opened(&self) -> bool {
            false
        }

        pub fn add(&self, _socket: &TcpStream) {}

        pub fn news_within(&self, _budget: Duration) -> bool {
            false
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_look_ends_when_a_watched_socket_has_news() -> Result<(), Box<dyn std::error::Error>>
    {
        use tokio::io::AsyncWriteExt;

        let sockets = os::Sockets::new();
        sockets.open();
        assert!(sockets.opened());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        sockets.add(&server);
        assert!(
            !sockets.news_within(Duration::from_millis(1)),
            "nothing was sent"
        );
        client.write_all(b"request").await?;
        client.flush().await?;
        // Loopback delivers at once: the look ends at its first glance.
        assert!(sockets.news_within(Duration::from_secs(10)));
        drop(server);
        assert!(
            !sockets.news_within(Duration::from_millis(1)),
            "a closed socket leaves the watch"
        );
        Ok(())
    }
}
