//! An HTTP server with bounds on what its clients can hold, for the admin API and for
//! embedders' own HTTP fronts ([`serve_http`]): one task per connection, at most
//! [`MAX_CONNECTIONS`] at once (when they are all taken, the idle ones are closed for the
//! connections waiting: a readiness probe is not held behind clients that keep connections
//! open and send nothing), backing off from failed accepts as the listeners do
//! ([`crate::accept`]), with a deadline on every request's headers (a client that trickles
//! them, or leaves a connection idle, is cut off), on the rest of the request (its body and its
//! handling) and on each write of an answer (a client that reads none is cut off), and a
//! graceful stop.

mod write_stall;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use write_stall::WriteStall;

use crate::accept::{AcceptFailures, AcceptingSocket};
use crate::stats::Counter;

/// How long a client has to send a request's headers, and how long an idle keep-alive
/// connection stays open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take once its headers are in, reading its body and answering it,
/// unless the caller of [`serve_http_within`] says otherwise.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in progress may finish once the server stops.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Connections served at once; more wait in the listen queue until one ends.
const MAX_CONNECTIONS: usize = 64;
/// How long writing an answer may wait on a client that takes none of it before its connection
/// is closed: hyper's own deadlines cover reading requests, not writing answers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` resolves, then lets requests in progress finish for
/// a second, with the bounds the admin API has: at most 64 connections at once (more wait in
/// the listen queue while those with a request in progress answer it, the idle ones closing
/// for them), 10 s for a request's headers and for an idle keep-alive connection, 30 s
/// for the rest of a request (its body and its handling; a `408` answers one that takes
/// longer), and 10 s for each write of an answer to a client that takes none of it. Without
/// such bounds (`axum::serve` has none), a client can hold a connection and its task for good.
/// A failed accept (out of file descriptors, say) is tried again every 50 ms, logged with
/// `http_server=embedded` at the first failure of a run and when it accepts again; the failures
/// are not counted in any metric the caller can read (the proxy's admin API counts its own in
/// `metaprotocol_admin_accept_errors_total`).
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    stop: impl std::future::Future<Output = ()>,
) {
    serve_http_within(listener, app, stop, REQUEST_TIMEOUT).await;
}

/// [`serve_http`], with `request_timeout` for the rest of a request once its headers are in
/// (its body and its handling) in place of 30 s. An app with deadlines of its
/// own (a gateway's bound on the calls it makes, say) needs a longer one, so that its own answer
/// (a `504`), not the server's `408`, tells a client that a call took too long.
pub async fn serve_http_within(
    listener: TcpListener,
    app: Router,
    stop: impl std::future::Future<Output = ()>,
    request_timeout: Duration,
) {
    let token = CancellationToken::new();
    let accepts = Accepts {
        server: "embedded",
        // Counted nowhere a caller reads: the loop shared with the admin API takes a counter,
        // and an embedder's app keeps its own metrics.
        errors: Counter::default(),
    };
    let serving = serve(listener, app, token.clone(), request_timeout, accepts);
    tokio::pin!(serving);
    tokio::select! {
        () = serving.as_mut() => {}
        () = stop => {
            token.cancel();
            serving.await;
        }
    }
}

/// What a server's failed accepts are logged and counted as.
pub(crate) struct Accepts {
    /// Its name in the log lines: `http_server=<server>`.
    pub(crate) server: &'static str,
    /// Counts them.
    pub(crate) errors: Counter,
}

/// [`serve_http_within`] until `stop` is cancelled; a failed accept is logged and counted as
/// `accepts` says, and tried again as the listeners do ([`AcceptFailures`]).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    request_timeout: Duration,
    accepts: Accepts,
) {
    let app = app.layer(middleware::from_fn(move |request, next| {
        within_deadline(request_timeout, request, next)
    }));
    let connections = TaskTracker::new();
    let room = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Told when every place is taken: each connection closes once it has no request in
    // progress (at once if idle), as nginx frees idle keep-alive connections when it runs out.
    let full = Arc::new(tokio::sync::Notify::new());
    let mut failures = AcceptFailures::new(AcceptingSocket::HttpServer(accepts.server));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                failures.accepted();
                stream
            }
            Err(err) => {
                failures.failed(&err, &accepts.errors).await;
                continue;
            }
        };
        // One connection waits here at most (the others in the listen queue) while the idle
        // ones close for it.
        let permit = match room.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                full.notify_waiters();
                let permit = tokio::select! {
                    _ = stop.cancelled() => break,
                    permit = room.clone().acquire_owned() => permit,
                };
                // The semaphore is never closed.
                let Ok(permit) = permit else { break };
                permit
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        let full = Arc::clone(&full);
        connections.spawn(async move {
            let _permit = permit;
            let full = full.notified();
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let stream = WriteStall::new(stream, WRITE_TIMEOUT);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::pin!(full);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = full => connection.as_mut().graceful_shutdown(),
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(STOP_GRACE, connection).await;
                    return;
                }
            }
            // Closing once its request in progress, if any, is answered.
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    let _ = tokio::time::timeout(STOP_GRACE, connection).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(STOP_GRACE, connections.wait()).await;
}

/// When the server answers a request `408` and drops its handling: a handler that must not be
/// cut midway (an update of the running config) finishes or gives up before it, and says which.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestDeadline(pub(crate) tokio::time::Instant);

/// Answers 408 to a request whose body or handling takes longer than `timeout` (a client that
/// announces a body and stops sending it holds nothing for long).
async fn within_deadline(timeout: Duration, mut request: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + timeout;
    request.extensions_mut().insert(RequestDeadline(deadline));
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "the request took too long\n").into_response(),
    }
}
