//! Outlier detection: ejecting endpoints whose real traffic keeps failing.
//!
//! Every concluded attempt is recorded on its endpoint ([`OutlierCounters::record`], by the
//! router): a failure of the upstream (a server error response, a connection reset with the
//! request sent, a timeout) lengthens its upstream streak, a failed connect its local-origin
//! streak, and an answer ends both. When a streak reaches its threshold the detector task is
//! woken; it ejects the endpoint (the `EJECTED` health flag) for `base_ejection_time` times the
//! number of times it was ejected recently (counted up to the number that reaches
//! `max_ejection_time`), at most `max_ejection_time`, unless that would put
//! more than `max_ejection_percent` of the cluster's endpoints out at once (but one may always
//! be out, see [`max_ejected`]). Every `interval` it
//! returns endpoints whose time is up (with fresh streaks), and an endpoint back in rotation for
//! a whole `base_ejection_time` sheds one step of its growing ejection time.
//!
//! What the detector knows of each endpoint's ejections ([`Ejections`]) belongs to the cluster,
//! not to the detector: a cluster update restarts the detector when its settings or the health
//! checks' change, and the successor goes on from the same record, so an ejection runs the
//! course it was given and the count of recent ejections stands. An endpoint that an update
//! rebuilt (new pool settings) keeps its flag, its streaks and its count of ejections
//! ([`crate::cluster`]'s rebuild carries them over).
//!
//! An active health check that finds an ejected endpoint healthy returns it at once, with fresh
//! streaks (`successful_active_health_check_uneject_host`, Envoy's, on unless turned off), and
//! the gauge of ejected endpoints follows at once too: see [`Ejections::readmit`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, Weak};

use metaprotocol_core::ResponseStatus;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterHandle, HealthFlags};
use crate::config::OutlierDetectionSpec;
use crate::router::AttemptOutcome;
use crate::router::deadline_after;
use crate::stats::Counter;

/// Why an endpoint was ejected: the `reason` label of the ejection counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    ConsecutiveErrors,
    ConsecutiveLocalOriginFailures,
}

impl Reason {
    fn name(self) -> &'static str {
        match self {
            Self::ConsecutiveErrors => "consecutive_errors",
            Self::ConsecutiveLocalOriginFailures => "consecutive_local_origin_failures",
        }
    }
}

/// The streak lengths that eject, read by the router on every concluded attempt; 0 turns a
/// check off (both 0: detection is off and nothing is recorded).
#[derive(Debug, Default)]
pub(crate) struct OutlierThresholds {
    upstream: AtomicU32,
    local: AtomicU32,
}

impl OutlierThresholds {
    /// Applies a cluster config's policy (none: detection off).
    pub fn set(&self, policy: Option<&OutlierDetectionSpec>) {
        let (upstream, local) = policy.map_or((0, 0), |p| {
            (p.consecutive_errors, p.consecutive_local_origin_failures)
        });
        self.upstream.store(upstream, Ordering::Relaxed);
        self.local.store(local, Ordering::Relaxed);
    }
}

/// An endpoint's failure streaks and how often it was ejected. Lock-free: written by every
/// connection task that concludes an attempt on the endpoint.
#[derive(Debug, Default)]
pub(crate) struct OutlierCounters {
    upstream: AtomicU32,
    local: AtomicU32,
    ejections: AtomicU32,
}

impl OutlierCounters {
    /// Records how an attempt on the endpoint ended; true when it made a streak reach its
    /// threshold (the detector should look now).
    pub fn record(&self, outcome: &AttemptOutcome, thresholds: &OutlierThresholds) -> bool {
        let upstream = thresholds.upstream.load(Ordering::Relaxed);
        let local = thresholds.local.load(Ordering::Relaxed);
        if upstream == 0 && local == 0 {
            return false;
        }
        let lengthen = |streak: &AtomicU32, threshold: u32| {
            threshold != 0 && streak.fetch_add(1, Ordering::Relaxed).saturating_add(1) == threshold
        };
        match outcome {
            // An answer refusing the call unrun (overloaded) is an error the upstream reported.
            AttemptOutcome::Answered(ResponseStatus::ServerError)
            | AttemptOutcome::NotProcessed
            | AttemptOutcome::Reset { sent: true }
            | AttemptOutcome::Timeout => lengthen(&self.upstream, upstream),
            AttemptOutcome::ConnectFailure => lengthen(&self.local, local),
            AttemptOutcome::Answered(_) => {
                // Reads first: the common case writes nothing to a line other cores share.
                for streak in [&self.upstream, &self.local] {
                    if streak.load(Ordering::Relaxed) != 0 {
                        streak.store(0, Ordering::Relaxed);
                    }
                }
                false
            }
            // The proxy's own refusals say nothing about the endpoint; a connection that failed
            // before writing is resent; an answer over the proxy's frame limit is the call's
            // size, not the endpoint's health.
            AttemptOutcome::Overflow
            | AttemptOutcome::EncodeFailure
            | AttemptOutcome::ResponseTooLarge
            | AttemptOutcome::Reset { sent: false } => false,
        }
    }

