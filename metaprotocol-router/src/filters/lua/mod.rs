//! The `lua` filter: a Lua 5.4 script with `on_request`, `on_response` and `on_complete`
//! functions, each given `msg`, a handle on the request (see `docs/writing-a-filter.md`).
//!
//! ```yaml
//! - name: lua
//!   config:
//!     source: |
//!       function on_request(msg)
//!         if msg:get("tenant") == nil then return msg:reply("unauthorized", "no tenant") end
//!         msg:set("x-lua", "1")
//!       end
//!     max_instructions: 1000000   # per hook run; past it the request gets an internal error
//!     max_memory_bytes: 16777216  # per Lua state
//!     counters: [ tenants_seen ]  # what `count(name)` may increment
//! ```
//!
//! The script is compiled once per config: a syntax error, or an error while its top level
//! runs, is a config error naming the script's line. The filter keeps one Lua state per worker
//! thread (`instances`, default: the runtime's workers), each guarded by its own lock that only
//! its thread normally takes, so workers never wait for each other. A hook that raises an error,
//! runs past its instruction budget or its memory is answered with an internal-error reply and
//! counted in `metaprotocol_script_errors_total{reason}`; the proxy goes on.
//!
//! Lua 5.4 rather than LuaJIT: LuaJIT's count hook does not fire inside JIT-compiled loops, so
//! a budget could not stop a runaway script, and the per-request costs measured for both
//! (`benches/benches/script_filters.rs`) were within a few percent for filter-sized scripts.

mod instance;
mod message;

use std::sync::Mutex;

use metaprotocol_core::{
    CompleteContext, FilterDecision, L7Filter, LocalReply, RequestContext, ResponseContext,
};
use serde::Deserialize;

use self::instance::{Counters, Instance, Limits, RunError};
use crate::config::ConfigError;
use crate::filters::FilterContext;
use crate::filters::script::{self, Exchange, Hook, ScriptStats};

/// The filter's registered name.
pub(crate) const NAME: &str = "lua";

/// The config of a `lua` filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LuaConfig {
    /// The script.
    source: String,
    /// Instructions one hook run may execute.
    #[serde(default = "default_max_instructions")]
    max_instructions: u64,
    /// Bytes one Lua state may hold.
    #[serde(default = "default_max_memory_bytes")]
    max_memory_bytes: usize,
    /// Lua states kept (default: one per worker thread).
    #[serde(default)]
    instances: Option<usize>,
    /// Counters the script may increment with `count(name)`.
    #[serde(default)]
    counters: Vec<String>,
}

/// The default `max_instructions`: a few milliseconds of Lua.
pub(crate) const DEFAULT_MAX_INSTRUCTIONS: u64 = 1_000_000;
/// The default `max_memory_bytes`.
pub(crate) const DEFAULT_MAX_MEMORY_BYTES: usize = 16 << 20;
/// The least `max_memory_bytes`: an empty Lua state needs about 30 KiB.
const MIN_MEMORY_BYTES: usize = 256 << 10;

fn default_max_instructions() -> u64 {
    DEFAULT_MAX_INSTRUCTIONS
}

fn default_max_memory_bytes() -> usize {
    DEFAULT_MAX_MEMORY_BYTES
}

/// See the [module docs](self).
pub(crate) struct LuaFilter {
    instances: Box<[Mutex<Instance>]>,
    /// Which hooks the script defines (those it does not cost nothing).
    defines: [bool; 3],
    stats: ScriptStats,
}

