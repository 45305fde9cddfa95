//! One Lua state with the filter's script loaded: its hooks, its `msg` handle, its budget.
//!
//! The state is sandboxed: only the `table`, `string`, `math` and `utf8` libraries and the safe
//! base functions are there (no `io`, `os`, `require`, `load`, `dofile`), its memory is capped,
//! and a count hook stops any run that executes more instructions than the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mlua::{AnyUserData, Function, HookTriggers, Lua, LuaOptions, StdLib, VmState};

use super::message::LuaMessage;
use crate::filters::script::{Exchange, Failure, Hook, RunError, ScriptCounters, ScriptInstance};

/// The count hook runs every this many instructions; the budget is counted in these steps.
pub(super) const INSTRUCTIONS_PER_TICK: u64 = 1000;

/// The limits every run of a state is held to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Instructions one hook (or the script's top level, at load) may execute.
    pub instructions: u64,
    /// Bytes the state may hold.
    pub memory: usize,
}

/// See the [module docs](self).
pub(crate) struct Instance {
    lua: Lua,
    msg: AnyUserData,
    hooks: [Option<Function>; 3],
    /// Ticks of the count hook in the current run.
    ticks: Arc<AtomicU64>,
    budget_ticks: u64,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").finish_non_exhaustive()
    }
}

impl Instance {
    /// A state running `chunk` (the script compiled once, see [`compile`]) under `limits`.
    /// Errors from the script's top level (including a run past the budget) are returned.
    pub(super) fn new(
        chunk: &[u8],
        limits: Limits,
        counters: &Arc<ScriptCounters>,
    ) -> Result<Self, RunError> {
        let setup = |err: mlua::Error| (Failure::Error, describe(&err));
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8,
            LuaOptions::new(),
        )
        .map_err(setup)?;
        lua.set_memory_limit(limits.memory).map_err(setup)?;
        let globals = lua.globals();
        for unsafe_global in ["dofile", "loadfile", "load", "print"] {
            globals.raw_remove(unsafe_global).map_err(setup)?;
        }
        globals
            .raw_set(
                "count",
                count_function(&lua, counters.clone()).map_err(setup)?,
            )
            .map_err(setup)?;
        globals
            .raw_set("log", log_function(&lua).map_err(setup)?)
            .map_err(setup)?;
        let ticks = Arc::new(AtomicU64::new(0));
        let budget_ticks = limits.instructions.div_ceil(INSTRUCTIONS_PER_TICK).max(1);
        let used = ticks.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(INSTRUCTIONS_PER_TICK as u32),
            move |_, _| {
                // Past the budget every tick fails again, so a script that catches the error
                // with pcall is stopped at its next tick outside the pcall.
                if used.fetch_add(1, Ordering::Relaxed) >= budget_ticks {
                    Err(mlua::Error::runtime("instruction budget exceeded"))
                } else {
                    Ok(VmState::Continue)
                }
            },
        )
        .map_err(setup)?;
        let msg = lua.create_userdata(LuaMessage::default()).map_err(setup)?;
        let mut instance = Self {
            hooks: [None, None, None],
            lua,
            msg,
            ticks,
            budget_ticks,
        };
        let main = instance
            .lua
            .load(chunk)
            .set_name(CHUNK_NAME)
            .into_function()
            .map_err(setup)?;
        instance.run_function(&main, ())?;
        for hook in [Hook::Request, Hook::Response, Hook::Complete] {
            let value: mlua::Value = globals.raw_get(hook.name()).map_err(setup)?;
            instance.hooks[hook as usize] = match value {
                mlua::Value::Nil => None,
                mlua::Value::Function(function) => Some(function),
                other => {
                    return Err((
                        Failure::Error,
                        format!(
                            "{} must be a function, not {}",
                            hook.name(),
                            other.type_name()
                        ),
                    ));
                }
            };
        }
        Ok(instance)
    }

    fn run_function(
        &self,
        function: &Function,
        args: impl mlua::IntoLuaMulti,
    ) -> Result<(), RunError> {
        self.ticks.store(0, Ordering::Relaxed);
        function.call::<()>(args).map_err(|err| {
            let failure = if self.ticks.load(Ordering::Relaxed) > self.budget_ticks {
                Failure::Budget
            } else if is_memory_error(&err) {
                Failure::Memory
            } else {
                Failure::Error
            };
            (failure, describe(&err))
        })
    }
}

