//! The running config as two layers: the base (the config file, with the admin and embedding
//! API's edits) and what dynamic sources provide (clusters and route configs from a control
//! plane). Each update changes one layer; [`compose`] then derives the config to run.
//!
//! Composing follows one rule, as Envoy's warming does: **a resource serves only once what it
//! uses exists, and a running resource keeps its running version until its new one can serve.**
//! So a route config waits (warms) until its clusters exist, a listener until its route config
//! does; a new version of a running one waits the same way while the running version keeps
//! serving; and a cluster or route config that its source removed while running resources still
//! use it is kept until they stop using it. No connection is closed and no request fails
//! because resources arrived in an unlucky order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::status::{ResourceId, ResourceKind, ResourceState};
use crate::config::{
    ClusterIndex, ClusterSpec, Config, ConfigError, ListenerSpec, RouteConfigSpec,
};

/// The two layers of the running config.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layers {
    /// The config file's (or embedder's) config, with the API's edits.
    pub base: Config,
    /// What dynamic sources provide.
    pub dynamic: DynamicResources,
}

/// The clusters and route configs dynamic sources provide, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DynamicResources {
    pub clusters: BTreeMap<String, Arc<ClusterSpec>>,
    pub route_configs: BTreeMap<String, RouteConfigSpec>,
}

impl DynamicResources {
    /// True if a dynamic source provides the resource `kind` `name`.
    pub fn provides(&self, kind: ResourceKind, name: &str) -> bool {
        match kind {
            ResourceKind::Cluster => self.clusters.contains_key(name),
            ResourceKind::RouteConfig => self.route_configs.contains_key(name),
            _ => false,
        }
    }
}

/// Which layer an entry of the composed config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The base, at this index of its list.
    Base(usize),
    /// A dynamic source.
    Dynamic,
    /// Neither any more: the running version, kept while running resources use it.
    Kept,
}

/// The config to run, and the state of every resource that is not simply serving as given.
#[derive(Debug)]
pub(crate) struct Composed {
    /// What runs.
    pub effective: Config,
    /// Where each entry of `effective`'s lists came from, in the same order.
    clusters: Vec<Origin>,
    route_configs: Vec<Origin>,
    listeners: Vec<Origin>,
    /// The state of each dynamic resource, and of each base resource that is warming.
    pub states: Vec<(ResourceId, ResourceState)>,
}

/// Who changed a layer: conflicts between the layers are reported against this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Changed {
    Base,
    Dynamic,
}

