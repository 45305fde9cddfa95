//! Clusters: named groups of endpoints, each published as a swappable snapshot.
//!
//! A [`ClusterHandle`] lives as long as its cluster is configured; routes hold it and a
//! [`SubsetId`], with a [`SubsetLease`] that keeps the subset registered while the route lives.
//! Every change (membership, weights, labels, health, a new subset selector)
//! builds a new [`ClusterSnapshot`] and swaps it in: requests in flight keep the snapshot they
//! loaded, new requests see the new one. Endpoints are kept by address across snapshots, so
//! their upstream connections survive updates. The [`ClusterManager`] holds the handles by name.
//!
//! A cluster also owns what protects it: its [`CircuitBreakers`] (checked by the router and its
//! pools), the thresholds at which the router wakes its outlier detector, and, once published,
//! the [`HealthMonitor`] whose tasks write its endpoints' health flags through
//! [`ClusterHandle::set_health`].
//!
//! Endpoints named by a host name are resolved before a cluster is built or updated and again
//! every `dns_refresh_rate` ([`dns`]); a new set of addresses rebuilds the snapshot as an
//! update would, and a failed resolution keeps the addresses last resolved.

mod circuit_breaker;
pub(crate) mod connectors;
pub(crate) mod dns;
mod endpoint;
mod snapshot;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use metaprotocol_core::{CodecFactory, Message};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use circuit_breaker::BreakerStatus;
pub(crate) use circuit_breaker::{
    Breaker, CircuitBreakers, ConnectionPermit, PendingPlace, RequestPlace, RetryRefusal,
};
use connectors::Connectors;
pub use endpoint::HealthState;
pub(crate) use endpoint::{ActiveRequest, Endpoint, HealthFlags};
use snapshot::Selector;
pub(crate) use snapshot::{ClusterSnapshot, Host, SubsetId};
pub use status::{ClusterStatus, EndpointStatus};

use crate::config::{
    ClusterSpec, ConfigError, LbPolicy, LocalitySpec, RetryBudgetSpec, same_cluster,
};
use crate::health::{self, Ejections, HealthMonitor, OutlierThresholds};
use crate::lb::LbSettings;
use crate::published::Published;
use crate::router::AttemptOutcome;
use crate::stats::{
    ClusterStats, EndpointStats, HealthStats, IstioDestination, IstioReporter, MetricsScope,
};
use crate::upstream::{PoolSettings, UpstreamPool};
pub(crate) use dns::Resolved;

/// How long past its checks' `timeout` a new cluster's first round of active health checks is
/// waited for ([`ClusterHandle::first_checks`]): the round's checks end by their `timeout`, and
/// this leaves their verdicts time to be published on a loaded proxy.
const FIRST_ROUND_SLACK: Duration = Duration::from_secs(1);

/// What a cluster was last built from; changed only by config updates and health changes,
/// under its lock.
struct ClusterState {
    spec: Arc<ClusterSpec>,
    protocol: String,
    codec: Arc<dyn CodecFactory>,
    /// How the endpoints are connected to (TLS or not); each kept while its TLS settings are
    /// unchanged.
    connectors: Connectors,
    endpoints: HashMap<SocketAddr, Arc<Endpoint>>,
    /// Subset selectors by [`SubsetId`]; the first (empty) selects the whole cluster.
    selectors: Vec<Selector>,
    /// Endpoints removed by an update while requests to them may still be in flight.
    retired: Vec<Weak<Endpoint>>,
    /// The addresses the spec's host names resolved to last.
    resolved: Resolved,
    /// The new answers for its host names taken so far ([`ClusterHandle::resolve`]): an update
    /// whose lookup began before the last one keeps that answer, not its own older one.
    answers: u64,
    version: u64,
    /// The proxy's own locality (`node.locality`), which locality-aware sets prefer.
    local: Option<LocalitySpec>,
    /// The request active health checks send (`None`: TCP checks, or no checks).
    probe: Option<Arc<Message>>,
    /// The running outlier detection and health checks, once the cluster is published.
    monitor: Option<HealthMonitor>,
    /// Which snapshot builds were asked for and which was published last.
    builds: Builds,
    /// Set when endpoints were installed since the last snapshot published: the one that has
    /// them wakes the health checks ([`ClusterHandle::endpoints_added`]).
    added: bool,
}

/// The snapshot builds a cluster was asked for, numbered in order. A health or address change
/// of a cluster whose balancers build a table (`ring_hash`, `maglev`: up to 2^20 points) asks
/// for a build on a blocking thread, out of the lock, while the published snapshot keeps
/// serving; changes that come while it builds are coalesced: a build whose state changed
/// meanwhile is dropped, and the newest state is built and published instead. A config update
/// is planned and built before it is published ([`ClusterHandle::prepare_update`]); a change
/// that comes meanwhile is asked for again when it is published.
#[derive(Debug, Default)]
struct Builds {
    /// The number of the last build asked for.
    requested: u64,
    /// The number of the build published last: a build is published only when it is the newest
    /// asked for, so an older one never replaces it.
    published: u64,
    /// True while a builder thread is at work or on its way.
    running: bool,
}

/// A configured cluster: its live snapshot, what it is rebuilt from, what protects it.
pub(crate) struct ClusterHandle {
    /// Itself, for the builder thread a change starts.
    me: Weak<ClusterHandle>,
    name: Arc<str>,
    stats: ClusterStats,
    scope: MetricsScope,
    /// Published, so that a connection reads it through a cache of its own (see
    /// [`ClusterHandle::published_snapshot`]).
    snapshot: Published<ClusterSnapshot>,
    state: Mutex<ClusterState>,
    breakers: Arc<CircuitBreakers>,
    outlier_thresholds: OutlierThresholds,
    /// Wakes the outlier detector when an endpoint's failure streak reaches its threshold.
    outlier_wake: Arc<Notify>,
    /// Wakes the active health checks when a published snapshot has endpoints new to the
    /// cluster, so that their first check runs at once rather than at the next round.
    added_wake: Arc<Notify>,
    /// Wakes those waiting for its first round of active health checks
    /// ([`ClusterHandle::first_checks`]) when health flags change or a snapshot is published.
    checked_wake: Notify,
    /// Its endpoints' ejections, kept across the detectors that updates start.
    ejections: Ejections,
    /// Set for `peak_ewma`: concluded attempts record their latency on their endpoint.
    records_latency: AtomicBool,
    /// Set once the cluster is removed from the config.
    retired: AtomicBool,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A hold on one subset selector of a cluster (see [`ClusterHandle::subset`]); dropping the
/// last one frees the selector.
pub(crate) struct SubsetLease {
    cluster: Arc<ClusterHandle>,
    id: SubsetId,
}

impl SubsetLease {
    /// The subset's id in its cluster's snapshots.
    pub fn id(&self) -> SubsetId {
        self.id
    }
}

impl Drop for SubsetLease {
    fn drop(&mut self) {
        self.cluster.release(self.id);
    }
}

impl std::fmt::Debug for SubsetLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubsetLease")
            .field("cluster", &self.cluster.name)
            .field("id", &self.id)
            .finish()
    }
}

fn pool_settings(spec: &ClusterSpec) -> PoolSettings {
    PoolSettings {
        connect_timeout: spec.connect_timeout,
        connections: spec.connections_per_endpoint as usize,
        idle_timeout: spec.idle_timeout,
        frame_timeout: spec.frame_timeout,
        max_requests_per_connection: spec.max_requests_per_connection,
    }
}

/// How the sets of `spec` are balanced, for a proxy at `local`.
fn lb_settings(spec: &ClusterSpec, local: Option<&LocalitySpec>) -> LbSettings {
    LbSettings {
        policy: spec.lb_policy,
        local: local.filter(|_| spec.locality_aware).cloned(),
        failover_threshold: spec.locality_failover_threshold,
        healthy_panic_threshold: spec.healthy_panic_threshold,
    }
}

