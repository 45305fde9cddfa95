//! One decoded frame.

use std::time::Duration;

use bytes::Bytes;

use crate::{Metadata, WireVariant};

/// What a frame is, as far as the engine is concerned. More kinds (streams) may come, so
/// matches need a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// A call that expects a response.
    Request,
    /// A call that expects no response; it completes when written upstream.
    Oneway,
    /// A response to a [`MessageKind::Request`]; its outcome is in [`Message::status`].
    Response,
    /// A liveness probe that the receiving codec answers locally; never routed.
    Heartbeat,
    /// An answer to a heartbeat; consumed by whoever sent the heartbeat, never routed.
    HeartbeatReply,
    /// The peer is going away (Dubbo's READONLY event): send it no new requests on this
    /// connection; those in flight still get their answers. Never routed.
    GoAway,
}

impl MessageKind {
    /// True for frames that travel from client to server ([`Request`](Self::Request),
    /// [`Oneway`](Self::Oneway)).
    pub fn is_call(self) -> bool {
        matches!(self, Self::Request | Self::Oneway)
    }
}

/// The outcome a response reports, classified for metrics, retries and outlier detection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseStatus {
    /// The call succeeded (or the frame is not a response).
    #[default]
    Ok,
    /// The service answered with a declared, business-level exception (a Thrift exception
    /// declared in the IDL, a Dubbo "exception" result). The server is healthy.
    ApplicationError,
    /// The server or its framework failed the call (Dubbo status other than OK, Thrift
    /// `TApplicationException`, bRPC `error_code`).
    ServerError,
}

/// Codec-private positions within [`Message::frame`], recorded at decode time so that encode can
/// patch the frame without parsing it again. The engine never reads or changes them; each codec
/// documents its own slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameLayout(pub [u32; 6]);

/// One decoded frame: what it is, whom it answers, what it says about itself, and its bytes.
///
/// `frame` holds the complete original frame (header and body), split off the read buffer
/// without copying. Forwarding a message writes these bytes, patched in place, rather than a
/// re-serialization.
#[derive(Clone, Debug)]
pub struct Message {
    /// Request, one-way, response or heartbeat.
    pub kind: MessageKind,
    /// The outcome, for responses; [`ResponseStatus::Ok`] otherwise.
    pub status: ResponseStatus,
    /// The id that pairs a response with its request on one connection (Dubbo request id,
    /// Thrift seqid, bRPC correlation id).
    pub request_id: u64,
    /// The routable key/values extracted from the frame.
    pub metadata: Metadata,
    /// The complete original frame.
    pub frame: Bytes,
    /// The encoding variant of this frame within its protocol (Thrift transport and protocol,
    /// for example); `WireVariant::DEFAULT` for protocols with one encoding.
    pub variant: WireVariant,
    /// Codec-private offsets into `frame`.
    pub layout: FrameLayout,
    /// Set by the codec when the frame is a well-formed request that cannot be proxied (an
    /// unsupported serialization, say): the engine answers it with a `BadRequest` local reply
    /// carrying this reason, and the connection stays open.
    pub reject_reason: Option<&'static str>,
    /// The caller's own deadline for the call, when the protocol carries one (bRPC
    /// `timeout_ms`, Dubbo's `_TO` countdown or a string `timeout` attachment): the engine
    /// never waits longer than this, whatever the route allows.
    pub timeout: Option<Duration>,
    /// Set by the codec on a [`ResponseStatus::ServerError`] response whose status says the
    /// server refused the call without processing it (Dubbo `SERVER_THREADPOOL_EXHAUSTED`,
    /// bRPC `ELIMIT`/`EOVERCROWDED`/`ELOGOFF`, fbthrift's `LOADSHEDDING`): another server may
    /// take the call, and retrying it cannot run it twice.
    pub not_processed: bool,
}

impl Message {
    /// A message of `kind` over `frame`, with empty metadata (over the frame: strings the codec
    /// slices from it are kept as spans) and default layout.
    // Inlined into codecs (another crate): built in place, not copied (it is large).
    #[inline]
    pub fn new(kind: MessageKind, request_id: u64, frame: Bytes) -> Self {
        Self {
            kind,
            status: ResponseStatus::Ok,
            request_id,
            metadata: Metadata::over(frame.clone()),
            frame,
            variant: WireVariant::DEFAULT,
            layout: FrameLayout::default(),
            reject_reason: None,
            timeout: None,
            not_processed: false,
        }
    }

    /// An empty request over no frame: a place for [`Codec::decode_into`](crate::Codec::decode_into)
    /// to decode into.
    pub fn empty() -> Self {
        Self::new(MessageKind::Request, 0, Bytes::new())
    }

    /// Makes this message what [`Message::new`] returns for the same arguments, in place: a
    /// decoder that fills a reused message writes its fields rather than a whole new message
    /// (a copy of about 440 bytes). What it held goes (its frame, the metadata's strings), and
    /// metadata that had outgrown its inline room gives that allocation back, so that a reused
    /// message holds little more than a new one (the small heap room for constants and rendered
    /// text that [`Metadata::reset_over`] keeps, so that a reused message does not allocate it
    /// again).
    #[inline]
    pub fn reset(&mut self, kind: MessageKind, request_id: u64, frame: Bytes) {
        // Every field named: a field added to `Message` is one this must set.
        let Self {
            kind: old_kind,
            status,
            request_id: old_request_id,
            metadata,
            frame: old_frame,
            variant,
            layout,
            reject_reason,
            timeout,
            not_processed,
        } = self;
        *old_kind = kind;
        *status = ResponseStatus::Ok;
        *old_request_id = request_id;
        metadata.reset_over(frame.clone());
        *old_frame = frame;
        *variant = WireVariant::DEFAULT;
        *layout = FrameLayout::default();
        *reject_reason = None;
        *timeout = None;
        *not_processed = false;
    }
}
