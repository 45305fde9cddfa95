//! Route tables: compiled, immutable snapshots of a route config. Each route's targets are
//! resolved to cluster handles and subset ids when the table is built, so routing a request is
//! a scan of matchers (in a large table, of those its index leaves) and a pointer chase.
//!
//! A listener reads its table through a [`RouteSlot`], swapped atomically on update: requests in
//! flight keep the table they started with.

mod check;
mod hash_policy;
mod index;
mod matcher;
mod peer;
mod template;

use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::{ConnectionInfo, LocalReply, RoutingView};

pub use self::check::{RouteCheck, RouteDestination, RouteMatch, UnknownListener};
pub(crate) use self::hash_policy::HashPolicy;
use self::index::ExactIndex;
pub(crate) use self::matcher::{MetadataMatcher, RequestMatcher, whole_value_regex};
pub(crate) use self::peer::{IpRange, NamespaceMatcher, PrincipalMatcher};
pub(crate) use self::template::{Context as TemplateContext, RouteMutation, Template};
use crate::cluster::{ClusterHandle, ClusterManager, SubsetId, SubsetLease};
use crate::config::{ConfigError, RouteConfigSpec, RouteSpec};
use crate::published::Published;
use crate::router::{MirrorPolicy, RetryPolicy};
use crate::stats::{LazyRouteStats, MetricsScope, RouteStats};

/// The deadline of routes that set no timeout: a client must never wait forever.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A cluster, or a label subset of it, that a route sends to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub cluster: Arc<ClusterHandle>,
    pub subset: SubsetId,
}

/// Where a route sends requests.
#[derive(Debug)]
pub(crate) enum RouteAction {
    /// One target.
    Single(Target),
    /// A weighted split, boxed: inline, it made every route's action 64 bytes.
    Weighted(Box<Split>),
    /// No target: the route answers with this reply.
    Direct(LocalReply),
}

/// A weighted split of a route's requests.
#[derive(Debug)]
pub(crate) struct Split {
    pub targets: Vec<Target>,
    /// Running sums of the weights (the last is the total).
    pub cumulative: Vec<u64>,
    /// The key whose value picks the side (a stable hash), so that one caller always lands on
    /// one side; without it, or without the key in a request, the draw is random.
    pub hash_on: Option<Box<str>>,
}

impl RouteAction {
    /// The target of one request (a weighted draw for splits); `None` for a direct response or
    /// a split whose weights are all 0.
    pub fn pick(&self, request: &RoutingView<'_>) -> Option<&Target> {
        match self {
            Self::Single(target) => Some(target),
            Self::Weighted(split) => {
                let Split {
                    targets,
                    cumulative,
                    hash_on,
                } = &**split;
                let total = cumulative.last().copied().unwrap_or(0);
                if total == 0 {
                    return None;
                }
                let sticky = hash_on.as_deref().and_then(|key| request.get(key));
                let point = match sticky {
                    // xxh64 with seed 0 is stable across processes and versions: a key keeps its
                    // side across restarts.
                    Some(value) => xxhash_rust::xxh64::xxh64(value.as_bytes(), 0) % total,
                    None => fastrand::u64(..total),
                };
                targets.get(cumulative.partition_point(|&end| end <= point))
            }
            Self::Direct(_) => None,
        }
    }
}

/// One compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    /// The route's name (its config name, or `#index`).
    pub name: Arc<str>,
    matcher: RequestMatcher,
    pub action: RouteAction,
    /// The whole request's deadline; `None` means no timeout (`timeout: 0s`).
    pub timeout: Option<Duration>,
    /// Boxed: inline, a policy most routes lack would cost each of them 150 bytes.
    pub retry: Option<Box<RetryPolicy>>,
    /// Header edits on the upstream request.
    pub request_mutation: RouteMutation,
    /// Header edits on the downstream response.
    pub response_mutation: RouteMutation,
    /// The keys of the request's consistent-hashing key.
    pub hash_policy: HashPolicy,
    /// A copy of a share of the requests for another cluster; boxed as the retry policy is.
    pub mirror: Option<Box<MirrorPolicy>>,
    /// The route's series, registered at its first match.
    stats: LazyRouteStats,
    /// Held only to be dropped with the route: they keep the subsets its targets name
    /// registered with their clusters while the route lives.
    _subsets: Box<[SubsetLease]>,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.stats.retire();
    }
}

impl Route {
    /// The route's series (registered if this is the route's first match).
    pub fn stats(&self) -> &RouteStats {
        self.stats.get()
    }

