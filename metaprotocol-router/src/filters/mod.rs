//! Filter factories: how a listener's `filters: [{ name, config }]` become [`L7Filter`]s.
//!
//! Embedders register their own factories in a [`FilterRegistry`]; built-in filters register
//! themselves in [`FilterRegistry::with_builtins`]. A factory runs once per listener per config,
//! never per request, and gets a [`FilterContext`]: the listener's name, a metrics scope for
//! the filter's own series, the runtime, and clients shared by every filter of the proxy.
//!
//! The built-in filters, one folder each: [`local_ratelimit`] (token buckets per proxy),
//! [`global_ratelimit`] (a limit shared by every proxy through Redis), [`fault`] (delays and
//! aborts) and [`rbac`] (authorization by the client's identity, address and the request's
//! metadata); with the `lua` and `wasm` features, the script filters `lua` and `wasm`, which
//! share their per-request plumbing in `script`.

mod fault;
mod global_ratelimit;
mod in_flight;
mod local_ratelimit;
mod rbac;
#[cfg(test)]
mod testing;

#[cfg(feature = "lua")]
mod lua;
#[cfg(any(feature = "lua", feature = "wasm"))]
mod script;
#[cfg(feature = "wasm")]
mod wasm;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use metaprotocol_core::{L7Filter, RequestContext, RoutingView};

use crate::config::{ConfigError, FilterSpec, MatchSpec};
use crate::route::RequestMatcher;
use crate::stats::{Metrics, MetricsScope};

/// Clients that filters share across listeners and config updates (a Redis connection, an
/// authorization service channel ...), by name, for as long as a filter holds them: a client
/// no filter holds any more (its config changed the address or the credentials, say) is
/// dropped with its last holder, its connections with it.
#[derive(Clone, Default)]
pub struct SharedClients {
    clients: Arc<Mutex<HashMap<String, Weak<dyn Any + Send + Sync>>>>,
}

impl std::fmt::Debug for SharedClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedClients")
    }
}

impl SharedClients {
    /// The client stored under `key`, made by `make` when there is none that something still
    /// holds. A client of another type under the same key is replaced.
    pub fn get_or_insert_with<T: Any + Send + Sync>(
        &self,
        key: &str,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let mut clients = match self.clients.lock() {
            Ok(clients) => clients,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(existing) = clients.get(key).and_then(Weak::upgrade)
            && let Ok(client) = existing.downcast::<T>()
        {
            return client;
        }
        // Made rarely (a config's filters, once each): the names of dropped clients go here.
        clients.retain(|_, client| client.strong_count() > 0);
        let client = Arc::new(make());
        let shared: Arc<dyn Any + Send + Sync> = client.clone();
        clients.insert(key.to_owned(), Arc::downgrade(&shared));
        client
    }
}

/// What a filter factory gets besides the filter's config.
#[derive(Clone, Debug)]
pub struct FilterContext {
    listener: Arc<str>,
    metrics: MetricsScope,
    runtime: Option<tokio::runtime::Handle>,
    shared: SharedClients,
    logs_authorization: bool,
    logs_refusals: bool,
}

impl FilterContext {
    /// The context of a filter of `listener`, registering its series in `metrics` (the proxy
    /// labels it with the listener and the filter) and sharing `shared` clients. The engine
    /// makes one per filter of each listener; benches and embedders' tests make their own.
    pub fn new(listener: Arc<str>, metrics: MetricsScope, shared: SharedClients) -> Self {
        Self {
            listener,
            metrics,
            runtime: tokio::runtime::Handle::try_current().ok(),
            shared,
            logs_authorization: false,
            logs_refusals: false,
        }
    }

    /// The context with [`FilterContext::logs_authorization`] set to `logged`.
    pub fn with_logged_authorization(mut self, logged: bool) -> Self {
        self.logs_authorization = logged;
        self
    }

    /// The context with [`FilterContext::logs_refusals`] set to `logged`.
    pub fn with_logged_refusals(mut self, logged: bool) -> Self {
        self.logs_refusals = logged;
        self
    }

    /// The context of filter `filter` of listener `listener` outside a running proxy (benches,
    /// tests): its series go to `metrics` with the labels the engine gives them.
    pub fn standalone(listener: &str, filter: &str, metrics: &Metrics) -> Self {
        let scope = metrics
            .root()
            .detached("listener", listener)
            .with_label("filter", filter);
        Self::new(listener.into(), scope, SharedClients::default())
    }

    /// The listener whose chain the filter joins.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// Where the filter registers its own series (labelled with the listener and the filter).
    pub fn metrics(&self) -> &MetricsScope {
        &self.metrics
    }

    /// The runtime the proxy runs on, for background work; `None` when the config is only
    /// being checked outside a runtime.
    pub fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref()
    }

