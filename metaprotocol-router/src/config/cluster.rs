//! Clusters: endpoints, load balancing and protection.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ClusterTlsSpec, ConfigError, Errors};

/// The default time allowed to open an upstream connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default number of connections per endpoint that requests are multiplexed over.
///
/// One, as Dubbo's own consumers and bRPC's default `single` connection type share one
/// connection per server: every write and every read costs the proxy the same kernel work
/// (waking the peer, acknowledging) whatever it carries, so the requests that one connection
/// gathers into a batch cost least. Servers that handle one request per connection at a time
/// need more.
pub const DEFAULT_CONNECTIONS_PER_ENDPOINT: u32 = 1;

/// The default time an upstream connection may carry nothing before it is closed.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The default share of a locality's endpoints, in percent, that must be healthy for it to keep
/// all of its traffic (Envoy's overprovisioning factor of 1.4, as a threshold).
pub const DEFAULT_LOCALITY_FAILOVER_THRESHOLD: f64 = 70.0;

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
    /// Prefer endpoints in the proxy's own zone (`node.locality`), then region.
    #[serde(default)]
    pub locality_aware: bool,
    /// With `locality_aware` or endpoint priorities: the share of a failover tier's endpoints
    /// (a priority, a locality), in percent, that must be healthy for it to keep all of its
    /// traffic; below, it keeps a proportional part and the rest fails over to the next tier.
    #[serde(default = "default_locality_failover_threshold")]
    pub locality_failover_threshold: f64,
    /// The share of a route's endpoints, in percent, that must be in rotation for picks to
    /// skip those out of it; below, picks spread over all of them (panic mode). 0: never.
    #[serde(default = "default_healthy_panic_threshold")]
    pub healthy_panic_threshold: f64,
    /// Connections per endpoint that requests are multiplexed over.
    #[serde(default = "default_connections_per_endpoint")]
    pub connections_per_endpoint: u32,
    /// Close an upstream connection after this long with nothing in flight.
    #[serde(default = "default_upstream_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Close an upstream connection whose response frame takes longer than this to arrive once
    /// its first bytes did: the answers behind it on the connection wait for it.
    #[serde(
        default = "super::listener::default_frame_timeout",
        with = "humantime_serde"
    )]
    pub frame_timeout: Duration,
    /// Replace an upstream connection once it has carried this many requests (a new one is
    /// opened first); none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Limits that shed load instead of queueing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakersSpec>,
    /// Ejection of endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Active health checks of the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// TLS to the endpoints that no entry of `transport_socket_matches` is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsSpec>,
    /// Transports chosen per endpoint by its `transport_socket_match` labels (Envoy's
    /// `transport_socket_matches`): an endpoint is connected to with the first entry whose
    /// `match` labels it all has, else with `tls`. Chosen when its connections are made, so a
    /// request pays nothing for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transport_socket_matches: Vec<TransportSocketMatchSpec>,
    /// Retries in flight to this cluster, at most a share of its active requests (Envoy's
    /// retry budget): past it, failed requests are answered instead of retried, so that a
    /// failing cluster does not receive a storm of retries.
    #[serde(default)]
    pub retry_budget: RetryBudgetSpec,
    /// How often endpoint host names are resolved again (Envoy's `STRICT_DNS`); a resolution
    /// that fails keeps the addresses last resolved.
    #[serde(default = "default_dns_refresh_rate", with = "humantime_serde")]
    pub dns_refresh_rate: Duration,
    /// Which addresses of a host name become endpoints.
    #[serde(default)]
    pub dns_lookup_family: DnsLookupFamily,
}

fn default_dns_refresh_rate() -> Duration {
    DEFAULT_DNS_REFRESH_RATE
}

/// The default [`ClusterSpec::dns_refresh_rate`], as in Envoy.
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);

/// Which addresses of a resolved host name become endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsLookupFamily {
    /// The IPv4 addresses when there are any, else the IPv6 ones (`localhost` is 127.0.0.1).
    #[default]
    V4Preferred,
    /// The IPv6 addresses when there are any, else the IPv4 ones.
    V6Preferred,
    /// Only IPv4 addresses.
    V4Only,
    /// Only IPv6 addresses.
    V6Only,
    /// Every address.
    All,
}

