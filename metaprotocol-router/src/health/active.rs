//! Active health checks: each endpoint of the cluster is checked on a timer of its own, each
//! check bounded by `timeout`. The wait before its next check runs from the end of its last one
//! and depends on what that found, as Envoy's does ([`HealthCheckSpec::wait`]): `interval` while
//! it is in rotation and passing, `unhealthy_interval` while it is out, `unhealthy_edge_interval`
//! after a failed check that has not taken it out yet, `healthy_edge_interval` after a passed
//! one that has not brought it back yet, and `no_traffic_interval` (`no_traffic_healthy_interval`
//! for one in rotation) while the cluster has sent no request; plus, at random, up to
//! `interval_jitter_percent` of it and up to `interval_jitter` (Envoy adds both). Checks that
//! fall due within a tenth of the shortest interval start together, and their verdicts are
//! published in one snapshot. An endpoint new to the checker is checked at once (after a random
//! part of `initial_jitter`, when set: the first checks of a large cluster, or of one the proxy
//! starts with, spread over it instead of all opening their connections in one instant), those
//! an update or a DNS answer adds as soon as the snapshot that has them is published; after its
//! first check, its next waits an extra
//! share of the interval (one of [`SLOTS`], in turn), so that the checks of a large cluster
//! spread over the interval rather than all coming at once, each interval. An endpoint new to the
//! cluster starts out of rotation (`FAILED_ACTIVE_CHECK` with `PENDING_ACTIVE_CHECK`, as Envoy
//! starts a host added to a cluster with health checks), and its first check decides at once,
//! whatever the thresholds: passed, it enters rotation; failed, it stays out. An endpoint an
//! update keeps (or rebuilds at its address) keeps its state and its streak of checks, also
//! when the update restarts the checker (new check settings, connection settings or codec):
//! the streak lives with the endpoint ([`ClusterHandle::keep_check_streaks`]), and the new checker
//! checks each endpoint at once and counts on from it. An update that gives a cluster checks it
//! had none of makes its endpoints anew, awaiting their first check, which [`first_round`] runs
//! before the update is published (Envoy replaces a cluster by one whose first round has ended);
//! the checker the update starts goes on from that round, each endpoint's next check due when
//! that round's check of it says ([`Endpoint::next_check`]), not at once.
//!
//! Checks open connections the way the cluster's traffic does (with TLS, handshake and
//! certificate verification included), to the endpoint's address at its port, or at its
//! `health_check_port` when it has one (Envoy's `health_check_config.port_value`). A TCP check passes when a connection opens. A protocol
//! check sends the codec's probe request (a Dubbo heartbeat, a Thrift or bRPC method call) on a
//! connection of its own to the endpoint (never one that traffic uses, and never backing off: a
//! failed connect is simply a failed check; a probe that times out closes it, so that the next
//! check opens a new one) and passes on any answer the codec decodes for it, an error response
//! included: the server is alive and speaking the protocol (with `require_success`, an error
//! answer fails it instead, at once, as Envoy's Thrift checker). The exception is an answer
//! refusing the proxy's credentials (bRPC's `ERPCAUTH`), which fails the check: such a server
//! serves none of the proxy's calls. An HTTP check ([`super::http`]) passes on an expected status. After
//! `unhealthy_threshold` failed checks in a row an endpoint gets the `FAILED_ACTIVE_CHECK` flag
//! and leaves rotation (at its first HTTP status not expected, as Envoy takes a host whose
//! server answers that it is unhealthy: [`CheckResult::Unhealthy`]); after `healthy_threshold`
//! passed checks in a row it returns. An endpoint whose checks say it is
//! healthy (`healthy_threshold` passed in a row) and that outlier detection ejected returns too
//! (see [`ClusterHandle::readmit`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use metaprotocol_core::{Message, ResponseStatus};
use tokio_util::sync::CancellationToken;

use super::http::HttpProbe;
use crate::cluster::{ClusterHandle, Endpoint, HealthFlags, Host};
use crate::config::{HealthCheckSpec, ProbeSpec};
use crate::router::deadline_after;
use crate::stats::Counter;
use crate::transport::Connector;
use crate::upstream::ProbeConnection;

/// What one check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CheckResult {
    /// The endpoint answered as a healthy one does (a TCP connection that opened; a protocol
    /// probe's answer, an error answer too unless the check requires success; an expected HTTP
    /// status): counted towards `healthy_threshold`.
    Passed,
    /// No answer in time, a connection that failed to open or broke: counted towards
    /// `unhealthy_threshold`.
    Failed,
    /// The endpoint answered that it is not healthy (an HTTP status not expected, such as the
    /// 503 of a Spring Boot service shutting down): out of rotation at once, whatever
    /// `unhealthy_threshold`, as Envoy takes a host whose check fails this way.
    Unhealthy,
}

impl From<bool> for CheckResult {
    fn from(passed: bool) -> Self {
        if passed { Self::Passed } else { Self::Failed }
    }
}

/// How one endpoint is checked.
enum Prober {
    Tcp(SocketAddr, Connector),
    /// The probe's connection, its request, and whether an error answer fails the check.
    Request(Box<ProbeConnection>, Arc<Message>, bool),
    /// The endpoint's address as the probe checks it (its port the probe's), the probe.
    Http(SocketAddr, Arc<HttpProbe>, Connector),
}

impl Prober {
    /// What the check found within `timeout`.
    async fn check(&self, timeout: Duration) -> CheckResult {
        match self {
            Self::Tcp(address, connector) => connector.reachable(*address, timeout).await.into(),
            Self::Request(connection, probe, require_success) => {
                match connection.check(probe, timeout).await {
                    None => CheckResult::Failed,
                    Some(ResponseStatus::Ok) => CheckResult::Passed,
                    Some(_) if *require_success => CheckResult::Unhealthy,
                    Some(_) => CheckResult::Passed,
                }
            }
            Self::Http(target, probe, connector) => probe.check(*target, connector, timeout).await,
        }
    }
}

/// One endpoint's checks so far.
struct Checked {
    /// Shared with its check in flight.
    prober: Arc<Prober>,
    /// The endpoint's own health check port the prober asks, if it has one.
    port: Option<u16>,
    /// How the prober connects to the endpoint: as its pool does.
    connector: Connector,
    /// Its share of the interval added to the wait after its first check (in tenths), which
    /// spreads the checks of the endpoints that joined together; `None` once added.
    slot: Option<usize>,
    /// When its next check is due.
    next: tokio::time::Instant,
    /// Tells its checks' results from those of an endpoint that was at its address before (it
    /// left the cluster while its check ran, and came back).
    id: u64,
    /// True while a check of it runs: no two checks of one endpoint overlap.
    in_flight: bool,
    passed: u32,
    failed: u32,
}

