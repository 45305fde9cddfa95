#![no_main]
//! Fuzzes the dubbo decoder (to be written).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = data;
});