/// Derives the config to run from `layers`, given the config running now (see the module docs).
/// `base_index` indexes the clusters of `layers.base`, `running`'s own index its clusters: an
/// update of one cluster among thousands indexes no name.
pub(crate) fn compose(
    layers: &Layers,
    base_index: &ClusterIndex,
    (running, running_index): (&Config, &ClusterIndex),
    changed: Changed,
) -> Result<Composed, ConfigError> {
    let base = &layers.base;
    let dynamic = &layers.dynamic;
    check_conflicts(layers, changed)?;

    // Names looked up in the indexes: searching a list for each route's cluster cost routes
    // times clusters.
    let running_cluster = |name: &str| {
        running_index
            .position(name)
            .and_then(|i| running.clusters.get(i))
            .filter(|c| c.name == name)
    };
    let provided =
        |name: &str| base_index.position(name).is_some() || dynamic.clusters.contains_key(name);
    let available = |name: &str| provided(name) || running_cluster(name).is_some();
    // Without a dynamic source, the base's checks found every route's cluster in the base: no
    // route config waits for one and none is kept, so no route is looked at for them (each
    // update looked at every route twice).
    let base_alone =
        base.dynamic.is_none() && dynamic.clusters.is_empty() && dynamic.route_configs.is_empty();
    let mut states = Vec::new();

    // Route configs: a version whose clusters all exist serves; otherwise the running version
    // (if any) keeps serving while the new one warms.
    let mut route_configs: Vec<(RouteConfigSpec, Origin)> = Vec::new();
    let candidates = base
        .route_configs
        .iter()
        .enumerate()
        .map(|(i, spec)| (spec, Origin::Base(i)))
        .chain(dynamic.route_configs.values().map(|s| (s, Origin::Dynamic)));
    for (spec, origin) in candidates {
        if origin == Origin::Dynamic {
            check_dynamic_routes(spec, base, &provided)
                .map_err(|e| e.within(&format!("route_configs[{}]", spec.name)))?;
        }
        let id = ResourceId::new(ResourceKind::RouteConfig, &spec.name);
        let missing = if base_alone {
            Vec::new()
        } else {
            missing_clusters(spec, &available)
        };
        if missing.is_empty() {
            if origin == Origin::Dynamic {
                states.push((id, ResourceState::Active));
            }
            route_configs.push((spec.clone(), origin));
            continue;
        }
        let waiting_for = format!("clusters {missing:?}");
        if let Some(old) = running.route_config(&spec.name) {
            route_configs.push((old.clone(), origin));
            states.push((
                id,
                ResourceState::Warming {
                    waiting_for: format!("{waiting_for} (the running version serves meanwhile)"),
                },
            ));
        } else {
            states.push((id, ResourceState::Warming { waiting_for }));
        }
    }

    // Listeners: the same rule, waiting for their route config.
    let serving = |name: &str, list: &[(RouteConfigSpec, Origin)]| {
        list.iter().any(|(r, _)| r.name == name) || running.route_config(name).is_some()
    };
    let mut listeners: Vec<(ListenerSpec, Origin)> = Vec::new();
    for (i, spec) in base.listeners.iter().enumerate() {
        let id = ResourceId::new(ResourceKind::Listener, &spec.name);
        let ready = route_configs
            .iter()
            .any(|(r, _)| r.name == spec.route_config);
        if ready {
            listeners.push((spec.clone(), Origin::Base(i)));
            continue;
        }
        let waiting_for = format!("route config `{}`", spec.route_config);
        match running.listeners.iter().find(|l| l.name == spec.name) {
            Some(old) if serving(&old.route_config, &route_configs) => {
                listeners.push((old.clone(), Origin::Base(i)));
                states.push((
                    id,
                    ResourceState::Warming {
                        waiting_for: format!(
                            "{waiting_for} (the running version serves meanwhile)"
                        ),
                    },
                ));
            }
            _ => states.push((id, ResourceState::Warming { waiting_for })),
        }
    }

    // Route configs no layer has any more, kept while a listener serves with them.
    let kept_routes: BTreeSet<&str> = listeners
        .iter()
        .map(|(l, _)| l.route_config.as_str())
        .filter(|name| !route_configs.iter().any(|(r, _)| r.name == *name))
        .collect();
    for name in kept_routes {
        if let Some(old) = running.route_config(name) {
            route_configs.push((old.clone(), Origin::Kept));
            states.push((
                ResourceId::new(ResourceKind::RouteConfig, name),
                ResourceState::Kept {
                    used_by: users(listeners.iter().map(|(l, _)| l), |l| {
                        (l.route_config == name).then_some(format!("listener `{}`", l.name))
                    }),
                },
            ));
        }
    }

    // Clusters: both layers', and those no layer has any more but a serving route still uses.
    // Shared, not copied: an update of one cluster among thousands copied them all.
    let mut clusters: Vec<(Arc<ClusterSpec>, Origin)> = base
        .clusters
        .iter()
        .enumerate()
        .map(|(i, spec)| (spec.clone(), Origin::Base(i)))
        .collect();
    for spec in dynamic.clusters.values() {
        states.push((
            ResourceId::new(ResourceKind::Cluster, &spec.name),
            ResourceState::Active,
        ));
        clusters.push((spec.clone(), Origin::Dynamic));
    }
    let used: BTreeSet<&str> = route_configs
        .iter()
        .filter(|_| !base_alone)
        .flat_map(|(r, _)| r.routes.iter().flat_map(|route| route.clusters()))
        .collect();
    for name in used.into_iter().filter(|name| !provided(name)) {
        if let Some(old) = running_cluster(name) {
            clusters.push((Arc::clone(old), Origin::Kept));
            states.push((
                ResourceId::new(ResourceKind::Cluster, name),
                ResourceState::Kept {
                    used_by: users(route_configs.iter().map(|(r, _)| r), |r| {
                        r.routes
                            .iter()
                            .any(|route| route.clusters().any(|c| c == name))
                            .then(|| format!("route config `{}`", r.name))
                    }),
                },
            ));
        }
    }

    let (clusters, cluster_origins) = clusters.into_iter().unzip();
    let (route_configs, route_origins) = route_configs.into_iter().unzip();
    let (listeners, listener_origins) = listeners.into_iter().unzip();
    Ok(Composed {
        // The other sections one by one: `..base.clone()` copied every cluster only to drop it.
        effective: Config {
            admin: base.admin.clone(),
            drain_time: base.drain_time,
            limits: base.limits,
            node: base.node.clone(),
            metrics: base.metrics.clone(),
            dynamic: base.dynamic.clone(),
            clusters,
            route_configs,
            listeners,
        },
        clusters: cluster_origins,
        route_configs: route_origins,
        listeners: listener_origins,
        states,
    })
}