    /// Clients shared by every filter of the proxy.
    pub fn shared(&self) -> &SharedClients {
        &self.shared
    }

    /// True if the listener's access log shows what authorization filters decided
    /// (`%RBAC_POLICY%` and the like): an authorization filter records its decisions in
    /// [`RequestRecord::record_authorization`](metaprotocol_core::RequestRecord::record_authorization) then
    /// only, so that requests no log line shows them for pay nothing for them.
    pub fn logs_authorization(&self) -> bool {
        self.logs_authorization
    }

    /// True if the listener's access log names the policy that refused a request
    /// (`%RESPONSE_CODE_DETAILS%`): an enforced authorization filter records the requests it
    /// refuses then, and, unless [`FilterContext::logs_authorization`], none it lets through.
    pub fn logs_refusals(&self) -> bool {
        self.logs_refusals
    }
}

/// Builds a filter instance from its config.
pub type FilterFactory = Arc<
    dyn Fn(&serde_json::Value, &FilterContext) -> Result<Arc<dyn L7Filter>, ConfigError>
        + Send
        + Sync,
>;

/// The filters a proxy can build, by name.
#[derive(Clone, Default)]
pub struct FilterRegistry {
    factories: BTreeMap<String, FilterFactory>,
}

impl std::fmt::Debug for FilterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl FilterRegistry {
    /// A registry with the built-in filters.
    pub fn with_builtins() -> Self {
        let mut registry = Self::default();
        registry
            .register(local_ratelimit::NAME, local_ratelimit::build)
            .register(global_ratelimit::NAME, global_ratelimit::build)
            .register(fault::NAME, fault::build)
            .register(rbac::NAME, rbac::build);
        #[cfg(feature = "lua")]
        registry.register(lua::NAME, |config, context| {
            Ok(Arc::new(lua::build(config, context)?) as Arc<dyn L7Filter>)
        });
        #[cfg(feature = "wasm")]
        registry.register(wasm::NAME, |config, context| {
            Ok(Arc::new(wasm::build(config, context)?) as Arc<dyn L7Filter>)
        });
        registry
    }

    /// Registers `factory` under `name`, replacing an earlier one.
    pub fn register<F>(&mut self, name: impl Into<String>, factory: F) -> &mut Self
    where
        F: Fn(&serde_json::Value, &FilterContext) -> Result<Arc<dyn L7Filter>, ConfigError>
            + Send
            + Sync
            + 'static,
    {
        self.factories.insert(name.into(), Arc::new(factory));
        self
    }

    /// Builds the filter `name` from `config`.
    pub fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
        context: &FilterContext,
    ) -> Result<Arc<dyn L7Filter>, ConfigError> {
        match self.factories.get(name) {
            Some(factory) => factory(config, context).map_err(|e| e.within("config")),
            None if PLANNED_BUILTINS.contains(&name) => Err(ConfigError::new(
                "name",
                format!("filter `{name}` is not available yet"),
            )),
            None => Err(ConfigError::new(
                "name",
                format!(
                    "unknown filter `{name}`; available: {:?}",
                    self.factories.keys().collect::<Vec<_>>()
                ),
            )),
        }
    }
}

/// The files built-in filter `spec` reads as it is built, each with the field of its config
/// that names it (`redis.password_file`) and the most bytes it may hold: an update reads them
/// ahead of building it. A filter registered under a built-in's name is taken to read what the
/// built-in reads.
pub(crate) fn files_read(spec: &FilterSpec) -> Vec<(&'static str, std::path::PathBuf, u64)> {
    let fields: &[(&str, u64)] = match spec.name.as_str() {
        global_ratelimit::NAME => global_ratelimit::FILES,
        #[cfg(feature = "wasm")]
        wasm::NAME => wasm::FILES,
        _ => &[],
    };
    fields
        .iter()
        .filter_map(|&(field, max_bytes)| {
            let value = field
                .split('.')
                .try_fold(&spec.config, |value, key| value.get(key))?;
            Some((field, std::path::PathBuf::from(value.as_str()?), max_bytes))
        })
        .collect()
}

/// The built-in filters the config contract names that this version does not have yet: naming
/// one is "not available yet", not "unknown" (an embedder may still register its own under the
/// name).
const PLANNED_BUILTINS: &[&str] = &[
    #[cfg(not(feature = "lua"))]
    "lua",
];

/// The longest `stat_name`.
const MAX_STAT_NAME_CHARS: usize = 64;

