#![no_main]
//! Fuzzes the route match: arbitrary route tables and requests, the engine's answer against a
//! model's. See `metaprotocol_fuzz::route::check`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|case: metaprotocol_fuzz::route::RouteCase| {
    metaprotocol_fuzz::route::check(&case);
});
