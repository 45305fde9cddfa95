#![no_main]
//! Fuzzes the thrift decoder (transport and protocol auto-detected): whatever decodes is
//! re-encoded, translated and answered. See `metaprotocol_fuzz::thrift::decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metaprotocol_fuzz::thrift::decode(data));
