//! The Redis connection a global rate limit talks through: one per Redis address for the whole
//! proxy (kept in [`crate::SharedClients`], so that every listener and every config update
//! shares it), multiplexed: concurrent checks are pipelined on it, none waits for another.
//! A check whose caller stopped waiting keeps its place in redis-rs's queue of requests
//! awaiting answers until Redis answers it or the connection drops: so once more answers are
//! overdue than the caller's bound, or answers have been overdue for [`STALLED_AFTER`]
//! ([`Overdue`]), the connection is dropped and replaced.
//! A check that gives up while the connection is still being made has sent nothing, and is no
//! answer overdue ([`Link`]). A connection that Redis closed (its `timeout` for idle clients, a
//! restart, `CLIENT KILL`) is known closed as soon as its driver reads the close ([`Made`]), and
//! replaced before the next check, which would otherwise fail on it; one that goes silent while
//! idle (a NAT that forgot it, a host gone) is found by TCP keepalive ([`keepalive`]). A check
//! handed to the connection in the instant it closed, before its driver read the close, fails
//! with it: sent again on a new connection if none of it was written ([`CountedWrites`]), never
//! if it may have reached Redis.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::clock::{ClockOffset, unix_micros};

use arc_swap::ArcSwapOption;
use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::socket2::{SockRef, TcpKeepalive};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, RedisConnectionInfo, RedisError, Script,
    ServerErrorKind, Value,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::EndpointAddress;
use crate::filters::SharedClients;
use crate::filters::in_flight::{InFlight, InFlightLimit};

/// The GCRA script's source, loaded into Redis once (then called by its hash).
const GCRA_SOURCE: &str = include_str!("gcra.lua");

/// The GCRA script, for its hash.
static GCRA: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(GCRA_SOURCE));

/// A Redis server's rate limit state.
pub(crate) struct RedisLimits {
    /// Where the server listens.
    address: EndpointAddress,
    /// How the proxy signs in.
    settings: RedisConnectionInfo,
    /// Made on first use, inside the runtime; dropped (the next check making a new one) when it
    /// fails, or when too many of its answers are overdue.
    connection: ArcSwapOption<Connecting>,
    /// The checks waiting for the server, whichever filter's: at most [`Self::largest`] (the
    /// connection's queue, and the requests held), each filter's also within its own bound
    /// ([`PendingChecks`]).
    pending: Arc<InFlightLimit>,
    /// The `max_pending_checks` of each filter on the connection (one entry a filter), changed
    /// only as filters are built and dropped.
    bounds: Mutex<Vec<u32>>,
    /// The largest of `bounds`: the most checks waiting on the connection, and the most answers
    /// overdue on it. Sharing a connection gives its filters no more room than one of them has.
    largest: AtomicU32,
    /// The answers overdue on `connection`.
    overdue: Overdue,
    /// The server's clock against this host's: checks say when they are stale on it.
    clock: ClockOffset,
}

/// A check's command to Redis: `EVALSHA` of the GCRA script with the limit's key and rate,
/// built as the request comes (its key is read from it); when it goes stale is added as it is
/// sent. Built in place, in the buffers of a command that ended on this thread
/// ([`SPARE_COMMANDS`]): no copy of the key or the numbers apart, and once a thread has run as
/// many checks at once, no allocation of its own.
pub(crate) struct CheckCommand(Cmd);

thread_local! {
    /// The commands of the checks that ended on this thread, emptied, for the next to reuse.
    static SPARE_COMMANDS: RefCell<Vec<Cmd>> = const { RefCell::new(Vec::new()) };
}

/// The most commands a thread keeps spare: each holds a few hundred bytes (a key is at most 256
/// bytes, a longer one being hashed).
const MAX_SPARE_COMMANDS: usize = 64;

