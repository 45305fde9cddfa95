//! Filter factories: how a listener's `filters: [{ name, config }]` become [`L7Filter`]s.
//!
//! Embedders register their own factories in a [`FilterRegistry`]; built-in filters register
//! themselves in [`FilterRegistry::with_builtins`].

use std::collections::BTreeMap;
use std::sync::Arc;

use metaprotocol_core::L7Filter;

use crate::config::ConfigError;

/// Builds a filter instance from its config. Called once per listener per config, never per
/// request.
pub type FilterFactory =
    Arc<dyn Fn(&serde_json::Value) -> Result<Arc<dyn L7Filter>, ConfigError> + Send + Sync>;

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
        Self::default()
    }

    /// Registers `factory` under `name`, replacing an earlier one.
    pub fn register<F>(&mut self, name: impl Into<String>, factory: F) -> &mut Self
    where
        F: Fn(&serde_json::Value) -> Result<Arc<dyn L7Filter>, ConfigError> + Send + Sync + 'static,
    {
        self.factories.insert(name.into(), Arc::new(factory));
        self
    }

    /// Builds the filter `name` from `config`.
    pub fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn L7Filter>, ConfigError> {
        match self.factories.get(name) {
            Some(factory) => factory(config).map_err(|e| e.within("config")),
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
