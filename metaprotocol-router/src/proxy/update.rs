//! Applying a new config to a running proxy: every change is prepared first (clusters built,
//! route tables compiled, listener sockets bound), and only when everything is ready is it
//! published, so a rejected update changes nothing. Published changes never close a connection
//! or fail a request in flight: clusters and route tables are swapped snapshots, listeners are
//! added, updated and removed one by one, each removed one draining on its own.
//!
//! Updates are applied one at a time, under the update lock, except for the rounds of health
//! checks an update waits for (the first of the clusters it adds or gives checks), which run
//! without it, other updates applying meanwhile, but for the round of an update whose last two
//! were overtaken; see [`ProxyState::apply_uncounted`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use metaprotocol_core::{CodecFactory, Side};
use tokio::net::TcpListener;
use tokio::sync::MutexGuard;

use super::build::{ClusterProtocols, check_routes_protocols, route_config_protocols};
use super::dynamic::DynamicUpdate;
use super::file_reads::{FILE_READ_TIMEOUT, Rebuilt, files_to_read};
use super::layers::{Changed, Composed, Layers, compose};
use super::listeners::bind;
use super::status::{ResourceId, ResourceKind};
use super::{ProxyState, ReloadSummary, UpdateError};
use crate::cluster::dns::{self, SystemResolver};
use crate::cluster::{
    self, BuiltUpdate, Checked, ClusterHandle, ClusterManager, ClusterMap, PreparedUpdate,
    Resolved, build_all,
};
use crate::config::{
    ClusterEdit, ClusterIndex, ClusterSpec, Config, ConfigError, ListenerSpec, LocalitySpec,
    RouteSpec, same_cluster, same_places,
};
use crate::published::Published;
use crate::route::{RouteCheck, RouteSlot, RouteTable};
use crate::server::ListenerContext;
use crate::transport::TlsAcceptor;

/// Who asked for an update.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source<'a> {
    /// The config file (a reload replaces the base layer).
    File,
    /// The admin or embedding API (one resource of the base layer at a time).
    Api,
    /// A dynamic source, with its update.
    Dynamic(&'a DynamicUpdate),
}

/// The dynamic resource of `update` an error of [`compose`] names (`clusters[<name>]...`).
fn dynamic_resource_of(err: &ConfigError, update: &DynamicUpdate) -> Option<ResourceId> {
    update
        .versions
        .keys()
        .find(|id| {
            let list = match id.kind {
                ResourceKind::Cluster => "clusters",
                ResourceKind::RouteConfig => "route_configs",
                _ => return false,
            };
            err.field.starts_with(&format!("{list}[{}]", id.name))
        })
        .cloned()
}

/// A cluster whose config changed (`clusters[at]`): its new spec, its new protocol and codec
/// when those changed too, and the proxy's locality.
struct ClusterChange {
    at: usize,
    handle: Arc<ClusterHandle>,
    spec: Arc<ClusterSpec>,
    codec: Option<(String, Arc<dyn CodecFactory>)>,
    local: Option<LocalitySpec>,
    resolved: Resolved,
    /// The answers the running cluster had taken when `resolved` was looked up.
    answers: u64,
    /// What a stale plan of the same update made for the checks it gives the cluster, and
    /// checked ([`Warmed`]).
    checked: Option<Checked>,
}

/// How many of an update's rounds of health checks may be overtaken (another update applied
/// while one ran without the update lock) before its next round holds the lock: a plan made
/// again may need a round anew (endpoints another update added or changed), and with updates
/// coming during each round (frequent xDS pushes) it would otherwise never apply. Two: a round
/// after an overtaken one checks only what the updates applied meanwhile changed, few endpoints
/// if any, so that an update holds the others back only when updates keep coming.
const UNLOCKED_ROUNDS: usize = 2;

/// What stale plans of an update warmed, for its next plan to take as it is ([`Tried::Stale`]),
/// so that each round of checks it waits for checks only what none of them checked.
#[derive(Default)]
struct Warmed {
    /// The clusters they added, their checks running on.
    clusters: Vec<Arc<ClusterHandle>>,
    /// What they made for the running clusters they give checks, by cluster: the endpoints,
    /// with the verdicts of their first round, and the codec and connectors they fit
    /// ([`BuiltUpdate::checked`]).
    endpoints: Vec<(Arc<ClusterHandle>, Checked)>,
}

/// The addresses of the host names of each cluster an update builds or changes, by name.
type Resolutions = BTreeMap<String, Resolution>;

/// A cluster's host names looked up by an update.
struct Resolution {
    resolved: Resolved,
    /// The answers the running cluster had taken when the lookup began
    /// ([`ClusterHandle::answers_taken`]): one it takes meanwhile outlives this one.
    answers: u64,
}

/// What the update lock guards: the layers the running config is composed of, and the indexes
/// of cluster names kept beside them for the next update (see [`ClusterIndex`]).
#[derive(Debug, Default)]
pub(crate) struct Updates {
    pub layers: Layers,
    indexes: Indexes,
}

impl Updates {
    /// The layers of a proxy that runs no cluster yet.
    pub fn new(layers: Layers) -> Self {
        Self {
            layers,
            indexes: Indexes::default(),
        }
    }
}

/// The clusters' names of a config and of its base layer, indexed.
#[derive(Debug, Default)]
struct Indexes {
    base: ClusterIndex,
    running: ClusterIndex,
}

/// Which clusters of a new config run as they are: for a proxy where the listeners, the node
/// and the routes are as they were (the routes need not be when one protocol serves them all),
/// so that each cluster speaks the protocol it speaks, a cluster whose spec is shared with the
/// running config's, named in the same order, runs as it is; so an update of one cluster among
/// thousands looks at that one, and so does one that adds or removes one.
struct RunningAsIs<'a> {
    /// The running config's clusters.
    running: &'a [Arc<ClusterSpec>],
    /// How the new config's clusters were made from those, when the others run as they are.
    edit: Option<ClusterEdit>,
}

