//! `loadgen`: Dubbo, Thrift (framed binary) or bRPC load on a loopback address: pipelined
//! connections, closed loop or a fixed rate (open loop, latency from each call's intended time),
//! every answer checked; prints one JSON line (see `metaprotocol_benches::report::Report`).
//!
//! ```sh
//! cargo run --release -p metaprotocol-benches --bin loadgen -- \
//!     --protocol dubbo --target 127.0.0.1:20880 --connections 8 --outstanding 64 \
//!     --payload 32 --warmup 1s --duration 5s --watch proxy=$(pgrep -n metaprotocol-pro)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metaprotocol_benches::load::{Load, generate};
use metaprotocol_benches::loopback_addr;
use metaprotocol_benches::report::Watched;
use metaprotocol_benches::wire::Protocol;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "RPC load on loopback; one JSON line of results"
)]
struct Args {
    /// The protocol spoken.
    #[arg(long, value_enum)]
    protocol: Protocol,
    /// Where the calls go (a loopback address).
    #[arg(long, value_parser = loopback_addr)]
    target: SocketAddr,
    /// Connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Calls in flight per connection (open loop: at most).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    outstanding: u32,
    /// Calls per second over all connections, sent on schedule (open loop); without it, closed
    /// loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Time before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Time measured.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Calls unanswered for longer than this at the end are errors.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    patience: Duration,
    /// Write after every N calls, as clients that flush each call do (default: every call that
    /// may go in one write).
    #[arg(long)]
    calls_per_write: Option<NonZeroU64>,
    /// Runtime threads (1: everything on the main thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// NAME=PID of a process whose CPU per call and peak memory are reported (repeatable).
    #[arg(long = "watch", value_parser = Watched::parse)]
    watch: Vec<Watched>,
    /// Also count the system calls of each watched process over the window, with `perf stat`
    /// (which must be installed); the count costs them CPU.
    #[arg(long)]
    syscalls: bool,
    /// A,B: measure the round trip of a cache line between cores A and B before and after the
    /// run (where the host put them; see `metaprotocol_benches::cores`).
    #[arg(long, value_parser = parse_cores)]
    cores_probe: Option<(usize, usize)>,
    /// KEY=VALUE copied into the report (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

fn parse_cores(text: &str) -> Result<(usize, usize), String> {
    let not_cores = || format!("`{text}` is not two core numbers A,B");
    let (a, b) = text.split_once(',').ok_or_else(not_cores)?;
    Ok((
        a.trim().parse().map_err(|_| not_cores())?,
        b.trim().parse().map_err(|_| not_cores())?,
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let load = Load {
        protocol: args.protocol,
        target: args.target,
        connections: args.connections,
        outstanding: args.outstanding as usize,
        rate: args.rate,
        payload: args.payload,
        warmup: args.warmup,
        duration: args.duration,
        patience: args.patience,
        calls_per_write: args.calls_per_write,
        watch: args.watch,
        syscalls: args.syscalls,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        cores_probe: args.cores_probe,
    };
    let runtime = metaprotocol_benches::runtime(args.threads);
    let report = runtime
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(generate(&load)))
        .and_then(|report| Ok(serde_json::to_string(&report)?));
    match report {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}
