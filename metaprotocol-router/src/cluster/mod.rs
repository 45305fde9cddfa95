//! Clusters: named groups of endpoints, each published as a swappable snapshot.
//!
//! A [`ClusterHandle`] lives as long as its cluster is configured; routes hold it and a
//! [`SubsetId`]. Every change (membership, weights, labels, health, a new subset selector)
//! builds a new [`ClusterSnapshot`] and swaps it in: requests in flight keep the snapshot they
//! loaded, new requests see the new one. Endpoints are kept by address across snapshots, so
//! their upstream connections survive updates. The [`ClusterManager`] holds the handles by name.
//!
//! Endpoints named by a host name are resolved before a cluster is built or updated and again
//! every `dns_refresh_rate` ([`dns`]); a new set of addresses rebuilds the snapshot as an
//! update would, and a failed resolution keeps the addresses last resolved.

pub(crate) mod dns;
mod endpoint;
mod snapshot;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::{ArcSwap, Guard};
use metaprotocol_core::CodecFactory;

pub use endpoint::HealthState;
pub(crate) use endpoint::{ActiveRequest, Endpoint, HealthFlags};
pub(crate) use snapshot::{ClusterSnapshot, Host, SubsetId};
pub use status::{ClusterStatus, EndpointStatus};

use crate::config::{ClusterSpec, ConfigError};
use crate::stats::{
    ClusterStats, EndpointStats, HealthStats, IstioDestination, IstioReporter, MetricsScope,
};
use crate::transport::Connector;
use crate::upstream::{PoolSettings, UpstreamPool};
pub(crate) use dns::Resolved;

/// What a cluster was last built from; changed only by config updates, under its lock.
struct ClusterState {
    spec: ClusterSpec,
    protocol: String,
    codec: Arc<dyn CodecFactory>,
    endpoints: HashMap<SocketAddr, Arc<Endpoint>>,
    /// Subset selectors by [`SubsetId`]; the first (empty) selects the whole cluster.
    selectors: Vec<BTreeMap<String, String>>,
    /// Endpoints removed by an update while requests to them may still be in flight.
    retired: Vec<Weak<Endpoint>>,
    /// The addresses the spec's host names resolved to last.
    resolved: Resolved,
    version: u64,
}

