//! `global_ratelimit`: a limit shared by every proxy instance, kept in Redis.
//!
//! Each request is counted against a limit named by the filter's `domain` and the values of
//! its `descriptors` metadata keys (one limit per distinct tuple: per interface and method, per
//! user ...). A request lacking a key is not limited, as in Envoy, and counted as such; with
//! `missing_descriptor: limit`, the requests lacking it share a limit instead. The count is one atomic Lua script ([`gcra.lua`](client)) run by Redis: the
//! generic cell rate algorithm, which allows `requests` per `per` on average and bursts of up to
//! `burst`. The check is a [`FilterDecision::Wait`]: the request waits for Redis, bounded by
//! `timeout`, while every other request goes on. When Redis is slow or down the filter lets
//! requests through, or with `failure_mode_deny` refuses them; either way it counts. A check
//! that Redis runs long after the request stopped waiting for it (a Redis that paused runs all
//! of those at once when it resumes) counts nothing: each check tells the script when it goes
//! stale, on the Redis server's clock as [`clock`] estimates it. At most `max_pending_checks`
//! of the filter's requests wait for Redis at once, and with those of the other filters on its
//! connection at most the largest of their `max_pending_checks`; past that (a Redis that reads
//! but does not answer, under load) the failure mode applies at once, counted as an
//! `overflow`. A check that timed out still holds its place in the Redis client's queue until
//! Redis answers it: once more answers are overdue on the connection than that largest bound,
//! or answers have been overdue on it for 5 s however few (at a low request rate the count
//! would take hours), it is dropped (the queue with it) for a new one, counted as `stalled`
//! ([`client`]).
//!
//! The Redis password lives in a file (`password_file`), read at each config load, never in
//! the config: `/config_dump` shows the config to anyone who can reach the admin API.
//!
//! ```yaml
//! - name: global_ratelimit
//!   config:
//!     redis: { address: 127.0.0.1:6379, password_file: /etc/metaprotocol/redis-password }
//!     domain: demo
//!     descriptors: [ interface, method ]
//!     limit: { requests: 200, per: 1s }
//!     timeout: 20ms
//!     failure_mode_deny: false
//!     missing_descriptor: pass
//! ```

mod client;
mod clock;

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::{
    FilterDecision, L7Filter, LocalReply, LocalReplyKind, RequestContext, Resume,
};
use serde::Deserialize;

use self::client::{CheckCommand, Checked, Credentials, PendingChecks, RedisLimits, Verdict};
use super::{FilterContext, routing_view};
use crate::config::{ConfigError, EndpointAddress, from_value};
use crate::route::DEFAULT_ROUTE_TIMEOUT;
use crate::stats::Counter;

/// The filter's registered name.
pub(crate) const NAME: &str = "global_ratelimit";

/// The fields of its config that name files it reads as it is built, with the most bytes each
/// may hold.
pub(crate) const FILES: &[(&str, u64)] = &[("redis.password_file", PASSWORD_FILE_MAX_BYTES)];

/// The most bytes a `password_file` may hold: far more than any password, so that a config
/// naming the wrong file (a log, a device that never ends) is refused without reading it all.
const PASSWORD_FILE_MAX_BYTES: u64 = 4 << 10;

/// The default `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GlobalRateLimitSpec {
    redis: RedisSpec,
    domain: String,
    #[serde(default)]
    descriptors: Vec<String>,
    limit: LimitSpec,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default)]
    failure_mode_deny: bool,
    #[serde(default = "default_max_pending_checks")]
    max_pending_checks: u32,
    #[serde(default)]
    missing_descriptor: MissingDescriptor,
}

/// What becomes of a request that lacks one of the descriptor keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MissingDescriptor {
    /// It is not limited by this filter (as in Envoy), counted as `missing_descriptor`.
    #[default]
    Pass,
    /// It is limited with the key's value taken as "absent", a value no request can send: the
    /// requests lacking it (and agreeing on the other keys) share one limit.
    Limit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSpec {
    address: EndpointAddress,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
}

