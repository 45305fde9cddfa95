//! Circuit breakers: limits on what a cluster may have in flight. A request past a limit is not
//! queued: it is answered at once with the protocol's over-limit error (a retry past
//! `max_retries` is not made, and the request gets the failure it had, flagged `UO`). Each
//! breaker counts its overflows and shows whether it is open (its last check refused) in the
//! cluster's metrics and in `/clusters`.
//!
//! Each limit is taken in one step with its check (a compare-and-swap on the count it limits),
//! so that attempts admitted at once on several workers never pass it. Checked first and
//! counted after, they could all pass the check one below the limit and all count. Attempts in
//! flight and requests queued are counted against `max_requests` and `max_pending_requests` in
//! places ([`RequestPlace`], [`PendingPlace`]) only while the cluster sets that limit: a
//! cluster without one (most) writes no number shared by every worker per attempt, and its
//! gauges stay per-thread cells ([`ClusterStats`]). A place taken is handed over to what holds
//! it (the attempt's guard, the queued request) and given back through its endpoint's pool (or
//! the pool's connection), which shares the cluster's breakers: no handle of the breakers is
//! cloned per attempt.
//!
//! A limit an update sets on a cluster that had none applies to what is in flight then, as
//! Envoy's does to what its cluster always counts: the attempts (and queued requests) admitted
//! before it hold no place, so until they have ended each admission reads how many there are
//! from the cluster's per-thread gauges (every attempt counts there; those holding a place, no
//! more than the places held), and counts them against the limit with the places.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::config::CircuitBreakersSpec;
use crate::stats::Counter;
use crate::stats::{ClusterStats, MetricsScope, UpDownCounter};

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
    /// Places held under `max_requests` (attempts in flight admitted while it was set).
    requests: Held,
    /// Places held under `max_pending_requests` (requests queued, admitted while it was set).
    pending: Held,
}

/// A count of places on a cache line of its own: every worker takes and gives back places in
/// it, which would otherwise slow down the reads of the limits beside it (made by every
/// attempt, to clusters without limits too).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Held {
    places: AtomicI64,
    /// Set by an update that sets the limit on a cluster that had none, while what it admitted
    /// before (holding no place) may still be in flight; cleared once none is.
    unplaced: AtomicBool,
}

impl Held {
    /// How many of what `level` counts (every attempt in flight, or every request queued, of
    /// the cluster) hold no place here: those admitted before the limit was set, while any may
    /// be left; else 0 without reading `level` (a sum over every thread's cells). Those holding
    /// a place took it before `level` counted them and count there until after they give it
    /// back, so the difference never counts one of them; it may miss one admitted on another
    /// worker at this instant, and only while the ones before the update are in flight.
    fn unplaced(&self, level: &UpDownCounter) -> i64 {
        if !self.unplaced.load(Ordering::Acquire) {
            return 0;
        }
        let unplaced = (level.get() - self.places.load(Ordering::Acquire)).max(0);
        if unplaced == 0 {
            self.unplaced.store(false, Ordering::Release);
        }
        unplaced
    }

    /// Gives a place back.
    fn give_back(&self) {
        self.places.fetch_sub(1, Ordering::Release);
    }
}

/// A place under one of a cluster's limits, given back when dropped, or handed over to what
/// holds it ([`Place::hand_over`]), which gives it back through its endpoint's pool.
#[derive(Debug)]
pub(crate) struct Place<'a> {
    breakers: &'a CircuitBreakers,
    held: &'a Held,
}

/// An attempt's place under its cluster's `max_requests`: handed over to the attempt's guard,
/// which gives it back when the attempt ends, however it ends
/// ([`CircuitBreakers::give_back_request`]).
pub(crate) type RequestPlace<'a> = Place<'a>;

/// A request's place under its cluster's `max_pending_requests`: handed over to the request
/// queued, given back when it leaves the queue (a connection takes it, or it is refused,
/// expired or dropped with its connection) ([`CircuitBreakers::give_back_pending`]).
pub(crate) type PendingPlace<'a> = Place<'a>;

impl Place<'_> {
    /// Hands the place over to what goes to an endpoint whose pool counts under `breakers`,
    /// which gives it back through the pool, so that no handle of the breakers is cloned per
    /// attempt. True if handed over; false (the place given back now) if the pool counts under
    /// other breakers, or none, which the endpoints of the cluster that admitted the attempt
    /// never do.
    pub fn hand_over(self, breakers: Option<&CircuitBreakers>) -> bool {
        if breakers.is_some_and(|b| std::ptr::eq(b, self.breakers)) {
            // Its new holder gives it back instead of this.
            std::mem::forget(self);
            true
        } else {
            false
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.held.give_back();
    }
}

