//! Route configs: ordered routes, each a match and an action.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::{LocalReply, LocalReplyKind};
use serde::{Deserialize, Serialize};

use super::{ClusterSpec, ConfigError, Errors, source, unique_names};

/// The most retries a route may ask for: each retry is another request to the upstream, so a
/// large count multiplies the load a failing upstream receives.
pub const MAX_NUM_RETRIES: u32 = 10;

/// A named, ordered route table; the first matching route wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfigSpec {
    /// A unique name, referenced by listeners.
    pub name: String,
    /// The routes, tried in order. Each is shared: a copy of the route config (the running
    /// config, its layers and the compiled table each keep one) copies a pointer per route,
    /// not the route.
    #[serde(default, with = "super::shared")]
    pub routes: Vec<Arc<RouteSpec>>,
}

/// Routes shared by both sides are equal without a look at their fields: an update compares
/// each route config it keeps with the running one, and a route config of thousands of routes
/// cost thousands of field-by-field comparisons per update that left it alone.
impl PartialEq for RouteConfigSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.routes.len() == other.routes.len()
            && self.routes.iter().zip(&other.routes).all(|(a, b)| {
                if Arc::ptr_eq(a, b) {
                    return true;
                }
                #[cfg(test)]
                super::work::count(&super::work::ROUTES_COMPARED);
                a == b
            })
    }
}

impl RouteConfigSpec {
    /// Parses one route config from YAML or JSON and validates it, except for cluster
    /// references, which need the running clusters ([`RouteConfigSpec::validate`]). Errors carry
    /// the line and column of the offending field.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let spec: Self = source::parse(text)?;
        let mut errors = Errors::default();
        spec.check(&|_| true, &mut errors);
        errors.first().map_err(|e| e.located_in(text))?;
        Ok(spec)
    }

    /// Checks every route; `cluster` looks up a cluster by name.
    pub fn validate<'a>(
        &self,
        cluster: &dyn Fn(&str) -> Option<&'a ClusterSpec>,
    ) -> Result<(), ConfigError> {
        let mut errors = Errors::default();
        self.check(&|name| cluster(name).is_some(), &mut errors);
        errors.first()
    }

    /// Records every problem of this route config; `known` says whether a cluster name exists.
    pub(crate) fn check(&self, known: &dyn Fn(&str) -> bool, errors: &mut Errors) {
        self.check_beyond(known, None, errors);
    }

    /// [`RouteConfigSpec::check`] for a version of `passed`, which passed it with the same
    /// cluster names known: a route shared with `passed` at its place is not checked again.
    pub(crate) fn check_beyond(
        &self,
        known: &dyn Fn(&str) -> bool,
        passed: Option<&RouteConfigSpec>,
        errors: &mut Errors,
    ) {
        if self.name.is_empty() {
            errors.add(ConfigError::new("name", "must not be empty"));
        }
        // Route names key the per-route metric series: two routes of one name would share them.
        errors.check(
            "",
            unique_names(self.routes.iter().map(|r| r.name.as_deref()), "routes").map(|_| ()),
        );
        for (i, route) in self.routes.iter().enumerate() {
            if route.name.as_deref().is_some_and(|n| n.starts_with('#')) {
                errors.add(ConfigError::new(
                    format!("routes[{i}].name"),
                    "names starting with `#` are kept for unnamed routes (`#0`, `#1` ...)",
                ));
            }
            let shared = passed
                .and_then(|passed| passed.routes.get(i))
                .is_some_and(|passed| Arc::ptr_eq(passed, route));
            if !shared {
                errors.within(&format!("routes[{i}]"), |errors| route.check(known, errors));
            }
        }
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
    /// A reply the proxy makes itself instead of routing (maintenance, a retired method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseSpec>,
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
    /// Metadata keys hashed for `ring_hash` and `maglev` load balancing (in any order: the
    /// key does not depend on it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<String>,
}

