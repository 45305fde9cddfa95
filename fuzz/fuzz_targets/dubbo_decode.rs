#![no_main]
//! Fuzzes the Dubbo2 decoder (downstream and upstream codecs, the input fed in two pieces):
//! whatever decodes is re-encoded and answered. See `metaprotocol_fuzz::dubbo::decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metaprotocol_fuzz::dubbo::decode(data));
