//! The resolved metric handles of the engine's own components: listeners (by method), routes,
//! clusters and endpoints.

use std::sync::OnceLock;
use std::time::Duration;

use metaprotocol_core::{LocalReplyKind, ResponseStatus};
use prometheus_client::metrics::gauge::Gauge;

use super::interned::Interned;
use super::{DurationHistogram, MetricsScope, OUTCOMES, RequestOutcome};
use crate::router::FAILURES;
use crate::stats::{Counter, UpDownCounter};

/// Why a client connection was closed for bad input; the `reason` label values (a codec
/// error's [`CodecError::counter_name`], or a frame that took too long to arrive).
const PROTOCOL_ERRORS: [&str; 5] = [
    "frame_too_large",
    "malformed",
    "unsupported",
    "encode",
    "frame_timeout",
];

/// The `method` label value of requests whose method has no value of its own.
const OTHER_METHOD: &str = "other";
/// Longer method names count as [`OTHER_METHOD`]: a label value is kept for every scrape.
const MAX_METHOD_LABEL: usize = 128;
/// The prefix of a listener's per-method series.
const DOWNSTREAM: &str = "downstream";
/// A series every method with a label value of its own has: where a listener's next context
/// finds them.
const DURATION_BY_METHOD: &str = "downstream_rq_time_seconds";

/// A finished request, as the series count it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    pub outcome: RequestOutcome,
    /// From receipt to answer.
    pub duration: Duration,
    /// The request frame's size.
    pub rx_bytes: u64,
    /// The answer's size.
    pub tx_bytes: u64,
}

/// The series of the requests one component finished: by outcome (each outcome's series made
/// the first time it happens, or taken over from the component this one replaces), their
/// duration and their bytes.
#[derive(Debug)]
struct RequestSeries {
    scope: MetricsScope,
    completed_name: String,
    completed: [OnceLock<Counter>; OUTCOMES.len()],
    duration: DurationHistogram,
    rx_bytes: Counter,
    tx_bytes: Counter,
}

impl RequestSeries {
    /// The series `<prefix>_rq_*` in `scope`.
    fn new(scope: MetricsScope, prefix: &str, what: &str) -> Self {
        let completed_name = format!("{prefix}_rq_completed");
        let completed = std::array::from_fn(|outcome| {
            let resolved = OnceLock::new();
            if let Some(counter) =
                scope.existing_counter_with(&completed_name, &[("outcome", OUTCOMES[outcome])])
            {
                let _ = resolved.set(counter);
            }
            resolved
        });
        Self {
            completed_name,
            completed,
            duration: scope.latency_histogram(
                &format!("{prefix}_rq_time_seconds"),
                &format!(
                    "Time from receipt to answer of requests, by {what}, every outcome included"
                ),
                &[],
            ),
            rx_bytes: scope.counter(
                &format!("{prefix}_rq_rx_bytes"),
                &format!("Bytes of requests received, by {what}"),
            ),
            tx_bytes: scope.counter(
                &format!("{prefix}_rq_tx_bytes"),
                &format!("Bytes of answers sent, by {what}"),
            ),
            scope,
        }
    }

    fn record(&self, done: &Completion) {
        let outcome = done.outcome;
        self.completed[outcome.index()]
            .get_or_init(|| {
                self.scope.counter_with(
                    &self.completed_name,
                    "Requests finished, by outcome (success, application_error, server_error, client_gone, or the proxy's own answer)",
                    &[("outcome", outcome.name())],
                )
            })
            .inc();
        self.duration.observe(done.duration);
        self.rx_bytes.inc_by(done.rx_bytes);
        self.tx_bytes.inc_by(done.tx_bytes);
    }
}

/// The per-method series of a listener: methods named by routes, then the first
/// `method_label_limit` others seen, each get their own `method` label value; the rest share
/// `other`. A method's series are registered the first time a request of it finishes (a route
/// config may name tens of thousands of methods, most of them rarely called); a listener's next
/// context (a reload) starts with the series the last one had registered.
#[derive(Debug)]
struct MethodSeries {
    scope: MetricsScope,
    /// Keyed by the method's bytes: a request's method is looked up without a UTF-8 check.
    table: Interned<Box<[u8]>, OnceLock<RequestSeries>>,
    other: RequestSeries,
}

