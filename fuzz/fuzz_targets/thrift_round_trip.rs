#![no_main]
//! Fuzzes the thrift decode -> mutate -> encode -> decode round trip: a stream (seeded from the
//! golden captures) and an arbitrary seqid, THeader mutation and target encoding. See
//! `metaprotocol_fuzz::thrift::round_trip`.
use libfuzzer_sys::fuzz_target;
use metaprotocol_fuzz::RoundTrip;

fuzz_target!(|input: RoundTrip<'_>| metaprotocol_fuzz::thrift::round_trip(&input));