impl ClusterHandle {
    /// Builds cluster `spec`, whose endpoints speak `protocol` through `codec`, with its series
    /// in `scope`, for a proxy at `local`; `resolved` has the addresses of its host names.
    /// Nothing runs until [`ClusterHandle::start_health`]. Its first snapshot is built at once,
    /// unless its balancers build a table (`ring_hash`, `maglev`: up to 2^20 points) and a
    /// runtime is there: then it is asked for and left to its builder, as a new subset's is
    /// ([`ClusterHandle::build_pending`]), and an empty snapshot (version 0) stands until then.
    pub fn new(
        spec: &Arc<ClusterSpec>,
        protocol: String,
        codec: Arc<dyn CodecFactory>,
        scope: MetricsScope,
        local: Option<LocalitySpec>,
        resolved: &Resolved,
    ) -> Result<Arc<Self>, ConfigError> {
        let probe = health::probe_request(spec.health_check.as_ref(), &codec)?;
        let stats = ClusterStats::new(&scope);
        let breakers = Arc::new(CircuitBreakers::new(&scope, spec.circuit_breakers.as_ref()));
        let outlier_thresholds = OutlierThresholds::default();
        outlier_thresholds.set(spec.outlier_detection.as_ref());
        let ejections = Ejections::default();
        ejections.set_policy(spec.outlier_detection.as_ref());
        let mut state = ClusterState {
            spec: spec.clone(),
            protocol,
            codec,
            connectors: Connectors::new(spec, None, &scope)?,
            endpoints: HashMap::new(),
            selectors: vec![Selector {
                labels: BTreeMap::new(),
                holders: 1,
            }],
            retired: Vec::new(),
            resolved: dns::kept(spec, resolved),
            answers: 0,
            version: 0,
            local,
            probe,
            monitor: None,
            builds: Builds::default(),
            added: false,
        };
        let plan = plan(&mut state, &stats, &breakers, &scope);
        // The checks start with a round of every endpoint: nothing to wake them for.
        state.added = false;
        let snapshot = if crate::lb::builds_table(spec.lb_policy)
            && tokio::runtime::Handle::try_current().is_ok()
        {
            state.builds.requested = 1;
            ClusterSnapshot::build(
                Vec::new(),
                &plan.selectors,
                &plan.settings,
                plan.retry_budget,
            )
        } else {
            let mut snapshot = plan.build();
            state.version = 1;
            snapshot.version = 1;
            snapshot
        };
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            name: spec.name.as_str().into(),
            stats,
            scope,
            snapshot: Published::new(Arc::new(snapshot)),
            state: Mutex::new(state),
            breakers,
            outlier_thresholds,
            outlier_wake: Arc::new(Notify::new()),
            added_wake: Arc::new(Notify::new()),
            checked_wake: Notify::new(),
            ejections,
            records_latency: AtomicBool::new(spec.lb_policy == LbPolicy::PeakEwma),
            retired: AtomicBool::new(false),
        }))
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Where its series live.
    pub fn scope(&self) -> &MetricsScope {
        &self.scope
    }

    pub fn breakers(&self) -> &Arc<CircuitBreakers> {
        &self.breakers
    }

    /// Its endpoints' ejections, for the outlier detector.
    pub fn ejections(&self) -> &Ejections {
        &self.ejections
    }

    /// What the outlier detector waits on besides its interval.
    pub fn outlier_wake(&self) -> Arc<Notify> {
        self.outlier_wake.clone()
    }

    /// What the active health checks wait on besides their rounds: notified when a snapshot
    /// with endpoints new to the cluster is published (an update, a DNS answer).
    pub fn endpoints_added(&self) -> Arc<Notify> {
        self.added_wake.clone()
    }

    /// The protocol its endpoints speak.
    pub fn protocol(&self) -> String {
        self.lock().protocol.clone()
    }

    /// The codec its endpoints speak.
    pub fn codec(&self) -> Arc<dyn CodecFactory> {
        self.lock().codec.clone()
    }

    /// The spec it was last built from.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec::clone(&self.lock().spec)
    }

    /// True if it was last built from `spec` (the config's spec it was built from, shared, is
    /// not compared field by field: an update of one cluster among thousands compares one).
    pub fn has_spec(&self, spec: &Arc<ClusterSpec>) -> bool {
        #[cfg(test)]
        crate::config::work::count(&crate::config::work::HANDLES_CHECKED);
        same_cluster(&self.lock().spec, spec)
    }

    /// True if it was last built from `spec`, speaking `protocol`, for a proxy at `local`.
    pub fn built_from(
        &self,
        spec: &Arc<ClusterSpec>,
        protocol: &str,
        local: Option<&LocalitySpec>,
    ) -> bool {
        #[cfg(test)]
        crate::config::work::count(&crate::config::work::HANDLES_CHECKED);
        let state = self.lock();
        same_cluster(&state.spec, spec)
            && state.protocol == protocol
            && state.local.as_ref() == local
    }

    /// True if its endpoints are checked by active health checks (its spec has `health_check`).
    pub fn checks_actively(&self) -> bool {
        self.lock().spec.health_check.is_some()
    }

    /// The current snapshot (a wait-free load).
    pub fn snapshot(&self) -> Guard<Arc<ClusterSnapshot>> {
        self.snapshot.load()
    }

    /// Its snapshots as published, for a reader that keeps a [`Cached`](crate::published::Cached)
    /// copy: a connection's requests read the current one without an `ArcSwap` load each.
    pub fn published_snapshot(&self) -> &Published<ClusterSnapshot> {
        &self.snapshot
    }

    /// Starts its outlier detection and health checks, unless they run already (a new cluster's
    /// start before it is published, see [`ClusterHandle::first_checks`]); updates restart them
    /// when their config changes, [`ClusterHandle::retire`] stops them.
    pub fn start_health(self: &Arc<Self>) {
        let mut state = self.lock();
        if state.monitor.is_none() {
            state.monitor = Some(HealthMonitor::start(self, &state.spec, state.probe.clone()));
        }
    }

    /// Waits, its health checks started ([`ClusterHandle::start_health`]), until the first
    /// check of each of its endpoints has decided whether it is in rotation and the snapshot
    /// with those verdicts is published, as Envoy does not use a cluster with active health
    /// checks before their first round has ended: a cluster that served at once had all its
    /// endpoints awaiting their first check, and so in panic mode, spreading its first calls
    /// over the dead ones too. Bounded: the round ends within the checks' `timeout` (after
    /// `initial_jitter`), and the wait by [`FIRST_ROUND_SLACK`] past that, after which the
    /// cluster serves as it is.
    pub async fn first_checks(&self) {
        let Some(bound) = self.lock().spec.health_check.as_ref().map(|check| {
            check
                .timeout
                .saturating_add(check.initial_jitter)
                .saturating_add(FIRST_ROUND_SLACK)
        }) else {
            return;
        };
        let deadline = crate::router::deadline_after(Instant::now(), bound);
        loop {
            let checked = self.checked_wake.notified();
            tokio::pin!(checked);
            // Registered before looking: a change between the look and the wait wakes it.
            checked.as_mut().enable();
            if !self.awaits_first_checks() {
                return;
            }
            if tokio::time::timeout_at(deadline, checked).await.is_err() {
                tracing::warn!(cluster = %self.name, ?bound, "health check: the first round of checks did not end in time; the cluster serves with endpoints not checked yet");
                return;
            }
        }
    }

    /// True while an endpoint awaits its first active check, or a snapshot asked for (with
    /// verdicts of such checks) is not published yet.
    fn awaits_first_checks(&self) -> bool {
        let state = self.lock();
        state.builds.published < state.builds.requested
            || state
                .endpoints
                .values()
                .any(|e| e.health().has(HealthFlags::PENDING_ACTIVE_CHECK))
    }

    /// Records how an attempt on `endpoint` ended, `elapsed` after it started: its latency
    /// (for `peak_ewma`) and its outcome (for outlier detection). Atomics only. Always inlined:
    /// with a timeout's call beside the request path's, the compiler stopped inlining it, and
    /// the call cost 15 to 40 instructions a request (callgrind, Dubbo, 64 in flight).
    #[inline(always)]
    pub fn attempt_ended(
        &self,
        endpoint: &Endpoint,
        outcome: &AttemptOutcome,
        elapsed: Duration,
        now: Instant,
    ) {
        if self.records_latency.load(Ordering::Relaxed)
            && matches!(
                outcome,
                AttemptOutcome::Answered(_) | AttemptOutcome::Timeout
            )
        {
            endpoint.rtt().record(elapsed, now);
        }
        if endpoint
            .outliers()
            .record(outcome, &self.outlier_thresholds)
        {
            self.outlier_wake.notify_one();
        }
    }

    /// Sets or clears health flags: each change `(address, flag, on)` sets or clears `flag` of
    /// the endpoint at `address`. Publishes one new snapshot when any of them changed its
    /// endpoint (a rebuild costs every set's balancer, tens of milliseconds for a ring of
    /// thousands of endpoints: a round of checks or a detector tick that changes many endpoints
    /// pays it once; a `ring_hash` or `maglev` cluster builds it on a blocking thread, see
    /// [`Builds`]); for each change, true if it changed its endpoint.
    pub fn set_health(&self, changes: &[(SocketAddr, u8, bool)]) -> Vec<bool> {
        let mut state = self.lock();
        let changed: Vec<bool> = changes
            .iter()
            .map(|&(address, flag, on)| {
                // A check or a detector that was already running when an update removed it
                // finishes its round: what it finds no longer takes endpoints out of rotation.
                let source_gone = match flag {
                    HealthFlags::FAILED_ACTIVE_CHECK => state.spec.health_check.is_none(),
                    HealthFlags::EJECTED => state.spec.outlier_detection.is_none(),
                    _ => false,
                };
                !(on && source_gone)
                    && state
                        .endpoints
                        .get(&address)
                        .is_some_and(|endpoint| endpoint.health().set(flag, on))
            })
            .collect();
        // An endpoint's first check done changes no set: only the flags beside it do.
        let rebuild = changes
            .iter()
            .zip(&changed)
            .any(|(&(_, flag, _), &changed)| changed && flag != HealthFlags::PENDING_ACTIVE_CHECK);
        if rebuild {
            self.rebuild_soon(&mut state);
        }
        drop(state);
        self.checked_wake.notify_waiters();
        changed
    }

    /// For each of `addresses`, whether its endpoint still waits for its first active check
    /// (see [`HealthFlags::PENDING_ACTIVE_CHECK`]), and whether its checks keep it out of
    /// rotation (`FAILED_ACTIVE_CHECK`).
    pub fn active_check_state(&self, addresses: &[SocketAddr]) -> Vec<(bool, bool)> {
        let state = self.lock();
        addresses
            .iter()
            .map(|address| {
                state.endpoints.get(address).map_or((false, false), |e| {
                    let flags = e.health();
                    (
                        flags.has(HealthFlags::PENDING_ACTIVE_CHECK),
                        flags.has(HealthFlags::FAILED_ACTIVE_CHECK),
                    )
                })
            })
            .collect()
    }

    /// Keeps each `(address, passed, failed)`, the streak of active checks of the endpoint at
    /// `address`, with the endpoint (see [`endpoint::CheckStreak`]).
    pub fn keep_check_streaks(&self, streaks: &[(SocketAddr, u32, u32)]) {
        let state = self.lock();
        for &(address, passed, failed) in streaks {
            if let Some(endpoint) = state.endpoints.get(&address) {
                endpoint.check_streak().set(passed, failed);
            }
        }
    }

    /// Ends the ejections of those of `addresses` (endpoints active health checks found
    /// healthy) that outlier detection ejected, when its policy says so, with fresh failure
    /// streaks; returns the changes that bring them back, for [`ClusterHandle::set_health`].
    pub fn readmit(&self, addresses: &[SocketAddr]) -> Vec<(SocketAddr, u8, bool)> {
        let state = self.lock();
        let now = Instant::now();
        addresses
            .iter()
            .filter_map(|&address| {
                let endpoint = state.endpoints.get(&address)?;
                if !endpoint.health().has(HealthFlags::EJECTED)
                    || !self.ejections.readmit(address, now)
                {
                    return None;
                }
                endpoint.outliers().reset();
                Some((address, HealthFlags::EJECTED, false))
            })
            .collect()
    }

    /// A lease on the subset whose endpoints carry all of `labels`, registering it (and asking
    /// for a snapshot that has it, see [`ClusterHandle::rebuild_for_subset`]) when no lease
    /// holds it yet. The subset is kept while any lease on it is held: routes hold theirs, so
    /// that a subset no live route table names anymore stops costing each rebuild of the cluster.
    pub fn subset(self: &Arc<Self>, labels: &BTreeMap<String, String>) -> SubsetLease {
        let mut state = self.lock();
        let held = state
            .selectors
            .iter()
            .position(|s| s.holders > 0 && s.labels == *labels);
        let index = match held {
            Some(index) => {
                state.selectors[index].holders += 1;
                index
            }
            None => {
                let selector = Selector {
                    labels: labels.clone(),
                    holders: 1,
                };
                let index = match state.selectors.iter().position(|s| s.holders == 0) {
                    Some(free) => {
                        state.selectors[free] = selector;
                        free
                    }
                    None => {
                        state.selectors.push(selector);
                        state.selectors.len() - 1
                    }
                };
                self.rebuild_for_subset(&mut state);
                index
            }
        };
        SubsetLease {
            cluster: self.clone(),
            id: SubsetId(index),
        }
    }

    /// Drops a lease on subset `id`; the last one frees the selector. Its set stays in the
    /// snapshot until the next rebuild: nothing routes to it, and a rebuild now would cost every
    /// update that drops a route table.
    fn release(&self, id: SubsetId) {
        let mut state = self.lock();
        if let Some(selector) = state.selectors.get_mut(id.0) {
            selector.holders = selector.holders.saturating_sub(1);
            if selector.holders == 0 {
                selector.labels = BTreeMap::new();
            }
        }
    }

    /// Checks that `spec` can replace this cluster's config (speaking `codec`, when that
    /// changes too), changing nothing.
    pub fn check_update(
        &self,
        spec: &ClusterSpec,
        codec: Option<&Arc<dyn CodecFactory>>,
    ) -> Result<(), ConfigError> {
        let codec = codec.cloned().unwrap_or_else(|| self.codec());
        health::probe_request(spec.health_check.as_ref(), &codec)?;
        self.next_connectors(spec).map(|_| ())
    }

    /// The connectors for `spec`: the current ones while their TLS settings stay, so that the
    /// endpoints keep their connections.
    fn next_connectors(&self, spec: &ClusterSpec) -> Result<Connectors, ConfigError> {
        let state = self.lock();
        if state.spec.tls == spec.tls
            && state.spec.transport_socket_matches == spec.transport_socket_matches
        {
            return Ok(state.connectors.clone());
        }
        let running = (state.spec.clone(), state.connectors.clone());
        drop(state);
        Connectors::new(spec, Some((&running.0, &running.1)), &self.scope)
    }

    /// Plans the update of this cluster to `spec` (with `codec`, when the protocol or codec
    /// options changed) for a proxy at `local`, with `resolved` the addresses of its host names,
    /// looked up when it had taken `answers` answers ([`ClusterHandle::answers_taken`]):
    /// its endpoints (those that stay reused, new ones made) and what its snapshot is built
    /// from, changing nothing the cluster has. [`PreparedUpdate::build`] builds the snapshot,
    /// the part that may take long, and [`BuiltUpdate::commit`] publishes it. An update that
    /// gives the cluster health checks reuses what an earlier plan of the same update made and
    /// checked ([`BuiltUpdate::checked`]): its endpoints that fit, with the verdicts of their
    /// first round, and its connectors while the TLS settings are the same (`codec` is the
    /// caller's to take from it, [`Checked::codec`]), so that they fit.
    pub fn prepare_update(
        self: &Arc<Self>,
        spec: &Arc<ClusterSpec>,
        codec: Option<(String, Arc<dyn CodecFactory>)>,
        local: Option<LocalitySpec>,
        resolved: &Resolved,
        answers: u64,
        checked: Option<&Checked>,
    ) -> Result<PreparedUpdate, ConfigError> {
        let probe_codec = codec
            .as_ref()
            .map_or_else(|| self.codec(), |(_, codec)| codec.clone());
        let probe = health::probe_request(spec.health_check.as_ref(), &probe_codec)?;
        let connectors = match checked.and_then(|checked| checked.connectors(spec)) {
            Some(connectors) => connectors,
            None => self.next_connectors(spec)?,
        };
        let resolved = dns::kept(spec, resolved);
        let state = self.lock();
        let checks_anew = spec.health_check.is_some() && state.spec.health_check.is_none();
        let (protocol, next_codec) = match &codec {
            Some((protocol, codec)) => (protocol.as_str(), codec),
            None => (state.protocol.as_str(), &state.codec),
        };
        let inputs = PlanInputs {
            spec,
            protocol,
            codec: next_codec,
            connectors: &connectors,
            resolved: &resolved,
            local: local.as_ref(),
            endpoints: &state.endpoints,
            checked: checked.map(|checked| &checked.endpoints),
            selectors: &state.selectors,
            checks_anew,
        };
        let (endpoints, plan) = plan_hosts(&inputs, &self.stats, &self.breakers, &self.scope);
        let seen = state.builds.requested;
        drop(state);
        Ok(PreparedUpdate {
            next: NextConfig {
                cluster: self.clone(),
                spec: spec.clone(),
                codec,
                connectors,
                probe,
                local,
                resolved,
                answers,
                endpoints,
                seen,
                checks_anew,
            },
            plan,
        })
    }

    /// Plans a rebuild of its current config, for a subset registered by a route table being
    /// compiled (see [`ClusterHandle::build_pending`]).
    pub fn prepare_rebuild(self: &Arc<Self>) -> Result<PreparedUpdate, ConfigError> {
        let (spec, local, resolved, answers) = {
            let state = self.lock();
            (
                state.spec.clone(),
                state.local.clone(),
                state.resolved.clone(),
                state.answers,
            )
        };
        self.prepare_update(&spec, None, local, &resolved, answers, None)
    }

    /// True when a snapshot was asked for and none published since: a subset registered by a
    /// route table being compiled, which the update compiling it builds before it publishes
    /// the table (see [`ClusterHandle::subset`]), the first snapshot of a new `ring_hash` or
    /// `maglev` cluster (see [`ClusterHandle::new`]), or a health change's build under way.
    pub fn build_pending(&self) -> bool {
        #[cfg(test)]
        crate::config::work::count(&crate::config::work::HANDLES_CHECKED);
        let state = self.lock();
        state.builds.published < state.builds.requested
    }

    /// Plans, builds and publishes an update at once (see [`ClusterHandle::prepare_update`]).
    #[cfg(test)]
    pub fn update(
        self: &Arc<Self>,
        spec: &Arc<ClusterSpec>,
        codec: Option<(String, Arc<dyn CodecFactory>)>,
        local: Option<LocalitySpec>,
        resolved: &Resolved,
    ) -> Result<u64, ConfigError> {
        let answers = self.answers_taken();
        Ok(self
            .prepare_update(spec, codec, local, resolved, answers, None)?
            .build()
            .commit())
    }

    /// Publishes `update`, built for this cluster; returns the cluster's new version. It does
    /// not wait and builds no table. An endpoint it planned with retired meanwhile (a DNS answer
    /// changed the cluster's addresses) makes its snapshot stale: the cluster takes its config,
    /// and its snapshot is asked for again as a DNS answer's would be (see [`Builds`]), on a
    /// blocking thread for `ring_hash` and `maglev`, the running one serving until then. So
    /// does an answer the cluster took since the update's lookup began, which its names keep
    /// over the update's older one; the endpoints an update that gives the cluster health checks
    /// made anew stay the cluster's then, with the verdicts of their first round
    /// ([`PreparedUpdate::first_checks`]): the update's snapshot, which has them, is published,
    /// and serves until the one asked for again (which reuses them) is.
    fn commit(self: &Arc<Self>, update: BuiltUpdate) -> u64 {
        let BuiltUpdate { mut next, snapshot } = update;
        let mut state = self.lock();
        // Looked up in another family, the cluster's answer is not one for the new spec.
        let fresher = state.answers != next.answers
            && state.spec.dns_lookup_family == next.spec.dns_lookup_family
            && {
                let mut replaced = false;
                for (name, addresses) in &mut next.resolved {
                    if let Some(taken) = state.resolved.get(name).filter(|a| *a != addresses) {
                        addresses.clone_from(taken);
                        replaced = true;
                    }
                }
                replaced
            };
        let old = state.spec.clone();
        let restart = old.outlier_detection != next.spec.outlier_detection
            || old.health_check != next.spec.health_check
            || old.connect_timeout != next.spec.connect_timeout
            || old.tls != next.spec.tls
            || old.transport_socket_matches != next.spec.transport_socket_matches
            || next.codec.is_some();
        let mut state_next = ClusterState {
            spec: next.spec.clone(),
            protocol: state.protocol.clone(),
            codec: state.codec.clone(),
            connectors: next.connectors,
            endpoints: std::mem::take(&mut state.endpoints),
            selectors: state.selectors.clone(),
            retired: std::mem::take(&mut state.retired),
            resolved: next.resolved,
            answers: state.answers,
            version: state.version,
            local: next.local,
            probe: next.probe,
            monitor: state.monitor.take(),
            builds: std::mem::take(&mut state.builds),
            added: state.added,
        };
        if let Some((protocol, codec)) = next.codec {
            state_next.protocol = protocol;
            state_next.codec = codec;
        }
        // A health change or new subset since the snapshot was planned: built again next.
        let mut missed = state_next.builds.requested != next.seen;
        // Flags whose source the update removes would never be cleared.
        let spec = &next.spec;
        let stopped = [
            (
                old.outlier_detection.is_some() && spec.outlier_detection.is_none(),
                HealthFlags::EJECTED,
            ),
            (
                old.health_check.is_some() && spec.health_check.is_none(),
                HealthFlags::FAILED_ACTIVE_CHECK | HealthFlags::PENDING_ACTIVE_CHECK,
            ),
        ];
        for (removed, flag) in stopped {
            if removed {
                for endpoint in state_next.endpoints.values().chain(next.endpoints.values()) {
                    missed |= endpoint.health().set(flag, false);
                }
                if flag == HealthFlags::EJECTED {
                    self.ejections.clear();
                }
            }
        }
        let retired_meanwhile = next
            .endpoints
            .values()
            .any(|e| e.health().has(HealthFlags::DRAINING));
        let snapshot = if retired_meanwhile || (fresher && !next.checks_anew) {
            drop(next.endpoints);
            missed = true;
            None
        } else {
            missed |= retire_replaced(&mut state_next, next.endpoints, next.checks_anew);
            // Fresher: its endpoints, made anew for the checks it gives and through their
            // first round, are the cluster's now, and the build asked for reuses them with
            // their verdicts. Its own snapshot, which has them, serves until that build
            // publishes (on a blocking thread for `ring_hash` and `maglev`): the running one
            // has the endpoints they replace, unchecked.
            missed |= fresher;
            Some(snapshot)
        };
        if restart && state_next.monitor.is_some() {
            state_next.monitor = Some(HealthMonitor::start(
                self,
                &state_next.spec,
                state_next.probe.clone(),
            ));
        }
        *state = state_next;
        self.breakers.set_limits(spec.circuit_breakers.as_ref());
        self.outlier_thresholds.set(spec.outlier_detection.as_ref());
        self.ejections.set_policy(spec.outlier_detection.as_ref());
        self.records_latency
            .store(spec.lb_policy == LbPolicy::PeakEwma, Ordering::Relaxed);
        if let Some(snapshot) = snapshot {
            state.builds.requested += 1;
            let build = state.builds.requested;
            self.publish(&mut state, build, snapshot);
        }
        if missed {
            self.rebuild_soon(&mut state);
        }
        state.version
    }

    /// The addresses its host names resolved to last.
    pub fn resolved(&self) -> Resolved {
        self.lock().resolved.clone()
    }

    /// Takes a new resolution of its host names: when the addresses changed, rebuilds the
    /// snapshot (as an update of the same spec would; on a blocking thread for `ring_hash` and
    /// `maglev`, see [`Builds`]) and returns true.
    pub fn resolve(&self, resolved: &Resolved) -> bool {
        let mut state = self.lock();
        let kept = dns::kept(&state.spec, resolved);
        if kept == state.resolved {
            return false;
        }
        state.resolved = kept;
        state.answers += 1;
        self.rebuild_soon(&mut state);
        true
    }

    /// The new answers for its host names it has taken so far: read before a lookup, it tells
    /// the update made from that lookup whether an answer came meanwhile.
    pub fn answers_taken(&self) -> u64 {
        self.lock().answers
    }

    /// Builds the next snapshot of `state` and publishes it before returning.
    fn rebuild_now(&self, state: &mut ClusterState) {
        state.builds.requested += 1;
        let build = state.builds.requested;
        let snapshot = plan(state, &self.stats, &self.breakers, &self.scope).build();
        self.publish(state, build, snapshot);
    }

    /// Asks for the next snapshot of `state`, for a new subset: a `ring_hash` or `maglev`
    /// cluster on a runtime leaves it to the update compiling the route table that registered
    /// the subset, which builds it on a blocking thread and publishes it with the table (see
    /// [`ClusterHandle::build_pending`]); the others build it at once.
    fn rebuild_for_subset(&self, state: &mut ClusterState) {
        if crate::lb::builds_table(state.spec.lb_policy)
            && tokio::runtime::Handle::try_current().is_ok()
        {
            state.builds.requested += 1;
        } else {
            self.rebuild_now(state);
        }
    }

    /// Asks for the next snapshot of `state`: built at once, unless its balancers build a table
    /// and a runtime is there to take the build to a blocking thread (see [`Builds`]).
    fn rebuild_soon(&self, state: &mut ClusterState) {
        let runtime = tokio::runtime::Handle::try_current();
        let me = self.me.upgrade();
        let (Ok(runtime), Some(me), true) =
            (runtime, me, crate::lb::builds_table(state.spec.lb_policy))
        else {
            self.rebuild_now(state);
            return;
        };
        state.builds.requested += 1;
        if !state.builds.running {
            state.builds.running = true;
            runtime.spawn_blocking(move || me.build_requested());
        }
    }

    /// A builder thread's work: builds the newest state asked for, out of the lock, until the
    /// newest build is published.
    fn build_requested(&self) {
        let mut state = self.lock();
        while state.builds.published < state.builds.requested {
            let build = state.builds.requested;
            let plan = plan(&mut state, &self.stats, &self.breakers, &self.scope);
            drop(state);
            let snapshot = plan.build();
            state = self.lock();
            // Asked for again meanwhile: this build is stale, and the loop builds the newest.
            if state.builds.requested == build {
                self.publish(&mut state, build, snapshot);
            }
        }
        state.builds.running = false;
    }

    /// Publishes `snapshot`, build number `build` of `state`, as its next version.
    fn publish(&self, state: &mut ClusterState, build: u64, mut snapshot: ClusterSnapshot) {
        state.version += 1;
        snapshot.version = state.version;
        state.builds.published = build;
        self.snapshot.swap(Arc::new(snapshot));
        if std::mem::take(&mut state.added) {
            self.added_wake.notify_one();
        }
        self.checked_wake.notify_waiters();
    }

    /// What `/clusters` shows.
    pub fn status(&self) -> ClusterStatus {
        let mut state = self.lock();
        state.retired.retain(|e| e.strong_count() > 0);
        let snapshot = self.snapshot.load();
        let members = snapshot.hosts.iter().map(|h| EndpointStatus::of(h));
        let draining = state
            .retired
            .iter()
            .filter_map(Weak::upgrade)
            .map(|e| EndpointStatus::retired(&e));
        ClusterStatus {
            name: self.name.to_string(),
            protocol: state.protocol.clone(),
            version: snapshot.version,
            circuit_breakers: self.breakers.status(&self.stats),
            endpoints: members.chain(draining).collect(),
        }
    }

    /// Marks the cluster removed from the config: its health work stops and its host names are
    /// no longer refreshed. Its series go when the handle drops (the last route and request
    /// using it are gone).
    pub fn retire(&self) {
        self.stop_health();
        self.retired.store(true, Ordering::Release);
    }

    /// True once the cluster is gone from the config.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Stops its health work (the cluster is gone, or the proxy stops).
    pub fn stop_health(&self) {
        self.lock().monitor = None;
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Drop for ClusterHandle {
    /// The cluster is gone (no route uses it): its series go too.
    fn drop(&mut self) {
        self.scope.retire();
    }
}

/// What the next snapshot of `state` is built from (see [`plan_hosts`]); endpoints that left
/// are marked draining.
fn plan(
    state: &mut ClusterState,
    stats: &ClusterStats,
    breakers: &Arc<CircuitBreakers>,
    scope: &MetricsScope,
) -> SnapshotPlan {
    let (endpoints, plan) = plan_hosts(&state.inputs(), stats, breakers, scope);
    // Planned and installed under one lock: no health changed in between.
    retire_replaced(state, endpoints, false);
    plan
}

/// What a cluster's next endpoints and snapshot are planned from.
struct PlanInputs<'a> {
    spec: &'a ClusterSpec,
    protocol: &'a str,
    codec: &'a Arc<dyn CodecFactory>,
    connectors: &'a Connectors,
    resolved: &'a Resolved,
    local: Option<&'a LocalitySpec>,
    /// The endpoints it has now, reused where they fit.
    endpoints: &'a HashMap<SocketAddr, Arc<Endpoint>>,
    /// The endpoints an earlier plan of the same update that gives the cluster active health
    /// checks made and checked, reused in their stead where they fit.
    checked: Option<&'a Endpoints>,
    selectors: &'a [Selector],
    /// True for an update that gives the cluster active health checks: none of its endpoints is
    /// reused, each is made anew awaiting its first check (see [`PreparedUpdate::first_checks`]),
    /// but those `checked` has, checked already.
    checks_anew: bool,
}

