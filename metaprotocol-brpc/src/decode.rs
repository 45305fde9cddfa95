//! Turning one complete baidu_std frame into a [`Message`].

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use metaprotocol_core::{
    CodecError, Message, MessageKind, Metadata, MetadataStr, ResponseStatus, Side, keys,
};

use crate::correlation;
use crate::header::{FrameHeader, HEADER_LEN};
use crate::keys as brpc_keys;
use crate::layout::BrpcLayout;
use crate::meta::{RequestMetaView, ResponseMetaView, RpcMetaView};
use crate::reply::errno;
use crate::wire::check_message;

/// Why a request cannot be proxied.
mod reject {
    pub(super) const NO_REQUEST_META: &str = "RpcMeta carries no request meta";
    pub(super) const NO_SERVICE_OR_METHOD: &str =
        "RpcRequestMeta lacks a UTF-8 service_name or method_name";
    pub(super) const STREAMING: &str = "bRPC streaming RPC is not supported";
    pub(super) const CHUNKED: &str = "bRPC chunk_info is not supported";
    pub(super) const ATTACHMENT_SIZE: &str =
        "attachment_size is negative or larger than the body after the meta";
    pub(super) const PAYLOAD: &str = "the request payload is not well-formed protobuf";
}

/// `ContentType` of a protobuf payload (brpc's `options.proto`).
const CONTENT_TYPE_PB: i32 = 0;
/// `CompressType` of an uncompressed payload.
const COMPRESS_TYPE_NONE: i32 = 0;

/// Decodes `frame`, whose header is `header`, read by a codec on `side`, into `message`.
///
/// The meta is read field by field; payload and attachment are never copied. A request's
/// payload is checked (see [`payload_reject_reason`]); a response's is forwarded unread.
pub(crate) fn decode_frame(
    message: &mut Message,
    frame: Bytes,
    header: FrameHeader,
    side: Side,
) -> Result<(), CodecError> {
    let meta_end = header.meta_end();
    let frame_len = frame.len();
    message.reset(MessageKind::Request, 0, frame);
    // User fields go straight into the message's metadata.
    let mut view = RpcMetaView::default();
    view.read(
        &message.frame,
        HEADER_LEN..meta_end,
        Some(&mut message.metadata),
    )?;
    let correlation_id = view.correlation_id.unwrap_or(0);
    message.request_id = match side {
        Side::Downstream => correlation_id,
        Side::Upstream => correlation::from_wire(correlation_id),
    };
    message.layout = BrpcLayout::new(
        meta_end,
        view.correlation_id_span.as_ref(),
        view.authentication_data.is_some(),
    )
    .to_frame_layout();
    let payload = payload_range(frame_len, meta_end, view.attachment_size);
    match (side, view.request.take(), view.response.take()) {
        (Side::Downstream, Some(request), _) => {
            let payload = payload.and_then(|range| message.frame.get(range));
            message.reject_reason = request_reject_reason(&view, &request)
                .or_else(|| payload_reject_reason(&view, payload));
            message.timeout = request
                .timeout_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .filter(|ms| *ms > 0)
                .map(std::time::Duration::from_millis);
            add_request_metadata(&mut message.metadata, request);
        }
        (Side::Downstream, None, None) => message.reject_reason = Some(reject::NO_REQUEST_META),
        // A response, from the server or (to be ignored by the engine) from a client. As brpc
        // clients do, every frame from a server is read as the answer its correlation_id names,
        // a request meta beside the response meta or in its place ignored (Jprotobuf-rpc-socket
        // answers in its request's meta), and a missing response meta as success. One whose
        // sizes do not add up is forwarded as it came, as a failure: its frame is delimited, so
        // the connection, which other clients' calls may share, stays up.
        (_, _, response) => {
            message.kind = MessageKind::Response;
            let response = response.unwrap_or_default();
            if response.error_code != 0 || payload.is_none() {
                message.status = ResponseStatus::ServerError;
                message.not_processed = errno::is_not_processed(response.error_code);
            }
            add_response_metadata(&mut message.metadata, response);
        }
    }
    Ok(())
}

/// Where the payload of a frame of `frame_len` bytes lies: between the meta and the
/// attachment, if `attachment_size` fits in what follows the meta.
fn payload_range(frame_len: usize, meta_end: usize, attachment_size: i32) -> Option<Range<usize>> {
    let attachment = usize::try_from(attachment_size).ok()?;
    let payload_end = frame_len.checked_sub(attachment)?;
    (meta_end <= payload_end).then_some(meta_end..payload_end)
}

fn request_reject_reason(view: &RpcMetaView, request: &RequestMetaView) -> Option<&'static str> {
    if request.service_name.is_none() || request.method_name.is_none() {
        Some(reject::NO_SERVICE_OR_METHOD)
    } else if view.has_stream_settings {
        Some(reject::STREAMING)
    } else if view.has_chunk_info {
        Some(reject::CHUNKED)
    } else {
        None
    }
}