/// The places an admitted attempt holds: `None` under a limit the cluster does not set.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    /// Held by the attempt until it ends.
    pub request: Option<RequestPlace<'a>>,
    /// Held by the request until a connection takes it from its queue.
    pub pending: Option<PendingPlace<'a>>,
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
            requests: Held::default(),
            pending: Held::default(),
        };
        breakers.set_limits(spec);
        breakers
    }

    /// Applies a cluster update's limits (none: no limits). A breaker without a limit is never
    /// checked again, so one the update removes while it was open is shown closed here. Places
    /// held under a limit the update removes are given back as their attempts end; attempts in
    /// flight when an update sets `max_requests` or `max_pending_requests` on a cluster that had
    /// none took no place, and are counted against it from the cluster's gauges until they end
    /// ([`Held::unplaced`]).
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
        for (breaker, held) in [
            (Breaker::Requests, &self.requests),
            (Breaker::PendingRequests, &self.pending),
        ] {
            let i = breaker as usize;
            if limits[i] != i64::MAX && self.limits[i].load(Ordering::Relaxed) == i64::MAX {
                // Before the limit: an admission that reads the limit reads this too.
                held.unplaced.store(true, Ordering::Release);
            }
        }
        for ((slot, limit), open) in self.limits.iter().zip(limits).zip(&self.open) {
            slot.store(limit, Ordering::Release);
            if limit == i64::MAX {
                open.set(0);
            }
        }
    }

    /// An attempt's places under `max_requests` and `max_pending_requests`, each taken in one
    /// step with its check; the breaker that refused otherwise (its overflow counted, nothing
    /// held). Under a limit the cluster does not set nothing is taken: no shared write. `stats`
    /// are the cluster's, whose gauges count what was admitted before a limit was set.
    pub fn admit(&self, stats: &ClusterStats) -> Result<Admission<'_>, Breaker> {
        let place = |held| Place {
            breakers: self,
            held,
        };
        let request = self
            .take(Breaker::Requests, &self.requests, &stats.rq_active)?
            .then(|| place(&self.requests));
        // A refusal here drops the request place taken above, giving it back.
        let pending = self
            .take(Breaker::PendingRequests, &self.pending, &stats.rq_pending)?
            .then(|| place(&self.pending));
        Ok(Admission { request, pending })
    }

    /// Gives back a place under `max_requests` an attempt's guard was handed
    /// ([`Place::hand_over`]).
    pub fn give_back_request(&self) {
        self.requests.give_back();
    }

    /// Gives back a place under `max_pending_requests` a queued request was handed
    /// ([`Place::hand_over`]).
    pub fn give_back_pending(&self) {
        self.pending.give_back();
    }

    /// Takes a place in `held` under `breaker`'s limit, counting with the places what `level`
    /// counts that holds none: `Ok(false)` when there is no limit (nothing taken), `Ok(true)`
    /// when taken; a refusal is counted, and the open gauge follows.
    #[inline]
    fn take(&self, breaker: Breaker, held: &Held, level: &UpDownCounter) -> Result<bool, Breaker> {
        let limit = self.limits[breaker as usize].load(Ordering::Acquire);
        if limit == i64::MAX {
            return Ok(false);
        }
        self.take_under(breaker, limit, held, level)
    }

    /// [`CircuitBreakers::take`] under a limit the cluster sets: out of line, so that a cluster
    /// without limits pays only the look at the limit.
    #[inline(never)]
    fn take_under(
        &self,
        breaker: Breaker,
        limit: i64,
        held: &Held,
        level: &UpDownCounter,
    ) -> Result<bool, Breaker> {
        let room = limit.saturating_sub(held.unplaced(level));
        let taken = held
            .places
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |places| {
                (places < room).then_some(places + 1)
            })
            .is_ok();
        if self.judge(breaker, taken) {
            Ok(true)
        } else {
            Err(breaker)
        }
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

    /// What `breaker` compares with its limit, now.
    fn current(&self, breaker: Breaker, stats: &ClusterStats) -> i64 {
        match breaker {
            Breaker::Connections => self.connections.load(Ordering::Relaxed),
            Breaker::PendingRequests => {
                self.pending.places.load(Ordering::Relaxed)
                    + self.pending.unplaced(&stats.rq_pending)
            }
            Breaker::Requests => {
                self.requests.places.load(Ordering::Relaxed)
                    + self.requests.unplaced(&stats.rq_active)
            }
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
    fn breakers(
        max_requests: u32,
        max_retries: u32,
    ) -> (Metrics, ClusterStats, Arc<CircuitBreakers>) {
        let metrics = Metrics::new();
        let scope = metrics.root().detached("cluster", "c");
        let stats = ClusterStats::new(&scope);
        let spec = CircuitBreakersSpec {
            max_connections: 10,
            max_pending_requests: 10,
            max_requests,
            max_retries,
        };
        let breakers = Arc::new(CircuitBreakers::new(&scope, Some(&spec)));
        (metrics, stats, breakers)
    }

    #[test]
    fn a_breaker_refuses_at_its_limit_counts_and_closes_again() {
        let (metrics, stats, breakers) = breakers(2, 0);
        let first = breakers.admit(&stats);
        assert!(first.as_ref().is_ok_and(|a| a.request.is_some()));
        let _second = breakers.admit(&stats);
        assert_eq!(
            breakers.admit(&stats).err(),
            Some(Breaker::Requests),
            "2 in flight"
        );
        assert_eq!(
            breakers.take_retry(&stats.rq_retries_active, i64::MAX),
            Err(RetryRefusal::MaxRetries),
            "max_retries 0"
        );
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
        let pending = status.iter().find(|s| s.breaker == "max_pending_requests");
        assert!(
            pending.is_some_and(|s| !s.open && s.current == 2),
            "the refused attempt gave back its place"
        );
        drop(first);
        assert!(breakers.admit(&stats).is_ok());
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
        let unlimited = breakers.admit(&stats);
        assert!(
            unlimited.is_ok_and(|a| a.request.is_none() && a.pending.is_none()),
            "no limits: no place taken"
        );
        assert!(breakers.status(&stats).is_empty());
        // What took no place gave none back: the limit set again has two places, one of them
        // still held by the second attempt.
        breakers.set_limits(Some(&CircuitBreakersSpec {
            max_connections: 10,
            max_pending_requests: 10,
            max_requests: 2,
            max_retries: 0,
        }));
        let admitted: Vec<_> = (0..3).map(|_| breakers.admit(&stats)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_ok()).count(), 1);
    }

    #[test]
    fn a_breaker_an_update_removes_is_shown_closed() {
        let (metrics, stats, breakers) = breakers(1, 10);
        let _held = breakers.admit(&stats);
        assert!(breakers.admit(&stats).is_err());
        let open =
            "metaprotocol_upstream_circuit_breaker_open{cluster=\"c\",breaker=\"max_requests\"}";
        assert!(metrics.render().contains(&format!("{open} 1")));
        // The update takes the breaker away while it is open: nothing will check it again.
        breakers.set_limits(None);
        assert!(breakers.admit(&stats).is_ok());
        let text = metrics.render();
        assert!(text.contains(&format!("{open} 0")), "{text}");
    }

    #[test]
    fn a_max_pending_requests_an_update_sets_counts_the_requests_already_queued() {
        let metrics = Metrics::new();
        let scope = metrics.root().detached("cluster", "c");
        let stats = ClusterStats::new(&scope);
        let breakers = Arc::new(CircuitBreakers::new(&scope, None));
        // Five requests queued on the cluster's connections (which count them) before a limit:
        // admitted without a place.
        for _ in 0..5 {
            assert!(breakers.admit(&stats).is_ok_and(|a| a.pending.is_none()));
            stats.rq_pending.inc();
        }
        breakers.set_limits(Some(&CircuitBreakersSpec {
            max_connections: 10,
            max_pending_requests: 3,
            max_requests: 100,
            max_retries: 0,
        }));
        assert_eq!(
            breakers.admit(&stats).err(),
            Some(Breaker::PendingRequests),
            "five queued, three allowed"
        );
        let pending = |breakers: &CircuitBreakers| {
            breakers
                .status(&stats)
                .into_iter()
                .find(|s| s.breaker == "max_pending_requests")
                .map(|s| s.current)
        };
        assert_eq!(pending(&breakers), Some(5));
        // Three of them taken from their queues: room for one.
        stats.rq_pending.dec_by(3);
        let one = breakers.admit(&stats);
        assert!(one.as_ref().is_ok_and(|a| a.pending.is_some()));
        stats.rq_pending.inc();
        assert!(
            breakers.admit(&stats).is_err(),
            "two old and one new queued"
        );
        // The old ones taken: the places alone count.
        stats.rq_pending.dec_by(2);
        let two = breakers.admit(&stats);
        assert!(two.is_ok());
        assert_eq!(pending(&breakers), Some(2));
    }

    /// Places taken at once on eight threads, each held a moment: the most held at once, as
    /// the holders counted them.
    fn most_held_at_once(breakers: &Arc<CircuitBreakers>, stats: &ClusterStats) -> i64 {
        let (holders, most, admitted) = (AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0));
        let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
        std::thread::scope(|threads| {
            for _ in 0..8 {
                threads.spawn(|| {
                    while std::time::Instant::now() < until {
                        let Ok(_places) = breakers.admit(stats) else {
                            continue;
                        };
                        let now = holders.fetch_add(1, Ordering::AcqRel) + 1;
                        most.fetch_max(now, Ordering::Relaxed);
                        admitted.fetch_add(1, Ordering::Relaxed);
                        std::thread::yield_now();
                        holders.fetch_sub(1, Ordering::AcqRel);
                    }
                });
            }
        });
        assert!(admitted.into_inner() > 0);
        most.into_inner()
    }

    #[test]
    fn places_taken_at_once_never_pass_max_requests_or_max_pending_requests() {
        let (_metrics, stats, breakers) = breakers(2, 0);
        assert!(most_held_at_once(&breakers, &stats) <= 2);
        breakers.set_limits(Some(&CircuitBreakersSpec {
            max_connections: 10,
            max_pending_requests: 2,
            max_requests: 100,
            max_retries: 0,
        }));
        assert!(most_held_at_once(&breakers, &stats) <= 2);
        assert!(
            breakers.status(&stats).iter().all(|s| s.current == 0),
            "every place was given back"
        );
    }
}
