//! The running engine: builds everything a config describes, binds the listeners, swaps route
//! tables on update, and drains on shutdown.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metaprotocol_core::{CodecFactory, CodecOptions, CodecRegistry, FilterChain};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::config::{Config, ConfigError, RouteConfigSpec, RouteSpec};
use crate::filters::FilterRegistry;
use crate::route::RouteTable;
use crate::server::{self, ListenerContext};
use crate::stats::Metrics;

/// How long shutdown waits for requests in flight before giving up on them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a proxy did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// A listener's address could not be bound.
    #[error("listener {listener}: cannot bind {address}: {source}")]
    Bind {
        /// The listener.
        listener: String,
        /// Its address.
        address: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// Options for starting a [`Proxy`].
#[derive(Debug)]
pub struct ProxyBuilder {
    config: Config,
    codecs: CodecRegistry,
    filters: FilterRegistry,
    drain_timeout: Duration,
}

impl ProxyBuilder {
    /// The protocols listeners and clusters may name.
    pub fn codecs(mut self, codecs: CodecRegistry) -> Self {
        self.codecs = codecs;
        self
    }

    /// The filters listeners may name (defaults to the built-in ones).
    pub fn filters(mut self, filters: FilterRegistry) -> Self {
        self.filters = filters;
        self
    }

    /// How long [`Proxy::shutdown`] waits for requests in flight.
    pub fn drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Checks that the config can be built with these codecs and filters (everything but binding).
    pub fn check(&self) -> Result<(), ConfigError> {
        Built::new(&self.config, &self.codecs, &self.filters, &Metrics::new()).map(|_| ())
    }

    /// Builds everything, binds every listener, and starts serving. Nothing is bound unless the
    /// whole config is valid.
    pub async fn start(self) -> Result<Proxy, StartError> {
        let metrics = Arc::new(Metrics::new());
        let built = Built::new(&self.config, &self.codecs, &self.filters, &metrics)?;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut bound = Vec::new();
        for (spec, context) in self.config.listeners.iter().zip(built.listeners) {
            let listener =
                TcpListener::bind(spec.address)
                    .await
                    .map_err(|source| StartError::Bind {
                        listener: spec.name.clone(),
                        address: spec.address,
                        source,
                    })?;
            let address = listener.local_addr().unwrap_or(spec.address);
            bound.push((spec.name.clone(), address, listener, context));
        }
        let admin =
            match &self.config.admin {
                Some(spec) => Some(TcpListener::bind(spec.address).await.map_err(|source| {
                    StartError::Bind {
                        listener: "admin".to_owned(),
                        address: spec.address,
                        source,
                    }
                })?),
                None => None,
            };
        let mut listeners = Vec::new();
        for (name, address, listener, context) in bound {
            tracing::info!(listener = %name, %address, "listening");
            tracker.spawn(server::serve(
                listener,
                Arc::new(context),
                shutdown.clone(),
                tracker.clone(),
            ));
            listeners.push((name, address));
        }
        let state = Arc::new(ProxyState {
            metrics,
            config: Mutex::new(self.config),
            clusters: built.clusters,
            cluster_protocols: built.cluster_protocols,
            route_tables: built.route_tables,
        });
        let admin = match admin {
            Some(listener) => {
                let address = listener.local_addr().ok();
                tracker.spawn(crate::admin::serve(
                    listener,
                    state.clone(),
                    shutdown.clone(),
                ));
                address
            }
            None => None,
        };
        Ok(Proxy {
            state,
            admin,
            listeners,
            shutdown,
            tracker,
            drain_timeout: self.drain_timeout,
        })
    }
}

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
#[derive(Debug)]
pub struct Proxy {
    state: Arc<ProxyState>,
    admin: Option<SocketAddr>,
    listeners: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    drain_timeout: Duration,
}

pub(crate) struct ProxyState {
    metrics: Arc<Metrics>,
    /// The running config, updated with every accepted change; also serialises updates.
    config: Mutex<Config>,
    clusters: HashMap<String, Arc<Cluster>>,
    cluster_protocols: HashMap<String, String>,
    route_tables: HashMap<String, RouteSlot>,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState").finish_non_exhaustive()
    }
}

/// A route config's live table and the protocols of the listeners that use it.
struct RouteSlot {
    table: Arc<ArcSwap<RouteTable>>,
    listener_protocols: BTreeSet<String>,
}

impl Proxy {
    /// Starts a proxy with `codecs` and the built-in filters; see [`ProxyBuilder::start`].
    pub async fn start(config: Config, codecs: CodecRegistry) -> Result<Self, StartError> {
        Self::builder(config).codecs(codecs).start().await
    }

