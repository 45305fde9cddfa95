//! The `wasm` filter: a WebAssembly module exporting `on_request`, `on_response` and
//! `on_complete` (each `() -> ()`), with the operations of [`abi`] as imports. The runtime is
//! wasmi, an interpreter (see `docs/writing-a-filter.md` for why, and for the ABI).
//!
//! ```yaml
//! - name: wasm
//!   config:
//!     path: /etc/metaprotocol/filter.wasm
//!     max_fuel: 10000000           # per hook run (about one unit per instruction)
//!     max_memory_bytes: 16777216   # the module's linear memory
//!     counters: [ tenants_seen ]   # what `count` may add to
//! ```
//!
//! The module is compiled once per config; one instance per worker thread runs it (as for
//! `lua`). A module that does not validate, lacks an import or a `memory` export, exports a hook
//! of the wrong type, or traps in its start function is a config error. A hook that traps, runs
//! out of fuel or memory is answered with an internal-error reply and counted in
//! `metaprotocol_script_errors_total{reason}`; its instance is then discarded for a fresh one
//! (counted in `metaprotocol_script_instances_replaced_total`), since the guest stopped midway
//! may have left its memory half-updated: a Rust module's shadow-stack pointer is not restored,
//! and about 1,200 panics of the example module broke its instance for every later request.

mod abi;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use wasmi::{
    Engine, Instance as WasmInstance, Linker, Memory, Module, Store, StoreLimits, TypedFunc,
};

use crate::config::ConfigError;
use crate::filters::FilterContext;
use crate::filters::script::{
    self, Exchange, Failure, Hook, RunError, ScriptCounters, ScriptFilter, ScriptInstance,
    ScriptStats,
};
use crate::stats::Counter;

/// The filter's registered name.
pub(crate) const NAME: &str = "wasm";

/// The fields of its config that name files it reads as it is built, with the most bytes each
/// may hold.
pub(crate) const FILES: &[(&str, u64)] = &[("path", MODULE_MAX_BYTES)];

/// The most bytes a module may hold: room for modules built with a language's whole runtime
/// (tens of MiB), so that a config naming the wrong file (a device that never ends) is refused
/// without reading it all.
const MODULE_MAX_BYTES: u64 = 64 << 20;

/// The config of a `wasm` filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WasmConfig {
    /// The module file (binary `.wasm`).
    path: PathBuf,
    /// Fuel one hook run may burn.
    #[serde(default = "default_max_fuel")]
    max_fuel: u64,
    /// Bytes the module's memory may grow to.
    #[serde(default = "script::default_max_memory_bytes")]
    max_memory_bytes: usize,
    /// Instances kept (default: one per worker thread).
    #[serde(default)]
    instances: Option<usize>,
    /// Counters the module may add to with `count`.
    #[serde(default)]
    counters: Vec<String>,
}

/// The default `max_fuel`.
pub(crate) const DEFAULT_MAX_FUEL: u64 = 10_000_000;

/// The size of a WebAssembly memory page, the least a module's memory can be.
const WASM_PAGE_BYTES: u64 = 64 << 10;

fn default_max_fuel() -> u64 {
    DEFAULT_MAX_FUEL
}

/// What the host functions of one instance work on.
pub(crate) struct Host {
    exchange: Exchange,
    counters: Arc<ScriptCounters>,
    limits: StoreLimits,
    /// The module's memory, found once at instantiation.
    memory: Option<Memory>,
}

/// One instance of the module with its store.
pub(crate) struct Instance {
    store: Store<Host>,
    hooks: [Option<TypedFunc<(), ()>>; 3],
    /// What the instance was made from, to make a fresh one after a failed run.
    compiled: Arc<Compiled>,
    /// True if a run failed and no fresh instance could be made then: this one must not run.
    tainted: bool,
}

/// Builds a `wasm` filter from its config.
pub(crate) fn build(
    config: &serde_json::Value,
    context: &FilterContext,
) -> Result<ScriptFilter<Instance>, ConfigError> {
    let config: WasmConfig = script::parse_config(config)?;
    script::check_budget("max_fuel", config.max_fuel, 1, script::MOST_STEPS_PER_RUN)?;
    script::check_budget(
        "max_memory_bytes",
        config.max_memory_bytes as u64,
        WASM_PAGE_BYTES,
        script::MOST_MEMORY_BYTES,
    )?;
    let instances = script::instance_count(config.instances, context)?;
    // Read ahead by the update building the filter, when it was (see `ReadAhead`).
    let bytes = metaprotocol_core::read_whole(&config.path, MODULE_MAX_BYTES).map_err(|err| {
        ConfigError::new(
            "path",
            format!("cannot read {}: {err}", config.path.display()),
        )
    })?;
    let module = Compiled::new(&bytes, &config, context)
        .map(Arc::new)
        .map_err(|err| ConfigError::new("path", format!("not a usable filter module: {err}")))?;
    let instances = (0..instances)
        .map(|_| module.instantiate().map(Mutex::new))
        .collect::<Result<Box<[_]>, _>>()
        .map_err(|reason| {
            ConfigError::new("path", format!("the module fails when loaded: {reason}"))
        })?;
    ScriptFilter::new(NAME, instances, ScriptStats::new(context, NAME)).ok_or_else(|| {
        ConfigError::new(
            "path",
            "the module exports none of on_request, on_response, on_complete",
        )
    })
}

