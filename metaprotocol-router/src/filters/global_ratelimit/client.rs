//! The Redis connection a global rate limit talks through: one per Redis address for the whole
//! proxy (kept in [`crate::SharedClients`], so that every listener and every config update
//! shares it), multiplexed: concurrent checks are pipelined on it, none waits for another.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::clock::{ClockOffset, unix_micros};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisResult, Script};

use crate::config::{ConfigError, EndpointAddress};
use crate::filters::SharedClients;

/// The GCRA script, loaded into Redis once (then called by its hash).
static GCRA: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("gcra.lua")));

/// A Redis server's rate limit state.
pub(crate) struct RedisLimits {
    client: Client,
    /// Made on first use, inside the runtime; it reconnects by itself after failures.
    connection: OnceLock<ConnectionManager>,
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

/// How long a connection attempt may take. Independent of the filters' timeouts: a check that
/// gives up does not abandon the connection being made, which the next check goes on with.
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
            connection: OnceLock::new(),
            clock: ClockOffset::default(),
        }))
    }

    fn connection(&self) -> RedisResult<ConnectionManager> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.connection.get_or_init(|| connection).clone())
    }

    /// Counts a request against the limit `key` (see `gcra.lua`), unless the server runs the
    /// check more than twice `timeout` (how long the caller waits for it) after it was sent.
    pub async fn check(
        &self,
        key: &[u8],
        emission_us: u64,
        tolerance_us: u64,
        timeout: Duration,
    ) -> RedisResult<Verdict> {
        let mut connection = self.connection()?;
        let sent = unix_micros();
        // Past twice the wait rather than the wait itself: the estimate errs late by the
        // checks' quickest trip, and a check run a little late is better counted than not.
        let wait = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
        let stale_after = self.clock.estimate().map_or(0, |offset| {
            sent.saturating_add(offset)
                .saturating_add(wait.saturating_mul(2))
                .max(1)
        });
        let (verdict, server_now): (i64, i64) = GCRA
            .key(key)
            .arg(emission_us)
            .arg(tolerance_us)
            .arg(stale_after)
            .invoke_async(&mut connection)
            .await?;
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
