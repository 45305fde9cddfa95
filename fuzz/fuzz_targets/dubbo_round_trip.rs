#![no_main]
//! Fuzzes the Dubbo2 decode -> mutate -> encode -> decode round trip: a stream (seeded from the
//! golden captures) and an arbitrary id, attachments mutation and client kind. See
//! `metaprotocol_fuzz::dubbo::round_trip`.
use libfuzzer_sys::fuzz_target;
use metaprotocol_fuzz::RoundTrip;

fuzz_target!(|input: RoundTrip<'_>| metaprotocol_fuzz::dubbo::round_trip(&input));
