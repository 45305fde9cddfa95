//! The resolved metric handles of the engine's own components: listeners, routes, clusters.

use metaprotocol_core::{LocalReplyKind, ResponseStatus};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::{DurationHistogram, LATENCY_BUCKETS, MetricsScope};
use crate::router::FAILURES;

/// Why a client connection was closed for bad input; the `reason` label values (a codec
/// error's [`CodecError::counter_name`], or a frame that took too long to arrive).
const PROTOCOL_ERRORS: [&str; 5] = [
    "frame_too_large",
    "malformed",
    "unsupported",
    "encode",
    "frame_timeout",
];

/// Metric handles of one listener.
#[derive(Clone, Debug)]
pub(crate) struct ListenerStats {
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub rq_total: Counter,
    pub rq_active: Gauge,
    pub rq_oneway: Counter,
    pub heartbeats: Counter,
    pub cx_overflow: Counter,
    pub cx_refused: Counter,
    protocol_errors: [Counter; PROTOCOL_ERRORS.len()],
    local_replies: [Counter; LocalReplyKind::ALL.len()],
}

impl ListenerStats {
    pub fn new(scope: &MetricsScope) -> Self {
        Self {
            cx_total: scope.counter("downstream_cx", "Client connections accepted"),
            cx_active: scope.gauge("downstream_cx_active", "Client connections open"),
            rq_total: scope.counter("downstream_rq", "Requests received (two-way and one-way)"),
            rq_active: scope.gauge("downstream_rq_active", "Requests in flight"),
            rq_oneway: scope.counter("downstream_rq_oneway", "One-way requests received"),
            heartbeats: scope.counter("downstream_heartbeats", "Heartbeats answered locally"),
            cx_overflow: scope.counter(
                "downstream_cx_overflow",
                "Client connections closed because the answers they did not read passed the limit",
            ),
            cx_refused: scope.counter(
                "downstream_cx_refused",
                "Client connections closed as soon as accepted: the listener had max_connections open",
            ),
            protocol_errors: PROTOCOL_ERRORS.map(|reason| {
                scope.counter_with(
                    "downstream_protocol_errors",
                    "Client connections closed for malformed input, by reason",
                    &[("reason", reason)],
                )
            }),
            local_replies: LocalReplyKind::ALL.map(|kind| {
                scope.counter_with(
                    "local_replies",
                    "Requests answered by the proxy itself, by reason",
                    &[("reason", kind.name())],
                )
            }),
        }
    }

    /// The counter of connections closed for `reason` (one of the reasons above; an unknown
    /// one counts as `malformed`).
    pub fn protocol_error(&self, reason: &str) -> &Counter {
        let index = PROTOCOL_ERRORS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(1);
        &self.protocol_errors[index]
    }

    /// The counter of local replies of `kind`.
    pub fn local_reply(&self, kind: LocalReplyKind) -> &Counter {
        let index = LocalReplyKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(LocalReplyKind::ALL.len() - 1);
        &self.local_replies[index]
    }
}

/// Metric handles of one route (unregistered until the route's table is published).
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteStats {
    pub requests: Counter,
    pub attempts: Counter,
    pub retries: Counter,
    pub retry_budget_exhausted: Counter,
    pub mirror_sent: Counter,
    pub mirror_dropped: Counter,
    pub mirror_answered: Counter,
    pub mirror_failed: Counter,
}

impl RouteStats {
    pub fn new(scope: &MetricsScope) -> Self {
        let mirror = |outcome: &str| {
            scope.counter_with(
                "route_mirror_rq",
                "Mirrored copies by outcome: sent, dropped (over the mirror's in-flight budget or no endpoint), answered, failed (no answer); answers are discarded",
                &[("outcome", outcome)],
            )
        };
        Self {
            requests: scope.counter("route_rq", "Requests matched, by route"),
            attempts: scope.counter("route_upstream_rq_attempts", "Upstream attempts, by route"),
            retries: scope.counter("route_upstream_rq_retries", "Retried attempts, by route"),
            retry_budget_exhausted: scope.counter(
                "route_upstream_rq_retry_budget_exhausted",
                "Retries refused by the cluster's retry budget, by route",
            ),
            mirror_sent: mirror("sent"),
            mirror_dropped: mirror("dropped"),
            mirror_answered: mirror("answered"),
            mirror_failed: mirror("failed"),
        }
    }
}

