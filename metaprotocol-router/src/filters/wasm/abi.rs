//! The host side of the filter ABI: the functions a WebAssembly filter imports from module
//! `metaprotocol` (documented for filter authors in `docs/writing-a-filter.md`).
//!
//! Every value crosses as bytes in the guest's memory: the guest passes pointers and lengths,
//! and the host copies values into buffers the guest provides (so the guest needs no allocator
//! export, unlike proxy-wasm). A bad pointer, a map a hook does not allow, or an unknown reply
//! kind traps the guest: the request gets an internal error and the failure is counted.
//!
//! Every call is charged fuel ([`charge`]): [`CALL_FUEL`], plus one unit per [`BYTES_PER_FUEL`]
//! bytes it copies in or out. Uncharged, a call cost the guest the few instructions that make it,
//! so a loop of them did host work (copies, allocations, scans) far beyond what its fuel
//! bought. What the calls may make the host hold is bounded by the exchange (see
//! [`Exchange`]).
//!
//! | import | signature | what it does |
//! |---|---|---|
//! | `get(map, key, key_len, buf, buf_cap) -> len` | `(i32 i32 i32 i32 i32) -> i32` | copies the value of `key` in `map` to `buf` when it fits; returns its length, or -1 when absent |
//! | `set(map, key, key_len, value, value_len)` | `(i32 i32 i32 i32 i32)` | sets a header ([`MESSAGE`]), routing key ([`ROUTING`]) or state value ([`STATE`]) |
//! | `remove(map, key, key_len)` | `(i32 i32 i32)` | removes a header ([`MESSAGE`]) or state value ([`STATE`]) |
//! | `reply(kind, kind_len, message, message_len)` | `(i32 i32 i32 i32)` | answers with a local reply of `kind` (`unauthorized` ...) |
//! | `count(name, name_len, n)` | `(i32 i32 i64)` | adds `n` to a counter the config declares |
//! | `log(level, text, text_len)` | `(i32 i32 i32)` | a log line; levels as proxy-wasm's: 0 trace ... 5 critical |

use metaprotocol_core::ByteStr;
use wasmi::{Caller, Linker, Memory};

use super::Host;
use crate::filters::script::{Exchange, OpError, StateValue, status_name};

/// The import module's name.
pub(super) const MODULE: &str = "metaprotocol";

/// Map: the hook's message (the request, or the response in `on_response`): `get` reads its
/// metadata; `set`/`remove` edit the headers of the message the hook forwards.
pub(super) const MESSAGE: i32 = 0;
/// Map: the request's metadata (read-only).
pub(super) const REQUEST: i32 = 1;
/// Map: the request's state, kept from hook to hook and shared by the chain's script filters.
pub(super) const STATE: i32 = 2;
/// Map: the request's record (read-only): `listener`, `peer`, `route`, `cluster`, `endpoint`,
/// `attempts`, `flags`, `status`, `local_reply`, `duration_us`, `bytes_received`,
/// `bytes_sent`, `hook`.
pub(super) const RECORD: i32 = 3;
/// Map: routing keys (`set` only, in `on_request`).
pub(super) const ROUTING: i32 = 4;

/// Fuel a host call costs besides its bytes: the host's part of it (a lookup, or a scan of the
/// hook's edits so far and an allocation) is worth about a hundred of the guest's instructions.
pub(super) const CALL_FUEL: u64 = 100;

/// Bytes a host call copies per unit of fuel. wasmi charges a unit per 64 bytes that the
/// guest's own `memory.copy` moves; a host copy also allocates and checks UTF-8, so costs more.
pub(super) const BYTES_PER_FUEL: u64 = 8;

/// Charges the guest for a call that copies `bytes` (lengths as the guest passed them; a
/// negative one is refused when read): past its fuel, the call traps as an instruction would.
fn charge(caller: &mut Caller<'_, Host>, bytes: &[i32]) -> Result<(), wasmi::Error> {
    let bytes: u64 = bytes
        .iter()
        .map(|&len| u64::try_from(len).unwrap_or(0))
        .sum();
    let cost = CALL_FUEL + bytes / BYTES_PER_FUEL;
    match caller.get_fuel()?.checked_sub(cost) {
        Some(left) => caller.set_fuel(left),
        None => {
            caller.set_fuel(0)?;
            Err(wasmi::TrapCode::OutOfFuel.into())
        }
    }
}

/// A guest error: traps the guest with this text.
fn trap(text: impl std::fmt::Display) -> wasmi::Error {
    wasmi::Error::new(text.to_string())
}

fn op<T>(result: Result<T, OpError>) -> Result<T, wasmi::Error> {
    result.map_err(trap)
}

