//! Clusters: endpoints, load balancing and protection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ClusterTlsSpec, ConfigError, not_available};

/// The default time allowed to open an upstream connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default number of connections per endpoint that requests are multiplexed over.
pub const DEFAULT_CONNECTIONS_PER_ENDPOINT: u32 = 2;

/// A named set of upstream endpoints that serve the same service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// A unique name, referenced by routes.
    pub name: String,
    /// The protocol the endpoints speak; defaults to the protocol of the listener whose request
    /// is routed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Codec options for upstream connections (`max_frame_bytes`, protocol-specific ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<serde_json::Map<String, serde_json::Value>>,
    /// The time allowed to open a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How an endpoint is picked.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Prefer endpoints in the proxy's own zone, then region.
    #[serde(default)]
    pub locality_aware: bool,
    /// Connections per endpoint that requests are multiplexed over.
    #[serde(default = "default_connections_per_endpoint")]
    pub connections_per_endpoint: u32,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Limits that shed load instead of queueing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakersSpec>,
    /// Ejection of endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Active health checks of the endpoints. Not available yet: rejected by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<serde_json::Value>,
    /// TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsSpec>,
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

fn default_connections_per_endpoint() -> u32 {
    DEFAULT_CONNECTIONS_PER_ENDPOINT
}

impl ClusterSpec {
    /// Parses one cluster from YAML or JSON (for `PUT /clusters/{name}`) and validates it.
    /// Errors carry the line and column of the offending field.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let spec: Self = super::source::parse(text)?;
        spec.validate().map_err(|e| e.located_in(text))?;
        Ok(spec)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.health_check.is_some() {
            return Err(not_available("health_check"));
        }
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| e.within("tls"))?;
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new(
                "connect_timeout",
                "must be greater than 0",
            ));
        }
        if self.connections_per_endpoint == 0 {
            return Err(ConfigError::new(
                "connections_per_endpoint",
                "must be at least 1",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if !seen.insert(endpoint.address) {
                return Err(ConfigError::new(
                    format!("endpoints[{i}].address"),
                    format!("duplicate endpoint {}", endpoint.address),
                ));
            }
            if endpoint.weight == 0 {
                return Err(ConfigError::new(
                    format!("endpoints[{i}].weight"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

/// How a load balancer picks an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn, in proportion to its weight.
    #[default]
    RoundRobin,
    /// A weighted random endpoint.
    Random,
    /// The fewer of two random endpoints' active requests.
    LeastRequest,
    /// Consistent hashing on the route's `hash_policy` keys (Ketama ring).
    RingHash,
    /// Consistent hashing on the route's `hash_policy` keys (Maglev table).
    Maglev,
}

impl LbPolicy {
    /// The policy's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::LeastRequest => "least_request",
            Self::RingHash => "ring_hash",
            Self::Maglev => "maglev",
        }
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Its address.
    pub address: SocketAddr,
    /// Its share of traffic relative to the others.
    #[serde(default = "one")]
    pub weight: u32,
    /// Labels for subset routing (`version: v1` ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Where it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalitySpec>,
}

fn one() -> u32 {
    1
}

/// A region and zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalitySpec {
    /// The region.
    #[serde(default)]
    pub region: String,
    /// The zone within the region.
    #[serde(default)]
    pub zone: String,
}

/// Limits on what a cluster may have in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakersSpec {
    /// Upstream connections across all endpoints.
    #[serde(default = "big")]
    pub max_connections: u32,
    /// Requests waiting for a connection.
    #[serde(default = "big")]
    pub max_pending_requests: u32,
    /// Requests in flight.
    #[serde(default = "big")]
    pub max_requests: u32,
    /// Retries in flight.
    #[serde(default = "three")]
    pub max_retries: u32,
}

fn big() -> u32 {
    1024
}

fn three() -> u32 {
    3
}

/// When an endpoint is ejected for failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// Consecutive failures that eject an endpoint.
    #[serde(default = "five")]
    pub consecutive_errors: u32,
    /// How often ejections are re-evaluated.
    #[serde(default = "second", with = "humantime_serde")]
    pub interval: Duration,
    /// The first ejection's length; later ones grow.
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// The most endpoints ejected at once, in percent.
    #[serde(default = "fifty")]
    pub max_ejection_percent: f64,
}

fn five() -> u32 {
    5
}

fn second() -> Duration {
    Duration::from_secs(1)
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

fn fifty() -> f64 {
    50.0
}
