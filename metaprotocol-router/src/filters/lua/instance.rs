//! One Lua state with the filter's script loaded: its hooks, its `msg` handle, its budget.
//!
//! The state is sandboxed: only the `table`, `string`, `math` and `utf8` libraries and the safe
//! base functions are there (no `io`, `os`, `require`, `load`, `dofile`), its memory is capped,
//! and a count hook stops any run that executes more instructions than the budget. The `string`
//! functions whose time grows with their strings are wrapped to charge the budget before they
//! run (see [`string_cost`]): the pattern functions (`find`, `match`, `gmatch`, `gsub`) with the
//! most positions Lua's backtracking matcher may try, `rep`, `upper`, `lower` and `reverse` with
//! the bytes they make. The count hook does not fire inside them, and one call can run for
//! years. `table.sort` is charged its comparisons (see [`sort_cost`]).
//!
//! What stays uncharged (the `..` and `==` operators, `sub`, `format`, `table.concat`) costs
//! time with the length of its strings, not known before it runs: a string built by `..` in a
//! loop copies itself whole at each step. So a run also has a time budget, a microsecond per
//! instruction of its instruction budget (a second at the default), which the count hook checks
//! at each tick; an honest script spends a hundredth of it.
//!
//! Finalizers (`__gc`), which Lua runs with hooks off, cannot be set.
//!
//! A spent budget cannot be caught: the `pcall` scripts get raises it again rather than return it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlua::{
    AnyUserData, Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value, VmState,
};

use super::message::LuaMessage;
use crate::filters::script::{Exchange, Failure, Hook, RunError, ScriptCounters, ScriptInstance};
use crate::stats::Counter;

/// The count hook runs every this many instructions, charging them to the budget at once.
pub(super) const INSTRUCTIONS_PER_TICK: u64 = 1000;

/// When the current run must end, checked by the count hook at each tick.
#[derive(Debug)]
struct Deadline {
    /// What `at` counts from.
    epoch: Instant,
    /// The current run's end, in nanoseconds since `epoch`.
    at: AtomicU64,
    /// Set once a tick of the current run found the deadline passed.
    passed: AtomicBool,
}

impl Deadline {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            at: AtomicU64::new(u64::MAX),
            passed: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts a run that may take `budget`.
    fn start(&self, budget: Duration) {
        let budget = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        self.at
            .store(self.now().saturating_add(budget), Ordering::Relaxed);
        self.passed.store(false, Ordering::Relaxed);
    }

    /// True once the current run is past its end (noted for [`Deadline::was_passed`]).
    fn check(&self) -> bool {
        let passed = self.now() > self.at.load(Ordering::Relaxed);
        if passed {
            self.passed.store(true, Ordering::Relaxed);
        }
        passed
    }

    /// True if a tick of the current run found its end passed.
    fn was_passed(&self) -> bool {
        self.passed.load(Ordering::Relaxed)
    }
}

/// The limits every run of a state is held to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Instructions one hook (or the script's top level, at load) may execute.
    pub instructions: u64,
    /// Bytes the state may hold.
    pub memory: usize,
}

/// What every state of a filter is made from, kept to make a fresh state after a failed run.
pub(super) struct Script {
    /// The script compiled once (see [`compile`]).
    pub chunk: Vec<u8>,
    /// The limits every run is held to.
    pub limits: Limits,
    /// What `count` adds to.
    pub counters: Arc<ScriptCounters>,
    /// States discarded after a failed run.
    pub replaced: Counter,
}

/// See the [module docs](self).
pub(crate) struct Instance {
    lua: Lua,
    /// What the state was made from, to make a fresh one after a failed run.
    script: Arc<Script>,
    msg: AnyUserData,
    hooks: [Option<Function>; 3],
    /// Instructions charged in the current run: the count hook's, and the pattern functions'.
    used: Arc<AtomicU64>,
    /// The instructions a run may be charged: the limit, rounded up to whole ticks.
    budget: u64,
    /// The current run's end by the clock.
    deadline: Arc<Deadline>,
    /// The time a run may take.
    time_budget: Duration,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").finish_non_exhaustive()
    }
}

