//! The engine's heap allocations per proxied call, counted by the counting allocator: a client
//! connection reuses the allocations of the requests it finished, so that a call through the
//! engine allocates next to nothing, whether calls come one at a time or 64 at once.

use metaprotocol_benches::alloc::{CountingAlloc, Counts, count_this_thread};
use metaprotocol_benches::in_process::{InProcess, Via};
use metaprotocol_benches::wire::Protocol;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Calls counted, after as many to warm up (buffers grow, connections open).
const CALLS: u64 = 2_000;

#[test]
fn a_proxied_call_allocates_next_to_nothing() -> TestResult {
    for protocol in Protocol::ALL {
        let bench = InProcess::start(protocol, count_this_thread)?;
        for depth in [64, 1] {
            let mut client = bench.connect(Via::Proxy, 32, depth)?;
            bench.calls(&mut client, CALLS);
            let before = Counts::now();
            bench.calls(&mut client, CALLS);
            let engine = Counts::now().since(before).marked;
            assert_eq!(client.tally.errors.total(), 0, "{protocol} at {depth}");
            // Without the reuse each call allocates its shared message: one per call at least.
            assert!(
                engine * 5 < CALLS,
                "{protocol} at {depth} in flight: {engine} allocations for {CALLS} calls"
            );
        }
    }
    Ok(())
}