impl ClusterState {
    /// Its next snapshot planned from what it is now.
    fn inputs(&self) -> PlanInputs<'_> {
        PlanInputs {
            spec: &self.spec,
            protocol: &self.protocol,
            codec: &self.codec,
            connectors: &self.connectors,
            resolved: &self.resolved,
            local: self.local.as_ref(),
            endpoints: &self.endpoints,
            checked: None,
            selectors: &self.selectors,
            checks_anew: false,
        }
    }
}

/// The endpoints of `inputs`' spec, reusing those whose address, codec, pool settings and
/// connector (the one of the cluster's that their labels choose) are unchanged (new ones get
/// their series in `scope`, and one rebuilt at an address stays out of rotation if the one it
/// replaces was), and what its snapshot is built from.
/// Changes nothing the cluster has: [`retire_replaced`] installs the endpoints.
fn plan_hosts(
    inputs: &PlanInputs<'_>,
    stats: &ClusterStats,
    breakers: &Arc<CircuitBreakers>,
    scope: &MetricsScope,
) -> (HashMap<SocketAddr, Arc<Endpoint>>, SnapshotPlan) {
    let metrics = scope.metrics();
    let istio = metrics.settings().istio.clone();
    let cluster = inputs.spec.name.as_str();
    let settings = pool_settings(inputs.spec);
    let mut endpoints = HashMap::with_capacity(inputs.spec.endpoints.len());
    let mut hosts = Vec::with_capacity(inputs.spec.endpoints.len());
    for spec in &inputs.spec.endpoints {
        let connector = inputs.connectors.of_endpoint(inputs.spec, spec);
        for address in dns::addresses(&spec.address, inputs.resolved) {
            // Two names of one address (`localhost:1` and `127.0.0.1:1`): the first wins.
            if endpoints.contains_key(&address) {
                continue;
            }
            let running = inputs.endpoints.get(&address);
            let reusable = if inputs.checks_anew {
                // One made in place of a running endpoint shows in the series only once it
                // replaces one there, and one made new to the cluster shows at once.
                let checked = inputs.checked.and_then(|checked| checked.get(&address));
                checked.filter(|e| e.health().shown() != running.is_some())
            } else {
                running
            };
            let reusable = reusable.filter(|e| {
                Arc::ptr_eq(e.pool().codec(), inputs.codec)
                    && e.pool().settings() == settings
                    && e.pool().connector().same(connector)
            });
            let endpoint = match reusable {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let scope = scope.detached("endpoint", &address.to_string());
                    let states = HealthState::ALL.map(HealthState::name);
                    let health = HealthStats::new(&scope, &states);
                    let pool = UpstreamPool::new(
                        address,
                        inputs.codec.clone(),
                        settings,
                        connector.clone(),
                        stats.clone(),
                        Some(breakers.clone()),
                    )
                    .with_endpoint_stats(EndpointStats::new(&scope));
                    let mut endpoint = Endpoint::new(address, pool);
                    // Rebuilt in place: still out of rotation if it was.
                    let replaced = running;
                    if let Some(replaced) = replaced {
                        endpoint = endpoint.replacing(replaced);
                    }
                    if inputs.checks_anew
                        || (replaced.is_none() && inputs.spec.health_check.is_some())
                    {
                        endpoint = endpoint.awaiting_first_check();
                    }
                    Arc::new(endpoint.with_metrics(scope, health))
                }
            };
            endpoints.insert(address, endpoint.clone());
            let istio = istio.as_ref().map(|istio| {
                let destination = IstioDestination::of_endpoint(istio, cluster, &spec.labels);
                metrics.istio_reporter(istio, inputs.protocol, destination)
            });
            hosts.push(Arc::new(Host {
                endpoint,
                weight: spec.weight,
                labels: spec.labels.clone(),
                locality: spec.locality.clone().unwrap_or_default(),
                priority: spec.priority,
                health_check_port: spec.health_check_port,
                istio,
            }));
        }
    }
    let plan = SnapshotPlan {
        hosts,
        selectors: inputs.selectors.to_vec(),
        settings: lb_settings(inputs.spec, inputs.local),
        retry_budget: inputs.spec.retry_budget,
        istio: istio.as_ref().map(|istio| {
            let destination = IstioDestination::of_cluster(istio, cluster);
            metrics.istio_reporter(istio, inputs.protocol, destination)
        }),
    };
    (endpoints, plan)
}

