//! What an accept loop does when an accept fails (out of file descriptors, say), for the
//! listeners ([`crate::server`]) and the HTTP servers ([`crate::http_server`]) alike: it counts
//! the failure, waits [`ACCEPT_BACKOFF`] and tries again, and logs a run of failures at its first
//! and its end, not at every try (twenty a second for as long as the descriptors lack).

use std::time::Duration;

use tracing::field::{DisplayValue, display};

use crate::stats::Counter;

/// How long an accept loop waits after a failed accept before it tries again: the failure
/// lasts, and the pending connection stays ready to accept, so trying again at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Whose accepts fail, as the log lines name it.
#[derive(Clone, Debug)]
pub(crate) enum AcceptingSocket {
    /// A listener of the config, by name: `listener=<name>`.
    Listener(std::sync::Arc<str>),
    /// An HTTP server: `http_server=admin` for the admin API.
    HttpServer(&'static str),
}

// Shown as they are, unquoted, as a field given with `%` is.
impl AcceptingSocket {
    fn listener(&self) -> Option<DisplayValue<&str>> {
        match self {
            Self::Listener(name) => Some(display(name)),
            Self::HttpServer(_) => None,
        }
    }

    fn http_server(&self) -> Option<DisplayValue<&'static str>> {
        match self {
            Self::Listener(_) => None,
            Self::HttpServer(name) => Some(display(name)),
        }
    }
}

/// One accept loop's run of failed accepts: how many failed in a row since the last that
/// succeeded.
#[derive(Debug)]
pub(crate) struct AcceptFailures {
    socket: AcceptingSocket,
    failed: u64,
}

// The log lines carry one field naming the socket, `listener` or `http_server`: a field given
// `None` is left out of the line.
impl AcceptFailures {
    /// No failures yet for `socket`'s accept loop.
    pub(crate) fn new(socket: AcceptingSocket) -> Self {
        Self { socket, failed: 0 }
    }

    /// An accept succeeded: a run of failures, if any, ends (and is logged).
    pub(crate) fn accepted(&mut self) {
        if self.failed > 0 {
            tracing::info!(
                listener = self.socket.listener(),
                http_server = self.socket.http_server(),
                failed = self.failed,
                "accepting connections again"
            );
            self.failed = 0;
        }
    }

    /// An accept failed with `error`: counts it in `counted`, logs it as a warning if it begins
    /// a run (else at debug level), then waits before the loop tries again.
    pub(crate) async fn failed(&mut self, error: &std::io::Error, counted: &Counter) {
        counted.inc();
        if self.failed == 0 {
            tracing::warn!(
                listener = self.socket.listener(),
                http_server = self.socket.http_server(),
                %error,
                "accept failed; trying again every 50 ms until it succeeds"
            );
        } else {
            tracing::debug!(
                listener = self.socket.listener(),
                http_server = self.socket.http_server(),
                %error,
                "accept failed"
            );
        }
        self.failed += 1;
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}