impl DnsLookupFamily {
    /// Keeps the addresses of `resolved` this family takes, in their order.
    pub fn select(self, resolved: &[SocketAddr]) -> Vec<SocketAddr> {
        let v4 = || resolved.iter().copied().filter(SocketAddr::is_ipv4);
        let v6 = || resolved.iter().copied().filter(SocketAddr::is_ipv6);
        match self {
            Self::V4Only => v4().collect(),
            Self::V6Only => v6().collect(),
            Self::All => resolved.to_vec(),
            Self::V4Preferred if v4().next().is_some() => v4().collect(),
            Self::V6Preferred if v6().next().is_some() => v6().collect(),
            Self::V4Preferred => v6().collect(),
            Self::V6Preferred => v4().collect(),
        }
    }
}

/// Envoy's retry budget: retries in flight at most `budget_percent` of the cluster's active
/// requests, and never fewer than `min_retry_concurrency` allowed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// The share of active requests that may be retries, 0 to 100.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: f64,
    /// Retries allowed in flight whatever the share says (so that a quiet cluster can retry).
    #[serde(default = "default_min_retry_concurrency")]
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        Self {
            budget_percent: default_budget_percent(),
            min_retry_concurrency: default_min_retry_concurrency(),
        }
    }
}

fn default_budget_percent() -> f64 {
    20.0
}

fn default_min_retry_concurrency() -> u32 {
    3
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

fn default_connections_per_endpoint() -> u32 {
    DEFAULT_CONNECTIONS_PER_ENDPOINT
}

fn default_upstream_idle_timeout() -> Duration {
    DEFAULT_UPSTREAM_IDLE_TIMEOUT
}

fn default_locality_failover_threshold() -> f64 {
    DEFAULT_LOCALITY_FAILOVER_THRESHOLD
}

fn default_healthy_panic_threshold() -> f64 {
    50.0
}

impl ClusterSpec {
    /// Parses one cluster from YAML or JSON (for `PUT /clusters/{name}`) and validates it.
    /// Errors carry the line and column of the offending field.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let spec: Self = super::source::parse(text)?;
        spec.validate().map_err(|e| e.located_in(text))?;
        Ok(spec)
    }

    /// The first problem of this cluster, if any.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Errors::default();
        self.check(&mut errors);
        errors.first()
    }

    /// Records every problem of this cluster.
    pub(crate) fn check(&self, errors: &mut Errors) {
        #[cfg(test)]
        super::work::count(&super::work::CHECKED);
        if let Some(tls) = &self.tls {
            errors.check("tls", tls.validate());
        }
        for (i, entry) in self.transport_socket_matches.iter().enumerate() {
            if let Some(tls) = &entry.tls {
                errors.check(
                    &format!("transport_socket_matches[{i}].tls"),
                    tls.validate(),
                );
            }
        }
        if self.connect_timeout.is_zero() {
            errors.add(ConfigError::new(
                "connect_timeout",
                "must be greater than 0",
            ));
        }
        if self.connections_per_endpoint == 0 {
            errors.add(ConfigError::new(
                "connections_per_endpoint",
                "must be at least 1",
            ));
        }
        if self.idle_timeout.is_zero() {
            errors.add(ConfigError::new("idle_timeout", "must be greater than 0"));
        }
        if self.frame_timeout.is_zero() {
            errors.add(ConfigError::new("frame_timeout", "must be greater than 0"));
        }
        if self.max_requests_per_connection == Some(0) {
            errors.add(ConfigError::new(
                "max_requests_per_connection",
                "must be at least 1",
            ));
        }
        if !(self.locality_failover_threshold > 0.0 && self.locality_failover_threshold <= 100.0) {
            errors.add(ConfigError::new(
                "locality_failover_threshold",
                format!(
                    "{} is not a percentage above 0 and at most 100",
                    self.locality_failover_threshold
                ),
            ));
        }
        errors.check(
            "healthy_panic_threshold",
            super::route::check_percentage(self.healthy_panic_threshold),
        );
        if let Some(breakers) = &self.circuit_breakers {
            errors.check("circuit_breakers", breakers.validate());
        }
        if let Some(outlier) = &self.outlier_detection {
            errors.check("outlier_detection", outlier.validate());
        }
        if let Some(check) = &self.health_check {
            errors.check("health_check", check.validate(&self.name));
        }
        if self.dns_refresh_rate.is_zero() {
            errors.add(ConfigError::new(
                "dns_refresh_rate",
                "must be greater than 0",
            ));
        }
        errors.check(
            "retry_budget",
            super::route::check_percentage(self.retry_budget.budget_percent)
                .map_err(|e| ConfigError::new("budget_percent", e.reason)),
        );
        let mut seen = std::collections::BTreeSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if !seen.insert(&endpoint.address) {
                errors.add(ConfigError::new(
                    format!("endpoints[{i}].address"),
                    format!("duplicate endpoint {}", endpoint.address),
                ));
            }
            if endpoint.weight == 0 {
                errors.add(ConfigError::new(
                    format!("endpoints[{i}].weight"),
                    "must be at least 1",
                ));
            }
            if endpoint.health_check_port == Some(0) {
                errors.add(ConfigError::new(
                    format!("endpoints[{i}].health_check_port"),
                    "must be 1 to 65535",
                ));
            }
        }
    }

    /// True if an endpoint is named by a host name that has to be resolved.
    pub fn has_host_names(&self) -> bool {
        self.endpoints.iter().any(|e| e.address.ip().is_none())
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
    /// The cheaper of two random endpoints, by peak-sensitive moving average of their latency
    /// times their requests in flight (linkerd's "peak EWMA").
    PeakEwma,
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
            Self::PeakEwma => "peak_ewma",
            Self::RingHash => "ring_hash",
            Self::Maglev => "maglev",
        }
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Its address: `ip:port`, or `host:port` with a host name resolved at start and every
    /// `dns_refresh_rate` after (each address it resolves to is an endpoint).
    pub address: EndpointAddress,
    /// Its share of traffic relative to the others.
    #[serde(default = "one")]
    pub weight: u32,
    /// Labels for subset routing (`version: v1` ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Where it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalitySpec>,
    /// Its failover tier (Envoy's priority levels): calls go to priority 0 while enough of its
    /// endpoints are in rotation, then to 1, and so on.
    #[serde(default, skip_serializing_if = "is_first")]
    pub priority: u32,
    /// The port active health checks ask on its address instead of its own, whatever the
    /// probe (Envoy's `health_check_config.port_value`); before an `http` probe's `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_port: Option<u16>,
    /// Labels that choose its transport among the cluster's `transport_socket_matches`
    /// (Envoy's `envoy.transport_socket_match` metadata: `tlsMode: istio` for a pod with an
    /// Istio sidecar).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub transport_socket_match: BTreeMap<String, String>,
    /// The labels of its locality that choose its transport when no entry of the cluster's
    /// `transport_socket_matches` is for its own `transport_socket_match` (Envoy's
    /// `envoy.transport_socket_match` metadata of its `LocalityLbEndpoints`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locality_transport_socket_match: BTreeMap<String, String>,
}

