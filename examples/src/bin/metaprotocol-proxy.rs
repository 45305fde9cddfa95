//! `metaprotocol-proxy`: the engine as a standalone proxy.
//!
//! - `run --config FILE [--workers N]`: serve until SIGINT/SIGTERM, then drain and exit 0.
//! - `validate --config FILE`: exit 0 with a one-line summary, or 1 naming the bad field.
//! - `demo`: sample Dubbo providers, traffic through the engine, and a summary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metaprotocol_router::{Config, Proxy};

#[derive(Parser)]
#[command(
    name = "metaprotocol-proxy",
    version,
    about = "Layer-7 proxy for RPC protocols"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config until SIGINT/SIGTERM, then drain in-flight requests and exit 0.
    Run {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Check a config file without serving it.
    Validate {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Start sample Dubbo providers in-process, proxy traffic to them, print what happened.
    Demo,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,metaprotocol_router=info")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let workers = match &cli.command {
        Command::Run { workers, .. } => *workers,
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = workers.filter(|w| *w > 0) {
        runtime.worker_threads(workers);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { config, .. } => run(config).await,
            Command::Validate { config } => validate(config),
            Command::Demo => demo().await,
        }
    })
}

async fn run(path: PathBuf) -> ExitCode {
    let config = match Config::from_file(&path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let proxy = match Proxy::start(config, metaprotocol_examples::codec_registry()).await {
        Ok(proxy) => proxy,
        Err(err) => {
            eprintln!("{}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    for (name, address) in proxy.listeners() {
        eprintln!("listener {name} on {address}");
    }
    tokio::select! {
        _ = wait_for_signal() => {}
        _ = proxy.watch_file(&path, CONFIG_POLL) => {}
    }
    eprintln!("draining");
    proxy.shutdown().await;
    ExitCode::SUCCESS
}

/// How often `run` looks at its config file.
const CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(1);

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn validate(path: PathBuf) -> ExitCode {
    let checked = Config::from_file(&path).and_then(|config| {
        Proxy::builder(config.clone())
            .codecs(metaprotocol_examples::codec_registry())
            .check()
            .map(|()| config)
    });
    match checked {
        Ok(config) => {
            let routes: usize = config.route_configs.iter().map(|r| r.routes.len()).sum();
            let endpoints: usize = config.clusters.iter().map(|c| c.endpoints.len()).sum();
            println!(
                "{}: valid: {} listeners, {} route configs ({routes} routes), {} clusters ({endpoints} endpoints)",
                path.display(),
                config.listeners.len(),
                config.route_configs.len(),
                config.clusters.len(),
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{}: invalid: {err}", path.display());
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> ExitCode {
    match metaprotocol_examples::demo::run_and_print().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}