/// Builds a `lua` filter from its config.
pub(crate) fn build(
    config: &serde_json::Value,
    context: &FilterContext,
) -> Result<LuaFilter, ConfigError> {
    let config: LuaConfig = script::parse_config(config)?;
    if config.max_instructions == 0 {
        return Err(ConfigError::new(
            "max_instructions",
            "must be greater than 0",
        ));
    }
    if config.max_memory_bytes < MIN_MEMORY_BYTES {
        return Err(ConfigError::new(
            "max_memory_bytes",
            format!("must be at least {MIN_MEMORY_BYTES}"),
        ));
    }
    let instances = match config.instances {
        Some(n) if n == 0 || n > script::MAX_INSTANCES => {
            return Err(ConfigError::new(
                "instances",
                format!("must be from 1 to {}", script::MAX_INSTANCES),
            ));
        }
        Some(n) => n,
        None => script::default_instances(context),
    };
    let chunk = instance::compile(&config.source).map_err(|reason| {
        ConfigError::new("source", format!("the script does not compile: {reason}"))
    })?;
    let counters: Counters = config
        .counters
        .iter()
        .map(|name| {
            let counter = context.metrics().counter_with(
                "script_counter",
                "Counts a script made with count(name), by name",
                &[("counter", name)],
            );
            (name.clone(), counter)
        })
        .collect();
    let limits = Limits {
        instructions: config.max_instructions,
        memory: config.max_memory_bytes,
    };
    let instances = (0..instances)
        .map(|_| Instance::new(&chunk, limits, &counters).map(Mutex::new))
        .collect::<Result<Box<[_]>, _>>()
        .map_err(|(_, reason)| {
            ConfigError::new("source", format!("the script fails when loaded: {reason}"))
        })?;
    let first = instances
        .first()
        .and_then(|i| i.lock().ok())
        .map(|i| [Hook::Request, Hook::Response, Hook::Complete].map(|h| i.defines(h)))
        .unwrap_or_default();
    if first == [false; 3] {
        return Err(ConfigError::new(
            "source",
            "the script defines none of on_request, on_response, on_complete",
        ));
    }
    Ok(LuaFilter {
        instances,
        defines: first,
        stats: ScriptStats::new(context, NAME),
    })
}

impl LuaFilter {
    /// Runs `hook` on a free instance: `begin` fills its exchange from `ctx`, `end` applies
    /// what the script asked for to `ctx` (always, so that the exchange is emptied).
    fn run<C, R: Default>(
        &self,
        hook: Hook,
        ctx: &mut C,
        begin: impl FnOnce(&mut Exchange, &mut C),
        end: impl FnOnce(&mut Exchange, &mut C) -> R,
    ) -> (R, Result<(), RunError>) {
        script::with_slot(&self.instances, |instance| {
            let result = instance
                .exchange(|exchange| begin(exchange, ctx))
                .and_then(|()| instance.run(hook));
            match instance.exchange(|exchange| end(exchange, ctx)) {
                Ok(ended) => (ended, result),
                Err(err) => (R::default(), result.and(Err(err))),
            }
        })
    }

    fn defines(&self, hook: Hook) -> bool {
        self.defines[hook as usize]
    }

    fn decide(
        &self,
        hook: Hook,
        reply: Option<LocalReply>,
        result: Result<(), RunError>,
    ) -> FilterDecision {
        match (result, reply) {
            (Err((failure, detail)), _) => {
                FilterDecision::Reply(self.stats.failed(hook, failure, &detail))
            }
            (Ok(()), Some(reply)) => FilterDecision::Reply(reply),
            (Ok(()), None) => FilterDecision::Continue,
        }
    }
}

impl L7Filter for LuaFilter {
    fn name(&self) -> &str {
        NAME
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        if !self.defines(Hook::Request) {
            return FilterDecision::Continue;
        }
        let (reply, result) = self.run(
            Hook::Request,
            ctx,
            |exchange, ctx| exchange.begin_request(ctx),
            |exchange, ctx| exchange.end_request(ctx),
        );
        self.decide(Hook::Request, reply, result)
    }

    fn on_response(&self, ctx: &mut ResponseContext<'_>) -> FilterDecision {
        if !self.defines(Hook::Response) {
            return FilterDecision::Continue;
        }
        let (reply, result) = self.run(
            Hook::Response,
            ctx,
            |exchange, ctx| exchange.begin_response(ctx),
            |exchange, ctx| exchange.end_response(ctx),
        );
        self.decide(Hook::Response, reply, result)
    }

    fn on_complete(&self, ctx: &CompleteContext<'_>) {
        if !self.defines(Hook::Complete) {
            return;
        }
        let ((), result) = self.run(
            Hook::Complete,
            &mut (),
            |exchange, ()| exchange.begin_complete(ctx),
            |exchange, ()| exchange.end_complete(),
        );
        if let Err((failure, detail)) = result {
            self.stats.failed(Hook::Complete, failure, &detail);
        }
    }
}

#[cfg(test)]
mod tests;
