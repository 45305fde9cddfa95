//! Proxy-wide resource limits: what all clients together may make the proxy hold.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The default cap on requests in flight across every client connection.
pub const DEFAULT_MAX_REQUESTS: u64 = 65_536;
/// The default cap on what the proxy holds for clients (answers waiting for them, and the
/// frames of their requests in flight), in bytes.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 256 * 1024 * 1024;

/// Limits on what all clients together may make the proxy hold. Past either, new requests are
/// answered at once with the protocol's over-limit error (counted as
/// `metaprotocol_local_replies_total{reason="over_limit"}`) until the load drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Requests in flight across every client connection.
    #[serde(default = "default_max_requests")]
    pub max_requests: u64,
    /// Bytes of answers waiting to be written to clients, together with the bytes of the
    /// frames of their requests in flight (held until each ends, for a retry).
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: u64,
}

fn default_max_requests() -> u64 {
    DEFAULT_MAX_REQUESTS
}

fn default_max_buffered_bytes() -> u64 {
    DEFAULT_MAX_BUFFERED_BYTES
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_requests: DEFAULT_MAX_REQUESTS,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

impl LimitsSpec {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_requests == 0 {
            return Err(ConfigError::new("max_requests", "must be at least 1"));
        }
        if self.max_buffered_bytes == 0 {
            return Err(ConfigError::new("max_buffered_bytes", "must be at least 1"));
        }
        Ok(())
    }
}