impl<'a> RunningAsIs<'a> {
    /// The clusters of `new` that run as they are in `current`, whose clusters `running` indexes
    /// (without its index, none).
    fn new(
        current: &'a Config,
        new: &Config,
        protocols: &ClusterProtocols,
        running: Option<&ClusterIndex>,
    ) -> Self {
        let as_is = new.listeners == current.listeners
            && new.node == current.node
            && (protocols.one_for_all() || new.route_configs == current.route_configs);
        let edit = running
            .filter(|_| as_is)
            .and_then(|index| ClusterEdit::between(&new.clusters, (&current.clusters, index)));
        Self {
            running: &current.clusters,
            edit,
        }
    }

    /// The places of the new config's clusters that need a look: those added or changed when
    /// the others run as they are, else all of the `count`.
    fn looked_at(&self, count: usize) -> impl Iterator<Item = usize> + '_ {
        let edited = self
            .edit
            .as_ref()
            .map(|edit| edit.looked_at().iter().map(|(i, _)| *i));
        let all = self.edit.is_none().then_some(0..count);
        edited
            .into_iter()
            .flatten()
            .chain(all.into_iter().flatten())
    }

    /// The running clusters the new config does not name, when the others run as they are.
    fn removed(&self) -> impl Iterator<Item = &'a str> + '_ {
        let places = self.edit.iter().flat_map(|edit| edit.removed());
        places.filter_map(|&at| self.running.get(at).map(|c| c.name.as_str()))
    }

    /// True if only the clusters whose spec changed, or that came, need a look.
    fn holds(&self) -> bool {
        self.edit.is_some()
    }
}

/// What [`ProxyState::try_apply`] makes of an update: stale, or applied or refused (with the
/// update lock, held again).
enum Tried<'u> {
    Done(
        MutexGuard<'u, Updates>,
        Result<(ReloadSummary, Indexes), (UpdateError, Option<ResourceId>)>,
    ),
    /// Another update was applied while this one waited for the first checks of its clusters
    /// without the lock: it is to be planned again, adopting what it warmed.
    Stale(Warmed),
}

/// An update planned on the config running when it began ([`ProxyState::plan_update`]).
struct Planned<'c> {
    plan: Plan,
    composed: Composed,
    /// The indexes of the new base layer's clusters and of the new config's.
    base_index: ClusterIndex,
    index: ClusterIndex,
    as_is: RunningAsIs<'c>,
}

/// Everything a new config needs, built but not yet published.
#[derive(Default)]
struct Plan {
    new_clusters: Vec<Arc<ClusterHandle>>,
    changed_clusters: Vec<ClusterChange>,
    /// The running clusters the new route tables send to: each may have a subset to build.
    routed_clusters: Vec<Arc<ClusterHandle>>,
    /// The changed clusters and the rebuilds (see [`Plan::build_clusters`]), prepared by
    /// [`Plan::prepare_clusters`].
    prepared_changes: Vec<PreparedUpdate>,
    prepared_rebuilds: Vec<PreparedUpdate>,
    /// The changed clusters, built by [`Plan::build_clusters`].
    updated_clusters: Vec<BuiltUpdate>,
    /// Clusters a new route table registered a subset of, built again with it.
    rebuilt_clusters: Vec<BuiltUpdate>,
    removed_clusters: Vec<String>,
    /// The running clusters with the new ones and without the removed ones, when there are
    /// any: the map the route tables were compiled against, which the commit publishes.
    clusters: Option<Arc<ClusterMap>>,
    tables: Vec<(String, RouteTable)>,
    new_slots: BTreeMap<String, Arc<RouteSlot>>,
    removed_route_configs: Vec<String>,
    /// New listeners (and listeners moved to a new address), bound by [`Plan::bind`].
    new_listeners: Vec<(ListenerSpec, ListenerContext, Option<Arc<TcpListener>>)>,
    changed_listeners: Vec<ListenerContext>,
    removed_listeners: Vec<String>,
    /// The sockets of the listeners this plan removes, by bound address: a new listener at one
    /// of these addresses (a listener renamed, a port moved to another listener) takes the
    /// socket over, where a bind would fail with the address in use.
    released: BTreeMap<SocketAddr, Arc<TcpListener>>,
    /// What stale plans of the same update warmed ([`Plan::warmed`], [`Plan::checked`]).
    warmed: Warmed,
    /// The new clusters taken from `warmed`: their first round was waited for.
    adopted: Vec<Arc<ClusterHandle>>,
}

impl Plan {
    /// Binds the sockets of new listeners, or hands them those of removed listeners at the
    /// same address.
    async fn bind(&mut self) -> Result<(), UpdateError> {
        for (spec, _, socket) in &mut self.new_listeners {
            *socket = Some(match self.released.remove(&spec.address) {
                Some(released) => released,
                None => Arc::new(bind(spec).await?),
            });
        }
        Ok(())
    }

