//! The configuration model: what a YAML file (documented in the repository's `docs/config.md`)
//! says, parsed and checked before anything runs.
//!
//! [`Config::from_yaml`] parses and validates a whole file; [`RouteConfigSpec::from_yaml`] and
//! [`ClusterSpec::from_yaml`] parse one route config or cluster (for the admin API's `PUT`s).
//! Every rejection names the field, the line and column, and the reason. Strings are strings: where a string is expected, a plain YAML
//! scalar that reads as a number or boolean (`1.10`, `yes`) is an error that says to quote it,
//! never a silent conversion. Building the running engine from a valid config happens in
//! [`crate::Proxy`].

mod cluster;
mod dynamic;
mod error;
mod limits;
mod listener;
mod route;
mod source;
mod telemetry;
mod tls;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cluster::{
    CircuitBreakersSpec, ClusterSpec, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECTIONS_PER_ENDPOINT,
    DEFAULT_DNS_REFRESH_RATE, DEFAULT_LOCALITY_FAILOVER_THRESHOLD, DEFAULT_UPSTREAM_IDLE_TIMEOUT,
    DnsLookupFamily, EndpointAddress, EndpointSpec, HealthCheckSpec, HttpProbeSpec, LbPolicy,
    LocalitySpec, OutlierDetectionSpec, ProbeSpec, RetryBudgetSpec, StatusRange,
    TransportSocketMatchSpec,
};
pub use dynamic::{
    CertificateProviderSpec, DynamicSpec, KeepaliveSpec, NodeLocalitySpec, NodeMetadataValue,
    ReconnectSpec, XDS, XdsApiType, XdsLimitsSpec, XdsSpec,
};
pub(crate) use error::Errors;
pub use error::{ConfigError, Position};
pub use limits::{DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_REQUESTS, LimitsSpec};
pub use listener::{AdminSpec, DEFAULT_FRAME_TIMEOUT, FilterSpec, ListenerSpec};
pub(crate) use route::check_percentage;
pub use route::{
    DEFAULT_MIRROR_MAX_IN_FLIGHT, DEFAULT_RETRY_BASE_INTERVAL, DirectResponseSpec, MAX_NUM_RETRIES,
    MatchSpec, MetadataMatcherSpec, MirrorSpec, MutationSpec, RetryBackOffSpec, RetryOn,
    RetryPolicySpec, RouteActionSpec, RouteConfigSpec, RouteSpec, WeightedClusterSpec,
};
pub(crate) use source::{from_value, is_blank};
pub use telemetry::{
    AccessLogSpec, DEFAULT_ACCESS_LOG_QUEUE, DEFAULT_LATENCY_BUCKETS, DEFAULT_METHOD_LABEL_LIMIT,
    IstioReporter, IstioSpec, IstioWorkloadSpec, MetricsSpec, Propagation, TracingSpec,
};
pub use tls::{ClusterTlsSpec, ListenerTlsSpec, MAX_ALPN_LIST_BYTES, MAX_ALPN_PROTOCOLS};

/// The most bytes a config file may hold ([`Config::read_file`], [`crate::Proxy::watch_file`]):
/// some 60 times a config of 10,000 routes, and low enough that a path naming a huge file is
/// refused rather than read into memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 64 << 20;

/// The bytes of the config file at `path`: a regular file of at most [`MAX_CONFIG_FILE_BYTES`]
/// (see [`Config::read_file`]), or why not.
pub(crate) fn read_config_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    metaprotocol_core::read_regular_file(path, MAX_CONFIG_FILE_BYTES)
}

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin HTTP endpoint, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSpec>,
    /// How long connections keep serving once shutdown begins (or their listener is removed)
    /// before what is still in flight is answered with an error and they close.
    #[serde(default = "default_drain_time", with = "humantime_serde")]
    pub drain_time: Duration,
    /// What all clients together may make the proxy hold.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// The proxy itself: where it runs (for locality-aware load balancing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeSpec>,
    /// How metrics are shaped (histogram buckets, label limits, Istio-compatible series); a
    /// change takes effect on restart.
    #[serde(default, skip_serializing_if = "MetricsSpec::is_default")]
    pub metrics: MetricsSpec,
    /// Resources from a control plane (xDS), served by a registered
    /// [`DynamicSource`](crate::DynamicSource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicSpec>,
    /// Where the proxy accepts clients.
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    /// Named route tables, referenced by listeners.
    #[serde(default)]
    pub route_configs: Vec<RouteConfigSpec>,
    /// Upstream clusters, referenced by routes. Each is shared: the running config, the
    /// running cluster and the next update's config hold one spec, so an update that leaves a
    /// cluster alone neither copies nor checks it again.
    #[serde(default, with = "shared")]
    pub clusters: Vec<Arc<ClusterSpec>>,
}

