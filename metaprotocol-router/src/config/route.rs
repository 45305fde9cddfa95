//! Route configs: ordered routes, each a match and an action.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ClusterSpec, ConfigError, not_available, source, unique_names};

/// The most retries a route may ask for: each retry is another request to the upstream, so a
/// large count multiplies the load a failing upstream receives.
pub const MAX_NUM_RETRIES: u32 = 10;

/// A named, ordered route table; the first matching route wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfigSpec {
    /// A unique name, referenced by listeners.
    pub name: String,
    /// The routes, tried in order.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

impl RouteConfigSpec {
    /// Parses one route config from YAML or JSON and validates it, except for cluster
    /// references, which need the running clusters ([`RouteConfigSpec::validate`]). Errors carry
    /// the line and column of the offending field.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let spec: Self = source::parse(text)?;
        spec.check(&|_| true).map_err(|e| e.located_in(text))?;
        Ok(spec)
    }

    /// Checks every route; `cluster` looks up a cluster by name.
    pub fn validate<'a>(
        &self,
        cluster: &dyn Fn(&str) -> Option<&'a ClusterSpec>,
    ) -> Result<(), ConfigError> {
        self.check(&|name| cluster(name).is_some())
    }

    /// [`RouteConfigSpec::validate`], with `known` saying whether a cluster name exists.
    fn check(&self, known: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        // Route names key the per-route metric series: two routes of one name would share them.
        unique_names(self.routes.iter().map(|r| r.name.as_deref()), "routes")?;
        for (i, route) in self.routes.iter().enumerate() {
            if route.name.as_deref().is_some_and(|n| n.starts_with('#')) {
                return Err(ConfigError::new(
                    format!("routes[{i}].name"),
                    "names starting with `#` are kept for unnamed routes (`#0`, `#1` ...)",
                ));
            }
            route
                .validate(known)
                .map_err(|e| e.within(&format!("routes[{i}]")))?;
        }
        Ok(())
    }
}

/// One route: when it applies and where it sends the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// A name for logs and metrics, unique in its route config; defaults to the route's position
    /// (`#0`, `#1` ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The conditions; an empty match matches every request.
    #[serde(default, rename = "match")]
    pub match_: MatchSpec,
    /// Where matching requests go.
    #[serde(default)]
    pub route: RouteActionSpec,
    /// A reply the proxy makes itself instead of routing. Not available yet: rejected by
    /// validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<serde_json::Value>,
    /// How long to wait for the upstream's answer before answering with a timeout error;
    /// `0s` means no timeout, unset means [`DEFAULT_ROUTE_TIMEOUT`](crate::DEFAULT_ROUTE_TIMEOUT).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// When and how often to try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicySpec>,
    /// Header edits on the request sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mutation: Option<MutationSpec>,
    /// Header edits on the response sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_mutation: Option<MutationSpec>,
    /// A shadow copy of matching requests, sent to another cluster; its answers are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
    /// Metadata keys hashed for `ring_hash` and `maglev` load balancing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<String>,
}

impl RouteSpec {
    fn validate(&self, known: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        if self.direct_response.is_some() {
            return Err(not_available("direct_response"));
        }
        self.match_.validate().map_err(|e| e.within("match"))?;
        self.route.validate(known).map_err(|e| e.within("route"))?;
        if let Some(retry) = &self.retry_policy {
            retry.validate().map_err(|e| e.within("retry_policy"))?;
        }
        let mutations = [
            ("request_mutation", &self.request_mutation),
            ("response_mutation", &self.response_mutation),
        ];
        for (field, mutation) in mutations {
            if let Some(mutation) = mutation {
                mutation.validate().map_err(|e| e.within(field))?;
            }
        }
        if let Some(mirror) = &self.mirror {
            if !known(&mirror.cluster) {
                return Err(ConfigError::new(
                    "mirror.cluster",
                    format!("no cluster named `{}`", mirror.cluster),
                ));
            }
            check_percentage(mirror.percentage).map_err(|e| e.within("mirror"))?;
        }
        Ok(())
    }
}

/// The conditions of a route (or of a filter's rule), all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Conditions on metadata keys, ANDed.
    #[serde(default)]
    pub metadata: Vec<MetadataMatcherSpec>,
    /// The client's verified TLS identity: one of its names (URI SANs such as SPIFFE ids, DNS
    /// SANs, the subject) equals this, or matches it as `prefix*`, `*suffix` or `*` (any
    /// identity). Clients without a certificate never match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The client's address is in one of these ranges (`10.0.0.0/8`, `::1/128`, `127.0.0.1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
}

impl MatchSpec {
    /// Checks every condition.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, matcher) in self.metadata.iter().enumerate() {
            matcher
                .validate()
                .map_err(|e| e.within(&format!("metadata[{i}]")))?;
        }
        if self.principal.as_deref() == Some("") {
            return Err(ConfigError::new("principal", "must not be empty"));
        }
        for (i, range) in self.source_ips.iter().enumerate() {
            crate::route::IpRange::parse(range)
                .map_err(|e| e.within(&format!("source_ips[{i}]")))?;
        }
        Ok(())
    }
}

/// One condition on a metadata key: exactly one of the value tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataMatcherSpec {
    /// The metadata key (a codec's key: `interface`, `method`, an attachment name ...).
    pub key: String,
    /// The value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The value ends with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// The value contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The key is present (`true`) or absent (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Negates the result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