impl MethodSeries {
    fn new(scope: &MetricsScope, named: &[String]) -> Self {
        let limit = scope.metrics().settings().method_label_limit;
        let methods = Self {
            table: Interned::with_capacity(named.len() + limit),
            other: Self::make(scope, OTHER_METHOD),
            scope: scope.clone(),
        };
        for method in named {
            methods.table.get_or_insert_with(method.as_bytes(), || {
                (method.as_bytes().into(), OnceLock::new())
            });
        }
        for method in scope.label_values(DURATION_BY_METHOD, "method") {
            methods.series(method.as_bytes());
        }
        methods
    }

    /// The series of `method` in `scope`.
    fn make(scope: &MetricsScope, method: &str) -> RequestSeries {
        RequestSeries::new(scope.with_label("method", method), DOWNSTREAM, "method")
    }

    fn series(&self, method: &[u8]) -> &RequestSeries {
        if method.len() > MAX_METHOD_LABEL || method == OTHER_METHOD.as_bytes() {
            return &self.other;
        }
        // Metadata is UTF-8: a method that is not cannot be a label, and counts as `other`.
        let Some(slot) = self.table.get(method).or_else(|| {
            std::str::from_utf8(method).ok()?;
            self.table
                .get_or_insert_with(method, || (method.into(), OnceLock::new()))
        }) else {
            return &self.other;
        };
        if let Some(series) = slot.get() {
            return series;
        }
        match std::str::from_utf8(method) {
            Ok(label) => slot.get_or_init(|| Self::make(&self.scope, label)),
            Err(_) => &self.other,
        }
    }
}

/// Metric handles of one listener.
#[derive(Debug)]
pub(crate) struct ListenerStats {
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub rq_total: Counter,
    pub rq_active: UpDownCounter,
    pub rq_oneway: Counter,
    pub heartbeats: Counter,
    pub cx_overflow: Counter,
    pub cx_refused: Counter,
    pub cx_accept_errors: Counter,
    pub cx_panics: Counter,
    protocol_errors: [Counter; PROTOCOL_ERRORS.len()],
    local_replies: [Counter; LocalReplyKind::ALL.len()],
    methods: MethodSeries,
}