    /// A builder for more options.
    pub fn builder(config: Config) -> ProxyBuilder {
        ProxyBuilder {
            config,
            codecs: CodecRegistry::new(),
            filters: FilterRegistry::with_builtins(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, addr)| *addr)
    }

    /// Every listener's name and bound address.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// The running config (with every accepted update applied).
    pub fn config(&self) -> Config {
        self.state.config()
    }

    /// The admin API's bound address, if the config has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The live table of route config `name`.
    pub fn route_table(&self, name: &str) -> Option<Arc<RouteTable>> {
        self.state
            .route_tables
            .get(name)
            .map(|slot| slot.table.load_full())
    }

    /// The cluster `name`.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.state.clusters.get(name)
    }

    /// Every cluster, by name.
    pub fn clusters(&self) -> impl Iterator<Item = (&String, &Arc<Cluster>)> {
        self.state.clusters.iter()
    }

    /// Replaces route config `spec.name` without closing a connection or failing a request in
    /// flight (those finish on the table they started with). Returns the new version. On error
    /// the running table is untouched.
    pub fn update_route_config(&self, spec: RouteConfigSpec) -> Result<u64, ConfigError> {
        self.state.update_route_config(spec)
    }

    /// Applies a whole new config: every route config that changed is swapped in, hitlessly,
    /// and the changed names with their new versions are returned. Changes to listeners,
    /// clusters or admin are rejected (they take effect on restart). All or nothing: on error the
    /// running config is untouched.
    pub fn reload(&self, config: Config) -> Result<Vec<(String, u64)>, ConfigError> {
        self.state.reload(config)
    }

    /// [`Proxy::reload`] from the text of a config file; a file that does not parse is rejected
    /// (and counted) like any other invalid config.
    pub fn reload_yaml(&self, text: &str) -> Result<Vec<(String, u64)>, ConfigError> {
        match Config::from_yaml(text) {
            Ok(config) => self.reload(config),
            Err(err) => {
                self.state.metrics.config_reload(false);
                Err(err)
            }
        }
    }

    /// Stops accepting, lets requests in flight finish (up to the drain timeout), and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "drain timeout of {:?} reached; abandoning requests in flight",
                self.drain_timeout
            );
        }
    }
}

impl ProxyState {
    pub(crate) fn config(&self) -> Config {
        self.lock_config().clone()
    }

    pub(crate) fn route_versions(&self) -> Vec<(String, u64)> {
        let mut versions: Vec<_> = self
            .route_tables
            .iter()
            .map(|(name, slot)| (name.clone(), slot.table.load().version()))
            .collect();
        versions.sort();
        versions
    }

