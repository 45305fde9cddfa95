//! Criterion bench of what observability costs per call: the whole request path in one process
//! (as `request_path`, Dubbo, metrics always on) with an access log, with tracing, and with
//! both, against metrics alone (the cases: `metaprotocol_benches::proxy_config::
//! observability_cases`); spans go to a collector in this process that accepts them all.
//! Wall-clock time on a shared machine is noisy: `benches/callgrind.sh` counts the instructions
//! per call of the same cases instead.
//!
//! `cargo bench -p metaprotocol-benches --bench observability`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_benches::collector::NullCollector;
use metaprotocol_benches::in_process::{InProcess, Scheduler, Via, bench_depths};
use metaprotocol_benches::proxy_config::observability_cases;
use metaprotocol_benches::wire::Protocol;

/// Payload bytes per call.
const PAYLOAD: usize = 32;

fn observability(c: &mut Criterion) {
    let collector =
        NullCollector::start().unwrap_or_else(|err| panic!("cannot start the collector: {err}"));
    let mut group = c.benchmark_group("observability/dubbo");
    group.throughput(Throughput::Elements(1));
    for (name, fields) in observability_cases(&collector.endpoint(), None) {
        let bench = InProcess::start_with(Protocol::Dubbo, || {}, &fields, Scheduler::Runtime)
            .unwrap_or_else(|err| panic!("cannot start the engine with {name}: {err:#}"));
        bench_depths(&mut group, &bench, Via::Proxy, name, PAYLOAD);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = metaprotocol_benches::short_criterion();
    targets = observability
}
criterion_main!(benches);
