//! One upstream endpoint: its connection pool, its health, its live counts. An endpoint
//! outlives the cluster snapshots that list it, so that its connections survive updates.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use super::RequestPlace;
use crate::health::OutlierCounters;
use crate::lb::RttEstimate;
use crate::stats::{Counter, EndpointStats, HealthStats, MetricsScope, UpDownCounter};
use crate::upstream::UpstreamPool;

/// An endpoint's health as `/clusters` reports it, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthState {
    /// Removed from its cluster, finishing the requests it still has.
    Draining,
    /// Failing active health checks.
    FailingActiveChecks,
    /// Ejected by outlier detection.
    Ejected,
    /// In rotation.
    Healthy,
}

impl HealthState {
    /// Every state, most severe first.
    pub const ALL: [HealthState; 4] = [
        Self::Draining,
        Self::FailingActiveChecks,
        Self::Ejected,
        Self::Healthy,
    ];

    /// Its name in `/clusters` and the `state` label of `metaprotocol_endpoint_health`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::FailingActiveChecks => "failing_active_checks",
            Self::Ejected => "ejected",
            Self::Healthy => "healthy",
        }
    }
}

/// Held while an endpoint's health is read and shown in its series, and while series are handed
/// over ([`HealthFlags::hand_series_to`]). Endpoints may share the series of an address (one
/// rebuilt in place of another, one made where another was removed and still drains), and
/// showing is a read of the flags and then four stores: two endpoints showing at once, or a
/// change and a hand-over at once, could leave a state older than the flags last (one read
/// before the other's change, written after it), or none (the change saw the series as not its
/// own yet, the hand-over read the flags before the change: each stored one atomic and loaded
/// the other, a store buffering no Acquire/Release ordering rules out), or two states at 1.
/// Health changes are rare (verdicts, ejections, updates) and each holds it for a few stores:
/// one lock for all series costs less than tracking which endpoints share theirs.
static SHOWING: Mutex<()> = Mutex::new(());

/// [`SHOWING`], held.
fn showing() -> MutexGuard<'static, ()> {
    SHOWING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Health flags, written by health checking, outlier detection and cluster updates only (see
/// [`super::ClusterHandle::set_health`]). Every change shows in the endpoint's health series
/// (once they are its own, see [`HealthFlags::hand_series_to`]), and each ejection is counted.
#[derive(Debug, Default)]
pub(crate) struct HealthFlags {
    bits: AtomicU8,
    stats: Option<HealthStats>,
    /// True while the series show its state. An endpoint made in place of a running one at its
    /// address (new pool settings, or health checks an update gives) shares that one's series,
    /// and shows in them only once it is installed: the running one serves until then, and the
    /// update may be dropped. Read to show, and handed over, with [`SHOWING`] held.
    shows: AtomicBool,
}

impl HealthFlags {
    pub const DRAINING: u8 = 1;
    pub const FAILED_ACTIVE_CHECK: u8 = 1 << 1;
    pub const EJECTED: u8 = 1 << 2;
    /// New to a cluster with active health checks, not checked yet: it starts with
    /// `FAILED_ACTIVE_CHECK` too (Envoy's `PENDING_ACTIVE_HC` with `FAILED_ACTIVE_HC`), and its
    /// first check decides at once, whatever the thresholds, whether it enters rotation.
    pub const PENDING_ACTIVE_CHECK: u8 = 1 << 3;

    /// Sets or clears `flag`; true if that changed anything.
    pub fn set(&self, flag: u8, on: bool) -> bool {
        let before = if on {
            self.bits.fetch_or(flag, Ordering::AcqRel)
        } else {
            self.bits.fetch_and(!flag, Ordering::AcqRel)
        };
        let changed = (before & flag != 0) != on;
        if changed {
            // The state read under the lock, after this change: the last to show reads the
            // newest flags.
            self.show(&showing());
            if flag == Self::EJECTED
                && on
                && let Some(stats) = &self.stats
            {
                stats.ejections.inc();
            }
        }
        changed
    }

    /// Shows its state in its series if they are its own; `_showing` is [`SHOWING`], held.
    fn show(&self, _showing: &MutexGuard<'static, ()>) {
        if let Some(stats) = &self.stats
            && self.shows.load(Ordering::Acquire)
        {
            stats.show(self.state().name());
        }
    }

    /// Hands the health series this endpoint shares with `rebuilt`, made in place of it and
    /// installed now, over to `rebuilt`, which shows its state in them from now on: neither a
    /// change of this one (draining) nor `rebuilt`'s own changes before (its first check, when
    /// an update gives the cluster checks) are what the address's series show.
    /// A change of `rebuilt` at the same time shows after the hand-over, or before it and is
    /// read by it (see [`SHOWING`]).
    pub fn hand_series_to(&self, rebuilt: &HealthFlags) {
        let showing = showing();
        self.shows.store(false, Ordering::Release);
        rebuilt.shows.store(true, Ordering::Release);
        rebuilt.show(&showing);
    }

    /// Takes the flags of `owned` as `replaced` has them: an endpoint rebuilt in place (new pool
    /// settings, a new codec) is the same server, failing its checks or ejected as before, until
    /// the checks or the detector say otherwise. Before the endpoint shows in its series (made,
    /// or installed before the hand-over): nothing is shown or counted. True if that took it
    /// into or out of rotation.
    fn take(&self, replaced: &HealthFlags, owned: u8) -> bool {
        let theirs = replaced.bits.load(Ordering::Acquire) & owned;
        let taken = |bits: u8| (bits & !owned) | theirs;
        let update = |bits| Some(taken(bits));
        let (Ok(before) | Err(before)) =
            self.bits
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, update);
        (before ^ taken(before)) & (Self::FAILED_ACTIVE_CHECK | Self::EJECTED) != 0
    }

    /// True if its series show its state: false for an endpoint made in place of a running one
    /// until it is installed ([`HealthFlags::hand_series_to`]).
    pub fn shown(&self) -> bool {
        self.shows.load(Ordering::Acquire)
    }

    /// True if `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.bits.load(Ordering::Acquire) & flag != 0
    }

    /// True if no flag takes the endpoint out of rotation.
    pub fn routable(&self) -> bool {
        self.bits.load(Ordering::Acquire) & (Self::FAILED_ACTIVE_CHECK | Self::EJECTED) == 0
    }

    pub fn state(&self) -> HealthState {
        let flags = self.bits.load(Ordering::Acquire);
        if flags & Self::DRAINING != 0 {
            HealthState::Draining
        } else if flags & Self::FAILED_ACTIVE_CHECK != 0 {
            HealthState::FailingActiveChecks
        } else if flags & Self::EJECTED != 0 {
            HealthState::Ejected
        } else {
            HealthState::Healthy
        }
    }
}