    pub(crate) fn clusters(&self) -> &HashMap<String, Arc<Cluster>> {
        &self.clusters
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn update_route_config(&self, spec: RouteConfigSpec) -> Result<u64, ConfigError> {
        let mut config = self.lock_config();
        let result = self
            .prepare(&config, &spec)
            .map(|table| self.commit(&mut config, spec, table));
        self.metrics.config_reload(result.is_ok());
        result
    }

    /// Applies every route config change of `new`; see [`Proxy::reload`].
    pub(crate) fn reload(&self, new: Config) -> Result<Vec<(String, u64)>, ConfigError> {
        let result = self.try_reload(new);
        self.metrics.config_reload(result.is_ok());
        result
    }

    fn try_reload(&self, new: Config) -> Result<Vec<(String, u64)>, ConfigError> {
        new.validate()?;
        let mut config = self.lock_config();
        let restart_needed = |field: &str| {
            ConfigError::new(
                field,
                "changed; listeners, clusters and admin take effect on restart (only route configs reload)",
            )
        };
        if new.listeners != config.listeners {
            return Err(restart_needed("listeners"));
        }
        if new.clusters != config.clusters {
            return Err(restart_needed("clusters"));
        }
        if new.admin != config.admin {
            return Err(restart_needed("admin"));
        }
        let names = |c: &Config| {
            c.route_configs
                .iter()
                .map(|r| r.name.clone())
                .collect::<BTreeSet<_>>()
        };
        if names(&new) != names(&config) {
            return Err(restart_needed("route_configs"));
        }
        let mut prepared = Vec::new();
        for (i, spec) in new.route_configs.into_iter().enumerate() {
            if config.route_config(&spec.name) == Some(&spec) {
                continue;
            }
            match self.prepare(&config, &spec) {
                Ok(table) => prepared.push((spec, table)),
                Err(err) => {
                    for (spec, table) in &prepared {
                        self.discard(&spec.name, table);
                    }
                    return Err(err.within(&format!("route_configs[{i}]")));
                }
            }
        }
        Ok(prepared
            .into_iter()
            .map(|(spec, table)| {
                let name = spec.name.clone();
                (name, self.commit(&mut config, spec, table))
            })
            .collect())
    }

    fn lock_config(&self) -> std::sync::MutexGuard<'_, Config> {
        match self.config.lock() {
            Ok(config) => config,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Checks `spec` against the running clusters and compiles it, changing nothing.
    fn prepare(&self, config: &Config, spec: &RouteConfigSpec) -> Result<RouteTable, ConfigError> {
        let slot = self.route_tables.get(&spec.name).ok_or_else(|| {
            ConfigError::new("name", format!("no route config named `{}`", spec.name))
        })?;
        spec.validate(&|name| config.cluster(name))?;
        for (i, route) in spec.routes.iter().enumerate() {
            check_protocols(route, &slot.listener_protocols, &self.cluster_protocols)
                .map_err(|e| e.within(&format!("routes[{i}]")))?;
        }
        let version = slot.table.load().version() + 1;
        RouteTable::build(spec, version, &self.clusters, &self.metrics)
    }

    /// Forgets a prepared table that will not be published (its metric series included).
    fn discard(&self, name: &str, table: &RouteTable) {
        if let Some(slot) = self.route_tables.get(name) {
            table.retire_metrics(&slot.table.load(), &self.metrics);
        }
    }

    /// Publishes a prepared table; returns its version.
    fn commit(&self, config: &mut Config, spec: RouteConfigSpec, table: RouteTable) -> u64 {
        let version = table.version();
        if let Some(slot) = self.route_tables.get(&spec.name) {
            slot.table.load().retire_metrics(&table, &self.metrics);
            slot.table.store(Arc::new(table));
        }
        if let Some(entry) = config
            .route_configs
            .iter_mut()
            .find(|r| r.name == spec.name)
        {
            *entry = spec;
        }
        version
    }
}

/// Everything built from a config before any socket is bound.
struct Built {
    listeners: Vec<ListenerContext>,
    clusters: HashMap<String, Arc<Cluster>>,
    cluster_protocols: HashMap<String, String>,
    route_tables: HashMap<String, RouteSlot>,
}

impl Built {
    fn new(
        config: &Config,
        codecs: &CodecRegistry,
        filters: &FilterRegistry,
        metrics: &Metrics,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut route_protocols: HashMap<&str, BTreeSet<String>> = HashMap::new();
        for listener in &config.listeners {
            route_protocols
                .entry(listener.route_config.as_str())
                .or_default()
                .insert(listener.protocol.clone());
        }
        let cluster_protocols = cluster_protocols(config, &route_protocols)?;

        let mut clusters = HashMap::new();
        for (i, spec) in config.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            let Some(protocol) = cluster_protocols.get(&spec.name) else {
                continue;
            };
            let codec =
                build_codec(codecs, protocol, spec.codec.as_ref()).map_err(|e| e.within(&at))?;
            let cluster = Cluster::new(spec, codec, metrics.cluster(&spec.name))
                .map_err(|e| e.within(&at))?;
            clusters.insert(spec.name.clone(), Arc::new(cluster));
        }

        let mut route_tables = HashMap::new();
        for (i, spec) in config.route_configs.iter().enumerate() {
            let at = format!("route_configs[{i}]");
            let listener_protocols = route_protocols
                .get(spec.name.as_str())
                .cloned()
                .unwrap_or_default();
            for (r, route) in spec.routes.iter().enumerate() {
                check_protocols(route, &listener_protocols, &cluster_protocols)
                    .map_err(|e| e.within(&format!("{at}.routes[{r}]")))?;
            }
            let table =
                RouteTable::build(spec, 1, &clusters, metrics).map_err(|e| e.within(&at))?;
            route_tables.insert(
                spec.name.clone(),
                RouteSlot {
                    table: Arc::new(ArcSwap::from_pointee(table)),
                    listener_protocols,
                },
            );
        }

        let mut listeners = Vec::new();
        for (i, spec) in config.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            let codec = build_codec(codecs, &spec.protocol, spec.codec.as_ref())
                .map_err(|e| e.within(&at))?;
            metrics.watch_codec(&codec);
            let chain = spec
                .filters
                .iter()
                .enumerate()
                .map(|(f, filter)| {
                    filters
                        .build(&filter.name, &filter.config)
                        .map_err(|e| e.within(&format!("{at}.filters[{f}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let routes = route_tables
                .get(&spec.route_config)
                .map(|slot| slot.table.clone())
                .ok_or_else(|| {
                    ConfigError::new(format!("{at}.route_config"), "no such route config")
                })?;
            listeners.push(ListenerContext {
                name: spec.name.as_str().into(),
                codec,
                routes,
                filters: FilterChain::new(chain),
                stats: metrics.listener(&spec.name),
                idle_timeout: spec.idle_timeout,
            });
        }
        Ok(Self {
            listeners,
            clusters,
            cluster_protocols,
            route_tables,
        })
    }
}

/// The protocol each cluster speaks: its own `protocol`, else that of the listeners routing to
/// it, else the only protocol in the config. Clusters with none of these are not built.
fn cluster_protocols(
    config: &Config,
    route_protocols: &HashMap<&str, BTreeSet<String>>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut users: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for routes in &config.route_configs {
        let protocols = route_protocols.get(routes.name.as_str());
        for route in &routes.routes {
            for cluster in route_clusters(route) {
                users
                    .entry(cluster)
                    .or_default()
                    .extend(protocols.into_iter().flatten().cloned());
            }
        }
    }
    let all: BTreeSet<&str> = config
        .listeners
        .iter()
        .map(|l| l.protocol.as_str())
        .collect();
    let mut resolved = HashMap::new();
    for (i, cluster) in config.clusters.iter().enumerate() {
        let used_by = users.get(cluster.name.as_str());
        let protocol = match (&cluster.protocol, used_by) {
            (Some(own), _) => Some(own.clone()),
            (None, Some(set)) if set.len() == 1 => set.iter().next().cloned(),
            (None, Some(set)) if set.len() > 1 => {
                return Err(ConfigError::new(
                    format!("clusters[{i}].protocol"),
                    format!(
                        "listeners of several protocols {set:?} route here; name the cluster's own protocol"
                    ),
                ));
            }
            _ if all.len() == 1 => all.iter().next().map(|p| (*p).to_owned()),
            _ => None,
        };
        if let Some(protocol) = protocol {
            resolved.insert(cluster.name.clone(), protocol);
        }
    }
    Ok(resolved)
}

/// The clusters a route may send to.
fn route_clusters(route: &RouteSpec) -> impl Iterator<Item = &str> {
    route
        .route
        .cluster
        .iter()
        .map(String::as_str)
        .chain(
            route
                .route
                .weighted_clusters
                .iter()
                .map(|w| w.cluster.as_str()),
        )
        .chain(route.mirror.iter().map(|m| m.cluster.as_str()))
}

/// Rejects a route that would send one protocol's frames to a cluster speaking another.
fn check_protocols(
    route: &RouteSpec,
    listener_protocols: &BTreeSet<String>,
    cluster_protocols: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    for cluster in route_clusters(route) {
        let speaks = cluster_protocols.get(cluster).ok_or_else(|| {
            ConfigError::new(
                "route",
                format!("cluster `{cluster}` has no protocol; set its `protocol`"),
            )
        })?;
        if let Some(other) = listener_protocols.iter().find(|p| *p != speaks) {
            return Err(ConfigError::new(
                "route",
                format!("cluster `{cluster}` speaks {speaks} but a {other} listener routes to it"),
            ));
        }
    }
    Ok(())
}

/// Builds the codec factory `protocol` with the options of a listener or cluster.
fn build_codec(
    codecs: &CodecRegistry,
    protocol: &str,
    options: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Arc<dyn CodecFactory>, ConfigError> {
    let options = codec_options(options)?;
    match codecs.build(protocol, &options) {
        Some(Ok(factory)) => Ok(factory),
        Some(Err(err)) => Err(ConfigError::new(format!("codec.{}", err.field), err.reason)),
        None => Err(ConfigError::new(
            "protocol",
            format!(
                "unknown protocol `{protocol}`; registered: {:?}",
                codecs.names().collect::<Vec<_>>()
            ),
        )),
    }
}

fn codec_options(
    map: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<CodecOptions, ConfigError> {
    let mut options = CodecOptions::default();
    for (key, value) in map.into_iter().flatten() {
        if key == "max_frame_bytes" {
            options.max_frame_bytes = value
                .as_u64()
                .filter(|n| *n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    ConfigError::new("codec.max_frame_bytes", "must be a positive integer")
                })?;
            continue;
        }
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(ConfigError::new(
                    format!("codec.{key}"),
                    "must be a string, number or boolean",
                ));
            }
        };
        options.insert(key.clone(), text);
    }
    Ok(options)
}
