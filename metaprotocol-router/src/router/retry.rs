//! Retry policy: which attempt outcomes are tried again, how often, how long to wait, and the
//! cluster's retry budget that stops a retry storm.
//!
//! A request that may have been processed (its bytes reached the upstream, or the upstream
//! answered that it failed while running it) is retried only when the route marks it
//! idempotent; one that certainly was not (a connect failure, a connection that failed before
//! writing it, an answer the codec declares "not processed") always may be.

use std::time::Duration;

use metaprotocol_core::{ConnectionInfo, ResponseStatus, RoutingView, keys};
use prometheus_client::metrics::gauge::Gauge;

use super::outcome::AttemptOutcome;
use crate::cluster::{CircuitBreakers, RetryRefusal};
use crate::config::{ConfigError, RetryBackOffSpec, RetryBudgetSpec, RetryOn, RetryPolicySpec};
use crate::route::RequestMatcher;
use crate::stats::ClusterStats;

/// A compiled retry policy.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub num_retries: u32,
    on_connect_failure: bool,
    on_reset: bool,
    on_unavailable: bool,
    on_timeout: bool,
    on_retryable_status: bool,
    /// The deadline of each attempt (the route timeout still bounds the whole request).
    pub per_try_timeout: Option<Duration>,
    idempotent_methods: Vec<Box<str>>,
    /// Requests it matches are idempotent; `None` (or a match without conditions) marks none.
    idempotent_match: Option<RequestMatcher>,
    back_off: RetryBackOffSpec,
}

impl RetryPolicy {
    pub fn new(spec: &RetryPolicySpec) -> Result<Self, ConfigError> {
        let on = |r: RetryOn| spec.retry_on.contains(&r);
        let idempotent_match = spec
            .idempotent_match
            .as_ref()
            .filter(|m| !m.is_empty())
            .map(|m| RequestMatcher::new(m).map_err(|e| e.within("idempotent_match")))
            .transpose()?;
        Ok(Self {
            num_retries: spec.num_retries,
            on_connect_failure: on(RetryOn::ConnectFailure),
            on_reset: on(RetryOn::Reset),
            on_unavailable: on(RetryOn::Unavailable),
            on_timeout: on(RetryOn::Timeout),
            on_retryable_status: on(RetryOn::RetryableStatus),
            per_try_timeout: spec.per_try_timeout,
            idempotent_methods: spec
                .idempotent_methods
                .iter()
                .map(|m| m.as_str().into())
                .collect(),
            idempotent_match,
            back_off: spec.retry_back_off,
        })
    }

    /// True if the route says the request (seen through `request`, arrived on `connection`)
    /// may safely run twice.
    pub fn is_idempotent(&self, request: &RoutingView<'_>, connection: &ConnectionInfo) -> bool {
        let method = request.get(keys::METHOD);
        let by_method = method.is_some_and(|m| {
            self.idempotent_methods
                .iter()
                .any(|name| name.as_bytes() == m.as_bytes())
        });
        by_method
            || self
                .idempotent_match
                .as_ref()
                .is_some_and(|m| m.matches(request, connection))
    }

    /// True if the policy retries an attempt that ended with `outcome`, for a request that is
    /// `idempotent` or not.
    pub fn retries(&self, outcome: &AttemptOutcome, idempotent: bool) -> bool {
        // A request that never reached the upstream cannot run twice.
        if outcome.never_sent() && (self.on_connect_failure || self.on_reset) {
            return true;
        }
        match outcome {
            AttemptOutcome::NotProcessed => self.on_retryable_status || self.on_unavailable,
            AttemptOutcome::Answered(status) => {
                self.on_unavailable && idempotent && *status == ResponseStatus::ServerError
            }
            AttemptOutcome::ConnectFailure => self.on_connect_failure,
            AttemptOutcome::Reset { sent } => self.on_reset && (!sent || idempotent),
            AttemptOutcome::Timeout => self.on_timeout && idempotent,
            // The upstream ran the call; its answer would be as large again.
            AttemptOutcome::Overflow
            | AttemptOutcome::EncodeFailure
            | AttemptOutcome::ResponseTooLarge => false,
        }
    }

    /// The pause before retry number `retry` (1 for the first): a ceiling doubling from the
    /// base interval up to the maximum, and a pause drawn between half of it and all of it.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .back_off
            .base_interval
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.back_off.max_interval);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(ceiling_us / 2..=ceiling_us))
    }
}

