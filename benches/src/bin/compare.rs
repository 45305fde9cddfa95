//! `compare`: the helpers of `benches/compare.sh`.
//!
//! - `proxy-config`: the engine config every benchmark measures, as YAML on stdout.
//! - `table FILE...`: the markdown table of the load generator's JSON lines in the files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metaprotocol_benches::report::Report;
use metaprotocol_benches::wire::Protocol;
use metaprotocol_benches::{compare, loopback_addr, proxy_config};

#[derive(Parser)]
#[command(name = "compare", about = "Helpers of benches/compare.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the proxy config: a listener, a route on two metadata keys, the echo cluster, admin.
    ProxyConfig {
        /// The protocol.
        #[arg(long, value_enum)]
        protocol: Protocol,
        /// The proxy's listener.
        #[arg(long, value_parser = loopback_addr)]
        listen: SocketAddr,
        /// The echo server.
        #[arg(long, value_parser = loopback_addr)]
        upstream: SocketAddr,
        /// The admin API.
        #[arg(long, value_parser = loopback_addr)]
        admin: SocketAddr,
    },
    /// Prints the markdown table of load-generator reports (JSON lines).
    Table {
        /// Files of JSON lines.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::ProxyConfig {
            protocol,
            listen,
            upstream,
            admin,
        } => {
            print!(
                "{}",
                proxy_config::proxy_config(protocol, listen, upstream, admin)
            );
            ExitCode::SUCCESS
        }
        Command::Table { files } => match read_reports(&files) {
            Ok(reports) => {
                print!("{}", compare::table(&reports));
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("compare: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn read_reports(files: &[PathBuf]) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let report = serde_json::from_str(line)
                .map_err(|err| anyhow::anyhow!("{}:{}: {err}", file.display(), n + 1))?;
            reports.push(report);
        }
    }
    Ok(reports)
}
