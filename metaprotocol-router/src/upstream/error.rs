//! Why an upstream attempt produced no response, and whether the request may have reached the
//! upstream (what decides if a retry is safe).

use std::net::SocketAddr;
use std::sync::Arc;

use metaprotocol_core::CodecError;

/// An upstream attempt that produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The connection could not be opened (or the endpoint is backing off after failures); the
    /// request was never sent.
    #[error("connect to {address} failed: {reason}")]
    ConnectFailed {
        /// The endpoint.
        address: SocketAddr,
        /// The system's reason, or why the endpoint is backing off (one reason shared by the
        /// requests refused in one pause).
        reason: Arc<str>,
    },
    /// The connection failed or closed before the answer arrived. `sent` is false when no byte
    /// of the request had been written, so the upstream cannot have seen it.
    #[error("upstream connection reset")]
    Reset {
        /// Whether bytes of the request may have reached the upstream.
        sent: bool,
    },
    /// The connection's queue was full; the request was never sent.
    #[error("upstream connection overloaded")]
    Overflow,
    /// The request's deadline passed before it could be written; it was never sent.
    #[error("deadline passed before the request could be written upstream")]
    Expired,
    /// No answer arrived in time.
    #[error("no answer in time")]
    TimedOut,
    /// The request could not be encoded for the upstream.
    #[error("cannot encode the request upstream: {0}")]
    Encode(CodecError),
    /// The upstream's answer was larger than the cluster's `max_frame_bytes`; the proxy passed
    /// over it.
    #[error("the answer of {size} bytes is over the cluster's max_frame_bytes of {max}")]
    ResponseTooLarge {
        /// The answer's length.
        size: u64,
        /// The cluster's limit.
        max: usize,
    },
}

impl UpstreamError {
    /// True if the request certainly never reached the upstream (a retry cannot duplicate it).
    pub fn never_sent(&self) -> bool {
        match self {
            Self::ConnectFailed { .. } | Self::Overflow | Self::Expired | Self::Encode(_) => true,
            Self::Reset { sent } => !sent,
            Self::TimedOut | Self::ResponseTooLarge { .. } => false,
        }
    }

    /// True if the connection could not be opened.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::ConnectFailed { .. })
    }
}