/// An endpoint's active health check results in a row, which its thresholds are counted
/// against. Kept with the endpoint rather than in the checker, so that a checker an update
/// restarts (a new `interval`, new thresholds, new connection settings) goes on from each
/// endpoint's streak instead of from nothing, as the endpoint keeps its health flags. Written by
/// the cluster's one checker alone.
#[derive(Debug, Default)]
pub(crate) struct CheckStreak(AtomicU64);

impl CheckStreak {
    /// Passed and failed checks in a row (one of the two is 0).
    pub fn get(&self) -> (u32, u32) {
        let both = self.0.load(Ordering::Relaxed);
        ((both >> 32) as u32, both as u32)
    }

    /// Sets the passed and failed checks in a row.
    pub fn set(&self, passed: u32, failed: u32) {
        self.0.store(
            u64::from(passed) << 32 | u64::from(failed),
            Ordering::Relaxed,
        );
    }
}

/// When an endpoint's next active health check is due, as the first round of checks of an
/// update that gives its cluster checks found ([`crate::health::first_round`], run before the
/// update applies): the checks the update starts check it then, as they would have after a
/// first check of their own, rather than again at once.
#[derive(Debug, Default)]
pub(crate) struct NextCheck(Mutex<Option<tokio::time::Instant>>);

impl NextCheck {
    /// Sets when the next check is due.
    pub fn set(&self, due: tokio::time::Instant) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(due);
    }

    /// When the next check is due, if a first round said so and no checks took it yet.
    pub fn take(&self) -> Option<tokio::time::Instant> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// One upstream endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    address: SocketAddr,
    pool: UpstreamPool,
    health: HealthFlags,
    /// Its active health checks' streak.
    check_streak: CheckStreak,
    /// When its next active check is due, as a first round before an update found.
    next_check: NextCheck,
    active: Gauge,
    total: Counter,
    /// Its cluster's attempts in flight and sent: an attempt moves them with the endpoint's
    /// own, through the endpoint it holds (no handle of the cluster's held per attempt).
    cluster_active: UpDownCounter,
    cluster_total: Counter,
    /// Its latency, for `peak_ewma`.
    rtt: RttEstimate,
    /// Its failure streaks and ejections, for outlier detection.
    outliers: OutlierCounters,
    /// Where its series live (its pool's too), released when it goes.
    scope: Option<MetricsScope>,
}

