//! One classification of how an upstream attempt ended, read by retries, stats, local replies
//! and the request record alike (and, later, outlier detection and access logs).

use std::net::SocketAddr;
use std::sync::Arc;

use metaprotocol_core::{LocalReply, LocalReplyKind, ResponseFlags, ResponseStatus};

use crate::upstream::{AttemptResult, UpstreamError};

/// Why the connection of a request's last attempt could not be made (the system's reason, the
/// TLS handshake's, or the endpoint's backing off), kept in the record's extensions of a request
/// that failed so, for the access log's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: the record of
/// every other request keeps its size.
#[derive(Debug)]
pub(crate) struct TransportFailure(pub Arc<str>);

/// Where a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The proxy's side: the connection could not be made, a queue was full, a deadline passed.
    Local,
    /// The upstream: it answered, closed the connection, or stayed silent.
    Upstream,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    /// The upstream answered with this status.
    Answered(ResponseStatus),
    /// The upstream answered with a server error saying it refused the call without running it
    /// (the codec's [`Message::not_processed`]): safe to retry whatever the method does.
    NotProcessed,
    /// No connection could be opened; the request was not sent.
    ConnectFailure,
    /// The connection failed before the answer; `sent` if request bytes may have reached it.
    Reset { sent: bool },
    /// The attempt's deadline passed without an answer.
    Timeout,
    /// A queue was full; the request was not sent.
    Overflow,
    /// The request could not be encoded for the upstream.
    EncodeFailure,
    /// The upstream answered past the cluster's frame limit; the answer was passed over.
    ResponseTooLarge,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Upstream => "upstream",
        }
    }
}

/// Every kind of failed attempt, with its origin: the `upstream_rq_failures` series.
pub(crate) const FAILURES: [(Origin, &str); 7] = [
    (Origin::Local, "connect_failure"),
    (Origin::Local, "overflow"),
    (Origin::Local, "encode"),
    (Origin::Upstream, "reset_before_send"),
    (Origin::Upstream, "reset_after_send"),
    (Origin::Upstream, "timeout"),
    (Origin::Upstream, "response_too_large"),
];

impl AttemptOutcome {
    /// Classifies an attempt's result.
    pub fn of(result: &AttemptResult) -> Self {
        match result {
            Ok(response) if response.not_processed => Self::NotProcessed,
            Ok(response) => Self::Answered(response.status),
            Err(UpstreamError::ConnectFailed { .. }) => Self::ConnectFailure,
            Err(UpstreamError::Reset { sent }) => Self::Reset { sent: *sent },
            Err(UpstreamError::Overflow) => Self::Overflow,
            Err(UpstreamError::Expired | UpstreamError::TimedOut) => Self::Timeout,
            Err(UpstreamError::Encode(_)) => Self::EncodeFailure,
            Err(UpstreamError::ResponseTooLarge { .. }) => Self::ResponseTooLarge,
        }
    }

    /// Where it came from.
    pub fn origin(&self) -> Origin {
        match self {
            Self::ConnectFailure | Self::Overflow | Self::EncodeFailure => Origin::Local,
            Self::Answered(_)
            | Self::NotProcessed
            | Self::Reset { .. }
            | Self::Timeout
            | Self::ResponseTooLarge => Origin::Upstream,
        }
    }

    /// The status of an answer, `None` when there was none.
    pub fn answered(&self) -> Option<ResponseStatus> {
        match self {
            Self::Answered(status) => Some(*status),
            Self::NotProcessed => Some(ResponseStatus::ServerError),
            _ => None,
        }
    }