/// The checker's series.
struct Stats {
    passed: Counter,
    failed: Counter,
}

impl Stats {
    /// The series of `cluster`'s checks.
    fn of(cluster: &ClusterHandle) -> Self {
        let outcome = |o: &str| {
            cluster.scope().counter_with(
                "health_checks",
                "Active health checks, by outcome (success, failure)",
                &[("outcome", o)],
            )
        };
        Self {
            passed: outcome("success"),
            failed: outcome("failure"),
        }
    }

    /// Counts one check that found `result`.
    fn count(&self, result: CheckResult) {
        match result {
            CheckResult::Passed => self.passed.inc(),
            CheckResult::Failed | CheckResult::Unhealthy => self.failed.inc(),
        }
    }
}

/// The HTTP probe of `spec`'s checks of `cluster`, if it probes with HTTP; an error (logged: no
/// checks can run) when its path or host cannot be sent.
fn http_probe(
    cluster: &ClusterHandle,
    spec: &HealthCheckSpec,
) -> Result<Option<Arc<HttpProbe>>, ()> {
    let ProbeSpec::Http(http) = &spec.probe else {
        return Ok(None);
    };
    match HttpProbe::new(http, cluster.name()) {
        Some(probe) => Ok(Some(Arc::new(probe))),
        None => {
            tracing::error!(cluster = %cluster.name(), "health check: the http probe's path or host cannot be sent; no checks run");
            Err(())
        }
    }
}

/// The shares of the interval the checks of endpoints that join together are spread over, one
/// starting every tenth of it: a cluster of thousands of endpoints opened a connection to every
/// one of them in the same instant each interval, a burst for the proxy's file descriptors and
/// for any firewall or connection tracker on the way. Checks due within a tenth of the shortest
/// interval start together and their verdicts are published in one snapshot, so the checks
/// rebuild the cluster's balancers at most this many times an interval, however many endpoints
/// change.
const SLOTS: usize = 10;

/// The endpoints a checker checks, and how it makes the prober of one new to it.
struct Endpoints {
    checked: HashMap<SocketAddr, Checked>,
    /// Endpoints take the slots in turn as they join.
    next_slot: usize,
    next_id: u64,
    http: Option<Arc<HttpProbe>>,
    probe: Option<Arc<Message>>,
    codec: Arc<dyn metaprotocol_core::CodecFactory>,
    connect_timeout: Duration,
    require_success: bool,
    /// Set once the cluster has sent a request: `no_traffic_interval` no longer applies.
    traffic: bool,
    /// The first check of an endpoint new to the checker waits a random part of it.
    initial_jitter: Duration,
}

/// A check that ended: its endpoint's address, the id the endpoint had, and what it found.
type Ended = (SocketAddr, u64, CheckResult);

impl Endpoints {
    /// None yet, for checks by `spec` with `http` or `probe` (neither: TCP checks) of a cluster
    /// speaking `codec`, connecting within `connect_timeout`.
    fn new(
        spec: &HealthCheckSpec,
        http: Option<Arc<HttpProbe>>,
        probe: Option<Arc<Message>>,
        codec: Arc<dyn metaprotocol_core::CodecFactory>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            checked: HashMap::new(),
            next_slot: 0,
            next_id: 0,
            http,
            probe,
            codec,
            connect_timeout,
            require_success: spec.require_success,
            traffic: false,
            initial_jitter: spec.initial_jitter,
        }
    }

    /// Takes the cluster's current members: forgets the endpoints that left, and those whose
    /// health check port or connector changed (checked anew, at the new port, the new way),
    /// and adds those new to it, due `now` (plus a random part of `initial_jitter`), or when
    /// the first round of the update that started the checker said ([`first_round`]). A map:
    /// the endpoints checked are kept by looking each up in it (a list took a hundred million
    /// comparisons a round for 10,000 endpoints). An endpoint awaiting its first check and not
    /// being checked is new, too: it left the cluster and came back between two looks.
    fn join(&mut self, handle: &ClusterHandle, now: tokio::time::Instant) {
        let snapshot = handle.snapshot();
        let members: HashMap<SocketAddr, &Host> = snapshot
            .hosts
            .iter()
            .map(|host| (host.endpoint.address(), &**host))
            .collect();
        self.checked.retain(|address, checked| {
            members.get(address).is_some_and(|host| {
                let pending = host
                    .endpoint
                    .health()
                    .has(HealthFlags::PENDING_ACTIVE_CHECK);
                host.health_check_port == checked.port
                    && host.endpoint.pool().connector().same(&checked.connector)
                    && (checked.in_flight || !pending)
            })
        });
        for (&address, host) in &members {
            if self.checked.contains_key(&address) {
                continue;
            }
            let (port, connector) = (host.health_check_port, host.endpoint.pool().connector());
            let prober = self.prober(address, port, connector);
            // Checked by that first round: its share of the interval was added then.
            let (next, slot) = match host.endpoint.next_check().take() {
                Some(due) => (due, None),
                None => {
                    let slot = self.next_slot;
                    self.next_slot = (slot + 1) % SLOTS;
                    (deadline_after(now, self.first_wait()), Some(slot))
                }
            };
            // Its streak so far: a checker an update restarted goes on from it.
            let (passed, failed) = host.endpoint.check_streak().get();
            self.next_id += 1;
            self.checked.insert(
                address,
                Checked {
                    prober: Arc::new(prober),
                    port,
                    connector: connector.clone(),
                    slot,
                    next,
                    id: self.next_id,
                    in_flight: false,
                    passed,
                    failed,
                },
            );
        }
    }

    /// How the endpoint at `address`, with its own health check `port` if it has one, is
    /// checked over connections `connector` opens.
    fn prober(&self, address: SocketAddr, port: Option<u16>, connector: &Connector) -> Prober {
        // Where its checks go: its own health check port first, then the probe's.
        let target = |probe_port: Option<u16>| match port.or(probe_port) {
            Some(port) => SocketAddr::new(address.ip(), port),
            None => address,
        };
        match (&self.http, &self.probe) {
            (Some(http), _) => Prober::Http(target(http.port()), http.clone(), connector.clone()),
            (None, Some(request)) => Prober::Request(
                Box::new(ProbeConnection::new(
                    target(None),
                    self.codec.clone(),
                    request,
                    connector.clone(),
                    self.connect_timeout,
                )),
                request.clone(),
                self.require_success,
            ),
            (None, None) => Prober::Tcp(target(None), connector.clone()),
        }
    }

    /// How long the first check of an endpoint new to the checker waits: a random part of
    /// `initial_jitter`.
    fn first_wait(&self) -> Duration {
        self.initial_jitter.mul_f64(fastrand::f64())
    }

    /// When the next check is due, if any endpoint is waiting for one.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.checked
            .values()
            .filter(|checked| !checked.in_flight)
            .map(|checked| checked.next)
            .min()
    }

    /// The checks due before `until` (of endpoints not being checked), to start together:
    /// each endpoint's address, its id and its prober.
    fn due(&mut self, until: tokio::time::Instant) -> Vec<(SocketAddr, u64, Arc<Prober>)> {
        self.checked
            .iter_mut()
            .filter(|(_, checked)| !checked.in_flight && checked.next < until)
            .map(|(&address, checked)| {
                checked.in_flight = true;
                (address, checked.id, checked.prober.clone())
            })
            .collect()
    }
}

