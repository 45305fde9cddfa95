//! `msg`: the handle a Lua hook gets, over the instance's [`Exchange`].
//!
//! One handle lives in each Lua state and is passed to every hook, so a call creates no
//! userdata. Its methods are the script's whole view of the request; each checks that the hook
//! running allows it.

use metaprotocol_core::ByteStr;
use mlua::{Lua, UserData, UserDataMethods, Value};

use crate::filters::script::{Exchange, OpError, StateValue, status_name};

/// The Rust side of `msg`.
#[derive(Debug, Default)]
pub(super) struct LuaMessage(pub Exchange);

fn op<T>(result: Result<T, OpError>) -> mlua::Result<T> {
    result.map_err(mlua::Error::external)
}

fn text(lua: &Lua, value: Option<&str>) -> mlua::Result<Option<mlua::LuaString>> {
    value.map(|v| lua.create_string(v)).transpose()
}

fn state_value(value: Value) -> mlua::Result<Option<StateValue>> {
    Ok(Some(match value {
        Value::Nil => return Ok(None),
        Value::Boolean(b) => StateValue::Bool(b),
        Value::Integer(i) => StateValue::Int(i),
        Value::Number(n) => StateValue::Num(n),
        Value::String(s) => StateValue::Str(
            ByteStr::from_utf8(bytes::Bytes::copy_from_slice(&s.as_bytes()))
                .map_err(|_| mlua::Error::external(OpError::NotUtf8))?,
        ),
        other => {
            return Err(mlua::Error::runtime(format!(
                "state values are strings, numbers, booleans or nil, not {}",
                other.type_name()
            )));
        }
    }))
}

fn lua_value(lua: &Lua, value: Option<&StateValue>) -> mlua::Result<Value> {
    Ok(match value {
        None => Value::Nil,
        Some(StateValue::Bool(b)) => Value::Boolean(*b),
        Some(StateValue::Int(i)) => Value::Integer(*i),
        Some(StateValue::Num(n)) => Value::Number(*n),
        Some(StateValue::Str(s)) => Value::String(lua.create_string(s.as_bytes())?),
    })
}

impl UserData for LuaMessage {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, key: mlua::LuaString| {
            text(lua, op(this.0.get(&key.as_bytes()))?)
        });
        methods.add_method("request", |lua, this, key: mlua::LuaString| {
            text(lua, op(this.0.request_get(&key.as_bytes()))?)
        });
        methods.add_method_mut(
            "set",
            |_, this, (key, value): (mlua::LuaString, mlua::LuaString)| {
                op(this.0.set(&key.as_bytes(), &value.as_bytes()))
            },
        );
        methods.add_method_mut("remove", |_, this, key: mlua::LuaString| {
            op(this.0.remove(&key.as_bytes()))
        });
        methods.add_method_mut(
            "set_routing_key",
            |_, this, (key, value): (mlua::LuaString, mlua::LuaString)| {
                op(this.0.set_routing_key(&key.as_bytes(), &value.as_bytes()))
            },
        );
        methods.add_method("state", |lua, this, key: mlua::LuaString| {
            lua_value(lua, op(this.0.state(&key.as_bytes()))?)
        });
        methods.add_method_mut(
            "set_state",
            |_, this, (key, value): (mlua::LuaString, Value)| {
                op(this.0.set_state(&key.as_bytes(), state_value(value)?))
            },
        );
        methods.add_method_mut(
            "reply",
            |_, this, (kind, message): (mlua::LuaString, Option<mlua::LuaString>)| {
                let message = message.as_ref().map(|m| m.as_bytes());
                op(this
                    .0
                    .reply(&kind.as_bytes(), message.as_deref().unwrap_or_default()))
            },
        );
        methods.add_method("hook", |_, this, ()| Ok(op(this.0.hook())?.name()));
        methods.add_method("listener", |lua, this, ()| {
            text(lua, op(this.0.facts())?.listener.as_deref())
        });
        methods.add_method("peer", |_, this, ()| {
            Ok(op(this.0.facts())?.peer.map(|p| p.to_string()))
        });
        methods.add_method("route", |lua, this, ()| {
            text(lua, op(this.0.facts())?.route.as_deref())
        });
        methods.add_method("cluster", |lua, this, ()| {
            text(lua, op(this.0.facts())?.cluster.as_deref())
        });
        methods.add_method("endpoint", |_, this, ()| {
            Ok(op(this.0.facts())?.endpoint.map(|e| e.to_string()))
        });
        methods.add_method("attempts", |_, this, ()| Ok(op(this.0.facts())?.attempts));
        methods.add_method("flags", |_, this, ()| {
            Ok(op(this.0.facts())?.outcome.flags.to_string())
        });
        methods.add_method("status", |_, this, ()| {
            Ok(op(this.0.facts())?.outcome.status.map(status_name))
        });
        methods.add_method("local_reply", |_, this, ()| {
            Ok(op(this.0.facts())?.outcome.local_reply.map(|k| k.name()))
        });
        methods.add_method("duration_ms", |_, this, ()| {
            Ok(op(this.0.facts())?
                .duration
                .map(|d| d.as_secs_f64() * 1000.0))
        });
        methods.add_method("bytes_received", |_, this, ()| {
            Ok(op(this.0.facts())?.bytes_received)
        });
        methods.add_method("bytes_sent", |_, this, ()| {
            Ok(op(this.0.facts())?.bytes_sent)
        });
    }
}