impl CheckCommand {
    /// The check of the limit `key`, `emission_us` and `tolerance_us` (see `gcra.lua`).
    pub fn new(key: &[u8], emission_us: u64, tolerance_us: u64) -> Self {
        let hash = GCRA.get_hash();
        let spare = SPARE_COMMANDS
            .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten();
        let mut cmd = spare.unwrap_or_else(|| {
            // Seven arguments: these, the hash and the key count, and when it goes stale (a
            // number is at most 20 digits).
            Cmd::with_capacity(7, "EVALSHA".len() + hash.len() + 1 + key.len() + 3 * 20)
        });
        cmd.arg("EVALSHA")
            .arg(hash)
            .arg(1)
            .arg(key)
            .arg(emission_us)
            .arg(tolerance_us);
        Self(cmd)
    }
}

impl Drop for CheckCommand {
    fn drop(&mut self) {
        let mut cmd = self.0.take();
        cmd.clear();
        // A thread ending drops its spares first: this command then goes with the check.
        let _ = SPARE_COMMANDS.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.len() < MAX_SPARE_COMMANDS
            {
                spare.push(cmd);
            }
        });
    }
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The request conforms to the limit, and was counted.
    Conforms,
    /// The request is over the limit.
    OverLimit,
    /// The server ran the check after the proxy would have stopped waiting for it, by the
    /// server's clock as the proxy estimated it, and counted nothing. An answer that arrives
    /// in time with this verdict shows the estimate was wrong (a clock jumped).
    Stale,
}

/// How a check ended.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Redis answered in time.
    Answered(Verdict),
    /// Redis answered with an error, or the connection failed.
    Failed(RedisError),
    /// Redis did not answer in time, or the connection was not made in time (then nothing was
    /// sent). `replaced`: this made more answers overdue on the connection than the caller's
    /// bound, and the connection was dropped.
    TimedOut { replaced: bool },
}

/// The answers overdue on the current connection: checks that timed out before Redis answered.
/// Each keeps its place in redis-rs's queue until its answer comes or the connection drops, so
/// a Redis that reads checks but does not answer them (paused, or behind a proxy that stalls)
/// would grow that queue by the request rate for as long as the connection lives. Redis answers
/// a connection's requests in order: an answer to a check sent after every overdue one shows
/// that they were all answered. A check Redis answers in time only reads this (relaxed loads);
/// only timeouts write it.
///
/// Counted, the answers overdue bound the queue; timed ([`STALLED_AFTER`]), they bound how long
/// a connection that answers nothing is kept, which the count alone does not at a low request
/// rate (1,024 overdue, the default bound, take 17 minutes at a check a second).
struct Overdue {
    /// Connections dropped so far: a check that times out on an older one does not count
    /// against the current one.
    generation: AtomicU64,
    /// Answers overdue on the current connection.
    count: AtomicU32,
    /// When (microseconds since `origin`) the first of them went overdue (its check timed out);
    /// [`NOT_OVERDUE`] while none is.
    since: AtomicU64,
    /// What `since` counts from.
    origin: Instant,
    /// When (this host's clock, in microseconds) the latest overdue check was sent.
    latest_sent: AtomicI64,
    /// Whether a check was answered since the connection was last dropped (or ever): a
    /// connection dropped again before any answer is the same stall, logged once.
    answered: AtomicBool,
}

impl Default for Overdue {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            count: AtomicU32::new(0),
            since: AtomicU64::new(NOT_OVERDUE),
            origin: Instant::now(),
            latest_sent: AtomicI64::new(0),
            answered: AtomicBool::new(true),
        }
    }
}

