//! Worker threads for client connections: each runs a single-threaded runtime of its own, and
//! every connection lives on one of them from accept to close.
//!
//! A work-stealing runtime moves tasks between threads: a worker that runs out of work is woken
//! to steal some, and a request's data crosses cores on its way from the client's task to the
//! upstream connection's. On a busy proxy those wake-ups and cache misses cost more than the
//! second core gives. Here a connection, the upstream connections its requests use (see
//! [`current`] and the upstream pool) and their timers all stay on one thread, so workers share
//! only the proxy's state (routes, clusters, counters) and scale with the cores.
//!
//! The accept loops, the admin API, health checks and config updates keep running on the
//! embedder's runtime.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Handle, Runtime};
use tokio_util::sync::CancellationToken;

use super::{BusyPoll, Linger};

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker the calling thread is, if it is one of a [`Workers`]' threads.
pub(crate) fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// A set of worker threads. Cheap to clone; the threads stop once the last clone is dropped
/// (tasks still on them are dropped with their runtime).
#[derive(Clone, Debug)]
pub(crate) struct Workers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    handles: Box<[Handle]>,
    /// The worker the next connection goes to.
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a worker does when it runs out of work, before it sleeps until its sockets have news.
#[derive(Clone, Debug)]
pub(crate) struct Parking {
    /// Waits first while its clients pipeline (see [`linger`](super::linger)).
    pub linger: Linger,
    /// Otherwise looks at its sockets first while that pays (see [`busy_poll`](super::busy_poll)).
    pub busy_poll: BusyPoll,
}

impl Parking {
    /// Readies the calling thread, a worker running `runtime`.
    fn prepare_thread(&self, runtime: &Runtime) {
        self.linger.prepare_thread();
        self.busy_poll.prepare_thread();
        if let Some(glancer) = self.busy_poll.glancer() {
            runtime.spawn(glancer);
        }
    }

    fn before_park(&self) {
        // A look under way goes on; a new wait lingers if clients pipeline, or else looks.
        if !self.busy_poll.go_on() && !self.linger.before_park() {
            self.busy_poll.start();
        }
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one) that park as `parking` says.
    pub fn start(count: usize, parking: &Parking) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let stopped = stop.clone();
            let (parks, thread_parking) = (parking.clone(), parking.clone());
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(move || parks.before_park())
                .build()
                .and_then(|runtime| {
                    let handle = runtime.handle().clone();
                    std::thread::Builder::new()
                        .name(format!("metaprotocol-worker-{index}"))
                        .spawn(move || {
                            WORKER.with(|worker| worker.set(Some(index)));
                            thread_parking.prepare_thread(&runtime);
                            runtime.block_on(stopped.cancelled());
                        })?;
                    Ok(handle)
                });
            match started {
                Ok(handle) => handles.push(handle),
                Err(err) => {
                    // The workers already started stop too.
                    stop.cancel();
                    return Err(err);
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                handles: handles.into(),
                next: AtomicUsize::new(0),
                stop,
            }),
        })
    }

    /// Runs `task` on the next worker, in turn.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        let handles = &self.inner.handles;
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % handles.len();
        handles[index].spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use crate::stats::{Counter, DurationHistogram};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn parking() -> Parking {
        Parking {
            linger: Linger::new(
                crate::DEFAULT_LINGER,
                Counter::default(),
                DurationHistogram::default(),
            ),
            busy_poll: BusyPoll::new(
                crate::DEFAULT_BUSY_POLL,
                Counter::default(),
                Counter::default(),
            ),
        }
    }

    #[tokio::test]
    async fn tasks_go_to_each_worker_in_turn_and_know_where_they_run() -> TestResult {
        let workers = Workers::start(2, &parking())?;
        assert_eq!(current(), None, "the test's own thread is no worker");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            workers.spawn(async move {
                // A task spawned from a worker stays on it.
                let inner = tokio::spawn(async { current() }).await.ok().flatten();
                let _ = tx.send((current(), inner));
            });
            seen.push(rx.await?);
        }
        assert_eq!(
            seen,
            [
                (Some(0), Some(0)),
                (Some(1), Some(1)),
                (Some(0), Some(0)),
                (Some(1), Some(1))
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_threads() -> TestResult {
        let workers = Workers::start(1, &parking())?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        workers.spawn(async move {
            // Never completes on its own: it holds `tx` until its runtime drops it.
            std::future::pending::<()>().await;
            drop(tx);
        });
        drop(workers);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), rx).await;
        assert!(
            matches!(ended, Ok(Err(_))),
            "the worker's runtime stopped and dropped its task"
        );
        Ok(())
    }
}