/// The guest's bytes at `ptr..ptr + len`.
fn bytes(memory: &[u8], ptr: i32, len: i32) -> Result<&[u8], wasmi::Error> {
    let start = usize::try_from(ptr).map_err(|_| trap("negative pointer"))?;
    let len = usize::try_from(len).map_err(|_| trap("negative length"))?;
    start
        .checked_add(len)
        .and_then(|end| memory.get(start..end))
        .ok_or_else(|| trap("pointer out of bounds"))
}

/// The guest's memory and the host state of a call.
fn split<'a>(
    caller: &'a mut Caller<'_, Host>,
) -> Result<(&'a mut [u8], &'a mut Host), wasmi::Error> {
    let memory: Memory = caller
        .data()
        .memory
        .ok_or_else(|| trap("no memory export"))?;
    Ok(memory.data_and_store_mut(caller))
}

/// The text of record field `name`.
fn record_field(exchange: &Exchange, name: &[u8]) -> Result<Option<String>, OpError> {
    let facts = exchange.facts()?;
    Ok(match name {
        b"listener" => facts.listener.as_deref().map(str::to_owned),
        b"peer" => facts.peer.map(|p| p.to_string()),
        b"route" => facts.route.as_deref().map(str::to_owned),
        b"cluster" => facts.cluster.as_deref().map(str::to_owned),
        b"endpoint" => facts.endpoint.map(|e| e.to_string()),
        b"attempts" => Some(facts.attempts.to_string()),
        b"flags" => Some(facts.outcome.flags.to_string()),
        b"status" => facts.outcome.status.map(|s| status_name(s).to_owned()),
        b"local_reply" => facts.outcome.local_reply.map(|k| k.name().to_owned()),
        b"duration_us" => facts.duration.map(|d| d.as_micros().to_string()),
        b"bytes_received" => Some(facts.bytes_received.to_string()),
        b"bytes_sent" => Some(facts.bytes_sent.to_string()),
        b"hook" => Some(exchange.hook()?.name().to_owned()),
        _ => None,
    })
}

/// Copies `value` to the guest's buffer when it fits: its length (or -1 for none), and the
/// bytes copied.
fn answer(
    memory: &mut [u8],
    value: Option<&[u8]>,
    buf: i32,
    cap: i32,
) -> Result<(i32, i32), wasmi::Error> {
    let Some(value) = value else {
        return Ok((-1, 0));
    };
    let len = i32::try_from(value.len()).map_err(|_| trap("value too large"))?;
    if len > cap {
        return Ok((len, 0));
    }
    let start = usize::try_from(buf).map_err(|_| trap("negative pointer"))?;
    memory
        .get_mut(start..start + value.len())
        .ok_or_else(|| trap("pointer out of bounds"))?
        .copy_from_slice(value);
    Ok((len, len))
}

fn get(caller: Caller<'_, Host>, args: (i32, i32, i32, i32, i32)) -> Result<i32, wasmi::Error> {
    let mut caller = caller;
    let (len, copied) = get_value(&mut caller, args)?;
    // Charged after the copy, whose size only the lookup tells (one copy is bounded by the
    // message's size).
    let key_len = args.2;
    charge(&mut caller, &[key_len, copied])?;
    Ok(len)
}

/// What `get` answers: the value's length (or -1) and the bytes copied to the guest.
fn get_value(
    caller: &mut Caller<'_, Host>,
    args: (i32, i32, i32, i32, i32),
) -> Result<(i32, i32), wasmi::Error> {
    let (map, key, key_len, buf, cap) = args;
    let (memory, host) = split(caller)?;
    let key = bytes(memory, key, key_len)?;
    let exchange = &host.exchange;
    let owned;
    let value: Option<&[u8]> = match map {
        MESSAGE => op(exchange.get(key))?.map(str::as_bytes),
        REQUEST => op(exchange.request_get(key))?.map(str::as_bytes),
        STATE => match op(exchange.state(key))? {
            None => None,
            Some(StateValue::Str(s)) => Some(s.as_bytes()),
            Some(other) => {
                owned = state_text(other);
                Some(owned.as_bytes())
            }
        },
        RECORD => {
            owned = op(record_field(exchange, key))?.unwrap_or_default();
            (!owned.is_empty()).then_some(owned.as_bytes())
        }
        other => return Err(trap(format!("get: unknown map {other}"))),
    };
    answer(memory, value, buf, cap)
}

/// A state value another filter stored, as text.
fn state_text(value: &StateValue) -> String {
    match value {
        StateValue::Str(s) => s.to_string(),
        StateValue::Int(i) => i.to_string(),
        StateValue::Num(n) => n.to_string(),
        StateValue::Bool(b) => b.to_string(),
    }
}

