//! What the script filters (`lua`, `wasm`) share: the [`Exchange`] a script reads and edits in
//! one hook, the per-request state scripts keep ([`ScriptState`]), their error counters
//! ([`ScriptStats`]), and how their configs are read.
//!
//! A script never touches the engine's types: a hook copies what the script may read into an
//! [`Exchange`] (metadata entries are shared buffers, so the copy costs reference counts, not
//! bytes), runs the script, and applies what the script asked for (mutation entries, routing
//! keys, state, a local reply) when it returns. A script that fails or runs out of budget costs
//! its request an internal-error reply and a counter, never the connection or the proxy.

mod exchange;
mod filter;
mod state;
#[cfg(test)]
pub(crate) mod testing;

pub(crate) use exchange::{Exchange, Hook, OpError, status_name};
pub(crate) use filter::{RunError, ScriptFilter, ScriptInstance};
pub(crate) use state::{ScriptState, StateValue};

use metaprotocol_core::{LocalReply, LocalReplyKind};
use serde::de::DeserializeOwned;

use crate::config::ConfigError;
use crate::filters::FilterContext;
use crate::stats::Counter;

/// Why a script's hook failed, as the `reason` label of `metaprotocol_script_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The script raised an error (or a trap, in WebAssembly).
    Error,
    /// The script ran past its instruction (fuel) budget.
    Budget,
    /// The script ran past the time its instruction budget allows (Lua: operations such as `..`
    /// cost more than the instructions counted).
    Time,
    /// The script asked for more memory than its limit, or to have the host hold more than a
    /// hook may hand it (see [`exchange`]).
    Memory,
}

impl Failure {
    const ALL: [Failure; 4] = [
        Failure::Error,
        Failure::Budget,
        Failure::Time,
        Failure::Memory,
    ];

    fn name(self) -> &'static str {
        match self {
            Failure::Error => "error",
            Failure::Budget => "instruction_budget",
            Failure::Time => "time",
            Failure::Memory => "memory",
        }
    }
}

/// A script filter's metric handles, resolved when the filter is built.
#[derive(Debug)]
pub(crate) struct ScriptStats {
    failures: [Counter; Failure::ALL.len()],
    /// The filter's name, for the reply and the log.
    filter: String,
    /// Whether a failure was logged at `warn` already (later ones go to `debug`).
    warned: std::sync::atomic::AtomicBool,
}

impl ScriptStats {
    pub fn new(context: &FilterContext, filter: &str) -> Self {
        Self {
            failures: Failure::ALL.map(|failure| {
                context.metrics().counter_with(
                    "script_errors",
                    "Script filter hooks that failed (answered with an internal error), by reason",
                    &[("reason", failure.name())],
                )
            }),
            filter: filter.to_owned(),
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Counts and logs a failed hook, and returns the reply its request gets.
    pub fn failed(
        &self,
        hook: Hook,
        failure: Failure,
        detail: &dyn std::fmt::Display,
    ) -> LocalReply {
        self.failures[failure as usize].inc();
        // The first failure is a warning with the script's own message; a broken script fails
        // every request, so the rest go to debug and the counter.
        let first = !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed);
        if first {
            tracing::warn!(filter = %self.filter, hook = hook.name(), reason = failure.name(), "script failed: {detail} (further failures are logged at debug level)");
        } else {
            tracing::debug!(filter = %self.filter, hook = hook.name(), reason = failure.name(), "script failed: {detail}");
        }
        LocalReply::new(
            LocalReplyKind::Internal,
            format!(
                "metaprotocol-proxy: the request failed inside the proxy (filter `{}`)",
                self.filter
            ),
        )
    }
}

/// The counter of a filter's instances discarded after a failed hook for a fresh one
/// (`metaprotocol_script_instances_replaced_total`).
pub(crate) fn replaced_counter(context: &FilterContext) -> Counter {
    context.metrics().counter(
        "script_instances_replaced",
        "Script instances discarded after a failed hook, for a fresh one",
    )
}

/// The default `max_memory_bytes` of a script filter.
pub(crate) const DEFAULT_MAX_MEMORY_BYTES: usize = 16 << 20;

/// The most `max_memory_bytes` a script filter may set: each instance may hold that much, and a
/// filter keeps one instance per worker thread.
pub(crate) const MOST_MEMORY_BYTES: u64 = 1 << 30;

/// The most instructions (Lua) or fuel (WebAssembly) one hook run may be given: a run holds its
/// worker thread, and every connection on it, until it ends, and a billion steps is seconds of
/// interpretation. Without a bound, a few zeros too many let a looping script stall a worker for
/// hours.
pub(crate) const MOST_STEPS_PER_RUN: u64 = 1_000_000_000;

/// Checks that a budget from a filter's config lies within `least..=most`.
pub(crate) fn check_budget(
    field: &str,
    value: u64,
    least: u64,
    most: u64,
) -> Result<(), ConfigError> {
    if (least..=most).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be from {least} to {most}"),
        ))
    }
}

