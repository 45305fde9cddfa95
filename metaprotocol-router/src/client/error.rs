//! What a [`RouterClient`](super::RouterClient) call fails with.

use metaprotocol_core::{LocalReply, LocalReplyKind};

/// A call that got no response from a service: the engine's own answer, the one a proxy
/// client would get as the protocol's error reply (no route, timeout, upstream reset, refused
/// by a filter ...). A response the service sent, even an error one, is not a `CallError`: it is
/// the call's `Ok` value with its [`ResponseStatus`](metaprotocol_core::ResponseStatus).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reply}")]
pub struct CallError {
    reply: LocalReply,
}

impl CallError {
    pub(crate) fn new(reply: LocalReply) -> Self {
        Self { reply }
    }

    /// Why the call failed.
    pub fn kind(&self) -> LocalReplyKind {
        self.reply.kind
    }

    /// A readable explanation.
    pub fn message(&self) -> &str {
        &self.reply.message
    }

    /// The local reply a proxy would have answered with: encode it with
    /// [`Codec::encode_local_reply`](metaprotocol_core::Codec::encode_local_reply) to pass it on
    /// in the protocol's own terms.
    pub fn reply(&self) -> &LocalReply {
        &self.reply
    }
}

impl From<CallError> for LocalReply {
    fn from(err: CallError) -> Self {
        err.reply
    }
}
