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
pub(crate) use connection::ConnectionTermination;
pub use idle_poll::IdlePoll;
pub use linger::DEFAULT_LINGER;
pub(crate) use linger::{LINGER_BUCKETS, Linger};
pub(crate) use load::Load;
pub(crate) use workers::{Parking, Workers};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::FutureExt;
use futures::future::{self, Either};
use metaprotocol_core::{CodecFactory, FilterChain};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;

use crate::accept::{AcceptFailures, AcceptingSocket};
use crate::access_log::AccessLogger;
use crate::route::RouteSlot;
use crate::router::KeptForLog;
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
/// the connections accepted with the old one drain (see [`ListenerContext::retired`]).
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
    /// What the router keeps of its requests' attempts for its access log: only what the log
    /// shows (each costs the request path).
    pub kept_for_log: KeptForLog,
    /// Its access log shows why the proxy closed a connection: the calls that end once it
    /// decided to record why ([`ConnectionTermination`]: two allocations a call).
    pub logs_connection_termination: bool,
    /// Its tracer, if it traces.
    pub tracer: Option<Tracer>,
    /// Counts its requests that reached no cluster in the Istio series, when they are on (the
    /// listener's next context counts with the same).
    pub istio: Option<Arc<IstioReporter>>,
    /// Nothing in flight and no frame for this long closes a connection.
    pub idle_timeout: Duration,
    /// A frame that takes longer than this to arrive closes its connection.
    pub frame_timeout: Duration,
    /// Connections past this many open are closed as soon as they are accepted.
    pub max_connections: Option<u32>,
    /// How its connections drain (the proxy's, shared by every listener).
    pub drain: Arc<DrainPolicy>,
    pub acceptor: Acceptor,
    /// The proxy-wide load this listener's connections add to.
    pub load: Arc<Load>,
    /// Cancelled when the connections accepted with this context must drain: when the
    /// listener stops (once its accept loop let go of the socket, see [`serve`]), or when a
    /// newer context replaces this one, so that a reload's filters (an rbac rule, say),
    /// timeouts and access log reach every client within the drain time, not only those that
    /// connect after it. A child of the listener's drain token, set when the context starts
    /// serving.
    pub retired: CancellationToken,
}

impl Drop for ListenerContext {
    /// The context is gone (replaced or removed, and its last connection closed): its series
    /// go with it, unless a newer context of the listener holds them.
    fn drop(&mut self) {
        self.scope.retire();
    }
}

/// How connections drain, for the whole proxy: how long a draining connection keeps serving,
/// as the config says when its drain starts (a reload changes it for the connections already
/// open too, as the shutdown that waits for them reads it), and the order to end every drain
/// under way at once.
#[derive(Debug, Default)]
pub(crate) struct DrainPolicy {
    /// The drain time, in nanoseconds.
    time: AtomicU64,
    /// Cancelled when the drains under way must end now: their connections answer what is
    /// still open as at their drain deadline, and close.
    end: CancellationToken,
}

impl DrainPolicy {
    /// The drain time a connection whose drain starts now keeps serving for.
    pub fn time(&self) -> Duration {
        Duration::from_nanos(self.time.load(Ordering::Relaxed))
    }

    /// Sets the drain time of the drains that start from now on.
    pub fn set_time(&self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.time.store(nanos, Ordering::Relaxed);
    }

    /// What a draining connection waits on to end its drain early.
    pub fn ending(&self) -> CancellationToken {
        self.end.clone()
    }

    /// Ends every drain under way, and every one that starts later, at once.
    pub fn end_now(&self) {
        self.end.cancel();
    }
}

/// An accepted client connection, counted open by its listener from its accept to its end:
/// what `max_connections` bounds, whether the connection serves yet, waits for its worker or
/// is in its TLS handshake. Dropped however the connection's task ends (or is dropped unrun),
/// it counts the connection closed. Derefs to the listener's context, which it holds in the
/// connection's stead.
pub(crate) struct Admitted(Arc<ListenerContext>);

impl Admitted {
    /// Counts a connection of `ctx`'s listener open.
    fn new(ctx: Arc<ListenerContext>) -> Self {
        ctx.stats.cx_total.inc();
        ctx.stats.cx_active.inc();
        Self(ctx)
    }

    /// The listener's context, shared.
    pub fn context(&self) -> &Arc<ListenerContext> {
        &self.0
    }
}

impl std::ops::Deref for Admitted {
    type Target = ListenerContext;