    /// The streak that reached its threshold in `policy`, if one did.
    fn over(&self, policy: &OutlierDetectionSpec) -> Option<Reason> {
        let reached = |streak: &AtomicU32, threshold: u32| {
            threshold != 0 && streak.load(Ordering::Relaxed) >= threshold
        };
        if reached(&self.upstream, policy.consecutive_errors) {
            Some(Reason::ConsecutiveErrors)
        } else if reached(&self.local, policy.consecutive_local_origin_failures) {
            Some(Reason::ConsecutiveLocalOriginFailures)
        } else {
            None
        }
    }

    /// Ends both streaks.
    pub fn reset(&self) {
        self.upstream.store(0, Ordering::Relaxed);
        self.local.store(0, Ordering::Relaxed);
    }

    /// Times the endpoint was ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Takes the streaks and the count of ejections of `replaced`, the endpoint this one
    /// replaces at the same address (rebuilt by a cluster update): the same server, with the
    /// same recent failures.
    pub fn carry_over(&self, replaced: &OutlierCounters) {
        for (mine, theirs) in [
            (&self.upstream, &replaced.upstream),
            (&self.local, &replaced.local),
            (&self.ejections, &replaced.ejections),
        ] {
            mine.store(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// The detector's series.
struct Stats {
    ejections: [Counter; 2],
    active: Gauge,
    overflow: Counter,
}

impl Stats {
    fn new(cluster: &ClusterHandle) -> Self {
        let scope = cluster.scope();
        let reason = |r: Reason| {
            scope.counter_with(
                "outlier_ejections",
                "Endpoints ejected by outlier detection, by reason",
                &[("reason", r.name())],
            )
        };
        let active = scope.gauge(
            "outlier_ejections_active",
            "Endpoints ejected by outlier detection now",
        );
        cluster.ejections().show_in(&active);
        Self {
            ejections: [
                reason(Reason::ConsecutiveErrors),
                reason(Reason::ConsecutiveLocalOriginFailures),
            ],
            active,
            overflow: scope.counter(
                "outlier_ejections_overflow",
                "Ejections not made because max_ejection_percent of the endpoints were out",
            ),
        }
    }
}

/// What the detector remembers of an endpoint it ejected.
#[derive(Debug)]
struct Ejection {
    /// Ejections not yet forgiven: the next ejection lasts one more base ejection time.
    steps: u32,
    /// While ejected: when it returns.
    until: Option<Instant>,
    /// When `steps` last changed or the endpoint returned.
    since: Instant,
}

/// The ejections of a cluster's endpoints, by address: kept by the cluster, so that a
/// detector that replaces another (new settings) goes on from where it was. Locked by the
/// detector once a tick, never on the request path.
#[derive(Debug, Default)]
pub(crate) struct Ejections {
    ejected: Mutex<HashMap<SocketAddr, Ejection>>,
    /// `successful_active_health_check_uneject_host` of the cluster's policy.
    readmit_on_check: AtomicBool,
    /// The cluster's gauge of endpoints ejected now, once a detector registered it: the
    /// detector sets it at each review, and a return by an active health check (between
    /// reviews) lowers it at once.
    shown: OnceLock<Gauge>,
}

impl Ejections {
    /// Applies a cluster config's policy (none: detection off).
    pub fn set_policy(&self, policy: Option<&OutlierDetectionSpec>) {
        let readmit = policy.is_some_and(|p| p.successful_active_health_check_uneject_host);
        self.readmit_on_check.store(readmit, Ordering::Relaxed);
    }

    /// Shows the endpoints ejected now in `gauge` (the cluster's, which every detector of it
    /// shares) when an active health check returns one.
    fn show_in(&self, gauge: &Gauge) {
        self.shown.get_or_init(|| gauge.clone());
    }

    /// Ends the ejection of the endpoint at `address`, which an active health check found
    /// healthy, when the policy says so; true if it was ejected. Its ejections so far still
    /// count toward the length of its next one.
    pub fn readmit(&self, address: SocketAddr, now: Instant) -> bool {
        if !self.readmit_on_check.load(Ordering::Relaxed) {
            return false;
        }
        let mut ejected = self.lock();
        match ejected.get_mut(&address) {
            Some(ejection) if ejection.until.is_some() => {
                ejection.until = None;
                ejection.since = now;
                // Under the lock, as a review sets it: the two never cross.
                if let Some(gauge) = self.shown.get() {
                    gauge.dec();
                }
                true
            }
            _ => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Ejection>> {
        match self.ejected.lock() {
            Ok(ejected) => ejected,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Forgets every ejection (outlier detection was turned off, and its flags cleared).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Sets the gauge to the endpoints ejected now, under the lock (as a return lowers it).
    fn refresh_gauge(&self) {
        let ejected = self.lock();
        if let Some(gauge) = self.shown.get() {
            let active = ejected.values().filter(|e| e.until.is_some()).count();
            gauge.set(i64::try_from(active).unwrap_or(i64::MAX));
        }
    }
}

/// Ejects and returns the endpoints of one cluster.
struct Detector {
    policy: OutlierDetectionSpec,
    stats: Stats,
}

/// Runs the detector of `cluster` until `stop` (or the cluster is gone).
pub(super) async fn run(
    cluster: Weak<ClusterHandle>,
    policy: OutlierDetectionSpec,
    stop: CancellationToken,
) {
    let Some(handle) = cluster.upgrade() else {
        return;
    };
    let wake = handle.outlier_wake();
    let detector = Detector {
        policy,
        stats: Stats::new(&handle),
    };
    drop(handle);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // Replaced, the successor counts the same ejections; turned off, there are none.
                if let Some(handle) = cluster.upgrade() {
                    handle.ejections().refresh_gauge();
                }
                return;
            }
            _ = tokio::time::sleep(detector.policy.interval) => {}
            _ = wake.notified() => {}
        }
        let Some(handle) = cluster.upgrade() else {
            return;
        };
        detector.tick(&handle, Instant::now());
    }
}

impl Detector {
    /// The most ejections an endpoint is held to: those that take an ejection to
    /// `max_ejection_time`. Counting on past it would make an endpoint back from a long outage
    /// (ejected again at every return) live down every ejection of it, one base ejection time
    /// each, before a failure costs it less than the longest ejection again.
    fn max_steps(&self) -> u32 {
        let base = self.policy.base_ejection_time.as_nanos().max(1);
        let steps = self.policy.max_ejection_time.as_nanos().div_ceil(base);
        u32::try_from(steps).unwrap_or(u32::MAX).max(1)
    }

    fn show_active(&self, active: usize) {
        self.stats
            .active
            .set(i64::try_from(active).unwrap_or(i64::MAX));
    }

    /// Returns endpoints whose time is up, forgives old ejections, ejects endpoints over a
    /// threshold.
    fn tick(&self, cluster: &ClusterHandle, now: Instant) {
        let snapshot = cluster.snapshot();
        let hosts = &snapshot.hosts;
        let mut ejected = cluster.ejections().lock();
        // A set, not a scan of the hosts per ejection: with 10,000 endpoints, a tenth of them
        // ejected, the scans took ten million comparisons a tick.
        let present: HashSet<SocketAddr> = if ejected.is_empty() {
            HashSet::new()
        } else {
            hosts.iter().map(|h| h.endpoint.address()).collect()
        };
        ejected.retain(|address, _| present.contains(address));
        let base = self.policy.base_ejection_time;
        let max_steps = self.max_steps();
        // The flags change together at the end: one snapshot for the tick, however many
        // endpoints it ejects or returns (each snapshot rebuilds every set's balancer).
        let mut changes = Vec::new();
        for host in hosts.iter() {
            let endpoint = &host.endpoint;
            let Some(ejection) = ejected.get_mut(&endpoint.address()) else {
                continue;
            };
            match ejection.until {
                Some(until) if until <= now => {
                    ejection.until = None;
                    ejection.since = now;
                    endpoint.outliers().reset();
                    changes.push((endpoint.address(), HealthFlags::EJECTED, false));
                    tracing::info!(cluster = %cluster.name(), endpoint = %endpoint.address(), "outlier detection: endpoint returns to rotation");
                }
                None if ejection.steps > 0
                    && now.saturating_duration_since(ejection.since) >= base =>
                {
                    ejection.steps -= 1;
                    ejection.since = now;
                }
                _ => {}
            }
        }
        let mut out = ejected.values().filter(|e| e.until.is_some()).count();
        let max_out = max_ejected(self.policy.max_ejection_percent, hosts.len());
        for host in hosts.iter() {
            let endpoint = &host.endpoint;
            let ejected_now = ejected
                .get(&endpoint.address())
                .is_some_and(|e| e.until.is_some());
            if ejected_now {
                continue;
            }
            let Some(reason) = endpoint.outliers().over(&self.policy) else {
                continue;
            };
            endpoint.outliers().reset();
            if out >= max_out {
                self.stats.overflow.inc();
                continue;
            }
            out += 1;
            let ejection = ejected.entry(endpoint.address()).or_insert(Ejection {
                steps: 0,
                until: None,
                since: now,
            });
            ejection.steps = ejection.steps.saturating_add(1).min(max_steps);
            let time = base
                .saturating_mul(ejection.steps)
                .min(self.policy.max_ejection_time);
            ejection.until = Some(deadline_after(now, time));
            ejection.since = now;
            endpoint
                .outliers()
                .ejections
                .fetch_add(1, Ordering::Relaxed);
            self.stats.ejections[reason as usize].inc();
            changes.push((endpoint.address(), HealthFlags::EJECTED, true));
            tracing::warn!(cluster = %cluster.name(), endpoint = %endpoint.address(), reason = reason.name(), ejected_for = ?time, "outlier detection: endpoint ejected");
        }
        self.show_active(out);
        // Out of the lock: publishing takes the cluster's, which an update holds while it
        // clears the ejections.
        drop(ejected);
        cluster.set_health(&changes);
    }
}

/// The most of `hosts` endpoints ejected at once: `percent` of them rounded down, but at least
/// one (Envoy's rule): rounded down alone, a cluster of fewer than 100 / `percent` endpoints
/// (three at 10%) could eject none, however dead one of them is. 0% ejects none.
fn max_ejected(percent: f64, hosts: usize) -> usize {
    if percent <= 0.0 {
        return 0;
    }
    // Exact for any cluster size a config holds; `as` saturates, and the percentage is at most
    // 100, so the product never exceeds `hosts`.
    ((percent * hosts as f64 / 100.0).floor() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::tests::{addr, cluster, picked};

    fn policy() -> OutlierDetectionSpec {
        OutlierDetectionSpec {
            consecutive_errors: 3,
            consecutive_local_origin_failures: 2,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 50.0,
            max_ejection_time: Duration::from_secs(25),
            successful_active_health_check_uneject_host: true,
        }
    }

    #[test]
    fn streaks_count_by_origin_and_end_with_an_answer() {
        let thresholds = OutlierThresholds::default();
        let counters = OutlierCounters::default();
        let error = AttemptOutcome::Answered(ResponseStatus::ServerError);
        assert!(!counters.record(&error, &thresholds), "detection off");
        thresholds.set(Some(&policy()));
        assert!(!counters.record(&error, &thresholds));
        assert!(!counters.record(&AttemptOutcome::Timeout, &thresholds));
        assert!(!counters.record(&AttemptOutcome::Reset { sent: false }, &thresholds));
        assert!(!counters.record(&AttemptOutcome::ConnectFailure, &thresholds));
        assert!(
            counters.record(&AttemptOutcome::Reset { sent: true }, &thresholds),
            "the third upstream failure reaches the threshold"
        );
        assert_eq!(counters.over(&policy()), Some(Reason::ConsecutiveErrors));
        let ok = AttemptOutcome::Answered(ResponseStatus::ApplicationError);
        assert!(!counters.record(&ok, &thresholds));
        assert_eq!(
            counters.over(&policy()),
            None,
            "an answer ends both streaks"
        );
        assert!(!counters.record(&AttemptOutcome::ConnectFailure, &thresholds));
        assert!(counters.record(&AttemptOutcome::ConnectFailure, &thresholds));
        assert_eq!(
            counters.over(&policy()),
            Some(Reason::ConsecutiveLocalOriginFailures)
        );
    }

    /// Fails the endpoint at `port` `n` times in a row, as the router records it.
    fn fail(cluster: &ClusterHandle, port: u16, n: u32) {
        let snapshot = cluster.snapshot();
        let Some(host) = snapshot
            .hosts
            .iter()
            .find(|h| h.endpoint.address() == addr(port))
        else {
            return;
        };
        let error = AttemptOutcome::Answered(ResponseStatus::ServerError);
        for _ in 0..n {
            cluster.attempt_ended(&host.endpoint, &error, Duration::ZERO, Instant::now());
        }
    }

    /// A detector of `c`, as its health monitor starts one.
    fn fresh_detector(c: &ClusterHandle) -> Result<Detector, &'static str> {
        Ok(Detector {
            policy: c.spec().outlier_detection.ok_or("no policy")?,
            stats: Stats::new(c),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_are_capped_grow_and_end() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(
            "name: c
endpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 }, { address: 127.0.0.1:3 }, { address: 127.0.0.1:4 } ]
outlier_detection: { consecutive_errors: 3, base_ejection_time: 10s, max_ejection_time: 25s, max_ejection_percent: 50 }",
        )?;
        let detector = fresh_detector(&c)?;
        fail(&c, 1, 2);
        detector.tick(&c, Instant::now());
        assert_eq!(picked(&c).len(), 4, "two errors are not three");
        for port in [1, 2, 3] {
            fail(&c, port, 3);
        }
        detector.tick(&c, Instant::now());
        let out: Vec<bool> = c.status().endpoints.iter().map(|e| e.ejected).collect();
        assert_eq!(out, [true, true, false, false], "at most half of four");
        assert_eq!(detector.stats.overflow.get(), 1);
        assert_eq!(detector.stats.active.get(), 2);

        tokio::time::advance(Duration::from_secs(10)).await;
        detector.tick(&c, Instant::now());
        assert_eq!(picked(&c).len(), 4, "back after the base ejection time");
        fail(&c, 1, 3);
        detector.tick(&c, Instant::now());
        tokio::time::advance(Duration::from_secs(19)).await;
        detector.tick(&c, Instant::now());
        assert!(
            c.status().endpoints[0].ejected,
            "the second ejection lasts twice as long"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        detector.tick(&c, Instant::now());
        assert!(!c.status().endpoints[0].ejected);
        assert_eq!(c.status().endpoints[0].ejections, 2);
        Ok(())
    }

    /// A cluster too small for its `max_ejection_percent` to make a whole endpoint (three at
    /// 10%) still ejects one, and only one; at 0% none.
    #[tokio::test(start_paused = true)]
    async fn a_small_cluster_ejects_one_endpoint() -> Result<(), Box<dyn std::error::Error>> {
        let yaml = |percent: u32| {
            format!(
                "name: c
endpoints: [ {{ address: 127.0.0.1:1 }}, {{ address: 127.0.0.1:2 }}, {{ address: 127.0.0.1:3 }} ]
outlier_detection: {{ consecutive_errors: 3, max_ejection_percent: {percent} }}"
            )
        };
        let c = cluster(&yaml(10))?;
        let detector = fresh_detector(&c)?;
        fail(&c, 1, 3);
        fail(&c, 2, 3);
        detector.tick(&c, Instant::now());
        let out: Vec<bool> = c.status().endpoints.iter().map(|e| e.ejected).collect();
        assert_eq!(out, [true, false, false], "one of three at 10%");
        assert_eq!(detector.stats.overflow.get(), 1);

        let c = cluster(&yaml(0))?;
        let detector = fresh_detector(&c)?;
        fail(&c, 1, 3);
        detector.tick(&c, Instant::now());
        assert_eq!(picked(&c).len(), 3, "0% ejects none");
        assert_eq!(detector.stats.overflow.get(), 1);
        Ok(())
    }

    /// Ejections stop growing at `max_ejection_time`, and so does what an endpoint must live
    /// down: after a long outage (ejected again at each return, twenty times), three base
    /// ejection times back in rotation (10 s up to 25 s is three steps) make its next ejection
    /// a base ejection time again.
    #[tokio::test(start_paused = true)]
    async fn ejection_growth_stops_at_the_longest_ejection()
    -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(
            "name: c
endpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ]
outlier_detection: { consecutive_errors: 3, base_ejection_time: 10s, max_ejection_time: 25s, max_ejection_percent: 50 }",
        )?;
        let detector = fresh_detector(&c)?;
        for _ in 0..20 {
            fail(&c, 1, 3);
            detector.tick(&c, Instant::now());
            assert!(c.status().endpoints[0].ejected);
            tokio::time::advance(Duration::from_secs(25)).await;
            detector.tick(&c, Instant::now());
            assert!(!c.status().endpoints[0].ejected, "back after 25 s at most");
        }
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(10)).await;
            detector.tick(&c, Instant::now());
        }
        fail(&c, 1, 3);
        detector.tick(&c, Instant::now());
        assert!(c.status().endpoints[0].ejected);
        tokio::time::advance(Duration::from_secs(10)).await;
        detector.tick(&c, Instant::now());
        assert!(
            !c.status().endpoints[0].ejected,
            "ejected for a base ejection time again"
        );
        Ok(())
    }

    /// A tick that ejects two endpoints publishes one snapshot, and so does one that returns
    /// them.
    #[tokio::test(start_paused = true)]
    async fn a_tick_publishes_one_snapshot() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(
            "name: c
endpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 }, { address: 127.0.0.1:3 }, { address: 127.0.0.1:4 } ]
outlier_detection: { consecutive_errors: 3, base_ejection_time: 10s, max_ejection_percent: 50 }",
        )?;
        let detector = fresh_detector(&c)?;
        let version = c.snapshot().version;
        fail(&c, 1, 3);
        fail(&c, 2, 3);
        detector.tick(&c, Instant::now());
        assert_eq!(picked(&c), [addr(3), addr(4)].into());
        assert_eq!(c.snapshot().version, version + 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        detector.tick(&c, Instant::now());
        assert_eq!(picked(&c).len(), 4);
        assert_eq!(c.snapshot().version, version + 2);
        Ok(())
    }

