//! Circuit breakers: limits on what a cluster may have in flight, compared with its live gauges
//! ([`ClusterStats`]). A request past a limit is not queued: it is answered at once with the
//! protocol's over-limit error (a retry past `max_retries` is not made, and the request gets
//! the failure it had). Each breaker counts its overflows and shows whether it is open (its
//! last check refused) in the cluster's metrics and in `/clusters`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::config::CircuitBreakersSpec;
use crate::stats::Counter;
use crate::stats::{ClusterStats, MetricsScope};

/// One limit of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Breaker {
    /// Upstream connections open across the cluster's endpoints.
    Connections,
    /// Requests queued on upstream connections, not yet written.
    PendingRequests,
    /// Requests (attempts) in flight.
    Requests,
    /// Retries in flight.
    Retries,
}

impl Breaker {
    const ALL: [Breaker; 4] = [
        Self::Connections,
        Self::PendingRequests,
        Self::Requests,
        Self::Retries,
    ];

    /// Its config field, and its `breaker` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connections => "max_connections",
            Self::PendingRequests => "max_pending_requests",
            Self::Requests => "max_requests",
            Self::Retries => "max_retries",
        }
    }
}

/// Why [`CircuitBreakers::take_retry`] refused a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryRefusal {
    /// The cluster's `max_retries` retries are in flight (counted as the breaker's overflow).
    MaxRetries,
    /// The cluster's retry budget is spent.
    Budget,
}

/// A cluster's breakers. Limits change with the cluster's config; the cluster's pools and the
/// router share one instance.
#[derive(Debug)]
pub(crate) struct CircuitBreakers {
    /// Per breaker; `i64::MAX` when the cluster sets none.
    limits: [AtomicI64; 4],
    open: [Gauge; 4],
    overflows: [Counter; 4],
    /// Connections of the cluster's pools, opening or open.
    connections: Arc<AtomicI64>,
}

/// One connection counted against `max_connections`, from before it opens until it is gone.
#[derive(Debug)]
pub(crate) struct ConnectionPermit(Arc<AtomicI64>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl CircuitBreakers {
    /// Breakers with `spec`'s limits, their series in `scope`.
    pub fn new(scope: &MetricsScope, spec: Option<&CircuitBreakersSpec>) -> Self {
        let breakers = Self {
            limits: Breaker::ALL.map(|_| AtomicI64::new(i64::MAX)),
            open: Breaker::ALL.map(|b| {
                scope.gauge_with(
                    "upstream_circuit_breaker_open",
                    "1 while a circuit breaker refuses requests (its last check was over the limit)",
                    &[("breaker", b.name())],
                )
            }),
            overflows: Breaker::ALL.map(|b| {
                scope.counter_with(
                    "upstream_overflow",
                    "Requests and retries refused by a circuit breaker, and connections not opened",
                    &[("breaker", b.name())],
                )
            }),
            connections: Arc::default(),
        };
        breakers.set_limits(spec);
        breakers
    }

    /// Applies a cluster update's limits (none: no limits). A breaker without a limit is never
    /// checked again, so one the update removes while it was open is shown closed here.
    pub fn set_limits(&self, spec: Option<&CircuitBreakersSpec>) {
        let limits = match spec {
            Some(spec) => [
                spec.max_connections,
                spec.max_pending_requests,
                spec.max_requests,
                spec.max_retries,
            ]
            .map(i64::from),
            None => [i64::MAX; 4],
        };
        for ((slot, limit), open) in self.limits.iter().zip(limits).zip(&self.open) {
            slot.store(limit, Ordering::Relaxed);
            if limit == i64::MAX {
                open.set(0);
            }
        }
    }

    /// True if one more of what `breaker` limits fits under its limit; otherwise counts an
    /// overflow. Either way the breaker's open gauge follows.
    pub fn admits(&self, breaker: Breaker, stats: &ClusterStats) -> bool {
        let limit = self.limits[breaker as usize].load(Ordering::Relaxed);
        limit == i64::MAX || self.judge(breaker, self.current(breaker, stats) < limit)
    }

    /// A retry's place under `max_retries` and under `budget` (the retries the cluster's retry
    /// budget allows in flight now), taken in one step: `retries_active` goes up only while
    /// both have room. Checked first and counted after, two retries decided at once on two
    /// workers could both pass the check at one below the limit and both count, one past it. A
    /// refusal by `max_retries` is counted as its overflow, and the breaker's open gauge follows.
    pub fn take_retry(&self, retries_active: &Gauge, budget: i64) -> Result<(), RetryRefusal> {
        let limit = self.limits[Breaker::Retries as usize].load(Ordering::Relaxed);
        let bound = limit.min(budget);
        let taken =
            retries_active
                .inner()
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |held| {
                    (held < bound).then_some(held + 1)
                });
        let refusal = match taken {
            Ok(_) => None,
            Err(held) if held >= limit => Some(RetryRefusal::MaxRetries),
            Err(_) => Some(RetryRefusal::Budget),
        };
        if limit != i64::MAX {
            self.judge(Breaker::Retries, refusal != Some(RetryRefusal::MaxRetries));
        }
        refusal.map_or(Ok(()), Err)
    }

    /// A connection's place under `max_connections`, reserved; `None` (an overflow, counted)
    /// when the cluster has as many as it may.
    pub fn reserve_connection(&self) -> Option<ConnectionPermit> {
        let limit = self.limits[Breaker::Connections as usize].load(Ordering::Relaxed);
        let before = self.connections.fetch_add(1, Ordering::Relaxed);
        let permit = ConnectionPermit(self.connections.clone());
        if limit == i64::MAX || self.judge(Breaker::Connections, before < limit) {
            Some(permit)
        } else {
            None
        }
    }

    /// Counts a refusal and keeps the open gauge in step; returns `fits`.
    fn judge(&self, breaker: Breaker, fits: bool) -> bool {
        let i = breaker as usize;
        if !fits {
            self.overflows[i].inc();
        }
        // Written only when it changes: the gauge is shared by every connection's task.
        if (self.open[i].get() != 0) == fits {
            self.open[i].set(i64::from(!fits));
        }
        fits
    }

    /// What `breaker` limits, now.
    fn current(&self, breaker: Breaker, stats: &ClusterStats) -> i64 {
        match breaker {
            Breaker::Connections => self.connections.load(Ordering::Relaxed),
            Breaker::PendingRequests => stats.rq_pending.get(),
            Breaker::Requests => stats.rq_active.get(),
            Breaker::Retries => stats.rq_retries_active.get(),
        }
    }

    /// What `/clusters` shows: each configured breaker's limit, current count, state and
    /// overflows.
    pub fn status(&self, stats: &ClusterStats) -> Vec<BreakerStatus> {
        Breaker::ALL
            .iter()
            .filter_map(|&b| {
                let i = b as usize;
                let limit = self.limits[i].load(Ordering::Relaxed);
                (limit != i64::MAX).then(|| BreakerStatus {
                    breaker: b.name(),
                    limit,
                    current: self.current(b, stats),
                    open: self.open[i].get() != 0,
                    overflows: self.overflows[i].get(),
                })
            })
            .collect()
    }
}

