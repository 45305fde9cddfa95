//! [`RouterClient`]: the engine's routing, load balancing, resilience and filters behind one
//! call.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metaprotocol_core::{CodecRegistry, ConnectionInfo, Message};

use super::CallError;
use super::call::{self, CallContext};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::cluster::dns::{self, SystemResolver};
use crate::cluster::{ClusterHandle, ClusterManager, Resolved, build_all};
use crate::config::{ClusterSpec, Config, ConfigError, FilterSpec, RouteConfigSpec};
use crate::filters::{FilterRegistry, SharedClients};
use crate::proxy::build::{Builder, check_protocols};
use crate::server::Load;
use crate::stats::{ListenerStats, Metrics};

/// A client that sends each call the way a proxy would send a request it received: through a
/// filter chain, matched against a route config, to an endpoint of the chosen cluster picked by
/// its load balancer, over connections shared by every call, within the route's timeout and
/// retried by its policy. Cheap to clone: clones share everything.
///
/// It is a [`tower_service::Service`] of request [`Message`]s, so it composes with tower
/// layers; [`RouterClient::call`] is the same without `poll_ready`.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use metaprotocol_router::{Config, RouterClient};
///
/// let config = Config::from_yaml(r#"
/// route_configs:
///   - name: services
///     routes:
///       - match: { metadata: [ { key: method, prefix: get } ] }
///         route: { cluster: readers }
///         timeout: 500ms
///         retry_policy: { num_retries: 2, retry_on: [connect_failure, reset] }
///       - route: { cluster: writers }
/// clusters:
///   - { name: readers, lb_policy: least_request, endpoints: [ { address: 10.0.0.1:20880 }, { address: 10.0.0.2:20880 } ] }
///   - { name: writers, endpoints: [ { address: 10.0.0.3:20880 } ] }
/// "#)?;
/// let mut codecs = metaprotocol_core::CodecRegistry::new();
/// # let register = |_: &mut metaprotocol_core::CodecRegistry| {};
/// register(&mut codecs); // e.g. metaprotocol_dubbo::register
/// let client = RouterClient::builder(config).codecs(codecs).protocol("dubbo").build().await?;
/// # let request: metaprotocol_core::Message = unimplemented!();
/// let response = client.call(request).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RouterClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: CallContext,
    metrics: Metrics,
    /// Stops the clusters' host-name refresh tasks when the last clone is dropped.
    _refreshing: DropGuard,
}

/// Options for building a [`RouterClient`]; see [`RouterClient::builder`].
#[derive(Debug)]
pub struct RouterClientBuilder {
    config: Config,
    codecs: CodecRegistry,
    filter_registry: FilterRegistry,
    filters: Vec<FilterSpec>,
    route_config: Option<String>,
    protocol: Option<String>,
    name: String,
}

impl RouterClient {
    /// A builder of a client of `config`'s route configs and clusters (listeners, if any, are
    /// ignored).
    pub fn builder(config: Config) -> RouterClientBuilder {
        RouterClientBuilder {
            config,
            codecs: CodecRegistry::new(),
            filter_registry: FilterRegistry::with_builtins(),
            filters: Vec::new(),
            route_config: None,
            protocol: None,
            name: "client".to_owned(),
        }
    }

    /// Sends `request` (a two-way request, e.g. decoded from a frame a codec crate's builder
    /// made) and returns the response; a response the service sent is `Ok` whatever its status.
    /// Must run within a Tokio runtime.
    pub async fn call(&self, request: Message) -> Result<Message, CallError> {
        call::call(&self.inner.ctx, request).await
    }

    /// The client's metrics (its routes, clusters, filters and calls): render them, or join
    /// them to your registry with [`Metrics::collector`].
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

impl tower_service::Service<Message> for RouterClient {
    type Response = Message;
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<Message, CallError>> + Send>>;

    /// Always ready: calls queue on the engine's connections, whose bounds answer with errors
    /// rather than wait.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Message) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { RouterClient::call(&client, request).await })
    }
}

impl RouterClientBuilder {
    /// The protocols the clusters speak.
    pub fn codecs(mut self, codecs: CodecRegistry) -> Self {
        self.codecs = codecs;
        self
    }

    /// The filters [`RouterClientBuilder::filters`] may name (defaults to the built-in ones).
    pub fn filter_registry(mut self, registry: FilterRegistry) -> Self {
        self.filter_registry = registry;
        self
    }

    /// The filter chain every call goes through, as a listener's `filters`.
    pub fn filters(mut self, filters: Vec<FilterSpec>) -> Self {
        self.filters = filters;
        self
    }

    /// The route config calls are routed by (default: the config's only one).
    pub fn route_config(mut self, name: impl Into<String>) -> Self {
        self.route_config = Some(name.into());
        self
    }