impl EndpointSpec {
    /// The index of the entry of `entries` (a cluster's `transport_socket_matches`) whose
    /// transport this endpoint takes, in Envoy's two passes: the first whose labels its own
    /// `transport_socket_match` has (an entry with an empty match takes an endpoint without
    /// labels), else the first whose labels its `locality_transport_socket_match` has; `None`:
    /// the cluster's `tls`.
    pub fn transport_socket_entry(&self, entries: &[TransportSocketMatchSpec]) -> Option<usize> {
        let first_for =
            |labels: &BTreeMap<String, String>| entries.iter().position(|e| e.matches(labels));
        first_for(&self.transport_socket_match)
            .or_else(|| first_for(&self.locality_transport_socket_match))
    }
}

/// A transport a cluster's endpoints may be connected with, and the endpoints it is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSocketMatchSpec {
    /// The labels an endpoint's `transport_socket_match` must all have (each with its value)
    /// for this transport; none: every endpoint.
    #[serde(default, rename = "match")]
    pub labels: BTreeMap<String, String>,
    /// TLS to those endpoints, with the fields of the cluster's `tls`; none: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsSpec>,
}

impl TransportSocketMatchSpec {
    /// True if this transport is for an endpoint with the labels `endpoint`.
    pub fn matches(&self, endpoint: &BTreeMap<String, String>) -> bool {
        self.labels
            .iter()
            .all(|(name, value)| endpoint.get(name) == Some(value))
    }
}