impl MetadataMatcherSpec {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.key.is_empty() {
            return Err(ConfigError::new("key", "must not be empty"));
        }
        let tests = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.suffix.is_some(),
            self.contains.is_some(),
            self.regex.is_some(),
            self.present.is_some(),
        ];
        match tests.iter().filter(|t| **t).count() {
            1 => {}
            0 => {
                return Err(ConfigError::new(
                    "",
                    "needs one of exact, prefix, suffix, contains, regex, present",
                ));
            }
            _ => {
                return Err(ConfigError::new(
                    "",
                    "takes only one of exact, prefix, suffix, contains, regex, present",
                ));
            }
        }
        if let Some(pattern) = &self.regex {
            regex::Regex::new(pattern)
                .map_err(|err| ConfigError::new("regex", format!("invalid regex: {err}")))?;
        }
        Ok(())
    }
}

/// Where a route sends requests: one cluster (optionally a subset of it) or a weighted split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteActionSpec {
    /// The one cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// With `cluster`: only endpoints whose labels contain all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<BTreeMap<String, String>>,
    /// A weighted split between clusters (or subsets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted_clusters: Vec<WeightedClusterSpec>,
    /// With `weighted_clusters`: a metadata key whose value picks the split's side, so that one
    /// caller always lands on one side. Not available yet: rejected by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<serde_json::Value>,
}

impl RouteActionSpec {
    fn validate(&self, known: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        if self.hash_on.is_some() {
            return Err(not_available("hash_on"));
        }
        let exists = |name: &str, field: &str| -> Result<(), ConfigError> {
            if known(name) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("no cluster named `{name}`"),
                ))
            }
        };
        match (&self.cluster, self.weighted_clusters.is_empty()) {
            (Some(name), true) => exists(name, "cluster"),
            (None, false) => {
                if self.subset.is_some() {
                    return Err(ConfigError::new(
                        "subset",
                        "goes with `cluster`; give each weighted cluster its own subset",
                    ));
                }
                let mut total = 0u64;
                for (i, weighted) in self.weighted_clusters.iter().enumerate() {
                    exists(
                        &weighted.cluster,
                        &format!("weighted_clusters[{i}].cluster"),
                    )?;
                    total += u64::from(weighted.weight);
                }
                if total == 0 {
                    return Err(ConfigError::new(
                        "weighted_clusters",
                        "the weights must not all be 0",
                    ));
                }
                Ok(())
            }
            (Some(_), false) => Err(ConfigError::new(
                "",
                "takes either `cluster` or `weighted_clusters`, not both",
            )),
            (None, true) => Err(ConfigError::new(
                "",
                "needs `cluster` or `weighted_clusters`",
            )),
        }
    }
}

/// One side of a weighted split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusterSpec {
    /// The cluster.
    pub cluster: String,
    /// Only endpoints whose labels contain all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<BTreeMap<String, String>>,
    /// The share of requests, relative to the other entries' weights.
    pub weight: u32,
}

/// Header edits: keys to set and keys to remove.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutationSpec {
    /// Headers to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl MutationSpec {
    /// Rejects empty keys: a codec cannot write a header without a name.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.set.contains_key("") {
            return Err(ConfigError::new("set", "a key must not be empty"));
        }
        if let Some(i) = self.remove.iter().position(String::is_empty) {
            return Err(ConfigError::new(
                format!("remove[{i}]"),
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// When a failed request is tried again, on another endpoint where there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicySpec {
    /// Retries after the first attempt, at most [`MAX_NUM_RETRIES`].
    pub num_retries: u32,
    /// The failures that are retried.
    #[serde(default = "RetryOn::defaults")]
    pub retry_on: Vec<RetryOn>,
    /// A timeout for each attempt (the route timeout still bounds the whole request).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
}

impl RetryPolicySpec {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.num_retries > MAX_NUM_RETRIES {
            return Err(ConfigError::new(
                "num_retries",
                format!(
                    "{} is more than the {MAX_NUM_RETRIES} retries a route may make",
                    self.num_retries
                ),
            ));
        }
        if self.per_try_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "per_try_timeout",
                "must be greater than 0 (leave it out to bound attempts by the route timeout only)",
            ));
        }
        Ok(())
    }
}

/// A retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The upstream connection could not be made (always safe: the request was not sent).
    ConnectFailure,
    /// The upstream connection failed with the request in flight.
    Reset,
    /// The upstream answered with a server error (not a declared application exception).
    Unavailable,
    /// An attempt exceeded `per_try_timeout`.
    Timeout,
}

impl RetryOn {
    fn defaults() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure, RetryOn::Reset]
    }
}

/// A mirror policy: copy a share of requests to another cluster, ignoring its answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The shadow cluster.
    pub cluster: String,
    /// The share of requests mirrored, 0 to 100.
    #[serde(default = "hundred")]
    pub percentage: f64,
}

fn hundred() -> f64 {
    100.0
}

/// Rejects a percentage outside 0..=100.
pub(crate) fn check_percentage(p: f64) -> Result<(), ConfigError> {
    if (0.0..=100.0).contains(&p) {
        Ok(())
    } else {
        Err(ConfigError::new(
            "percentage",
            format!("{p} is not between 0 and 100"),
        ))
    }
}
