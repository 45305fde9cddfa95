//! "Which route would this request take?", answered from a config alone: the route tables
//! the proxy would serve, compiled exactly as it compiles them, asked without a socket. For
//! operators checking a config before they ship it (the `route` command of
//! `metaprotocol-proxy`, like Envoy's route table check tool), for tests of a config, and for
//! fuzzing the route match.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use metaprotocol_core::{ConnectionInfo, RoutingView};

use super::{RouteAction, RouteTable};
use crate::config::{DirectResponseSpec, RouteSpec, WeightedClusterSpec};

/// The compiled route tables of a config, by listener, that say which route a request takes.
/// Built by [`ProxyBuilder::route_check`](crate::ProxyBuilder::route_check).
#[derive(Debug)]
pub struct RouteCheck {
    tables: BTreeMap<String, Arc<RouteTable>>,
}

/// The route a request takes, and where that route sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// The route's name (its config name, or `#index` for an unnamed route).
    pub route: String,
    /// Where the route sends this request.
    pub destination: RouteDestination,
}

/// Where a matched route sends a request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RouteDestination {
    /// One cluster, or the subset of its endpoints with these labels (empty: all of them). A
    /// sticky split (`hash_on`) resolves to this when the request carries the split's key.
    Cluster {
        /// The cluster's name.
        name: String,
        /// The labels that select the subset.
        subset: BTreeMap<String, String>,
    },
    /// A weighted split drawn per request: these sides, as configured.
    Split(Vec<WeightedClusterSpec>),
    /// No upstream: the route answers with this reply.
    DirectResponse(DirectResponseSpec),
}

impl RouteCheck {
    /// Wraps the tables of each listener.
    pub(crate) fn new(tables: BTreeMap<String, Arc<RouteTable>>) -> Self {
        Self { tables }
    }

    /// The listeners that can be asked about, in name order.
    pub fn listeners(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// The route that a request seen through `request` (its metadata, overridden by routing
    /// keys a filter would set) takes on `listener`: `None` when no route matches (the proxy
    /// answers "no route"), or `Err` naming a listener the config does not have. The request
    /// comes from a client without a TLS identity at an unspecified address: routes that
    /// match a `principal` or `source_ips` are asked with [`RouteCheck::check_from`].
    pub fn check(
        &self,
        listener: &str,
        request: &RoutingView<'_>,
    ) -> Result<Option<RouteMatch>, UnknownListener> {
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        let anonymous = ConnectionInfo::new(listener.into(), nowhere, nowhere);
        self.check_from(listener, request, &anonymous)
    }

    /// As [`RouteCheck::check`], for a request arrived on `connection` (the client's address
    /// and TLS identity, which routes' `principal` and `source_ips` match).
    pub fn check_from(
        &self,
        listener: &str,
        request: &RoutingView<'_>,
        connection: &ConnectionInfo,
    ) -> Result<Option<RouteMatch>, UnknownListener> {
        let table = self
            .tables
            .get(listener)
            .ok_or_else(|| UnknownListener(listener.to_owned()))?;
        let Some(index) = table.route_index(request, connection) else {
            return Ok(None);
        };
        let (Some(route), Some(spec)) = (table.get(index), table.spec().routes.get(index)) else {
            return Ok(None);
        };
        Ok(Some(RouteMatch {
            route: route.name.to_string(),
            destination: destination(&route.action, spec, request),
        }))
    }
}

/// Where the route written as `spec` (and compiled to `action`) sends `request`.
fn destination(
    action: &RouteAction,
    spec: &RouteSpec,
    request: &RoutingView<'_>,
) -> RouteDestination {
    if let Some(direct) = &spec.direct_response {
        return RouteDestination::DirectResponse(direct.clone());
    }
    let cluster =
        |name: &str, subset: &Option<BTreeMap<String, String>>| RouteDestination::Cluster {
            name: name.to_owned(),
            subset: subset.clone().unwrap_or_default(),
        };
    if let Some(name) = &spec.route.cluster {
        return cluster(name, &spec.route.subset);
    }
    // The compiled split keeps the sides of non-zero weight, in order.
    let sides = || spec.route.weighted_clusters.iter().filter(|w| w.weight > 0);
    // A sticky split whose key the request carries always lands on one side: say which.
    let sticky = match action {
        RouteAction::Weighted(split)
            if split
                .hash_on
                .as_deref()
                .is_some_and(|key| request.get(key).is_some()) =>
        {
            action
                .pick(request)
                .and_then(|picked| split.targets.iter().position(|t| std::ptr::eq(t, picked)))
                .and_then(|index| sides().nth(index))
        }
        _ => None,
    };
    match sticky {
        Some(side) => cluster(&side.cluster, &side.subset),
        None => RouteDestination::Split(sides().cloned().collect()),
    }
}

/// A route check named a listener the config does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no listener named `{0}`")]
pub struct UnknownListener(pub String);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metaprotocol_core::{ByteStr, CodecRegistry, Metadata, RoutingKeys};