/// Rejects a name that both layers have: a resource comes from the file or from its source,
/// never both. The error is the changed side's.
fn check_conflicts(layers: &Layers, changed: Changed) -> Result<(), ConfigError> {
    // Without dynamic resources (a config file alone) there is no list to look through.
    if layers.dynamic.clusters.is_empty() && layers.dynamic.route_configs.is_empty() {
        return Ok(());
    }
    let base = &layers.base;
    let lists = [
        (
            "clusters",
            "cluster",
            base.clusters
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ResourceKind::Cluster,
        ),
        (
            "route_configs",
            "route config",
            base.route_configs.iter().map(|r| r.name.as_str()).collect(),
            ResourceKind::RouteConfig,
        ),
    ];
    for (list, what, names, kind) in lists {
        for (i, name) in names.into_iter().enumerate() {
            if !layers.dynamic.provides(kind, name) {
                continue;
            }
            return Err(match changed {
                Changed::Base => ConfigError::new(
                    format!("{list}[{i}].name"),
                    format!(
                        "{what} `{name}` also comes from the dynamic source; a {what} comes from one or the other"
                    ),
                ),
                Changed::Dynamic => ConfigError::new(
                    format!("{list}[{name}]"),
                    format!(
                        "{what} `{name}` is in the config file; a {what} comes from one or the other"
                    ),
                ),
            });
        }
    }
    Ok(())
}