impl Overdue {
    /// A check sent at `sent` ended, `answered` or failed: the checks sent before it no longer
    /// wait in the connection's queue (answered, or gone with a failed connection).
    fn ended(&self, sent: i64, answered: bool) {
        // `since` as well as the count: a timeout racing the last reset may leave it set alone,
        // and it would then time the next overdue answer, hours later, from now.
        if (self.count.load(Ordering::Relaxed) != 0
            || self.since.load(Ordering::Relaxed) != NOT_OVERDUE)
            && sent >= self.latest_sent.load(Ordering::Relaxed)
        {
            self.count.store(0, Ordering::Relaxed);
            self.since.store(NOT_OVERDUE, Ordering::Relaxed);
        }
        if answered && !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    /// A check sent at `sent` on connection `generation` timed out. True when that makes more
    /// than `max` answers overdue, or the first of them has been overdue for more than
    /// [`STALLED_AFTER`], and this call is the one to drop the connection; the counts then
    /// start over for the next.
    fn timed_out(&self, generation: u64, sent: i64, max: u32) -> bool {
        if self.generation.load(Ordering::Relaxed) != generation {
            return false;
        }
        self.latest_sent.fetch_max(sent, Ordering::Relaxed);
        let count = self.count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let now = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        let since = self.since.fetch_min(now, Ordering::Relaxed).min(now);
        if count <= max && Duration::from_micros(now - since) <= STALLED_AFTER {
            return false;
        }
        let next = generation.wrapping_add(1);
        if self
            .generation
            .compare_exchange(generation, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.count.store(0, Ordering::Relaxed);
        self.since.store(NOT_OVERDUE, Ordering::Relaxed);
        self.latest_sent.store(0, Ordering::Relaxed);
        true
    }
}

/// How long answers may stay overdue on a connection, however few, before it is dropped for a
/// new one. A Redis busy with a long command or script answers nothing meanwhile, but once a
/// script has run 5 s (its `busy-reply-threshold`) it answers other clients `BUSY`: one that
/// answers nothing for longer is stopped, cut off, or behind a proxy that stalls, and a new
/// connection may reach it where this one does not.
const STALLED_AFTER: Duration = Duration::from_secs(5);

/// [`Overdue::since`] while no answer is overdue.
const NOT_OVERDUE: u64 = u64::MAX;

/// How long a connection attempt may take. Independent of the filters' timeouts: a check that
/// gives up does not abandon the connection being made, which the next check goes on with.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection's TCP keepalive, as redis-cli and hiredis (Redis's own C client) set it:
/// once the connection is idle 15 s, TCP probes the path to Redis every 5 s, and 3 probes
/// unanswered close it (where the interval and count cannot be set, the system's). A
/// connection dropped silently while idle (a NAT or firewall that forgot it, a host gone) is
/// then found closed within some 30 s, before a check is sent on it to time out; and the
/// probes keep a middlebox from forgetting it while the proxy has no checks to send.
fn keepalive() -> TcpKeepalive {
    let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(15));
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let keepalive = keepalive
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    keepalive
}

/// How long a failed connection attempt stands: the checks meanwhile fail at once (a Redis
/// down is not asked for a connection by every check), and the first after makes a new one.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// A connection being made, made, or failed: shared by the checks, made by a task of its own
/// (so that it goes on when the checks waiting for it give up).
type Connecting = Shared<BoxFuture<'static, Result<Arc<Made>, ConnectFailed>>>;

/// A connection made, with its driver: the task that writes the checks and reads the answers,
/// spawned here rather than by redis-rs so that its end (Redis closed the connection, or it
/// failed) is seen before a check is sent on it. The driver stops when this is dropped.
struct Made {
    connection: MultiplexedConnection,
    /// Set when the driver ended: nothing sent on the connection from then on is answered.
    closed: Arc<AtomicBool>,
    /// The bytes the driver has written to the socket ([`CountedWrites`]).
    written: Arc<AtomicU64>,
    driver: tokio::task::AbortHandle,
}

impl Made {
    /// Connects to `address`, signs in with `settings`, and starts the driver.
    async fn connect(
        address: &EndpointAddress,
        settings: &RedisConnectionInfo,
    ) -> Result<Arc<Self>, RedisError> {
        let stream = TcpStream::connect((address.host(), address.port())).await?;
        // Checks are small writes pipelined on one connection: without this, each written
        // while the one before is unacknowledged waits for that answer (Nagle's algorithm),
        // as redis-rs's own connections avoid.
        stream.set_nodelay(true)?;
        SockRef::from(&stream).set_tcp_keepalive(&keepalive())?;
        // No response timeout of redis-rs's own (half a second by default): it would end a
        // check whose `timeout` is longer in an error, taken for an answer, which the overdue
        // answers' count would never see.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let written = Arc::new(AtomicU64::new(0));
        let stream = CountedWrites {
            stream,
            written: written.clone(),
        };
        let (connection, driver) =
            MultiplexedConnection::new_with_config(settings, stream, config).await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        let driver = tokio::spawn(async move {
            driver.await;
            ended.store(true, Ordering::Release);
        });
        Ok(Arc::new(Self {
            connection,
            closed,
            written,
            driver: driver.abort_handle(),
        }))
    }