/// The proxy itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Where the proxy runs: locality-aware clusters prefer endpoints in this zone, then this
    /// region.
    pub locality: LocalitySpec,
}

fn default_drain_time() -> Duration {
    crate::DEFAULT_DRAIN_TIMEOUT
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin: None,
            drain_time: default_drain_time(),
            limits: LimitsSpec::default(),
            node: None,
            metrics: MetricsSpec::default(),
            dynamic: None,
            listeners: Vec::new(),
            route_configs: Vec::new(),
            clusters: Vec::new(),
        }
    }
}

impl Config {
    /// Parses and validates a YAML (or JSON) document. Errors carry the line and column of the
    /// offending field; this one is the first of [`Config::check_yaml`]'s.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::check_yaml(text).map_err(|errors| {
            errors
                .into_iter()
                .next()
                .unwrap_or_else(|| ConfigError::new("", "invalid config"))
        })
    }

    /// Parses and validates a YAML (or JSON) document, reporting every error in it (never an
    /// empty list), each with its line and column, in document order. A document that does not
    /// parse is parsed again entry by entry (each listener, route config and cluster), so that
    /// every entry's type errors are found, and what parsed is validated too.
    pub fn check_yaml(text: &str) -> Result<Self, Vec<ConfigError>> {
        let (config, mut errors, failed) = match source::parse::<Config>(text) {
            Ok(config) => (config, Vec::new(), Vec::new()),
            Err(first) => match source::parse_entries(text) {
                Some((config, errors, failed)) if !errors.is_empty() => (config, errors, failed),
                _ => return Err(vec![first]),
            },
        };
        // An entry that did not parse stands in with its name only: its parse error says what
        // is wrong with it.
        let about_failed = |e: &ConfigError| {
            failed.iter().any(|path| {
                e.field
                    .strip_prefix(path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
        };
        errors.extend(
            config
                .errors()
                .into_iter()
                .filter(|e| !about_failed(e))
                .map(|e| e.located_in(text)),
        );
        if errors.is_empty() {
            return Ok(config);
        }
        errors.sort_by_key(|e| e.position.map(|p| (p.line, p.column)));
        Err(errors)
    }

    /// Reads, parses and validates a config file (read as [`Config::read_file`] reads it).
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = Self::read_file(path).map_err(|why| {
            ConfigError::new("", format!("cannot read {}: {why}", path.display()))
        })?;
        Self::from_yaml(&text)
    }

    /// The text of the config file at `path`, or why it cannot be read, in words that follow
    /// "cannot read `path`: " (`it is larger than 64 MiB`, `it is a FIFO, not a regular file`).
    /// Only a regular file (after symlinks) of at most [`MAX_CONFIG_FILE_BYTES`] of UTF-8 text
    /// is read: a path naming a huge file or a device that never ends (`/dev/zero`) is refused,
    /// not read into memory, and a FIFO is refused without waiting for a writer. It blocks, as
    /// any read of a file does: call it off an async runtime's workers.
    pub fn read_file(path: &std::path::Path) -> Result<String, String> {
        let bytes = read_config_file(path)?;
        String::from_utf8(bytes)
            .map_err(|err| format!("it is not UTF-8 text: {}", err.utf8_error()))
    }

    /// Checks cross references and values that the types alone cannot; the first error of
    /// [`Config::errors`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.errors().into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Every error [`Config::validate`] would report, in the order of the document's sections.
    pub fn errors(&self) -> Vec<ConfigError> {
        self.errors_beyond(&Config::default(), None, Names::Other)
    }

    /// [`Config::validate`] for a config made from `checked`, a valid one: a cluster at the
    /// index it had in `checked`, the same spec (shared, not equal), is not checked again, so an
    /// update of one cluster among thousands checks that one, and a route config is not checked
    /// again while it is as it was and no cluster's name is gone. Its clusters' names are indexed
    /// from `known`'s (a valid list and its index) as [`ClusterEdit`] finds them added and
    /// removed, so that an update that adds or removes one indexes that one (none when none
    /// comes or goes); returns that index. Every check across entries (names unique, names
    /// referenced exist, ...) runs in full.
    pub(crate) fn validate_beyond(
        &self,
        checked: &Config,
        known: (&[Arc<ClusterSpec>], &ClusterIndex),
    ) -> Result<ClusterIndex, ConfigError> {
        let edit = ClusterEdit::between(&self.clusters, known);
        let index = match &edit {
            Some(edit) => known.1.edited(known.0, &self.clusters, edit),
            None => ClusterIndex::build(&self.clusters),
        };
        let names = match &edit {
            Some(edit) if std::ptr::eq(known.0, checked.clusters.as_slice()) => {
                if edit.removed.is_empty() {
                    Names::Kept
                } else {
                    Names::Removed
                }
            }
            _ if same_places(&self.clusters, &checked.clusters) => Names::Kept,
            _ => Names::Other,
        };
        // A name empty or repeated: the errors in their usual order say which comes first.
        let first = match &index {
            Ok(index) => self.errors_beyond(checked, Some(index), names),
            Err(_) => self.errors_beyond(checked, None, names),
        };
        match (first.into_iter().next(), index) {
            (None, Ok(index)) => Ok(index),
            (Some(error), _) | (None, Err(error)) => Err(error),
        }
    }

    /// Every error of [`Config::validate_beyond`], its clusters' names looked up in `index`
    /// when it has one (their uniqueness checked as it was built); `names` says how they are
    /// those of `checked`.
    fn errors_beyond(
        &self,
        checked: &Config,
        index: Option<&ClusterIndex>,
        names: Names,
    ) -> Vec<ConfigError> {
        let mut errors = Errors::default();
        if let Some(dynamic) = &self.dynamic {
            errors.within("dynamic", |errors| dynamic.check(errors));
        }
        if let Some(admin) = &self.admin {
            errors.check("admin", admin.validate());
        }
        errors.check("limits", self.limits.validate());
        errors.check("metrics", self.metrics.validate());
        // The names, looked up once per route's cluster: a search of the list each time cost
        // routes times clusters. Those the uniqueness check gathered, unless it stopped part way.
        let (cluster_names, unique_clusters) = match index {
            Some(_) => (BTreeSet::new(), Ok(())),
            None => match unique_names(
                self.clusters.iter().map(|c| Some(c.name.as_str())),
                "clusters",
            ) {
                Ok(names) => (names, Ok(())),
                Err(err) => (
                    self.clusters.iter().map(|c| c.name.as_str()).collect(),
                    Err(err),
                ),
            },
        };
        let has_cluster = |name: &str| match index {
            Some(index) => index.position(name).is_some(),
            None => cluster_names.contains(name),
        };
        let lists = [
            unique_clusters,
            unique_names(
                self.route_configs.iter().map(|r| Some(r.name.as_str())),
                "route_configs",
            )
            .map(drop),
            unique_names(
                self.listeners.iter().map(|l| Some(l.name.as_str())),
                "listeners",
            )
            .map(drop),
        ];
        for list in lists {
            errors.check("", list);
        }
        for (i, cluster) in self.clusters.iter().enumerate() {
            if !checked
                .clusters
                .get(i)
                .is_some_and(|c| Arc::ptr_eq(c, cluster))
            {
                errors.within(&format!("clusters[{i}]"), |errors| cluster.check(errors));
            }
            if cluster.locality_aware && self.node.is_none() {
                errors.add(ConfigError::new(
                    format!("clusters[{i}].locality_aware"),
                    "needs the proxy's own locality: set `node: { locality: { region, zone } }`",
                ));
            }
        }
        // A route config as it was in `checked`, whose clusters' names (and maybe more) and
        // dynamic section are too, passes as it passed there: each update checked every route of
        // every route config. So does each route of a changed one that is at its place there
        // (one route changed among 10,000 is checked alone). With names gone, one as it was
        // passes while it names none of them: its routes' clusters are looked up, not checked
        // again whole.
        let known = |name: &str| has_cluster(name) || self.dynamic_cluster(name);
        let same_dynamic = self.dynamic == checked.dynamic;
        for (i, routes) in self.route_configs.iter().enumerate() {
            let passed = checked.route_configs.get(i).filter(|passed| {
                same_dynamic && names != Names::Other && passed.name == routes.name
            });
            if passed == Some(routes)
                && (names == Names::Kept
                    || routes
                        .routes
                        .iter()
                        .all(|route| route.clusters().all(known)))
            {
                continue;
            }
            let passed = passed.filter(|_| names == Names::Kept);
            errors.within(&format!("route_configs[{i}]"), |errors| {
                routes.check_beyond(&known, passed, errors);
            });
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            errors.within(&at, |errors| listener.check(errors));
            if !self.has_route_config(&listener.route_config) {
                errors.add(ConfigError::new(
                    format!("{at}.route_config"),
                    format!("no route config named `{}`", listener.route_config),
                ));
            }
        }
        errors.check("", self.check_addresses());
        errors.into_vec()
    }

    /// Rejects two sockets on one address, which could not both be bound.
    fn check_addresses(&self) -> Result<(), ConfigError> {
        let sockets = self
            .admin
            .iter()
            .map(|admin| {
                (
                    "admin".to_owned(),
                    "the admin API".to_owned(),
                    admin.address,
                )
            })
            .chain(self.listeners.iter().enumerate().map(|(i, listener)| {
                (
                    format!("listeners[{i}]"),
                    format!("listener `{}`", listener.name),
                    listener.address,
                )
            }));
        let mut bound: Vec<(String, SocketAddr)> = Vec::new();
        for (at, owner, address) in sockets {
            if let Some((other, _)) = bound.iter().find(|(_, a)| same_socket(*a, address)) {
                return Err(ConfigError::new(
                    format!("{at}.address"),
                    format!("{address} is already taken by {other}"),
                ));
            }
            bound.push((owner, address));
        }
        Ok(())
    }

    /// Things that are valid but probably not what the author meant, one sentence each: an
    /// empty config, or one without listeners (it serves nothing). `metaprotocol-proxy validate`
    /// and `run` print them; a proxy starts regardless.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let empty = self.admin.is_none()
            && self.listeners.is_empty()
            && self.route_configs.is_empty()
            && self.clusters.is_empty();
        if empty {
            warnings.push("the config is empty: the proxy would serve nothing".to_owned());
        } else if self.listeners.is_empty() {
            warnings.push("no listeners: the proxy would serve nothing".to_owned());
        }
        warnings
    }

    /// The route config named `name`.
    pub fn route_config(&self, name: &str) -> Option<&RouteConfigSpec> {
        self.route_configs.iter().find(|r| r.name == name)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterSpec> {
        self.clusters.iter().find(|c| c.name == name).map(|c| &**c)
    }

    /// True if the route config `name` is in the config, or may come from its dynamic source.
    pub fn has_route_config(&self, name: &str) -> bool {
        self.route_config(name).is_some()
            || self
                .dynamic
                .as_ref()
                .is_some_and(|d| d.provides_route_config(name))
    }

    /// True if the cluster `name` is in the config, or may come from its dynamic source.
    pub fn has_cluster(&self, name: &str) -> bool {
        self.cluster(name).is_some() || self.dynamic_cluster(name)
    }

    /// True if the cluster `name` may come from the dynamic source.
    fn dynamic_cluster(&self, name: &str) -> bool {
        self.dynamic
            .as_ref()
            .is_some_and(|d| d.provides_cluster(name))
    }
}

/// True if binding `b` would fail while `a` is bound: the same port (0 picks a free one, so never
/// clashes) and the same address, or a wildcard address of the same family.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// True if `a` and `b` are the same cluster spec: shared, or else equal field by field (the
/// comparison an update makes for each cluster it may leave alone, so shared first).
pub(crate) fn same_cluster(a: &Arc<ClusterSpec>, b: &Arc<ClusterSpec>) -> bool {
    if Arc::ptr_eq(a, b) {
        return true;
    }
    #[cfg(test)]
    work::count(&work::COMPARED);
    a == b
}

/// The place of each cluster of a list, by name. Built once, which checks the names (none
/// empty, none repeated), then carried over to the lists made from that one, edited as they
/// were ([`ClusterIndex::edited`]): an update of one cluster among thousands indexes none, and
/// one that adds one indexes that one, where each update indexed every name several times.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterIndex(Arc<HashMap<Arc<str>, usize>>);

impl ClusterIndex {
    /// Indexes `clusters`, erring as [`Config::validate`] does on an empty or repeated name.
    pub fn build(clusters: &[Arc<ClusterSpec>]) -> Result<Self, ConfigError> {
        let mut index = HashMap::with_capacity(clusters.len());
        for (i, cluster) in clusters.iter().enumerate() {
            Self::insert(&mut index, i, &cluster.name)?;
        }
        Ok(Self(Arc::new(index)))
    }

    /// Indexes `name` at place `i`, erring on an empty or repeated name.
    fn insert(
        index: &mut HashMap<Arc<str>, usize>,
        i: usize,
        name: &str,
    ) -> Result<(), ConfigError> {
        #[cfg(test)]
        work::count(&work::NAMES_INDEXED);
        unique_name("clusters", i, name, || {
            index.insert(name.into(), i).is_none()
        })
    }

    /// The index of `clusters`, made from `known` (which this indexes) by `edit`: this one when
    /// no cluster comes or goes; else a copy without the removed names, the others moved up,
    /// and the added ones indexed, when they were added at the end (an update adding clusters
    /// appends them); else built anew.
    pub fn edited(
        &self,
        known: &[Arc<ClusterSpec>],
        clusters: &[Arc<ClusterSpec>],
        edit: &ClusterEdit,
    ) -> Result<Self, ConfigError> {
        let kept = known.len() - edit.removed.len();
        if edit.added.first().is_some_and(|&i| i < kept) {
            return Self::build(clusters);
        }
        if edit.added.is_empty() && edit.removed.is_empty() {
            return Ok(self.clone());
        }
        let mut index = HashMap::clone(&self.0);
        for cluster in edit.removed.iter().filter_map(|&at| known.get(at)) {
            index.remove(cluster.name.as_str());
        }
        if !edit.removed.is_empty() {
            for place in index.values_mut() {
                *place -= edit.removed.partition_point(|&at| at < *place);
            }
        }
        for &i in &edit.added {
            let name = clusters.get(i).map_or("", |cluster| cluster.name.as_str());
            Self::insert(&mut index, i, name)?;
        }
        Ok(Self(Arc::new(index)))
    }

    /// The place of the cluster `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.0.get(name).copied()
    }
}

