//! Route tables: compiled, immutable snapshots of a route config, each route's targets resolved
//! to clusters and endpoint subsets at build time so that routing a request is a scan of
//! matchers and a pointer chase.

mod matcher;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::{ByteStr, Metadata, Mutation};
use prometheus_client::metrics::counter::Counter;

pub use self::matcher::MetadataMatcher;
use crate::cluster::{Cluster, EndpointSet};
use crate::config::{
    ConfigError, MutationSpec, RetryOn, RetryPolicySpec, RouteConfigSpec, RouteSpec,
};
use crate::stats::Metrics;

/// A cluster, or a label subset of it, that a route sends to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// The endpoints of the cluster the route may use.
    pub endpoints: Arc<EndpointSet>,
}

/// Where a route sends requests.
#[derive(Debug)]
pub enum RouteAction {
    /// One target.
    Single(Target),
    /// A weighted split; `cumulative` holds running sums of the weights.
    Weighted {
        /// The targets.
        targets: Vec<Target>,
        /// Running sums of the weights; the last is the total.
        cumulative: Vec<u64>,
    },
}

impl RouteAction {
    /// The target of one request (a weighted draw for splits).
    pub fn pick(&self) -> Option<&Target> {
        match self {
            Self::Single(target) => Some(target),
            Self::Weighted {
                targets,
                cumulative,
            } => {
                let total = cumulative.last().copied().unwrap_or(0);
                if total == 0 {
                    return None;
                }
                let point = fastrand::u64(..total);
                targets.get(cumulative.partition_point(|&end| end <= point))
            }
        }
    }
}

/// A compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub num_retries: u32,
    /// Retry attempts that could not connect.
    pub on_connect_failure: bool,
    /// Retry attempts whose connection failed in flight.
    pub on_reset: bool,
    /// Retry attempts answered with a server error.
    pub on_unavailable: bool,
    /// Retry attempts that exceeded `per_try_timeout`.
    pub on_timeout: bool,
    /// The timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
}

impl RetryPolicy {
    fn new(spec: &RetryPolicySpec) -> Self {
        let on = |r: RetryOn| spec.retry_on.contains(&r);
        Self {
            num_retries: spec.num_retries,
            on_connect_failure: on(RetryOn::ConnectFailure),
            on_reset: on(RetryOn::Reset),
            on_unavailable: on(RetryOn::Unavailable),
            on_timeout: on(RetryOn::Timeout),
            per_try_timeout: spec.per_try_timeout,
        }
    }
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route's name (its config name, or `#index`).
    pub name: Arc<str>,
    matchers: Vec<MetadataMatcher>,
    /// Where it sends requests.
    pub action: RouteAction,
    /// The whole request's deadline.
    pub timeout: Option<Duration>,
    /// Retries, if any.
    pub retry: Option<RetryPolicy>,
    /// Header edits on the upstream request.
    pub request_mutation: Arc<Mutation>,
    /// Header edits on the downstream response.
    pub response_mutation: Arc<Mutation>,
    /// Requests matched.
    pub requests: Counter,
}

impl Route {
    /// True if every condition holds for `metadata`.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.matchers.iter().all(|m| m.matches(metadata))
    }
}

/// A compiled route config: its routes in order, and its version.
#[derive(Debug)]
pub struct RouteTable {
    name: Arc<str>,
    version: u64,
    routes: Vec<Route>,
    spec: RouteConfigSpec,
}

