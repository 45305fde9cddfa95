//! The instruments against each other on loopback, briefly: the load generator and the echo
//! server agree on every protocol, closed and open loop; calls through the engine match its
//! route and come back whole, on either scheduler; the floor relay carries them both ways it
//! waits; a peer speaking something else is counted as errors, not a panic; system calls are
//! counted where `perf` can count them.
//! Nothing here asserts a speed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::time::Duration;

use metaprotocol_benches::echo;
use metaprotocol_benches::in_process::{InProcess, Scheduler, Via};
use metaprotocol_benches::load::{Load, generate};
use metaprotocol_benches::relay::{self, Waiting};
use metaprotocol_benches::report::Watched;
use metaprotocol_benches::wire::Protocol;
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn echo_server(protocol: Protocol) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(echo::serve(listener, protocol));
    Ok(addr)
}

fn load(protocol: Protocol, target: SocketAddr, rate: Option<f64>) -> Load {
    // One call per write exercises the flushing path; the echo server answers either way.
    let calls_per_write = rate.and(NonZeroU64::new(1));
    Load {
        protocol,
        target,
        connections: 2,
        outstanding: 8,
        rate,
        payload: 100,
        warmup: Duration::from_millis(50),
        duration: Duration::from_millis(250),
        patience: Duration::from_secs(1),
        calls_per_write,
        watch: vec![Watched {
            name: "me".to_owned(),
            pid: std::process::id(),
        }],
        syscalls: false,
        labels: BTreeMap::from([("round".to_owned(), "1".to_owned())]),
        cores_probe: None,
    }
}

#[tokio::test]
async fn every_call_is_answered_closed_and_open_loop() -> TestResult {
    for protocol in Protocol::ALL {
        let target = echo_server(protocol).await?;
        for rate in [None, Some(2000.0)] {
            let report = generate(&load(protocol, target, rate)).await?;
            assert!(report.calls > 0, "{protocol} {rate:?}: no calls");
            assert_eq!(
                report.errors, 0,
                "{protocol} {rate:?}: {:?}",
                report.error_kinds
            );
            assert!(report.latency_us.p50 > 0.0 && report.latency_us.p50 <= report.latency_us.max);
            assert_eq!(report.labels["round"], "1");
            let me = &report.processes[0];
            assert!(me.cpu_us_per_call.is_some() && me.peak_rss_kib.is_some());
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_cores_round_trip_is_reported_when_asked_for() -> TestResult {
    let target = echo_server(Protocol::Brpc).await?;
    let unasked = generate(&load(Protocol::Brpc, target, None)).await?;
    assert_eq!(unasked.cores_apart, None);
    let mut load = load(Protocol::Brpc, target, None);
    load.cores_probe = Some((0, 1));
    let report = generate(&load).await?;
    assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
    let apart = report.cores_apart.ok_or("no round trip reported")?;
    // A probe gives up on a core busy with other tests' threads (or absent): then `None`.
    for ns in [apart.before_ns, apart.after_ns].into_iter().flatten() {
        assert!(ns > 1.0 && ns < 1_000_000.0, "{apart:?}");
    }
    Ok(())
}

/// True if `perf` can count system calls here (installed, and the tracepoint open to us).
fn perf_counts_syscalls() -> bool {
    std::process::Command::new("perf")
        .args(["stat", "-e", "raw_syscalls:sys_enter", "true"])
        .output()
        .is_ok_and(|output| output.status.success())
}

#[tokio::test]
async fn system_calls_are_counted_per_call_where_perf_can() -> TestResult {
    if !perf_counts_syscalls() {
        eprintln!("skipped: `perf stat -e raw_syscalls:sys_enter` does not work on this machine");
        return Ok(());
    }
    let target = echo_server(Protocol::Thrift).await?;
    let mut load = load(Protocol::Thrift, target, None);
    load.syscalls = true;
    let report = generate(&load).await?;
    assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
    // This process is both ends of every call: each call is written and read at least once on
    // each side, a few calls at a time.
    let me = &report.processes[0];
    assert!(
        me.syscalls_per_call.is_some_and(|n| n > 0.0 && n < 100.0),
        "{me:?}"
    );
    let loadgen = &report.processes[1];
    assert_eq!(
        loadgen.syscalls_per_call, None,
        "the load generator is not counted"
    );
    Ok(())
}

#[tokio::test]
async fn the_floor_relay_carries_every_call_sleeping_or_spinning() -> TestResult {
    let target = echo_server(Protocol::Brpc).await?;
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let relayed = listener.local_addr()?;
        std::thread::spawn(move || relay::serve(listener, target, waiting));
        let report = generate(&load(Protocol::Brpc, relayed, None)).await?;
        assert!(report.calls > 0, "{waiting:?}: no calls");
        assert_eq!(report.errors, 0, "{waiting:?}: {:?}", report.error_kinds);
    }
    Ok(())
}

#[tokio::test]
async fn another_protocol_is_counted_as_errors() -> TestResult {
    let target = echo_server(Protocol::Thrift).await?;
    let report = generate(&load(Protocol::Dubbo, target, None)).await?;
    assert_eq!(report.calls, 0);
    assert!(report.errors > 0);
    assert!(report.failure.is_some());
    Ok(())
}

#[test]
fn calls_through_the_engine_match_the_route_and_come_back_whole() -> TestResult {
    for (protocol, scheduler) in Protocol::ALL
        .into_iter()
        .flat_map(|p| [(p, Scheduler::Runtime), (p, Scheduler::Worker)])
    {
        let bench = InProcess::start_with(protocol, || {}, "", scheduler)?;
        for (via, depth) in [(Via::Proxy, 16), (Via::Proxy, 1), (Via::Direct, 16)] {
            let mut client = bench.connect(via, 64, depth)?;
            bench.calls(&mut client, 300);
            assert_eq!(
                client.tally.errors.total(),
                0,
                "{protocol} {scheduler:?} {via:?}: {:?}",
                client.tally.errors
            );
            assert_eq!(
                client.tally.calls(),
                300,
                "{protocol} {scheduler:?} {via:?}"
            );
        }
        // Both proxied runs reached the engine, wherever it served them.
        let received: u64 = bench
            .metrics()
            .lines()
            .filter(|line| line.starts_with("metaprotocol_downstream_rq_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(received, 600, "{protocol} {scheduler:?}");
        if scheduler == Scheduler::Worker {
            assert!(
                thread_names()?
                    .iter()
                    .any(|name| name.starts_with("metaprotocol-wo")),
                "{protocol}: no worker thread of the engine's own"
            );
        }
    }
    Ok(())
}

/// The names of this process's threads (as the kernel keeps them: 15 bytes at most).
fn thread_names() -> std::io::Result<Vec<String>> {
    std::fs::read_dir("/proc/self/task")?
        .map(|task| {
            let comm = std::fs::read_to_string(task?.path().join("comm"))?;
            Ok(comm.trim_end().to_owned())
        })
        .collect()
}