    use super::*;
    use crate::testing::NullCodec;
    use crate::{Config, ConfigError, Proxy};

    const CONFIG: &str = "
listeners:
  - { name: front, address: 127.0.0.1:0, protocol: test, route_config: r }
route_configs:
  - name: r
    routes:
      - name: canary
        match: { metadata: [ { key: user, prefix: test- } ] }
        route: { cluster: c, subset: { version: v2 } }
      - name: sticky
        match: { metadata: [ { key: method, exact: buy } ] }
        route:
          hash_on: user
          weighted_clusters:
            - { cluster: c, weight: 90 }
            - { cluster: d, weight: 0 }
            - { cluster: d, weight: 10 }
      - name: closed
        match: { metadata: [ { key: method, exact: admin } ] }
        direct_response: { kind: unauthorized }
      - match: { metadata: [ { key: method, present: true } ] }
        route: { cluster: d }
clusters:
  - { name: c, endpoints: [ { address: 127.0.0.1:1, labels: { version: v2 } } ] }
  - { name: d, endpoints: [ { address: 127.0.0.1:2 } ] }
";

    fn route_check(config: &str) -> Result<RouteCheck, ConfigError> {
        let mut codecs = CodecRegistry::new();
        codecs.register("test", |_| Ok(Arc::new(NullCodec)));
        Proxy::builder(Config::from_yaml(config)?)
            .codecs(codecs)
            .route_check()
    }