/// Why a request's body must not be forwarded: an attachment that does not fit, or an
/// uncompressed protobuf payload whose wire format is malformed.
///
/// The frame is delimited, so such a request is its sender's problem alone: brpc servers
/// answer it with `EREQUEST` and so does the proxy, rather than send it on a connection that
/// other clients share to a server that might close it. Compressed and non-protobuf (JSON ...)
/// payloads are not read.
fn payload_reject_reason(view: &RpcMetaView, payload: Option<&[u8]>) -> Option<&'static str> {
    let Some(payload) = payload else {
        return Some(reject::ATTACHMENT_SIZE);
    };
    if view.compress_type != COMPRESS_TYPE_NONE || view.content_type != CONTENT_TYPE_PB {
        return None;
    }
    match check_message(payload) {
        Ok(()) => None,
        Err(CodecError::Malformed(Cow::Borrowed(reason))) => Some(reason),
        Err(_) => Some(reject::PAYLOAD),
    }
}

/// Adds the request meta's routable fields; they win over user fields of the same name.
fn add_request_metadata(metadata: &mut Metadata, request: RequestMetaView) {
    let strings = [
        (keys::SERVICE, request.service_name),
        (keys::METHOD, request.method_name),
        (brpc_keys::REQUEST_ID, request.request_id),
    ];
    for (key, value) in strings {
        if let Some(value) = value {
            metadata.insert(key, value);
        }
    }
    let numbers = [
        (brpc_keys::LOG_ID, request.log_id),
        (brpc_keys::TRACE_ID, request.trace_id),
        (brpc_keys::SPAN_ID, request.span_id),
        (brpc_keys::PARENT_SPAN_ID, request.parent_span_id),
    ];
    for (key, value) in numbers {
        if let Some(value) = value {
            insert_decimal(metadata, key, value);
        }
    }
    if let Some(timeout_ms) = request.timeout_ms {
        insert_decimal(metadata, brpc_keys::TIMEOUT_MS, timeout_ms.into());
    }
}

fn add_response_metadata(metadata: &mut Metadata, response: ResponseMetaView) {
    if response.error_code != 0 {
        insert_decimal(metadata, brpc_keys::ERROR_CODE, response.error_code.into());
    }
    if let Some(text) = response.error_text {
        metadata.insert(brpc_keys::ERROR_TEXT, text);
    }
}

/// Sets `key` to `value` in decimal, rendered into the metadata's room for such text
/// ([`Metadata::insert_rendered`]): a log id, a timeout or an error code costs no allocation,
/// nor do rpcz ids (19 digits each, past the inline room) in a reused message, whose metadata
/// keeps its heap room. Zero, brpc's usual `log_id`, is a constant.
fn insert_decimal(metadata: &mut Metadata, key: &'static str, value: i64) {
    if value == 0 {
        metadata.insert(key, MetadataStr::Static("0"));
        return;
    }
    // i64::MIN has 19 digits and a sign.
    let mut digits = [0u8; 20];
    let mut pos = digits.len();
    let mut rest = value.unsigned_abs();
    while rest > 0 {
        pos -= 1;
        digits[pos] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    if value < 0 {
        pos -= 1;
        digits[pos] = b'-';
    }
    // ASCII digits and a sign: always UTF-8.
    if let Ok(text) = std::str::from_utf8(&digits[pos..]) {
        metadata.insert_rendered(key, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpcz_ids_are_metadata() -> Result<(), CodecError> {
        use metaprotocol_core::Codec;
        let meta = crate::proto::RpcMeta {
            request: Some(crate::proto::RpcRequestMeta {
                service_name: "example.EchoService".into(),
                method_name: "Echo".into(),
                trace_id: Some(-7),
                span_id: Some(8),
                parent_span_id: Some(9),
                ..Default::default()
            }),
            correlation_id: Some(1),
            ..Default::default()
        };
        let mut wire = bytes::BytesMut::new();
        crate::encode_frame(&meta, b"", &mut wire)?;
        let mut codec = crate::BrpcCodec::new(Side::Downstream, 1 << 20);
        let request = codec
            .decode(&mut wire)?
            .ok_or(CodecError::malformed("incomplete"))?;
        let get = |key: &str| request.metadata.get(key);
        assert_eq!(get(brpc_keys::TRACE_ID), Some("-7"));
        assert_eq!(get(brpc_keys::SPAN_ID), Some("8"));
        assert_eq!(get(brpc_keys::PARENT_SPAN_ID), Some("9"));
        Ok(())
    }

    #[test]
    fn decimal_covers_the_range() {
        for value in [0, 7, 42, -1, 4_294_967_298, i64::MAX, i64::MIN] {
            let mut metadata = Metadata::new();
            insert_decimal(&mut metadata, "n", value);
            assert_eq!(metadata.get("n"), Some(value.to_string().as_str()));
        }
    }
}