impl Endpoint {
    /// The endpoint at `address`, counting in its pool's endpoint and cluster series.
    pub fn new(address: SocketAddr, pool: UpstreamPool) -> Self {
        let stats = pool.endpoint_stats();
        let cluster = pool.cluster_stats();
        Self {
            address,
            active: stats.rq_active.clone(),
            total: stats.rq_total.clone(),
            cluster_active: cluster.rq_active.clone(),
            cluster_total: cluster.rq_total.clone(),
            pool,
            health: HealthFlags {
                shows: AtomicBool::new(true),
                ..HealthFlags::default()
            },
            check_streak: CheckStreak::default(),
            next_check: NextCheck::default(),
            rtt: RttEstimate::default(),
            outliers: OutlierCounters::default(),
            scope: None,
        }
    }

    /// The endpoint rebuilt in place of `replaced` (at the same address): out of rotation if
    /// `replaced` is (see [`HealthFlags`]), with its active checks' streak, its failure streaks
    /// and count of ejections. Its health series, those of `replaced`, show it once it is
    /// installed ([`HealthFlags::hand_series_to`]).
    pub fn replacing(self, replaced: &Endpoint) -> Self {
        self.health.shows.store(false, Ordering::Release);
        self.take_running(replaced, true);
        self
    }

    /// Takes again, as it is installed in place of `replaced` (its cluster's lock held, so that
    /// no health change crosses it), what the health work of the running cluster kept on
    /// `replaced` since [`Endpoint::replacing`] copied it when the update was planned: the
    /// update's first round of checks may take up to their `timeout`, and an update overtaken
    /// meanwhile reuses the endpoints it made in its next plan. Outlier detection's ejection
    /// and failure streaks, and active checks' flags and streak, unless the update gives the
    /// cluster checks (`checks_anew`): then the endpoint's own first round made them. An
    /// ejection that ended on `replaced` meanwhile stayed on this one, which the detector,
    /// having returned `replaced`, never returned. True if that took it into or out of
    /// rotation: the snapshot built with it is to be built again.
    pub fn take_running(&self, replaced: &Endpoint, checks_anew: bool) -> bool {
        let mut owned = HealthFlags::EJECTED;
        if !checks_anew {
            owned |= HealthFlags::FAILED_ACTIVE_CHECK | HealthFlags::PENDING_ACTIVE_CHECK;
            let (passed, failed) = replaced.check_streak.get();
            self.check_streak.set(passed, failed);
        }
        self.outliers.carry_over(&replaced.outliers);
        self.health.take(&replaced.health, owned)
    }

    /// The endpoint, new to a cluster with active health checks, out of rotation until its first
    /// check passes (see [`HealthFlags::PENDING_ACTIVE_CHECK`]): a server nothing has checked
    /// yet takes no call while checked ones are there to serve. Before
    /// [`Endpoint::with_metrics`], which shows it.
    pub fn awaiting_first_check(self) -> Self {
        self.health.bits.fetch_or(
            HealthFlags::FAILED_ACTIVE_CHECK | HealthFlags::PENDING_ACTIVE_CHECK,
            Ordering::AcqRel,
        );
        self
    }

    /// The endpoint with its series: `scope` (where its pool's endpoint series live too, held
    /// until the endpoint goes) and its health series, which show it unless it replaces an
    /// endpoint ([`Endpoint::replacing`]).
    pub fn with_metrics(mut self, scope: MetricsScope, health: HealthStats) -> Self {
        self.health.stats = Some(health);
        self.health.show(&showing());
        self.scope = Some(scope);
        self
    }

    /// Its series.
    pub fn stats(&self) -> &EndpointStats {
        self.pool.endpoint_stats()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn pool(&self) -> &UpstreamPool {
        &self.pool
    }

    pub fn health(&self) -> &HealthFlags {
        &self.health
    }

    pub fn rtt(&self) -> &RttEstimate {
        &self.rtt
    }

    pub fn outliers(&self) -> &OutlierCounters {
        &self.outliers
    }

    /// Its active health checks' streak.
    pub fn check_streak(&self) -> &CheckStreak {
        &self.check_streak
    }

    /// When its next active check is due, if the first round of an update's checks said so.
    pub fn next_check(&self) -> &NextCheck {
        &self.next_check
    }

    /// Requests in flight to it.
    pub fn active_requests(&self) -> u64 {
        u64::try_from(self.active.get()).unwrap_or(0)
    }

    /// Requests sent to it so far.
    pub fn total_requests(&self) -> u64 {
        self.total.get()
    }

    /// Marks an attempt in flight (on the endpoint and its cluster) until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveRequest {
        self.active.inc();
        self.total.inc();
        self.cluster_total.inc();
        self.cluster_active.inc();
        ActiveRequest {
            endpoint: self.clone(),
            placed: false,
        }
    }
}