/// How the names of a config's clusters are those of the config it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    /// All of them, and maybe more.
    Kept,
    /// Some of them are gone: removed from the list, the others kept in order.
    Removed,
    /// Told apart no further.
    Other,
}

/// How a list of clusters was made from a known one by adding and removing clusters, the others
/// keeping their order: found by a walk of the two lists that looks a name up in the known
/// list's index only where they part, so that an update that adds or removes one cluster among
/// thousands looks at that one (and at those whose spec changed), where it looked at them all.
#[derive(Debug, Default)]
pub(crate) struct ClusterEdit {
    /// The clusters to look at: their places in the new list, ascending, with their places in
    /// the known one for those it names (their specs changed, not shared).
    looked_at: Vec<(usize, Option<usize>)>,
    /// The places in the new list of the clusters the known one does not name, ascending.
    added: Vec<usize>,
    /// The places in the known list of the clusters the new one does not name, ascending.
    removed: Vec<usize>,
}

impl ClusterEdit {
    /// The edit that makes `clusters` from `known` (a valid list and its index); `None` when
    /// it moved a cluster, or named one twice.
    pub fn between(
        clusters: &[Arc<ClusterSpec>],
        (known, index): (&[Arc<ClusterSpec>], &ClusterIndex),
    ) -> Option<Self> {
        // The length too: an index of another list (the empty one a proxy starts with) is no
        // index of this one.
        if index.0.len() != known.len() {
            return None;
        }
        let mut edit = Self::default();
        // The first cluster of `known` that the walk has not passed.
        let mut from = 0;
        for (i, cluster) in clusters.iter().enumerate() {
            let named = |at: usize| known.get(at).is_some_and(|k| k.name == cluster.name);
            // Shared first: most are, and a pointer is cheaper to compare than a name.
            let shared = known.get(from).is_some_and(|k| Arc::ptr_eq(k, cluster));
            if shared {
                from += 1;
                continue;
            }
            if !named(from) {
                match index.position(&cluster.name) {
                    None => {
                        edit.looked_at.push((i, None));
                        edit.added.push(i);
                        continue;
                    }
                    // Those passed over are gone; a name before them is one moved or repeated.
                    Some(at) if at > from && named(at) => {
                        edit.removed.extend(from..at);
                        from = at;
                    }
                    Some(_) => return None,
                }
            }
            if !known.get(from).is_some_and(|k| Arc::ptr_eq(k, cluster)) {
                edit.looked_at.push((i, Some(from)));
            }
            from += 1;
        }
        edit.removed.extend(from..known.len());
        Some(edit)
    }

