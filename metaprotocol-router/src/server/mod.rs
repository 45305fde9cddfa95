//! The downstream server: accepts client connections on a listener and serves each with a
//! reader (decode, dispatch) and a writer (encode answers in batches).

mod connection;
mod request;

pub use request::{DEFAULT_ROUTE_TIMEOUT, TIMEOUT_MS_KEY};

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metaprotocol_core::{CodecFactory, FilterChain};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::route::RouteTable;
use crate::stats::ListenerStats;

/// What every connection of one listener shares.
pub(crate) struct ListenerContext {
    pub name: Arc<str>,
    pub codec: Arc<dyn CodecFactory>,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub filters: FilterChain,
    pub stats: ListenerStats,
    pub idle_timeout: Option<Duration>,
}

/// Accepts connections until `shutdown`, serving each on its own task tracked by `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(connection::serve_connection(
                    stream,
                    peer,
                    ctx.clone(),
                    shutdown.clone(),
                ));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %ctx.name, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