/// Makes `endpoints` (planned by [`plan_hosts`], by an update that gives the cluster active
/// health checks if `checks_anew`) those of `state`: the ones they replace are marked draining,
/// and one rebuilt in place takes their health as it is now ([`Endpoint::take_running`]).
/// True if that took one into or out of rotation: the snapshot planned with them is stale.
fn retire_replaced(
    state: &mut ClusterState,
    endpoints: HashMap<SocketAddr, Arc<Endpoint>>,
    checks_anew: bool,
) -> bool {
    let mut changed = false;
    // Endpoints retired earlier and gone since: forgotten here as well as when the admin API
    // lists them, so that a cluster whose addresses keep changing (DNS) holds no growing list.
    state.retired.retain(|e| e.strong_count() > 0);
    state.added |= endpoints
        .keys()
        .any(|address| !state.endpoints.contains_key(address));
    for (address, old) in state.endpoints.drain() {
        let kept = endpoints
            .get(&address)
            .is_some_and(|e| Arc::ptr_eq(e, &old));
        if !kept {
            old.health().set(HealthFlags::DRAINING, true);
            state.retired.push(Arc::downgrade(&old));
            // Rebuilt in place (new pool settings, say): the same series, which showed the old
            // one until now (draining, just above), show the new one from now on.
            if let Some(rebuilt) = endpoints.get(&address) {
                changed |= rebuilt.take_running(&old, checks_anew);
                old.health().hand_series_to(rebuilt.health());
            }
        }
    }
    state.endpoints = endpoints;
    changed
}