    /// Plans the snapshots the commit publishes ([`Plan::build_clusters`] builds them): those
    /// of the changed clusters, and those of the clusters whose subsets the new route tables
    /// registered or whose first snapshot was left to build (new `ring_hash` and `maglev`
    /// clusters).
    fn prepare_clusters(&mut self) -> Result<(), ConfigError> {
        // A changed cluster's update builds its new subsets: a rebuild would publish the config
        // it replaces.
        let changed: HashSet<*const ClusterHandle> = self
            .changed_clusters
            .iter()
            .map(|change| Arc::as_ptr(&change.handle))
            .collect();
        self.prepared_changes = std::mem::take(&mut self.changed_clusters)
            .into_iter()
            .map(|change| {
                change
                    .handle
                    .prepare_update(
                        &change.spec,
                        change.codec,
                        change.local,
                        &change.resolved,
                        change.answers,
                        change.checked.as_ref(),
                    )
                    .map_err(|e| e.within(&format!("clusters[{}]", change.at)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.prepared_rebuilds = self
            .new_clusters
            .iter()
            .chain(&self.routed_clusters)
            .filter(|handle| !changed.contains(&Arc::as_ptr(handle)) && handle.build_pending())
            .map(ClusterHandle::prepare_rebuild)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }

    /// Builds the snapshots [`Plan::prepare_clusters`] planned. Their tables (`ring_hash`,
    /// `maglev`: up to 2^20 points, hundreds of milliseconds) are built on a blocking thread,
    /// not on the one applying the update and serving requests. A changed cluster the update
    /// gives health checks has the first round of its checks first
    /// ([`PreparedUpdate::first_checks`]), so that its snapshot has their verdicts; dropped at
    /// that wait, the update has changed nothing of the cluster.
    async fn build_clusters(&mut self) -> Result<(), ConfigError> {
        let changes = std::mem::take(&mut self.prepared_changes);
        let rebuilds = std::mem::take(&mut self.prepared_rebuilds);
        let first_rounds = self
            .first_rounds(&changes)
            .map(PreparedUpdate::first_checks);
        until_given_up(futures::future::join_all(first_rounds)).await;
        let changed = changes.len();
        let mut built = build_all(changes.into_iter().chain(rebuilds).collect()).await?;
        self.rebuilt_clusters = built.split_off(changed);
        self.updated_clusters = built;
        Ok(())
    }

    /// The `changes` whose first round of checks the update waits for: those that give their
    /// cluster checks and have endpoints to check, but for a cluster that sends to a listener
    /// this update opens (see [`Plan::warm`]), whose endpoints' first checks run once the update
    /// is applied.
    fn first_rounds<'p>(
        &self,
        changes: &'p [PreparedUpdate],
    ) -> impl Iterator<Item = &'p PreparedUpdate> {
        let opening = self.opening();
        changes.iter().filter(move |change| {
            change.awaits_first_checks() && !sends_to(change.checked_addresses(), &opening)
        })
    }

    /// The cluster a stale plan of the same update built as `spec` (speaking `protocol`, for a
    /// proxy at `local`) and warmed, taken as it is: the first round of its checks, passed,
    /// is not run again (its host names' addresses are those of that plan's lookup, refreshed
    /// as a new cluster's are). One built otherwise is let go.
    fn warmed(
        &mut self,
        spec: &Arc<ClusterSpec>,
        protocol: &str,
        local: Option<&LocalitySpec>,
    ) -> Option<Arc<ClusterHandle>> {
        let warmed = &mut self.warmed.clusters;
        let at = warmed
            .iter()
            .position(|handle| handle.name().as_ref() == spec.name)?;
        let handle = warmed.swap_remove(at);
        let adopted = handle.built_from(spec, protocol, local);
        adopted.then(|| {
            self.adopted.push(handle.clone());
            handle
        })
    }

    /// What a stale plan of the same update made and checked for the checks it gives the
    /// running cluster `handle`, for [`ClusterHandle::prepare_update`] to reuse.
    fn checked(&mut self, handle: &Arc<ClusterHandle>) -> Option<Checked> {
        let endpoints = &mut self.warmed.endpoints;
        let at = endpoints
            .iter()
            .position(|(of, _)| Arc::ptr_eq(of, handle))?;
        Some(endpoints.swap_remove(at).1)
    }

    /// True if it waits for a round of active health checks ([`Plan::warm`],
    /// [`PreparedUpdate::first_checks`]), once its clusters are prepared
    /// ([`Plan::prepare_clusters`]): it adds a cluster with checks, or gives a running cluster
    /// checks, whose endpoints no stale plan of the same update checked.
    fn warms(&self) -> bool {
        self.warming().any(|handle| handle.checks_actively())
            || self.first_rounds(&self.prepared_changes).next().is_some()
    }

    /// What it warmed, for a plan of the same update made again: its new clusters, and the
    /// endpoints it checked of those it gives checks.
    fn into_warmed(self) -> Warmed {
        let endpoints = self.updated_clusters.into_iter();
        Warmed {
            clusters: self.new_clusters,
            endpoints: endpoints.filter_map(BuiltUpdate::checked).collect(),
        }
    }

    /// The new clusters [`Plan::warm`] starts and waits for: those not taken from a stale plan
    /// of the same update (their round was waited for), but those that send to a listener this
    /// update opens (a proxy chaining to its own listener): their checks could not pass before
    /// the commit starts serving that listener, and would hold the update for their `timeout`
    /// to fail. Their checks start with the commit, as an update's new endpoints are checked.
    fn warming(&self) -> impl Iterator<Item = &Arc<ClusterHandle>> {
        let opening = self.opening();
        self.new_clusters.iter().filter(move |handle| {
            let snapshot = handle.snapshot();
            let hosts = snapshot.hosts.iter();
            !self
                .adopted
                .iter()
                .any(|adopted| Arc::ptr_eq(adopted, handle))
                && !sends_to(
                    hosts.map(|host| (host.endpoint.address(), host.health_check_port)),
                    &opening,
                )
        })
    }

    /// Starts the health checks of the new clusters and waits for the first round of their
    /// active checks ([`ClusterHandle::first_checks`], bounded by the checks' `timeout`), so
    /// that each serves its first call with its endpoints checked, as Envoy warms a cluster
    /// before using it. A new `ring_hash` or `maglev` cluster's first snapshot, which the
    /// checks read their endpoints from, is published first: nothing routes to the cluster
    /// before the commit. A cluster that sends to a listener the update opens is left out, and
    /// so is one a stale plan warmed (see [`Plan::warming`]). An update its caller gives up at
    /// a deadline ([`with_deadline`])
    /// stops waiting by then and publishes, rather than be given up for its checks. Dropped
    /// here, the plan stops the checks with its clusters.
    async fn warm(&mut self) {
        let (new, others): (Vec<BuiltUpdate>, Vec<BuiltUpdate>) =
            std::mem::take(&mut self.rebuilt_clusters)
                .into_iter()
                .partition(|rebuilt| {
                    self.new_clusters
                        .iter()
                        .any(|handle| Arc::ptr_eq(handle, rebuilt.cluster()))
                });
        self.rebuilt_clusters = others;
        for rebuilt in new {
            rebuilt.commit();
        }
        let warmed: Vec<&Arc<ClusterHandle>> = self.warming().collect();
        for handle in &warmed {
            handle.start_health();
        }
        let first_rounds =
            futures::future::join_all(warmed.iter().map(|handle| handle.first_checks()));
        until_given_up(first_rounds).await;
    }

    /// The addresses of the listeners this update opens.
    fn opening(&self) -> Vec<SocketAddr> {
        self.new_listeners
            .iter()
            .filter_map(|(_, _, socket)| socket.as_ref()?.local_addr().ok())
            .collect()
    }
}

/// Waits for `first_rounds`, the first round of health checks of clusters an update adds or
/// gives checks, until the update's caller gives it up ([`with_deadline`]), if it does: past
/// that, the update publishes its clusters as they are rather than be given up for them.
async fn until_given_up(first_rounds: impl std::future::Future) {
    match DEADLINE.try_with(|deadline| *deadline) {
        Ok(deadline) => {
            let _ = tokio::time::timeout_at(deadline, first_rounds).await;
        }
        Err(_) => {
            first_rounds.await;
        }
    }
}

/// True if one of `endpoints` (an address and its own health check port, if any) is, at its
/// address or at its health check port, one of the `listeners`' addresses, or on the port of
/// one listening on every address.
fn sends_to(
    endpoints: impl IntoIterator<Item = (SocketAddr, Option<u16>)>,
    listeners: &[SocketAddr],
) -> bool {
    let serves = |listener: &SocketAddr, target: SocketAddr| {
        listener.port() == target.port()
            && (listener.ip() == target.ip() || listener.ip().is_unspecified())
    };
    endpoints.into_iter().any(|(address, port)| {
        let checked = port.map(|port| SocketAddr::new(address.ip(), port));
        listeners.iter().any(|listener| {
            serves(listener, address) || checked.is_some_and(|target| serves(listener, target))
        })
    })
}

tokio::task_local! {
    /// When the update running in this task is given up (the admin API's, shortly before its
    /// request's deadline).
    static DEADLINE: tokio::time::Instant;
}

/// Runs `update` (one that ends in [`ProxyState::apply`]), which its caller gives up at
/// `deadline`: a wait the update can end itself (for the files it reads) ends by then, with an
/// error that says what it waited for.
pub(crate) async fn with_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    update: F,
) -> F::Output {
    DEADLINE.scope(deadline, update).await
}

/// When the files an update reads must have been read: by its caller's deadline, if it set one
/// ([`with_deadline`]), and within [`FILE_READ_TIMEOUT`].
fn files_deadline() -> tokio::time::Instant {
    let most = tokio::time::Instant::now() + FILE_READ_TIMEOUT;
    DEADLINE
        .try_with(|deadline| (*deadline).min(most))
        .unwrap_or(most)
}

/// Runs `build`, the part of an update that builds what is new, without holding up the other
/// tasks of a multi-threaded runtime: the files it reads are read ahead (see `file_reads`), but
/// one no one knew it reads (an embedder's own filter's) is read as it asks, and a read from a
/// slow or unreachable network file system would stall the accept loops, the admin API and
/// health checks queued on this worker. The worker hands them to another thread for the while.
/// A current-thread runtime has no other thread to hand them to: there it runs in place.
fn beside_the_runtime<T>(build: impl FnOnce() -> T) -> T {
    let flavor = tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor());
    match flavor {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(build),
        _ => build(),
    }
}