    /// True if every condition holds for the request, arrived on `connection`.
    pub fn matches(&self, request: &RoutingView<'_>, connection: &ConnectionInfo) -> bool {
        self.matcher.matches(request, connection)
    }
}

/// A compiled route config: its routes in order, and its version.
#[derive(Debug)]
pub(crate) struct RouteTable {
    version: u64,
    routes: Vec<Route>,
    /// For a large table, the routes by the value they match exactly (see [`ExactIndex`]).
    index: Option<ExactIndex>,
    spec: RouteConfigSpec,
}

impl RouteTable {
    /// Compiles `spec`, resolving cluster names through `clusters`; each route's series live in
    /// a scope of `metrics`, held while the route is (a table that fails to compile, or is
    /// replaced and no request uses any more, lets go of its series).
    pub fn build(
        spec: &RouteConfigSpec,
        version: u64,
        clusters: &ClusterManager,
        metrics: &MetricsScope,
    ) -> Result<Self, ConfigError> {
        let routes = spec
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let scope = |name: &str| {
                    metrics
                        .detached("route_config", &spec.name)
                        .with_label("route", name)
                };
                build_route(route, i, clusters, scope)
                    .map_err(|e| e.within(&format!("routes[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let matchers: Vec<&RequestMatcher> = routes.iter().map(|r| &r.matcher).collect();
        let index = ExactIndex::build(&matchers);
        Ok(Self {
            version,
            routes,
            index,
            spec: spec.clone(),
        })
    }

    /// The route at `index` (a request keeps the index of its route).
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The index of the first route matching the request, arrived on `connection`.
    pub fn route_index(
        &self,
        request: &RoutingView<'_>,
        connection: &ConnectionInfo,
    ) -> Option<usize> {
        match &self.index {
            Some(index) => index.candidates(request).find(|&i| {
                self.routes
                    .get(i)
                    .is_some_and(|r| r.matches(request, connection))
            }),
            None => self
                .routes
                .iter()
                .position(|r| r.matches(request, connection)),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn spec(&self) -> &RouteConfigSpec {
        &self.spec
    }
}

/// A route config's live table: read through each connection's cache.
#[derive(Debug)]
pub(crate) struct RouteSlot {
    pub table: Published<RouteTable>,
}

/// Compiles one route; its series live in the scope `scope` makes for its name.
fn build_route(
    spec: &RouteSpec,
    index: usize,
    clusters: &ClusterManager,
    scope: impl FnOnce(&str) -> MetricsScope,
) -> Result<Route, ConfigError> {
    let mut subsets = Vec::new();
    let mut target = |cluster: &str,
                      subset: &Option<std::collections::BTreeMap<String, String>>,
                      field: &str| {
        let cluster = clusters
            .get(cluster)
            .ok_or_else(|| ConfigError::new(field, format!("no cluster named `{cluster}`")))?;
        let subset = match subset {
            Some(labels) if !labels.is_empty() => {
                let lease = cluster.subset(labels);
                let id = lease.id();
                subsets.push(lease);
                id
            }
            _ => SubsetId::ALL,
        };
        Ok::<_, ConfigError>(Target { cluster, subset })
    };
    let action = match (&spec.direct_response, &spec.route.cluster) {
        (Some(direct), _) => {
            RouteAction::Direct(direct.reply().map_err(|e| e.within("direct_response"))?)
        }
        (None, Some(cluster)) => {
            RouteAction::Single(target(cluster, &spec.route.subset, "route.cluster")?)
        }
        (None, None) => {
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
            RouteAction::Weighted(Box::new(Split {
                targets,
                cumulative,
                hash_on: spec.route.hash_on.as_deref().map(Into::into),
            }))
        }
    };
    let mirror = match &spec.mirror {
        Some(mirror) => Some(Box::new(MirrorPolicy::new(
            mirror,
            target(&mirror.cluster, &None, "mirror.cluster")?,
        ))),
        None => None,
    };
    let matcher = RequestMatcher::new(&spec.match_).map_err(|e| e.within("match"))?;
    let name: Arc<str> = match &spec.name {
        Some(name) => name.as_str().into(),
        None => format!("#{index}").into(),
    };
    let timeout = match spec.timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(Duration::ZERO) => None,
        Some(timeout) => Some(timeout),
    };
    let retry = spec
        .retry_policy
        .as_ref()
        .map(|r| {
            RetryPolicy::new(r)
                .map(Box::new)
                .map_err(|e| e.within("retry_policy"))
        })
        .transpose()?;
    let request_mutation = RouteMutation::new(spec.request_mutation.as_ref())
        .map_err(|e| e.within("request_mutation"))?;
    let response_mutation = RouteMutation::new(spec.response_mutation.as_ref())
        .map_err(|e| e.within("response_mutation"))?;
    Ok(Route {
        stats: LazyRouteStats::new(scope(&name)),
        name,
        matcher,
        action,
        timeout,
        retry,
        request_mutation,
        response_mutation,
        hash_policy: HashPolicy::new(&spec.hash_policy),
        mirror,
        _subsets: subsets.into_boxed_slice(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use metaprotocol_core::{ByteStr, Metadata, RoutingKeys};

    use super::*;
    use crate::config::{ClusterSpec, RouteConfigSpec};
    use crate::stats::Metrics;

    fn split(hash_on: Option<&str>) -> Result<RouteAction, ConfigError> {
        let mut targets = Vec::new();
        for name in ["a", "b"] {
            let spec = Arc::new(ClusterSpec::from_yaml(&format!("name: {name}"))?);
            let cluster = ClusterHandle::new(
                &spec,
                "null".into(),
                Arc::new(crate::testing::NullCodec),
                Metrics::new().root(),
                None,
                &BTreeMap::new(),
            )?;
            targets.push(Target {
                cluster,
                subset: SubsetId::ALL,
            });
        }
        Ok(RouteAction::Weighted(Box::new(Split {
            targets,
            cumulative: vec![30, 100],
            hash_on: hash_on.map(Into::into),
        })))
    }

    /// The port of the endpoint the single-target route of `table` picks.
    fn picked_port(table: &RouteTable) -> Option<u16> {
        let Some(RouteAction::Single(target)) = table.get(0).map(|r| &r.action) else {
            return None;
        };
        let snapshot = target.cluster.snapshot();
        let host = snapshot.set(target.subset)?.pick(&[], None)?;
        Some(host.endpoint.address().port())
    }

    #[test]
    fn subsets_no_route_table_names_any_more_are_let_go() -> Result<(), ConfigError> {
        let cluster = crate::cluster::tests::cluster(
            "name: c
endpoints: [ { address: 127.0.0.1:1, labels: { version: v1 } }, { address: 127.0.0.1:2, labels: { version: v2 } } ]",
        )?;
        let clusters = ClusterManager::default();
        clusters.insert(cluster.clone());
        let metrics = Metrics::new().root();
        let table = |version: &str| {
            let spec = RouteConfigSpec::from_yaml(&format!(
                "name: r\nroutes: [ {{ route: {{ cluster: c, subset: {{ version: {version} }} }} }} ]"
            ))?;
            RouteTable::build(&spec, 1, &clusters, &metrics)
        };
        // Updates that each name a new subset, built before the table they replace is dropped,
        // as the proxy applies them.
        let mut live = table("v1")?;
        for release in 0..300 {
            live = table(&format!("r{release}"))?;
        }
        // The whole cluster, the last table's subset, and the one its predecessor freed.
        assert_eq!(cluster.snapshot().set_count(), 3);
        // A freed id taken by another subset routes to that subset's endpoints.
        let v2 = table("v2")?;
        assert_eq!(picked_port(&v2), Some(2));
        drop(live);
        let v1 = table("v1")?;
        assert_eq!(picked_port(&v1), Some(1));
        assert_eq!(picked_port(&v2), Some(2));
        assert_eq!(cluster.snapshot().set_count(), 3);
        Ok(())
    }

    fn side(action: &RouteAction, user: Option<String>) -> Option<String> {
        let metadata: Metadata = user
            .map(|u| (ByteStr::from_static("user"), ByteStr::from(u)))
            .into_iter()
            .collect();
        let keys = RoutingKeys::new();
        let view = RoutingView {
            metadata: &metadata,
            keys: &keys,
        };
        action.pick(&view).map(|t| t.cluster.name().to_string())
    }

    #[test]
    fn a_sticky_split_keeps_each_key_on_one_side_in_proportion() -> Result<(), ConfigError> {
        let sticky = split(Some("user"))?;
        let mut first = 0;
        for i in 0..1000 {
            let user = || Some(format!("user-{i}"));
            let chosen = side(&sticky, user());
            for _ in 0..5 {
                assert_eq!(side(&sticky, user()), chosen, "user-{i}");
            }
            if chosen.as_deref() == Some("a") {
                first += 1;
            }
        }
        assert!(
            (270..=330).contains(&first),
            "{first} of 1000 on the 30% side"
        );
        // Without the key, the draw is random: both sides come up.
        let sides: std::collections::BTreeSet<_> = (0..200).map(|_| side(&sticky, None)).collect();
        assert_eq!(sides.len(), 2);
        Ok(())
    }

    #[test]
    fn a_routes_outcome_counts_outlive_an_update_of_its_table() -> Result<(), ConfigError> {
        use crate::stats::{Completion, RequestOutcome, SeriesValue};
        use metaprotocol_core::LocalReplyKind;

        let clusters = ClusterManager::default();
        clusters.insert(crate::cluster::tests::cluster("name: c")?);
        let metrics = Metrics::new();
        let spec =
            RouteConfigSpec::from_yaml("name: r\nroutes: [ { name: a, route: { cluster: c } } ]")?;
        let table = |version| RouteTable::build(&spec, version, &clusters, &metrics.root());
        let timeouts = || {
            metrics
                .family("metaprotocol_route_rq_completed")
                .and_then(|f| {
                    f.find(&[("route", "a"), ("outcome", "timeout")])
                        .next()
                        .cloned()
                })
        };
        let first = table(1)?;
        if let Some(route) = first.get(0) {
            route.stats().completed(&Completion {
                outcome: RequestOutcome::local(LocalReplyKind::Timeout),
                duration: Duration::from_millis(3),
                rx_bytes: 10,
                tx_bytes: 0,
            });
        }
        assert_eq!(timeouts(), Some(SeriesValue::Counter(1)));
        // The same routes again (a new version), built before the table they replace is
        // dropped, as the proxy applies an update.
        let second = table(2)?;
        drop(first);
        assert_eq!(
            timeouts(),
            Some(SeriesValue::Counter(1)),
            "the count outlives the table"
        );
        drop(second);
        assert_eq!(timeouts(), None, "and goes with the route");
        Ok(())
    }

    #[test]
    fn a_routes_series_appear_at_its_first_match_and_outlive_an_update_once_used()
    -> Result<(), ConfigError> {
        use crate::stats::SeriesValue;

        let clusters = ClusterManager::default();
        clusters.insert(crate::cluster::tests::cluster("name: c")?);
        let metrics = Metrics::new();
        let spec = RouteConfigSpec::from_yaml(
            "name: r\nroutes: [ { name: a, route: { cluster: c } }, { name: b, route: { cluster: c } } ]",
        )?;
        let table = |version| RouteTable::build(&spec, version, &clusters, &metrics.root());
        // The routes with a `route_rq` series, and its value.
        let counted = || -> Vec<(String, SeriesValue)> {
            let family = metrics.family("metaprotocol_route_rq");
            let routes = family.iter().flat_map(|f| f.by_label("route"));
            routes.map(|(r, v)| (r.to_owned(), v.clone())).collect()
        };
        let matched = |table: &RouteTable| {
            if let Some(route) = table.get(0) {
                route.stats().requests.inc();
            }
        };
        let first = table(1)?;
        assert_eq!(counted(), [], "no series before a route matches");
        matched(&first);
        assert_eq!(counted(), [("a".to_owned(), SeriesValue::Counter(1))]);
        // An update rebuilds both routes: the used one carries its series on, the idle one
        // still has none.
        let second = table(2)?;
        drop(first);
        assert_eq!(counted(), [("a".to_owned(), SeriesValue::Counter(1))]);
        matched(&second);
        assert_eq!(counted(), [("a".to_owned(), SeriesValue::Counter(2))]);
        drop(second);
        assert_eq!(counted(), [], "the series go with the route");
        Ok(())
    }

    /// The memory an unused route takes beyond its config's spec: the compiled route, and
    /// each further copy of its spec, a config's spec as the proxy keeps it (the running config
    /// and its config layers hold one each, and the table another). Inline bytes only: a
    /// spec's own strings and lists, in each copy, come on top.
    #[test]
    fn an_unused_route_holds_little_beyond_its_config() -> Result<(), ConfigError> {
        use std::borrow::Borrow;
        use std::mem::{size_of, size_of_val};

        let clusters = ClusterManager::default();
        clusters.insert(crate::cluster::tests::cluster("name: c")?);
        let routes: Vec<String> = (0..20)
            .map(|i| {
                format!("{{ name: r{i}, match: {{ metadata: [ {{ key: method, exact: m{i} }} ] }}, route: {{ cluster: c }} }}")
            })
            .collect();
        let spec =
            RouteConfigSpec::from_yaml(&format!("name: r\nroutes: [ {} ]", routes.join(", ")))?;
        let running = spec.clone();
        let table = RouteTable::build(&running, 1, &clusters, &Metrics::new().root())?;
        let copies = [&running, table.spec()];
        for (i, route) in spec.routes.iter().enumerate() {
            let route: &RouteSpec = route.borrow();
            let copied: usize = copies
                .iter()
                .filter_map(|copy| copy.routes.get(i))
                .map(|copy| {
                    if std::ptr::eq(route, copy.borrow()) {
                        size_of_val(copy)
                    } else {
                        size_of::<RouteSpec>()
                    }
                })
                .sum();
            let held = size_of::<Route>() + copied;
            // 240 bytes now (the route 224, two shared copies 8 each); 400 when the split, the
            // mirror, a templated mutation and the principal, which most routes lack, were
            // inline, and 2112 when the series' handles and the retry policy were too and each
            // copy was a whole spec (600 bytes).
            assert!(
                held <= 256,
                "an unused route holds {held} bytes: compiled {}, its series until made {}, \
                 spec copies {copied}",
                size_of::<Route>(),
                size_of::<LazyRouteStats>()
            );
        }
        Ok(())
    }

    #[test]
    fn an_indexed_table_picks_the_route_a_scan_picks() -> Result<(), ConfigError> {
        let clusters = ClusterManager::default();
        clusters.insert(crate::cluster::tests::cluster("name: c")?);
        let mut routes = Vec::new();
        for i in 0..30 {
            let (method, version) = (i % 10, i / 10);
            routes.push(format!(
                "{{ name: r{i}, match: {{ metadata: [ {{ key: interface, exact: svc }}, {{ key: method, exact: m{method} }}, {{ key: version, exact: v{version} }} ] }}, route: {{ cluster: c }} }}"
            ));
        }
        // Routes the index cannot place by value, among the others: in table order still.
        let others = [
            (5, "{ key: method, prefix: m1 }"),
            (12, "{ key: method, exact: m3, invert: true }"),
            (
                20,
                "{ key: version, exact: v0 }, { key: version, exact: v1 }",
            ),
            (25, "{ key: user, exact: u1 }"),
        ];
        for (at, conditions) in others {
            routes.insert(
                at,
                format!("{{ name: o{at}, match: {{ metadata: [ {conditions} ] }}, route: {{ cluster: c }} }}"),
            );
        }
        routes.push("{ name: last, route: { cluster: c } }".to_owned());
        let spec =
            RouteConfigSpec::from_yaml(&format!("name: big\nroutes: [ {} ]", routes.join(", ")))?;
        let table = RouteTable::build(&spec, 1, &clusters, &Metrics::new().root())?;
        let Some(index) = &table.index else {
            panic!("a table of {} routes is indexed", routes.len());
        };
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let connection = ConnectionInfo::new("l".into(), address, address);
        let values = |name: &str, count: usize| {
            (0..count)
                .map(|i| Some(format!("{name}{i}")))
                .chain([None])
                .collect::<Vec<_>>()
        };
        let svc = Some("svc".to_owned());
        let (mut tried, mut requests) = (0, 0);
        for method in values("m", 12) {
            for version in values("v", 4) {
                for user in values("u", 2) {
                    let metadata: Metadata = [
                        ("interface", &svc),
                        ("method", &method),
                        ("version", &version),
                        ("user", &user),
                    ]
                    .into_iter()
                    .filter_map(|(key, value)| {
                        Some((ByteStr::from_static(key), ByteStr::from(value.clone()?)))
                    })
                    .collect();
                    let keys = RoutingKeys::new();
                    let view = RoutingView {
                        metadata: &metadata,
                        keys: &keys,
                    };
                    let scanned = table
                        .routes
                        .iter()
                        .position(|r| r.matches(&view, &connection));
                    assert_eq!(
                        table.route_index(&view, &connection),
                        scanned,
                        "{method:?} {version:?} {user:?}"
                    );
                    tried += index.candidates(&view).count();
                    requests += 1;
                }
            }
        }
        // Each request tries its method's 3 routes and the 5 others at most, not 35: not the
        // key most routes match (`version`, with 11 routes for `v0`), nor the one every route
        // matches (`interface`, which would leave them all).
        assert!(
            tried <= requests * 8,
            "{tried} candidates for {requests} requests"
        );
        Ok(())
    }
}
