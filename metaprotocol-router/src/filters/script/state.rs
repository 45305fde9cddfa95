//! The state scripts keep for one request, from its request hook to its completion.

use metaprotocol_core::ByteStr;

/// One value a script stored.
// Only Lua stores numbers and booleans; a WebAssembly filter stores strings and reads the others
// as text, so an engine built with `wasm` alone never makes them.
#[cfg_attr(not(feature = "lua"), allow(dead_code))]
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum StateValue {
    /// A string.
    Str(ByteStr),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Num(f64),
    /// A boolean.
    Bool(bool),
}

/// The key/values scripts keep for one request, stored in its
/// [`RequestRecord::extensions`](metaprotocol_core::RequestRecord::extensions). Every script
/// filter of a chain sees the same state, so one may leave a value for the next.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ScriptState {
    entries: Vec<(ByteStr, StateValue)>,
}

impl ScriptState {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&StateValue> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_bytes() == key)
            .map(|(_, v)| v)
    }

    /// Sets `key` to `value`, or removes it (`None`).
    pub fn set(&mut self, key: ByteStr, value: Option<StateValue>) {
        let existing = self.entries.iter().position(|(k, _)| *k == key);
        match (existing, value) {
            (Some(index), Some(value)) => self.entries[index].1 = value,
            (Some(index), None) => {
                self.entries.swap_remove(index);
            }
            (None, Some(value)) => self.entries.push((key, value)),
            (None, None) => {}
        }
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_set_replaced_and_removed() {
        let mut state = ScriptState::default();
        state.set("a".into(), Some(StateValue::Int(1)));
        state.set("a".into(), Some(StateValue::Bool(true)));
        state.set("b".into(), Some(StateValue::Str("x".into())));
        assert_eq!(state.get(b"a"), Some(&StateValue::Bool(true)));
        state.set("a".into(), None);
        state.set("c".into(), None);
        assert_eq!(state.get(b"a"), None);
        assert!(!state.is_empty());
        state.set("b".into(), None);
        assert!(state.is_empty());
    }
}