/// A retry granted by a cluster's budget: it counts in the cluster's retries in flight from the
/// moment it is granted (its pause included) until its attempt ends and this is dropped.
#[derive(Debug)]
pub(crate) struct RetryGrant {
    retries_active: Gauge,
}

impl RetryGrant {
    /// A retry if the cluster of `stats` has room for one more under its `max_retries`
    /// (`breakers`) and its retry `budget`: retries in flight at most `budget_percent` of the
    /// requests in flight, or `min_retry_concurrency`, whichever is more. Else which refused.
    pub fn ask(
        budget: &RetryBudgetSpec,
        breakers: &CircuitBreakers,
        stats: &ClusterStats,
    ) -> Result<Self, RetryRefusal> {
        let active = stats.rq_active.get().max(0) as f64;
        let allowed = (active * budget.budget_percent / 100.0)
            .max(f64::from(budget.min_retry_concurrency)) as i64;
        breakers.take_retry(&stats.rq_retries_active, allowed)?;
        Ok(Self {
            retries_active: stats.rq_retries_active.clone(),
        })
    }
}

impl Drop for RetryGrant {
    fn drop(&mut self) {
        self.retries_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use metaprotocol_core::{ByteStr, Metadata, RoutingKeys};

    use super::*;
    use crate::config::{CircuitBreakersSpec, MatchSpec, MetadataMatcherSpec};
    use crate::stats::Metrics;

    fn policy(spec: RetryPolicySpec) -> Result<RetryPolicy, ConfigError> {
        RetryPolicy::new(&spec)
    }

    fn spec(retry_on: Vec<RetryOn>) -> RetryPolicySpec {
        RetryPolicySpec {
            num_retries: 2,
            retry_on,
            per_try_timeout: None,
            idempotent_methods: vec!["get".into()],
            idempotent_match: Some(MatchSpec {
                metadata: vec![MetadataMatcherSpec {
                    key: "x-idempotent".into(),
                    exact: Some("true".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            retry_back_off: RetryBackOffSpec::default(),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() -> Result<(), ConfigError> {
        let mut spec = spec(vec![]);
        spec.retry_back_off = RetryBackOffSpec {
            base_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(40),
        };
        let policy = policy(spec)?;
        for retry in 1..40 {
            let pause = policy.backoff(retry);
            assert!(pause <= Duration::from_millis(40), "{retry}: {pause:?}");
            assert!(pause >= Duration::from_millis(5), "{retry}: {pause:?}");
        }
        assert!(policy.backoff(1) <= Duration::from_millis(10));
        assert!(policy.backoff(5) >= Duration::from_millis(20));
        Ok(())
    }

    #[test]
    fn only_requests_that_cannot_run_twice_or_are_idempotent_are_retried() -> Result<(), ConfigError>
    {
        let all = policy(spec(vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::Unavailable,
            RetryOn::Timeout,
            RetryOn::RetryableStatus,
        ]))?;
        let server_error = AttemptOutcome::Answered(ResponseStatus::ServerError);
        for (outcome, when_not_idempotent) in [
            (AttemptOutcome::ConnectFailure, true),
            (AttemptOutcome::Reset { sent: false }, true),
            (AttemptOutcome::NotProcessed, true),
            (AttemptOutcome::Reset { sent: true }, false),
            (AttemptOutcome::Timeout, false),
            (server_error.clone(), false),
        ] {
            assert_eq!(
                all.retries(&outcome, false),
                when_not_idempotent,
                "{outcome:?}"
            );
            assert!(all.retries(&outcome, true), "{outcome:?}");
        }
        assert!(!all.retries(&AttemptOutcome::Answered(ResponseStatus::Ok), true));
        assert!(!all.retries(&AttemptOutcome::EncodeFailure, true));
        let refusals_only = policy(spec(vec![RetryOn::RetryableStatus]))?;
        assert!(refusals_only.retries(&AttemptOutcome::NotProcessed, false));
        assert!(!refusals_only.retries(&server_error, true));
        Ok(())
    }

    #[test]
    fn idempotent_by_method_or_by_match() -> Result<(), ConfigError> {
        let policy = policy(spec(vec![]))?;
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let connection = ConnectionInfo::new("in".into(), address, address);
        let view = |pairs: &[(&'static str, &'static str)]| {
            let metadata: Metadata = pairs
                .iter()
                .map(|(k, v)| (ByteStr::from_static(k), ByteStr::from_static(v)))
                .collect();
            let keys = RoutingKeys::new();
            let view = RoutingView {
                metadata: &metadata,
                keys: &keys,
            };
            policy.is_idempotent(&view, &connection)
        };
        assert!(view(&[("method", "get")]));
        assert!(!view(&[("method", "put")]));
        assert!(view(&[("method", "put"), ("x-idempotent", "true")]));
        assert!(!view(&[]));
        Ok(())
    }

    /// Whether `policy` marks a request without metadata from `ip` idempotent.
    fn idempotent_from(policy: &RetryPolicy, ip: [u8; 4]) -> bool {
        let address = std::net::SocketAddr::from((ip, 1));
        let metadata = Metadata::default();
        let keys = RoutingKeys::new();
        let view = RoutingView {
            metadata: &metadata,
            keys: &keys,
        };
        policy.is_idempotent(&view, &ConnectionInfo::new("in".into(), address, address))
    }

    #[test]
    fn idempotent_match_tests_who_sent_the_request_too() -> Result<(), ConfigError> {
        let mut spec = spec(vec![]);
        spec.idempotent_match = Some(MatchSpec {
            source_ips: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        let by_source = policy(spec.clone())?;
        assert!(idempotent_from(&by_source, [10, 1, 2, 3]));
        assert!(!idempotent_from(&by_source, [127, 0, 0, 1]));
        spec.idempotent_match = Some(MatchSpec::default());
        let without_conditions = policy(spec)?;
        assert!(
            !idempotent_from(&without_conditions, [10, 1, 2, 3]),
            "a match without conditions marks no request idempotent"
        );
        Ok(())
    }

    /// A cluster's stats and breakers, allowing `max_retries` (and 100 of everything else).
    fn cluster(max_retries: u32) -> (ClusterStats, CircuitBreakers) {
        let scope = Metrics::new().root().detached("cluster", "c");
        let spec = CircuitBreakersSpec {
            max_connections: 100,
            max_pending_requests: 100,
            max_requests: 100,
            max_retries,
        };
        (
            ClusterStats::new(&scope),
            CircuitBreakers::new(&scope, Some(&spec)),
        )
    }

    #[test]
    fn the_budget_allows_a_share_of_active_requests_and_a_minimum() {
        let (stats, breakers) = cluster(100);
        let budget = RetryBudgetSpec {
            budget_percent: 20.0,
            min_retry_concurrency: 2,
        };
        let quiet: Vec<RetryGrant> = (0..5)
            .filter_map(|_| RetryGrant::ask(&budget, &breakers, &stats).ok())
            .collect();
        assert_eq!(quiet.len(), 2, "the minimum when nothing is active");
        for _ in 0..50 {
            stats.rq_active.inc();
        }
        let busy: Vec<RetryGrant> = (0..20)
            .filter_map(|_| RetryGrant::ask(&budget, &breakers, &stats).ok())
            .collect();
        assert_eq!(quiet.len() + busy.len(), 10, "20% of 50 in flight");
        drop(busy);
        drop(quiet);
        assert_eq!(
            stats.rq_retries_active.get(),
            0,
            "grants give their slot back"
        );
    }

    #[test]
    fn retries_decided_at_once_never_pass_max_retries() {
        const MAX_RETRIES: i64 = 2;
        let (stats, breakers) = cluster(MAX_RETRIES as u32);
        // The budget leaves `max_retries` alone to bound them.
        let budget = RetryBudgetSpec {
            budget_percent: 100.0,
            min_retry_concurrency: 1_000,
        };
        // The retries in flight as the cluster counts them, at most, seen by the holder of each
        // grant; and the grants made.
        let (most, granted) = (AtomicI64::new(0), AtomicI64::new(0));
        let until = std::time::Instant::now() + Duration::from_secs(2);
        std::thread::scope(|threads| {
            for _ in 0..8 {
                threads.spawn(|| {
                    while std::time::Instant::now() < until {
                        for _ in 0..1_000 {
                            let Ok(grant) = RetryGrant::ask(&budget, &breakers, &stats) else {
                                continue;
                            };
                            most.fetch_max(stats.rq_retries_active.get(), Ordering::Relaxed);
                            granted.fetch_add(1, Ordering::Relaxed);
                            drop(grant);
                        }
                    }
                });
            }
        });
        let most = most.load(Ordering::Relaxed);
        assert!(most <= MAX_RETRIES, "{most} retries in flight at once");
        assert!(granted.load(Ordering::Relaxed) > 0);
        assert_eq!(stats.rq_retries_active.get(), 0, "every grant gave back");
    }
}