/// One breaker as `/clusters` shows it.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct BreakerStatus {
    /// Which (`max_requests` ...).
    pub breaker: &'static str,
    /// Its limit.
    pub limit: i64,
    /// What it limits, now.
    pub current: i64,
    /// True while it refuses (its last check was over the limit).
    pub open: bool,
    /// Refusals so far.
    pub overflows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Metrics;

    /// Breakers of cluster `c` allowing `max_requests` and `max_retries` (and 10 connections
    /// and pending requests), with its metrics and live counts.
    fn breakers(max_requests: u32, max_retries: u32) -> (Metrics, ClusterStats, CircuitBreakers) {
        let metrics = Metrics::new();
        let scope = metrics.root().detached("cluster", "c");
        let stats = ClusterStats::new(&scope);
        let spec = CircuitBreakersSpec {
            max_connections: 10,
            max_pending_requests: 10,
            max_requests,
            max_retries,
        };
        let breakers = CircuitBreakers::new(&scope, Some(&spec));
        (metrics, stats, breakers)
    }

    #[test]
    fn a_breaker_refuses_at_its_limit_counts_and_closes_again() {
        let (metrics, stats, breakers) = breakers(2, 0);
        stats.rq_active.inc();
        assert!(breakers.admits(Breaker::Requests, &stats));
        stats.rq_active.inc();
        assert!(!breakers.admits(Breaker::Requests, &stats), "2 in flight");
        assert!(!breakers.admits(Breaker::Retries, &stats), "max_retries 0");
        let text = metrics.render();
        assert!(text.contains("metaprotocol_upstream_circuit_breaker_open{cluster=\"c\",breaker=\"max_requests\"} 1"), "{text}");
        assert!(
            text.contains(
                "metaprotocol_upstream_overflow_total{cluster=\"c\",breaker=\"max_requests\"} 1"
            ),
            "{text}"
        );
        let status = breakers.status(&stats);
        let requests = status.iter().find(|s| s.breaker == "max_requests");
        assert!(requests.is_some_and(|s| s.open && s.current == 2 && s.overflows == 1));
        stats.rq_active.dec();
        assert!(breakers.admits(Breaker::Requests, &stats));
        assert!(
            breakers
                .status(&stats)
                .iter()
                .all(|s| s.breaker != "max_requests" || !s.open)
        );
        let first = breakers.reserve_connection();
        let second = breakers.reserve_connection();
        assert!(first.is_some() && second.is_some(), "no limit yet");
        breakers.set_limits(Some(&CircuitBreakersSpec {
            max_connections: 1,
            max_pending_requests: 10,
            max_requests: 2,
            max_retries: 0,
        }));
        assert!(
            breakers.reserve_connection().is_none(),
            "two held, one allowed"
        );
        drop(first);
        assert!(
            breakers.reserve_connection().is_none(),
            "one held, one allowed"
        );
        drop(second);
        assert!(breakers.reserve_connection().is_some(), "none held");
        breakers.set_limits(None);
        stats.rq_active.inc();
        stats.rq_active.inc();
        assert!(breakers.admits(Breaker::Requests, &stats), "no limits");
        assert!(breakers.status(&stats).is_empty());
    }

    #[test]
    fn a_breaker_an_update_removes_is_shown_closed() {
        let (metrics, stats, breakers) = breakers(1, 10);
        stats.rq_active.inc();
        assert!(!breakers.admits(Breaker::Requests, &stats));
        let open =
            "metaprotocol_upstream_circuit_breaker_open{cluster=\"c\",breaker=\"max_requests\"}";
        assert!(metrics.render().contains(&format!("{open} 1")));
        // The update takes the breaker away while it is open: nothing will check it again.
        breakers.set_limits(None);
        assert!(breakers.admits(Breaker::Requests, &stats));
        let text = metrics.render();
        assert!(text.contains(&format!("{open} 0")), "{text}");
    }
}
