//! Dynamic sources: programs that feed a running proxy clusters and route configs from
//! somewhere other than its config file (a control plane, through the `metaprotocol-xds`
//! crate's xDS client), and the updates they apply.
//!
//! A source is registered with [`ProxyBuilder::dynamic_source`](crate::ProxyBuilder) under the
//! key of the config's `dynamic` section it serves, started once the proxy serves its file, and
//! applies what it receives with [`Proxy::apply_dynamic`](crate::Proxy::apply_dynamic): all of an
//! update or nothing, through the same prepare-then-commit path as every other update, so that
//! no connection is closed and no request fails. Its resources form a layer of their own over
//! the file's (see `layers.rs`): reloading the file keeps them.

use std::collections::BTreeMap;

use super::Proxy;
use super::status::ResourceId;
use crate::config::{ClusterSpec, ConfigError, DynamicSpec, RouteConfigSpec};

/// A source of dynamic resources for a proxy (an xDS client, say).
pub trait DynamicSource: Send + Sync + std::fmt::Debug + 'static {
    /// The key of the config's `dynamic` section this source serves (`xds`).
    fn name(&self) -> &'static str;

    /// Checks the source's part of `spec` beyond what the config model checks (that its files
    /// can be read, say); the error names the field within `dynamic.<name>`.
    fn check(&self, spec: &DynamicSpec) -> Result<(), ConfigError>;

    /// Starts serving `spec` for `proxy`: called once, after the proxy serves its file's config.
    /// The source runs its own tasks, applies what it receives with
    /// [`Proxy::apply_dynamic`], and stops when the proxy shuts down
    /// ([`Proxy::stopping`]).
    fn start(&self, proxy: Proxy, spec: &DynamicSpec);

    /// The source's own state for `/config_dump` (its connection, what it last received).
    fn status(&self) -> serde_json::Value;
}

/// A change of what dynamic sources provide, applied all or nothing by
/// [`Proxy::apply_dynamic`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DynamicUpdate {
    /// Clusters added or replaced.
    pub clusters: Vec<ClusterSpec>,
    /// Route configs added or replaced.
    pub route_configs: Vec<RouteConfigSpec>,
    /// Resources the source no longer provides. A cluster or route config still in use is
    /// kept until its users stop using it.
    pub removed: Vec<ResourceId>,
    /// The source's version of the resources this update carries, for `/config_dump`; it may
    /// also name resources the engine only shows (a cluster's endpoints sent apart).
    pub versions: BTreeMap<ResourceId, String>,
}

impl DynamicUpdate {
    /// True if the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
            && self.route_configs.is_empty()
            && self.removed.is_empty()
            && self.versions.is_empty()
    }
}

/// The sources a proxy has, by the key they serve.
#[derive(Debug, Clone, Default)]
pub(crate) struct DynamicSources(BTreeMap<&'static str, std::sync::Arc<dyn DynamicSource>>);

impl DynamicSources {
    pub fn insert(&mut self, source: std::sync::Arc<dyn DynamicSource>) {
        self.0.insert(source.name(), source);
    }

    /// Checks that every source `spec` names is registered and accepts its part.
    pub fn check(&self, spec: Option<&DynamicSpec>) -> Result<(), ConfigError> {
        let Some(spec) = spec else { return Ok(()) };
        for name in spec.sources() {
            let source = self.0.get(name).ok_or_else(|| {
                ConfigError::new(
                    format!("dynamic.{name}"),
                    format!(
                        "no `{name}` source is registered with this proxy (an embedder registers one with ProxyBuilder::dynamic_source; the metaprotocol-xds crate provides xds)"
                    ),
                )
            })?;
            source.check(spec).map_err(|e| e.within("dynamic"))?;
        }
        Ok(())
    }

    /// Starts every source `spec` names.
    pub fn start(&self, proxy: &Proxy, spec: Option<&DynamicSpec>) {
        let Some(spec) = spec else { return };
        for name in spec.sources() {
            if let Some(source) = self.0.get(name) {
                source.start(proxy.clone(), spec);
            }
        }
    }

    /// Every source's own state, by name.
    pub fn status(&self) -> serde_json::Map<String, serde_json::Value> {
        self.0
            .iter()
            .map(|(name, source)| ((*name).to_owned(), source.status()))
            .collect()
    }
}