fn set(caller: Caller<'_, Host>, args: (i32, i32, i32, i32, i32)) -> Result<(), wasmi::Error> {
    let mut caller = caller;
    let (map, key, key_len, value, value_len) = args;
    charge(&mut caller, &[key_len, value_len])?;
    let (memory, host) = split(&mut caller)?;
    let key = bytes(memory, key, key_len)?;
    let value = bytes(memory, value, value_len)?;
    let exchange = &mut host.exchange;
    match map {
        MESSAGE => op(exchange.set(key, value)),
        ROUTING => op(exchange.set_routing_key(key, value)),
        STATE => {
            let text = std::str::from_utf8(value).map_err(|_| trap(OpError::NotUtf8))?;
            op(exchange.set_state(key, Some(StateValue::Str(ByteStr::copy_from_str(text)))))
        }
        other => Err(trap(format!("set: map {other} cannot be written"))),
    }
}

fn remove(caller: Caller<'_, Host>, args: (i32, i32, i32)) -> Result<(), wasmi::Error> {
    let mut caller = caller;
    let (map, key, key_len) = args;
    charge(&mut caller, &[key_len])?;
    let (memory, host) = split(&mut caller)?;
    let key = bytes(memory, key, key_len)?;
    match map {
        MESSAGE => op(host.exchange.remove(key)),
        STATE => op(host.exchange.set_state(key, None)),
        other => Err(trap(format!("remove: map {other} cannot be written"))),
    }
}

fn reply(caller: Caller<'_, Host>, args: (i32, i32, i32, i32)) -> Result<(), wasmi::Error> {
    let mut caller = caller;
    let (kind, kind_len, message, message_len) = args;
    charge(&mut caller, &[kind_len, message_len])?;
    let (memory, host) = split(&mut caller)?;
    let kind = bytes(memory, kind, kind_len)?;
    let message = bytes(memory, message, message_len)?;
    op(host.exchange.reply(kind, message))
}

fn count(caller: Caller<'_, Host>, args: (i32, i32, i64)) -> Result<(), wasmi::Error> {
    let mut caller = caller;
    let (name, name_len, n) = args;
    charge(&mut caller, &[name_len])?;
    let (memory, host) = split(&mut caller)?;
    let name = bytes(memory, name, name_len)?;
    let n = u64::try_from(n).map_err(|_| trap("count: n must not be negative"))?;
    host.counters.add(name, n).map_err(trap)
}

fn log(caller: Caller<'_, Host>, args: (i32, i32, i32)) -> Result<(), wasmi::Error> {
    let mut caller = caller;
    let (level, text, text_len) = args;
    charge(&mut caller, &[text_len])?;
    let (memory, _) = split(&mut caller)?;
    let text = String::from_utf8_lossy(bytes(memory, text, text_len)?);
    match level {
        0 => tracing::trace!(target: "metaprotocol_router::wasm", "{text}"),
        1 => tracing::debug!(target: "metaprotocol_router::wasm", "{text}"),
        2 => tracing::info!(target: "metaprotocol_router::wasm", "{text}"),
        3 => tracing::warn!(target: "metaprotocol_router::wasm", "{text}"),
        _ => tracing::error!(target: "metaprotocol_router::wasm", "{text}"),
    }
    Ok(())
}

/// A linker that provides every import of the ABI.
pub(super) fn linker(engine: &wasmi::Engine) -> Result<Linker<Host>, wasmi::Error> {
    let mut linker = Linker::new(engine);
    linker
        .func_wrap(
            MODULE,
            "get",
            |c: Caller<'_, Host>, a: i32, b: i32, d: i32, e: i32, f: i32| get(c, (a, b, d, e, f)),
        )?
        .func_wrap(
            MODULE,
            "set",
            |c: Caller<'_, Host>, a: i32, b: i32, d: i32, e: i32, f: i32| set(c, (a, b, d, e, f)),
        )?
        .func_wrap(
            MODULE,
            "remove",
            |c: Caller<'_, Host>, a: i32, b: i32, d: i32| remove(c, (a, b, d)),
        )?
        .func_wrap(
            MODULE,
            "reply",
            |c: Caller<'_, Host>, a: i32, b: i32, d: i32, e: i32| reply(c, (a, b, d, e)),
        )?
        .func_wrap(
            MODULE,
            "count",
            |c: Caller<'_, Host>, a: i32, b: i32, n: i64| count(c, (a, b, n)),
        )?
        .func_wrap(
            MODULE,
            "log",
            |c: Caller<'_, Host>, a: i32, b: i32, d: i32| log(c, (a, b, d)),
        )?;
    Ok(linker)
}