fn is_first(priority: &u32) -> bool {
    *priority == 0
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

/// Limits on what a cluster may have in flight: past one, a request is answered at once with
/// the protocol's over-limit error instead of being queued.
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

impl CircuitBreakersSpec {
    fn validate(&self) -> Result<(), ConfigError> {
        at_least_one(&[
            ("max_connections", self.max_connections),
            ("max_pending_requests", self.max_pending_requests),
            ("max_requests", self.max_requests),
        ])
    }
}

/// Rejects the first of `fields` that is 0.
fn at_least_one(fields: &[(&str, u32)]) -> Result<(), ConfigError> {
    reject_first(fields, |v| v == 0, "must be at least 1")
}

/// Rejects the first of `fields` that is zero.
fn positive(fields: &[(&str, Duration)]) -> Result<(), ConfigError> {
    reject_first(fields, |v| v.is_zero(), "must be greater than 0")
}

/// Rejects the first of `fields` whose value is `bad`, for `reason`.
fn reject_first<T: Copy>(
    fields: &[(&str, T)],
    bad: impl Fn(T) -> bool,
    reason: &str,
) -> Result<(), ConfigError> {
    match fields.iter().find(|(_, value)| bad(*value)) {
        Some((field, _)) => Err(ConfigError::new(*field, reason)),
        None => Ok(()),
    }
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
    /// Consecutive failures of the upstream (server error responses, resets, timeouts) that
    /// eject an endpoint; 0 turns this check off.
    #[serde(default = "five")]
    pub consecutive_errors: u32,
    /// Consecutive failures to connect to it that eject an endpoint; 0 turns this check off.
    #[serde(default = "five")]
    pub consecutive_local_origin_failures: u32,
    /// How often ejections are re-evaluated.
    #[serde(default = "second", with = "humantime_serde")]
    pub interval: Duration,
    /// The first ejection's length; later ones grow.
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// The most endpoints ejected at once, in percent.
    #[serde(default = "fifty")]
    pub max_ejection_percent: f64,
    /// The longest an ejection lasts, however often the endpoint was ejected.
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// Return an ejected endpoint to rotation as soon as an active health check finds it
    /// healthy, however long its ejection had to run.
    #[serde(default = "yes")]
    pub successful_active_health_check_uneject_host: bool,
}

impl OutlierDetectionSpec {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("interval", self.interval),
            ("base_ejection_time", self.base_ejection_time),
            ("max_ejection_time", self.max_ejection_time),
        ])?;
        if self.max_ejection_time < self.base_ejection_time {
            return Err(ConfigError::new(
                "max_ejection_time",
                "must be at least base_ejection_time",
            ));
        }
        super::route::check_percentage(self.max_ejection_percent)
            .map_err(|e| ConfigError::new("max_ejection_percent", e.reason))
    }
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

fn yes() -> bool {
    true
}

/// Periodic checks of every endpoint: those failing `unhealthy_threshold` checks in a row leave
/// rotation until `healthy_threshold` checks in a row pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// The time between two checks of an endpoint in rotation, from the end of one to the
    /// start of the next.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub interval: Duration,
    /// The time between two checks of an endpoint out of rotation; `interval` when unset.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub unhealthy_interval: Option<Duration>,
    /// The time before the next check of an endpoint in rotation whose last check failed, one
    /// of fewer than `unhealthy_threshold` in a row; `unhealthy_interval` when unset.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub unhealthy_edge_interval: Option<Duration>,
    /// The time before the next check of an endpoint out of rotation whose last check passed,
    /// one of fewer than `healthy_threshold` in a row; `interval` when unset.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub healthy_edge_interval: Option<Duration>,
    /// The time between two checks of an endpoint while the cluster has sent no request yet,
    /// whatever the endpoint's state: checks of a cluster nothing uses cost less. Unset: the
    /// intervals above apply, traffic or not.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub no_traffic_interval: Option<Duration>,
    /// With `no_traffic_interval`: the time between two checks of an endpoint in rotation
    /// while the cluster has sent no request yet; `no_traffic_interval` when unset.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub no_traffic_healthy_interval: Option<Duration>,
    /// Up to this share of `interval`, in percent, is added at random to each wait, so that
    /// checks of many endpoints (and proxies) spread out.
    #[serde(default = "ten")]
    pub interval_jitter_percent: f64,
    /// Up to this time is added at random to each wait as well, whatever the interval (Envoy's
    /// `interval_jitter`; the two jitters add up).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub interval_jitter: Duration,
    /// The first check of an endpoint new to the checks waits a random part of this time
    /// rather than running at once, so that the first checks of a large cluster spread out
    /// (Envoy's `initial_jitter`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub initial_jitter: Duration,
    /// The time a check may take.
    #[serde(default = "second", with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed checks in a row that take an endpoint out of rotation.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// What a check does.
    #[serde(default)]
    pub probe: ProbeSpec,
    /// A protocol probe (`heartbeat`, `method`) passes only on a successful answer, and an
    /// error answer (a Thrift exception, a server error) takes the endpoint out at once, as
    /// Envoy's Thrift checker takes it; by default any well-formed answer passes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_success: bool,
}