    /// An update that rebuilds the endpoints (new pool settings: an `idle_timeout` here) makes
    /// new ones: an endpoint ejected before stays out, from the update on, for the rest of its
    /// ejection, and returns when it ends.
    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_rebuilt_by_an_update_stays_ejected()
    -> Result<(), Box<dyn std::error::Error>> {
        let yaml = |idle: &str| {
            format!(
                "name: c
endpoints: [ {{ address: 127.0.0.1:1 }}, {{ address: 127.0.0.1:2 }} ]
idle_timeout: {idle}
outlier_detection: {{ consecutive_errors: 3, base_ejection_time: 10s, max_ejection_percent: 50 }}"
            )
        };
        let c = cluster(&yaml("1m"))?;
        let detector = fresh_detector(&c)?;
        fail(&c, 1, 3);
        detector.tick(&c, Instant::now());
        assert_eq!(picked(&c), [addr(2)].into());
        let rebuilt = crate::config::ClusterSpec::from_yaml(&yaml("2m"))?;
        c.update(
            &rebuilt.into(),
            None,
            None,
            &crate::cluster::Resolved::new(),
        )?;
        assert_eq!(picked(&c), [addr(2)].into(), "out from the update on");
        tokio::time::advance(Duration::from_secs(1)).await;
        detector.tick(&c, Instant::now());
        assert_eq!(picked(&c), [addr(2)].into(), "still ejected");
        assert!(c.status().endpoints[0].ejected);
        assert_eq!(detector.stats.active.get(), 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        detector.tick(&c, Instant::now());
        assert_eq!(picked(&c).len(), 2, "back when its ejection ends");
        assert_eq!(detector.stats.active.get(), 0);
        Ok(())
    }

    /// An active health check that ends an ejection lowers the gauge of ejected endpoints at
    /// once, not at the detector's next review (an hour away here).
    #[tokio::test(start_paused = true)]
    async fn an_ejection_a_passing_check_ends_leaves_the_gauge_at_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(
            "name: c
endpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ]
outlier_detection: { consecutive_errors: 3, interval: 1h, base_ejection_time: 1h, max_ejection_time: 1h, max_ejection_percent: 50 }",
        )?;
        let detector = fresh_detector(&c)?;
        fail(&c, 1, 3);
        detector.tick(&c, Instant::now());
        assert_eq!(detector.stats.active.get(), 1);
        let back = c.readmit(&[addr(1), addr(2)]);
        assert_eq!(back, [(addr(1), HealthFlags::EJECTED, false)]);
        c.set_health(&back);
        assert!(!c.status().endpoints[0].ejected);
        assert_eq!(
            detector.stats.active.get(),
            0,
            "the gauge follows the return"
        );
        detector.tick(&c, Instant::now());
        assert_eq!(detector.stats.active.get(), 0);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_of_centuries_last_and_a_successor_counts_them_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(
            "name: c
endpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ]
outlier_detection: { consecutive_errors: 3, base_ejection_time: 10000000000000000000s, max_ejection_time: 10000000000000000000s, max_ejection_percent: 50 }",
        )?;
        let detector = fresh_detector(&c)?;
        fail(&c, 1, 3);
        detector.tick(&c, Instant::now());
        assert!(c.status().endpoints[0].ejected);
        // A detector that takes over (the cluster's settings changed) goes on with the
        // ejection, and counts it in the shared gauge once.
        let successor = fresh_detector(&c)?;
        drop(detector);
        tokio::time::advance(Duration::from_secs(3600)).await;
        successor.tick(&c, Instant::now());
        assert!(
            c.status().endpoints[0].ejected,
            "still ejected an hour later"
        );
        assert_eq!(successor.stats.active.get(), 1);
        Ok(())
    }

    /// Cluster updates that restart the detector (new outlier settings) and rebuild the
    /// endpoints (a new `idle_timeout`) leave ejections as they were: a second ejection (twice
    /// the base time) runs its whole course, not a base time from the update, and the endpoint
    /// keeps its count of ejections; an update without outlier detection ends them.
    #[tokio::test(start_paused = true)]
    async fn an_update_keeps_ejections_running_their_course()
    -> Result<(), Box<dyn std::error::Error>> {
        let yaml = |idle: &str, interval: &str| {
            format!(
                "name: c
endpoints: [ {{ address: 127.0.0.1:1 }}, {{ address: 127.0.0.1:2 }} ]
idle_timeout: {idle}
outlier_detection: {{ consecutive_errors: 3, interval: {interval}, base_ejection_time: 60s, max_ejection_percent: 50 }}"
            )
        };
        let c = cluster(&yaml("1m", "1s"))?;
        c.start_health();
        let ejected = || c.status().endpoints[0].ejected;
        fail(&c, 1, 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ejected(), "first ejection: 60 s");
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(!ejected());
        fail(&c, 1, 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ejected(), "second ejection: 120 s");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let updated =
            std::sync::Arc::new(crate::config::ClusterSpec::from_yaml(&yaml("2m", "2s"))?);
        c.update(&updated, None, None, &crate::cluster::Resolved::new())?;
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert!(ejected(), "80 s into a 120 s ejection");
        assert_eq!(c.status().endpoints[0].ejections, 2, "the count stands");
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert!(!ejected(), "back when its 120 s are up");

        fail(&c, 1, 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ejected());
        let off = std::sync::Arc::new(crate::config::ClusterSpec::from_yaml(
            "name: c\nendpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ]",
        )?);
        c.update(&off, None, None, &crate::cluster::Resolved::new())?;
        assert!(!ejected(), "detection off: no ejection");
        c.update(&updated, None, None, &crate::cluster::Resolved::new())?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !ejected(),
            "detection back on: the old ejection is forgotten"
        );
        c.stop_health();
        Ok(())
    }
}