    /// The clusters of the new list that are not the known list's, shared: their places in the
    /// new list, ascending, with their places in the known one for those it names.
    pub fn looked_at(&self) -> &[(usize, Option<usize>)] {
        &self.looked_at
    }

    /// The places in the known list of the clusters the new one does not name, ascending.
    pub fn removed(&self) -> &[usize] {
        &self.removed
    }
}

/// True if `a` and `b` name the same clusters at the same places.
pub(crate) fn same_places(a: &[Arc<ClusterSpec>], b: &[Arc<ClusterSpec>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| Arc::ptr_eq(a, b) || a.name == b.name)
}

/// The work config updates do on this thread, counted for the tests that bound it.
#[cfg(test)]
pub(crate) mod work {
    use std::cell::Cell;
    use std::thread::LocalKey;

    thread_local! {
        /// Cluster specs checked on their own ([`super::ClusterSpec::check`]).
        pub static CHECKED: Cell<usize> = const { Cell::new(0) };
        /// Cluster specs compared field by field ([`super::same_cluster`]).
        pub static COMPARED: Cell<usize> = const { Cell::new(0) };
        /// Route specs checked on their own.
        pub static ROUTES_CHECKED: Cell<usize> = const { Cell::new(0) };
        /// Route specs compared field by field (in comparing route configs).
        pub static ROUTES_COMPARED: Cell<usize> = const { Cell::new(0) };
        /// Routes whose clusters were listed ([`super::RouteSpec::clusters`]): each pass over
        /// a route config's routes that looks at where they send.
        pub static ROUTES_WALKED: Cell<usize> = const { Cell::new(0) };
        /// Cluster names put in an index ([`super::ClusterIndex`]).
        pub static NAMES_INDEXED: Cell<usize> = const { Cell::new(0) };
        /// Running clusters checked against a config's spec, each under its lock.
        pub static HANDLES_CHECKED: Cell<usize> = const { Cell::new(0) };
        /// Copies of the map of running clusters ([`crate::cluster::changed`]).
        pub static CLUSTER_MAPS_COPIED: Cell<usize> = const { Cell::new(0) };
        /// Cluster snapshots built (their sets' balancers: `ring_hash` and `maglev` tables).
        pub static SNAPSHOTS_BUILT: Cell<usize> = const { Cell::new(0) };
    }