/// What a snapshot is built from, taken from the cluster's state under its lock: building it
/// (the sets' balancers) needs no lock.
struct SnapshotPlan {
    hosts: Vec<Arc<Host>>,
    selectors: Vec<Selector>,
    settings: LbSettings,
    retry_budget: RetryBudgetSpec,
    istio: Option<Arc<IstioReporter>>,
}

impl SnapshotPlan {
    /// The snapshot, numbered when it is published.
    fn build(self) -> ClusterSnapshot {
        #[cfg(test)]
        crate::config::work::count(&crate::config::work::SNAPSHOTS_BUILT);
        let mut snapshot = ClusterSnapshot::build(
            self.hosts,
            &self.selectors,
            &self.settings,
            self.retry_budget,
        );
        snapshot.istio = self.istio;
        snapshot
    }
}

/// A cluster's next config, planned but not yet built ([`ClusterHandle::prepare_update`]).
pub(crate) struct PreparedUpdate {
    next: NextConfig,
    plan: SnapshotPlan,
}

/// A cluster's next config with its snapshot built, ready to publish.
pub(crate) struct BuiltUpdate {
    next: NextConfig,
    snapshot: ClusterSnapshot,
}

/// What an update makes of a cluster, planned while the cluster runs on unchanged.
struct NextConfig {
    cluster: Arc<ClusterHandle>,
    spec: Arc<ClusterSpec>,
    codec: Option<(String, Arc<dyn CodecFactory>)>,
    connectors: Connectors,
    probe: Option<Arc<Message>>,
    local: Option<LocalitySpec>,
    resolved: Resolved,
    /// The answers the cluster had taken when `resolved` was looked up.
    answers: u64,
    endpoints: HashMap<SocketAddr, Arc<Endpoint>>,
    /// The number of the cluster's last build asked for when it was planned: one asked for
    /// since (a health change) is a change its snapshot misses.
    seen: u64,
    /// True if it gives the cluster active health checks: its endpoints are made anew.
    checks_anew: bool,
}

impl PreparedUpdate {
    /// The endpoints it makes, each with its own health check port, if any.
    pub fn checked_addresses(&self) -> impl Iterator<Item = (SocketAddr, Option<u16>)> + '_ {
        self.plan
            .hosts
            .iter()
            .map(|host| (host.endpoint.address(), host.health_check_port))
    }

    /// True if it gives its cluster active health checks (it had none): its endpoints, made
    /// anew, await their first check ([`PreparedUpdate::first_checks`]).
    pub fn gives_checks(&self) -> bool {
        self.next.checks_anew
    }

    /// True if it gives its cluster active health checks and one of its endpoints awaits its
    /// first check: one not checked by an earlier plan of the same update.
    pub fn awaits_first_checks(&self) -> bool {
        self.gives_checks() && self.awaiting().next().is_some()
    }

    /// Its endpoints that await their first check, each with its own health check port.
    fn awaiting(&self) -> impl Iterator<Item = (Arc<Endpoint>, Option<u16>)> + '_ {
        self.plan
            .hosts
            .iter()
            .filter(|host| {
                host.endpoint
                    .health()
                    .has(HealthFlags::PENDING_ACTIVE_CHECK)
            })
            .map(|host| (host.endpoint.clone(), host.health_check_port))
    }

    /// Runs the first check of each of its endpoints when it gives its cluster active health
    /// checks ([`health::first_round`]), before its snapshot is built, so that the snapshot it
    /// publishes has their verdicts, as Envoy replaces a cluster only once the first round of
    /// its replacement's checks has ended: without it, the endpoints the cluster kept stayed in
    /// rotation, unchecked, until `unhealthy_threshold` checks in a row had failed. The running
    /// cluster serves meanwhile as it is. Bounded by the checks' `timeout` and `initial_jitter`.
    /// Endpoints an earlier plan of the same update checked are not checked again.
    pub async fn first_checks(&self) {
        let Some(check) = self
            .next
            .spec
            .health_check
            .as_ref()
            .filter(|_| self.awaits_first_checks())
        else {
            return;
        };
        let codec = match &self.next.codec {
            Some((_, codec)) => codec.clone(),
            None => self.next.cluster.codec(),
        };
        let members = self.awaiting().collect();
        health::first_round(
            &self.next.cluster,
            check,
            self.next.probe.clone(),
            codec,
            self.next.spec.connect_timeout,
            members,
        )
        .await;
    }

    /// True if its snapshot builds a table (`ring_hash`, `maglev`: up to 2^20 points, hundreds
    /// of milliseconds): a build for a blocking thread.
    pub fn builds_table(&self) -> bool {
        crate::lb::builds_table(self.next.spec.lb_policy)
    }

    /// Builds its snapshot (every set's balancer), the part of an update that may take long.
    pub fn build(self) -> BuiltUpdate {
        BuiltUpdate {
            snapshot: self.plan.build(),
            next: self.next,
        }
    }
}

/// Builds `prepared`, on a blocking thread when one of them builds a table (see
/// [`PreparedUpdate::builds_table`]), so that the thread asking for it (one serving requests)
/// goes on serving meanwhile.
pub(crate) async fn build_all(
    prepared: Vec<PreparedUpdate>,
) -> Result<Vec<BuiltUpdate>, ConfigError> {
    let off_runtime = prepared.iter().any(PreparedUpdate::builds_table);
    let build =
        move || -> Vec<BuiltUpdate> { prepared.into_iter().map(PreparedUpdate::build).collect() };
    if !off_runtime {
        return Ok(build());
    }
    match tokio::task::spawn_blocking(build).await {
        Ok(built) => Ok(built),
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // The runtime is shutting down.
            Err(err) => Err(ConfigError::new("clusters", err.to_string())),
        },
    }
}

impl BuiltUpdate {
    /// The name of its cluster.
    pub fn name(&self) -> &str {
        &self.next.spec.name
    }

    /// Its cluster.
    pub fn cluster(&self) -> &Arc<ClusterHandle> {
        &self.next.cluster
    }

    /// Its cluster and what it made for the checks it gives the cluster, its endpoints checked
    /// by their first round ([`PreparedUpdate::first_checks`]), if it gives checks: for a plan of
    /// the same update made again ([`ClusterHandle::prepare_update`]), which reuses them with
    /// their verdicts.
    pub(crate) fn checked(self) -> Option<(Arc<ClusterHandle>, Checked)> {
        let next = self.next;
        next.checks_anew.then(|| {
            let checked = Checked {
                spec: next.spec,
                codec: next.codec,
                connectors: next.connectors,
                endpoints: next.endpoints,
            };
            (next.cluster, checked)
        })
    }

    /// Publishes it and returns the cluster's new version: the cluster takes its config, keeps
    /// the endpoints that stay (and their pools), restarts health work whose config changed.
    /// It does not wait; a change its snapshot misses (a health change since it was planned) is
    /// built next, as that change would have been ([`Builds`]).
    pub fn commit(self) -> u64 {
        let cluster = self.next.cluster.clone();
        cluster.commit(self)
    }
}

/// What a plan of an update that gives a running cluster active health checks made and checked
/// ([`BuiltUpdate::checked`]), for a plan of the same update made again to reuse: a codec or
/// connectors made anew would fit none of its endpoints, which would be made and checked anew,
/// a round of checks for every plan, and with other updates applying during each, no end.
pub(crate) struct Checked {
    /// The config it was planned for: its codec options and TLS settings say what still fits.
    spec: Arc<ClusterSpec>,
    /// The protocol and codec it made, when the update changed them.
    codec: Option<(String, Arc<dyn CodecFactory>)>,
    /// Its connectors, reused by the endpoints it kept or made.
    connectors: Connectors,
    /// The endpoints it made anew, by address, with the verdicts of their first round.
    endpoints: Endpoints,
}

impl Checked {
    /// The codec it made for `protocol` and the codec options of `spec`, if it made one: a plan
    /// made again takes it rather than make another, so that the endpoints it checked fit.
    pub(crate) fn codec(
        &self,
        protocol: &str,
        spec: &ClusterSpec,
    ) -> Option<(String, Arc<dyn CodecFactory>)> {
        self.codec
            .as_ref()
            .filter(|(made_for, _)| made_for == protocol && self.spec.codec == spec.codec)
            .cloned()
    }

    /// Its connectors, if `spec` has the TLS settings they were made for.
    fn connectors(&self, spec: &ClusterSpec) -> Option<Connectors> {
        (self.spec.tls == spec.tls
            && self.spec.transport_socket_matches == spec.transport_socket_matches)
            .then(|| self.connectors.clone())
    }
}

/// Endpoints of a cluster, by address.
pub(crate) type Endpoints = HashMap<SocketAddr, Arc<Endpoint>>;

/// Clusters by name.
pub(crate) type ClusterMap = BTreeMap<String, Arc<ClusterHandle>>;

/// Every configured cluster, by name. Routes hold handles directly; the manager is for
/// configuration and the admin API.
#[derive(Debug, Default)]
pub(crate) struct ClusterManager {
    clusters: ArcSwap<ClusterMap>,
}