/// The check of the endpoint at `address` (its `id`) by `prober`, bounded by `timeout`.
async fn check(address: SocketAddr, id: u64, prober: Arc<Prober>, timeout: Duration) -> Ended {
    (address, id, prober.check(timeout).await)
}

/// Runs the checks of `cluster` until `stop` (or the cluster is gone); `probe` is the request a
/// protocol check sends (`None`: TCP checks), over connections opened by the connector of each
/// endpoint's pool (TLS or not, as its traffic's).
pub(super) async fn run(
    cluster: Weak<ClusterHandle>,
    spec: HealthCheckSpec,
    probe: Option<Arc<Message>>,
    connect_timeout: Duration,
    stop: CancellationToken,
) {
    let Some(handle) = cluster.upgrade() else {
        return;
    };
    let added = handle.endpoints_added();
    let Ok(http) = http_probe(&handle, &spec) else {
        return;
    };
    let stats = Stats::of(&handle);
    let mut endpoints = Endpoints::new(&spec, http, probe, handle.codec(), connect_timeout);
    // Every endpoint is due at once (within `initial_jitter`): its first check runs as the
    // checker starts.
    endpoints.join(&handle, tokio::time::Instant::now());
    drop(handle);
    // Checks due within this window of each other start together.
    let window = spec.shortest_wait() / SLOTS as u32;
    let mut running = FuturesUnordered::new();
    loop {
        let next_due = endpoints.next_due();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)), if next_due.is_some() => {
                let Some(handle) = cluster.upgrade() else {
                    return;
                };
                let now = tokio::time::Instant::now();
                endpoints.join(&handle, now);
                drop(handle);
                for (address, id, prober) in endpoints.due(deadline_after(now, window)) {
                    running.push(check(address, id, prober, spec.timeout));
                }
            }
            _ = added.notified() => {
                // Endpoints an update or a DNS answer added are checked at once, not after an
                // interval: until then they are out of rotation (or in it, in panic mode,
                // unchecked).
                let Some(handle) = cluster.upgrade() else {
                    return;
                };
                endpoints.join(&handle, tokio::time::Instant::now());
            }
            Some(ended) = running.next() => {
                // Each check is judged as it ends, not when the slowest check started with it
                // ends (one that never answers would hold every other verdict for `timeout`);
                // those that ended together are published in one snapshot.
                let mut results = vec![ended];
                while let Some(Some(ended)) = running.next().now_or_never() {
                    results.push(ended);
                }
                let Some(handle) = cluster.upgrade() else {
                    return;
                };
                endpoints.traffic |= handle.stats().rq_total.get() > 0;
                record(&handle, &mut endpoints.checked, results, &spec, endpoints.traffic, &stats);
            }
        }
    }
}

/// Runs the first check of each of `members` (an endpoint and its own health check port), the
/// endpoints of an update that gives `cluster` active health checks by `spec` (sending `probe`,
/// over connections its codec and connectors open within `connect_timeout`), before the update
/// is published: Envoy replaces a cluster by one whose checks have had their first round, and
/// the endpoints, made anew awaiting their first check, enter rotation on a passed check and
/// stay out on a failed one, as those of a new cluster do. Each keeps its streak, which the
/// checker the update starts counts on from, and when its next check is due, as that checker
/// would have set it after a first check of its own (the wait its verdict calls for, jittered,
/// and its share of the interval). The checks run together, each within `timeout` after a
/// random part of `initial_jitter`; the endpoints stay awaiting their first check if no check
/// can run (an HTTP probe that cannot be sent).
pub(crate) async fn first_round(
    cluster: &ClusterHandle,
    spec: &HealthCheckSpec,
    probe: Option<Arc<Message>>,
    codec: Arc<dyn metaprotocol_core::CodecFactory>,
    connect_timeout: Duration,
    members: Vec<(Arc<Endpoint>, Option<u16>)>,
) {
    let Ok(http) = http_probe(cluster, spec) else {
        return;
    };
    let stats = Stats::of(cluster);
    let probers = Endpoints::new(spec, http, probe, codec, connect_timeout);
    let checks = members.into_iter().map(|(endpoint, port)| {
        let prober = probers.prober(endpoint.address(), port, endpoint.pool().connector());
        let first_wait = probers.first_wait();
        async move {
            tokio::time::sleep(first_wait).await;
            (endpoint, prober.check(spec.timeout).await)
        }
    });
    let ended = futures::future::join_all(checks).await;
    let now = tokio::time::Instant::now();
    let traffic = cluster.stats().rq_total.get() > 0;
    for (slot, (endpoint, result)) in ended.into_iter().enumerate() {
        stats.count(result);
        let passed = result == CheckResult::Passed;
        let failed = match result {
            CheckResult::Passed => 0,
            CheckResult::Failed => 1,
            CheckResult::Unhealthy => spec.unhealthy_threshold,
        };
        endpoint.check_streak().set(u32::from(passed), failed);
        let wait = next_wait(spec, passed, passed, traffic, Some(slot % SLOTS));
        endpoint.next_check().set(deadline_after(now, wait));
        endpoint
            .health()
            .set(HealthFlags::FAILED_ACTIVE_CHECK, !passed);
        endpoint
            .health()
            .set(HealthFlags::PENDING_ACTIVE_CHECK, false);
        if !passed {
            tracing::warn!(cluster = %cluster.name(), endpoint = %endpoint.address(), "health check: endpoint failed its first check, stays out of rotation");
        }
    }
}

