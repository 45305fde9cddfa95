//! `metaprotocol-proxy`: the engine as a standalone proxy.
//!
//! - `run --config FILE [--workers N] [--linger D] [--busy-poll D] [--drain-time D]`: serve until
//!   SIGINT/SIGTERM, then drain and exit 0 (or at a second signal, answer the calls still open
//!   with the protocol's unavailable error and exit 1).
//! - `validate --config FILE`: exit 0 with a one-line summary, or 1 naming every bad field.
//! - `route --config FILE --listener NAME [KEY=VALUE ...]`: which route a request with this
//!   metadata takes, and where it goes (exit 0), or that none matches (exit 1).
//! - `demo`: sample Dubbo providers, traffic through the engine, and a summary.
//!
//! Every command takes `--log-level` (a level or `RUST_LOG`-style directives; `RUST_LOG` is
//! used when the flag is absent) and `--log-format text|json`. Text logs carry colour codes only
//! when stderr is a terminal. The admin API's `/logging` changes the filter at run time; SIGHUP
//! reopens the access log files (for logrotate).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use metaprotocol_core::{ByteStr, Metadata, RoutingKeys, RoutingView};
use metaprotocol_router::{
    Config, LogControl, Proxy, ProxyBuilder, RouteDestination, StartError, kernel_idle_poll,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

#[derive(Parser)]
#[command(
    name = "metaprotocol-proxy",
    version,
    about = "Layer-7 proxy for RPC protocols"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level or directives (`info`, `warn,metaprotocol_router=debug`); default: RUST_LOG,
    /// else `warn,metaprotocol_router=info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config until SIGINT/SIGTERM, then drain in-flight requests and exit 0 (a second
    /// signal answers those still open with an error at once and exits 1).
    Run {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
        /// Worker threads serving client connections, each with its own event loop (default:
        /// one per core; 1 to 1024).
        #[arg(long, value_parser = worker_count)]
        workers: Option<usize>,
        /// The longest a worker whose clients pipeline requests waits before polling its
        /// sockets, to gather more requests and answers per system call (default 200us; `0s`
        /// never waits). It waits a tenth of the clients' round trip, and not at all for clients
        /// whose calls go round in under 400us or that wait for each answer before the next, nor
        /// while busy processes share its core.
        #[arg(long)]
        linger: Option<humantime::Duration>,
        /// How long a worker about to sleep until its sockets have news first looks at them
        /// without sleeping (default 50us; `0s` never looks). It keeps looking only while looks
        /// mostly find news: a wake-up from sleep costs a call tens of microseconds. By default,
        /// where the kernel polls at least 50us when a core idles (`haltpoll` cpuidle governor,
        /// `idle=poll`), which wakes a sleeping worker as quickly, a worker looks only while
        /// busy processes share its core.
        #[arg(long)]
        busy_poll: Option<humantime::Duration>,
        /// How long connections keep serving after SIGTERM before what is left is answered
        /// with an error (overrides the config's `drain_time`), e.g. `5s`.
        #[arg(long)]
        drain_time: Option<humantime::Duration>,
    },
    /// Check a config file without serving it.
    Validate {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Say which route a request with this metadata takes on a listener, and where it goes.
    Route {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
        /// The listener the request arrives on.
        #[arg(long)]
        listener: String,
        /// The request's metadata, as `key=value` (e.g. `method=sayHello version=v2`).
        #[arg(value_parser = parse_metadata_entry)]
        metadata: Vec<(String, String)>,
    },
    /// Start sample Dubbo providers in-process, proxy traffic to them, print what happened.
    Demo,
}

/// The log filter, changed at run time through the admin API's `/logging`.
struct ReloadableFilter {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogControl for ReloadableFilter {
    fn current(&self) -> String {
        self.handle
            .with_current(|filter| filter.to_string())
            .unwrap_or_default()
    }

    fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives).map_err(|err| err.to_string())?;
        self.handle.reload(filter).map_err(|err| err.to_string())
    }
}