impl ClusterManager {
    /// A manager of `clusters`, the map of another one, shared.
    pub fn sharing(clusters: Arc<ClusterMap>) -> Self {
        Self {
            clusters: ArcSwap::new(clusters),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<ClusterHandle>> {
        self.clusters.load().get(name).cloned()
    }

    pub fn all(&self) -> Arc<ClusterMap> {
        self.clusters.load_full()
    }

    pub fn insert(&self, handle: Arc<ClusterHandle>) {
        self.clusters
            .rcu(|clusters| changed(clusters, std::slice::from_ref(&handle), &[]));
    }

    /// Publishes `clusters` in place of its own; returns those it replaces.
    pub fn replace(&self, clusters: Arc<ClusterMap>) -> Arc<ClusterMap> {
        self.clusters.swap(clusters)
    }
}

/// `clusters` with `added` (or replaced) and without `removed`, in one copy: a copy per cluster
/// was quadratic in the clusters of a config (20,000 clusters cost minutes), and an update
/// that adds or removes some publishes the copy it compiled its routes against.
pub(crate) fn changed(
    clusters: &ClusterMap,
    added: &[Arc<ClusterHandle>],
    removed: &[String],
) -> ClusterMap {
    #[cfg(test)]
    crate::config::work::count(&crate::config::work::CLUSTER_MAPS_COPIED);
    let mut next = clusters.clone();
    for handle in added {
        next.insert(handle.name().to_string(), handle.clone());
    }
    for name in removed {
        next.remove(name);
    }
    next
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::Metrics;

    /// Cluster `c` built from `yaml` (a cluster entry) on a codec that is never used.
    pub(crate) fn cluster(yaml: &str) -> Result<Arc<ClusterHandle>, ConfigError> {
        let spec = Arc::new(ClusterSpec::from_yaml(yaml)?);
        let codec = Arc::new(crate::testing::NullCodec) as Arc<dyn CodecFactory>;
        let scope = Metrics::new().root().detached("cluster", &spec.name);
        ClusterHandle::new(&spec, "null".into(), codec, scope, None, &Resolved::new())
    }

    /// The addresses 100 picks of the whole cluster go to.
    pub(crate) fn picked(cluster: &ClusterHandle) -> std::collections::BTreeSet<SocketAddr> {
        let snapshot = cluster.snapshot();
        (0..100)
            .filter_map(|_| snapshot.set(SubsetId::ALL)?.pick(&[], None))
            .map(|h| h.endpoint.address())
            .collect()
    }

    /// Clears what `c`'s endpoints start with in a cluster with active health checks, as their
    /// first checks passing would.
    fn first_checks_passed(c: &ClusterHandle) {
        let passed: Vec<(SocketAddr, u8, bool)> = c
            .snapshot()
            .hosts
            .iter()
            .map(|h| {
                let flags = HealthFlags::FAILED_ACTIVE_CHECK | HealthFlags::PENDING_ACTIVE_CHECK;
                (h.endpoint.address(), flags, false)
            })
            .collect();
        c.set_health(&passed);
    }

    /// Sets or clears one health flag of `c`'s endpoint at `address`; true if that changed it.
    fn set_one(c: &ClusterHandle, address: SocketAddr, flag: u8, on: bool) -> bool {
        c.set_health(&[(address, flag, on)])[0]
    }

    pub(crate) const THREE: &str = "name: c
endpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 }, { address: 127.0.0.1:3 } ]";

    pub(crate) fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_health_flag_republishes_the_snapshot_and_all_flagged_is_panic_mode()
    -> Result<(), ConfigError> {
        // A threshold below one in three: only all three flagged is panic mode.
        let c = cluster(&format!(
            "{THREE}\nhealthy_panic_threshold: 1\noutlier_detection: {{ consecutive_errors: 2 }}\nhealth_check: {{ interval: 1s }}"
        ))?;
        first_checks_passed(&c);
        assert_eq!(picked(&c).len(), 3);
        let version = c.snapshot().version;
        assert!(set_one(&c, addr(1), HealthFlags::EJECTED, true));
        assert!(
            !set_one(&c, addr(1), HealthFlags::EJECTED, true),
            "no change"
        );
        assert_eq!(c.snapshot().version, version + 1);
        assert_eq!(picked(&c), [addr(2), addr(3)].into());
        assert!(set_one(&c, addr(2), HealthFlags::FAILED_ACTIVE_CHECK, true));
        assert_eq!(picked(&c), [addr(3)].into());
        assert!(set_one(&c, addr(3), HealthFlags::EJECTED, true));
        assert_eq!(
            picked(&c).len(),
            3,
            "every endpoint flagged: spread over all"
        );
        let status = c.status();
        assert!(status.endpoints[0].ejected && !status.endpoints[0].failing_active_checks);
        assert_eq!(status.endpoints[1].health, HealthState::FailingActiveChecks);
        assert!(
            !set_one(&c, addr(9), HealthFlags::EJECTED, true),
            "not a member"
        );
        Ok(())
    }