/// The `filter` label of each of a chain's `filters`: its name; with a `stat_name`,
/// `<name>.<stat_name>`; and for a filter without one whose name an earlier filter's series
/// already carry, `<name>.<i>`, `i` its place in the chain (an allow and a deny `rbac` loaded
/// before `stat_name` existed, and must load still). Two filters with one label would add up into
/// series nobody could tell apart: an error naming the second. Errors name the filter
/// (`filters[1].stat_name`).
pub(crate) fn series_labels(filters: &[FilterSpec]) -> Result<Vec<String>, ConfigError> {
    let mut labels: Vec<String> = Vec::with_capacity(filters.len());
    for (f, filter) in filters.iter().enumerate() {
        let at = format!("filters[{f}].stat_name");
        let label = match &filter.stat_name {
            None if labels.contains(&filter.name) => format!("{}.{f}", filter.name),
            None => filter.name.clone(),
            Some(stat_name) => {
                let valid = !stat_name.is_empty()
                    && stat_name.chars().count() <= MAX_STAT_NAME_CHARS
                    && stat_name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !valid {
                    return Err(ConfigError::new(
                        at,
                        format!(
                            "`{stat_name}` is not 1 to {MAX_STAT_NAME_CHARS} ASCII letters, digits, `_` and `-`"
                        ),
                    ));
                }
                format!("{}.{stat_name}", filter.name)
            }
        };
        if let Some(first) = labels.iter().position(|other| *other == label) {
            return Err(ConfigError::new(
                at,
                format!(
                    "would share the series of filters[{first}] (`filter=\"{label}\"`), adding up with them; give one of the two a `stat_name` of its own"
                ),
            ));
        }
        labels.push(label);
    }
    Ok(labels)
}

/// Checks and compiles a filter rule's `match` (errors name fields within it).
pub(crate) fn rule(spec: &MatchSpec) -> Result<RequestMatcher, ConfigError> {
    spec.validate()?;
    RequestMatcher::new(spec)
}

/// What rule conditions see of a request: its metadata with the routing keys earlier filters
/// set, as the route match sees it.
pub(crate) fn routing_view<'a>(ctx: &'a RequestContext<'_>) -> RoutingView<'a> {
    RoutingView {
        metadata: &ctx.request.metadata,
        keys: ctx.record.routing_keys(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_clients_are_made_once() {
        let shared = SharedClients::default();
        let a = shared.get_or_insert_with("redis", || 1u32);
        let b = shared.get_or_insert_with("redis", || 2u32);
        assert!(Arc::ptr_eq(&a, &b));
        let c = shared.get_or_insert_with("redis", || "other type");
        assert_eq!(*c, "other type");
    }

    #[test]
    fn planned_builtins_are_not_available_yet_and_others_unknown() {
        let registry = FilterRegistry::with_builtins();
        let context = FilterContext::new(
            "in".into(),
            crate::stats::Metrics::new().root(),
            SharedClients::default(),
        );
        let reason = |name: &str| match registry.build(name, &serde_json::Value::Null, &context) {
            Ok(_) => String::from("built"),
            Err(err) => err.reason,
        };
        for name in PLANNED_BUILTINS {
            assert_eq!(
                reason(name),
                format!("filter `{name}` is not available yet")
            );
        }
        assert!(reason("rbca").starts_with("unknown filter `rbca`"));
    }

    #[test]
    fn every_builtin_filter_field_is_in_the_reference() -> Result<(), String> {
        use crate::config::fields::{assert_documented, fields_of};
        assert_documented(&fields_of::<local_ratelimit::LocalRateLimitSpec>()?);
        assert_documented(&fields_of::<global_ratelimit::GlobalRateLimitSpec>()?);
        assert_documented(&fields_of::<fault::FaultSpec>()?);
        assert_documented(&fields_of::<rbac::RbacSpec>()?);
        #[cfg(feature = "lua")]
        assert_documented(&fields_of::<lua::LuaConfig>()?);
        #[cfg(feature = "wasm")]
        assert_documented(&fields_of::<wasm::WasmConfig>()?);
        Ok(())
    }

    /// A shared client lives as long as something holds it: one that no filter holds any more
    /// (a password rotated, an address changed) was kept for good, its connection open.
    #[test]
    fn a_shared_client_lives_while_something_holds_it() {
        let shared = SharedClients::default();
        let first = shared.get_or_insert_with("a", || 1u32);
        let again = shared.get_or_insert_with("a", || 2u32);
        assert!(Arc::ptr_eq(&first, &again), "shared while held");
        let weak = Arc::downgrade(&first);
        drop((first, again));
        assert_eq!(weak.strong_count(), 0, "dropped with its last holder");
        assert_eq!(*shared.get_or_insert_with("a", || 3u32), 3);
        for rotation in 0..100 {
            drop(shared.get_or_insert_with(&format!("key {rotation}"), || rotation));
        }
        let names = shared
            .clients
            .lock()
            .map_or(usize::MAX, |clients| clients.len());
        assert!(names <= 1, "{names} names kept");
    }
}