    /// The protocol of the calls (default: the only protocol the config names).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = Some(protocol.into());
        self
    }

    /// The client's name: its `listener` label in metrics and in the requests' records
    /// (default `client`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the client: its clusters (host names resolved), route table and filters. Errors
    /// name the config field. Must run within a Tokio runtime.
    pub async fn build(self) -> Result<RouterClient, ConfigError> {
        let config = &self.config;
        config.validate()?;
        let (index, routes) = match &self.route_config {
            Some(name) => config
                .route_configs
                .iter()
                .enumerate()
                .find(|(_, r)| r.name == *name)
                .ok_or_else(|| {
                    ConfigError::new("route_configs", format!("no route config named `{name}`"))
                })?,
            None => match config.route_configs.as_slice() {
                [only] => (0, only),
                _ => {
                    return Err(ConfigError::new(
                        "route_configs",
                        "the config has several route configs (or none): name the client's",
                    ));
                }
            },
        };
        let protocol = self
            .protocol
            .clone()
            .map_or_else(|| only_protocol(config), Ok)?;
        let metrics = Metrics::new();
        let shared = SharedClients::default();
        let load = Arc::new(Load::new(&metrics.root(), &config.limits));
        // A client writes no access log and no spans: the sinks stay empty.
        let access_logs = crate::access_log::Sinks::default();
        let span_sinks = crate::trace::SpanSinks::default();
        // A client has no listener to drain.
        let drain = Arc::default();
        let builder = Builder {
            codecs: &self.codecs,
            filters: &self.filter_registry,
            metrics: &metrics,
            shared: &shared,
            load: &load,
            drain: &drain,
            access_logs: &access_logs,
            span_sinks: &span_sinks,
        };
        let clusters = ClusterManager::default();
        let stop = CancellationToken::new();
        let local = config.node.as_ref().map(|node| &node.locality);
        let cluster_protocol = |name: &str| {
            config
                .cluster(name)
                .map(|c| c.protocol.clone().unwrap_or_else(|| protocol.clone()))
        };
        let at = format!("route_configs[{index}]");
        check_protocols(routes, &[protocol.as_str()].into(), &cluster_protocol)
            .map_err(|e| e.within(&at))?;
        for (i, spec) in route_cluster_specs(config, routes, &at)? {
            // Host names are resolved before the cluster is built (as a proxy does), then
            // again every `dns_refresh_rate` until the client is dropped.
            let resolved = if spec.has_host_names() {
                dns::resolve(&SystemResolver, spec, &Resolved::new()).await
            } else {
                Resolved::new()
            };
            let speaks = cluster_protocol(&spec.name).unwrap_or_else(|| protocol.clone());
            let handle = builder
                .cluster(spec, &speaks, local, &resolved)
                .map_err(|e| e.within(&format!("clusters[{i}]")))?;
            if spec.has_host_names() {
                tokio::spawn(dns::refresh(
                    Arc::downgrade(&handle),
                    SystemResolver,
                    stop.clone(),
                ));
            }
            // Outlier detection and health checks, as configured; they stop with the cluster.
            handle.start_health();
            clusters.insert(handle);
        }
        let table = builder
            .route_table(routes, 1, &clusters)
            .map_err(|e| e.within(&at))?;
        // The subsets the table registered, and the first snapshots of `ring_hash` and
        // `maglev` clusters, built (off this thread, see `ClusterHandle::build_pending`) before
        // the client routes with it.
        let rebuilds = clusters
            .all()
            .values()
            .filter(|handle| handle.build_pending())
            .map(ClusterHandle::prepare_rebuild)
            .collect::<Result<Vec<_>, _>>()?;
        for rebuilt in build_all(rebuilds).await? {
            rebuilt.commit();
        }
        // The first round of each cluster's active health checks decides which endpoints serve
        // the client's first calls, as the proxy's new clusters wait for theirs.
        let all = clusters.all();
        futures::future::join_all(all.values().map(|handle| handle.first_checks())).await;
        let name: Arc<str> = self.name.as_str().into();
        let scope = metrics.root().detached("listener", &self.name);
        // A client writes no access log.
        let filters = builder.filter_chain(&name, &scope, &self.filters, None)?;
        let nowhere = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let ctx = CallContext {
            connection: Arc::new(ConnectionInfo::new(name, nowhere, nowhere)),
            table: Arc::new(table),
            filters,
            stats: ListenerStats::new(&scope, &crate::proxy::build::named_methods(routes)),
        };
        Ok(RouterClient {
            inner: Arc::new(Inner {
                ctx,
                metrics,
                _refreshing: stop.drop_guard(),
            }),
        })
    }
}

/// The clusters `routes` sends to (mirrors included), each once, with its index in `config`.
fn route_cluster_specs<'c>(
    config: &'c Config,
    routes: &RouteConfigSpec,
    at: &str,
) -> Result<Vec<(usize, &'c Arc<ClusterSpec>)>, ConfigError> {
    let mut specs: Vec<(usize, &Arc<ClusterSpec>)> = Vec::new();
    for name in routes.routes.iter().flat_map(|route| route.clusters()) {
        if specs.iter().any(|(_, spec)| spec.name == name) {
            continue;
        }
        let found = config
            .clusters
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
            .ok_or_else(|| ConfigError::new(at, format!("no cluster named `{name}`")))?;
        specs.push(found);
    }
    Ok(specs)
}

/// The one protocol `config` names (its listeners' and clusters'), for a client that did not
/// name its own.
fn only_protocol(config: &Config) -> Result<String, ConfigError> {
    let named: std::collections::BTreeSet<&str> = config
        .listeners
        .iter()
        .map(|l| l.protocol.as_str())
        .chain(config.clusters.iter().filter_map(|c| c.protocol.as_deref()))
        .collect();
    match named.into_iter().collect::<Vec<_>>().as_slice() {
        [only] => Ok((*only).to_owned()),
        _ => Err(ConfigError::new(
            "",
            "the client's protocol is not clear from the config: name it (RouterClientBuilder::protocol)",
        )),
    }
}
