//! The configuration model: what a YAML file (see the project's CONFIG.md) says, parsed and
//! checked before anything runs.
//!
//! [`Config::from_yaml`] parses and validates a whole file; [`RouteConfigSpec::from_yaml`] parses
//! one route config (for `PUT /route_configs/{name}`). Every rejection names the field and the
//! reason. Building the running engine from a valid config happens in [`crate::Proxy`].

mod cluster;
mod error;
mod listener;
mod route;
mod scalar;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cluster::{
    CircuitBreakersSpec, ClusterSpec, EndpointSpec, LbPolicy, LocalitySpec, OutlierDetectionSpec,
};
pub use error::ConfigError;
pub use listener::{AdminSpec, FilterSpec, ListenerSpec};
pub use route::{
    MatchSpec, MetadataMatcherSpec, MirrorSpec, MutationSpec, RetryOn, RetryPolicySpec,
    RouteActionSpec, RouteConfigSpec, RouteSpec, WeightedClusterSpec,
};

pub(crate) use error::{from_value, parse_document};

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
    /// Where the proxy accepts clients.
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    /// Named route tables, referenced by listeners.
    #[serde(default)]
    pub route_configs: Vec<RouteConfigSpec>,
    /// Upstream clusters, referenced by routes.
    #[serde(default)]
    pub clusters: Vec<ClusterSpec>,
}

fn default_drain_time() -> Duration {
    crate::DEFAULT_DRAIN_TIMEOUT
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin: None,
            drain_time: default_drain_time(),
            listeners: Vec::new(),
            route_configs: Vec::new(),
            clusters: Vec::new(),
        }
    }
}

impl Config {
    /// Parses and validates a YAML (or JSON) document.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = from_value(parse_document(text)?)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::new("", format!("cannot read {}: {err}", path.display()))
        })?;
        Self::from_yaml(&text)
    }

    /// Checks cross references and values that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let clusters = unique_names(self.clusters.iter().map(|c| c.name.as_str()), "clusters")?;
        let route_configs = unique_names(
            self.route_configs.iter().map(|r| r.name.as_str()),
            "route_configs",
        )?;
        unique_names(self.listeners.iter().map(|l| l.name.as_str()), "listeners")?;
        for (i, cluster) in self.clusters.iter().enumerate() {
            cluster
                .validate()
                .map_err(|e| e.within(&format!("clusters[{i}]")))?;
        }
        for (i, routes) in self.route_configs.iter().enumerate() {
            routes
                .validate(&|name| self.clusters.iter().find(|c| c.name == name))
                .map_err(|e| e.within(&format!("route_configs[{i}]")))?;
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            listener.validate().map_err(|e| e.within(&at))?;
            if !route_configs.contains(listener.route_config.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.route_config"),
                    format!("no route config named `{}`", listener.route_config),
                ));
            }
        }
        let _ = clusters;
        Ok(())
    }

    /// The route config named `name`.
    pub fn route_config(&self, name: &str) -> Option<&RouteConfigSpec> {
        self.route_configs.iter().find(|r| r.name == name)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterSpec> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// Rejects empty and duplicate names in a list.
fn unique_names<'a>(
    names: impl Iterator<Item = &'a str>,
    list: &str,
) -> Result<BTreeSet<&'a str>, ConfigError> {
    let mut seen = BTreeSet::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            return Err(ConfigError::new(
                format!("{list}[{i}].name"),
                "must not be empty",
            ));
        }
        if !seen.insert(name) {
            return Err(ConfigError::new(
                format!("{list}[{i}].name"),
                format!("duplicate name `{name}`"),
            ));
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests;
