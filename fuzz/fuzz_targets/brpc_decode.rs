#![no_main]
//! Fuzzes the brpc (baidu_std) decoder (downstream and upstream codecs): whatever decodes is
//! re-encoded and answered. See `metaprotocol_fuzz::brpc::decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metaprotocol_fuzz::brpc::decode(data));