    /// Whether the connection still carries checks: false once Redis closed it.
    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        // The answers it still awaits go with it (the checks that wanted them gave up).
        self.driver.abort();
    }
}

/// The connection's socket, counting the bytes written to it. A check handed to the driver
/// as Redis closes the connection fails with it, and may or may not have been written: the
/// driver, woken by the close and by the check together, reads the close before it writes.
/// If no byte was written from when the check was handed over until the connection ended, none
/// of the check reached Redis, and it can be sent again on a new connection.
struct CountedWrites {
    stream: TcpStream,
    written: Arc<AtomicU64>,
}

impl CountedWrites {
    /// Counts what a write wrote. Only the driver writes: a load and a store would do, but an
    /// add costs the same on one thread.
    fn count(&self, written: io::Result<usize>) -> io::Result<usize> {
        if let Ok(n) = written {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }
}

impl AsyncRead for CountedWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        written.map(|written| self.count(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        written.map(|written| self.count(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A connection attempt that failed, and when.
#[derive(Clone)]
struct ConnectFailed {
    error: RedisError,
    at: Instant,
}

/// Where a check stands with the connection (`slot`: the one it found, so that a failure drops
/// that one and not a newer one).
enum Link {
    /// Made: a check sent on it waits in its queue until Redis answers.
    Made(Arc<Connecting>, MultiplexedConnection),
    /// Being made: a check that gives up waiting for it has sent nothing.
    Making(Arc<Connecting>),
}

/// How a proxy signs in to Redis (`AUTH`): an ACL user, or the `default` user, and its password.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisLimits {
    /// The shared state of the server at `address`, signed in with `credentials`, made the
    /// first time. Other credentials for the same address get a connection of their own, so a
    /// rotated password takes effect with the config that carries it.
    pub fn shared(
        shared: &SharedClients,
        address: &EndpointAddress,
        credentials: Credentials,
    ) -> Arc<Self> {
        let mut settings = RedisConnectionInfo::default();
        if let Some(username) = &credentials.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &credentials.password {
            settings = settings.set_password(password);
        }
        // The key holds the password only in memory, as the client itself does.
        let key = format!(
            "global_ratelimit/redis://{address}/{:?}/{:?}",
            credentials.username, credentials.password
        );
        shared.get_or_insert_with(&key, || Self {
            address: address.clone(),
            settings,
            connection: ArcSwapOption::empty(),
            pending: InFlightLimit::new(u32::MAX),
            bounds: Mutex::default(),
            largest: AtomicU32::new(0),
            overdue: Overdue::default(),
            clock: ClockOffset::default(),
        })
    }

    /// Adds (`joined`) or removes a filter's `max_pending_checks`, and works out the largest.
    fn bound(&self, max: u32, joined: bool) {
        let mut bounds = self.bounds.lock().unwrap_or_else(PoisonError::into_inner);
        if joined {
            bounds.push(max);
        } else if let Some(i) = bounds.iter().position(|bound| *bound == max) {
            bounds.swap_remove(i);
        }
        let largest = bounds.iter().copied().max().unwrap_or(0);
        self.largest.store(largest, Ordering::Relaxed);
    }

    /// The connection, or the one being made; a new one when there is none, when Redis closed
    /// it, or when the last attempt failed more than [`RETRY_DELAY`] ago. Err: it failed less
    /// than that ago.
    fn link(&self) -> Result<Link, RedisError> {
        loop {
            let current = self.connection.load();
            if let Some(slot) = &*current {
                match slot.peek() {
                    Some(Ok(made)) if made.is_open() => {
                        return Ok(Link::Made(slot.clone(), made.connection.clone()));
                    }
                    // Closed by Redis while idle (its `timeout`, a restart): a check sent on it
                    // would fail, and nothing waits on it.
                    Some(Ok(_)) => {}
                    None => return Ok(Link::Making(slot.clone())),
                    Some(Err(failed)) if failed.at.elapsed() < RETRY_DELAY => {
                        return Err(failed.error.clone());
                    }
                    Some(Err(_)) => {}
                }
            }
            let (address, settings) = (self.address.clone(), self.settings.clone());
            let connecting: Connecting = async move {
                match tokio::time::timeout(CONNECT_TIMEOUT, Made::connect(&address, &settings))
                    .await
                {
                    Ok(made) => made,
                    Err(elapsed) => Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        elapsed,
                    ))),
                }
                .map_err(|error| ConnectFailed {
                    error,
                    at: Instant::now(),
                })
            }
            .boxed()
            .shared();
            let slot = Arc::new(connecting);
            let previous = self
                .connection
                .compare_and_swap(&current, Some(slot.clone()));
            // Another check may have made one first: all go on with the one kept.
            if same(&previous, &current) {
                tokio::spawn(Connecting::clone(&slot).map(drop));
                return Ok(Link::Making(slot));
            }
        }
    }

    /// Forgets `slot`, a connection that failed, unless it was replaced already: the next
    /// check makes a new one.
    fn forget(&self, slot: &Arc<Connecting>) {
        self.connection.compare_and_swap(slot, None);
    }

    /// Counts a request against the limit `key` (see `gcra.lua`), unless the server runs the
    /// check more than twice `timeout` (how long the caller waits for it) after it was sent.
    /// Waits at most `timeout`; when that makes more answers overdue on the connection than
    /// the largest `max_pending_checks` of its filters (or they have been overdue too long),
    /// the connection is dropped, with the answers it still awaits. A check that fails with its
    /// connection, none of it written, is sent once more, on a new connection.
    pub async fn check(&self, mut command: CheckCommand, timeout: Duration) -> Checked {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut first = true;
        loop {
            let (slot, mut connection) = match self.link() {
                Ok(Link::Made(slot, connection)) => (slot, connection),
                Ok(Link::Making(slot)) => {
                    match tokio::time::timeout_at(deadline, Connecting::clone(&slot)).await {
                        Ok(Ok(made)) => {
                            let connection = made.connection.clone();
                            (slot, connection)
                        }
                        Ok(Err(failed)) => return Checked::Failed(failed.error),
                        // Nothing was sent: no answer is overdue.
                        Err(_) => return Checked::TimedOut { replaced: false },
                    }
                }
                Err(err) => return Checked::Failed(err),
            };
            let generation = self.overdue.generation.load(Ordering::Relaxed);
            let sent = unix_micros();
            if first {
                command.0.arg(self.stale_after(sent, timeout));
            }
            // Before the check is handed to the connection: any byte of it written comes after.
            let before = bytes_written(&slot);
            let answer =
                tokio::time::timeout_at(deadline, self.run(&mut connection, &command.0, sent))
                    .await;
            match answer {
                Ok(Ok(verdict)) => return Checked::Answered(verdict),
                Ok(Err(err)) => {
                    if !err.is_unrecoverable_error() {
                        return Checked::Failed(err);
                    }
                    self.forget(&slot);
                    // The connection ended (its driver told the check so, having written all it
                    // ever will) with no byte written since the check was handed to it: none of
                    // the check reached Redis. One that may have is never sent again.
                    if !(first && before.is_some() && before == bytes_written(&slot)) {
                        return Checked::Failed(err);
                    }
                    first = false;
                }
                Err(_) => {
                    let max_overdue = self.largest.load(Ordering::Relaxed);
                    let replaced = self.overdue.timed_out(generation, sent, max_overdue);
                    if replaced {
                        self.drop_connection();
                    }
                    return Checked::TimedOut { replaced };
                }
            }
        }
    }

    /// Drops the connection: its driver ends (with the queue of answers it awaits) once the
    /// checks still waiting on it give up, and the next check makes a new one.
    fn drop_connection(&self) {
        self.connection.store(None);
        if self.overdue.answered.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "global rate limit: Redis has not answered checks that timed out on its \
                 connection; dropping it for a new one (logged again once Redis answers)"
            );
        }
    }

    /// When, on the server's clock, a check sent at `sent` and waited for `timeout` goes stale
    /// (0: unknown, before any answer).
    fn stale_after(&self, sent: i64, timeout: Duration) -> i64 {
        // Past twice the wait rather than the wait itself: the estimate errs late by the
        // checks' quickest trip, and a check run a little late is better counted than not.
        let wait = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
        self.clock.estimate().map_or(0, |offset| {
            sent.saturating_add(offset)
                .saturating_add(wait.saturating_mul(2))
                .max(1)
        })
    }

    /// Sends the check `command`, sent at `sent`, on `connection` and reads its answer.
    async fn run(
        &self,
        connection: &mut MultiplexedConnection,
        command: &Cmd,
        sent: i64,
    ) -> Result<Verdict, RedisError> {
        let answer = match ask(connection, command).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // A Redis restarted (or flushed) since the script was loaded.
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(GCRA_SOURCE);
                match ask(connection, &load).await {
                    Ok(_) => ask(connection, command).await,
                    Err(err) => Err(err),
                }
            }
            answer => answer,
        };
        self.overdue.ended(sent, answer.is_ok());
        let (verdict, server_now): (i64, i64) = redis::from_redis_value(answer?)?;
        let sample = server_now.saturating_sub(sent);
        let now = Instant::now();
        Ok(match verdict {
            1 => {
                self.clock.observe(sample, now);
                Verdict::Conforms
            }
            0 => {
                self.clock.observe(sample, now);
                Verdict::OverLimit
            }
            _ => {
                self.clock.restart(sample, now);
                Verdict::Stale
            }
        })
    }
}