impl ScriptInstance for Instance {
    fn defines(&self, hook: Hook) -> bool {
        self.hooks[hook as usize].is_some()
    }

    fn with_exchange<R>(&mut self, f: impl FnOnce(&mut Exchange) -> R) -> Result<R, RunError> {
        self.msg
            .borrow_mut_scoped::<LuaMessage, R>(|msg| f(&mut msg.0))
            .map_err(|err| (Failure::Error, describe(&err)))
    }

    fn run(&mut self, hook: Hook) -> Result<(), RunError> {
        match &self.hooks[hook as usize] {
            Some(function) => self.run_function(function, &self.msg),
            None => Ok(()),
        }
    }
}

/// The name the script's chunk has in messages (`source:3: ...`, rewritten to `line 3: ...`).
const CHUNK_NAME: &str = "=source";

/// Compiles `source` once: the bytecode every state loads, or the syntax error with its line.
pub(super) fn compile(source: &str) -> Result<Vec<u8>, String> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::new()).map_err(|e| describe(&e))?;
    let function = lua
        .load(source)
        .set_name(CHUNK_NAME)
        .into_function()
        .map_err(|e| describe(&e))?;
    // Dumping fails only for functions written in C; this one is the script's chunk.
    Ok(function.dump(false))
}

/// `count(name [, n])`: adds to a counter the config declares.
fn count_function(lua: &Lua, counters: Arc<ScriptCounters>) -> mlua::Result<Function> {
    lua.create_function(move |_, (name, n): (mlua::LuaString, Option<u64>)| {
        counters
            .add(&name.as_bytes(), n.unwrap_or(1))
            .map_err(mlua::Error::runtime)
    })
}

/// `log(level, text)`: a line in the proxy's log (`debug`, `info`, `warn`, `error`).
fn log_function(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|_, (level, text): (mlua::LuaString, mlua::LuaString)| {
        let text = text.to_string_lossy();
        match &*level.as_bytes() {
            b"debug" => tracing::debug!(target: "metaprotocol_router::lua", "{text}"),
            b"info" => tracing::info!(target: "metaprotocol_router::lua", "{text}"),
            b"warn" => tracing::warn!(target: "metaprotocol_router::lua", "{text}"),
            b"error" => tracing::error!(target: "metaprotocol_router::lua", "{text}"),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "unknown log level `{}`; use debug, info, warn or error",
                    String::from_utf8_lossy(other)
                )));
            }
        }
        Ok(())
    })
}

fn is_memory_error(err: &mlua::Error) -> bool {
    match err {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// An error as one line that names the script's line: `line 3: attempt to index a nil value`.
pub(super) fn describe(err: &mlua::Error) -> String {
    let text = match err {
        mlua::Error::CallbackError { cause, traceback } => {
            // The script's own position is in the traceback's first script frame.
            let at = traceback
                .lines()
                .find_map(|line| line.trim().strip_prefix("source:"))
                .and_then(|rest| rest.split(':').next())
                .map(|line| format!("line {line}: "));
            return format!("{}{}", at.unwrap_or_default(), describe(cause));
        }
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(message) | mlua::Error::MemoryError(message) => message.clone(),
        mlua::Error::ExternalError(err) => err.to_string(),
        other => other.to_string(),
    };
    let first = text.lines().next().unwrap_or_default();
    match first.strip_prefix("source:") {
        Some(rest) => format!("line {rest}"),
        None => first.to_owned(),
    }
}
