//! Listeners and the admin endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AccessLogSpec, ConfigError, Errors, ListenerTlsSpec, TracingSpec};

/// Where the admin HTTP API listens, and who may change the running config through it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// The socket address, e.g. `127.0.0.1:15000`.
    pub address: SocketAddr,
    /// A file holding the bearer token that write endpoints require
    /// (`Authorization: Bearer <token>`); without it, they are open to anyone who can connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl AdminSpec {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self
            .token_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(ConfigError::new("token_file", "must not be empty"));
        }
        Ok(())
    }
}

/// One listener: an address, the protocol its clients speak, its filters and its routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// A unique name.
    pub name: String,
    /// The socket address to bind; port 0 picks a free port.
    pub address: SocketAddr,
    /// A registered codec name: `dubbo`, `thrift`, `brpc` or your own.
    pub protocol: String,
    /// Codec options (`max_frame_bytes` and protocol-specific ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<serde_json::Map<String, serde_json::Value>>,
    /// The name of the route config that routes this listener's requests.
    pub route_config: String,
    /// Filters, run in order on requests and in reverse order on responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterSpec>,
    /// Close a client connection after this long without a request in flight.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// The most client connections open at once; a connection past it is closed as soon as it
    /// is accepted (counted). None: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// The longest a request frame may take to arrive once its first bytes did; a client that
    /// trickles a frame slower than this is disconnected.
    #[serde(default = "default_frame_timeout", with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// TLS for clients (mutual TLS with `require_client_cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsSpec>,
    /// An access log of every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSpec>,
    /// Tracing spans exported over OTLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
}

/// The default `frame_timeout`.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn default_frame_timeout() -> Duration {
    DEFAULT_FRAME_TIMEOUT
}

impl ListenerSpec {
    /// Records every problem of this listener.
    pub(crate) fn check(&self, errors: &mut Errors) {
        if self.name.is_empty() {
            errors.add(ConfigError::new("name", "must not be empty"));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            errors.add(ConfigError::new("idle_timeout", "must be greater than 0"));
        }
        if self.frame_timeout.is_zero() {
            errors.add(ConfigError::new("frame_timeout", "must be greater than 0"));
        }
        if self.max_connections == Some(0) {
            errors.add(ConfigError::new("max_connections", "must be at least 1"));
        }
        if let Some(tls) = &self.tls {
            errors.check("tls", tls.validate());
        }
        if let Some(access_log) = &self.access_log {
            errors.check("access_log", access_log.validate());
        }
        if let Some(tracing) = &self.tracing {
            errors.check("tracing", tracing.validate());
        }
        for (i, filter) in self.filters.iter().enumerate() {
            if filter.name.is_empty() {
                errors.add(ConfigError::new(
                    format!("filters[{i}].name"),
                    "must not be empty",
                ));
            }
        }
    }
}

/// A filter in a listener's chain: a registered filter name and its config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// The registered filter name (`local_ratelimit`, `rbac` ... or your own).
    pub name: String,
    /// Tells this filter's series apart from those of another filter of the same name in the
    /// chain: their `filter` label is `<name>.<stat_name>` instead of `<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_name: Option<String>,
    /// The filter's own config, checked by the filter's factory.
    #[serde(default)]
    pub config: serde_json::Value,
}