/// Metric handles of one cluster. The gauges double as the cluster's live resource counts
/// (what circuit breakers compare with their limits).
#[derive(Clone, Debug)]
pub(crate) struct ClusterStats {
    pub rq_total: Counter,
    pub rq_active: Gauge,
    pub rq_pending: Gauge,
    pub rq_retries_active: Gauge,
    pub rq_mirror_active: Gauge,
    responses: [Counter; 3],
    pub rq_retry: Counter,
    pub rq_timeout: Counter,
    pub rq_time: DurationHistogram,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub cx_connect_fail: Counter,
    pub cx_protocol_errors: Counter,
    pub unmatched_responses: Counter,
    pub rq_dropped: Counter,
    failures: [Counter; FAILURES.len()],
}

impl ClusterStats {
    pub fn new(scope: &MetricsScope) -> Self {
        let outcome = |o: &str| {
            scope.counter_with(
                "upstream_rq_responses",
                "Upstream responses by outcome (ok, application_error, server_error)",
                &[("outcome", o)],
            )
        };
        Self {
            rq_total: scope.counter("upstream_rq", "Requests sent upstream (attempts)"),
            rq_active: scope.gauge("upstream_rq_active", "Attempts in flight"),
            rq_pending: scope.gauge(
                "upstream_rq_pending",
                "Requests queued on upstream connections, not yet written",
            ),
            rq_retries_active: scope.gauge(
                "upstream_rq_retries_active",
                "Retries in flight (from the decision to retry until that attempt ends)",
            ),
            rq_mirror_active: scope.gauge(
                "upstream_rq_mirror_active",
                "Mirrored copies in flight to this cluster",
            ),
            responses: [
                outcome("ok"),
                outcome("application_error"),
                outcome("server_error"),
            ],
            rq_retry: scope.counter("upstream_rq_retry", "Retried attempts"),
            rq_timeout: scope.counter("upstream_rq_timeout", "Attempts that timed out"),
            rq_time: scope.histogram(
                "upstream_rq_time_seconds",
                "Upstream round-trip time of answered attempts",
                &LATENCY_BUCKETS,
            ),
            cx_total: scope.counter("upstream_cx", "Upstream connections opened"),
            cx_active: scope.gauge("upstream_cx_active", "Upstream connections open"),
            cx_connect_fail: scope.counter("upstream_cx_connect_fail", "Upstream connection failures"),
            cx_protocol_errors: scope.counter(
                "upstream_cx_protocol_errors",
                "Upstream connections closed for malformed input",
            ),
            unmatched_responses: scope.counter(
                "upstream_unmatched_responses",
                "Upstream responses whose id matched no request in flight (dropped)",
            ),
            failures: FAILURES.map(|(origin, reason)| {
                scope.counter_with(
                    "upstream_rq_failures",
                    "Failed attempts by origin (local: the proxy's side; upstream) and reason",
                    &[("origin", origin.name()), ("reason", reason)],
                )
            }),
            rq_dropped: scope.counter(
                "upstream_rq_dropped",
                "Requests dropped before they could be written upstream (deadline passed, queue full)",
            ),
        }
    }

    /// The counter of failed attempts of kind `index` (into [`FAILURES`]).
    pub fn failure(&self, index: usize) -> &Counter {
        &self.failures[index.min(FAILURES.len() - 1)]
    }

    /// The response counter of `status`.
    pub fn response(&self, status: ResponseStatus) -> &Counter {
        match status {
            ResponseStatus::Ok => &self.responses[0],
            ResponseStatus::ApplicationError => &self.responses[1],
            ResponseStatus::ServerError => &self.responses[2],
        }
    }
}