impl HealthCheckSpec {
    /// The time before the next check of an endpoint whose check `passed` (or failed), which
    /// is now `in_rotation` (or not), in a cluster that has sent requests (`traffic`) or not
    /// yet: the interval that applies (Envoy's choice among them), before jitter.
    pub(crate) fn wait(&self, passed: bool, in_rotation: bool, traffic: bool) -> Duration {
        let unhealthy = self.unhealthy_interval.unwrap_or(self.interval);
        match (traffic, self.no_traffic_interval) {
            (false, Some(no_traffic)) if passed && in_rotation => {
                self.no_traffic_healthy_interval.unwrap_or(no_traffic)
            }
            (false, Some(no_traffic)) => no_traffic,
            _ => match (passed, in_rotation) {
                (true, true) => self.interval,
                (true, false) => self.healthy_edge_interval.unwrap_or(self.interval),
                (false, true) => self.unhealthy_edge_interval.unwrap_or(unhealthy),
                (false, false) => unhealthy,
            },
        }
    }

    /// The shortest of its intervals.
    pub(crate) fn shortest_wait(&self) -> Duration {
        [
            self.unhealthy_interval,
            self.unhealthy_edge_interval,
            self.healthy_edge_interval,
            self.no_traffic_interval,
            self.no_traffic_healthy_interval,
        ]
        .into_iter()
        .flatten()
        .fold(self.interval, Duration::min)
    }

    /// Checks the spec of cluster `cluster`'s checks.
    fn validate(&self, cluster: &str) -> Result<(), ConfigError> {
        positive(&[("interval", self.interval), ("timeout", self.timeout)])?;
        let intervals = [
            ("unhealthy_interval", self.unhealthy_interval),
            ("unhealthy_edge_interval", self.unhealthy_edge_interval),
            ("healthy_edge_interval", self.healthy_edge_interval),
            ("no_traffic_interval", self.no_traffic_interval),
            (
                "no_traffic_healthy_interval",
                self.no_traffic_healthy_interval,
            ),
        ];
        let set: Vec<(&str, Duration)> = intervals
            .iter()
            .filter_map(|&(field, value)| Some((field, value?)))
            .collect();
        positive(&set)?;
        if self.no_traffic_healthy_interval.is_some() && self.no_traffic_interval.is_none() {
            return Err(ConfigError::new(
                "no_traffic_healthy_interval",
                "applies with no_traffic_interval, which is unset",
            ));
        }
        at_least_one(&[
            ("unhealthy_threshold", self.unhealthy_threshold),
            ("healthy_threshold", self.healthy_threshold),
        ])?;
        match &self.probe {
            ProbeSpec::Method(method) if method.is_empty() => {
                return Err(ConfigError::new("probe.method", "must not be empty"));
            }
            ProbeSpec::Http(http) => http.validate(cluster).map_err(|e| e.within("probe.http"))?,
            _ => {}
        }
        if self.require_success && matches!(self.probe, ProbeSpec::Tcp | ProbeSpec::Http(_)) {
            return Err(ConfigError::new(
                "require_success",
                "applies to a heartbeat or method probe, whose answers the protocol reads",
            ));
        }
        super::route::check_percentage(self.interval_jitter_percent)
            .map_err(|e| ConfigError::new("interval_jitter_percent", e.reason))
    }
}

