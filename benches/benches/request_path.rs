//! Criterion bench of the whole request path in one process: a client, the engine (one worker
//! thread, a route matching two metadata keys, metrics on) and an echo server over loopback,
//! for Dubbo, Thrift framed binary and bRPC. Time per call with 64 calls in flight (pipelined:
//! the engine's cost per call, not the round trip) and with 1 (the round trip), through the
//! engine and, for reference, straight to the echo server.
//!
//! `cargo bench -p metaprotocol-benches --bench request_path`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_benches::in_process::{InProcess, Via, bench_depths};
use metaprotocol_benches::wire::Protocol;

/// Payload bytes per call.
const PAYLOAD: usize = 32;

fn request_path(c: &mut Criterion) {
    for protocol in Protocol::ALL {
        let bench = InProcess::start(protocol, || {})
            .unwrap_or_else(|err| panic!("cannot start the {protocol} engine: {err:#}"));
        let mut group = c.benchmark_group(format!("request_path/{protocol}"));
        group.throughput(Throughput::Elements(1));
        for (via, name) in [(Via::Proxy, "proxy"), (Via::Direct, "direct")] {
            bench_depths(&mut group, &bench, via, name, PAYLOAD);
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = metaprotocol_benches::short_criterion();
    targets = request_path
}
criterion_main!(benches);