    /// Counts one unit of `counter`'s work.
    pub fn count(counter: &'static LocalKey<Cell<usize>>) {
        counter.with(|c| c.set(c.get() + 1));
    }

    /// The work counted by `counter` so far.
    pub fn done(counter: &'static LocalKey<Cell<usize>>) -> usize {
        counter.with(Cell::get)
    }
}

/// (De)serializes a list of shared entries as the list of the entries.
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        list: &[Arc<T>],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(list.iter().map(|entry| &**entry))
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Arc<T>>, D::Error> {
        let list = Vec::<T>::deserialize(deserializer)?;
        Ok(list.into_iter().map(Arc::new).collect())
    }
}

/// Rejects empty and duplicate names in a list; unnamed entries (`None`) are skipped.
fn unique_names<'a>(
    names: impl Iterator<Item = Option<&'a str>>,
    list: &str,
) -> Result<BTreeSet<&'a str>, ConfigError> {
    let mut seen = BTreeSet::new();
    for (i, name) in names.enumerate() {
        let Some(name) = name else { continue };
        unique_name(list, i, name, || seen.insert(name))?;
    }
    Ok(seen)
}

/// Rejects entry `i` of `list` when its `name` is empty, or when `first` (which records a name
/// that is not) says the list had it before.
fn unique_name(
    list: &str,
    i: usize,
    name: &str,
    first: impl FnOnce() -> bool,
) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        "must not be empty".to_owned()
    } else if !first() {
        format!("duplicate name `{name}`")
    } else {
        return Ok(());
    };
    Err(ConfigError::new(format!("{list}[{i}].name"), reason))
}

#[cfg(test)]
pub(crate) mod fields;
#[cfg(test)]
mod tests;