/// A filter's checks waiting for Redis, at most its `max_pending_checks`; with those of the
/// other filters on its connection, at most the largest of their bounds. Each filter is held to
/// its own bound whatever the others' checks, and filters sharing a connection (two in a chain,
/// each listener's, the last config's while its requests finish) hold no more than one would.
pub(crate) struct PendingChecks {
    redis: Arc<RedisLimits>,
    own: Arc<InFlightLimit>,
}

impl PendingChecks {
    /// A filter's checks on `redis`, at most `max` of them.
    pub fn new(redis: Arc<RedisLimits>, max: u32) -> Self {
        redis.bound(max, true);
        Self {
            redis,
            own: InFlightLimit::new(max),
        }
    }

    /// The Redis server the checks go to.
    pub fn redis(&self) -> &Arc<RedisLimits> {
        &self.redis
    }

    /// A check waiting for the server until the guard is dropped; `None` when the filter's own
    /// bound, or the connection's, is reached.
    pub fn try_wait(&self) -> Option<Waiting> {
        let own = self.own.try_enter()?;
        let largest = self.redis.largest.load(Ordering::Relaxed);
        let shared = self.redis.pending.try_enter_within(largest)?;
        Some(Waiting {
            _own: own,
            _shared: shared,
        })
    }
}

impl Drop for PendingChecks {
    fn drop(&mut self) {
        self.redis.bound(self.own.max(), false);
    }
}

/// A check counted as waiting, by its filter and on its connection, until dropped.
pub(crate) struct Waiting {
    _own: InFlight,
    _shared: InFlight,
}

/// Sends `command` on `connection` and reads its answer, a server's error as an error. Its
/// future is not boxed, unlike a query through redis-rs's `ConnectionLike`.
async fn ask(connection: &mut MultiplexedConnection, command: &Cmd) -> Result<Value, RedisError> {
    connection
        .send_packed_command(command)
        .await?
        .extract_error()
}

/// The bytes written so far on the connection `slot` holds; `None` while it is being made.
fn bytes_written(slot: &Connecting) -> Option<u64> {
    match slot.peek() {
        Some(Ok(made)) => Some(made.written.load(Ordering::Relaxed)),
        _ => None,
    }
}

/// Whether two loads of the connection found the same one.
fn same(a: &Option<Arc<Connecting>>, b: &Option<Arc<Connecting>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