impl ProxyState {
    /// Applies `change` to the running config's layers (see the module docs) and counts the
    /// update; returns what changed. `change` sees the layers and the config running now, and
    /// refuses by returning an error; it is made again on what runs then when the update is
    /// planned again (see [`ProxyState::apply_uncounted`]). Dropped at any of its waits (behind another update, on
    /// DNS, reading files, binding sockets, on the first health checks of its new clusters),
    /// it has published nothing: from the moment it
    /// publishes it does not wait, so it applies whole or not at all (the admin API gives up on
    /// updates this way).
    pub(crate) async fn apply(
        &self,
        source: Source<'_>,
        change: impl FnMut(&mut Layers, &Config) -> Result<(), UpdateError>,
    ) -> Result<ReloadSummary, UpdateError> {
        let result = self.apply_uncounted(source, change).await;
        self.count_update(result.is_ok());
        result
    }

    /// [`ProxyState::apply`] without counting (the config a proxy starts with).
    ///
    /// The first round of health checks an update waits for (of the clusters it adds, or gives
    /// checks: see [`Plan::warm`]) runs without the update lock, so that other updates (a route
    /// edit, an xDS push, an admin write) go on meanwhile, as Envoy's warming clusters join when
    /// warmed; the update then applies if no other was applied meanwhile. One was: its plan is
    /// stale, and it is planned again, `change` made again on what runs now, taking what the
    /// stale plan warmed as it is (its new clusters, their checks running on; the endpoints it
    /// checked, with their verdicts, see [`Warmed`]). A plan that has nothing left to check
    /// holds the lock until it applies, so that other updates, however many, hold it back by no
    /// more than the rounds of checks they make it need (those of endpoints they add to, or
    /// change in, the clusters it warms, as Envoy warms again a warming cluster updated again);
    /// one that still has runs that round without the lock too, unless [`UNLOCKED_ROUNDS`] of
    /// its rounds were overtaken already: then it holds the lock during the round, so that it
    /// applies however often other updates come (an xDS server pushing during each round).
    pub(crate) async fn apply_uncounted(
        &self,
        source: Source<'_>,
        mut change: impl FnMut(&mut Layers, &Config) -> Result<(), UpdateError>,
    ) -> Result<ReloadSummary, UpdateError> {
        // What stale plans of this update warmed, for the next to adopt.
        let mut warmed = Warmed::default();
        let mut overtaken = 0;
        loop {
            let updates = self.updates.lock().await;
            let current = self.config.load_full();
            let mut new = updates.layers.clone();
            change(&mut new, &current)?;
            let unlocked = overtaken < UNLOCKED_ROUNDS;
            let tried = self
                .try_apply(&new, updates, &current, source, warmed, unlocked)
                .await;
            let (mut updates, result) = match tried {
                Tried::Done(updates, result) => (updates, result),
                Tried::Stale(stale) => {
                    warmed = stale;
                    overtaken += 1;
                    continue;
                }
            };
            return match result {
                Ok((summary, indexes)) => {
                    *updates = Updates {
                        layers: new,
                        indexes,
                    };
                    Ok(summary)
                }
                Err((error, resource)) => {
                    if let Source::Dynamic(update) = source {
                        self.record_rejection(update, &error, resource);
                    }
                    Err(error)
                }
            };
        }
    }

    /// Records why a dynamic update was rejected: against the resource the error is about, or
    /// every resource of the update when it is about none of them.
    fn record_rejection(
        &self,
        update: &DynamicUpdate,
        error: &UpdateError,
        resource: Option<ResourceId>,
    ) {
        let reason = error.to_string();
        let ids: Vec<ResourceId> = match resource {
            Some(id) => vec![id],
            None => update.versions.keys().cloned().collect(),
        };
        for id in &ids {
            let version = update.versions.get(id).map(String::as_str);
            self.statuses.rejected(id, version, reason.clone());
        }
    }