/// Counts the check `results` and publishes the verdicts they reach, in one snapshot
/// however many endpoints they take out or bring back. The first check of an endpoint new to
/// the cluster decides at once, as Envoy's does: passed, it enters rotation whatever
/// `healthy_threshold`; failed, it stays out.
fn record(
    handle: &ClusterHandle,
    endpoints: &mut HashMap<SocketAddr, Checked>,
    results: Vec<Ended>,
    spec: &HealthCheckSpec,
    traffic: bool,
    stats: &Stats,
) {
    // Results of the endpoints still checked, not of any that left the cluster meanwhile.
    let results: Vec<(SocketAddr, CheckResult)> = results
        .into_iter()
        .filter_map(|(address, id, result)| {
            let checked = endpoints.get_mut(&address).filter(|c| c.id == id)?;
            checked.in_flight = false;
            Some((address, result))
        })
        .collect();
    let addresses: Vec<SocketAddr> = results.iter().map(|&(address, _)| address).collect();
    let states = handle.active_check_state(&addresses);
    let now = tokio::time::Instant::now();
    let mut verdicts = Vec::new();
    let mut healthy = Vec::new();
    let mut streaks = Vec::with_capacity(addresses.len());
    for ((address, result), (first, failing)) in results.into_iter().zip(states) {
        let Some(checked) = endpoints.get_mut(&address) else {
            continue;
        };
        stats.count(result);
        if result == CheckResult::Passed {
            checked.passed = checked.passed.saturating_add(1);
            checked.failed = 0;
        } else {
            checked.failed = checked.failed.saturating_add(1);
            if result == CheckResult::Unhealthy {
                checked.failed = checked.failed.max(spec.unhealthy_threshold);
            }
            checked.passed = 0;
        }
        streaks.push((address, checked.passed, checked.failed));
        let verdict = if first {
            verdicts.push((address, HealthFlags::PENDING_ACTIVE_CHECK, false));
            Some(result != CheckResult::Passed)
        } else {
            verdict(checked, spec)
        };
        if let Some(failing) = verdict {
            verdicts.push((address, HealthFlags::FAILED_ACTIVE_CHECK, failing));
        }
        if verdict == Some(false) {
            healthy.push(address);
        }
        let in_rotation = !verdict.unwrap_or(failing);
        let passed = result == CheckResult::Passed;
        let wait = next_wait(spec, passed, in_rotation, traffic, checked.slot.take());
        checked.next = deadline_after(now, wait);
    }
    handle.keep_check_streaks(&streaks);
    // In the same snapshot as the verdicts.
    verdicts.extend(handle.readmit(&healthy));
    let changed = handle.set_health(&verdicts);
    for (&(address, flag, on), changed) in verdicts.iter().zip(changed) {
        match (changed, flag, on) {
            (false, _, _) => {}
            (true, HealthFlags::PENDING_ACTIVE_CHECK, _) => {
                if endpoints.get(&address).is_some_and(|c| c.passed == 0) {
                    tracing::warn!(cluster = %handle.name(), endpoint = %address, "health check: new endpoint failed its first check, stays out of rotation");
                }
            }
            (true, HealthFlags::EJECTED, _) => {
                tracing::info!(cluster = %handle.name(), endpoint = %address, "health check passed: endpoint ejected by outlier detection returns to rotation");
            }
            (true, _, true) => {
                let failed = endpoints.get(&address).map_or(0, |c| c.failed);
                tracing::warn!(cluster = %handle.name(), endpoint = %address, failed, "health check: endpoint leaves rotation");
            }
            (true, _, false) => {
                tracing::info!(cluster = %handle.name(), endpoint = %address, "health check: endpoint returns to rotation");
            }
        }
    }
}

/// Whether the endpoint's checks in a row take it out of rotation (`Some(true)`) or bring it
/// back (`Some(false)`); asked again after every check, since an endpoint that left the cluster
/// and came back (a DNS answer without it, then with it) is another endpoint, whose flags
/// start anew.
fn verdict(checked: &Checked, spec: &HealthCheckSpec) -> Option<bool> {
    if checked.failed >= spec.unhealthy_threshold {
        Some(true)
    } else if checked.passed >= spec.healthy_threshold {
        Some(false)
    } else {
        None
    }
}

/// How long after a check that `passed` (or failed) of an endpoint now `in_rotation` (or not)
/// its next check waits, in a cluster that has sent requests (`traffic`) or not: the interval
/// that applies ([`HealthCheckSpec::wait`]), jittered, and after the first check of an endpoint
/// that joined in `slot`, its share of the interval, which spreads the checks of those that
/// joined with it.
fn next_wait(
    spec: &HealthCheckSpec,
    passed: bool,
    in_rotation: bool,
    traffic: bool,
    slot: Option<usize>,
) -> Duration {
    let wait = spec.wait(passed, in_rotation, traffic);
    let spread = slot.map_or(Duration::ZERO, |slot| wait / SLOTS as u32 * slot as u32);
    jittered(wait, spec.interval_jitter_percent, spec.interval_jitter).saturating_add(spread)
}