    fn metadata(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|&(k, v)| (ByteStr::from(k.to_owned()), ByteStr::from(v.to_owned())))
            .collect()
    }

    fn route_of(check: &RouteCheck, metadata: &Metadata, keys: &RoutingKeys) -> Option<RouteMatch> {
        let view = RoutingView { metadata, keys };
        check.check("front", &view).ok().flatten()
    }

    fn cluster(name: &str, subset: &[(&str, &str)]) -> RouteDestination {
        RouteDestination::Cluster {
            name: name.to_owned(),
            subset: subset
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    #[test]
    fn the_first_matching_route_and_its_destination() -> Result<(), ConfigError> {
        let check = route_check(CONFIG)?;
        assert_eq!(check.listeners().collect::<Vec<_>>(), ["front"]);
        let none = RoutingKeys::default();

        let canary = route_of(
            &check,
            &metadata(&[("user", "test-1"), ("method", "buy")]),
            &none,
        );
        assert_eq!(
            canary,
            Some(RouteMatch {
                route: "canary".into(),
                destination: cluster("c", &[("version", "v2")]),
            })
        );

        let direct = route_of(&check, &metadata(&[("method", "admin")]), &none);
        assert!(matches!(
            direct.map(|m| m.destination),
            Some(RouteDestination::DirectResponse(spec)) if spec.kind == "unauthorized"
        ));

        let unnamed = route_of(&check, &metadata(&[("method", "sell")]), &none);
        assert_eq!(unnamed.map(|m| m.route), Some("#3".to_owned()));

        assert_eq!(route_of(&check, &metadata(&[("other", "x")]), &none), None);
        Ok(())
    }

    #[test]
    fn a_sticky_split_names_its_side_only_when_the_key_is_there() -> Result<(), ConfigError> {
        let check = route_check(CONFIG)?;
        let none = RoutingKeys::default();
        let Some(keyless) = route_of(&check, &metadata(&[("method", "buy")]), &none) else {
            panic!("the split did not match");
        };
        let RouteDestination::Split(sides) = keyless.destination else {
            panic!("a request without the key is drawn: {keyless:?}");
        };
        // Sides of weight 0 never receive traffic and are not listed.
        let weights: Vec<_> = sides
            .iter()
            .map(|s| (s.cluster.as_str(), s.weight))
            .collect();
        assert_eq!(weights, [("c", 90), ("d", 10)]);

        // Each user always lands on one side, and over many users both sides are used.
        let mut seen = BTreeMap::new();
        for user in (1..=40).map(|i| format!("u{i}")) {
            let request = metadata(&[("method", "buy"), ("user", &user)]);
            let first = route_of(&check, &request, &none).map(|m| m.destination);
            let again = route_of(&check, &request, &none).map(|m| m.destination);
            assert_eq!(first, again, "user {user} moved");
            let Some(RouteDestination::Cluster { name, .. }) = first else {
                panic!("a request with the key lands on one side: {first:?}");
            };
            *seen.entry(name).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        Ok(())
    }

    #[test]
    fn routing_keys_win_over_metadata() -> Result<(), ConfigError> {
        let check = route_check(CONFIG)?;
        let mut keys = RoutingKeys::default();
        keys.set(
            ByteStr::from_static("method"),
            ByteStr::from_static("admin"),
        );
        let steered = route_of(&check, &metadata(&[("method", "sell")]), &keys);
        assert_eq!(steered.map(|m| m.route), Some("closed".to_owned()));
        Ok(())
    }

    #[test]
    fn an_unknown_listener_and_a_bad_config_are_errors() -> Result<(), ConfigError> {
        let check = route_check(CONFIG)?;
        let metadata = Metadata::default();
        let view = RoutingView {
            metadata: &metadata,
            keys: &RoutingKeys::default(),
        };
        assert_eq!(
            check.check("back", &view),
            Err(UnknownListener("back".to_owned()))
        );
        let broken = CONFIG.replace("route: { cluster: d }", "route: { cluster: ghost }");
        let err = route_check(&broken)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ghost"), "{err}");
        Ok(())
    }

    #[test]
    fn routes_on_who_sent_the_request_are_asked_with_the_connection() -> Result<(), ConfigError> {
        let office = CONFIG.replace(
            "      - name: closed",
            "      - name: office\n        match: { source_ips: [ 10.0.0.0/8 ] }\n        route: { cluster: c }\n      - name: closed",
        );
        let check = route_check(&office)?;
        let metadata = metadata(&[("method", "admin")]);
        let view = RoutingView {
            metadata: &metadata,
            keys: &RoutingKeys::default(),
        };
        let from = |ip: [u8; 4]| {
            let address = SocketAddr::from((ip, 40000));
            let connection = ConnectionInfo::new("front".into(), address, address);
            check
                .check_from("front", &view, &connection)
                .ok()
                .flatten()
                .map(|m| m.route)
        };
        assert_eq!(from([10, 1, 2, 3]), Some("office".to_owned()));
        assert_eq!(from([192, 168, 0, 1]), Some("closed".to_owned()));
        let anonymous = check.check("front", &view).ok().flatten().map(|m| m.route);
        assert_eq!(anonymous, Some("closed".to_owned()));
        Ok(())
    }
}