impl Instance {
    /// A state running `script`. Errors from the script's top level (including a run past the
    /// budget) are returned.
    pub(super) fn new(script: &Arc<Script>) -> Result<Self, RunError> {
        let (limits, counters) = (script.limits, &script.counters);
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
        let used = Arc::new(AtomicU64::new(0));
        let budget = limits
            .instructions
            .div_ceil(INSTRUCTIONS_PER_TICK)
            .max(1)
            .saturating_mul(INSTRUCTIONS_PER_TICK);
        charge_string_functions(&lua, &used, budget).map_err(setup)?;
        charge_table_sort(&lua, &used, budget).map_err(setup)?;
        globals
            .raw_set("log", log_function(&lua, &used, budget).map_err(setup)?)
            .map_err(setup)?;
        let deadline = Arc::new(Deadline::new());
        rethrow_spent_budgets(&lua, &used, budget, &deadline).map_err(setup)?;
        refuse_finalizers(&lua).map_err(setup)?;
        let hook_used = used.clone();
        let hook_deadline = deadline.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(INSTRUCTIONS_PER_TICK as u32),
            move |_, _| {
                // Past a budget every tick fails again, and `pcall` lets the error through
                // (see `rethrow_spent_budgets`), so no script catches it for good.
                if hook_used.fetch_add(INSTRUCTIONS_PER_TICK, Ordering::Relaxed) >= budget {
                    Err(mlua::Error::runtime("instruction budget exceeded"))
                } else if hook_deadline.check() {
                    Err(mlua::Error::runtime("time budget exceeded"))
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
            script: script.clone(),
            msg,
            used,
            budget,
            deadline,
            // A microsecond an instruction: about a hundred times what one takes.
            time_budget: Duration::from_micros(budget),
        };
        let main = instance
            .lua
            .load(&script.chunk)
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
        self.used.store(0, Ordering::Relaxed);
        self.deadline.start(self.time_budget);
        function.call::<()>(args).map_err(|err| {
            let failure = if self.used.load(Ordering::Relaxed) > self.budget {
                Failure::Budget
            } else if self.deadline.was_passed() {
                Failure::Time
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
        let result = match &self.hooks[hook as usize] {
            Some(function) => self.run_function(function, &self.msg),
            None => Ok(()),
        };
        if result.is_err() {
            self.replace();
        }
        result
    }
}

impl Instance {
    /// Replaces this state with a fresh one of the same script, the hook's exchange going on in
    /// it. A run stopped midway (by a budget, at any instruction, or an error) leaves the
    /// script's globals and upvalues as they were then, half-updated, and every later request
    /// on this state would see them. Should the fresh state fail to load (its top level ran
    /// fine at config time), this one goes on.
    fn replace(&mut self) {
        let Ok(mut fresh) = Instance::new(&self.script) else {
            return;
        };
        let exchange = self.with_exchange(std::mem::take);
        if let Ok(exchange) = exchange
            && fresh.with_exchange(|into| *into = exchange).is_ok()
        {
            *self = fresh;
            self.script.replaced.inc();
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

/// Replaces the `string` functions whose time grows with the strings they read or make (which
/// strings' methods are too) with functions that charge [`string_cost`] to the run's budget,
/// and fail past it, before calling the library's: the count hook never fires inside them.
fn charge_string_functions(lua: &Lua, used: &Arc<AtomicU64>, budget: u64) -> mlua::Result<()> {
    let string: mlua::Table = lua.globals().raw_get("string")?;
    for name in CHARGED {
        let library: Function = string.raw_get(name)?;
        let used = used.clone();
        let charged = lua.create_function(move |_, args: MultiValue| {
            charge(&used, budget, string_cost(name, &args))?;
            library.call::<MultiValue>(args)
        })?;
        string.raw_set(name, charged)?;
    }
    Ok(())
}

/// Replaces `table.sort` with one that charges [`sort_cost`] to the run's budget, and fails past
/// it, before calling the library's: its comparisons run in C, where the count hook never fires
/// (only a comparator written in Lua is counted), so a loop of sorts of long strings used to run
/// into the time budget within a few thousand instructions.
fn charge_table_sort(lua: &Lua, used: &Arc<AtomicU64>, budget: u64) -> mlua::Result<()> {
    let table: mlua::Table = lua.globals().raw_get("table")?;
    let library: Function = table.raw_get("sort")?;
    let used = used.clone();
    let charged = lua.create_function(move |_, args: MultiValue| {
        if let Some(Value::Table(list)) = args.front() {
            charge(&used, budget, sort_cost(list, budget))?;
        }
        library.call::<MultiValue>(args)
    })?;
    table.raw_set("sort", charged)
}

/// What sorting `list` may cost, in instructions: each of its `n` elements takes part in about
/// `log2 n` comparisons, and comparing strings reads them (a byte costs about a sixteenth of an
/// instruction's time). Anything over `budget` is not worked out to the end.
fn sort_cost(list: &mlua::Table, budget: u64) -> u64 {
    let n = list.raw_len() as u64;
    let depth = u64::from(n.max(1).ilog2()) + 1;
    let mut cost = depth.saturating_mul(n);
    for i in 1..=n {
        if cost > budget {
            break;
        }
        if let Ok(Value::String(s)) = list.raw_get::<Value>(i) {
            cost = cost.saturating_add(depth.saturating_mul(s.as_bytes().len() as u64 / 16));
        }
    }
    cost
}

/// Charges `cost` instructions to the run, failing if that takes it past `budget`.
fn charge(used: &AtomicU64, budget: u64, cost: u64) -> mlua::Result<()> {
    // Bounded so that the count cannot wrap; anything past the budget fails alike.
    let cost = cost.min(budget.saturating_add(1));
    if used.fetch_add(cost, Ordering::Relaxed).saturating_add(cost) > budget {
        return Err(mlua::Error::runtime("instruction budget exceeded"));
    }
    Ok(())
}

/// What a `pcall` or `xpcall` costs besides the function it calls, in instructions: it crosses
/// from Lua to Rust and back, which takes as long as about a hundred instructions (uncharged, a
/// loop of empty `pcall`s ran into the time budget before the instruction budget).
const PROTECTED_CALL_COST: u64 = 100;

/// Replaces `pcall` with one that lets the error of a spent budget through: the count hook's
/// error is an ordinary Lua error, and in `while true do pcall(f) end` with a looping `f` every
/// tick falls inside `f`, so the library's `pcall` caught each one and the run never ended.
///
/// `xpcall` becomes that `pcall` and then its handler, called on the error once the failed call
/// has returned. The library's ran its handler where the error was raised, which for the count
/// hook's error is inside the hook, where Lua counts no instructions: a looping handler ran
/// forever.
fn rethrow_spent_budgets(
    lua: &Lua,
    used: &Arc<AtomicU64>,
    budget: u64,
    deadline: &Arc<Deadline>,
) -> mlua::Result<()> {
    let globals = lua.globals();
    let library: Function = globals.raw_get("pcall")?;
    let (used, deadline) = (used.clone(), deadline.clone());
    let protected = Arc::new(move |args: MultiValue| {
        charge(&used, budget, PROTECTED_CALL_COST)?;
        let results = library.call::<MultiValue>(args)?;
        if used.load(Ordering::Relaxed) > budget {
            return Err(mlua::Error::runtime("instruction budget exceeded"));
        }
        if deadline.was_passed() {
            return Err(mlua::Error::runtime("time budget exceeded"));
        }
        Ok(results)
    });
    let pcall = protected.clone();
    globals.raw_set(
        "pcall",
        lua.create_function(move |_, args: MultiValue| pcall(args))?,
    )?;
    let xpcall = lua.create_function(
        move |_, (function, handler, mut args): (Value, Function, MultiValue)| {
            args.push_front(function);
            let results = protected(args)?;
            if !matches!(results.front(), Some(Value::Boolean(false))) {
                return Ok(results);
            }
            let error = results.get(1).cloned().unwrap_or(Value::Nil);
            let handled = protected(MultiValue::from_iter([Value::Function(handler), error]))?;
            // As the library's: false, and what the handler made of the error (or its own).
            let message = handled.get(1).cloned().unwrap_or(Value::Nil);
            Ok(MultiValue::from_iter([Value::Boolean(false), message]))
        },
    )?;
    globals.raw_set("xpcall", xpcall)
}

/// Replaces `setmetatable` with one that refuses a metatable with a `__gc` field: Lua runs
/// finalizers with hooks off, so no budget bounds them, and runs them when it collects garbage,
/// in any later hook or when the state is dropped (a config reload). A looping finalizer held
/// its thread forever.
fn refuse_finalizers(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    let library: Function = globals.raw_get("setmetatable")?;
    let setmetatable =
        lua.create_function(move |_, (table, metatable): (Value, Option<mlua::Table>)| {
            // Lua marks an object for finalization only if its metatable has `__gc` when set,
            // so a field added later makes no finalizer.
            if let Some(metatable) = &metatable
                && !metatable.raw_get::<Value>("__gc")?.is_nil()
            {
                return Err(mlua::Error::runtime(
                    "__gc metamethods are not available: finalizers would run outside the budgets",
                ));
            }
            library.call::<Value>((table, metatable))
        })?;
    globals.raw_set("setmetatable", setmetatable)
}

/// The `string` functions charged by [`string_cost`].
const CHARGED: [&str; 8] = [
    "find", "match", "gmatch", "gsub", "rep", "upper", "lower", "reverse",
];

/// What `string.<name>(args)` may cost, in instructions: for the pattern functions, the most
/// positions the matcher may try ([`match_cost`]); for the others, a byte of the string they
/// make, each about what an instruction takes.
fn string_cost(name: &str, args: &MultiValue) -> u64 {
    let len = |i: usize| match args.get(i) {
        Some(Value::String(s)) => s.as_bytes().len(),
        // A number is used as its text, at most a few dozen bytes.
        _ => 64,
    };
    let pattern_cost = |anchors: bool| match args.get(1) {
        Some(Value::String(pattern)) => match_cost(len(0), &pattern.as_bytes(), anchors),
        _ => len(0) as u64,
    };
    match name {
        "find"
            if args
                .get(3)
                .is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false))) =>
        {
            (len(0) + len(1)) as u64
        }
        // `gmatch` matches from every position however its pattern starts.
        "gmatch" => pattern_cost(false),
        "find" | "match" | "gsub" => pattern_cost(true),
        "rep" => {
            let times = match args.get(1) {
                Some(Value::Integer(n)) => u64::try_from(*n).unwrap_or(0),
                Some(Value::Number(n)) if *n > 0.0 => *n as u64,
                _ => 0,
            };
            let separator = if args.get(2).is_some() { len(2) } else { 0 };
            times.saturating_mul((len(0) + separator) as u64)
        }
        _ => len(0) as u64,
    }
}

/// What a pattern function may cost on a subject of `len` bytes, in instructions: the most
/// positions Lua's backtracking matcher may try, one instruction each. Each item that can
/// match any length (`*`, `+` and `-` repetitions, `%b`, a back-reference `%1`) tries every
/// end from where it starts, and an unanchored match every start, so the positions tried are
/// at most the ways of placing those `k` ends in order, `C(len + k, k)` (about
/// `len^k / k!`), doubled by each optional `?` item; each position takes a few steps of the
/// matcher, about what an instruction takes. A character that would make an item so is
/// counted wherever it is (in a set, after `%b`), which only errs upwards. `anchors`: whether
/// a leading `^` anchors the pattern (not for `gmatch`).
///
/// Measured (debug build): `string.find(v, ".-.-x")` on 1,000 bytes takes 1.8 s and costs
/// 1.7e8; on a 1 MB value it would run for decades.
pub(super) fn match_cost(len: usize, pattern: &[u8], anchors: bool) -> u64 {
    let mut ends = u32::from(!anchors || pattern.first() != Some(&b'^'));
    let mut optional = 0u32;
    let mut items = pattern.iter();
    while let Some(&c) = items.next() {
        match c {
            b'%' => {
                if let Some(b'b' | b'1'..=b'9') = items.next() {
                    ends += 1;
                }
            }
            b'*' | b'+' | b'-' => ends += 1,
            b'?' => optional += 1,
            _ => {}
        }
    }
    // C(len + ends, ends), as a float: past 2^64 it is over any budget anyway.
    let len = len as f64;
    let positions = (1..=ends).fold(1.0f64, |c, i| c * (len + f64::from(i)) / f64::from(i));
    let cost = positions * 2f64.powi(optional.min(64) as i32) + len;
    // `as` saturates: an infinite or huge cost is u64::MAX.
    cost as u64
}

/// `count(name [, n])`: adds to a counter the config declares.
fn count_function(lua: &Lua, counters: Arc<ScriptCounters>) -> mlua::Result<Function> {
    lua.create_function(move |_, (name, n): (mlua::LuaString, Option<u64>)| {
        counters
            .add(&name.as_bytes(), n.unwrap_or(1))
            .map_err(mlua::Error::runtime)
    })
}

/// `log(level, text)`: a line in the proxy's log (`debug`, `info`, `warn`, `error`), charged an
/// instruction a byte of `text`: uncharged, a loop logging a long string wrote gigabytes within
/// its budget, each line also copied outside the state's memory limit.
fn log_function(lua: &Lua, used: &Arc<AtomicU64>, budget: u64) -> mlua::Result<Function> {
    let used = used.clone();
    lua.create_function(
        move |_, (level, text): (mlua::LuaString, mlua::LuaString)| {
            charge(&used, budget, text.as_bytes().len() as u64)?;
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
        },
    )
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