    /// True if no byte of the request reached the upstream: retrying cannot run it twice.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Self::ConnectFailure | Self::Overflow | Self::Reset { sent: false }
        )
    }

    /// The index of this failure in [`FAILURES`]; `None` when the upstream answered.
    pub fn failure(&self) -> Option<usize> {
        let reason = match self {
            Self::Answered(_) | Self::NotProcessed => return None,
            Self::ConnectFailure => "connect_failure",
            Self::Overflow => "overflow",
            Self::EncodeFailure => "encode",
            Self::Reset { sent: false } => "reset_before_send",
            Self::Reset { sent: true } => "reset_after_send",
            Self::Timeout => "timeout",
            Self::ResponseTooLarge => "response_too_large",
        };
        FAILURES
            .iter()
            .position(|(origin, r)| *r == reason && *origin == self.origin())
    }

    /// The response flags the outcome adds to the request's record.
    pub fn flags(&self) -> ResponseFlags {
        match self {
            Self::Answered(_)
            | Self::NotProcessed
            | Self::EncodeFailure
            | Self::ResponseTooLarge => ResponseFlags::NONE,
            Self::ConnectFailure => ResponseFlags::UPSTREAM_CONNECT_FAILURE,
            Self::Reset { .. } => ResponseFlags::UPSTREAM_RESET,
            Self::Timeout => ResponseFlags::UPSTREAM_TIMEOUT,
            Self::Overflow => ResponseFlags::UPSTREAM_OVERFLOW,
        }
    }

    /// The local reply that reports a failed attempt to the client (`None` when it answered).
    pub fn local_reply(
        &self,
        error: Option<&UpstreamError>,
        endpoint: SocketAddr,
        route: &str,
    ) -> Option<LocalReply> {
        let (kind, message) = match self {
            Self::Answered(_) | Self::NotProcessed => return None,
            Self::Timeout => (
                LocalReplyKind::Timeout,
                format!(
                    "metaprotocol-proxy: upstream {endpoint} did not answer in time (route {route})"
                ),
            ),
            Self::Overflow => (
                LocalReplyKind::OverLimit,
                format!("metaprotocol-proxy: upstream {endpoint} is overloaded"),
            ),
            Self::EncodeFailure => (
                LocalReplyKind::BadRequest,
                describe(error, endpoint, "cannot encode the request"),
            ),
            Self::ConnectFailure => (
                LocalReplyKind::UpstreamConnectFailure,
                describe(error, endpoint, "cannot connect"),
            ),
            Self::Reset { .. } => (
                LocalReplyKind::UpstreamReset,
                describe(error, endpoint, "upstream connection reset"),
            ),
            Self::ResponseTooLarge => (
                LocalReplyKind::Internal,
                describe(error, endpoint, "the answer is over the frame limit"),
            ),
        };
        Some(LocalReply::new(kind, message))
    }
}

fn describe(error: Option<&UpstreamError>, endpoint: SocketAddr, fallback: &str) -> String {
    match error {
        Some(error) => format!("metaprotocol-proxy: upstream {endpoint}: {error}"),
        None => format!("metaprotocol-proxy: upstream {endpoint}: {fallback}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_never_left_are_safe_to_resend() {
        let refused: AttemptResult = Err(UpstreamError::ConnectFailed {
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            reason: "refused".into(),
        });
        let outcome = AttemptOutcome::of(&refused);
        assert_eq!(outcome, AttemptOutcome::ConnectFailure);
        assert!(outcome.never_sent());
        assert_eq!(outcome.origin(), Origin::Local);
        assert!(
            outcome
                .flags()
                .contains(ResponseFlags::UPSTREAM_CONNECT_FAILURE)
        );
        assert_eq!(outcome.failure(), Some(0));
        assert_eq!(
            AttemptOutcome::Reset { sent: true }
                .failure()
                .map(|i| FAILURES[i].1),
            Some("reset_after_send")
        );
        assert_eq!(
            AttemptOutcome::Answered(metaprotocol_core::ResponseStatus::Ok).failure(),
            None
        );
        assert!(AttemptOutcome::Reset { sent: false }.never_sent());
        assert!(!AttemptOutcome::Reset { sent: true }.never_sent());
        assert!(!AttemptOutcome::Timeout.never_sent());
        let reply =
            AttemptOutcome::Timeout.local_reply(None, SocketAddr::from(([127, 0, 0, 1], 2)), "r");
        assert!(reply.is_some_and(|r| r.kind == LocalReplyKind::Timeout && r.message.contains("route r")));
    }
}