/// `wait` plus a random part of up to `percent` of it and another of up to `jitter`, as Envoy
/// adds its `interval_jitter_percent` and `interval_jitter`.
fn jittered(wait: Duration, percent: f64, jitter: Duration) -> Duration {
    let share = wait.mul_f64(percent / 100.0 * fastrand::f64());
    wait.saturating_add(share)
        .saturating_add(jitter.mul_f64(fastrand::f64()))
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::{BufMut, Bytes, BytesMut};
    use metaprotocol_core::{
        Codec, CodecError, CodecFactory, EncodeParams, LocalReply, MessageKind, Probe, Side,
        WireVariant,
    };

    use super::*;
    use crate::cluster::Resolved;
    use crate::cluster::tests::cluster;
    use crate::config::{ClusterSpec, ConfigError};
    use crate::stats::Metrics;

    /// Polls `cluster`'s status until endpoint `index` fails its checks (`failing`) or passes
    /// them, for at most 10 s.
    pub(in crate::health) async fn until_failing(
        cluster: &ClusterHandle,
        index: usize,
        failing: bool,
    ) -> bool {
        for _ in 0..500 {
            let status = cluster.status();
            if status.endpoints[index].failing_active_checks == failing {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Polls `cluster`'s status until endpoint `index` had its first check (it is no longer
    /// awaiting it), for at most 10 s.
    pub(in crate::health) async fn until_checked(cluster: &ClusterHandle, index: usize) -> bool {
        for _ in 0..500 {
            if !cluster.status().endpoints[index].awaiting_first_check {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// An endpoint that refuses connections stays out of rotation at its first check, and
    /// returns once it listens again; the live one enters at its first, and stays.
    #[tokio::test]
    async fn tcp_checks_take_a_dead_endpoint_out_and_bring_it_back()
    -> Result<(), Box<dyn std::error::Error>> {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        // Bound without listening: it refuses connections, and no other test can take its
        // port before it listens again.
        let (dead, dead_addr) = crate::testing::refusing_address()?;
        let c = cluster(&format!(
            "name: c
endpoints: [ {{ address: \"{}\" }}, {{ address: \"{dead_addr}\" }} ]
health_check: {{ interval: 50ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 2 }}",
            live.local_addr()?
        ))?;
        c.start_health();
        assert!(until_failing(&c, 0, false).await, "{:?}", c.status());
        assert!(until_checked(&c, 1).await, "{:?}", c.status());
        assert!(c.status().endpoints[1].failing_active_checks);
        let back = dead.listen(16)?;
        assert!(until_failing(&c, 1, false).await, "{:?}", c.status());
        c.stop_health();
        drop(back);
        Ok(())
    }

    /// An endpoint an update adds starts out of rotation: no pick goes to it until a check has
    /// found it healthy, so one that refuses connections takes none. Its first check runs as
    /// soon as the update is published, not at the next round (an hour away here), and decides
    /// at once: a live one enters rotation at its first passed check, whatever
    /// `healthy_threshold`; the refusing one stays out. (Half the endpoints stay in rotation
    /// meanwhile: with fewer, panic mode would spread picks over all of them, as Envoy's does.)
    #[tokio::test]
    async fn an_endpoint_an_update_adds_takes_no_pick_before_its_first_check_passes()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut live = Vec::new();
        for _ in 0..3 {
            live.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
        }
        // Bound without listening, to the end of the test: it refuses connections.
        let (_refusing, refusing_addr) = crate::testing::refusing_address()?;
        let addresses = [
            live[0].local_addr()?,
            live[1].local_addr()?,
            live[2].local_addr()?,
            refusing_addr,
        ];
        let yaml = |endpoints: &[SocketAddr]| {
            let endpoints: Vec<String> = endpoints
                .iter()
                .map(|a| format!("{{ address: \"{a}\" }}"))
                .collect();
            format!(
                "name: c
endpoints: [ {} ]
health_check: {{ interval: 1h, timeout: 2s, unhealthy_threshold: 3, healthy_threshold: 3 }}",
                endpoints.join(", ")
            )
        };
        let c = cluster(&yaml(&addresses[..2]))?;
        c.start_health();
        assert!(until_failing(&c, 0, false).await, "{:?}", c.status());
        assert!(until_failing(&c, 1, false).await, "{:?}", c.status());
        let spec = Arc::new(ClusterSpec::from_yaml(&yaml(&addresses))?);
        c.update(&spec, None, None, &Resolved::new())?;
        assert_eq!(
            crate::cluster::tests::picked(&c),
            addresses[..2].iter().copied().collect(),
            "picks right after the update"
        );
        assert!(until_failing(&c, 2, false).await, "{:?}", c.status());
        let checked = async {
            while c.status().endpoints[3].awaiting_first_check {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), checked).await?;
        assert!(c.status().endpoints[3].failing_active_checks);
        assert_eq!(
            crate::cluster::tests::picked(&c),
            addresses[..3].iter().copied().collect(),
        );
        c.stop_health();
        Ok(())
    }

    /// An endpoint's `health_check_port` is where its checks go (Envoy's
    /// `health_check_config.port_value`): its own port refuses connections, yet it stays in
    /// rotation while a check at that port passes; an endpoint without one is checked at its own.
    #[tokio::test]
    async fn an_endpoint_is_checked_at_its_health_check_port()
    -> Result<(), Box<dyn std::error::Error>> {
        let health = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        // Bound without listening, to the end of the test: they refuse connections.
        let mut sockets = Vec::new();
        let mut refusing = Vec::new();
        for _ in 0..2 {
            let (socket, address) = crate::testing::refusing_address()?;
            refusing.push(address);
            sockets.push(socket);
        }
        let c = cluster(&format!(
            "name: c
endpoints: [ {{ address: \"{}\", health_check_port: {} }}, {{ address: \"{}\" }} ]
health_check: {{ interval: 1h, timeout: 2s, unhealthy_threshold: 1, healthy_threshold: 1 }}",
            refusing[0],
            health.local_addr()?.port(),
            refusing[1]
        ))?;
        c.start_health();
        // Both are checked first in one group, whose verdicts are published together.
        assert!(until_failing(&c, 0, false).await, "{:?}", c.status());
        let status = c.status();
        assert!(
            status.endpoints[1].failing_active_checks && !status.endpoints[1].awaiting_first_check,
            "{status:?}"
        );
        c.stop_health();
        Ok(())
    }

    /// A protocol whose requests are their 8-byte id and whose answers are an 8-byte id and a
    /// status byte (0 ok, 1 an application error, else a server error), probing with a request:
    /// for what a probe's answer says.
    struct StatusCodec;

    impl CodecFactory for StatusCodec {
        fn protocol(&self) -> &'static str {
            "status"
        }

        fn new_codec(&self, _: Side, _: WireVariant) -> Box<dyn Codec> {
            Box::new(StatusCodec)
        }

        fn probe_request(&self, _: Probe<'_>) -> Option<Message> {
            Some(Message::new(MessageKind::Request, 0, Bytes::new()))
        }
    }

    impl Codec for StatusCodec {
        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
            if src.len() < 9 {
                return Ok(None);
            }
            let frame = src.split_to(9);
            let mut id = [0; 8];
            id.copy_from_slice(&frame[..8]);
            let mut answer =
                Message::new(MessageKind::Response, u64::from_be_bytes(id), Bytes::new());
            answer.status = match frame[8] {
                0 => ResponseStatus::Ok,
                1 => ResponseStatus::ApplicationError,
                _ => ResponseStatus::ServerError,
            };
            Ok(Some(answer))
        }

        fn encode(
            &mut self,
            _: &Message,
            params: &EncodeParams<'_>,
            dst: &mut BytesMut,
        ) -> Result<(), CodecError> {
            dst.put_u64(params.request_id);
            Ok(())
        }

        fn encode_local_reply(
            &mut self,
            _: &Message,
            _: &LocalReply,
            _: &mut BytesMut,
        ) -> Result<(), CodecError> {
            Ok(())
        }

        fn encode_heartbeat_reply(
            &mut self,
            _: &Message,
            _: &mut BytesMut,
        ) -> Result<(), CodecError> {
            Ok(())
        }
    }

    /// A server of [`StatusCodec`] on 127.0.0.1 answering every request with `status`: its
    /// address, its task, and the count of requests it read.
    async fn answering(
        status: u8,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>, Arc<AtomicUsize>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let read = requests.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                let read = read.clone();
                tokio::spawn(async move {
                    let mut id = [0; 8];
                    while connection.read_exact(&mut id).await.is_ok() {
                        read.fetch_add(1, Ordering::Relaxed);
                        let mut answer = id.to_vec();
                        answer.push(status);
                        if connection.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok((address, server, requests))
    }

    /// The cluster `yaml` says, speaking [`StatusCodec`] (its probes answered by [`answering`]).
    fn status_cluster(yaml: &str) -> Result<Arc<ClusterHandle>, Box<dyn std::error::Error>> {
        let spec = Arc::new(ClusterSpec::from_yaml(yaml)?);
        Ok(ClusterHandle::new(
            &spec,
            "status".into(),
            Arc::new(StatusCodec),
            Metrics::new().root().detached("cluster", "c"),
            None,
            &Resolved::new(),
        )?)
    }

    /// With `require_success` (Envoy's Thrift checker, which expects a successful reply), an
    /// error answer to the probe takes the endpoint out at its first such answer, whatever
    /// `unhealthy_threshold`; without it, any answer passes (the server is alive and speaking
    /// the protocol), and a successful answer passes either way.
    #[tokio::test]
    async fn an_error_answer_fails_a_probe_that_requires_success()
    -> Result<(), Box<dyn std::error::Error>> {
        for (status, require_success, fails) in [
            (2, true, true),
            (1, true, true),
            (2, false, false),
            (0, true, false),
        ] {
            let (address, server, requests) = answering(status).await?;
            let c = status_cluster(&format!(
                "name: c
endpoints: [ {{ address: \"{address}\" }} ]
health_check: {{ interval: 20ms, timeout: 2s, unhealthy_threshold: 1000, healthy_threshold: 1,
                 probe: {{ method: ping }}, require_success: {require_success} }}"
            ))?;
            c.start_health();
            let case = format!("status {status}, require_success: {require_success}");
            if fails {
                assert!(until_checked(&c, 0).await, "{case}: {:?}", c.status());
                assert!(c.status().endpoints[0].failing_active_checks, "{case}");
            } else {
                // Once asked three times, two checks' verdicts are in (rounds follow each other).
                let asked = async {
                    while requests.load(Ordering::Relaxed) < 3 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), asked).await?;
                assert!(!c.status().endpoints[0].failing_active_checks, "{case}");
            }
            c.stop_health();
            server.abort();
        }
        Ok(())
    }

    /// Checks that start together are judged each as it ends: an endpoint whose server takes
    /// the probe's connection and never answers holds back no other endpoint's verdict (all
    /// of a new cluster's endpoints wait out of rotation for their first), only its own, until
    /// its `timeout`.
    #[tokio::test]
    async fn a_check_that_does_not_end_holds_back_no_other_endpoints_verdict()
    -> Result<(), Box<dyn std::error::Error>> {
        let (answering, server, _) = answering(0).await?;
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let silent_address = silent.local_addr()?;
        let holding = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                held.push(connection);
            }
        });
        let c = status_cluster(&format!(
            "name: c
endpoints: [ {{ address: \"{answering}\" }}, {{ address: \"{silent_address}\" }} ]
health_check: {{ interval: 1h, timeout: 60s, unhealthy_threshold: 1, healthy_threshold: 1,
                 probe: {{ method: ping }} }}"
        ))?;
        c.start_health();
        let checked = until_checked(&c, 0).await;
        let status = c.status();
        c.stop_health();
        server.abort();
        holding.abort();
        assert!(
            checked,
            "the answering endpoint's verdict waited: {status:?}"
        );
        assert!(!status.endpoints[0].failing_active_checks, "{status:?}");
        assert!(status.endpoints[1].awaiting_first_check, "{status:?}");
        Ok(())
    }

    /// An endpoint that outlier detection ejected for an hour returns as soon as its checks
    /// find it healthy (Envoy's `successful_active_health_check_uneject_host`), with fresh
    /// streaks; turned off, it stays ejected however many checks pass.
    #[tokio::test]
    async fn a_passing_check_ends_an_ejection() -> Result<(), Box<dyn std::error::Error>> {
        use metaprotocol_core::ResponseStatus;

        use crate::health::OutlierThresholds;
        use crate::router::AttemptOutcome;

        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let second = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        for readmit in [true, false] {
            let c = cluster(&format!(
                "name: c
endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ]
outlier_detection: {{ consecutive_errors: 3, base_ejection_time: 1h, max_ejection_time: 1h, successful_active_health_check_uneject_host: {readmit} }}
health_check: {{ interval: 50ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }}",
                first.local_addr()?,
                second.local_addr()?
            ))?;
            c.start_health();
            let endpoint = c.snapshot().hosts[0].endpoint.clone();
            let error = AttemptOutcome::Answered(ResponseStatus::ServerError);
            for _ in 0..3 {
                c.attempt_ended(
                    &endpoint,
                    &error,
                    Duration::ZERO,
                    tokio::time::Instant::now(),
                );
            }
            let ejected_once = async {
                while c.status().endpoints[0].ejections == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), ejected_once).await?;
            if readmit {
                let back = async {
                    while c.status().endpoints[0].ejected {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), back).await?;
                // Fresh streaks: the third error in a row reaches the threshold again.
                let thresholds = OutlierThresholds::default();
                thresholds.set(c.spec().outlier_detection.as_ref());
                let reached: Vec<bool> = (0..3)
                    .map(|_| endpoint.outliers().record(&error, &thresholds))
                    .collect();
                assert_eq!(reached, [false, false, true]);
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(c.status().endpoints[0].ejected, "{:?}", c.status());
            }
            c.stop_health();
        }
        Ok(())
    }

    /// A group of checks that changes several endpoints (here their first checks, which bring
    /// three new endpoints into rotation) publishes one snapshot, not one per endpoint (each a
    /// rebuild of every set: tens of milliseconds for a ring of thousands).
    #[tokio::test]
    async fn a_group_of_checks_that_changes_many_endpoints_rebuilds_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut live = Vec::new();
        for _ in 0..3 {
            live.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
        }
        // Bound without listening: it refuses connections.
        let (_dead, dead) = crate::testing::refusing_address()?;
        let mut endpoints = vec![format!("{{ address: \"{dead}\" }}")];
        for listener in &live {
            endpoints.push(format!("{{ address: \"{}\" }}", listener.local_addr()?));
        }
        let c = cluster(&format!(
            "name: c
endpoints: [ {} ]
health_check: {{ interval: 1h, timeout: 2s, unhealthy_threshold: 1, healthy_threshold: 1 }}",
            endpoints.join(", ")
        ))?;
        let version = c.snapshot().version;
        c.start_health();
        for index in 1..4 {
            assert!(until_failing(&c, index, false).await, "{:?}", c.status());
        }
        assert_eq!(c.snapshot().version, version + 1);
        assert!(c.status().endpoints[0].failing_active_checks);
        c.stop_health();
        Ok(())
    }

    /// A round's checks are spread over its interval, in slots, rather than all started at
    /// once (a burst of connections to every endpoint of a large cluster each interval): the
    /// second round's checks of 20 endpoints arrive over much of a 1 s interval.
    #[tokio::test]
    async fn a_round_spreads_its_checks_over_the_interval() -> Result<(), Box<dyn std::error::Error>>
    {
        let (accepted, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
        let mut endpoints = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..20 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            endpoints.push(format!("{{ address: \"{}\" }}", listener.local_addr()?));
            let accepted = accepted.clone();
            servers.push(tokio::spawn(async move {
                while let Ok((connection, _)) = listener.accept().await {
                    drop(connection);
                    if accepted.send(tokio::time::Instant::now()).is_err() {
                        return;
                    }
                }
            }));
        }
        let c = cluster(&format!(
            "name: c
endpoints: [ {} ]
health_check: {{ interval: 1s, interval_jitter_percent: 0, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1 }}",
            endpoints.join(", ")
        ))?;
        c.start_health();
        let mut times = Vec::new();
        let collect = async {
            while times.len() < 40 {
                match arrivals.recv().await {
                    Some(at) => times.push(at),
                    None => return,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), collect).await?;
        c.stop_health();
        for server in servers {
            server.abort();
        }
        // The first round checks the new endpoints at once; the second is spread.
        let second = &times[20..];
        let first = second.iter().min().copied();
        let last = second.iter().max().copied();
        let span = match (first, last) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        };
        assert!(
            span >= Duration::from_millis(250),
            "second round within {span:?}"
        );
        Ok(())
    }

    /// An update that changes only the checks' settings (their interval) restarts the checker,
    /// which goes on from each endpoint's streak: an endpoint out of rotation that passed one
    /// check of the two `healthy_threshold` asks returns at the next one passed, whatever
    /// updates came between (Envoy keeps a kept host's health across updates). The checker
    /// restarted from nothing needed two more.
    #[tokio::test]
    async fn an_update_of_the_checks_keeps_each_endpoints_streak()
    -> Result<(), Box<dyn std::error::Error>> {
        let (socket, address) = crate::testing::refusing_address()?;
        let spec = |interval: &str| {
            ClusterSpec::from_yaml(&format!(
                "name: c
endpoints: [ {{ address: \"{address}\" }} ]
health_check: {{ interval: {interval}, timeout: 10s, unhealthy_threshold: 1, healthy_threshold: 2 }}"
            ))
            .map(Arc::new)
        };
        let c = cluster(&format!(
            "name: c\nendpoints: [ {{ address: \"{address}\" }} ]
health_check: {{ interval: 1h, timeout: 10s, unhealthy_threshold: 1, healthy_threshold: 2 }}"
        ))?;
        let passed = c.scope().counter_with(
            "health_checks",
            "Active health checks, by outcome (success, failure)",
            &[("outcome", "success")],
        );
        c.start_health();
        assert!(until_checked(&c, 0).await, "{:?}", c.status());
        assert!(c.status().endpoints[0].failing_active_checks);
        // Listening from now on, at the address it refused at: its checks pass. Each update
        // restarts the checker, which checks it at once (the interval is an hour).
        let _listener = socket.listen(16)?;
        let until_passed = |count: u64| {
            let passed = passed.clone();
            async move {
                for _ in 0..1000 {
                    if passed.get() >= count {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            }
        };
        c.update(&spec("2h")?, None, None, &Resolved::new())?;
        assert!(until_passed(1).await, "no check passed");
        assert!(
            c.status().endpoints[0].failing_active_checks,
            "one check passed of two"
        );
        c.update(&spec("3h")?, None, None, &Resolved::new())?;
        assert!(until_passed(2).await, "no second check passed");
        assert!(
            until_failing(&c, 0, false).await,
            "two checks passed in a row, across an update, and it stays out: {:?}",
            c.status()
        );
        Ok(())
    }

    #[test]
    fn the_jitter_stays_within_its_share() {
        let waits: Vec<Duration> = (0..100)
            .map(|_| jittered(Duration::from_secs(1), 10.0, Duration::ZERO))
            .collect();
        assert!(waits.iter().all(|w| (1000..=1100).contains(&w.as_millis())));
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
        // `interval_jitter` adds up to its own time, whatever the interval, on top.
        let waits: Vec<Duration> = (0..100)
            .map(|_| jittered(Duration::from_secs(1), 10.0, Duration::from_secs(5)))
            .collect();
        assert!(waits.iter().all(|w| (1000..=6100).contains(&w.as_millis())));
        assert!(waits.iter().any(|w| w.as_millis() > 1100), "{waits:?}");
        // An interval of centuries (the config has no upper bound) saturates, not panics.
        assert_eq!(jittered(Duration::MAX, 10.0, Duration::MAX), Duration::MAX);
    }

    /// With `initial_jitter`, the first checks of a cluster of 1,000 endpoints are due over it,
    /// not in one instant (a connection to each endpoint at once, as the proxy starts): each
    /// within it, and no tenth of it holding more than twice its share (100 expected; more than
    /// 200 happens with a chance below 1e-20). Without it, all are due at once.
    #[tokio::test]
    async fn initial_jitter_spreads_the_first_checks() -> Result<(), ConfigError> {
        let endpoints: Vec<String> = (0..1000)
            .map(|i| format!("{{ address: \"127.0.0.1:{}\" }}", 10_000 + i))
            .collect();
        let due = |jitter: &str| -> Result<Vec<Duration>, ConfigError> {
            let c = cluster(&format!(
                "name: c\nendpoints: [ {} ]\nhealth_check: {{ interval: 5s, initial_jitter: {jitter} }}",
                endpoints.join(", ")
            ))?;
            let spec = c.spec();
            let check = spec
                .health_check
                .as_ref()
                .ok_or_else(|| ConfigError::new("health_check", "missing"))?;
            let mut checker = Endpoints::new(check, None, None, c.codec(), spec.connect_timeout);
            let now = tokio::time::Instant::now();
            checker.join(&c, now);
            Ok(checker.checked.values().map(|e| e.next - now).collect())
        };
        let spread = due("10s")?;
        assert_eq!(spread.len(), 1000);
        assert!(
            spread.iter().all(|d| *d < Duration::from_secs(10)),
            "{spread:?}"
        );
        let mut tenths = [0; 10];
        for d in &spread {
            tenths[(d.as_secs_f64()) as usize] += 1;
        }
        assert!(tenths.iter().all(|&n| n <= 200), "{tenths:?}");
        let at_once = due("0s")?;
        assert!(at_once.iter().all(|d| d.is_zero()), "{at_once:?}");
        Ok(())
    }

    /// Which interval follows a check, as Envoy chooses: `interval` for an endpoint in rotation
    /// whose check passed, the edge intervals while a streak has not reached its threshold yet,
    /// `unhealthy_interval` for one out of rotation, and the no-traffic intervals before the
    /// cluster's first request; each unset one falls back as Envoy's does.
    #[test]
    fn the_wait_after_a_check_depends_on_what_it_found() -> Result<(), ConfigError> {
        let spec = |fields: &str| -> Result<HealthCheckSpec, ConfigError> {
            let cluster = ClusterSpec::from_yaml(&format!(
                "name: c\nendpoints: [ {{ address: 127.0.0.1:1 }} ]\nhealth_check: {{ interval: 10s{fields} }}"
            ))?;
            cluster
                .health_check
                .ok_or_else(|| ConfigError::new("health_check", "missing"))
        };
        let s = |secs: u64| Duration::from_secs(secs);
        let all = spec(
            ", unhealthy_interval: 20s, unhealthy_edge_interval: 1s, healthy_edge_interval: 2s, no_traffic_interval: 60s, no_traffic_healthy_interval: 120s",
        )?;
        // (passed, in rotation, traffic)
        let cases = [
            ((true, true, true), s(10)),
            ((true, false, true), s(2)),
            ((false, true, true), s(1)),
            ((false, false, true), s(20)),
            ((true, true, false), s(120)),
            ((false, false, false), s(60)),
            ((false, true, false), s(60)),
        ];
        for ((passed, in_rotation, traffic), expected) in cases {
            assert_eq!(
                all.wait(passed, in_rotation, traffic),
                expected,
                "{passed} {in_rotation} {traffic}"
            );
        }
        let fallbacks = spec(", unhealthy_interval: 20s, no_traffic_interval: 60s")?;
        assert_eq!(
            fallbacks.wait(false, true, true),
            s(20),
            "edge: unhealthy_interval"
        );
        assert_eq!(fallbacks.wait(true, false, true), s(10), "edge: interval");
        assert_eq!(fallbacks.wait(true, true, false), s(60));
        let plain = spec("")?;
        assert_eq!(
            plain.wait(false, false, false),
            s(10),
            "no no_traffic_interval"
        );
        assert_eq!(plain.shortest_wait(), s(10));
        assert_eq!(all.shortest_wait(), s(1));
        let refused = |fields: &str| {
            spec(fields)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(refused(", unhealthy_interval: 0s").contains("unhealthy_interval"));
        assert!(
            refused(", no_traffic_healthy_interval: 1m").contains("no_traffic_healthy_interval")
        );
        Ok(())
    }

    /// An endpoint out of rotation is checked at `unhealthy_interval`, not `interval`, and at
    /// `healthy_edge_interval` once it passes again: one that refused connections at its first
    /// check is back within moments of listening again (two passed checks), not hours later.
    #[tokio::test]
    async fn an_endpoint_out_of_rotation_is_checked_at_the_unhealthy_interval()
    -> Result<(), Box<dyn std::error::Error>> {
        let (dead, dead_addr) = crate::testing::refusing_address()?;
        let c = cluster(&format!(
            "name: c
endpoints: [ {{ address: \"{dead_addr}\" }} ]
health_check: {{ interval: 1h, unhealthy_interval: 20ms, healthy_edge_interval: 20ms, timeout: 2s,
                unhealthy_threshold: 1, healthy_threshold: 2 }}"
        ))?;
        c.start_health();
        assert!(until_checked(&c, 0).await, "{:?}", c.status());
        let back = dead.listen(16)?;
        assert!(until_failing(&c, 0, false).await, "{:?}", c.status());
        c.stop_health();
        drop(back);
        Ok(())
    }

    /// While its cluster has sent no request, an endpoint is checked at `no_traffic_interval`:
    /// once in half a second, not every 20 ms; a cluster that has sent one is checked at
    /// `interval`.
    #[tokio::test]
    async fn a_cluster_without_traffic_is_checked_at_the_no_traffic_interval()
    -> Result<(), Box<dyn std::error::Error>> {
        for traffic in [false, true] {
            let (accepted, mut checks) = tokio::sync::mpsc::unbounded_channel();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            let server = tokio::spawn(async move {
                while let Ok((connection, _)) = listener.accept().await {
                    drop(connection);
                    if accepted.send(()).is_err() {
                        return;
                    }
                }
            });
            let c = cluster(&format!(
                "name: c
endpoints: [ {{ address: \"{address}\" }} ]
health_check: {{ interval: 20ms, no_traffic_interval: 1h, timeout: 2s, unhealthy_threshold: 1, healthy_threshold: 1 }}"
            ))?;
            if traffic {
                c.stats().rq_total.inc();
            }
            c.start_health();
            let mut seen = 0;
            if traffic {
                let three = async {
                    while seen < 3 && checks.recv().await.is_some() {
                        seen += 1;
                    }
                };
                tokio::time::timeout(Duration::from_secs(20), three).await?;
            } else {
                // The first check may come late on a loaded machine; once it came, no second
                // one within 500 ms (25 intervals).
                tokio::time::timeout(Duration::from_secs(20), checks.recv()).await?;
                seen += 1;
                let counted = async {
                    while checks.recv().await.is_some() {
                        seen += 1;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), counted).await;
                assert_eq!(seen, 1, "checks in 500 ms after the first, without traffic");
            }
            c.stop_health();
            server.abort();
        }
        Ok(())
    }
}
