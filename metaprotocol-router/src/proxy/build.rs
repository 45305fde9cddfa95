//! Turning config entries into running parts: codecs, clusters, route tables, listener
//! contexts. Nothing here binds a socket or publishes anything.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use metaprotocol_core::{CodecFactory, CodecOptions, CodecRegistry, FilterChain, Side};
use tokio_util::sync::CancellationToken;

use crate::access_log::{self, AccessLogger};
use crate::cluster::{ClusterHandle, ClusterManager, Resolved};
use crate::config::{
    ClusterSpec, Config, ConfigError, FilterSpec, ListenerSpec, LocalitySpec, RouteConfigSpec,
    RouteSpec,
};
use crate::filters::{FilterContext, FilterRegistry, SharedClients};
use crate::route::{RouteSlot, RouteTable};
use crate::server::{DrainPolicy, ListenerContext, Load};
use crate::stats::{IstioDestination, ListenerStats, Metrics, MetricsScope};
use crate::trace::{self, Tracer};
use crate::transport::{Acceptor, TlsAcceptor};

/// What building needs from the proxy.
pub(crate) struct Builder<'a> {
    pub codecs: &'a CodecRegistry,
    pub filters: &'a FilterRegistry,
    pub metrics: &'a Metrics,
    pub shared: &'a SharedClients,
    pub load: &'a Arc<Load>,
    pub drain: &'a Arc<DrainPolicy>,
    pub access_logs: &'a access_log::Sinks,
    pub span_sinks: &'a trace::SpanSinks,
}

impl Builder<'_> {
    /// Builds the codec factory `protocol` with the options of a listener
    /// ([`Side::Downstream`]) or a cluster ([`Side::Upstream`]), whose files it reads are
    /// watched while it lives, their reloads counted in `scope` (the listener's or cluster's).
    pub fn codec(
        &self,
        protocol: &str,
        options: Option<&serde_json::Map<String, serde_json::Value>>,
        side: Side,
        scope: &MetricsScope,
    ) -> Result<Arc<dyn CodecFactory>, ConfigError> {
        let options = codec_options(options, side)?;
        match self.codecs.build(protocol, &options) {
            Some(Ok(factory)) => {
                self.metrics.watch_codec(&factory);
                super::codec_files::watch(&factory, scope);
                Ok(factory)
            }
            Some(Err(err)) => Err(ConfigError::new(format!("codec.{}", err.field), err.reason)),
            None => Err(self.unknown_protocol(protocol)),
        }
    }

    /// The error for a `protocol` no codec is registered as.
    pub fn unknown_protocol(&self, protocol: &str) -> ConfigError {
        ConfigError::new(
            "protocol",
            format!(
                "unknown protocol `{protocol}`; registered: {:?}",
                self.codecs.names().collect::<Vec<_>>()
            ),
        )
    }

    /// Builds cluster `spec`, speaking `protocol`, for a proxy at `local`, whose host names
    /// resolved to `resolved`.
    pub fn cluster(
        &self,
        spec: &Arc<ClusterSpec>,
        protocol: &str,
        local: Option<&LocalitySpec>,
        resolved: &Resolved,
    ) -> Result<Arc<ClusterHandle>, ConfigError> {
        let scope = self.metrics.root().detached("cluster", &spec.name);
        let codec = self.codec(protocol, spec.codec.as_ref(), Side::Upstream, &scope)?;
        ClusterHandle::new(
            spec,
            protocol.to_owned(),
            codec,
            scope,
            local.cloned(),
            resolved,
        )
    }

    /// Compiles route config `spec` as version `version` against `clusters`.
    pub fn route_table(
        &self,
        spec: &RouteConfigSpec,
        version: u64,
        clusters: &ClusterManager,
    ) -> Result<RouteTable, ConfigError> {
        RouteTable::build(spec, version, clusters, &self.metrics.root())
    }

    /// Builds the context every connection of listener `spec` shares; with `kept_tls`, the TLS
    /// acceptor of its running context (its `tls` unchanged), which it keeps, reading none of
    /// its files, its certificates' reloads going on.
    pub fn listener(
        &self,
        spec: &ListenerSpec,
        routes: Arc<RouteSlot>,
        kept_tls: Option<Arc<TlsAcceptor>>,
    ) -> Result<ListenerContext, ConfigError> {
        let scope = self.metrics.root().detached("listener", &spec.name);
        let codec = self.codec(
            &spec.protocol,
            spec.codec.as_ref(),
            Side::Downstream,
            &scope,
        )?;
        let name: Arc<str> = spec.name.as_str().into();
        let protocol = codec.protocol();
        let access_log = spec
            .access_log
            .as_ref()
            .map(|log| {
                AccessLogger::new(log, protocol, codec.call_id_key(), &scope, self.access_logs)
            })
            .transpose()
            .map_err(|e| e.within("access_log"))?;
        let filters = self.filter_chain(&name, &scope, &spec.filters, access_log.as_ref())?;
        let kept_for_log = access_log
            .as_ref()
            .map(AccessLogger::kept_by_router)
            .unwrap_or_default();
        let logs_connection_termination = access_log
            .as_ref()
            .is_some_and(AccessLogger::shows_connection_termination);
        let tracer = spec
            .tracing
            .as_ref()
            .map(|tracing| Tracer::new(tracing, protocol, &scope, self.span_sinks))
            .transpose()
            .map_err(|e| e.within("tracing"))?;
        let istio = self.metrics.settings().istio.as_ref().map(|istio| {
            self.metrics
                .istio_reporter(istio, protocol, IstioDestination::unknown(istio))
        });
        let methods = named_methods(routes.table.load().spec());
        let acceptor = match (&spec.tls, kept_tls) {
            (None, _) => Acceptor::Plain,
            (Some(_), Some(kept)) => {
                kept.hold_series(&scope);
                Acceptor::Tls(kept)
            }
            (Some(tls), None) => TlsAcceptor::new(tls, &spec.name, &scope)
                .map(|tls| Acceptor::Tls(Arc::new(tls)))
                .map_err(|e| e.within("tls"))?,
        };
        Ok(ListenerContext {
            name,
            stats: ListenerStats::new(&scope, &methods),
            codec,
            routes,
            filters,
            scope,
            access_log,
            kept_for_log,
            logs_connection_termination,
            tracer,
            istio,
            idle_timeout: spec
                .idle_timeout
                .unwrap_or(crate::server::DEFAULT_IDLE_TIMEOUT),
            frame_timeout: spec.frame_timeout,
            max_connections: spec.max_connections,
            drain: self.drain.clone(),
            acceptor,
            load: self.load.clone(),
            // Tied to the listener's stop token when the context starts serving.
            retired: CancellationToken::new(),
        })
    }
}