/// What an active health check does to an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeSpec {
    /// Opens a connection and closes it.
    #[default]
    Tcp,
    /// Sends the protocol's heartbeat (Dubbo) and waits for its answer.
    Heartbeat,
    /// `{ method: name }`: calls `name` without arguments (Thrift, bRPC `service.method`) and
    /// waits for any well-formed answer, an error included.
    Method(String),
    /// `{ http: { path, ... } }`: an HTTP/1.1 `GET` of a health endpoint the service serves
    /// beside its protocol (Spring Boot's actuator, Dubbo's QoS port), any protocol.
    Http(HttpProbeSpec),
}

/// An HTTP health check (Envoy's `http_health_check`): a `GET` of `path`, on a connection of
/// its own, passing when the status is one of `expected_statuses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbeSpec {
    /// The path asked for, a query allowed: `/actuator/health`.
    pub path: String,
    /// The port checked on each endpoint's address; the endpoint's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The `Host` header sent; the cluster's name when unset, as Envoy sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The statuses that pass, as ranges; `200` alone when unset, as in Envoy.
    #[serde(default = "only_200")]
    pub expected_statuses: Vec<StatusRange>,
}

/// HTTP statuses from `start` up to `end`, `end` excluded (Envoy's `Int64Range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRange {
    /// The first status in the range.
    pub start: u16,
    /// The first status after the range.
    pub end: u16,
}

impl StatusRange {
    /// True if `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.start..self.end).contains(&status)
    }
}

fn only_200() -> Vec<StatusRange> {
    vec![StatusRange {
        start: 200,
        end: 201,
    }]
}

impl HttpProbeSpec {
    /// Checks the probe of cluster `cluster`'s checks: what it sends must be a valid request
    /// (the cluster's name too, when it is the `Host` header).
    fn validate(&self, cluster: &str) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') {
            return Err(ConfigError::new("path", "must begin with `/`"));
        }
        hyper::http::uri::PathAndQuery::from_str(&self.path)
            .map_err(|err| ConfigError::new("path", format!("is not a valid path: {err}")))?;
        if self.port == Some(0) {
            return Err(ConfigError::new("port", "must be 1 to 65535"));
        }
        let (field, host) = match &self.host {
            Some(host) if host.is_empty() => {
                return Err(ConfigError::new("host", "must not be empty"));
            }
            Some(host) => ("host", host.as_str()),
            None => ("host", cluster),
        };
        hyper::header::HeaderValue::from_str(host).map_err(|_| {
            ConfigError::new(
                field,
                format!(
                    "`{host}` is not a valid Host header (when unset, the cluster's name is sent)"
                ),
            )
        })?;
        if self.expected_statuses.is_empty() {
            return Err(ConfigError::new("expected_statuses", "must not be empty"));
        }
        for (i, range) in self.expected_statuses.iter().enumerate() {
            if range.start < 100 || range.end > 600 || range.start >= range.end {
                return Err(ConfigError::new(
                    format!("expected_statuses[{i}]"),
                    "must be a range of statuses from 100 to 599, its end (excluded) after its start",
                ));
            }
        }
        Ok(())
    }
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

fn ten() -> f64 {
    10.0
}

fn two() -> u32 {
    2
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

/// Where an endpoint is: an IP address or a host name, and a port. Written `ip:port`,
/// `[ipv6]:port` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointAddress {
    host: String,
    port: u16,
}

impl EndpointAddress {
    /// The host: an IP address or a name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IP address, when the host is one (no resolution needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl From<SocketAddr> for EndpointAddress {
    fn from(address: SocketAddr) -> Self {
        Self {
            host: address.ip().to_string(),
            port: address.port(),
        }
    }
}

impl FromStr for EndpointAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok(address.into());
        }
        let invalid = || format!("`{text}` is not `ip:port` or `host:port`");
        let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
        if host.is_empty() || !host.chars().all(name_char) {
            return Err(invalid());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl TryFrom<String> for EndpointAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<EndpointAddress> for String {
    fn from(address: EndpointAddress) -> Self {
        address.to_string()
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.socket_addr() {
            Some(address) => write!(f, "{address}"),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}
