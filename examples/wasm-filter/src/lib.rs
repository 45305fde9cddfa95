//! An example metaprotocol-rs filter in Rust, compiled to WebAssembly: see `README.md`.
//!
//! [`host`] wraps the imports of the filter ABI in safe functions; the hooks below use only
//! those. Nothing here allocates: values are copied into fixed buffers on the stack.

mod host;

use host::{Map, get, reply, set};

/// The longest value this filter reads; longer ones count as absent.
const MAX_VALUE: usize = 256;

/// `on_request`: see `README.md`.
#[unsafe(no_mangle)]
pub extern "C" fn on_request() {
    let mut buf = [0u8; MAX_VALUE];
    if get(Map::Message, "x-boom", &mut buf).is_some() {
        panic!("x-boom asked this filter to fail");
    }
    if get(Map::Message, "x-spin", &mut buf).is_some() {
        spin();
    }
    let Some(tenant) = get(Map::Message, "tenant", &mut buf) else {
        reply("unauthorized", "a tenant is required");
        return;
    };
    set(Map::State, "tenant", tenant);
    let mut tag = [0u8; MAX_VALUE + 5];
    tag[..5].copy_from_slice(b"wasm:");
    tag[5..5 + tenant.len()].copy_from_slice(tenant);
    set(Map::Message, "x-filtered-by", &tag[..5 + tenant.len()]);
    let mut lane = [0u8; MAX_VALUE];
    if let Some(lane) = get(Map::Message, "x-lane", &mut lane) {
        set(Map::Routing, "lane", lane);
    }
}

/// `on_response`: see `README.md`.
#[unsafe(no_mangle)]
pub extern "C" fn on_response() {
    let mut buf = [0u8; MAX_VALUE];
    if let Some(tenant) = get(Map::State, "tenant", &mut buf) {
        set(Map::Message, "x-tenant-echo", tenant);
    }
}

/// `on_complete`: see `README.md`.
#[unsafe(no_mangle)]
pub extern "C" fn on_complete() {
    let mut buf = [0u8; MAX_VALUE];
    if get(Map::Record, "route", &mut buf) == Some(b"lane-fast") {
        host::count("fast_lane", 1);
    }
}

/// Runs until the proxy's fuel limit stops it.
fn spin() {
    let mut n: u64 = 0;
    loop {
        n = core::hint::black_box(n.wrapping_add(1));
    }
}
