//! The Redis connection a global rate limit talks through: one per Redis address for the whole
//! proxy (kept in [`crate::SharedClients`], so that every listener and every config update
//! shares it), multiplexed: concurrent checks are pipelined on it, none waits for another.
//! A check whose caller stopped waiting keeps its place in redis-rs's queue of requests
//! awaiting answers until Redis answers it or the connection drops: so once more answers are
//! overdue than the caller's bound ([`Overdue`]), the connection is dropped and replaced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::clock::{ClockOffset, unix_micros};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError, Script};

use crate::config::{ConfigError, EndpointAddress};
use crate::filters::SharedClients;

/// The GCRA script, loaded into Redis once (then called by its hash).
static GCRA: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("gcra.lua")));

/// A Redis server's rate limit state.
pub(crate) struct RedisLimits {
    client: Client,
    /// Made on first use, inside the runtime; it reconnects by itself after failures, and is
    /// dropped (the next check making a new one) when too many of its answers are overdue.
    connection: ArcSwapOption<ConnectionManager>,
    /// The answers overdue on `connection`.
    overdue: Overdue,
    /// The server's clock against this host's: checks say when they are stale on it.
    clock: ClockOffset,
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
    /// Redis did not answer in time. `replaced`: this made more answers overdue on the
    /// connection than the caller's bound, and the connection was dropped.
    TimedOut { replaced: bool },
}

/// The answers overdue on the current connection: checks that timed out before Redis answered.
/// Each keeps its place in redis-rs's queue until its answer comes or the connection drops, so
/// a Redis that reads checks but does not answer them (paused, or behind a proxy that stalls)
/// would grow that queue by the request rate for as long as the connection lives. Redis answers
/// a connection's requests in order: an answer to a check sent after every overdue one shows
/// that they were all answered. A check Redis answers in time only reads this (relaxed loads);
/// only timeouts write it.
struct Overdue {
    /// Connections dropped so far: a check that times out on an older one does not count
    /// against the current one.
    generation: AtomicU64,
    /// Answers overdue on the current connection.
    count: AtomicU32,
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
            latest_sent: AtomicI64::new(0),
            answered: AtomicBool::new(true),
        }
    }
}

impl Overdue {
    /// A check sent at `sent` ended, `answered` or failed: the checks sent before it no longer
    /// wait in the connection's queue (answered, or gone with a failed connection).
    fn ended(&self, sent: i64, answered: bool) {
        if self.count.load(Ordering::Relaxed) != 0
            && sent >= self.latest_sent.load(Ordering::Relaxed)
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if answered && !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    /// A check sent at `sent` on connection `generation` timed out. True when that makes more
    /// than `max` answers overdue and this call is the one to drop the connection; the counts
    /// then start over for the next.
    fn timed_out(&self, generation: u64, sent: i64, max: u32) -> bool {
        if self.generation.load(Ordering::Relaxed) != generation {
            return false;
        }
        self.latest_sent.fetch_max(sent, Ordering::Relaxed);
        let count = self.count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if count <= max {
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
        self.latest_sent.store(0, Ordering::Relaxed);
        true
    }
}

/// How long a connection attempt may take. Independent of the filters' timeouts: a check that
/// gives up does not abandon the connection being made, which the next check goes on with
/// (unless it is one too many overdue: [`Overdue`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
    ) -> Result<Arc<Self>, ConfigError> {
        let mut settings = RedisConnectionInfo::default();
        if let Some(username) = &credentials.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &credentials.password {
            settings = settings.set_password(password);
        }
        let info = ConnectionAddr::Tcp(address.host().to_owned(), address.port())
            .into_connection_info()
            .map(|info| info.set_redis_settings(settings))
            .and_then(Client::open)
            .map_err(|err| {
                ConfigError::new(
                    "address",
                    format!("`{address}` is not a Redis address: {err}"),
                )
            })?;
        // The key holds the password only in memory, as the client itself does.
        let key = format!(
            "global_ratelimit/redis://{address}/{:?}/{:?}",
            credentials.username, credentials.password
        );
        Ok(shared.get_or_insert_with(&key, || Self {
            client: info,
            connection: ArcSwapOption::empty(),
            overdue: Overdue::default(),
            clock: ClockOffset::default(),
        }))
    }

    fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let current = self.connection.load();
        if let Some(connection) = &*current {
            return Ok(ConnectionManager::clone(connection));
        }
        // No response timeout of redis-rs's own (half a second by default): it would end a
        // check whose `timeout` is longer in an error, taken for an answer, which the overdue
        // answers' count would never see.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let made = Arc::new(ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            config,
        )?);
        // Another check may have made one first: all go on with the one kept.
        let kept = self
            .connection
            .compare_and_swap(&current, Some(made.clone()));
        Ok(ConnectionManager::clone(kept.as_ref().unwrap_or(&made)))
    }

    /// Counts a request against the limit `key` (see `gcra.lua`), unless the server runs the
    /// check more than twice `timeout` (how long the caller waits for it) after it was sent.
    /// Waits at most `timeout`; when that makes more than `max_overdue` answers overdue on the
    /// connection, the connection is dropped, with the answers it still awaits.
    pub async fn check(
        &self,
        key: &[u8],
        emission_us: u64,
        tolerance_us: u64,
        timeout: Duration,
        max_overdue: u32,
    ) -> Checked {
        let generation = self.overdue.generation.load(Ordering::Relaxed);
        let sent = unix_micros();
        match tokio::time::timeout(
            timeout,
            self.run(key, emission_us, tolerance_us, timeout, sent),
        )
        .await
        {
            Ok(Ok(verdict)) => Checked::Answered(verdict),
            Ok(Err(err)) => Checked::Failed(err),
            Err(_) => {
                let replaced = self.overdue.timed_out(generation, sent, max_overdue);
                if replaced {
                    self.drop_connection();
                }
                Checked::TimedOut { replaced }
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

    /// Sends the check and reads its answer.
    async fn run(
        &self,
        key: &[u8],
        emission_us: u64,
        tolerance_us: u64,
        timeout: Duration,
        sent: i64,
    ) -> Result<Verdict, RedisError> {
        let mut connection = self.connection()?;
        // Past twice the wait rather than the wait itself: the estimate errs late by the
        // checks' quickest trip, and a check run a little late is better counted than not.
        let wait = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
        let stale_after = self.clock.estimate().map_or(0, |offset| {
            sent.saturating_add(offset)
                .saturating_add(wait.saturating_mul(2))
                .max(1)
        });
        let answer = GCRA
            .key(key)
            .arg(emission_us)
            .arg(tolerance_us)
            .arg(stale_after)
            .invoke_async(&mut connection)
            .await;
        self.overdue.ended(sent, answer.is_ok());
        let (verdict, server_now): (i64, i64) = answer?;
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
