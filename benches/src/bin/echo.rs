//! `echo`: a Dubbo, Thrift (framed binary) or bRPC server on loopback that answers every call
//! with its payload and id, pipelined, one write per read; it stops by itself after `--duration`.
//!
//! ```sh
//! cargo run --release -p metaprotocol-benches --bin echo -- --protocol thrift --listen 127.0.0.1:9090
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metaprotocol_benches::wire::Protocol;
use metaprotocol_benches::{echo, loopback_addr};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "echo", about = "An RPC echo server on loopback")]
struct Args {
    /// The protocol spoken.
    #[arg(long, value_enum)]
    protocol: Protocol,
    /// Where to listen (a loopback address; port 0 picks one, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0", value_parser = loopback_addr)]
    listen: SocketAddr,
    /// How long to serve before exiting.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Runtime threads (1: everything on the main thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = metaprotocol_benches::runtime(args.threads);
    let served = runtime.and_then(|runtime| {
        runtime.block_on(async {
            let listener = TcpListener::bind(args.listen).await?;
            println!("{}", listener.local_addr()?);
            let _ = tokio::time::timeout(args.duration, echo::serve(listener, args.protocol)).await;
            Ok(())
        })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echo: {err}");
            ExitCode::FAILURE
        }
    }
}