    /// Picks skip flagged endpoints while at least `healthy_panic_threshold` percent of them
    /// are in rotation (Envoy's default 50); below, they spread over all of them, not over the
    /// last few, which would take the whole load. At 0, never: with all flagged, nothing is
    /// picked. Over 100 is refused.
    #[test]
    fn picks_ignore_health_below_the_panic_threshold() -> Result<(), ConfigError> {
        let four = "name: c
endpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 }, { address: 127.0.0.1:3 }, { address: 127.0.0.1:4 } ]
outlier_detection: { consecutive_errors: 2 }";
        let c = cluster(four)?;
        set_one(&c, addr(1), HealthFlags::EJECTED, true);
        assert_eq!(picked(&c), [addr(2), addr(3), addr(4)].into());
        set_one(&c, addr(2), HealthFlags::EJECTED, true);
        assert_eq!(
            picked(&c),
            [addr(3), addr(4)].into(),
            "half is not below half"
        );
        set_one(&c, addr(3), HealthFlags::EJECTED, true);
        assert_eq!(picked(&c).len(), 4, "one in four: panic mode");
        set_one(&c, addr(3), HealthFlags::EJECTED, false);
        assert_eq!(
            picked(&c),
            [addr(3), addr(4)].into(),
            "back out of panic mode"
        );

        let never = cluster(&format!("{four}\nhealthy_panic_threshold: 0"))?;
        for port in 1..=4 {
            set_one(&never, addr(port), HealthFlags::EJECTED, true);
        }
        assert!(picked(&never).is_empty(), "0 never panics");
        let over = ClusterSpec::from_yaml(&format!("{four}\nhealthy_panic_threshold: 101"));
        assert!(
            over.is_err_and(|e| e.to_string().contains("healthy_panic_threshold")),
            "over 100 is refused"
        );
        Ok(())
    }

    /// A `ring_hash` cluster of 1,000 endpoints (256,000 points): on a runtime's thread, a health
    /// change returns before its ring is built, the old ring serving meanwhile, and ten changes
    /// in a row, faster than a build, publish one or two snapshots, the last with the last
    /// change.
    #[test]
    fn a_ring_is_built_off_the_runtime_and_only_the_newest_is_published()
    -> Result<(), Box<dyn std::error::Error>> {
        let endpoints: String = (1..=1_000)
            .map(|port| format!("{{ address: 127.0.0.1:{port} }}, "))
            .collect();
        let c = cluster(&format!(
            "name: c\nlb_policy: ring_hash\noutlier_detection: {{ consecutive_errors: 2 }}\n\
             endpoints: [ {endpoints} ]"
        ))?;
        let in_rotation = |address: SocketAddr| {
            let snapshot = c.snapshot();
            snapshot
                .set(SubsetId::ALL)
                .is_some_and(|set| set.offers_untried(|a| a != address))
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let version = c.snapshot().version;
            let started = std::time::Instant::now();
            for change in 0..11 {
                set_one(&c, addr(1), HealthFlags::EJECTED, change % 2 == 0);
            }
            println!(
                "11 health changes took {:?} on the runtime",
                started.elapsed()
            );
            assert_eq!(c.snapshot().version, version, "the old ring serves");
            assert!(in_rotation(addr(1)));
            // The last change, an ejection, is built.
            tokio::time::timeout(Duration::from_secs(60), async {
                while in_rotation(addr(1)) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await?;
            let published = c.snapshot().version - version;
            assert!((1..=2).contains(&published), "{published} snapshots");
            Ok(())
        })
    }

    /// A health change made while an update of a `ring_hash` cluster is built (after it was
    /// planned) is not lost: the update publishes its new endpoint, and the change is built
    /// after it (at once here, with no runtime for a blocking thread).
    #[test]
    fn a_health_change_while_an_update_builds_is_built_after_it() -> Result<(), ConfigError> {
        let yaml = |last: u16| {
            let endpoints: String = (1..=last)
                .map(|port| format!("{{ address: 127.0.0.1:{port} }}, "))
                .collect();
            format!(
                "name: c\nlb_policy: ring_hash\noutlier_detection: {{ consecutive_errors: 2 }}\n\
                 endpoints: [ {endpoints} ]"
            )
        };
        let c = cluster(&yaml(3))?;
        let spec = Arc::new(ClusterSpec::from_yaml(&yaml(4))?);
        let prepared =
            c.prepare_update(&spec, None, None, &Resolved::new(), c.answers_taken(), None)?;
        assert!(set_one(&c, addr(1), HealthFlags::EJECTED, true));
        let version = prepared.build().commit();
        let snapshot = c.snapshot();
        assert_eq!(snapshot.version, version);
        let whole = snapshot
            .set(SubsetId::ALL)
            .ok_or(ConfigError::new("set", "none"))?;
        assert!(
            whole.offers_untried(|a| a != addr(4)),
            "the update's endpoint"
        );
        assert!(!whole.offers_untried(|a| a != addr(1)), "the ejection");
        Ok(())
    }

    /// A DNS answer that retires an endpoint while an update of a `ring_hash` cluster builds
    /// (after it was planned) makes the update's ring stale: the commit built the cluster's ring
    /// again at once, on the thread committing (one serving requests); it is built on a blocking
    /// thread now, the running ring serving until the update's config is published.
    #[test]
    fn a_dns_answer_while_an_update_builds_is_built_off_the_committing_thread()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::config::work;
        let yaml = |weight: u32| {
            format!(
                "name: c\nlb_policy: ring_hash\nendpoints: [ {{ address: 'ring.test:80', weight: {weight} }} ]"
            )
        };
        let spec = Arc::new(ClusterSpec::from_yaml(&yaml(1))?);
        let name = spec
            .endpoints
            .first()
            .map(|e| e.address.clone())
            .ok_or("no endpoint")?;
        let answer = |ports: std::ops::RangeInclusive<u16>| -> Resolved {
            [(name.clone(), ports.map(addr).collect())].into()
        };
        let c = ClusterHandle::new(
            &spec,
            "null".into(),
            Arc::new(crate::testing::NullCodec),
            Metrics::new().root(),
            None,
            &answer(1..=1_000),
        )?;
        let next = Arc::new(ClusterSpec::from_yaml(&yaml(2))?);
        let built = c
            .prepare_update(
                &next,
                None,
                None,
                &answer(1..=1_000),
                c.answers_taken(),
                None,
            )?
            .build();
        // The answer comes while the update builds: endpoint 1 is retired.
        assert!(c.resolve(&answer(2..=1_001)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let before = work::done(&work::SNAPSHOTS_BUILT);
            built.commit();
            assert_eq!(
                work::done(&work::SNAPSHOTS_BUILT) - before,
                0,
                "snapshots the commit built on its thread"
            );
            // The update's config is published by the blocking thread.
            tokio::time::timeout(Duration::from_secs(60), async {
                while c.snapshot().hosts.iter().any(|h| h.weight != 2) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await?;
            Ok(())
        })
    }

    #[test]
    fn an_endpoint_rebuilt_in_place_shows_its_own_health() -> Result<(), ConfigError> {
        let metrics = Metrics::new();
        let spec = |timeout: &str| {
            ClusterSpec::from_yaml(&format!(
                "name: c\nconnect_timeout: {timeout}\nendpoints: [ {{ address: 127.0.0.1:1 }} ]"
            ))
        };
        let codec = Arc::new(crate::testing::NullCodec) as Arc<dyn CodecFactory>;
        let scope = metrics.root().detached("cluster", "c");
        let c = ClusterHandle::new(
            &spec("1s")?.into(),
            "null".into(),
            codec,
            scope,
            None,
            &Resolved::new(),
        )?;
        // New pool settings: the endpoint is rebuilt, and the old one drains.
        c.update(&spec("2s")?.into(), None, None, &Resolved::new())?;
        let text = metrics.render();
        let shows = |state: &str| {
            text.lines().any(|line| {
                line.starts_with("metaprotocol_endpoint_health{")
                    && line.contains(&format!("state=\"{state}\""))
                    && line.ends_with(" 1")
            })
        };
        assert!(shows("healthy") && !shows("draining"), "{text}");
        Ok(())
    }

    /// An update that rebuilds the endpoints (new pool settings: an `idle_timeout` here) keeps
    /// those that health checks failed or outlier detection ejected out of rotation: the new
    /// endpoint at an address is the same server, and it took traffic until the next check or
    /// detector tick flagged it again.
    #[test]
    fn an_update_that_rebuilds_endpoints_keeps_them_out_of_rotation() -> Result<(), ConfigError> {
        let spec = |idle: &str| {
            format!(
                "{THREE}\nidle_timeout: {idle}\nhealthy_panic_threshold: 1\noutlier_detection: {{ consecutive_errors: 2 }}\nhealth_check: {{ interval: 1s }}"
            )
        };
        let c = cluster(&spec("1m"))?;
        first_checks_passed(&c);
        set_one(&c, addr(1), HealthFlags::EJECTED, true);
        set_one(&c, addr(2), HealthFlags::FAILED_ACTIVE_CHECK, true);
        let before = c.snapshot().hosts[0].endpoint.clone();
        c.update(
            &ClusterSpec::from_yaml(&spec("2m"))?.into(),
            None,
            None,
            &Resolved::new(),
        )?;
        assert!(
            !Arc::ptr_eq(&before, &c.snapshot().hosts[0].endpoint),
            "rebuilt"
        );
        assert_eq!(picked(&c), [addr(3)].into());
        let status = c.status();
        assert_eq!(status.endpoints[0].health, HealthState::Ejected);
        assert_eq!(status.endpoints[1].health, HealthState::FailingActiveChecks);
        assert_eq!(status.endpoints[2].health, HealthState::Healthy);
        Ok(())
    }

    /// An update that keeps an endpoint keeps its health: one in rotation stays in, one failing
    /// its checks stays out (a new weight changes neither). An endpoint whose address changes is
    /// a new endpoint: out of rotation, awaiting its first check.
    #[test]
    fn an_update_keeps_the_health_of_the_endpoints_it_keeps() -> Result<(), ConfigError> {
        let spec = |weight: u32, third: u16| {
            ClusterSpec::from_yaml(&format!(
                "name: c
endpoints: [ {{ address: 127.0.0.1:1, weight: {weight} }}, {{ address: 127.0.0.1:2 }}, {{ address: 127.0.0.1:{third} }} ]
healthy_panic_threshold: 1
health_check: {{ interval: 1s }}"
            ))
        };
        let c = cluster(
            "name: c\nendpoints: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 }, { address: 127.0.0.1:3 } ]\nhealthy_panic_threshold: 1\nhealth_check: { interval: 1s }",
        )?;
        first_checks_passed(&c);
        set_one(&c, addr(2), HealthFlags::FAILED_ACTIVE_CHECK, true);
        c.update(&spec(2, 4)?.into(), None, None, &Resolved::new())?;
        let status = c.status();
        let state = |i: usize| {
            let e = &status.endpoints[i];
            (e.address, e.failing_active_checks, e.awaiting_first_check)
        };
        assert_eq!(
            [state(0), state(1), state(2)],
            [
                (addr(1), false, false),
                (addr(2), true, false),
                (addr(4), true, true)
            ]
        );
        assert_eq!(picked(&c), [addr(1)].into());
        Ok(())
    }

    #[test]
    fn endpoints_that_keep_changing_leave_no_growing_list() -> Result<(), ConfigError> {
        let spec = |port: u16| {
            ClusterSpec::from_yaml(&format!(
                "name: c\nendpoints: [ {{ address: 127.0.0.1:{port} }} ]"
            ))
        };
        let c = cluster("name: c\nendpoints: [ { address: 127.0.0.1:999 } ]")?;
        for port in 1000..1100 {
            c.update(&spec(port)?.into(), None, None, &Resolved::new())?;
        }
        // The last one retired may still be held by the snapshot being replaced.
        assert!(c.lock().retired.len() <= 2, "{}", c.lock().retired.len());
        Ok(())
    }

    #[test]
    fn an_update_that_removes_a_flags_source_clears_its_flags() -> Result<(), ConfigError> {
        let with = format!(
            "{THREE}\nhealthy_panic_threshold: 1\noutlier_detection: {{ consecutive_errors: 2 }}\nhealth_check: {{ interval: 1s }}"
        );
        let c = cluster(&with)?;
        first_checks_passed(&c);
        set_one(&c, addr(1), HealthFlags::EJECTED, true);
        set_one(&c, addr(2), HealthFlags::FAILED_ACTIVE_CHECK, true);
        let no_checks = format!(
            "{THREE}\nhealthy_panic_threshold: 1\noutlier_detection: {{ consecutive_errors: 2 }}"
        );
        c.update(
            &ClusterSpec::from_yaml(&no_checks)?.into(),
            None,
            None,
            &Resolved::new(),
        )?;
        assert_eq!(picked(&c), [addr(2), addr(3)].into(), "still ejected");
        // A check that was under way when health checking was removed ends its round late.
        assert!(!set_one(
            &c,
            addr(2),
            HealthFlags::FAILED_ACTIVE_CHECK,
            true
        ));
        assert_eq!(picked(&c), [addr(2), addr(3)].into());
        c.update(
            &ClusterSpec::from_yaml(THREE)?.into(),
            None,
            None,
            &Resolved::new(),
        )?;
        assert_eq!(picked(&c).len(), 3);
        Ok(())
    }

    #[test]
    fn istio_series_outlive_the_snapshot_that_counted_them() -> Result<(), ConfigError> {
        use crate::config::IstioSpec;
        use crate::stats::{MetricsSettings, RequestOutcome, SeriesValue};
        use metaprotocol_core::ResponseFlags;

        let metrics = Metrics::with_settings(MetricsSettings {
            istio: Some(Arc::new(IstioSpec::default())),
            ..MetricsSettings::default()
        });
        let codec = Arc::new(crate::testing::NullCodec) as Arc<dyn CodecFactory>;
        let c = ClusterHandle::new(
            &ClusterSpec::from_yaml(&format!(
                "{THREE}\noutlier_detection: {{ consecutive_errors: 2 }}"
            ))?
            .into(),
            "null".into(),
            codec,
            metrics.root().detached("cluster", "c"),
            None,
            &Resolved::new(),
        )?;
        let errors = || {
            metrics.family("istio_requests").and_then(|f| {
                f.find(&[("destination_service", "c"), ("response_code", "500")])
                    .next()
                    .cloned()
            })
        };
        {
            let snapshot = c.snapshot();
            let Some(reporter) = snapshot.hosts[0].istio.as_ref() else {
                panic!("the Istio series are on");
            };
            reporter.record(
                RequestOutcome::SERVER_ERROR,
                ResponseFlags::NONE,
                false,
                Duration::from_millis(1),
            );
        }
        assert_eq!(errors(), Some(SeriesValue::Counter(1)));
        // Another endpoint ejected: a new snapshot, and the one that counted is dropped.
        assert!(set_one(&c, addr(2), HealthFlags::EJECTED, true));
        assert_eq!(
            errors(),
            Some(SeriesValue::Counter(1)),
            "the count outlives its snapshot"
        );
        Ok(())
    }

    /// The spec of cluster `c`, whose one endpoint is the host name `svc.test:80`, with
    /// `extra` config lines, and that name.
    fn named(
        extra: &str,
    ) -> Result<(Arc<ClusterSpec>, crate::config::EndpointAddress), ConfigError> {
        let spec = ClusterSpec::from_yaml(&format!(
            "name: c\nendpoints: [ {{ address: 'svc.test:80' }} ]\n{extra}"
        ))?;
        let name = spec
            .endpoints
            .first()
            .map(|e| e.address.clone())
            .ok_or(ConfigError::new("endpoints", "none"))?;
        Ok((Arc::new(spec), name))
    }

    /// An update that gives a DNS cluster active health checks, during whose first round a DNS
    /// answer changes the cluster's addresses, serves only the endpoints whose first check
    /// passed, and the checker counts on from those checks: the commit, seeing the fresher
    /// answer, dropped the endpoints made anew and checked, and rebuilt the cluster from the
    /// running ones, kept in rotation unchecked (a refusing endpoint took its share of calls
    /// until `unhealthy_threshold` checks in a row had failed).
    #[tokio::test]
    async fn a_dns_answer_during_the_first_round_of_checks_an_update_gives_keeps_its_verdicts()
    -> Result<(), Box<dyn std::error::Error>> {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let live = live.local_addr()?;
        let (_refusing, refusing) = crate::testing::refusing_address()?;
        let (_joining, joining) = crate::testing::refusing_address()?;
        let (unchecked, name) = named("healthy_panic_threshold: 1")?;
        let (checked, _) = named(
            "healthy_panic_threshold: 1\nhealth_check: { interval: 1h, timeout: 10s, unhealthy_threshold: 3 }",
        )?;
        let answer =
            |addresses: &[SocketAddr]| -> Resolved { [(name.clone(), addresses.to_vec())].into() };
        let c = ClusterHandle::new(
            &unchecked,
            "null".into(),
            Arc::new(crate::testing::NullCodec),
            Metrics::new().root(),
            None,
            &answer(&[live, refusing]),
        )?;
        assert_eq!(picked(&c), [live, refusing].into());
        let prepared = c.prepare_update(
            &checked,
            None,
            None,
            &answer(&[live, refusing]),
            c.answers_taken(),
            None,
        )?;
        assert!(prepared.gives_checks());
        // The DNS refresh takes an answer with one more address while the round runs.
        let ((), taken) = tokio::join!(prepared.first_checks(), async {
            c.resolve(&answer(&[live, refusing, joining]))
        });
        assert!(taken, "the answer changed the cluster's addresses");
        prepared.build().commit();
        let serving = picked(&c);
        assert_eq!(
            serving,
            [live].into(),
            "once the update that adds checks applied (a DNS answer during its first round), calls went to {serving:?}"
        );
        let snapshot = c.snapshot();
        let streaks: BTreeMap<SocketAddr, (u32, u32)> = snapshot
            .hosts
            .iter()
            .map(|h| (h.endpoint.address(), h.endpoint.check_streak().get()))
            .collect();
        assert_eq!(
            streaks,
            [(live, (1, 0)), (refusing, (0, 1)), (joining, (0, 0))].into(),
            "the first round's streaks, and none yet for the endpoint the answer added"
        );
        assert!(
            snapshot
                .hosts
                .iter()
                .any(|h| h.endpoint.address() == joining
                    && h.endpoint.health().has(HealthFlags::PENDING_ACTIVE_CHECK)),
            "the endpoint the answer added awaits its first check"
        );
        Ok(())
    }

    /// The same for a `ring_hash` cluster, whose snapshot for the fresher answer is built on a
    /// blocking thread: until that build publishes, the update's own snapshot serves (its
    /// endpoints, with the verdicts of their first round, at the addresses of its own lookup).
    /// The snapshot from before the update served meanwhile, its endpoints replaced, unchecked
    /// (a refusing one took calls). The runtime's one blocking thread is held while the update
    /// commits, so that the build cannot publish before the calls are picked.
    #[test]
    fn a_ring_whose_dns_answer_changes_during_an_updates_first_round_serves_its_verdicts_at_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_refusing, refusing) = crate::testing::refusing_address()?;
        let (_joining, joining) = crate::testing::refusing_address()?;
        let ring = "lb_policy: ring_hash\nhealthy_panic_threshold: 1";
        let (unchecked, name) = named(ring)?;
        let (checked, _) = named(&format!(
            "{ring}\nhealth_check: {{ interval: 1h, timeout: 10s, unhealthy_threshold: 3 }}"
        ))?;
        let answer =
            |addresses: &[SocketAddr]| -> Resolved { [(name.clone(), addresses.to_vec())].into() };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()?;
        let live = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let live_address = live.local_addr()?;
        // Made off the runtime: its first ring is built at once.
        let c = ClusterHandle::new(
            &unchecked,
            "null".into(),
            Arc::new(crate::testing::NullCodec),
            Metrics::new().root(),
            None,
            &answer(&[live_address, refusing]),
        )?;
        runtime.block_on(async {
            let prepared = c.prepare_update(
                &checked,
                None,
                None,
                &answer(&[live_address, refusing]),
                c.answers_taken(),
                None,
            )?;
            let ((), taken) = tokio::join!(prepared.first_checks(), async {
                c.resolve(&answer(&[live_address, refusing, joining]))
            });
            assert!(taken, "the answer changed the cluster's addresses");
            let deadline = Duration::from_secs(60);
            let built = || async {
                while c.build_pending() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(deadline, built()).await?;
            assert_eq!(picked(&c), [live_address, refusing, joining].into());
            let (release, held) = std::sync::mpsc::channel::<()>();
            let blocker = tokio::task::spawn_blocking(move || held.recv());
            prepared.build().commit();
            let serving = picked(&c);
            let build_ran = !c.build_pending();
            release.send(())?;
            blocker.await??;
            assert!(!build_ran, "the rebuild published while the blocking thread was held");
            assert_eq!(
                serving,
                [live_address].into(),
                "once the update that adds checks applied (a DNS answer during its first round), its ring being built, calls went to {serving:?}"
            );
            tokio::time::timeout(deadline, built()).await?;
            assert_eq!(picked(&c), [live_address].into(), "the answer's ring");
            let snapshot = c.snapshot();
            assert!(
                snapshot
                    .hosts
                    .iter()
                    .any(|h| h.endpoint.address() == joining
                        && h.endpoint.health().has(HealthFlags::PENDING_ACTIVE_CHECK)),
                "the endpoint the answer added awaits its first check"
            );
            Ok(())
        })
    }

    /// An update that gives a cluster active health checks makes its endpoints anew, each out
    /// of rotation as outlier detection holds the running endpoint at its address. Taken when
    /// the update was planned, an ejection that ended during its first round (or, the update
    /// overtaken, before a plan made again reused what it had checked) stayed on the endpoint
    /// installed, which the detector, having returned the running one, never returned; one that
    /// began then was missing, and an endpoint the detector held ejected served.
    #[tokio::test]
    async fn an_update_giving_checks_takes_the_ejections_the_running_endpoints_have_as_it_applies()
    -> Result<(), Box<dyn std::error::Error>> {
        // Live: the first round's checks pass.
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..3 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            addresses.push(listener.local_addr()?);
            listeners.push(listener);
        }
        let &[returned, ejected, steady] = addresses.as_slice() else {
            return Err("three listeners".into());
        };
        let spec = |checks: &str| {
            ClusterSpec::from_yaml(&format!(
                "name: c\nendpoints: [ {{ address: '{returned}' }}, {{ address: '{ejected}' }}, {{ address: '{steady}' }} ]\nhealthy_panic_threshold: 1\noutlier_detection: {{ consecutive_errors: 2 }}\n{checks}"
            ))
            .map(Arc::new)
        };
        let checked = spec("health_check: { interval: 1h, timeout: 10s }")?;
        let c = ClusterHandle::new(
            &spec("")?,
            "null".into(),
            Arc::new(crate::testing::NullCodec),
            Metrics::new().root(),
            None,
            &Resolved::new(),
        )?;
        assert!(set_one(&c, returned, HealthFlags::EJECTED, true));
        let stale = c.prepare_update(
            &checked,
            None,
            None,
            &Resolved::new(),
            c.answers_taken(),
            None,
        )?;
        stale.first_checks().await;
        // Overtaken by another update: what it checked is kept for its next plan.
        let (_, made) = stale.build().checked().ok_or("the update gives checks")?;
        // Meanwhile the detector returns one endpoint (its ejection ended) and ejects another.
        assert!(set_one(&c, returned, HealthFlags::EJECTED, false));
        assert!(set_one(&c, ejected, HealthFlags::EJECTED, true));
        let again = c.prepare_update(
            &checked,
            None,
            None,
            &Resolved::new(),
            c.answers_taken(),
            Some(&made),
        )?;
        assert!(
            !again.awaits_first_checks(),
            "planned again, it reuses what it checked"
        );
        again.build().commit();
        let states: Vec<(SocketAddr, HealthState)> = c
            .status()
            .endpoints
            .iter()
            .map(|e| (e.address, e.health))
            .collect();
        assert_eq!(
            states,
            [
                (returned, HealthState::Healthy),
                (ejected, HealthState::Ejected),
                (steady, HealthState::Healthy)
            ],
            "once the update applied, the endpoint the detector returned during its round, and the one it ejected then"
        );
        assert_eq!(picked(&c), [returned, steady].into());
        Ok(())
    }

    /// The states `metrics` shows for endpoints' health (those whose series is 1).
    pub(crate) fn health_shown(metrics: &Metrics) -> Vec<String> {
        metrics
            .render()
            .lines()
            .filter(|line| {
                line.starts_with("metaprotocol_endpoint_health{") && line.ends_with(" 1")
            })
            .filter_map(|line| {
                let state = line.split("state=\"").nth(1)?;
                Some(state.split('"').next()?.to_owned())
            })
            .collect()
    }

    /// The endpoints an update that gives a cluster active health checks makes anew share their
    /// health series with the running endpoints at their addresses: they show in them once the
    /// update is applied. A running endpoint, still serving, showed `failing_active_checks` from
    /// the moment the update was planned, and still did after the update was dropped (an admin
    /// API request's deadline passed during the first round).
    #[tokio::test]
    async fn endpoints_an_update_makes_anew_show_in_their_series_once_it_is_applied()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_refusing, refusing) = crate::testing::refusing_address()?;
        let spec = |checks: &str| {
            ClusterSpec::from_yaml(&format!(
                "name: c\nendpoints: [ {{ address: '{refusing}' }} ]\n{checks}"
            ))
            .map(Arc::new)
        };
        let checked = spec("health_check: { interval: 1h, timeout: 10s }")?;
        let metrics = Metrics::new();
        let c = ClusterHandle::new(
            &spec("")?,
            "null".into(),
            Arc::new(crate::testing::NullCodec),
            metrics.root().detached("cluster", "c"),
            None,
            &Resolved::new(),
        )?;
        assert_eq!(health_shown(&metrics), ["healthy"]);
        let dropped = c.prepare_update(
            &checked,
            None,
            None,
            &Resolved::new(),
            c.answers_taken(),
            None,
        )?;
        assert_eq!(
            health_shown(&metrics),
            ["healthy"],
            "the running endpoint's series while the update's first round waits"
        );
        dropped.first_checks().await;
        assert_eq!(
            health_shown(&metrics),
            ["healthy"],
            "the running endpoint's series once the update's first round failed it"
        );
        drop(dropped);
        assert_eq!(
            health_shown(&metrics),
            ["healthy"],
            "the running endpoint's series once the update was dropped"
        );
        let applied = c.prepare_update(
            &checked,
            None,
            None,
            &Resolved::new(),
            c.answers_taken(),
            None,
        )?;
        applied.first_checks().await;
        applied.build().commit();
        assert_eq!(health_shown(&metrics), ["failing_active_checks"]);
        Ok(())
    }
}
