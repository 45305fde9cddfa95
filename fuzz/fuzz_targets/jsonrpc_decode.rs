#![no_main]
//! Fuzzes the JSON-RPC decoder (downstream and upstream codecs): calls are answered and
//! forwarded, answers returned. See `metaprotocol_fuzz::jsonrpc::decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metaprotocol_fuzz::jsonrpc::decode(data));