    /// Applies `layers`, made from those `running` guards (the update lock, handed back with
    /// the outcome); returns the new config's indexes. The first round of health checks of the
    /// clusters it adds or gives checks runs without the lock: stale when another update was
    /// applied meanwhile. It adopts what stale plans of the same update `warmed` as it is (see
    /// [`Plan::warmed`], [`Plan::checked`]). Not `unlocked`, that round holds the lock too.
    async fn try_apply<'u>(
        &'u self,
        layers: &Layers,
        running: MutexGuard<'u, Updates>,
        current: &Arc<Config>,
        source: Source<'_>,
        warmed: Warmed,
        unlocked: bool,
    ) -> Tried<'u> {
        let planned = self
            .plan_update(layers, &running, current, source, warmed)
            .await;
        let planned = match planned {
            Ok(planned) => planned,
            Err(rejected) => return Tried::Done(running, Err(rejected)),
        };
        let Planned {
            mut plan,
            composed,
            base_index,
            index,
            as_is,
        } = planned;
        let located = |err: ConfigError| {
            let (err, resource) = composed.locate(err);
            (UpdateError::from(err), resource)
        };
        if let Err(err) = plan.prepare_clusters() {
            return Tried::Done(running, Err(located(err)));
        }
        let running = if unlocked && plan.warms() {
            drop(running);
            let built = plan.build_clusters().await;
            if built.is_ok() {
                plan.warm().await;
            }
            let running = self.updates.lock().await;
            if !Arc::ptr_eq(&self.config.load_full(), current) {
                // Another update was applied meanwhile: what this one planned is stale; what
                // it warmed is kept for the next plan, the clusters' checks running on.
                return Tried::Stale(plan.into_warmed());
            }
            if let Err(err) = built {
                return Tried::Done(running, Err(located(err)));
            }
            running
        } else {
            if let Err(err) = plan.build_clusters().await {
                return Tried::Done(running, Err(located(err)));
            }
            plan.warm().await;
            running
        };
        let new = &composed.effective;
        // From here on nothing waits: an update dropped at a wait above has published nothing.
        match source {
            Source::File => self.warn_replacing_api_changes(current, new),
            Source::Api => self.remember_api_changes(current, new, &as_is),
            Source::Dynamic(_) => {}
        }
        // Before the commit: the connections of listeners it removes drain for the new time.
        self.drain.set_time(self.drain_time(new));
        let summary = self.commit(plan);
        self.load.set_limits(&new.limits);
        if let Source::Dynamic(update) = source {
            self.statuses.applied(&update.versions, SystemTime::now());
            let gone: Vec<ResourceId> = update
                .removed
                .iter()
                .filter(|id| !composed.states.iter().any(|(listed, _)| listed == *id))
                .cloned()
                .collect();
            self.statuses.removed(&gone);
        }
        self.statuses.set_states(&composed.states);
        self.listeners_waiting.store(
            new.listeners.len() < layers.base.listeners.len(),
            std::sync::atomic::Ordering::Release,
        );
        self.config.store(Arc::new(composed.effective));
        let indexes = Indexes {
            base: base_index,
            running: index,
        };
        Tried::Done(running, Ok((summary, indexes)))
    }

    /// Plans `layers`, made from those `running` guards, on the `current` config: checks them,
    /// composes them and prepares what they need, published by [`ProxyState::try_apply`];
    /// adopts what stale plans of the same update `warmed`.
    async fn plan_update<'c>(
        &self,
        layers: &Layers,
        running: &Updates,
        current: &'c Config,
        source: Source<'_>,
        warmed: Warmed,
    ) -> Result<Planned<'c>, (UpdateError, Option<ResourceId>)> {
        let unlocated = |err: ConfigError| (UpdateError::from(err), None);
        let running_base = &running.layers.base;
        // Only what changed since the running base (shared specs were checked when they came).
        let base_index = layers
            .base
            .validate_beyond(
                running_base,
                (&running_base.clusters, &running.indexes.base),
            )
            .map_err(unlocated)?;
        let changed = match source {
            Source::Dynamic(_) => Changed::Dynamic,
            Source::File | Source::Api => Changed::Base,
        };
        let running_index = &running.indexes.running;
        let composed =
            compose(layers, &base_index, (current, running_index), changed).map_err(|err| {
                let resource = match source {
                    Source::Dynamic(update) => dynamic_resource_of(&err, update),
                    _ => None,
                };
                (UpdateError::from(err), resource)
            })?;
        let located = |err: ConfigError| {
            let (err, resource) = composed.locate(err);
            (UpdateError::from(err), resource)
        };
        let new = &composed.effective;
        // The base's entries were checked just above; the dynamic ones are checked here.
        // Its clusters are the base's when no dynamic source adds any (an added cluster among
        // thousands is indexed once), else most often those running at their places.
        let known = if same_places(&new.clusters, &layers.base.clusters) {
            (&layers.base.clusters[..], &base_index)
        } else {
            (&current.clusters[..], running_index)
        };
        let index = new.validate_beyond(&layers.base, known).map_err(located)?;
        for (field, changed) in [
            ("admin", new.admin != current.admin),
            ("dynamic", new.dynamic != current.dynamic),
        ] {
            if changed {
                return Err(unlocated(ConfigError::new(
                    field,
                    format!("changed; the {field} section takes effect on restart"),
                )));
            }
        }
        if new.metrics != current.metrics {
            return Err(unlocated(ConfigError::new(
                "metrics",
                "changed; metrics settings take effect on restart",
            )));
        }
        let protocols = ClusterProtocols::of_config(new);
        let as_is = RunningAsIs::new(current, new, &protocols, Some(running_index));
        let resolutions = self.resolve(new, &as_is).await;
        // The clusters the build builds anew: as it finds them (a cluster it drops, or whose
        // protocol is wrong, builds nothing; one that moved to another protocol builds a codec).
        let live = self.clusters.all();
        let local = new.node.as_ref().map(|node| &node.locality);
        // What the build makes anew of each cluster, as `prepare` decides it: a new cluster's
        // all; a running one's connectors when its `tls` or `transport_socket_matches` changed,
        // codec when its `codec` or protocol did.
        let rebuilt = |at: usize| {
            let Some(spec) = new.clusters.get(at) else {
                return Rebuilt::NOTHING;
            };
            let Some(handle) = live.get(&spec.name) else {
                return Rebuilt::ALL;
            };
            match protocols.of(at, spec) {
                Ok(Some(protocol)) if !handle.built_from(spec, protocol, local) => {
                    let old = handle.spec();
                    Rebuilt {
                        tls: old.tls != spec.tls
                            || old.transport_socket_matches != spec.transport_socket_matches,
                        codec: handle.protocol() != protocol || old.codec != spec.codec,
                    }
                }
                Ok(_) | Err(_) => Rebuilt::NOTHING,
            }
        };
        let looked_at = as_is.looked_at(new.clusters.len());
        let keeps_tls =
            |old: &ListenerSpec, spec: &ListenerSpec| self.kept_tls(Some(old), spec).is_some();
        let files = files_to_read(current, new, looked_at, rebuilt, keeps_tls);
        let read_names = files.names();
        let read = files
            .read(&self.file_readers, files_deadline())
            .await
            .map_err(located)?;
        let mut plan = Plan {
            warmed,
            ..Plan::default()
        };
        let prepared = match beside_the_runtime(|| {
            read.serve(|| self.prepare(current, new, &index, &resolutions, &as_is, &mut plan))
        }) {
            Ok(()) => plan.bind().await.map_err(|err| (err, None)),
            Err(err) => Err(located(read_names.mark(err, &read))),
        };
        // A rejected plan is dropped: what it built lets go of its metric series.
        prepared?;
        Ok(Planned {
            plan,
            composed,
            base_index,
            index,
            as_is,
        })
    }

    /// Checks that `new` can be built, building it and publishing nothing. Its listeners that
    /// wait for dynamic resources are left out, as they would be when it runs.
    pub(crate) fn check(&self, new: &Config) -> Result<(), ConfigError> {
        self.route_check(new).map(drop)
    }

    /// Builds `new` as [`check`](Self::check) does and keeps each listener's route table.
    pub(crate) fn route_check(&self, new: &Config) -> Result<RouteCheck, ConfigError> {
        new.validate()?;
        self.sources.check(new.dynamic.as_ref())?;
        let layers = Layers {
            base: new.clone(),
            ..Layers::default()
        };
        let base_index = ClusterIndex::build(&new.clusters)?;
        let none = (&Config::default(), &ClusterIndex::default());
        let composed = compose(&layers, &base_index, none, Changed::Base)?;
        let mut plan = Plan::default();
        // Checking resolves no name: endpoints named by host names are left out.
        let new = &composed.effective;
        let current = self.config.load();
        // Without the running clusters' index every cluster is looked at.
        let as_is = RunningAsIs::new(&current, new, &ClusterProtocols::of_config(new), None);
        let prepared = ClusterIndex::build(&new.clusters)
            .and_then(|index| {
                self.prepare(
                    &current,
                    new,
                    &index,
                    &Resolutions::new(),
                    &as_is,
                    &mut plan,
                )
            })
            .map_err(|err| composed.locate(err).0);
        let tables = new
            .listeners
            .iter()
            .filter_map(|listener| {
                let slot = plan.new_slots.get(&listener.route_config)?;
                Some((listener.name.clone(), slot.table.load_full()))
            })
            .collect();
        // The plan is dropped: what it built lets go of its metric series.
        prepared.map(|()| RouteCheck::new(tables))
    }

    /// Resolves the host names of the clusters of `new` that are added or changed from the
    /// running config (those `as_is` runs as they are are not looked at), each name that cannot
    /// be resolved keeping the addresses it has in the running cluster.
    async fn resolve(&self, new: &Config, as_is: &RunningAsIs<'_>) -> Resolutions {
        let live = self.clusters.all();
        let mut resolutions = Resolutions::new();
        let changed = as_is
            .looked_at(new.clusters.len())
            .filter_map(|i| new.clusters.get(i));
        for spec in changed.filter(|c| c.has_host_names()) {
            let handle = live.get(&spec.name);
            if handle.is_some_and(|h| h.has_spec(spec)) {
                continue;
            }
            // Counted before the addresses are read: an answer between the two is kept.
            let answers = handle.map_or(0, |h| h.answers_taken());
            let last = handle.map(|h| h.resolved()).unwrap_or_default();
            let resolved = dns::resolve(&SystemResolver, spec, &last).await;
            resolutions.insert(spec.name.clone(), Resolution { resolved, answers });
        }
        resolutions
    }

    /// Builds what `new` needs beyond `current` (everything but binding sockets), with the
    /// addresses of host names in `resolutions`; `index` indexes `new`'s clusters, and `as_is`
    /// says which of them run as they are.
    fn prepare(
        &self,
        current: &Config,
        new: &Config,
        index: &ClusterIndex,
        resolutions: &Resolutions,
        as_is: &RunningAsIs<'_>,
        plan: &mut Plan,
    ) -> Result<(), ConfigError> {
        let builder = self.builder();
        // Listeners' protocols first: clusters inherit them and are built before listeners, but
        // an unknown one is the listener's mistake.
        for (i, spec) in new.listeners.iter().enumerate() {
            if !self.codecs.names().any(|name| name == spec.protocol) {
                return Err(builder
                    .unknown_protocol(&spec.protocol)
                    .within(&format!("listeners[{i}]")));
            }
        }
        let protocols = ClusterProtocols::of_config(new);
        let local = new.node.as_ref().map(|node| &node.locality);

        // Clusters: build new ones, check changed ones; the prospective view routes compile
        // against.
        let live = self.clusters.all();
        // The running clusters the new config keeps (all of them when those that run as they
        // are are not looked at), and those that it no longer builds.
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        // True once a running cluster looked at speaks another protocol, or none.
        let mut protocol_changed = false;
        for i in as_is.looked_at(new.clusters.len()) {
            let Some(spec) = new.clusters.get(i) else {
                continue;
            };
            // Named only when there is an error: an unchanged cluster costs a comparison.
            let within = |e: ConfigError| e.within(&format!("clusters[{i}]"));
            let Some(protocol) = protocols.of(i, spec).map_err(within)? else {
                dropped.push(spec.name.as_str());
                continue;
            };
            let resolution = resolutions.get(&spec.name);
            let resolved = || resolution.map(|r| r.resolved.clone()).unwrap_or_default();
            match live.get(&spec.name) {
                None => {
                    let handle = match plan.warmed(spec, protocol, local) {
                        Some(warmed) => warmed,
                        None => builder
                            .cluster(spec, protocol, local, &resolved())
                            .map_err(within)?,
                    };
                    plan.new_clusters.push(handle);
                }
                Some(handle) => {
                    kept.push(spec.name.as_str());
                    if handle.built_from(spec, protocol, local) {
                        continue;
                    }
                    let old = handle.spec();
                    let speaks_another = handle.protocol() != protocol;
                    protocol_changed |= speaks_another;
                    let checked = plan.checked(handle);
                    // The codec a stale plan made for the same options, if it made one: the
                    // endpoints it checked fit it.
                    let reused = || checked.as_ref().and_then(|c| c.codec(protocol, spec));
                    let codec = if !speaks_another && old.codec == spec.codec {
                        None
                    } else if let Some(reused) = reused() {
                        Some(reused)
                    } else {
                        let codec = builder
                            .codec(
                                protocol,
                                spec.codec.as_ref(),
                                Side::Upstream,
                                handle.scope(),
                            )
                            .map_err(within)?;
                        Some((protocol.to_owned(), codec))
                    };
                    handle
                        .check_update(spec, codec.as_ref().map(|(_, c)| c))
                        .map_err(within)?;
                    plan.changed_clusters.push(ClusterChange {
                        at: i,
                        handle: handle.clone(),
                        spec: spec.clone(),
                        codec,
                        local: local.cloned(),
                        resolved: resolved(),
                        answers: resolution.map_or_else(|| handle.answers_taken(), |r| r.answers),
                        checked,
                    });
                }
            }
        }
        protocol_changed |= dropped.iter().any(|name| live.contains_key(*name));
        // Those running that the new config does not build: among those looked at when the
        // others run as they are, else all but those kept (none when it keeps as many).
        plan.removed_clusters = if as_is.holds() {
            dropped
                .into_iter()
                .chain(as_is.removed())
                .filter(|name| live.contains_key(*name))
                .map(str::to_owned)
                .collect()
        } else if kept.len() == live.len() {
            Vec::new()
        } else {
            let kept: HashSet<&str> = kept.into_iter().collect();
            live.keys()
                .filter(|name| !kept.contains(name.as_str()))
                .cloned()
                .collect()
        };
        // The same clusters as running (the usual update: some change, none come or go): the
        // running map serves as the prospective one, where a copy cost a 20,000-cluster update
        // a fifth of its time.
        let prospective = if plan.new_clusters.is_empty() && plan.removed_clusters.is_empty() {
            live.clone()
        } else {
            let next = Arc::new(cluster::changed(
                &live,
                &plan.new_clusters,
                &plan.removed_clusters,
            ));
            plan.clusters = Some(next.clone());
            next
        };
        let prospective = ClusterManager::sharing(prospective);

        // Route configs: compile what changed.
        let listener_protocols = route_config_protocols(new);
        let slots = self.lock_routes().clone();
        // A route shared with the running table at its place passed the protocol check there,
        // and its subsets are registered: unless a listener or a cluster's protocol changed, only
        // the other routes are looked at (an update of a cluster looks at no route).
        let recheck = protocol_changed || new.listeners != current.listeners;
        let mut routed = BTreeSet::new();
        for (i, spec) in new.route_configs.iter().enumerate() {
            let at = format!("route_configs[{i}]");
            let users = listener_protocols
                .get(spec.name.as_str())
                .cloned()
                .unwrap_or_default();
            let protocol = |cluster: &str| {
                let i = index.position(cluster)?;
                let spec = new.clusters.get(i)?;
                protocols.of(i, spec).ok().flatten().map(str::to_owned)
            };
            let running = slots.get(&spec.name).map(|slot| slot.table.load_full());
            let running_routes = running.as_ref().map(|table| &table.spec().routes);
            let shared = |i: usize, route: &Arc<RouteSpec>| {
                running_routes
                    .and_then(|routes| routes.get(i))
                    .is_some_and(|running| Arc::ptr_eq(running, route))
            };
            let routes = spec.routes.iter().enumerate();
            let unchecked = routes
                .clone()
                .filter(|(i, route)| recheck || !shared(*i, route));
            check_routes_protocols(unchecked.map(|(i, route)| (i, &**route)), &users, &protocol)
                .map_err(|e| e.within(&at))?;
            if running.as_ref().is_some_and(|table| table.spec() == spec) {
                continue;
            }
            routed.extend(
                routes
                    .filter(|(i, route)| !shared(*i, route))
                    .flat_map(|(_, route)| route.clusters()),
            );
            let version = running.as_ref().map_or(1, |table| table.version() + 1);
            let table = builder
                .route_table(spec, version, &prospective)
                .map_err(|e| e.within(&at))?;
            if running.is_some() {
                plan.tables.push((spec.name.clone(), table));
            } else {
                plan.new_slots.insert(
                    spec.name.clone(),
                    Arc::new(RouteSlot {
                        table: Published::new(Arc::new(table)),
                    }),
                );
            }
        }
        plan.routed_clusters = routed
            .into_iter()
            .filter_map(|name| live.get(name).cloned())
            .collect();
        plan.removed_route_configs = slots
            .keys()
            .filter(|name| new.route_config(name).is_none())
            .cloned()
            .collect();

        // Listeners: contexts for new and changed ones, sockets for new ones. (The drain time
        // is the proxy's, not a listener's: a new one changes no listener.)
        for (i, spec) in new.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            let old = current.listeners.iter().find(|l| l.name == spec.name);
            if old == Some(spec) {
                continue;
            }
            let slot = plan
                .new_slots
                .get(&spec.route_config)
                .or_else(|| slots.get(&spec.route_config))
                .cloned()
                .ok_or_else(|| {
                    ConfigError::new(format!("{at}.route_config"), "no such route config")
                })?;
            let context = builder
                .listener(spec, slot, self.kept_tls(old, spec))
                .map_err(|e| e.within(&at))?;
            match old {
                Some(old) if old.address == spec.address => plan.changed_listeners.push(context),
                Some(old) => {
                    // A new address: the old socket drains, a new one opens.
                    plan.removed_listeners.push(old.name.clone());
                    plan.new_listeners.push((spec.clone(), context, None));
                }
                None => plan.new_listeners.push((spec.clone(), context, None)),
            }
        }
        plan.removed_listeners.extend(
            current
                .listeners
                .iter()
                .filter(|l| !new.listeners.iter().any(|n| n.name == l.name))
                .map(|l| l.name.clone()),
        );
        plan.released = plan
            .removed_listeners
            .iter()
            .filter_map(|name| self.listeners.socket(name))
            .filter_map(|socket| Some((socket.local_addr().ok()?, socket)))
            .collect();
        Ok(())
    }

    /// Publishes a prepared plan.
    fn commit(&self, plan: Plan) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        for handle in &plan.new_clusters {
            summary.clusters.push((handle.name().to_string(), 1));
            // Started by the warm-up already (kept running), unless the cluster sends to a
            // listener this commit starts serving.
            handle.start_health();
            tokio::spawn(dns::refresh(
                Arc::downgrade(handle),
                SystemResolver,
                self.shutdown.clone(),
            ));
        }
        // The prospective map, published as it is: the clusters the commit removes are retired
        // once nothing else is left to publish.
        let replaced = plan.clusters.map(|next| self.clusters.replace(next));
        for update in plan.updated_clusters {
            let name = update.name().to_owned();
            summary.clusters.push((name, update.commit()));
        }
        for rebuilt in plan.rebuilt_clusters {
            rebuilt.commit();
        }
        {
            let mut slots = self.lock_routes();
            for (name, table) in plan.tables {
                if let Some(slot) = slots.get(&name) {
                    summary.route_configs.push((name.clone(), table.version()));
                    // The old table's series go when the last request using it does.
                    slot.table.swap(Arc::new(table));
                }
            }
            for (name, slot) in plan.new_slots {
                summary.route_configs.push((name.clone(), 1));
                slots.insert(name, slot);
            }
        }
        for name in &plan.removed_listeners {
            self.listeners.remove(name);
        }
        for (_, context, socket) in plan.new_listeners {
            let Some(socket) = socket else { continue };
            let name = context.name.to_string();
            let address = self.listeners.start(socket, context);
            summary.listeners.push((name, address));
        }
        for context in plan.changed_listeners {
            if let Some(address) = self.listeners.address(&context.name) {
                summary.listeners.push((context.name.to_string(), address));
            }
            self.listeners.update(context);
        }
        {
            let mut slots = self.lock_routes();
            for name in &plan.removed_route_configs {
                slots.remove(name);
            }
        }
        for name in &plan.removed_clusters {
            if let Some(handle) = replaced.as_ref().and_then(|clusters| clusters.get(name)) {
                handle.retire();
            }
        }
        summary.removed = plan
            .removed_listeners
            .into_iter()
            .map(|n| format!("listener {n}"))
            .chain(
                plan.removed_route_configs
                    .into_iter()
                    .map(|n| format!("route config {n}")),
            )
            .chain(
                plan.removed_clusters
                    .into_iter()
                    .map(|n| format!("cluster {n}")),
            )
            .collect();
        summary
    }

    /// Logs the route configs and clusters a file reload replaces that were last set through
    /// the API: the file wins, but silently undoing an operator's change is a trap.
    fn warn_replacing_api_changes(&self, current: &Config, new: &Config) {
        let mut touched = self.lock_api_touched();
        let (current_clusters, new_clusters) = (clusters_by_name(current), clusters_by_name(new));
        for name in std::mem::take(&mut *touched) {
            let route_changed = current.route_config(&name) != new.route_config(&name);
            let cluster_changed = match (
                current_clusters.get(name.as_str()),
                new_clusters.get(name.as_str()),
            ) {
                (Some(old), Some(new)) => !same_cluster(old, new),
                (old, new) => old.is_some() != new.is_some(),
            };
            if route_changed || cluster_changed {
                tracing::warn!(resource = %name, "the config file replaces a change made through the admin or embedding API");
            }
        }
    }

    fn remember_api_changes(&self, current: &Config, new: &Config, as_is: &RunningAsIs<'_>) {
        let mut touched = self.lock_api_touched();
        let route_names: BTreeSet<&String> = new.route_configs.iter().map(|r| &r.name).collect();
        for name in route_names {
            if current.route_config(name) != new.route_config(name) {
                touched.insert(name.clone());
            }
        }
        // The clusters the running ones were edited into: those that came, and those changed.
        if let Some(edit) = &as_is.edit {
            for &(i, old) in edit.looked_at() {
                let Some(cluster) = new.clusters.get(i) else {
                    continue;
                };
                let old = old.and_then(|at| current.clusters.get(at));
                if !old.is_some_and(|old| same_cluster(old, cluster)) {
                    touched.insert(cluster.name.clone());
                }
            }
            return;
        }
        // An update leaves the clusters where they were: each is compared with the one at its
        // index, the running list indexed by name only once one has moved.
        let mut by_name = None;
        for (i, cluster) in new.clusters.iter().enumerate() {
            let old = match current.clusters.get(i) {
                Some(old) if old.name == cluster.name => Some(old),
                _ => by_name
                    .get_or_insert_with(|| clusters_by_name(current))
                    .get(cluster.name.as_str())
                    .copied(),
            };
            if !old.is_some_and(|old| same_cluster(old, cluster)) {
                touched.insert(cluster.name.clone());
            }
        }
    }

    /// The TLS acceptor a listener `spec` that was `old` keeps: its running one, when its `tls`
    /// did not change (it reloads its files itself as they change).
    fn kept_tls(
        &self,
        old: Option<&ListenerSpec>,
        spec: &ListenerSpec,
    ) -> Option<Arc<TlsAcceptor>> {
        let old = old.filter(|old| old.tls.is_some() && old.tls == spec.tls)?;
        self.listeners.tls_acceptor(&old.name)
    }

    /// The bound address of a listener that was just added.
    pub(crate) fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.address(name)
    }
}

/// The clusters of `config` by name: looking each one up in the list instead cost clusters
/// squared (400 million comparisons for 20,000 clusters).
fn clusters_by_name(config: &Config) -> BTreeMap<&str, &Arc<ClusterSpec>> {
    config
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect()
}