impl RedisSpec {
    /// The credentials to sign in with: the password is read from its file now (at each
    /// config load), so that it never appears in the config, `/config_dump` included.
    fn credentials(&self) -> Result<Credentials, ConfigError> {
        let Some(path) = &self.password_file else {
            if self.username.is_some() {
                return Err(ConfigError::new(
                    "username",
                    "needs `password_file`: Redis signs a user in with a password",
                ));
            }
            return Ok(Credentials::default());
        };
        let text = read_text(path).map_err(|err| {
            ConfigError::new(
                "password_file",
                format!("cannot read `{}`: {err}", path.display()),
            )
        })?;
        let password = text.trim();
        if password.is_empty() {
            return Err(ConfigError::new(
                "password_file",
                format!("`{}` is empty", path.display()),
            ));
        }
        Ok(Credentials {
            username: self.username.clone(),
            password: Some(password.to_owned()),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    requests: u64,
    #[serde(with = "humantime_serde")]
    per: Duration,
    #[serde(default)]
    burst: Option<u64>,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// The default `max_pending_checks`: at the default timeout, room for some 50,000 checks a
/// second on one connection, as many as a healthy Redis answers on it.
const DEFAULT_MAX_PENDING_CHECKS: u32 = 1024;

fn default_max_pending_checks() -> u32 {
    DEFAULT_MAX_PENDING_CHECKS
}

/// The longest time a limit's schedule may run ahead of now, in microseconds.
const MAX_SPAN_US: u64 = 1 << 50;

/// A limit in the script's terms, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// The time one request "costs": `per / requests`.
    emission_us: u64,
    /// How far ahead of the schedule a request may come: `(burst - 1)` emissions.
    tolerance_us: u64,
}

impl LimitSpec {
    fn rate(&self) -> Result<Rate, ConfigError> {
        if self.requests == 0 {
            return Err(ConfigError::new("requests", "must be at least 1"));
        }
        if self.per.is_zero() {
            return Err(ConfigError::new("per", "must be greater than 0"));
        }
        let burst = self.burst.unwrap_or(self.requests);
        if burst == 0 {
            return Err(ConfigError::new("burst", "must be at least 1"));
        }
        let per_us = self.per.as_micros();
        let emission_us = per_us / u128::from(self.requests);
        if emission_us == 0 {
            return Err(ConfigError::new(
                "requests",
                format!(
                    "{} per {:?} is more than one per microsecond, the limit's resolution",
                    self.requests, self.per
                ),
            ));
        }
        // The script adds both to the server's clock (2^50.6 us since 1970) in a Lua number,
        // exact only up to 2^53.
        let fits = |us: u128| u64::try_from(us).ok().filter(|us| *us < MAX_SPAN_US);
        let emission_us = fits(emission_us).ok_or_else(|| {
            ConfigError::new(
                "per",
                "is too long: `per / requests` must be under 2^50 microseconds (35 years)",
            )
        })?;
        let tolerance_us = fits(u128::from(emission_us) * u128::from(burst - 1)).ok_or_else(|| {
            ConfigError::new(
                "burst",
                "is too large: `(burst - 1) × per / requests` must be under 2^50 microseconds (35 years)",
            )
        })?;
        Ok(Rate {
            emission_us,
            tolerance_us,
        })
    }
}

/// Builds the filter from its config.
pub(crate) fn build(
    config: &serde_json::Value,
    context: &FilterContext,
) -> Result<Arc<dyn L7Filter>, ConfigError> {
    let spec: GlobalRateLimitSpec = from_value(config)?;
    if spec.domain.is_empty() {
        return Err(ConfigError::new("domain", "must not be empty"));
    }
    if let Some(i) = spec.descriptors.iter().position(String::is_empty) {
        return Err(ConfigError::new(
            format!("descriptors[{i}]"),
            "must not be empty",
        ));
    }
    if spec.timeout.is_zero() {
        return Err(ConfigError::new("timeout", "must be greater than 0"));
    }
    // Longer, a slow Redis would end each check in the filters' timeout (a timeout error)
    // instead of the failure mode.
    if spec.timeout >= DEFAULT_ROUTE_TIMEOUT {
        return Err(ConfigError::new(
            "timeout",
            format!(
                "must be less than {DEFAULT_ROUTE_TIMEOUT:?}, the time a request's filters may take"
            ),
        ));
    }
    if spec.max_pending_checks == 0 {
        return Err(ConfigError::new("max_pending_checks", "must be at least 1"));
    }
    let rate = spec.limit.rate().map_err(|e| e.within("limit"))?;
    let redis = spec
        .redis
        .credentials()
        .map(|credentials| RedisLimits::shared(context.shared(), &spec.redis.address, credentials))
        .map_err(|e| e.within("redis"))?;
    let metrics = context.metrics();
    let decisions = |decision| {
        metrics.counter_with(
            "ratelimit_decisions",
            "Requests a rate limit filter let through (ok) or refused (over_limit), and what a global limit did when its backend failed or a request lacked a descriptor key (missing_descriptor)",
            &[("decision", decision)],
        )
    };
    let errors = |reason| {
        metrics.counter_with(
            "ratelimit_backend_errors",
            "Global rate limit checks that Redis did not answer in time (timeout), answered with an error (error), or that were not sent, max_pending_checks waiting (overflow); and Redis connections dropped, more than max_pending_checks answers overdue on them or answers overdue for 5s (stalled)",
            &[("reason", reason)],
        )
    };
    let stats = Stats {
        ok: decisions("ok"),
        over_limit: decisions("over_limit"),
        failure: decisions(if spec.failure_mode_deny {
            "failure_mode_denied"
        } else {
            "failure_mode_allowed"
        }),
        timeouts: errors("timeout"),
        errors: errors("error"),
        overflows: errors("overflow"),
        stalled: errors("stalled"),
        missing_descriptor: decisions("missing_descriptor"),
    };
    Ok(Arc::new(GlobalRateLimit {
        pending: PendingChecks::new(redis, spec.max_pending_checks),
        domain: spec.domain,
        descriptors: spec.descriptors,
        rate,
        timeout: spec.timeout,
        failure_mode_deny: spec.failure_mode_deny,
        missing_descriptor: spec.missing_descriptor,
        stats: Arc::new(stats),
    }))
}

struct Stats {
    ok: Counter,
    over_limit: Counter,
    /// Requests let through (or refused, with `failure_mode_deny`) because Redis failed.
    failure: Counter,
    timeouts: Counter,
    errors: Counter,
    /// Checks not sent: `max_pending_checks` were waiting.
    overflows: Counter,
    /// Redis connections dropped: more than `max_pending_checks` answers were overdue on them,
    /// or answers were overdue for 5 s.
    stalled: Counter,
    /// Requests let through unchecked, lacking a descriptor key.
    missing_descriptor: Counter,
}

/// The running filter.
struct GlobalRateLimit {
    /// The checks waiting for Redis: at most `max_pending_checks`, and with those of the other
    /// filters on the connection at most the largest of their `max_pending_checks`.
    pending: PendingChecks,
    domain: String,
    descriptors: Vec<String>,
    rate: Rate,
    timeout: Duration,
    failure_mode_deny: bool,
    missing_descriptor: MissingDescriptor,
    stats: Arc<Stats>,
}

impl GlobalRateLimit {
    /// Writes the Redis key of the request's limit into `key`; false when the request lacks a
    /// descriptor key and such requests pass. Parts are length-prefixed, and a missing value is
    /// [`ABSENT`] (which no length starts with), so that no two tuples of values can make the
    /// same key. A key past [`MAX_PLAIN_KEY_BYTES`] is replaced by its SHA-256: the values come
    /// from clients, and Redis keeps each key for its limit's period.
    fn key(&self, ctx: &RequestContext<'_>, key: &mut Vec<u8>) -> bool {
        let view = routing_view(ctx);
        key.clear();
        key.extend_from_slice(KEY_PREFIX);
        push_part(key, self.domain.as_bytes());
        for descriptor in &self.descriptors {
            push_part(key, descriptor.as_bytes());
            match view.get(descriptor) {
                Some(value) => push_part(key, value.as_bytes()),
                None if self.missing_descriptor == MissingDescriptor::Limit => {
                    key.extend_from_slice(ABSENT);
                }
                None => return false,
            }
        }
        bounded(key);
        true
    }
}

thread_local! {
    /// The key being built, kept for this thread's next request: a key costs no allocation of
    /// its own (it is copied into its check's command).
    static KEY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The most a thread's key buffer keeps between requests: a key written longer (before it is
/// hashed) leaves a buffer this size, not its own.
const MAX_KEPT_KEY_BYTES: usize = 1024;

/// What every key starts with.
const KEY_PREFIX: &[u8] = b"metaprotocol:ratelimit:";

/// A missing descriptor value in a key, where a part's length would start.
const ABSENT: &[u8] = b"-:";

/// The longest key kept as written; longer ones are hashed.
const MAX_PLAIN_KEY_BYTES: usize = 256;

/// Leaves `key` as it is, or when it is longer than [`MAX_PLAIN_KEY_BYTES`] makes it the prefix,
/// `sha256:` and the hex of its SHA-256 (collision-resistant: a client cannot pick values that
/// share another's limit). A written key goes on with its domain's length, a digit, so the two
/// kinds never meet.
fn bounded(key: &mut Vec<u8>) {
    if key.len() <= MAX_PLAIN_KEY_BYTES {
        return;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    key.truncate(KEY_PREFIX.len());
    key.extend_from_slice(b"sha256:");
    for byte in digest.as_ref() {
        // Writing into a Vec cannot fail.
        let _ = write!(key, "{byte:02x}");
    }
}

fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ = write!(key, "{}:", part.len());
    key.extend_from_slice(part);
}

/// Why a request is not sent to Redis.
enum Skipped {
    /// It lacks a descriptor key, and such requests pass.
    MissingDescriptor,
    /// `max_pending_checks` wait already.
    Overflow,
}

fn over_limit(message: impl Into<Cow<'static, str>>) -> FilterDecision {
    FilterDecision::Reply(LocalReply::new(LocalReplyKind::OverLimit, message))
}

/// What a request gets when its check failed (`reason` says how), by the failure mode.
fn failure_mode(stats: &Stats, reason: &Counter, deny: bool) -> FilterDecision {
    reason.inc();
    stats.failure.inc();
    if deny {
        over_limit(
            "metaprotocol-proxy: the rate limit service is unavailable (global_ratelimit, failure_mode_deny)",
        )
    } else {
        FilterDecision::Continue
    }
}

impl L7Filter for GlobalRateLimit {
    fn name(&self) -> &str {
        NAME
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        let command = KEY.with_borrow_mut(|key| {
            if !self.key(ctx, key) {
                return Err(Skipped::MissingDescriptor);
            }
            let pending = self.pending.try_wait().ok_or(Skipped::Overflow)?;
            let command = CheckCommand::new(key, self.rate.emission_us, self.rate.tolerance_us);
            if key.capacity() > MAX_KEPT_KEY_BYTES {
                *key = Vec::new();
            }
            Ok((command, pending))
        });
        let (command, pending) = match command {
            Ok(check) => check,
            Err(Skipped::MissingDescriptor) => {
                self.stats.missing_descriptor.inc();
                return FilterDecision::Continue;
            }
            Err(Skipped::Overflow) => {
                return failure_mode(&self.stats, &self.stats.overflows, self.failure_mode_deny);
            }
        };
        let redis = self.pending.redis().clone();
        let stats = self.stats.clone();
        let (timeout, deny) = (self.timeout, self.failure_mode_deny);
        FilterDecision::Wait(Box::pin(async move {
            let _waiting = pending;
            let checked = redis.check(command, timeout).await;
            let failed = match checked {
                // A stale verdict in time: the clocks jumped, and this request goes uncounted.
                Checked::Answered(Verdict::Conforms | Verdict::Stale) => {
                    stats.ok.inc();
                    return Resume::new(FilterDecision::Continue);
                }
                Checked::Answered(Verdict::OverLimit) => {
                    stats.over_limit.inc();
                    return Resume::new(over_limit(
                        "metaprotocol-proxy: rate limited (global_ratelimit)",
                    ));
                }
                Checked::Failed(err) => {
                    tracing::debug!(error = %err, "global rate limit check failed");
                    &stats.errors
                }
                Checked::TimedOut { replaced } => {
                    if replaced {
                        stats.stalled.inc();
                    }
                    &stats.timeouts
                }
            };
            Resume::new(failure_mode(&stats, failed, deny))
        }))
    }
}

/// The text of the file at `path`, as [`std::fs::read_to_string`] gives it (errors alike) if it
/// is at most [`PASSWORD_FILE_MAX_BYTES`], read ahead by the update building the filter when it
/// was (see `ReadAhead`).
fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    String::from_utf8(metaprotocol_core::read_whole(
        path,
        PASSWORD_FILE_MAX_BYTES,
    )?)
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::filters::testing::{
        TestRequest, assert_rejected, build as build_filter, rejection, value,
    };
    use crate::stats::Metrics;

    fn config(address: &str, deny: bool) -> serde_json::Value {
        json!({
            "redis": { "address": address },
            "domain": "test",
            "descriptors": [ "method" ],
            "limit": { "requests": 10, "per": "1s" },
            "timeout": "50ms",
            "failure_mode_deny": deny,
        })
    }

    /// An address nothing listens on.
    fn closed_address() -> String {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "127.0.0.1:1".to_owned())
    }

    async fn decide(filter: &dyn L7Filter, request: &TestRequest) -> FilterDecision {
        match request.decide(filter) {
            FilterDecision::Wait(future) => future.await.decision,
            other => other,
        }
    }

    #[tokio::test]
    async fn redis_down_applies_the_failure_mode_within_the_timeout() -> Result<(), ConfigError> {
        let address = closed_address();
        for deny in [false, true] {
            let metrics = Metrics::new();
            let filter = build_filter(NAME, config(&address, deny), &metrics)?;
            let started = std::time::Instant::now();
            let decision = decide(&*filter, &TestRequest::new(&[("method", "m")])).await;
            assert!(started.elapsed() < Duration::from_secs(2));
            match (deny, decision) {
                (false, FilterDecision::Continue) => {}
                (true, FilterDecision::Reply(reply)) => {
                    assert_eq!(reply.kind, LocalReplyKind::OverLimit);
                }
                (_, other) => panic!("deny {deny}: {other:?}"),
            }
            let decision = if deny {
                "failure_mode_denied"
            } else {
                "failure_mode_allowed"
            };
            let series = format!(
                "metaprotocol_ratelimit_decisions_total{{listener=\"in\",filter=\"global_ratelimit\",decision=\"{decision}\"}}"
            );
            assert_eq!(value(&metrics, &series), Some(1.0));
        }
        Ok(())
    }

    /// A server that answers every connection with `answer` (no Redis reply, or one the script
    /// never gives) and closes it: each check fails to the failure mode, counted as an error,
    /// long before its timeout.
    #[tokio::test]
    async fn a_server_answering_garbage_applies_the_failure_mode() -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for answer in [
            &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
            b"*2\r\n:1\r\n+now\r\n",
            b"-ERR user_script:1: Script attempted to access nonexistent global variable\r\n",
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?.to_string();
            let server = tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(answer).await;
                }
            });
            let metrics = Metrics::new();
            let mut spec = config(&address, true);
            spec["timeout"] = json!("5s");
            let filter = build_filter(NAME, spec, &metrics).map_err(std::io::Error::other)?;
            let started = std::time::Instant::now();
            let decision = decide(&*filter, &TestRequest::new(&[("method", "m")])).await;
            server.abort();
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{:?}",
                started.elapsed()
            );
            assert!(
                matches!(&decision, FilterDecision::Reply(reply) if reply.kind == LocalReplyKind::OverLimit),
                "{decision:?}"
            );
            let series = "metaprotocol_ratelimit_backend_errors_total{listener=\"in\",filter=\"global_ratelimit\",reason=\"error\"}";
            assert_eq!(value(&metrics, series), Some(1.0), "{answer:?}");
        }
        Ok(())
    }

    /// A server on loopback that reads what each connection sends first and never answers (a
    /// stalled Redis): its address, and its task.
    async fn silent_server() -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let silent = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                sockets.push(socket);
            }
        });
        Ok((address, silent))
    }

    /// A Redis that reads checks but never answers held each waiting call until its timeout,
    /// with no cap on how many waited: past `max_pending_checks`, the failure mode applies at
    /// once, counted.
    #[tokio::test]
    async fn past_max_pending_checks_the_failure_mode_applies_at_once() -> std::io::Result<()> {
        let (address, silent) = silent_server().await?;
        for deny in [false, true] {
            let metrics = Metrics::new();
            let mut spec = config(&address, deny);
            spec["timeout"] = json!("10s");
            spec["max_pending_checks"] = json!(2);
            let filter = build_filter(NAME, spec, &metrics).map_err(std::io::Error::other)?;
            let request = TestRequest::new(&[("method", "m")]);
            let mut waiting = Vec::new();
            for _ in 0..2 {
                match request.decide(&*filter) {
                    FilterDecision::Wait(future) => waiting.push(tokio::spawn(future)),
                    other => return Err(std::io::Error::other(format!("{other:?}"))),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let over = request.decide(&*filter);
            match (deny, &over) {
                (false, FilterDecision::Continue) => {}
                (true, FilterDecision::Reply(reply)) if reply.kind == LocalReplyKind::OverLimit => {
                }
                _ => return Err(std::io::Error::other(format!("deny {deny}: {over:?}"))),
            }
            let series = |name: &str, label: &str| {
                value(
                    &metrics,
                    &format!(
                        "metaprotocol_ratelimit_{name}_total{{listener=\"in\",filter=\"global_ratelimit\",{label}}}"
                    ),
                )
            };
            assert_eq!(series("backend_errors", "reason=\"overflow\""), Some(1.0));
            let failure = if deny {
                "failure_mode_denied"
            } else {
                "failure_mode_allowed"
            };
            assert_eq!(
                series("decisions", &format!("decision=\"{failure}\"")),
                Some(1.0)
            );
            // A call that stops waiting (its caller gone) makes room for the next.
            let first = waiting.remove(0);
            first.abort();
            let _ = first.await;
            assert!(matches!(request.decide(&*filter), FilterDecision::Wait(_)));
            for check in waiting {
                check.abort();
            }
        }
        silent.abort();
        Ok(())
    }

    /// Filters on one Redis connection (two in a chain, a listener's each, or an old config's
    /// and a new one's) each let `max_pending_checks` wait on it: N filters held N times the
    /// bound. Together they wait at most the largest of their `max_pending_checks`.
    #[tokio::test]
    async fn filters_sharing_a_redis_connection_share_max_pending_checks() -> std::io::Result<()> {
        let (address, silent) = silent_server().await?;
        let metrics = Metrics::new();
        let context = FilterContext::standalone("in", NAME, &metrics);
        let mut spec = config(&address, true);
        spec["timeout"] = json!("10s");
        spec["max_pending_checks"] = json!(2);
        let registry = crate::filters::FilterRegistry::with_builtins();
        let first = registry
            .build(NAME, &spec, &context)
            .map_err(std::io::Error::other)?;
        let second = registry
            .build(NAME, &spec, &context)
            .map_err(std::io::Error::other)?;
        let request = TestRequest::new(&[("method", "m")]);
        let mut waiting = Vec::new();
        for _ in 0..2 {
            match request.decide(&*first) {
                FilterDecision::Wait(future) => waiting.push(tokio::spawn(future)),
                other => return Err(std::io::Error::other(format!("{other:?}"))),
            }
        }
        let over = request.decide(&*second);
        for check in waiting {
            check.abort();
        }
        silent.abort();
        assert!(
            matches!(&over, FilterDecision::Reply(reply) if reply.kind == LocalReplyKind::OverLimit),
            "{over:?}"
        );
        let series = "metaprotocol_ratelimit_backend_errors_total{listener=\"in\",filter=\"global_ratelimit\",reason=\"overflow\"}";
        assert_eq!(value(&metrics, series), Some(1.0));
        Ok(())
    }

    /// Filters with different `max_pending_checks` on one connection each refused at their own
    /// bound, counted against every filter's checks: one with a small bound was refused while
    /// another's checks (within that one's larger bound) waited. Each filter is held to its own
    /// bound, counting its own checks, and the connection to the largest.
    #[tokio::test]
    async fn filters_sharing_a_redis_connection_each_keep_their_own_max_pending_checks()
    -> std::io::Result<()> {
        let (address, silent) = silent_server().await?;
        let metrics = Metrics::new();
        let context = FilterContext::standalone("in", NAME, &metrics);
        let registry = crate::filters::FilterRegistry::with_builtins();
        let build = |max: u32| {
            let mut spec = config(&address, true);
            spec["timeout"] = json!("10s");
            spec["max_pending_checks"] = json!(max);
            registry
                .build(NAME, &spec, &context)
                .map_err(std::io::Error::other)
        };
        let (large, small) = (build(3)?, build(1)?);
        let request = TestRequest::new(&[("method", "m")]);
        let mut waiting = Vec::new();
        let mut outcomes = Vec::new();
        // Two of the large filter's checks, then the small one's first (within its bound), its
        // second (past it), and the large one's third and fourth: the connection holds three.
        for filter in [&large, &large, &small, &small, &large, &large] {
            let outcome = match request.decide(&**filter) {
                FilterDecision::Wait(future) => {
                    waiting.push(tokio::spawn(future));
                    "waits"
                }
                FilterDecision::Reply(reply) if reply.kind == LocalReplyKind::OverLimit => {
                    "refused"
                }
                other => return Err(std::io::Error::other(format!("{other:?}"))),
            };
            outcomes.push(outcome);
        }
        for check in waiting {
            check.abort();
        }
        silent.abort();
        assert_eq!(
            outcomes,
            ["waits", "waits", "waits", "refused", "refused", "refused"]
        );
        let series = "metaprotocol_ratelimit_backend_errors_total{listener=\"in\",filter=\"global_ratelimit\",reason=\"overflow\"}";
        assert_eq!(value(&metrics, series), Some(3.0));
        Ok(())
    }

    /// A Redis that answered the connection's setup, then read checks but never answered them,
    /// kept each timed-out check in redis-rs's queue of requests awaiting answers for as long as
    /// the connection lived: once more than `max_pending_checks` answers are overdue, the
    /// connection is dropped (its queue with it) and the next check goes out on a new one.
    #[tokio::test]
    async fn a_connection_with_too_many_overdue_answers_is_replaced() -> std::io::Result<()> {
        overdue_answers_replace_the_connection("50ms").await
    }

    /// Checks that waited half a second or more ended in redis-rs's own response timeout (an
    /// error, not a timeout), which took them for answered: the overdue answers were never
    /// counted and the connection's queue grew as long as Redis stalled.
    #[tokio::test]
    async fn checks_waiting_past_half_a_second_time_out_and_count_as_overdue() -> std::io::Result<()>
    {
        overdue_answers_replace_the_connection("600ms").await
    }

    /// Three checks of `timeout` time out on a server that stalls after the connection's setup,
    /// with `max_pending_checks: 2`: the connection is dropped and the next check opens one.
    async fn overdue_answers_replace_the_connection(timeout: &str) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::sync::mpsc;
        /// What the server saw on its `n`th connection.
        #[derive(Debug, PartialEq)]
        enum Seen {
            Accepted(usize),
            Closed(usize),
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (seen, mut events) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut socket, _)) = listener.accept().await {
                let _ = seen.send(Seen::Accepted(n));
                let seen = seen.clone();
                tokio::spawn(async move {
                    // Answers the two `CLIENT SETINFO` redis-rs sets a connection up with, then
                    // reads until the proxy closes the connection, answering nothing.
                    let mut read = Vec::new();
                    let mut buf = [0u8; 4096];
                    let mut answered = false;
                    while let Ok(len @ 1..) = socket.read(&mut buf).await {
                        read.extend_from_slice(&buf[..len]);
                        let setinfo = read.windows(7).filter(|w| w == b"SETINFO").count();
                        if !answered && setinfo >= 2 {
                            answered = true;
                            if socket.write_all(b"+OK\r\n+OK\r\n").await.is_err() {
                                break;
                            }
                        }
                    }
                    let _ = seen.send(Seen::Closed(n));
                });
                n += 1;
            }
        });
        let metrics = Metrics::new();
        let mut spec = config(&address, false);
        spec["max_pending_checks"] = json!(2);
        spec["timeout"] = json!(timeout);
        let filter = build_filter(NAME, spec, &metrics).map_err(std::io::Error::other)?;
        let request = TestRequest::new(&[("method", "m")]);
        // Three checks time out: the third answer overdue is one more than max_pending_checks.
        for _ in 0..3 {
            assert!(matches!(
                decide(&*filter, &request).await,
                FilterDecision::Continue
            ));
        }
        let next = match request.decide(&*filter) {
            FilterDecision::Wait(future) => tokio::spawn(future),
            other => return Err(std::io::Error::other(format!("{other:?}"))),
        };
        // The first connection closes (redis-rs's queue goes with it), the next check opens one.
        let mut expected = vec![Seen::Accepted(0), Seen::Closed(0), Seen::Accepted(1)];
        while !expected.is_empty() {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .map_err(|_| std::io::Error::other(format!("still waiting for {expected:?}")))?
                .ok_or_else(|| std::io::Error::other("the server stopped"))?;
            expected.retain(|e| *e != event);
        }
        let _ = next.await;
        server.abort();
        let series = |reason: &str| {
            value(
                &metrics,
                &format!(
                    "metaprotocol_ratelimit_backend_errors_total{{listener=\"in\",filter=\"global_ratelimit\",reason=\"{reason}\"}}"
                ),
            )
        };
        assert_eq!(series("timeout"), Some(4.0));
        assert_eq!(series("stalled"), Some(1.0));
        Ok(())
    }

    #[test]
    fn requests_without_a_descriptor_key_are_not_limited_but_counted() -> Result<(), ConfigError> {
        let metrics = Metrics::new();
        let filter = build_filter(NAME, config(&closed_address(), true), &metrics)?;
        let decision = TestRequest::new(&[("service", "s")]).decide(&*filter);
        assert!(matches!(decision, FilterDecision::Continue), "{decision:?}");
        let series = "metaprotocol_ratelimit_decisions_total{listener=\"in\",filter=\"global_ratelimit\",decision=\"missing_descriptor\"}";
        assert_eq!(value(&metrics, series), Some(1.0));
        Ok(())
    }

    #[test]
    fn keys_cannot_collide() {
        let mut a = Vec::new();
        push_part(&mut a, b"ab");
        push_part(&mut a, b"c");
        let mut b = Vec::new();
        push_part(&mut b, b"a");
        push_part(&mut b, b"bc");
        assert_ne!(a, b);
        assert_eq!(a, b"2:ab1:c");
        // An absent value is neither an empty one nor any value.
        let mut empty = Vec::new();
        push_part(&mut empty, b"");
        let mut dash = Vec::new();
        push_part(&mut dash, b"-");
        for value in [empty, dash] {
            assert_ne!(value, ABSENT);
        }
    }

    #[test]
    fn rates_are_worked_out_in_microseconds() -> Result<(), ConfigError> {
        let rate = LimitSpec {
            requests: 200,
            per: Duration::from_secs(1),
            burst: None,
        }
        .rate()?;
        assert_eq!((rate.emission_us, rate.tolerance_us), (5000, 199 * 5000));
        let rate = LimitSpec {
            requests: 10,
            per: Duration::from_secs(60),
            burst: Some(1),
        }
        .rate()?;
        assert_eq!((rate.emission_us, rate.tolerance_us), (6_000_000, 0));
        Ok(())
    }

    #[test]
    fn bad_configs_name_the_field() -> std::io::Result<()> {
        let empty = std::env::temp_dir().join(format!(
            "global-ratelimit-empty-password-{}",
            std::process::id()
        ));
        std::fs::write(&empty, " \n")?;
        let mut base = config("127.0.0.1:6379", false);
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut config = base.clone();
            edit(&mut config);
            config
        };
        let cases = vec![
            (
                with(&|c| c["limit"]["requests"] = json!(0)),
                "limit.requests",
                "at least 1",
            ),
            (
                with(&|c| c["limit"]["requests"] = json!(10_000_000)),
                "limit.requests",
                "one per microsecond",
            ),
            (
                with(&|c| c["limit"]["per"] = json!("0s")),
                "limit.per",
                "must be greater than 0",
            ),
            (
                with(&|c| c["limit"]["burst"] = json!(1_000_000_000_000u64)),
                "limit.burst",
                "is too large",
            ),
            (
                with(&|c| c["limit"]["per"] = json!("400years")),
                "limit.per",
                "is too long",
            ),
            (
                with(&|c| c["limit"]["burst"] = json!(0)),
                "limit.burst",
                "at least 1",
            ),
            (
                with(&|c| c["timeout"] = json!("0s")),
                "timeout",
                "greater than 0",
            ),
            (
                with(&|c| c["timeout"] = json!("15s")),
                "timeout",
                "less than 15s",
            ),
            (
                with(&|c| c["max_pending_checks"] = json!(0)),
                "max_pending_checks",
                "at least 1",
            ),
            (
                with(&|c| c["domain"] = json!("")),
                "domain",
                "must not be empty",
            ),
            (
                with(&|c| c["descriptors"] = json!([""])),
                "descriptors[0]",
                "must not be empty",
            ),
            (
                with(&|c| c["redis"]["address"] = json!("a b:x")),
                "redis.address",
                "not `ip:port` or `host:port`",
            ),
            // Credentials belong in a file, never in the config (or `/config_dump`).
            (
                with(&|c| c["redis"]["address"] = json!("user:secret@127.0.0.1:6379")),
                "redis.address",
                "not `ip:port` or `host:port`",
            ),
            (
                with(&|c| c["redis"]["username"] = json!("proxy")),
                "redis.username",
                "needs `password_file`",
            ),
            (
                with(&|c| c["redis"]["password_file"] = json!("/nonexistent/redis-password")),
                "redis.password_file",
                "cannot read `/nonexistent/redis-password`",
            ),
            (
                with(&|c| c["redis"]["password_file"] = json!(empty.display().to_string())),
                "redis.password_file",
                "is empty",
            ),
        ];
        assert_rejected(NAME, cases);
        base["limit"] = json!({ "requests": 1 });
        let err = rejection(NAME, base);
        assert!(err.reason.contains("missing field `per`"), "{err}");
        std::fs::remove_file(empty)
    }

    #[test]
    fn long_keys_are_hashed_and_stay_apart() {
        let plain = b"metaprotocol:ratelimit:4:demo".to_vec();
        let mut kept = plain.clone();
        bounded(&mut kept);
        assert_eq!(kept, plain);
        let long = |last: u8| {
            let mut key = KEY_PREFIX.to_vec();
            push_part(&mut key, &[b'x'; MAX_PLAIN_KEY_BYTES]);
            key.push(last);
            bounded(&mut key);
            key
        };
        let (a, b) = (long(b'a'), long(b'b'));
        assert_ne!(a, b);
        for key in [&a, &b] {
            assert_eq!(
                key.len(),
                KEY_PREFIX.len() + "sha256:".len() + 64,
                "{key:?}"
            );
            assert!(
                key.starts_with(b"metaprotocol:ratelimit:sha256:"),
                "{key:?}"
            );
            assert!(
                key[KEY_PREFIX.len() + 7..]
                    .iter()
                    .all(u8::is_ascii_hexdigit)
            );
        }
    }
}
