//! A route's (or its virtual host's) Envoy `RetryPolicy` as the engine's
//! [`RetryPolicySpec`].
//!
//! Mapped: `num_retries` (Envoy's default of 1 when unset; at most the engine's 10),
//! `per_try_timeout` (0 is unset, as in Envoy), `retry_back_off`, and `retry_on`, whose
//! conditions, written for HTTP and gRPC, become what they mean for an RPC:
//!
//! | `retry_on` | the engine's conditions |
//! |---|---|
//! | `connect-failure` | `connect_failure` |
//! | `reset`, `reset-before-request` | `reset` |
//! | `refused-stream`, `resource-exhausted` | `retryable_status` (the upstream refused the call unrun) |
//! | `unavailable`, `internal` | `unavailable` (a server error) |
//! | `deadline-exceeded` | `timeout` |
//! | `gateway-error` | `connect_failure`, `reset`, `timeout`, `retryable_status` |
//! | `5xx` | all five |
//!
//! The engine's rule still holds: a call that may have run is retried only when the route
//! marks it idempotent, which Envoy's policy cannot say, so over xDS a reset, a server error or
//! a timeout is retried only when the call certainly did not run. Envoy's
//! `previous_hosts` host predicate is accepted: a retry already goes to an endpoint the call
//! has not tried when the cluster has one. `host_selection_retry_max_attempts` is accepted and
//! ignored (tuning). Conditions that have no RPC meaning (`retriable-4xx`,
//! `retriable-status-codes`, `retriable-headers`, `envoy-ratelimited`, `cancelled`, HTTP/3's)
//! and every other field are refused, naming them.

use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryHostPredicate;
use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
use metaprotocol_router::config::{MAX_NUM_RETRIES, RetryBackOffSpec, RetryOn, RetryPolicySpec};

use super::{InvalidResource, duration, refuse_set};

/// The name, and the config's type, of the host predicate that sends a retry elsewhere.
const PREVIOUS_HOSTS: (&str, &str) = (
    "envoy.retry_host_predicates.previous_hosts",
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
);

/// Translates a `RetryPolicy` (see the module docs).
pub(super) fn policy(policy: &RetryPolicy) -> Result<RetryPolicySpec, InvalidResource> {
    refuse_set!(
        "",
        policy,
        [
            per_try_idle_timeout,
            retry_priority,
            retry_options_predicates,
            retriable_status_codes,
            rate_limited_retry_back_off,
            retriable_headers,
            retriable_request_headers,
            refresh_cluster_on_retry,
        ]
    );
    for (i, predicate) in policy.retry_host_predicate.iter().enumerate() {
        if !is_previous_hosts(predicate) {
            return Err(InvalidResource::new(
                format!("retry_host_predicate[{i}]"),
                "only `previous_hosts` is supported by metaprotocol-rs (a retry goes to an endpoint the call has not tried when there is one)",
            ));
        }
    }
    let mut spec: RetryPolicySpec = serde_json::from_value(serde_json::json!({ "num_retries": 1 }))
        .map_err(|err| InvalidResource::new("", err.to_string()))?;
    if let Some(retries) = &policy.num_retries {
        if retries.value > MAX_NUM_RETRIES {
            return Err(InvalidResource::new(
                "num_retries",
                format!(
                    "{} is more than the {MAX_NUM_RETRIES} retries metaprotocol-rs makes",
                    retries.value
                ),
            ));
        }
        spec.num_retries = retries.value;
    }
    spec.retry_on = retry_on(&policy.retry_on).map_err(|e| e.within("retry_on"))?;
    if let Some(timeout) = &policy.per_try_timeout {
        spec.per_try_timeout =
            Some(duration(timeout, "per_try_timeout")?).filter(|timeout| !timeout.is_zero());
    }
    if let Some(back_off) = &policy.retry_back_off {
        let base_interval = back_off
            .base_interval
            .as_ref()
            .ok_or_else(|| InvalidResource::new("retry_back_off.base_interval", "is required"))?;
        let base_interval = duration(base_interval, "retry_back_off.base_interval")?;
        if base_interval.is_zero() {
            return Err(InvalidResource::new(
                "retry_back_off.base_interval",
                "must be greater than 0",
            ));
        }
        let max_interval = match &back_off.max_interval {
            Some(max) => duration(max, "retry_back_off.max_interval")?,
            // Envoy's default, as the engine's.
            None => base_interval.saturating_mul(10),
        };
        if max_interval < base_interval {
            return Err(InvalidResource::new(
                "retry_back_off.max_interval",
                "must not be less than base_interval",
            ));
        }
        spec.retry_back_off = RetryBackOffSpec {
            base_interval,
            max_interval,
        };
    }
    Ok(spec)
}

/// Whether a host predicate is Envoy's `previous_hosts`, by its config's type or its name.
fn is_previous_hosts(predicate: &RetryHostPredicate) -> bool {
    match &predicate.config_type {
        Some(ConfigType::TypedConfig(config)) => config.type_url == PREVIOUS_HOSTS.1,
        None => predicate.name == PREVIOUS_HOSTS.0,
    }
}

/// Envoy's comma-separated `retry_on` conditions as the engine's, each once, in the order
/// first given.
fn retry_on(conditions: &str) -> Result<Vec<RetryOn>, InvalidResource> {
    use RetryOn::{ConnectFailure, Reset, RetryableStatus, Timeout, Unavailable};
    let mut mapped = Vec::new();
    for condition in conditions.split(',').map(str::trim) {
        let engine: &[RetryOn] = match condition {
            "" => &[],
            "connect-failure" => &[ConnectFailure],
            "reset" | "reset-before-request" => &[Reset],
            "refused-stream" | "resource-exhausted" => &[RetryableStatus],
            "unavailable" | "internal" => &[Unavailable],
            "deadline-exceeded" => &[Timeout],
            "gateway-error" => &[ConnectFailure, Reset, Timeout, RetryableStatus],
            "5xx" => &[ConnectFailure, Reset, Unavailable, Timeout, RetryableStatus],
            other => {
                return Err(InvalidResource::new(
                    "",
                    format!("`{other}` has no meaning for an RPC in metaprotocol-rs"),
                ));
            }
        };
        for condition in engine {
            if !mapped.contains(condition) {
                mapped.push(*condition);
            }
        }
    }
    Ok(mapped)
}