    fn deref(&self) -> &ListenerContext {
        &self.0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.stats.cx_active.dec();
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
    fn serve(&self, stream: TcpStream, peer: SocketAddr, ctx: Admitted, stop: CancellationToken) {
        let local = stream.local_addr().unwrap_or(peer);
        let listener = ctx.context().clone();
        match ctx.acceptor.clone() {
            // A task keeps what it captured for its whole life: the connection's description is
            // put together here, so that the task holds one pointer instead of the addresses
            // and identity it is made of. With `serve` returning the connection itself, a plain
            // connection's task went from 760 to 528 bytes, and 10,000 idle clients from
            // 29,200-29,420 to 27,136-27,448 KiB of RSS.
            Acceptor::Plain => {
                let info = connection::info(Acceptor::plain(&stream), peer, local, &ctx);
                self.spawn(stream, peer, listener, move |stream| {
                    connection::serve(stream, info, ctx, stop)
                });
            }
            // The handshake runs on the connection's task, never in the accept loop; a client
            // slow to finish it is bounded like a slow frame.
            Acceptor::Tls(tls) => self.spawn(stream, peer, listener, move |stream| async move {
                match tls.accept(stream, ctx.frame_timeout, &stop).await {
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
    /// loop; without workers, on this runtime. A panic in it ends this connection only
    /// ([`crate::panics::contained`]).
    fn spawn<F, S>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        listener: Arc<ListenerContext>,
        serve: S,
    ) where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(workers) = &self.workers else {
            tokio::spawn(self.track(contained(serve(stream), listener, peer)));
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "cannot hand a connection to a worker");
                return;
            }
        };
        workers.spawn(self.on_worker(stream, peer, listener, serve));
    }

    /// The task that serves `stream` on a worker: where it first runs, it registers the socket
    /// with the worker's event loop, then it is `serve(stream)`, tracked, its panic contained.
    ///
    /// A combinator, not an `async` block: an `async` block keeps what it captured (the
    /// socket, `serve` and all `serve` captured, the listener, the peer's address: about 100
    /// bytes) beside the future it awaits for the task's whole life, and an idle client costs
    /// its task's size; here the connection takes their place once it starts.
    fn on_worker<S, F>(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        listener: Arc<ListenerContext>,
        serve: S,
    ) -> impl Future<Output = ()> + use<S, F>
    where
        S: FnOnce(TcpStream) -> F,
        F: Future<Output = ()>,
    {
        let start = future::lazy(move |_| TcpStream::from_std(stream));
        self.track(start.then(move |stream| match stream {
            Ok(stream) => Either::Left(contained(serve(stream), listener, peer)),
            Err(err) => {
                tracing::debug!(%peer, error = %err, "a worker cannot take a connection");
                Either::Right(future::ready(()))
            }
        }))
    }

    fn track<F: Future<Output = ()>>(&self, task: F) -> TrackedFuture<TrackedFuture<F>> {
        self.proxy.track_future(self.listener.track_future(task))
    }
}

/// A connection's `task`, a panic in it counted and logged as `listener`'s client `peer`'s
/// ([`crate::panics::contained`]).
fn contained<F: Future<Output = ()>>(
    task: F,
    listener: Arc<ListenerContext>,
    peer: SocketAddr,
) -> impl Future<Output = ()> {
    crate::panics::contained(task, move |panic| {
        listener.stats.cx_panics.inc();
        tracing::error!(
            listener = %listener.name,
            %peer,
            panic,
            "a client connection's task panicked: the connection is closed and its calls in flight are dropped"
        );
    })
}

/// Accepts connections until `stop` (shutdown, or the listener's removal), serving each on its
/// own task; then lets go of the socket and cancels `drain`, which starts their drain. In that
/// order: a client told to go away that reconnects at once (a connection pool replacing the
/// connection) must find the socket closed, or still served, never connect into the backlog of
/// a socket about to close, which resets the connection and the calls it sent.
pub(crate) async fn serve(
    listener: Arc<TcpListener>,
    ctx: Arc<ArcSwap<ListenerContext>>,
    (stop, drain): (CancellationToken, CancellationToken),
    trackers: Trackers,
) {
    let mut failures = AcceptFailures::new(AcceptingSocket::Listener(ctx.load().name.clone()));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                failures.accepted();
                let ctx = ctx.load_full();
                if ctx
                    .max_connections
                    .is_some_and(|max| ctx.stats.cx_active.get() >= i64::from(max))
                {
                    ctx.stats.cx_refused.inc();
                    drop(stream);
                    continue;
                }
                let retired = ctx.retired.clone();
                trackers.serve(stream, peer, Admitted::new(ctx), retired);
            }
            Err(err) => {
                let counted = ctx.load().stats.cx_accept_errors.clone();
                failures.failed(&err, &counted).await;
            }
        }
    }
    // Closed here unless a listener at the same address took it over (and serves it).
    drop(listener);
    drain.cancel();
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;
    use crate::server::request::tests::listener;
    use crate::testing::Sized;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A plain client connection's task on a worker holds its connection, and beside it only
    /// what reports a panic and tracks the task: an idle client costs its task's size. Before,
    /// the task kept the socket, the listener, the peer's address and what the connection was
    /// made of beside the connection: 864 bytes for a connection of 664 (a task of 1,024 bytes
    /// with tokio's header and trailer, rounded up to 128), now 720 (896).
    #[tokio::test]
    async fn a_plain_connections_task_on_a_worker_is_little_more_than_its_connection() -> TestResult
    {
        let ctx = listener(Arc::new(Sized), "", &[])?;
        let server = std::net::TcpListener::bind("127.0.0.1:0")?;
        let client = std::net::TcpStream::connect(server.local_addr()?)?;
        let (accepted, peer) = server.accept()?;
        let trackers = Trackers {
            listener: TaskTracker::new(),
            proxy: TaskTracker::new(),
            workers: None,
        };
        let stop = CancellationToken::new();
        // The connection alone, on a socket of the runtime.
        let stream = TcpStream::connect(server.local_addr()?).await?;
        let info = connection::info(Acceptor::plain(&stream), peer, peer, &ctx);
        let connection = connection::serve(
            stream,
            Arc::clone(&info),
            Admitted::new(Arc::clone(&ctx)),
            stop.clone(),
        );
        // Its task as a plain connection's is made on a worker (`Trackers::serve`).
        let admitted = Admitted::new(Arc::clone(&ctx));
        let task = trackers.on_worker(accepted, peer, Arc::clone(&ctx), move |stream| {
            connection::serve(stream, info, admitted, stop)
        });
        // The panic's report (the listener, the peer's address), two trackers' tokens, and
        // the tags of the combinators' states.
        let beside = 8 + size_of::<SocketAddr>() + 2 * 8 + 16;
        assert!(
            size_of_val(&task) <= size_of_val(&connection) + beside,
            "a connection of {} bytes takes a task of {}",
            size_of_val(&connection),
            size_of_val(&task)
        );
        drop(client);
        Ok(())
    }
}
