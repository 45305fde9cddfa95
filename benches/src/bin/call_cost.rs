//! `call_cost`: a fixed number of calls through the in-process engine (see
//! `metaprotocol_benches::in_process`) in one observability case, then exit. Run under
//! callgrind at two call counts, the difference of the instructions counted divided by the
//! difference of the calls is the cost of one call, start-up and warm-up cancelled out:
//! `benches/callgrind.sh` does that for every case. Instruction counts do not depend on what
//! else the machine runs, unlike the criterion bench's times.
//!
//! ```sh
//! cargo build --release -p metaprotocol-benches --bin call_cost
//! valgrind --tool=callgrind target/release/call_cost --case tracing --calls 20000
//! ```

use std::process::ExitCode;

use clap::Parser;
use metaprotocol_benches::collector::NullCollector;
use metaprotocol_benches::in_process::{InProcess, Scheduler, Via};
use metaprotocol_benches::proxy_config::observability_cases;
use metaprotocol_benches::wire::Protocol;

/// Calls per round.
const ROUND: u64 = 500;

/// The series of what the access log and tracing dropped or failed to export.
const DROPS: [&str; 4] = [
    "metaprotocol_access_log_dropped_total",
    "metaprotocol_tracing_spans_dropped_total",
    "metaprotocol_tracing_spans_exported_total",
    "metaprotocol_tracing_export_failures_total",
];

#[derive(Parser)]
#[command(
    name = "call_cost",
    about = "A fixed number of calls through the in-process engine"
)]
struct Args {
    /// The observability case: metrics, access_log, tracing or access_log_and_tracing.
    #[arg(long, default_value = "metrics")]
    case: String,
    /// Calls made after the warm-up.
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Calls before those (buffers and pools grow, connections open).
    #[arg(long, default_value_t = 2_000)]
    warmup_calls: u64,
    /// Calls in flight on the one client connection.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// The protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Dubbo)]
    protocol: Protocol,
    /// The access log's and the span exporter's queue sizes (default: the config's): large
    /// enough, nothing is dropped, and every call pays for its line and spans.
    #[arg(long)]
    queue: Option<usize>,
    /// Where the engine serves the client connection: on the runtime that starts it, or on a
    /// worker thread of its own as `metaprotocol-proxy run` does.
    #[arg(long, value_enum, default_value_t = Scheduler::Runtime)]
    scheduler: Scheduler,
    /// Call the echo server directly instead: the client's and the server's own share.
    #[arg(long)]
    direct: bool,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("call_cost: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let collector = NullCollector::start()?;
    let cases = observability_cases(&collector.endpoint(), args.queue);
    let Some((_, fields)) = cases.iter().find(|(name, _)| *name == args.case) else {
        let names: Vec<&str> = cases.iter().map(|(name, _)| *name).collect();
        anyhow::bail!("no case `{}`; the cases: {names:?}", args.case);
    };
    let bench = InProcess::start_with(args.protocol, || {}, fields, args.scheduler)?;
    let via = if args.direct { Via::Direct } else { Via::Proxy };
    let mut client = bench.connect(via, args.payload, args.depth)?;
    bench.calls(&mut client, args.warmup_calls);
    // In rounds, each well within the time a round of calls may take, however slow valgrind
    // makes them.
    let mut took = std::time::Duration::ZERO;
    let mut left = args.calls;
    while left > 0 {
        let round = left.min(ROUND);
        took += bench.calls(&mut client, round);
        left -= round;
    }
    let errors = client.tally.errors;
    anyhow::ensure!(errors.total() == 0, "calls failed: {errors:?}");
    println!(
        "{} calls ({}, {} in flight) in {took:?}",
        args.calls, args.case, args.depth
    );
    // What was dropped is not paid for: say so, a figure with drops measures less.
    for line in bench
        .metrics()
        .lines()
        .filter(|line| DROPS.iter().any(|name| line.starts_with(name)))
    {
        println!("{line}");
    }
    Ok(())
}
