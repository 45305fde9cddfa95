#![no_main]
//! Fuzzes the brpc (baidu_std) decode -> mutate -> encode -> decode round trip: a stream
//! (seeded from the golden captures) and an arbitrary correlation id and `user_fields`
//! mutation. See `metaprotocol_fuzz::brpc::round_trip`.
use libfuzzer_sys::fuzz_target;
use metaprotocol_fuzz::RoundTrip;

fuzz_target!(|input: RoundTrip<'_>| metaprotocol_fuzz::brpc::round_trip(&input));