/// Rejects a dynamic route config sending to a cluster that nothing can provide (it would warm
/// forever): not in the file, and not among the clusters the dynamic section asks for.
fn check_dynamic_routes(
    spec: &RouteConfigSpec,
    base: &Config,
    provided: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    for (i, route) in spec.routes.iter().enumerate() {
        for cluster in route.clusters() {
            if !provided(cluster) && !base.has_cluster(cluster) {
                return Err(ConfigError::new(
                    format!("routes[{i}]"),
                    format!(
                        "no cluster named `{cluster}`: it is not in the config file, and the dynamic section's `clusters` does not ask for it"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The clusters `spec` sends to that `available` does not know, sorted, once each.
fn missing_clusters<'a>(
    spec: &'a RouteConfigSpec,
    available: &dyn Fn(&str) -> bool,
) -> Vec<&'a str> {
    let missing: BTreeSet<&str> = spec
        .routes
        .iter()
        .flat_map(|route| route.clusters())
        .filter(|c| !available(c))
        .collect();
    missing.into_iter().collect()
}

/// The users of something, named by `user`, as one phrase.
fn users<'a, T: 'a>(
    candidates: impl Iterator<Item = &'a T>,
    user: impl Fn(&T) -> Option<String>,
) -> String {
    candidates.filter_map(user).collect::<Vec<_>>().join(", ")
}

impl Composed {
    /// Rewrites an error about an entry of the composed config (`clusters[3].lb_policy`) in the
    /// terms of the layer the entry came from: the base's index (`clusters[1].lb_policy`), or a
    /// dynamic resource's name (`clusters[outbound|20880||demo].lb_policy`); returns the dynamic
    /// resource too, when the error is about one.
    pub fn locate(&self, error: ConfigError) -> (ConfigError, Option<ResourceId>) {
        let lists = [
            ("clusters", ResourceKind::Cluster, &self.clusters),
            (
                "route_configs",
                ResourceKind::RouteConfig,
                &self.route_configs,
            ),
            ("listeners", ResourceKind::Listener, &self.listeners),
        ];
        for (list, kind, origins) in lists {
            let Some(rest) = error
                .field
                .strip_prefix(list)
                .and_then(|r| r.strip_prefix('['))
            else {
                continue;
            };
            let Some((index, tail)) = rest.split_once(']') else {
                continue;
            };
            let Some(origin) = index
                .parse::<usize>()
                .ok()
                .and_then(|i| origins.get(i).map(|o| (i, *o)))
            else {
                continue;
            };
            let (position, origin) = origin;
            let name = match kind {
                ResourceKind::Cluster => self
                    .effective
                    .clusters
                    .get(position)
                    .map(|c| c.name.clone()),
                ResourceKind::RouteConfig => self
                    .effective
                    .route_configs
                    .get(position)
                    .map(|r| r.name.clone()),
                _ => self
                    .effective
                    .listeners
                    .get(position)
                    .map(|l| l.name.clone()),
            }
            .unwrap_or_default();
            let (label, resource) = match origin {
                Origin::Base(i) => (i.to_string(), None),
                Origin::Dynamic | Origin::Kept => {
                    (name.clone(), Some(ResourceId::new(kind, &name)))
                }
            };
            let field = format!("{list}[{label}]{tail}");
            return (ConfigError { field, ..error }, resource);
        }
        (error, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DynamicSpec;

    /// [`compose`], each list indexed anew.
    fn compose(
        layers: &Layers,
        running: &Config,
        changed: Changed,
    ) -> Result<Composed, ConfigError> {
        let base = ClusterIndex::build(&layers.base.clusters)?;
        let running_index = ClusterIndex::build(&running.clusters)?;
        super::compose(layers, &base, (running, &running_index), changed)
    }

    fn config(yaml: &str) -> Config {
        match Config::from_yaml(yaml) {
            Ok(config) => config,
            Err(err) => panic!("{err}"),
        }
    }

    fn base() -> Config {
        config(
            "dynamic: { xds: { address: 127.0.0.1:1, node_id: node-1, route_configs: ['*'], clusters: ['*'] } }
listeners:
  - { name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: dyn-routes }
",
        )
    }

    fn routes(name: &str, cluster: &str) -> RouteConfigSpec {
        let yaml = format!("{{ name: {name}, routes: [ {{ route: {{ cluster: {cluster} }} }} ] }}");
        match RouteConfigSpec::from_yaml(&yaml) {
            Ok(spec) => spec,
            Err(err) => panic!("{err}"),
        }
    }

    fn cluster(name: &str) -> Arc<ClusterSpec> {
        match ClusterSpec::from_yaml(&format!("{{ name: {name} }}")) {
            Ok(spec) => Arc::new(spec),
            Err(err) => panic!("{err}"),
        }
    }

    fn state_of<'a>(
        composed: &'a Composed,
        kind: ResourceKind,
        name: &str,
    ) -> Option<&'a ResourceState> {
        composed
            .states
            .iter()
            .find(|(id, _)| *id == ResourceId::new(kind, name))
            .map(|(_, state)| state)
    }

    #[test]
    fn a_listener_warms_until_its_route_config_and_clusters_exist() -> Result<(), ConfigError> {
        let mut layers = Layers {
            base: base(),
            ..Layers::default()
        };
        let composed = compose(&layers, &Config::default(), Changed::Base)?;
        assert!(composed.effective.listeners.is_empty());
        assert!(matches!(
            state_of(&composed, ResourceKind::Listener, "in"),
            Some(ResourceState::Warming { waiting_for }) if waiting_for.contains("dyn-routes")
        ));

        layers
            .dynamic
            .route_configs
            .insert("dyn-routes".into(), routes("dyn-routes", "a"));
        let composed = compose(&layers, &Config::default(), Changed::Dynamic)?;
        assert!(composed.effective.listeners.is_empty());
        assert!(composed.effective.route_configs.is_empty());
        assert!(matches!(
            state_of(&composed, ResourceKind::RouteConfig, "dyn-routes"),
            Some(ResourceState::Warming { waiting_for }) if waiting_for.contains("\"a\"")
        ));

        layers.dynamic.clusters.insert("a".into(), cluster("a"));
        let composed = compose(&layers, &Config::default(), Changed::Dynamic)?;
        assert_eq!(composed.effective.listeners.len(), 1);
        assert_eq!(composed.effective.route_configs.len(), 1);
        assert!(state_of(&composed, ResourceKind::Listener, "in").is_none());
        composed.effective.validate()
    }

    #[test]
    fn a_running_version_serves_while_the_new_one_warms_and_removed_resources_in_use_are_kept()
    -> Result<(), ConfigError> {
        let mut layers = Layers {
            base: base(),
            ..Layers::default()
        };
        layers
            .dynamic
            .route_configs
            .insert("dyn-routes".into(), routes("dyn-routes", "a"));
        layers.dynamic.clusters.insert("a".into(), cluster("a"));
        let running = compose(&layers, &Config::default(), Changed::Dynamic)?.effective;

        // A new version sending to a cluster that has not arrived: the running one serves.
        layers
            .dynamic
            .route_configs
            .insert("dyn-routes".into(), routes("dyn-routes", "b"));
        let composed = compose(&layers, &running, Changed::Dynamic)?;
        assert_eq!(composed.effective.route_configs, running.route_configs);
        assert!(matches!(
            state_of(&composed, ResourceKind::RouteConfig, "dyn-routes"),
            Some(ResourceState::Warming { .. })
        ));

        // The source removes cluster `a` and the route config: both are kept while in use.
        layers.dynamic = DynamicResources::default();
        let composed = compose(&layers, &running, Changed::Dynamic)?;
        assert_eq!(composed.effective, running);
        assert!(matches!(
            state_of(&composed, ResourceKind::Cluster, "a"),
            Some(ResourceState::Kept { used_by }) if used_by == "route config `dyn-routes`"
        ));
        assert!(matches!(
            state_of(&composed, ResourceKind::RouteConfig, "dyn-routes"),
            Some(ResourceState::Kept { used_by }) if used_by == "listener `in`"
        ));

        // Once nothing uses them, they go.
        layers.base.listeners.clear();
        let composed = compose(&layers, &running, Changed::Base)?;
        assert!(composed.effective.clusters.is_empty());
        assert!(composed.effective.route_configs.is_empty());
        Ok(())
    }

    #[test]
    fn a_name_comes_from_one_layer_and_dynamic_routes_need_a_provider() {
        let mut layers = Layers {
            base: base(),
            ..Layers::default()
        };
        layers.base.clusters.push(cluster("a"));
        layers.dynamic.clusters.insert("a".into(), cluster("a"));
        let err = compose(&layers, &Config::default(), Changed::Dynamic).err();
        assert_eq!(err.map(|e| e.field), Some("clusters[a]".to_owned()));
        let err = compose(&layers, &Config::default(), Changed::Base).err();
        assert_eq!(err.map(|e| e.field), Some("clusters[0].name".to_owned()));

        layers.dynamic.clusters.clear();
        layers.base.dynamic = Some(DynamicSpec {
            xds: layers.base.dynamic.and_then(|d| d.xds).map(|mut xds| {
                xds.clusters = vec!["only-this".into()];
                xds
            }),
        });
        layers
            .dynamic
            .route_configs
            .insert("dyn-routes".into(), routes("dyn-routes", "z"));
        let err = compose(&layers, &Config::default(), Changed::Dynamic).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.field == "route_configs[dyn-routes].routes[0]"
                    && e.reason.contains("no cluster named `z`")),
            "{err:?}"
        );
    }

    #[test]
    fn errors_about_composed_entries_name_their_layer() -> Result<(), ConfigError> {
        let mut layers = Layers {
            base: base(),
            ..Layers::default()
        };
        layers.base.clusters.push(cluster("static"));
        layers.dynamic.clusters.insert("dyn".into(), cluster("dyn"));
        let composed = compose(&layers, &Config::default(), Changed::Dynamic)?;
        let (err, resource) = composed.locate(ConfigError::new("clusters[1].lb_policy", "x"));
        assert_eq!(err.field, "clusters[dyn].lb_policy");
        assert_eq!(
            resource,
            Some(ResourceId::new(ResourceKind::Cluster, "dyn"))
        );
        let (err, resource) = composed.locate(ConfigError::new("clusters[0]", "x"));
        assert_eq!(err.field, "clusters[0]");
        assert_eq!(resource, None);
        Ok(())
    }
}
