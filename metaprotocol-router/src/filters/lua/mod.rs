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
//! runs past its instruction budget, its time or its memory is answered with an internal-error
//! reply and counted in `metaprotocol_script_errors_total{reason}`; the proxy goes on, and the
//! state is replaced with a fresh one (as a `wasm` instance is), since the run stopped midway.
//!
//! What `max_instructions` bounds: the instructions of the Lua VM, counted by a hook every
//! 1,000, and the pattern functions `string.find`, `match`, `gmatch` and `gsub` (as methods
//! too), which are charged before they run with the most positions Lua's backtracking matcher
//! may try on the subject, about `len^k / k!` for `k` repetitions (`*`, `+`, `-`, `%b`,
//! back-references), plus one for an unanchored start. The hook never fires inside a library
//! function: uncharged, `v:find(".-.-x")` on a 1,000-byte client value ran for 1.8 s, and on
//! a 1 MB one would run for decades on a worker thread. Anchor patterns (`^`) and use plain
//! `find(v, s, 1, true)` to keep the charge low on long values. `string.rep`, `upper`, `lower`
//! and `reverse` are charged a byte of what they make an instruction (uncharged, 1,000
//! `v:upper()` of a 4 MiB value, a few thousand instructions, took 11 s in a debug build).
//! `table.sort` is charged about `log2 n` instructions an element, and a sixteenth of one a byte
//! for strings (its comparisons run in C too, a comparator written in Lua is counted as well). Not
//! charged: operators and functions whose time is linear in the strings they touch but whose
//! cost is not known before they run (`..`, `==`, `sub`, `format`, `table.concat`): one of
//! those is bounded by `max_memory_bytes`, but a loop of them costs an instruction or so per
//! pass over a string up to that size (100,000 concatenations of a 2 MiB string ran for 10 s
//! within a million instructions). So a run also has a time budget, a microsecond per
//! instruction of `max_instructions` (1 s at the default), checked with each 1,000
//! instructions; past it the run fails as `reason="time"`.
//!
//! Lua 5.4 rather than LuaJIT: LuaJIT's count hook does not fire inside JIT-compiled loops, so
//! a budget could not stop a runaway script, and the per-request costs measured for both
//! (`benches/benches/script_filters.rs`) were within a few percent for filter-sized scripts.

mod instance;
mod message;

use std::sync::{Arc, Mutex};

use serde::Deserialize;

use self::instance::{Instance, Limits, Script};
use crate::config::ConfigError;
use crate::filters::FilterContext;
use crate::filters::script::{self, ScriptCounters, ScriptFilter, ScriptStats};

/// The filter's registered name.
pub(crate) const NAME: &str = "lua";

/// The config of a `lua` filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LuaConfig {
    /// The script.
    source: String,
    /// Instructions one hook run may execute.
    #[serde(default = "default_max_instructions")]
    max_instructions: u64,
    /// Bytes one Lua state may hold.
    #[serde(default = "script::default_max_memory_bytes")]
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
/// The least `max_memory_bytes`: an empty Lua state needs about 30 KiB.
const MIN_MEMORY_BYTES: u64 = 256 << 10;

fn default_max_instructions() -> u64 {
    DEFAULT_MAX_INSTRUCTIONS
}

/// Builds a `lua` filter from its config.
pub(crate) fn build(
    config: &serde_json::Value,
    context: &FilterContext,
) -> Result<ScriptFilter<Instance>, ConfigError> {
    let config: LuaConfig = script::parse_config(config)?;
    script::check_budget(
        "max_instructions",
        config.max_instructions,
        1,
        script::MOST_STEPS_PER_RUN,
    )?;
    script::check_budget(
        "max_memory_bytes",
        config.max_memory_bytes as u64,
        MIN_MEMORY_BYTES,
        script::MOST_MEMORY_BYTES,
    )?;
    let instances = script::instance_count(config.instances, context)?;
    let chunk = instance::compile(&config.source).map_err(|reason| {
        ConfigError::new("source", format!("the script does not compile: {reason}"))
    })?;
    let script = Arc::new(Script {
        chunk,
        limits: Limits {
            instructions: config.max_instructions,
            memory: config.max_memory_bytes,
        },
        counters: Arc::new(ScriptCounters::new(context, &config.counters)),
        replaced: script::replaced_counter(context),
    });
    let instances = (0..instances)
        .map(|_| Instance::new(&script).map(Mutex::new))
        .collect::<Result<Box<[_]>, _>>()
        .map_err(|(_, reason)| {
            ConfigError::new("source", format!("the script fails when loaded: {reason}"))
        })?;
    ScriptFilter::new(NAME, instances, ScriptStats::new(context, NAME)).ok_or_else(|| {
        ConfigError::new(
            "source",
            "the script defines none of on_request, on_response, on_complete",
        )
    })
}

#[cfg(test)]
mod tests;
