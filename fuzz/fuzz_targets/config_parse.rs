#![no_main]
//! Fuzzes config parsing: text read as a config file and as an admin `PUT`'s route config or
//! cluster. See `metaprotocol_fuzz::config::parse`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metaprotocol_fuzz::config::parse(data));