/// Sets up logging to stderr as the flags say; returns the handle that changes the filter.
fn init_logging(level: Option<&str>, format: LogFormat) -> Result<ReloadableFilter, String> {
    use std::io::IsTerminal;
    let filter = match level {
        Some(directives) => {
            EnvFilter::try_new(directives).map_err(|err| format!("--log-level: {err}"))?
        }
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,metaprotocol_router=info")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init()
        .map_err(|err| format!("cannot set up logging: {err}"))?;
    Ok(ReloadableFilter { handle })
}

/// The most worker threads `run` starts: far more than any machine has cores, and few enough
/// that a mistyped count is an error rather than a runtime that cannot be built.
const MAX_WORKERS: usize = 1024;

/// Parses `--workers`: a count from 1 to [`MAX_WORKERS`].
fn worker_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("at least 1 (without --workers: one per core)".to_owned()),
        Ok(count) if count <= MAX_WORKERS => Ok(count),
        Ok(_) => Err(format!("at most {MAX_WORKERS}")),
        Err(err) => Err(err.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_control = match init_logging(cli.log_level.as_deref(), cli.log_format) {
        Ok(control) => Arc::new(control),
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let workers = match &cli.command {
        Command::Run { workers, .. } => *workers,
        _ => None,
    };
    // This runtime runs the accept loops, the admin API, health checks and updates; client
    // connections run on the proxy's own workers (`ProxyBuilder::workers`). It is sized like
    // them: script filters keep one instance per thread of it by default.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = workers {
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
            Command::Run {
                config,
                drain_time,
                linger,
                busy_poll,
                ..
            } => {
                run(
                    config,
                    drain_time.map(Into::into),
                    workers,
                    Parking {
                        linger: linger.map(Into::into),
                        busy_poll: busy_poll.map(Into::into),
                    },
                    log_control,
                )
                .await
            }
            Command::Validate { config } => validate(config).await,
            Command::Route {
                config,
                listener,
                metadata,
            } => route(config, &listener, metadata).await,
            Command::Demo => demo().await,
        }
    })
}

/// A proxy of `config` with the bundled codecs and the xDS client serving `dynamic.xds`.
fn builder(config: Config) -> ProxyBuilder {
    Proxy::builder(config)
        .codecs(metaprotocol_examples::codec_registry())
        .dynamic_source(metaprotocol_xds::XdsSource::default())
}

/// What `run` was told about workers that run out of work; `None`: the engine's default.
struct Parking {
    linger: Option<std::time::Duration>,
    busy_poll: Option<std::time::Duration>,
}