impl RouteSpec {
    /// The clusters it may send to.
    pub(crate) fn clusters(&self) -> impl Iterator<Item = &str> {
        #[cfg(test)]
        super::work::count(&super::work::ROUTES_WALKED);
        self.route
            .cluster
            .iter()
            .map(String::as_str)
            .chain(
                self.route
                    .weighted_clusters
                    .iter()
                    .map(|w| w.cluster.as_str()),
            )
            .chain(self.mirror.iter().map(|m| m.cluster.as_str()))
    }

    fn check(&self, known: &dyn Fn(&str) -> bool, errors: &mut Errors) {
        #[cfg(test)]
        super::work::count(&super::work::ROUTES_CHECKED);
        errors.within("match", |errors| self.match_.check(errors));
        match &self.direct_response {
            Some(direct) => {
                errors.check("direct_response", direct.validate());
                self.check_direct(errors);
            }
            None => errors.within("route", |errors| self.route.check(known, errors)),
        }
        if let Some(retry) = &self.retry_policy {
            errors.within("retry_policy", |errors| retry.check(errors));
        }
        let mutations = [
            ("request_mutation", &self.request_mutation),
            ("response_mutation", &self.response_mutation),
        ];
        for (field, mutation) in mutations {
            if let Some(mutation) = mutation {
                errors.within(field, |errors| mutation.check(errors));
            }
        }
        for (i, key) in self.hash_policy.iter().enumerate() {
            if key.is_empty() {
                errors.add(ConfigError::new(
                    format!("hash_policy[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if let Some(mirror) = &self.mirror {
            if !known(&mirror.cluster) {
                errors.add(ConfigError::new(
                    "mirror.cluster",
                    format!("no cluster named `{}`", mirror.cluster),
                ));
            }
            errors.check("mirror", check_percentage(mirror.percentage));
            if mirror.max_in_flight == 0 {
                errors.add(ConfigError::new(
                    "mirror.max_in_flight",
                    "must be at least 1",
                ));
            }
        }
    }

    /// A route that answers itself sends nothing upstream: fields about upstreams are mistakes.
    fn check_direct(&self, errors: &mut Errors) {
        let upstream_fields = [
            ("route", self.route != RouteActionSpec::default()),
            ("retry_policy", self.retry_policy.is_some()),
            ("mirror", self.mirror.is_some()),
            ("request_mutation", self.request_mutation.is_some()),
            ("response_mutation", self.response_mutation.is_some()),
            ("hash_policy", !self.hash_policy.is_empty()),
        ];
        for (field, set) in upstream_fields {
            if set {
                errors.add(ConfigError::new(
                    field,
                    "a route with `direct_response` answers without an upstream; remove this field",
                ));
            }
        }
    }
}

/// A route's own answer: a local reply kind, answered in the protocol's terms (a Dubbo status,
/// a Thrift `TApplicationException`, a bRPC error code), and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseSpec {
    /// A local reply kind (`unavailable`, `unauthorized`, `route_not_found` ...).
    pub kind: String,
    /// The text the client reads; defaults to the kind's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl DirectResponseSpec {
    /// The local reply this spec answers with.
    pub fn reply(&self) -> Result<LocalReply, ConfigError> {
        let kind: LocalReplyKind =
            self.kind
                .parse()
                .map_err(|err: metaprotocol_core::UnknownReplyKind| {
                    ConfigError::new("kind", err.to_string())
                })?;
        let message = self
            .message
            .clone()
            .unwrap_or_else(|| kind.name().to_owned());
        Ok(LocalReply::new(kind, message))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.reply().map(|_| ())
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
    /// True if this sets no condition at all.
    pub fn is_empty(&self) -> bool {
        self.metadata.is_empty() && self.principal.is_none() && self.source_ips.is_empty()
    }

    /// Records every problem of these conditions.
    pub(crate) fn check(&self, errors: &mut Errors) {
        for (i, matcher) in self.metadata.iter().enumerate() {
            errors.check(&format!("metadata[{i}]"), matcher.validate());
        }
        if let Some(principal) = &self.principal {
            errors.check(
                "principal",
                crate::route::PrincipalMatcher::parse(principal).map(|_| ()),
            );
        }
        for (i, range) in self.source_ips.iter().enumerate() {
            errors.check(
                &format!("source_ips[{i}]"),
                crate::route::IpRange::parse(range).map(|_| ()),
            );
        }
    }

    /// The first problem of these conditions, if any.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Errors::default();
        self.check(&mut errors);
        errors.first()
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
            crate::route::whole_value_regex(pattern)?;
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
    /// With `weighted_clusters`: a metadata key whose value picks the split's side by a stable
    /// hash, so that one caller (one user, one tenant) always lands on one side. Requests
    /// without the key are split at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
}

impl RouteActionSpec {
    fn check(&self, known: &dyn Fn(&str) -> bool, errors: &mut Errors) {
        let mut exists = |name: &str, field: &str| {
            if !known(name) {
                errors.add(ConfigError::new(
                    field,
                    format!("no cluster named `{name}`"),
                ));
            }
        };
        match (&self.cluster, self.weighted_clusters.is_empty()) {
            (Some(name), true) => {
                exists(name, "cluster");
                if self.hash_on.is_some() {
                    errors.add(ConfigError::new(
                        "hash_on",
                        "goes with `weighted_clusters`: it picks a side of the split",
                    ));
                }
            }
            (None, false) => {
                let mut total = 0u64;
                for (i, weighted) in self.weighted_clusters.iter().enumerate() {
                    exists(
                        &weighted.cluster,
                        &format!("weighted_clusters[{i}].cluster"),
                    );
                    total += u64::from(weighted.weight);
                }
                if self.subset.is_some() {
                    errors.add(ConfigError::new(
                        "subset",
                        "goes with `cluster`; give each weighted cluster its own subset",
                    ));
                }
                if total == 0 {
                    errors.add(ConfigError::new(
                        "weighted_clusters",
                        "the weights must not all be 0",
                    ));
                }
                if self.hash_on.as_deref() == Some("") {
                    errors.add(ConfigError::new("hash_on", "must not be empty"));
                }
            }
            (Some(_), false) => errors.add(ConfigError::new(
                "",
                "takes either `cluster` or `weighted_clusters`, not both",
            )),
            (None, true) => errors.add(ConfigError::new(
                "",
                "needs `cluster`, `weighted_clusters` or a `direct_response`",
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
    /// Rejects empty keys (a codec cannot write a header without a name) and values that are
    /// not valid templates.
    fn check(&self, errors: &mut Errors) {
        if self.set.contains_key("") {
            errors.add(ConfigError::new("set", "a key must not be empty"));
        }
        for (key, value) in &self.set {
            errors.check(
                &format!("set.{key}"),
                crate::route::Template::parse(value).map(|_| ()),
            );
        }
        for (i, key) in self.remove.iter().enumerate() {
            if key.is_empty() {
                errors.add(ConfigError::new(
                    format!("remove[{i}]"),
                    "must not be empty",
                ));
            }
        }
    }
}

/// When a failed request is tried again, on another endpoint where there is one.
///
/// A request that may have reached an upstream (its bytes were written, or an answer says the
/// server ran it) is tried again only when the route marks it idempotent
/// (`idempotent_methods`, `idempotent_match`): retrying a non-idempotent call could run it twice.
/// Requests that certainly never reached a server (connect failures, a connection that failed
/// before writing them, a codec-declared refusal such as Dubbo's thread pool exhausted) are
/// always safe to retry.
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
    /// Methods (the `method` metadata key) that are safe to run twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idempotent_methods: Vec<String>,
    /// Requests matching these conditions are safe to run twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_match: Option<MatchSpec>,
    /// The pause between attempts: exponential from `base_interval`, capped at `max_interval`,
    /// with jitter.
    #[serde(default)]
    pub retry_back_off: RetryBackOffSpec,
}

impl RetryPolicySpec {
    fn check(&self, errors: &mut Errors) {
        if self.num_retries > MAX_NUM_RETRIES {
            errors.add(ConfigError::new(
                "num_retries",
                format!(
                    "{} is more than the {MAX_NUM_RETRIES} retries a route may make",
                    self.num_retries
                ),
            ));
        }
        if self.per_try_timeout == Some(Duration::ZERO) {
            errors.add(ConfigError::new(
                "per_try_timeout",
                "must be greater than 0 (leave it out to bound attempts by the route timeout only)",
            ));
        }
        if let Some(i) = self.idempotent_methods.iter().position(String::is_empty) {
            errors.add(ConfigError::new(
                format!("idempotent_methods[{i}]"),
                "must not be empty",
            ));
        }
        if let Some(matcher) = &self.idempotent_match {
            errors.within("idempotent_match", |errors| matcher.check(errors));
        }
        let back_off = &self.retry_back_off;
        if back_off.base_interval.is_zero() {
            errors.add(ConfigError::new(
                "retry_back_off.base_interval",
                "must be greater than 0",
            ));
        }
        if back_off.max_interval < back_off.base_interval {
            errors.add(ConfigError::new(
                "retry_back_off.max_interval",
                "must not be less than base_interval",
            ));
        }
    }
}

/// The first pause between attempts, as in Envoy.
pub const DEFAULT_RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// The pause between attempts: the ceiling doubles per retry from `base_interval` up to
/// `max_interval`; each pause is drawn between half the ceiling and the ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BackOffFields")]
pub struct RetryBackOffSpec {
    /// The ceiling of the first pause.
    #[serde(with = "humantime_serde")]
    pub base_interval: Duration,
    /// The largest ceiling; defaults to ten times `base_interval`.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
}

/// [`RetryBackOffSpec`] as written: `max_interval`'s default depends on `base_interval`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackOffFields {
    #[serde(default = "default_base_interval", with = "humantime_serde")]
    base_interval: Duration,
    #[serde(default, with = "humantime_serde")]
    max_interval: Option<Duration>,
}

impl From<BackOffFields> for RetryBackOffSpec {
    fn from(fields: BackOffFields) -> Self {
        Self {
            base_interval: fields.base_interval,
            max_interval: fields
                .max_interval
                .unwrap_or_else(|| fields.base_interval.saturating_mul(10)),
        }
    }
}

impl Default for RetryBackOffSpec {
    fn default() -> Self {
        Self::from(BackOffFields {
            base_interval: DEFAULT_RETRY_BASE_INTERVAL,
            max_interval: None,
        })
    }
}

fn default_base_interval() -> Duration {
    DEFAULT_RETRY_BASE_INTERVAL
}

/// A retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The upstream connection could not be made (always safe: the request was not sent).
    ConnectFailure,
    /// The upstream connection failed with the request in flight (retried when the request
    /// was not written yet, or is idempotent).
    Reset,
    /// The upstream answered with a server error (not a declared application exception);
    /// retried when the answer says the call was not processed, or the request is idempotent.
    Unavailable,
    /// An attempt exceeded `per_try_timeout` (retried when the request is idempotent).
    Timeout,
    /// The upstream answered that it refused the call without running it (each codec says
    /// which of its statuses mean that: Dubbo 100, bRPC `ELIMIT` ...): always safe.
    RetryableStatus,
}

impl RetryOn {
    fn defaults() -> Vec<RetryOn> {
        vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::RetryableStatus,
        ]
    }
}

/// A mirror policy: copy a share of requests to another cluster, ignoring its answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The shadow cluster.
    pub cluster: String,
    /// The share of requests mirrored, 0 to 100; spread evenly (at 100, every request).
    #[serde(default = "hundred")]
    pub percentage: f64,
    /// Copies in flight to the mirror cluster (from every route mirroring there) above which
    /// new copies are dropped (and counted), so that a slow mirror cannot make the proxy hold
    /// unbounded work.
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: u32,
}

/// The default [`MirrorSpec::max_in_flight`].
pub const DEFAULT_MIRROR_MAX_IN_FLIGHT: u32 = 1024;

fn default_mirror_in_flight() -> u32 {
    DEFAULT_MIRROR_MAX_IN_FLIGHT
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