/// A configured cluster: its live snapshot and what it is rebuilt from.
pub(crate) struct ClusterHandle {
    name: Arc<str>,
    stats: ClusterStats,
    scope: MetricsScope,
    snapshot: ArcSwap<ClusterSnapshot>,
    state: Mutex<ClusterState>,
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

/// Rejects features whose issues have not landed, in the config's own words.
fn check_supported(spec: &ClusterSpec) -> Result<(), ConfigError> {
    let unavailable = |field: &str, what: &str| {
        Err(ConfigError::new(
            field,
            format!("{what} is not available yet"),
        ))
    };
    if spec.locality_aware {
        return unavailable("locality_aware", "locality_aware: true");
    }
    if spec.circuit_breakers.is_some() {
        return unavailable("circuit_breakers", "circuit_breakers");
    }
    if spec.outlier_detection.is_some() {
        return unavailable("outlier_detection", "outlier_detection");
    }
    Ok(())
}

fn pool_settings(spec: &ClusterSpec) -> PoolSettings {
    PoolSettings {
        connect_timeout: spec.connect_timeout,
        connections: spec.connections_per_endpoint as usize,
    }
}

impl ClusterHandle {
    /// Builds cluster `spec`, whose endpoints speak `protocol` through `codec`, with its series
    /// in `scope`; `resolved` has the addresses of its host names.
    pub fn new(
        spec: &ClusterSpec,
        protocol: String,
        codec: Arc<dyn CodecFactory>,
        scope: MetricsScope,
        resolved: &Resolved,
    ) -> Result<Arc<Self>, ConfigError> {
        check_supported(spec)?;
        let stats = ClusterStats::new(&scope);
        let mut state = ClusterState {
            spec: spec.clone(),
            protocol,
            codec,
            endpoints: HashMap::new(),
            selectors: vec![BTreeMap::new()],
            retired: Vec::new(),
            resolved: dns::kept(spec, resolved),
            version: 0,
        };
        let snapshot = rebuild(&mut state, &stats, &scope)?;
        Ok(Arc::new(Self {
            name: spec.name.as_str().into(),
            stats,
            scope,
            snapshot: ArcSwap::from_pointee(snapshot),
            state: Mutex::new(state),
            retired: AtomicBool::new(false),
        }))
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// The protocol its endpoints speak.
    pub fn protocol(&self) -> String {
        self.lock().protocol.clone()
    }

    /// The spec it was last built from.
    pub fn spec(&self) -> ClusterSpec {
        self.lock().spec.clone()
    }

    /// The current snapshot (a wait-free load).
    pub fn snapshot(&self) -> Guard<Arc<ClusterSnapshot>> {
        self.snapshot.load()
    }

    /// The id of the subset whose endpoints carry all of `labels`, registering it (and
    /// publishing a snapshot that has it) the first time.
    pub fn subset(&self, labels: &BTreeMap<String, String>) -> Result<SubsetId, ConfigError> {
        let mut state = self.lock();
        if let Some(index) = state.selectors.iter().position(|s| s == labels) {
            return Ok(SubsetId(index));
        }
        state.selectors.push(labels.clone());
        let snapshot = rebuild(&mut state, &self.stats, &self.scope)?;
        self.snapshot.store(Arc::new(snapshot));
        Ok(SubsetId(state.selectors.len() - 1))
    }

    /// Checks that `spec` can replace this cluster's config, changing nothing.
    pub fn check_update(&self, spec: &ClusterSpec) -> Result<(), ConfigError> {
        check_supported(spec)?;
        crate::lb::build(spec.lb_policy, &[]).map(|_| ())
    }

    /// Rebuilds from `spec` (with `codec`, when the protocol or codec options changed) and
    /// publishes the new snapshot; returns its version. Endpoints that stay keep their pools.
    /// `resolved` has the addresses of its host names.
    pub fn update(
        &self,
        spec: &ClusterSpec,
        codec: Option<(String, Arc<dyn CodecFactory>)>,
        resolved: &Resolved,
    ) -> Result<u64, ConfigError> {
        self.check_update(spec)?;
        let mut state = self.lock();
        let mut next = ClusterState {
            spec: spec.clone(),
            protocol: state.protocol.clone(),
            codec: state.codec.clone(),
            endpoints: std::mem::take(&mut state.endpoints),
            selectors: state.selectors.clone(),
            retired: std::mem::take(&mut state.retired),
            resolved: dns::kept(spec, resolved),
            version: state.version,
        };
        if let Some((protocol, codec)) = codec {
            next.protocol = protocol;
            next.codec = codec;
        }
        match rebuild(&mut next, &self.stats, &self.scope) {
            Ok(snapshot) => {
                *state = next;
                self.snapshot.store(Arc::new(snapshot));
                Ok(state.version)
            }
            Err(err) => {
                state.endpoints = next.endpoints;
                state.retired = next.retired;
                Err(err)
            }
        }
    }

    /// The addresses its host names resolved to last.
    pub fn resolved(&self) -> Resolved {
        self.lock().resolved.clone()
    }

    /// Takes a new resolution of its host names: when the addresses changed, rebuilds the
    /// snapshot (as an update of the same spec would) and returns its version.
    pub fn resolve(&self, resolved: &Resolved) -> Option<u64> {
        let mut state = self.lock();
        let kept = dns::kept(&state.spec, resolved);
        if kept == state.resolved {
            return None;
        }
        let previous = std::mem::replace(&mut state.resolved, kept);
        match rebuild(&mut state, &self.stats, &self.scope) {
            Ok(snapshot) => {
                self.snapshot.store(Arc::new(snapshot));
                Some(state.version)
            }
            Err(err) => {
                tracing::warn!(cluster = %self.name, error = %err, "cannot apply new DNS addresses");
                state.resolved = previous;
                None
            }
        }
    }

    /// What `/clusters` shows.
    pub fn status(&self) -> ClusterStatus {
        let mut state = self.lock();
        state.retired.retain(|e| e.strong_count() > 0);
        let snapshot = self.snapshot.load();
        let members = snapshot
            .hosts
            .iter()
            .map(|h| EndpointStatus::of(&h.endpoint, h.weight, &h.labels));
        let draining = state
            .retired
            .iter()
            .filter_map(Weak::upgrade)
            .map(|e| EndpointStatus::of(&e, 0, &BTreeMap::new()));
        ClusterStatus {
            name: self.name.to_string(),
            protocol: state.protocol.clone(),
            version: snapshot.version,
            endpoints: members.chain(draining).collect(),
        }
    }

    /// Marks the cluster removed from the config: its host names are no longer refreshed. Its
    /// series go when the handle drops (the last route and request using it are gone).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// True once the cluster is gone from the config.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
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

/// Builds the next snapshot of `state`: endpoints of the spec, reusing those whose address,
/// codec and pool settings are unchanged (new ones get their series in `scope`); endpoints that
/// left are marked draining.
fn rebuild(
    state: &mut ClusterState,
    stats: &ClusterStats,
    scope: &MetricsScope,
) -> Result<ClusterSnapshot, ConfigError> {
    let istio = scope.metrics().settings().istio.clone();
    let cluster = state.spec.name.as_str();
    let settings = pool_settings(&state.spec);
    let mut endpoints = HashMap::with_capacity(state.spec.endpoints.len());
    let mut hosts = Vec::with_capacity(state.spec.endpoints.len());
    for spec in &state.spec.endpoints {
        for address in dns::addresses(&spec.address, &state.resolved) {
            // Two names of one address (`localhost:1` and `127.0.0.1:1`): the first wins.
            if endpoints.contains_key(&address) {
                continue;
            }
            let reusable = state.endpoints.get(&address).filter(|e| {
                Arc::ptr_eq(e.pool().codec(), &state.codec) && e.pool().settings() == settings
            });
            let endpoint = match reusable {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let scope = scope.detached("endpoint", &address.to_string());
                    let states = HealthState::ALL.map(HealthState::name);
                    let health = HealthStats::new(&scope, &states);
                    let pool = UpstreamPool::new(
                        address,
                        state.codec.clone(),
                        settings,
                        Connector::Plain,
                        stats.clone(),
                    )
                    .with_endpoint_stats(EndpointStats::new(&scope));
                    Arc::new(Endpoint::new(address, pool).with_metrics(scope, health))
                }
            };
            endpoints.insert(address, endpoint.clone());
            let istio = istio.as_ref().map(|istio| {
                let destination = IstioDestination::of_endpoint(istio, cluster, &spec.labels);
                IstioReporter::new(scope, istio, &state.protocol, destination)
            });
            hosts.push(Arc::new(Host {
                endpoint,
                weight: spec.weight,
                labels: spec.labels.clone(),
                istio,
            }));
        }
    }
    let mut snapshot = ClusterSnapshot::build(
        state.version + 1,
        hosts,
        &state.selectors,
        state.spec.lb_policy,
        state.spec.retry_budget,
    )?;
    snapshot.istio = istio.as_ref().map(|istio| {
        let destination = IstioDestination::of_cluster(istio, cluster);
        IstioReporter::new(scope, istio, &state.protocol, destination)
    });
    for (address, old) in state.endpoints.drain() {
        let kept = endpoints
            .get(&address)
            .is_some_and(|e| Arc::ptr_eq(e, &old));
        if !kept {
            old.health().set(HealthFlags::DRAINING, true);
            state.retired.push(Arc::downgrade(&old));
        }
    }
    state.endpoints = endpoints;
    state.version += 1;
    Ok(snapshot)
}

/// Every configured cluster, by name. Routes hold handles directly; the manager is for
/// configuration and the admin API.
#[derive(Debug, Default)]
pub(crate) struct ClusterManager {
    clusters: ArcSwap<BTreeMap<String, Arc<ClusterHandle>>>,
}

impl ClusterManager {
    pub fn get(&self, name: &str) -> Option<Arc<ClusterHandle>> {
        self.clusters.load().get(name).cloned()
    }

    pub fn all(&self) -> Arc<BTreeMap<String, Arc<ClusterHandle>>> {
        self.clusters.load_full()
    }

    pub fn insert(&self, handle: Arc<ClusterHandle>) {
        self.clusters.rcu(|clusters| {
            let mut next = BTreeMap::clone(clusters);
            next.insert(handle.name().to_string(), handle.clone());
            next
        });
    }

    pub fn remove(&self, name: &str) -> Option<Arc<ClusterHandle>> {
        let removed = self.get(name);
        self.clusters.rcu(|clusters| {
            let mut next = BTreeMap::clone(clusters);
            next.remove(name);
            next
        });
        removed
    }
}
