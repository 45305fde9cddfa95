//! The filter ABI's imports (module `metaprotocol`), wrapped in safe functions.
//!
//! The host copies values into buffers the filter passes and reads keys and values from the
//! filter's memory; it never keeps a pointer past the call.

/// Which key/values an operation works on.
#[derive(Clone, Copy)]
pub enum Map {
    /// The hook's message: its metadata (`get`), or the headers of the message the hook
    /// forwards (`set`, `remove`).
    Message = 0,
    /// The request's metadata (read-only).
    #[allow(dead_code)]
    Request = 1,
    /// The request's state, kept from hook to hook.
    State = 2,
    /// The request's record (read-only): `route`, `cluster`, `flags` ...
    Record = 3,
    /// Routing keys (`set` in `on_request`).
    Routing = 4,
}

mod raw {
    #[link(wasm_import_module = "metaprotocol")]
    unsafe extern "C" {
        pub fn get(map: i32, key: *const u8, key_len: i32, buf: *mut u8, buf_cap: i32) -> i32;
        pub fn set(map: i32, key: *const u8, key_len: i32, value: *const u8, value_len: i32);
        pub fn reply(kind: *const u8, kind_len: i32, message: *const u8, message_len: i32);
        pub fn count(name: *const u8, name_len: i32, n: i64);
    }
}

/// A length as the ABI passes it (filter values are far below 2 GiB).
fn len(bytes: &[u8]) -> i32 {
    i32::try_from(bytes.len()).unwrap_or(i32::MAX)
}

/// The value of `key` in `map`, copied into `buf`; `None` when absent or longer than `buf`.
pub fn get<'b>(map: Map, key: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    // SAFETY: the host reads `key` and writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        raw::get(map as i32, key.as_ptr(), len(key.as_bytes()), buf.as_mut_ptr(), len(buf))
    };
    let n = usize::try_from(n).ok()?;
    buf.get(..n)
}

/// Sets `key` to `value` in `map` (a header, a routing key or a state value).
pub fn set(map: Map, key: &str, value: &[u8]) {
    // SAFETY: the host only reads `key` and `value`.
    unsafe {
        raw::set(map as i32, key.as_ptr(), len(key.as_bytes()), value.as_ptr(), len(value));
    }
}

/// Answers the request with a local reply of `kind` (`unauthorized`, `unavailable` ...).
pub fn reply(kind: &str, message: &str) {
    // SAFETY: the host only reads `kind` and `message`.
    unsafe {
        raw::reply(kind.as_ptr(), len(kind.as_bytes()), message.as_ptr(), len(message.as_bytes()));
    }
}

/// Adds `n` to the counter `name` (declared in the filter's `counters`).
pub fn count(name: &str, n: i64) {
    // SAFETY: the host only reads `name`.
    unsafe { raw::count(name.as_ptr(), len(name.as_bytes()), n) }
}
