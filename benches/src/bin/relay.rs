//! `relay`: the floor relay (see `metaprotocol_benches::relay`): copies bytes between each client
//! and a connection of its own to the server, parsing nothing, sleeping in `read` or spinning;
//! it stops by itself after `--duration`.
//!
//! ```sh
//! cargo run --release -p metaprotocol-benches --bin relay -- --listen 127.0.0.1:9091 \
//!     --upstream 127.0.0.1:9090 --waiting spin
//! ```

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metaprotocol_benches::loopback_addr;
use metaprotocol_benches::relay::{self, Waiting};

#[derive(Parser)]
#[command(name = "relay", about = "The floor relay: bytes in, bytes out")]
struct Args {
    /// Where to listen (a loopback address; port 0 picks one, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0", value_parser = loopback_addr)]
    listen: SocketAddr,
    /// The server every client is relayed to.
    #[arg(long, value_parser = loopback_addr)]
    upstream: SocketAddr,
    /// How the relay waits for bytes.
    #[arg(long, value_enum)]
    waiting: Waiting,
    /// How long to serve before exiting.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).and_then(|listener| {
        println!("{}", listener.local_addr()?);
        Ok(listener)
    }) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("relay: cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let (upstream, waiting) = (args.upstream, args.waiting);
    let serving = std::thread::spawn(move || relay::serve(listener, upstream, waiting));
    // The serving thread returns only when it cannot go on; the deadline ends the process.
    let deadline = std::time::Instant::now() + args.duration;
    while !serving.is_finished() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    match serving.join() {
        Ok(err) => eprintln!("relay: {err}"),
        Err(_) => eprintln!("relay: the serving thread panicked"),
    }
    ExitCode::FAILURE
}