/// Serde's default of `max_memory_bytes`.
pub(crate) fn default_max_memory_bytes() -> usize {
    DEFAULT_MAX_MEMORY_BYTES
}

/// Reads a filter's `config` value as `T`; errors name the field within it.
pub(crate) fn parse_config<T: DeserializeOwned>(
    config: &serde_json::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(config).map_err(|err| {
        let field = err.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::new(field, err.into_inner().to_string())
    })
}

/// How many instances of a script a filter keeps: `requested` (the config's `instances`), by
/// default one per worker thread so that workers never wait for each other (the runtime's
/// workers, else the machine's cores).
pub(crate) fn instance_count(
    requested: Option<usize>,
    context: &FilterContext,
) -> Result<usize, ConfigError> {
    match requested {
        Some(n) if n == 0 || n > MAX_INSTANCES => Err(ConfigError::new(
            "instances",
            format!("must be from 1 to {MAX_INSTANCES}"),
        )),
        Some(n) => Ok(n),
        None => Ok(context
            .runtime()
            .map(|runtime| runtime.metrics().num_workers())
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
            .clamp(1, MAX_INSTANCES)),
    }
}

/// The most instances a filter may keep: each holds a whole script runtime.
const MAX_INSTANCES: usize = 256;

/// The counters a script may add to (`count(name)`), declared in its filter's `counters` and
/// exposed as `metaprotocol_script_counter_total{counter="<name>"}`.
#[derive(Debug)]
pub(crate) struct ScriptCounters(Box<[(String, Counter)]>);

impl ScriptCounters {
    /// Resolves a counter for each of `names`.
    pub fn new(context: &FilterContext, names: &[String]) -> Self {
        Self(
            names
                .iter()
                .map(|name| {
                    let counter = context.metrics().counter_with(
                        "script_counter",
                        "What scripts counted with count(name), by name",
                        &[("counter", name)],
                    );
                    (name.clone(), counter)
                })
                .collect(),
        )
    }

    /// Adds `n` to counter `name`; an undeclared name is the script's error.
    pub fn add(&self, name: &[u8], n: u64) -> Result<(), String> {
        match self
            .0
            .iter()
            .find(|(declared, _)| declared.as_bytes() == name)
        {
            Some((_, counter)) => {
                counter.inc_by(n);
                Ok(())
            }
            None => Err(format!(
                "unknown counter `{}`; declare it in the filter's `counters`",
                String::from_utf8_lossy(name)
            )),
        }
    }
}

/// Runs `f` on one of `slots`, preferring this thread's own slot and then any free one, so that
/// threads do not contend when there are as many slots as threads. Waits for this thread's slot
/// only when every slot is busy (a hook's run is bounded by its budget).
pub(crate) fn with_slot<S, R>(slots: &[std::sync::Mutex<S>], f: impl FnOnce(&mut S) -> R) -> R {
    let home = thread_index() % slots.len().max(1);
    for offset in 0..slots.len() {
        let index = (home + offset) % slots.len();
        match slots[index].try_lock() {
            Ok(mut slot) => return f(&mut slot),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                return f(&mut poisoned.into_inner());
            }
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }
    let mut slot = match slots[home].lock() {
        Ok(slot) => slot,
        Err(poisoned) => poisoned.into_inner(),
    };
    f(&mut slot)
}

/// A small number of this thread's own, given out in turn to threads as they first ask.
fn thread_index() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|index| *index)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn slots_are_shared_without_waiting_when_one_is_free() {
        let slots = [Mutex::new(0u32), Mutex::new(0u32)];
        // Hold this thread's slot: the call must take the other one rather than wait.
        let home = thread_index() % slots.len();
        let _held = slots[home].lock();
        with_slot(&slots, |n| *n += 1);
        assert_eq!(slots[(home + 1) % 2].lock().map(|n| *n).ok(), Some(1));
    }

    #[test]
    fn config_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Sample {
            source: String,
            limit: Option<u32>,
        }
        let err = parse_config::<Sample>(&serde_json::json!({"source": "x", "limit": "no"}))
            .err()
            .map(|e| e.field);
        assert_eq!(err.as_deref(), Some("limit"));
        let err = parse_config::<Sample>(&serde_json::json!({"limit": 1}))
            .err()
            .map(|e| e.reason);
        assert!(err.is_some_and(|r| r.contains("source")));
    }
}