/// An attempt in flight to an endpoint; dropping it ends the attempt.
#[derive(Debug)]
pub(crate) struct ActiveRequest {
    endpoint: Arc<Endpoint>,
    /// Whether it holds a place under its cluster's `max_requests` (when the cluster sets one),
    /// given back through the endpoint's pool when it ends.
    placed: bool,
}

impl ActiveRequest {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The attempt, holding `place` until it ends.
    pub fn holding(mut self, place: Option<RequestPlace<'_>>) -> Self {
        self.placed = place.is_some_and(|p| p.hand_over(self.endpoint.pool().breakers()));
        self
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.endpoint.active.dec();
        self.endpoint.cluster_active.dec();
        // After the count above: a place is held for as long as the cluster counts its attempt
        // (see `CircuitBreakers::admit`).
        if self.placed
            && let Some(breakers) = self.endpoint.pool().breakers()
        {
            breakers.give_back_request();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(scope) = &self.scope {
            scope.retire();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cluster::tests::health_shown;
    use crate::stats::Metrics;

    /// Flags with `bits`, in `metrics`' series of one endpoint, showing in them if `shows`.
    fn flags(metrics: &Metrics, bits: u8, shows: bool) -> HealthFlags {
        let states = HealthState::ALL.map(HealthState::name);
        HealthFlags {
            bits: AtomicU8::new(bits),
            stats: Some(HealthStats::new(&metrics.root(), &states)),
            shows: AtomicBool::new(shows),
        }
    }

    /// Waits, spinning, until two threads have each met `meetings` times.
    fn meet(met: &AtomicUsize, meetings: usize) {
        met.fetch_add(1, Ordering::AcqRel);
        let mut spins = 0_u32;
        while met.load(Ordering::Acquire) < 2 * meetings {
            spins += 1;
            if spins < 1_000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// An endpoint rebuilt in place whose state changes while the series of its address are
    /// handed over to it (its first check passing as the update applies) shows its state in
    /// them once both are done, whichever came first. The hand-over read the state before the
    /// change and showed it after the change had been shown, or the change saw the series as
    /// not its own yet while the hand-over read the state before it (a store buffering: each
    /// stored one flag and loaded the other): the series showed the state before the change
    /// until the next one. Both run at once here, many times over.
    #[test]
    fn a_change_during_the_series_hand_over_is_what_they_show() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let rounds = 20_000;
        let met = AtomicUsize::new(0);
        let next: Mutex<Option<Arc<HealthFlags>>> = Mutex::new(None);
        let taken = || next.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut stale = Vec::new();
        let mut ran = 0;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for round in 0..rounds {
                    meet(&met, 2 * round + 1);
                    if let Some(rebuilt) = taken() {
                        rebuilt.set(HealthFlags::FAILED_ACTIVE_CHECK, false);
                    }
                    meet(&met, 2 * round + 2);
                }
            });
            for round in 0..rounds {
                let metrics = Metrics::new();
                let old = flags(&metrics, 0, true);
                old.set(HealthFlags::DRAINING, true);
                let rebuilt = Arc::new(flags(&metrics, HealthFlags::FAILED_ACTIVE_CHECK, false));
                let past = Instant::now() > deadline;
                *next.lock().unwrap_or_else(PoisonError::into_inner) =
                    (!past).then(|| rebuilt.clone());
                meet(&met, 2 * round + 1);
                if !past {
                    old.hand_series_to(&rebuilt);
                }
                meet(&met, 2 * round + 2);
                if past {
                    continue;
                }
                ran += 1;
                let shown = health_shown(&metrics);
                if shown != [rebuilt.state().name()] {
                    stale.push(shown);
                }
            }
        });
        assert!(
            stale.is_empty(),
            "{} of {ran} hand-overs left the series showing other than the endpoint's state (healthy): {:?}",
            stale.len(),
            &stale[..stale.len().min(5)]
        );
    }
}