impl RouteTable {
    /// Compiles `spec`, resolving cluster names through `clusters`.
    pub fn build(
        spec: &RouteConfigSpec,
        version: u64,
        clusters: &HashMap<String, Arc<Cluster>>,
        metrics: &Metrics,
    ) -> Result<Self, ConfigError> {
        let mut routes: Vec<Route> = spec
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                build_route(route, i, clusters).map_err(|e| e.within(&format!("routes[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        // Metric series only for a table that compiled: a rejected config leaves none behind.
        // Routes keep their series across updates by keeping their names.
        for route in &mut routes {
            route.requests = metrics.route(&spec.name, &route.name);
        }
        Ok(Self {
            name: spec.name.as_str().into(),
            version,
            routes,
            spec: spec.clone(),
        })
    }

    /// Drops the metric series of `self`'s routes that `successor` (the table replacing it, or
    /// the table that stays when `self` is discarded) does not have.
    pub fn retire_metrics(&self, successor: &RouteTable, metrics: &Metrics) {
        for route in &self.routes {
            if !successor.routes.iter().any(|r| r.name == route.name) {
                metrics.forget_route(&self.name, &route.name);
            }
        }
    }

    /// The first route that matches `metadata`.
    pub fn route(&self, metadata: &Metadata) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(metadata))
    }

    /// The route config's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its version: 1 for the first config, incremented by every accepted update.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The spec it was compiled from.
    pub fn spec(&self) -> &RouteConfigSpec {
        &self.spec
    }
}

fn build_route(
    spec: &RouteSpec,
    index: usize,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Result<Route, ConfigError> {
    if spec.mirror.is_some() {
        return Err(ConfigError::new(
            "mirror",
            "request mirroring is not available yet",
        ));
    }
    if !spec.hash_policy.is_empty() {
        return Err(ConfigError::new(
            "hash_policy",
            "hash policies need ring_hash or maglev, which are not available yet",
        ));
    }
    let target = |cluster: &str,
                  subset: &Option<std::collections::BTreeMap<String, String>>,
                  field: &str| {
        let cluster = clusters
            .get(cluster)
            .ok_or_else(|| ConfigError::new(field, format!("no cluster named `{cluster}`")))?;
        let endpoints = cluster
            .subset(&subset.clone().unwrap_or_default())
            .map_err(|e| e.within(field))?;
        Ok::<_, ConfigError>(Target {
            cluster: cluster.clone(),
            endpoints,
        })
    };
    let action = match &spec.route.cluster {
        Some(cluster) => RouteAction::Single(target(cluster, &spec.route.subset, "route.cluster")?),
        None => {
            let mut targets = Vec::new();
            let mut cumulative = Vec::new();
            let mut sum = 0u64;
            for (i, weighted) in spec.route.weighted_clusters.iter().enumerate() {
                if weighted.weight == 0 {
                    continue;
                }
                sum += u64::from(weighted.weight);
                targets.push(target(
                    &weighted.cluster,
                    &weighted.subset,
                    &format!("route.weighted_clusters[{i}].cluster"),
                )?);
                cumulative.push(sum);
            }
            if targets.is_empty() {
                return Err(ConfigError::new(
                    "route",
                    "needs `cluster` or `weighted_clusters`",
                ));
            }
            RouteAction::Weighted {
                targets,
                cumulative,
            }
        }
    };
    let matchers = spec
        .match_
        .metadata
        .iter()
        .enumerate()
        .map(|(i, m)| {
            MetadataMatcher::new(m).map_err(|e| e.within(&format!("match.metadata[{i}]")))
        })
        .collect::<Result<_, _>>()?;
    let name: Arc<str> = match &spec.name {
        Some(name) => name.as_str().into(),
        None => format!("#{index}").into(),
    };
    Ok(Route {
        requests: Counter::default(),
        name,
        matchers,
        action,
        timeout: spec.timeout,
        retry: spec.retry_policy.as_ref().map(RetryPolicy::new),
        request_mutation: Arc::new(mutation(spec.request_mutation.as_ref())),
        response_mutation: Arc::new(mutation(spec.response_mutation.as_ref())),
    })
}

/// Compiles a mutation spec.
pub fn mutation(spec: Option<&MutationSpec>) -> Mutation {
    let mut mutation = Mutation::new();
    if let Some(spec) = spec {
        for key in &spec.remove {
            mutation.remove(ByteStr::copy_from_str(key));
        }
        for (k, v) in &spec.set {
            mutation.set(ByteStr::copy_from_str(k), ByteStr::copy_from_str(v));
        }
    }
    mutation
}
