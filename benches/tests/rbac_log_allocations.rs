//! The engine's heap allocations per call through an rbac filter whose listener's access log
//! names the policy that refused a call (`%RESPONSE_CODE_DETAILS%`), counted by the counting
//! allocator. One test to the binary: the counts are the process's.

use metaprotocol_benches::alloc::{CountingAlloc, Counts, count_this_thread};
use metaprotocol_benches::in_process::{InProcess, Scheduler, Via};
use metaprotocol_benches::wire::Protocol;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Calls counted, after as many to warm up (buffers grow, connections open).
const CALLS: u64 = 2_000;

/// The engine's allocations for [`CALLS`] Dubbo calls, 64 in flight, through a listener with
/// `listener_fields`, after as many to warm up.
fn engine_allocations(listener_fields: &str) -> TestResult<u64> {
    let bench = InProcess::start_with(
        Protocol::Dubbo,
        count_this_thread,
        listener_fields,
        Scheduler::Runtime,
    )?;
    let mut client = bench.connect(Via::Proxy, 32, 64)?;
    bench.calls(&mut client, CALLS);
    let before = Counts::now();
    bench.calls(&mut client, CALLS);
    let engine = Counts::now().since(before).marked;
    assert_eq!(client.tally.errors.total(), 0, "{listener_fields}");
    Ok(engine)
}

/// `%RESPONSE_CODE_DETAILS%` names the rbac policy that refused a call, and nothing of the rbac
/// filters' decision to let one through: a listener whose access log shows it has its rbac
/// filters record their refusals only, and a call they let through allocates no more than
/// under a format that shows nothing of theirs (recording each decision took two allocations
/// a call).
#[test]
fn rbac_records_nothing_for_response_code_details_of_allowed_calls() -> TestResult {
    let [(key, value), _] = Protocol::Dubbo.route_keys();
    let listener = |format: &str| {
        format!(
            "filters: [ {{ name: rbac, config: {{ action: allow, policies: [ {{ name: callers, metadata: [ {{ key: {key}, exact: \"{value}\" }} ] }} ] }} }} ], access_log: {{ path: /dev/null, format: \"{format}\" }}"
        )
    };
    let plain = engine_allocations(&listener("%OUTCOME%"))?;
    let details = engine_allocations(&listener("%OUTCOME% %RESPONSE_CODE_DETAILS%"))?;
    eprintln!(
        "{CALLS} calls: {plain} allocations with %OUTCOME%, {details} with %RESPONSE_CODE_DETAILS% too"
    );
    assert!(
        details < plain + CALLS / 5,
        "{details} allocations for {CALLS} calls with %RESPONSE_CODE_DETAILS%, {plain} without"
    );
    Ok(())
}
