//! Criterion bench of what observability costs per call: the whole request path in one process
//! (as `request_path`, Dubbo, metrics always on) with an access log, with tracing, and with
//! both, against metrics alone. The access log is JSON to `/dev/null` (formatting, the queue and
//! the write, not a disk); tracing samples every call and exports to a collector that is not
//! there (spans are built, queued and dropped on export, off the request path).
//!
//! `cargo bench -p metaprotocol-benches --bench observability`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_benches::in_process::{InProcess, Via, bench_depths};
use metaprotocol_benches::wire::Protocol;

/// Payload bytes per call.
const PAYLOAD: usize = 32;

/// The listener fields of each case.
const CASES: [(&str, &str); 4] = [
    ("metrics", ""),
    ("access_log", ACCESS_LOG),
    ("tracing", TRACING),
    ("access_log_and_tracing", BOTH),
];
const ACCESS_LOG: &str = "access_log: { path: /dev/null, format: json }";
const TRACING: &str = "tracing: { otlp_endpoint: \"http://127.0.0.1:9\", sampling: 100 }";
const BOTH: &str = "access_log: { path: /dev/null, format: json }, tracing: { otlp_endpoint: \"http://127.0.0.1:9\", sampling: 100 }";

fn observability(c: &mut Criterion) {
    let mut group = c.benchmark_group("observability/dubbo");
    group.throughput(Throughput::Elements(1));
    for (name, fields) in CASES {
        let bench = InProcess::start_with(Protocol::Dubbo, || {}, fields)
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