impl Builder<'_> {
    /// Builds the chain of `filters` for `listener` (a listener, or a client's name), each
    /// filter with its own scope within `scope`, told what of authorization decisions the
    /// listener's `access_log` shows. Errors name the filter (`filters[1]`).
    pub fn filter_chain(
        &self,
        listener: &Arc<str>,
        scope: &MetricsScope,
        filters: &[FilterSpec],
        access_log: Option<&AccessLogger>,
    ) -> Result<FilterChain, ConfigError> {
        let logs_authorization = access_log.is_some_and(AccessLogger::shows_authorization);
        let logs_refusals = access_log.is_some_and(AccessLogger::shows_refusals);
        let labels = crate::filters::series_labels(filters)?;
        let chain = filters
            .iter()
            .zip(&labels)
            .enumerate()
            .map(|(f, (filter, label))| {
                let context = FilterContext::new(
                    listener.clone(),
                    scope.with_label("filter", label),
                    self.shared.clone(),
                )
                .with_logged_authorization(logs_authorization)
                .with_logged_refusals(logs_refusals);
                self.filters
                    .build(&filter.name, &filter.config, &context)
                    .map_err(|e| e.within(&format!("filters[{f}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FilterChain::new(chain))
    }
}

/// The methods `spec`'s routes match exactly: they get their own `method` label value.
pub(crate) fn named_methods(spec: &RouteConfigSpec) -> Vec<String> {
    let mut methods: Vec<String> = spec
        .routes
        .iter()
        .flat_map(|route| &route.match_.metadata)
        .filter(|m| m.key == metaprotocol_core::keys::METHOD && !m.invert)
        .filter_map(|m| m.exact.clone())
        .collect();
    methods.sort();
    methods.dedup();
    methods
}

fn codec_options(
    map: Option<&serde_json::Map<String, serde_json::Value>>,
    side: Side,
) -> Result<CodecOptions, ConfigError> {
    let mut options = CodecOptions::default();
    options.side = Some(side);
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
        match value {
            serde_json::Value::String(s) => options.insert(key.clone(), s.clone()),
            serde_json::Value::Bool(b) => options.insert_scalar(key.clone(), b.to_string()),
            serde_json::Value::Number(n) => options.insert_scalar(key.clone(), n.to_string()),
            _ => {
                return Err(ConfigError::new(
                    format!("codec.{key}"),
                    "must be a string, number or boolean",
                ));
            }
        }
    }
    Ok(options)
}

/// The protocols of the listeners that use each route config.
pub(crate) fn route_config_protocols(config: &Config) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut protocols: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for listener in &config.listeners {
        protocols
            .entry(listener.route_config.as_str())
            .or_default()
            .insert(listener.protocol.as_str());
    }
    protocols
}

/// The protocol each cluster speaks: its own `protocol`, else that of the listeners routing to
/// it, else the only protocol in the config. Clusters with none of these have none (routes
/// cannot use them until they name a protocol). Found for a cluster when asked: an update asks
/// about the clusters it changes, where a map of every cluster's cost an update of one among
/// thousands a pass over them all; and which listeners route to a cluster is looked up (a pass
/// over every route) only when they speak several protocols, for a cluster that names none.
pub(crate) struct ClusterProtocols<'a> {
    config: &'a Config,
    /// The protocols of the listeners routing to each cluster, gathered at the first question
    /// that needs them.
    users: OnceCell<BTreeMap<&'a str, BTreeSet<&'a str>>>,
    /// The protocols of all listeners.
    all: BTreeSet<&'a str>,
}

impl<'a> ClusterProtocols<'a> {
    /// The protocols of `config`'s clusters.
    pub fn of_config(config: &'a Config) -> Self {
        let all = config
            .listeners
            .iter()
            .map(|l| l.protocol.as_str())
            .collect();
        Self {
            config,
            users: OnceCell::new(),
            all,
        }
    }

    /// The protocols of the listeners routing to each cluster.
    fn users(&self) -> &BTreeMap<&'a str, BTreeSet<&'a str>> {
        self.users.get_or_init(|| {
            let route_protocols = route_config_protocols(self.config);
            let mut users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for routes in &self.config.route_configs {
                let protocols = route_protocols.get(routes.name.as_str());
                for route in &routes.routes {
                    for cluster in route.clusters() {
                        users
                            .entry(cluster)
                            .or_default()
                            .extend(protocols.into_iter().flatten());
                    }
                }
            }
            users
        })
    }

    /// The protocol of `cluster`, `clusters[i]` of the config; an error when listeners of
    /// several protocols route to a cluster that names none.
    pub fn of(&self, i: usize, cluster: &'a ClusterSpec) -> Result<Option<&'a str>, ConfigError> {
        if let Some(own) = &cluster.protocol {
            return Ok(Some(own.as_str()));
        }
        // With one protocol (or none) among the listeners, whoever routes here speaks it.
        if self.one_for_all() {
            return Ok(self.all.iter().next().copied());
        }
        Ok(match self.users().get(cluster.name.as_str()) {
            Some(set) if set.len() > 1 => {
                return Err(ConfigError::new(
                    format!("clusters[{i}].protocol"),
                    format!(
                        "listeners of several protocols {set:?} route here; name the cluster's own protocol"
                    ),
                ));
            }
            Some(set) => set.iter().next().copied(),
            None => None,
        })
    }

    /// True if every listener speaks one protocol (or there is none): then a cluster's
    /// protocol does not depend on which routes send to it.
    pub fn one_for_all(&self) -> bool {
        self.all.len() <= 1
    }
}

/// Rejects a route config that would send one protocol's frames to a cluster speaking another.
pub(crate) fn check_protocols(
    spec: &RouteConfigSpec,
    listener_protocols: &BTreeSet<&str>,
    cluster_protocol: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let routes = spec.routes.iter().map(|route| &**route).enumerate();
    check_routes_protocols(routes, listener_protocols, cluster_protocol)
}

/// [`check_protocols`] for some routes of a route config, each with its place in it.
pub(crate) fn check_routes_protocols<'a>(
    routes: impl Iterator<Item = (usize, &'a RouteSpec)>,
    listener_protocols: &BTreeSet<&str>,
    cluster_protocol: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (i, route) in routes {
        for cluster in route.clusters() {
            let at = format!("routes[{i}].route");
            let speaks = cluster_protocol(cluster).ok_or_else(|| {
                ConfigError::new(
                    &at,
                    format!("cluster `{cluster}` has no protocol; set its `protocol`"),
                )
            })?;
            if let Some(other) = listener_protocols.iter().find(|p| **p != speaks) {
                return Err(ConfigError::new(
                    &at,
                    format!(
                        "cluster `{cluster}` speaks {speaks} but a {other} listener routes to it"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A codec learns whose options it reads, and which values were written as strings: a
    /// string option refuses `0123` written bare, which would otherwise arrive as `123`.
    #[test]
    fn codec_options_say_whose_they_are_and_how_values_were_written() -> Result<(), ConfigError> {
        let map = serde_json::json!({
            "max_frame_bytes": 4096,
            "quoted": "0123",
            "bare": 123,
            "flag": true,
        });
        for side in [Side::Downstream, Side::Upstream] {
            let options = codec_options(map.as_object(), side)?;
            assert_eq!(options.side, Some(side));
            assert_eq!(options.max_frame_bytes, 4096);
            assert_eq!(options.get_string("quoted"), Ok(Some("0123")));
            assert_eq!(options.get("bare"), Some("123"));
            assert_eq!(options.get("flag"), Some("true"));
            for scalar in ["bare", "flag"] {
                let error = options.get_string(scalar).err();
                assert_eq!(error.map(|e| e.field), Some(scalar.to_owned()));
            }
        }
        Ok(())
    }
}
