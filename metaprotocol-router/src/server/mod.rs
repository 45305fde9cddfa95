//! The downstream server: accepts client connections on a listener and serves each on one task
//! ([`connection`]) that owns the requests in flight on it ([`request`]); every request ends in
//! the completion stage ([`complete`]).

pub(crate) mod busy_poll;
mod complete;
mod connection;
mod idle_poll;
pub(crate) mod linger;
mod load;
mod request;
#[cfg(target_os = "linux")]
mod run_delay;
mod timers;
pub(crate) mod workers;

pub(crate) use busy_poll::BusyPoll;
pub use busy_poll::{DEFAULT_BUSY_POLL, kernel_idle_poll};
pub use idle_poll::IdlePoll;
pub use linger::DEFAULT_LINGER;
pub(crate) use linger::Linger;
pub(crate) use load::Load;
pub(crate) use workers::{Parking, Workers};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use metaprotocol_core::{CodecFactory, FilterChain};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;

use crate::access_log::AccessLogger;
use crate::route::RouteSlot;
use crate::stats::{IstioReporter, ListenerStats, MetricsScope};
use crate::trace::Tracer;
use crate::transport::Acceptor;

/// How long a client connection may be idle when its listener sets no `idle_timeout`: idle
/// connections cannot pile up forever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Starts counting the calling worker's waits for its core, where the kernel counts them
/// ([`run_delay`]).
fn watch_core() {
    #[cfg(target_os = "linux")]
    run_delay::watch_this_thread();
}

/// Whether busy processes share the calling worker's core: it waited for it a tenth of the time
/// or more since it last asked ([`run_delay`]); `false` where the kernel does not say, or the
/// worker does not watch ([`watch_core`]).
fn core_crowded(now: Instant) -> bool {
    #[cfg(target_os = "linux")]
    return run_delay::this_thread_crowded(now);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = now;
        false
    }
}

/// What every connection of one listener shares. A listener update publishes a new context;
/// connections keep the one they were accepted with.
pub(crate) struct ListenerContext {
    pub name: Arc<str>,
    pub codec: Arc<dyn CodecFactory>,
    pub routes: Arc<RouteSlot>,
    pub filters: FilterChain,
    pub stats: ListenerStats,
    /// Where `stats` (and the filters' series) live, held while the context is.
    pub scope: MetricsScope,
    /// Its access log, if it has one.
    pub access_log: Option<AccessLogger>,
    /// Its tracer, if it traces.
    pub tracer: Option<Tracer>,
    /// Counts its requests that reached no cluster in the Istio series, when they are on.
    pub istio: Option<IstioReporter>,
    /// Nothing in flight and no frame for this long closes a connection.
    pub idle_timeout: Duration,
    /// A frame that takes longer than this to arrive closes its connection.
    pub frame_timeout: Duration,
    /// Connections past this many open are closed as soon as they are accepted.
    pub max_connections: Option<u32>,
    pub drain_time: Duration,
    pub acceptor: Acceptor,
    /// The proxy-wide load this listener's connections add to.
    pub load: Arc<Load>,
}

impl Drop for ListenerContext {
    /// The context is gone (replaced or removed, and its last connection closed): its series
    /// go with it, unless a newer context of the listener holds them.
    fn drop(&mut self) {
        self.scope.retire();
    }
}

/// Where a listener's connection tasks run (on the proxy's [`Workers`], if it has them, else
/// on the runtime of the accept loop) and are tracked: by the listener (whose removal waits for
/// them) and by the proxy (whose shutdown waits for all).
#[derive(Clone, Debug)]
pub(crate) struct Trackers {
    pub listener: TaskTracker,
    pub proxy: TaskTracker,
    pub workers: Option<Workers>,
}

impl Trackers {
    /// Serves `stream` on a task of its own: a plain connection's task holds only what a plain
    /// connection needs (an idle client costs its task's size), a TLS one's also its handshake
    /// and session.
    fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        ctx: Arc<ListenerContext>,
        stop: CancellationToken,
    ) {
        let local = stream.local_addr().unwrap_or(peer);
        match ctx.acceptor.clone() {
            // A task keeps what it captured for its whole life: the connection's description is
            // put together here, so that the task holds one pointer instead of the addresses
            // and identity it is made of. With `serve` returning the connection itself, a plain
            // connection's task went from 760 to 528 bytes, and 10,000 idle clients from
            // 29,200-29,420 to 27,136-27,448 KiB of RSS.
            Acceptor::Plain => {
                let info = connection::info(Acceptor::plain(&stream), peer, local, &ctx);
                self.spawn(stream, peer, move |stream| {
                    connection::serve(stream, info, ctx, stop)
                });
            }
            // The handshake runs on the connection's task, never in the accept loop; a client
            // slow to finish it is bounded like a slow frame.
            Acceptor::Tls(tls) => self.spawn(stream, peer, move |stream| async move {
                match tls.accept(stream, ctx.frame_timeout).await {
                    Ok((stream, accepted)) => {
                        let info = connection::info(accepted, peer, local, &ctx);
                        connection::serve(stream, info, ctx, stop).await;
                    }
                    Err(err) => {
                        tracing::debug!(listener = %ctx.name, %peer, error = %err, "TLS handshake failed");
                    }
                }
            }),
        }
    }

    /// Runs `serve(stream)` on the next worker, the socket moved to the worker's own event
    /// loop; without workers, on this runtime.
    fn spawn<F, S>(&self, stream: TcpStream, peer: SocketAddr, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(workers) = &self.workers else {
            tokio::spawn(self.track(serve(stream)));
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "cannot hand a connection to a worker");
                return;
            }
        };
        workers.spawn(self.track(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "a worker cannot take a connection");
                }
            }
        }));
    }

    fn track<F: std::future::Future<Output = ()>>(
        &self,
        task: F,
    ) -> TrackedFuture<TrackedFuture<F>> {
        self.proxy.track_future(self.listener.track_future(task))
    }
}

/// Accepts connections until `stop` (shutdown, or the listener's removal), serving each on its
/// own task; `stop` also starts their drain.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<ArcSwap<ListenerContext>>,
    stop: CancellationToken,
    trackers: Trackers,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.load_full();
                if ctx
                    .max_connections
                    .is_some_and(|max| ctx.stats.cx_active.get() >= i64::from(max))
                {
                    ctx.stats.cx_refused.inc();
                    drop(stream);
                    continue;
                }
                trackers.serve(stream, peer, ctx, stop.clone());
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %ctx.load().name, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
