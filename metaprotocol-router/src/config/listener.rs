//! Listeners and the admin endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Where the admin HTTP API listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// The socket address, e.g. `127.0.0.1:15000`.
    pub address: SocketAddr,
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
}

impl ListenerSpec {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new("idle_timeout", "must be greater than 0"));
        }
        for (i, filter) in self.filters.iter().enumerate() {
            if filter.name.is_empty() {
                return Err(ConfigError::new(
                    format!("filters[{i}].name"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

/// A filter in a listener's chain: a registered filter name and its config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// The registered filter name (`local_ratelimit`, `rbac` ... or your own).
    pub name: String,
    /// The filter's own config, checked by the filter's factory.
    #[serde(default)]
    pub config: serde_json::Value,
}
