//! The whole request path in one process: the engine on a runtime of its own (one worker
//! thread), an echo server upstream and the clients on another (the caller's thread), talking
//! over loopback. The engine's threads are the only ones that run engine code, which is what lets
//! [`crate::alloc`] count its allocations apart. [`Scheduler`] says which of the engine's threads
//! serves the client connections.

use std::net::SocketAddr;
use std::time::Duration;

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use metaprotocol_core::CodecRegistry;
use metaprotocol_router::{Config, Proxy};
use tokio::net::TcpListener;
use tokio::runtime::{Builder, Runtime};

use crate::echo;
use crate::load::{Connection, Plan};
use crate::proxy_config::{LISTENER, proxy_config_with};
use crate::wire::Protocol;

/// The most one batch of calls may take before its stragglers count as unanswered.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a client's calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the engine.
    Proxy,
    /// Straight to the echo server: the clients' and the server's own share.
    Direct,
}

/// Where the engine serves client connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    /// On the runtime that starts it ([`Proxy::start`]): here a work-stealing runtime of one
    /// worker thread, as an embedder that does not ask for workers serves them.
    #[default]
    Runtime,
    /// On one worker thread of the engine's own (`ProxyBuilder::workers(1)`), a single-threaded
    /// runtime, as `metaprotocol-proxy run` serves them; lingering and busy polling off, so that
    /// a worker's waits cost no instructions and only the request path is counted. The worker is
    /// not one of the runtime's threads: `on_proxy_thread` does not run on it.
    Worker,
}

/// A running engine with an echo server behind it.
#[derive(Debug)]
pub struct InProcess {
    protocol: Protocol,
    /// The clients' and the echo server's runtime, driven by the caller's thread.
    runtime: Runtime,
    proxy_addr: SocketAddr,
    echo_addr: SocketAddr,
    /// The engine and its runtime, taken on drop to stop them.
    engine: Option<(Proxy, Runtime)>,
}

impl InProcess {
    /// Starts the echo server and the engine for `protocol`; `on_proxy_thread` runs first on
    /// every thread the engine's runtime starts.
    pub fn start(protocol: Protocol, on_proxy_thread: fn()) -> anyhow::Result<Self> {
        Self::start_with(protocol, on_proxy_thread, "", Scheduler::Runtime)
    }

    /// [`InProcess::start`] with more fields on the engine's listener (see
    /// [`crate::proxy_config::proxy_config_with`]), its client connections served as
    /// `scheduler` says.
    pub fn start_with(
        protocol: Protocol,
        on_proxy_thread: fn(),
        listener_fields: &str,
        scheduler: Scheduler,
    ) -> anyhow::Result<Self> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let echo_listener = runtime.block_on(TcpListener::bind(loopback))?;
        let echo_addr = echo_listener.local_addr()?;
        runtime.spawn(echo::serve(echo_listener, protocol));

        let proxy_runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("proxy")
            .on_thread_start(on_proxy_thread)
            .enable_all()
            .build()?;
        let yaml = proxy_config_with(protocol, loopback, echo_addr, loopback, listener_fields);
        let config = Config::from_yaml(&yaml)?;
        let builder = Proxy::builder(config).codecs(codecs());
        let builder = match scheduler {
            Scheduler::Runtime => builder,
            Scheduler::Worker => builder
                .workers(1)
                .linger(Duration::ZERO)
                .busy_poll(Duration::ZERO),
        };
        let proxy = proxy_runtime.block_on(builder.start())?;
        let proxy_addr = proxy
            .listener_addr(LISTENER)
            .ok_or_else(|| anyhow::anyhow!("the proxy has no listener {LISTENER}"))?;
        Ok(Self {
            protocol,
            runtime,
            proxy_addr,
            echo_addr,
            engine: Some((proxy, proxy_runtime)),
        })
    }

    /// The engine's metrics, as `/metrics` shows them.
    pub fn metrics(&self) -> String {
        self.engine
            .as_ref()
            .map(|(proxy, _)| proxy.metrics().render())
            .unwrap_or_default()
    }

    /// A client connection with `payload_len`-byte payloads and `depth` calls in flight.
    pub fn connect(
        &self,
        via: Via,
        payload_len: usize,
        depth: usize,
    ) -> anyhow::Result<Connection> {
        let target = match via {
            Via::Proxy => self.proxy_addr,
            Via::Direct => self.echo_addr,
        };
        self.runtime
            .block_on(Connection::open(self.protocol, target, payload_len, depth))
    }

    /// Makes `calls` calls on `client`, keeping its depth in flight, and returns how long they
    /// took; failures are counted in the client's tally.
    pub fn calls(&self, client: &mut Connection, calls: u64) -> Duration {
        let plan = Plan::calls(calls, BATCH_TIMEOUT);
        let start = std::time::Instant::now();
        self.runtime.block_on(client.run(&plan));
        start.elapsed()
    }
}

/// Benches calls with `payload_len`-byte payloads through `via` on `bench`, 64 and then 1 in
/// flight, as `{name}/{depth}_in_flight` in `group`; panics if a call failed (its timing would
/// measure nothing).
pub fn bench_depths(
    group: &mut BenchmarkGroup<'_, WallTime>,
    bench: &InProcess,
    via: Via,
    name: &str,
    payload_len: usize,
) {
    for depth in [64, 1] {
        let mut client = bench
            .connect(via, payload_len, depth)
            .unwrap_or_else(|err| panic!("cannot connect: {err:#}"));
        group.bench_function(format!("{name}/{depth}_in_flight"), |b| {
            b.iter_custom(|calls| bench.calls(&mut client, calls));
        });
        let errors = client.tally.errors;
        assert_eq!(errors.total(), 0, "{name}, {depth} in flight: {errors:?}");
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // No drain: nothing is in flight when a bench ends, and the process is about to exit.
        if let Some((_proxy, runtime)) = self.engine.take() {
            runtime.shutdown_background();
        }
    }
}

/// The registry of the three codecs.
pub fn codecs() -> CodecRegistry {
    let mut registry = CodecRegistry::new();
    for register in [
        metaprotocol_dubbo::register,
        metaprotocol_thrift::register,
        metaprotocol_brpc::register,
    ] {
        register(&mut registry);
    }
    registry
}
