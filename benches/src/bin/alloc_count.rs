//! `alloc_count`: heap allocations per proxied call, for each protocol, at 64 calls and 1 call in
//! flight, with the engine, an echo server and a client in this process (see
//! `metaprotocol_benches::in_process`).
//!
//! The engine runs on its own runtime whose threads are marked, and the counting allocator
//! counts their allocations apart: that is the engine's count (decode, routing, upstream, encode,
//! tasks, timers, the runtime's own work for it), whatever the client and echo server do on
//! their thread. As a cross-check, the count over every thread through the engine minus the
//! count over every thread for the same calls sent straight to the echo server is printed too;
//! the engine's threads' count during the direct run shows that nothing else runs there.
//!
//! ```sh
//! cargo run --release -p metaprotocol-benches --bin alloc_count
//! ```

use std::process::ExitCode;

use clap::Parser;
use metaprotocol_benches::alloc::{CountingAlloc, Counts, count_this_thread};
use metaprotocol_benches::in_process::{InProcess, Via};
use metaprotocol_benches::wire::Protocol;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

#[derive(Parser)]
#[command(name = "alloc_count", about = "Heap allocations per proxied call")]
struct Args {
    /// Calls counted per measurement.
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Calls before counting (buffers and pools grow, connections open).
    #[arg(long, default_value_t = 5_000)]
    warmup_calls: u64,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Only this protocol (default: all three).
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    println!(
        "| protocol | in flight | engine threads: allocs/call | engine threads: reallocs/call \
         | all threads, via engine - direct: allocs/call | engine threads during direct run: allocs/call |"
    );
    println!("|---|---|---|---|---|---|");
    let protocols = args.protocol.map_or(Protocol::ALL.to_vec(), |p| vec![p]);
    for protocol in protocols {
        if let Err(err) = count(protocol, &args) {
            eprintln!("alloc_count: {protocol}: {err:#}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn count(protocol: Protocol, args: &Args) -> anyhow::Result<()> {
    let bench = InProcess::start(protocol, count_this_thread)?;
    for depth in [64, 1] {
        let proxied = measure(&bench, Via::Proxy, depth, args)?;
        let direct = measure(&bench, Via::Direct, depth, args)?;
        let per_call = |count: u64| count as f64 / args.calls as f64;
        println!(
            "| {protocol} | {depth} | {:.2} | {:.2} | {:.2} | {:.3} |",
            per_call(proxied.marked),
            per_call(proxied.marked_reallocs),
            per_call(proxied.all) - per_call(direct.all),
            per_call(direct.marked),
        );
    }
    Ok(())
}

/// The allocations of `args.calls` calls, after a warm-up, on a new client connection.
fn measure(bench: &InProcess, via: Via, depth: usize, args: &Args) -> anyhow::Result<Counts> {
    let mut client = bench.connect(via, args.payload, depth)?;
    bench.calls(&mut client, args.warmup_calls);
    let before = Counts::now();
    bench.calls(&mut client, args.calls);
    let used = Counts::now().since(before);
    let errors = client.tally.errors;
    anyhow::ensure!(errors.total() == 0, "calls failed: {errors:?}");
    Ok(used)
}