impl ListenerStats {
    /// The listener's series in `scope`; `methods` are the methods its routes name.
    pub fn new(scope: &MetricsScope, methods: &[String]) -> Self {
        Self {
            cx_total: scope.counter("downstream_cx", "Client connections accepted"),
            cx_active: scope.gauge("downstream_cx_active", "Client connections open"),
            rq_total: scope.counter("downstream_rq", "Requests received (two-way and one-way)"),
            rq_active: scope.up_down_counter("downstream_rq_active", "Requests in flight"),
            rq_oneway: scope.counter("downstream_rq_oneway", "One-way requests received"),
            heartbeats: scope.counter("downstream_heartbeats", "Heartbeats answered locally"),
            cx_overflow: scope.counter(
                "downstream_cx_overflow",
                "Client connections closed because they did not read their answers (past the limit, or none for the stall limit), or while sending a large frame when the frames being received held max_buffered_bytes",
            ),
            cx_refused: scope.counter(
                "downstream_cx_refused",
                "Client connections closed as soon as accepted: the listener had max_connections open",
            ),
            cx_accept_errors: scope.counter(
                "downstream_cx_accept_errors",
                "Accepts that failed (out of file descriptors, say); the listener tries again every 50 ms",
            ),
            cx_panics: scope.counter(
                "downstream_cx_panics",
                "Client connections closed because their task panicked (a bug in a codec or a filter)",
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
            methods: MethodSeries::new(scope, methods),
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

    /// Counts a finished request of `method`.
    pub fn completed(&self, method: Option<&[u8]>, done: &Completion) {
        let series = match method {
            Some(method) => self.methods.series(method),
            None => &self.methods.other,
        };
        series.record(done);
    }
}

/// The series of one route, registered the first time the route matches a request: a mesh's
/// route configs may hold tens of thousands of routes, most of them idle, and a route's series
/// take several kilobytes. A route built to replace one whose series exist (an update
/// rebuilding a route that was used) takes them over at once, off the request path, so that
/// they carry on.
#[derive(Debug)]
pub(crate) struct LazyRouteStats {
    scope: MetricsScope,
    /// Boxed: inline, the series' handles would cost every idle route hundreds of bytes.
    stats: OnceLock<Box<RouteStats>>,
}

impl LazyRouteStats {
    /// The route's series in `scope`, registered now if a predecessor's exist.
    pub fn new(scope: MetricsScope) -> Self {
        let stats = OnceLock::new();
        if scope.has_series(ROUTE_REQUESTS) {
            let _ = stats.set(Box::new(RouteStats::new(&scope)));
        }
        Self { scope, stats }
    }

    /// The route's series, registered if this is their first use.
    pub fn get(&self) -> &RouteStats {
        self.stats
            .get_or_init(|| Box::new(RouteStats::new(&self.scope)))
    }

    /// Lets go of the route's series (when the route goes).
    pub fn retire(&self) {
        self.scope.retire();
    }
}

/// The series counting the requests a route matched: the one every route that was used has.
const ROUTE_REQUESTS: &str = "route_rq";

/// Metric handles of one route; its series go when the route does.
#[derive(Debug)]
pub(crate) struct RouteStats {
    pub requests: Counter,
    pub attempts: Counter,
    pub retries: Counter,
    pub retry_budget_exhausted: Counter,
    pub mirror_sent: Counter,
    pub mirror_dropped: Counter,
    pub mirror_answered: Counter,
    pub mirror_failed: Counter,
    finished: RequestSeries,
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
            requests: scope.counter(ROUTE_REQUESTS, "Requests matched, by route"),
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
            finished: RequestSeries::new(scope.clone(), "route", "route"),
        }
    }

    /// Counts a finished request that matched the route.
    pub fn completed(&self, done: &Completion) {
        self.finished.record(done);
    }
}

/// Metric handles of one cluster. The two levels every request moves, attempts in flight and
/// requests queued, are kept in per-thread cells ([`UpDownCounter`]): a request writes its own
/// thread's cells, and only a scrape, a retry budget, or a circuit breaker an update just set
/// (while what it admitted before is in flight) sums them. The circuit breakers that limit them
/// count places of their own, exact, only while a limit is set
/// ([`crate::cluster::CircuitBreakers::admit`]); `max_retries` compares with `rq_retries_active`.
#[derive(Clone, Debug)]
pub(crate) struct ClusterStats {
    pub rq_total: Counter,
    pub rq_active: UpDownCounter,
    pub rq_pending: UpDownCounter,
    pub rq_retries_active: Gauge,
    pub rq_mirror_active: Gauge,
    responses: [Counter; 3],
    pub rq_retry: Counter,
    pub rq_retry_overflow: Counter,
    pub rq_retry_budget_exhausted: Counter,
    pub rq_retry_limit_exceeded: Counter,
    pub rq_timeout: Counter,
    pub rq_time: DurationHistogram,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub cx_connect_fail: Counter,
    pub cx_protocol_errors: Counter,
    pub cx_panics: Counter,
    pub cx_write_stalled: Counter,
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
            rq_active: scope.up_down_counter("upstream_rq_active", "Attempts in flight"),
            rq_pending: scope.up_down_counter(
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
            rq_retry_overflow: scope.counter(
                "upstream_rq_retry_overflow",
                "Retries the route's policy asked for that the cluster refused (max_retries or the retry budget), not made",
            ),
            rq_retry_budget_exhausted: scope.counter(
                "upstream_rq_retry_budget_exhausted",
                "Retries refused by the cluster's retry budget (counted in upstream_rq_retry_overflow too)",
            ),
            rq_retry_limit_exceeded: scope.counter(
                "upstream_rq_retry_limit_exceeded",
                "Failures the route's policy would retry, not retried because the request had spent its num_retries",
            ),
            rq_timeout: scope.counter("upstream_rq_timeout", "Attempts that timed out"),
            rq_time: scope.latency_histogram(
                "upstream_rq_time_seconds",
                "Time of attempts sent upstream, until their answer, failure or timeout",
                &[],
            ),
            cx_total: scope.counter("upstream_cx", "Upstream connections opened"),
            cx_active: scope.gauge("upstream_cx_active", "Upstream connections open"),
            cx_connect_fail: scope.counter("upstream_cx_connect_fail", "Upstream connection failures"),
            cx_panics: scope.counter(
                "upstream_cx_panics",
                "Upstream connections closed because their task panicked (a bug in a codec)",
            ),
            cx_protocol_errors: scope.counter(
                "upstream_cx_protocol_errors",
                "Upstream connections closed for malformed input",
            ),
            cx_write_stalled: scope.counter(
                "upstream_cx_write_stalled",
                "Upstream connections closed because their server took too little of the calls written to it",
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

/// Metric handles of one endpoint, labelled with its cluster and address (the default counts
/// nowhere: an endpoint outside a cluster).
#[derive(Clone, Debug, Default)]
pub(crate) struct EndpointStats {
    pub rq_total: Counter,
    pub rq_active: Gauge,
    pub rq_time: DurationHistogram,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub cx_connect_fail: Counter,
}

impl EndpointStats {
    pub fn new(scope: &MetricsScope) -> Self {
        Self {
            rq_total: scope.counter("endpoint_rq", "Requests sent to the endpoint (attempts)"),
            rq_active: scope.gauge("endpoint_rq_active", "Attempts in flight to the endpoint"),
            rq_time: scope.latency_histogram(
                "endpoint_rq_time_seconds",
                "Time of attempts sent to the endpoint, until their answer, failure or timeout",
                &[],
            ),
            cx_total: scope.counter("endpoint_cx", "Connections opened to the endpoint"),
            cx_active: scope.gauge("endpoint_cx_active", "Connections open to the endpoint"),
            cx_connect_fail: scope.counter(
                "endpoint_cx_connect_fail",
                "Failed connection attempts to the endpoint",
            ),
        }
    }
}

/// The health series of one endpoint: one gauge per state (1 for the current one), and the
/// ejections by outlier detection.
#[derive(Debug)]
pub(crate) struct HealthStats {
    states: Vec<(&'static str, Gauge)>,
    pub ejections: Counter,
}

impl HealthStats {
    /// The series of an endpoint in `scope` whose health may be any of `states` (names).
    pub fn new(scope: &MetricsScope, states: &[&'static str]) -> Self {
        Self {
            states: states
                .iter()
                .map(|state| {
                    let gauge = scope.gauge_with(
                        "endpoint_health",
                        "1 for the endpoint's health state (healthy, ejected, failing_active_checks, draining)",
                        &[("state", state)],
                    );
                    (*state, gauge)
                })
                .collect(),
            ejections: scope.counter(
                "endpoint_ejections",
                "Times outlier detection ejected the endpoint",
            ),
        }
    }

    /// Shows `current` as the endpoint's state.
    pub fn show(&self, current: &str) {
        for (state, gauge) in &self.states {
            gauge.set(i64::from(*state == current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Metrics, MetricsSettings, SeriesValue};

    fn completion(outcome: RequestOutcome) -> Completion {
        Completion {
            outcome,
            duration: Duration::from_millis(3),
            rx_bytes: 10,
            tx_bytes: 20,
        }
    }

    #[test]
    fn methods_named_by_routes_and_the_first_others_get_their_own_label() {
        let metrics = Metrics::with_settings(MetricsSettings {
            method_label_limit: 1,
            ..MetricsSettings::default()
        });
        let scope = metrics.root().detached("listener", "in");
        let stats = ListenerStats::new(&scope, &["named".to_owned()]);
        for method in ["named", "first", "second", "third", "named"] {
            stats.completed(
                Some(method.as_bytes()),
                &completion(RequestOutcome::SUCCESS),
            );
        }
        stats.completed(
            None,
            &completion(RequestOutcome::local(LocalReplyKind::Timeout)),
        );
        let family = metrics.family("metaprotocol_downstream_rq_completed");
        let count = |method: &str, outcome: &str| {
            family.as_ref().and_then(|f| {
                f.find(&[("method", method), ("outcome", outcome)])
                    .next()
                    .cloned()
            })
        };
        assert_eq!(count("named", "success"), Some(SeriesValue::Counter(2)));
        assert_eq!(count("first", "success"), Some(SeriesValue::Counter(1)));
        assert_eq!(count("other", "success"), Some(SeriesValue::Counter(2)));
        assert_eq!(count("other", "timeout"), Some(SeriesValue::Counter(1)));
        assert_eq!(count("second", "success"), None);
        assert_eq!(
            count("named", "timeout"),
            None,
            "outcomes appear when they happen"
        );
        let bytes = metrics.family("metaprotocol_downstream_rq_tx_bytes");
        let sent = bytes
            .as_ref()
            .and_then(|f| f.find(&[("method", "named")]).next().cloned());
        assert_eq!(sent, Some(SeriesValue::Counter(40)));
        scope.retire();
        assert!(
            metrics
                .family("metaprotocol_downstream_rq_completed")
                .is_none()
        );
    }

    #[test]
    fn a_named_methods_series_appear_at_its_first_request() {
        let metrics = Metrics::with_settings(MetricsSettings {
            method_label_limit: 0,
            ..MetricsSettings::default()
        });
        let scope = metrics.root().detached("listener", "in");
        let named: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        let stats = ListenerStats::new(&scope, &named);
        // The methods with a latency series.
        let methods = || -> Vec<String> {
            let family = metrics.family(&format!("metaprotocol_{DURATION_BY_METHOD}"));
            let methods = family.iter().flat_map(|f| f.by_label("method"));
            methods.map(|(method, _)| method.to_owned()).collect()
        };
        assert_eq!(
            methods(),
            ["other"],
            "no named method's series before its request"
        );
        for method in ["m7", "unnamed", "m7"] {
            stats.completed(
                Some(method.as_bytes()),
                &completion(RequestOutcome::SUCCESS),
            );
        }
        // Named by a route, `m7` has a label of its own even with no room for others.
        assert_eq!(methods(), ["m7", "other"]);
    }

    #[test]
    fn a_listener_rebuilt_keeps_the_methods_and_outcomes_it_counted() {
        let metrics = Metrics::new();
        let scope = metrics.root().detached("listener", "in");
        let stats = ListenerStats::new(&scope, &["named".to_owned()]);
        for method in ["named", "seen"] {
            stats.completed(
                Some(method.as_bytes()),
                &completion(RequestOutcome::local(LocalReplyKind::Timeout)),
            );
        }
        // A reload builds the listener's next context (its series in a scope of its own) before
        // the last connection of the old one closes.
        let next_scope = metrics.root().detached("listener", "in");
        let next = ListenerStats::new(&next_scope, &["named".to_owned()]);
        drop(stats);
        scope.retire();
        let timeouts = |method: &str| {
            metrics
                .family("metaprotocol_downstream_rq_completed")
                .and_then(|f| {
                    f.find(&[("method", method), ("outcome", "timeout")])
                        .next()
                        .cloned()
                })
        };
        for method in ["named", "seen"] {
            assert_eq!(timeouts(method), Some(SeriesValue::Counter(1)), "{method}");
        }
        next.completed(
            Some(b"seen"),
            &completion(RequestOutcome::local(LocalReplyKind::Timeout)),
        );
        assert_eq!(timeouts("seen"), Some(SeriesValue::Counter(2)));
        next_scope.retire();
        assert_eq!(timeouts("seen"), None);
    }

    #[test]
    fn health_shows_one_state_and_counts_ejections() {
        let metrics = Metrics::new();
        let health = HealthStats::new(&metrics.root(), &["healthy", "ejected"]);
        health.show("ejected");
        health.ejections.inc();
        let family = metrics.family("metaprotocol_endpoint_health");
        let state = |s: &str| {
            family
                .as_ref()
                .and_then(|f| f.find(&[("state", s)]).next().cloned())
        };
        assert_eq!(state("ejected"), Some(SeriesValue::Gauge(1)));
        assert_eq!(state("healthy"), Some(SeriesValue::Gauge(0)));
    }
}
