//! Why an upstream attempt failed, and what that means for retries and replies.

use metaprotocol_core::{CodecError, LocalReplyKind};

/// An upstream attempt that produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The connection could not be opened; the request was never sent, so a retry is safe.
    #[error("connect to {address} failed: {reason}")]
    ConnectFailed {
        /// The endpoint.
        address: std::net::SocketAddr,
        /// The system's reason.
        reason: String,
    },
    /// The connection failed or closed with the request in flight.
    #[error("upstream connection reset")]
    Reset,
    /// The request could not be encoded for the upstream.
    #[error("cannot encode the request upstream: {0}")]
    Encode(CodecError),
}

impl UpstreamError {
    /// True if the request certainly never reached the upstream.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::ConnectFailed { .. })
    }

    /// The local reply that reports this failure to the client.
    pub fn reply_kind(&self) -> LocalReplyKind {
        match self {
            Self::ConnectFailed { .. } | Self::Reset => LocalReplyKind::UpstreamReset,
            Self::Encode(_) => LocalReplyKind::BadRequest,
        }
    }
}