/// A module compiled once, with what its instances share: the linker of the ABI, the counters,
/// the budgets.
pub(crate) struct Compiled {
    engine: Engine,
    module: Module,
    linker: Linker<Host>,
    counters: Arc<ScriptCounters>,
    /// Fuel per hook run.
    fuel: u64,
    /// Bytes an instance's memory may grow to.
    memory: usize,
    /// Instances discarded after a failed run.
    replaced: Counter,
}

impl Compiled {
    /// Validates and compiles `bytes`, to be run within `config`'s budgets.
    pub fn new(
        bytes: &[u8],
        config: &WasmConfig,
        context: &FilterContext,
    ) -> Result<Self, wasmi::Error> {
        let mut wasm = wasmi::Config::default();
        wasm.consume_fuel(true);
        let engine = Engine::new(&wasm);
        let module = Module::new(&engine, bytes)?;
        let linker = abi::linker(&engine)?;
        Ok(Self {
            engine,
            module,
            linker,
            counters: Arc::new(ScriptCounters::new(context, &config.counters)),
            fuel: config.max_fuel,
            memory: config.max_memory_bytes,
            replaced: script::replaced_counter(context),
        })
    }

    /// A new instance with its own memory.
    pub fn instantiate(self: &Arc<Self>) -> Result<Instance, String> {
        let limits = wasmi::StoreLimitsBuilder::new()
            .memory_size(self.memory)
            .trap_on_grow_failure(true)
            .build();
        let host = Host {
            exchange: Exchange::default(),
            counters: self.counters.clone(),
            limits,
            memory: None,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        store.set_fuel(self.fuel).map_err(|e| e.to_string())?;
        let instance: WasmInstance = self
            .linker
            .instantiate_and_start(&mut store, &self.module)
            .map_err(|e| e.to_string())?;
        let exported = instance
            .get_memory(&store, "memory")
            .ok_or("the module exports no `memory`")?;
        store.data_mut().memory = Some(exported);
        let mut hooks = [None, None, None];
        for hook in [Hook::Request, Hook::Response, Hook::Complete] {
            if instance.get_export(&store, hook.name()).is_some() {
                let function = instance
                    .get_typed_func::<(), ()>(&store, hook.name())
                    .map_err(|_| format!("{} must be a function of type () -> ()", hook.name()))?;
                hooks[hook as usize] = Some(function);
            }
        }
        Ok(Instance {
            store,
            hooks,
            compiled: self.clone(),
            tainted: false,
        })
    }
}

impl Instance {
    /// Replaces this instance with a fresh one of the same module; the hook's exchange (the
    /// request's state, the edits so far) goes on in the fresh one.
    fn replace(&mut self) -> Result<(), String> {
        let mut fresh = self.compiled.instantiate()?;
        std::mem::swap(
            &mut fresh.store.data_mut().exchange,
            &mut self.store.data_mut().exchange,
        );
        *self = fresh;
        self.compiled.replaced.inc();
        Ok(())
    }
}

impl ScriptInstance for Instance {
    fn defines(&self, hook: Hook) -> bool {
        self.hooks[hook as usize].is_some()
    }

    fn with_exchange<R>(&mut self, f: impl FnOnce(&mut Exchange) -> R) -> Result<R, RunError> {
        Ok(f(&mut self.store.data_mut().exchange))
    }

    fn run(&mut self, hook: Hook) -> Result<(), RunError> {
        if !self.defines(hook) {
            return Ok(());
        }
        if self.tainted {
            self.replace().map_err(|reason| {
                let detail = format!("cannot replace an instance that failed: {reason}");
                (Failure::Error, detail)
            })?;
        }
        let Some(function) = &self.hooks[hook as usize] else {
            return Ok(());
        };
        self.store
            .set_fuel(self.compiled.fuel)
            .map_err(|e| (Failure::Error, e.to_string()))?;
        let result = function.call(&mut self.store, ()).map_err(|err| {
            let failure = match err.kind() {
                _ if err.as_trap_code() == Some(wasmi::TrapCode::OutOfFuel) => Failure::Budget,
                wasmi::errors::ErrorKind::Memory(_) => Failure::Memory,
                _ if err.as_trap_code() == Some(wasmi::TrapCode::GrowthOperationLimited) => {
                    Failure::Memory
                }
                _ => Failure::Error,
            };
            (failure, err.to_string())
        });
        if result.is_err() {
            // A trap, or fuel or memory running out, stopped the guest midway: whatever it was
            // updating in its memory stays half-done in this instance, and a later run would
            // build on it. The failing request pays for the fresh instance; should making one
            // fail, the next run tries again rather than run on this one.
            self.tainted = self.replace().is_err();
        }
        result
    }
}

#[cfg(test)]
mod tests;