async fn run(
    path: PathBuf,
    drain_time: Option<std::time::Duration>,
    workers: Option<usize>,
    parking: Parking,
    log_control: Arc<ReloadableFilter>,
) -> ExitCode {
    // Listened for before anything starts, where the default handling of each would end the
    // process at once: a stop while the proxy starts (as its pod starts) ends it below, without
    // waiting for the start to end; logrotate's SIGHUP waits for the loop below.
    let (mut stop, mut hangup) = (StopSignals::listen(), HangupSignal::listen());
    // The text is kept to place errors found while building (a filter's config, say) in it.
    // A stop while the proxy starts (its config file on a mount that does not answer, its new
    // clusters' first health checks) ends it at once: nothing serves yet, so nothing is drained.
    let read = tokio::select! {
        read = Config::read_file_within(&path) => read,
        () = stop.next() => return stopped_while_starting(),
    };
    let text = match read {
        Ok(text) => text,
        Err(err) => {
            eprintln!("{}: cannot read: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::from_yaml(&text) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    print_warnings(&path, &config);
    let workers = workers
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let mut builder = builder(config)
        .config_source(format!("file:{}", path.display()))
        .log_control(log_control)
        .workers(workers);
    if let Some(drain_time) = drain_time {
        builder = builder.drain_time(drain_time);
    }
    if let Some(linger) = parking.linger {
        builder = builder.linger(linger);
    }
    match parking.busy_poll {
        Some(budget) => builder = builder.busy_poll(budget),
        None => {
            if let Some(poll) = kernel_idle_poll() {
                eprintln!(
                    "busy polling only on a shared core: the kernel polls {poll} when a core idles"
                );
            }
        }
    }
    let started = tokio::select! {
        started = builder.start() => started,
        () = stop.next() => return stopped_while_starting(),
    };
    let proxy = match started {
        Ok(proxy) => proxy,
        Err(StartError::Config(err)) => {
            eprintln!(
                "{}: invalid config: {}",
                path.display(),
                err.located_in(&text)
            );
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("{}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    for (name, address) in proxy.listeners() {
        eprintln!("listener {name} on {address}");
    }
    tokio::select! {
        () = stop.next() => {}
        _ = proxy.watch_file_started_with(&path, CONFIG_POLL, text.clone().into_bytes()) => {}
        () = reopen_logs_on_hangup(&proxy, &mut hangup) => {}
    }
    eprintln!("draining (a second SIGINT or SIGTERM stops at once)");
    tokio::select! {
        () = proxy.shutdown() => return ExitCode::SUCCESS,
        () = stop.next() => {}
        () = reopen_logs_on_hangup(&proxy, &mut hangup) => return ExitCode::SUCCESS,
    }
    // The operator will not wait for the drain (a second Ctrl-C): the calls still open are
    // answered with the protocol's "unavailable" error, as at the drain deadline, rather than
    // cut off with their connections; that takes a moment, which a third signal does not wait.
    eprintln!("second signal: answering the calls still open and stopping (a third stops now)");
    tokio::select! {
        () = proxy.shutdown_now() => {}
        () = stop.next() => {}
    }
    ExitCode::FAILURE
}

/// What `run` stopped by a signal before it served says, and its exit: a stop asked for is a
/// success, as after a drain.
fn stopped_while_starting() -> ExitCode {
    eprintln!("stopped while starting");
    ExitCode::SUCCESS
}

/// How often `run` looks at its config file.
const CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// SIGTERM and SIGINT, listened for from [`StopSignals::listen`] on: one sent before
/// [`StopSignals::next`] is awaited is not lost.
struct StopSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = signal(SignalKind::terminate())
                .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)))
                .ok();
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the next SIGTERM or SIGINT (Ctrl-C where there are no such signals).
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((terminate, interrupt)) = &mut self.streams {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP, listened for from [`HangupSignal::listen`] on.
struct HangupSignal {
    #[cfg(unix)]
    stream: Option<tokio::signal::unix::Signal>,
}

impl HangupSignal {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                stream: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }
}

/// Reopens the access log files on every SIGHUP (logrotate's `postrotate`); never returns
/// where there is no SIGHUP.
async fn reopen_logs_on_hangup(proxy: &Proxy, hangup: &mut HangupSignal) {
    #[cfg(unix)]
    if let Some(stream) = &mut hangup.stream {
        while stream.recv().await.is_some() {
            tracing::info!("SIGHUP: reopening the access logs");
            proxy.reopen_access_logs();
        }
    }
    std::future::pending::<()>().await;
}

/// Prints on stderr what in `config` (read from `path`) is valid but probably not meant.
fn print_warnings(path: &std::path::Path, config: &Config) {
    for warning in config.warnings() {
        eprintln!("{}: warning: {warning}", path.display());
    }
}

async fn validate(path: PathBuf) -> ExitCode {
    let text = match Config::read_file_within(&path).await {
        Ok(text) => text,
        Err(err) => {
            eprintln!("{}: invalid: cannot read: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    // Every error of the file at once; then errors found while building (unknown protocol,
    // unavailable policy ...), placed in the file too.
    let checked = Config::check_yaml(&text).and_then(|config| {
        builder(config.clone())
            .check()
            .map(|()| config)
            .map_err(|err| vec![err.located_in(&text)])
    });
    match checked {
        Ok(config) => {
            print_warnings(&path, &config);
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
        Err(errors) => {
            for err in errors {
                eprintln!("{}: invalid: {err}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

/// A `key=value` argument of `route`.
fn parse_metadata_entry(entry: &str) -> Result<(String, String), String> {
    entry
        .split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{entry}` is not key=value"))
}

async fn route(path: PathBuf, listener: &str, metadata: Vec<(String, String)>) -> ExitCode {
    let checked = Config::read_file_within(&path)
        .await
        .map_err(|err| format!("cannot read: {err}"))
        .and_then(|text| {
            let config = Config::from_yaml(&text).map_err(|err| err.to_string())?;
            builder(config)
                .route_check()
                .map_err(|err| err.located_in(&text).to_string())
        });
    let check = match checked {
        Ok(check) => check,
        Err(err) => {
            eprintln!("{}: invalid: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let metadata: Metadata = metadata
        .into_iter()
        .map(|(key, value)| (ByteStr::from(key), ByteStr::from(value)))
        .collect();
    let keys = RoutingKeys::new();
    let view = RoutingView {
        metadata: &metadata,
        keys: &keys,
    };
    match check.check(listener, &view) {
        Ok(Some(found)) => {
            println!("route: {}", found.route);
            println!("{}", describe(&found.destination));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("no route: the proxy answers with the protocol's \"no route\" error");
            ExitCode::FAILURE
        }
        Err(err) => {
            let known: Vec<&str> = check.listeners().collect();
            eprintln!("{err} (the config has: {})", known.join(", "));
            ExitCode::FAILURE
        }
    }
}

/// One line saying where a route sends a request.
fn describe(destination: &RouteDestination) -> String {
    let labels = |subset: &std::collections::BTreeMap<String, String>| {
        subset
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    match destination {
        RouteDestination::Cluster { name, subset } if subset.is_empty() => {
            format!("cluster: {name}")
        }
        RouteDestination::Cluster { name, subset } => {
            format!("cluster: {name} (subset {})", labels(subset))
        }
        RouteDestination::Split(sides) => {
            let sides: Vec<String> = sides
                .iter()
                .map(|side| match &side.subset {
                    Some(subset) if !subset.is_empty() => {
                        format!(
                            "{} (subset {}) weight {}",
                            side.cluster,
                            labels(subset),
                            side.weight
                        )
                    }
                    _ => format!("{} weight {}", side.cluster, side.weight),
                })
                .collect();
            format!("split, drawn per request: {}", sides.join(", "))
        }
        RouteDestination::DirectResponse(reply) => {
            format!("direct response: {}", reply.kind)
        }
        other => format!("{other:?}"),
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
