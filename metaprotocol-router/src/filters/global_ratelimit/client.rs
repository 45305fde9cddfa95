//! The Redis connection a global rate limit talks through: one per Redis address for the whole
//! proxy (kept in [`crate::SharedClients`], so that every listener and every config update
//! shares it), multiplexed: concurrent checks are pipelined on it, none waits for another.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

    /// Counts a request against the limit `key` (see `gcra.lua`); true if it conforms.
    pub async fn check(
        &self,
        key: &[u8],
        emission_us: u64,
        tolerance_us: u64,
    ) -> RedisResult<bool> {
        let mut connection = self.connection()?;
        let conforms: i64 = GCRA
            .key(key)
            .arg(emission_us)
            .arg(tolerance_us)
            .invoke_async(&mut connection)
            .await?;
        Ok(conforms == 1)
    }
}
