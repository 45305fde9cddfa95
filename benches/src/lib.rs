//! The project's performance instruments (see `benches/README.md` for how to run them):
//!
//! - [`codec_bench`]: what the per-codec criterion benches share.
//! - [`wire`]: the Dubbo, Thrift (framed binary) and bRPC calls and answers the tools exchange.
//! - [`load`]: the load generator (`--bin loadgen`): pipelined connections, closed or open loop,
//!   every answer checked, latency in HdrHistograms; [`report`]: its one-line JSON report;
//!   [`syscalls`]: the system calls of watched processes, counted by `perf`; [`cores`]: how far
//!   apart the host has put two cores.
//! - [`echo`]: the echo server (`--bin echo`).
//! - [`relay`]: the floor relay (`--bin relay`), the cheapest third process a call can pass
//!   through, to read a proxy's CPU per call against.
//! - [`proxy_config`]: the engine configuration every benchmark measures, and the observability
//!   cases; [`collector`]: the OTLP collector the tracing cases export to.
//! - [`in_process`]: engine, echo server and client in one process, for the request-path bench
//!   (`benches/request_path.rs`) and [`alloc`]'s allocation count (`--bin alloc_count`).
//! - [`compare`]: the table of `benches/compare.sh` (`--bin compare`).
//! - [`redis`]: a redis-server for the global rate limit's bench and allocation count.

pub mod alloc;
pub mod codec_bench;
pub mod collector;
pub mod compare;
pub mod cores;
pub mod echo;
pub mod in_process;
pub mod load;
pub mod proxy_config;
pub mod redis;
pub mod relay;
pub mod report;
pub mod syscalls;
pub mod wire;

use std::net::SocketAddr;

/// Parses an address the tools may use: one on loopback, as everything they do stays on this
/// machine.
pub fn loopback_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address and port"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address"));
    }
    Ok(addr)
}

/// A tokio runtime with `threads` worker threads; with one, everything runs on the calling
/// thread (no hand-offs between threads, the cheapest for a tool sharing a core).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Criterion settings for the in-process benches: short (20 samples, 1 s of warm-up, 3 s of
/// measurement), since the machine is small and shared and the figures are compared run against
/// run rather than read to the nanosecond.
pub fn short_criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
}
