//! The bRPC (baidu_std) checks.

use bytes::{Bytes, BytesMut};
use metaprotocol_brpc::{BrpcCodec, BrpcCodecFactory, RpcMetaView};
use metaprotocol_core::{
    ByteStr, Codec, CodecFactory, EncodeParams, FrameHead, LocalReply, LocalReplyKind, Message,
    MessageKind, Mutation, ResponseStatus, Side, WireVariant,
};

use crate::{HeaderKeys, MAX_FRAME, RoundTrip, assert_mutation_applied, slice};

/// The baidu_std header's length; the meta follows.
const HEADER_LEN: usize = 12;

/// A request's service and method come from its request meta whatever the `user_fields` say;
/// the meta's other fields win over a user field only when the meta has them.
const REQUEST_KEYS: HeaderKeys<'static> = HeaderKeys {
    fixed: &["service", "method"],
    unchecked: &["log_id", "request_id", "timeout_ms"],
};

/// A response's error code and text win over user fields only when the meta has them.
const RESPONSE_KEYS: HeaderKeys<'static> = HeaderKeys {
    fixed: &[],
    unchecked: &["error_code", "error_text"],
};

/// The largest request id the engine gives an upstream brpc call.
fn max_engine_id() -> u64 {
    BrpcCodecFactory::new(MAX_FRAME).max_request_id()
}

fn decode_again(side: Side, bytes: &[u8]) -> Message {
    crate::decode_exactly_one(&mut BrpcCodec::new(side, usize::MAX), bytes)
}

/// `message` written by a codec on `side` with request id `id` and `mutation`.
fn encode(side: Side, message: &Message, id: u64, mutation: &Mutation) -> BytesMut {
    let mut out = BytesMut::new();
    let params = EncodeParams {
        request_id: id,
        variant: WireVariant::DEFAULT,
        mutation,
    };
    if let Err(e) = BrpcCodec::new(side, MAX_FRAME).encode(message, &params, &mut out) {
        panic!("encode failed: {e}");
    }
    out
}

/// `message` forwarded as the engine forwards it, with request id `id` and `mutation`, read as
/// the peer it arrives at reads it, and the id it arrives under as the engine reads it:
/// - a request goes to a server through an upstream codec, without its client's
///   `authentication_data`, and is read as a server reads it (a downstream codec); the server's
///   answer under the id it got reads upstream as the engine's
///   id;
/// - a response goes to its client through a downstream codec, without any
///   `authentication_data` its server sent, and is read as a client reads it (an upstream
///   codec: every frame is an answer, a success without a response meta), under the
///   `correlation_id` on the wire.
fn forward(message: &Message, id: u64, mutation: &Mutation) -> (Message, u64) {
    let (to, reader) = match message.kind {
        MessageKind::Request => (Side::Upstream, Side::Downstream),
        _ => (Side::Downstream, Side::Upstream),
    };
    let arrived = decode_again(reader, &encode(to, message, id, mutation));
    // Credentials stand for one hop: a client's never reach a server, and a server's (one that
    // answers in its request's meta echoes the cluster's) never reach a client.
    assert_eq!(authentication_data(&arrived), None);
    let arrived_id = match to {
        Side::Upstream => {
            let mut reply = BytesMut::new();
            let answer = LocalReply::new(LocalReplyKind::Internal, "the server's answer");
            if let Err(e) = BrpcCodec::new(Side::Downstream, MAX_FRAME)
                .encode_local_reply(&arrived, &answer, &mut reply)
            {
                panic!("answer failed: {e}");
            }
            decode_again(Side::Upstream, &reply).request_id
        }
        Side::Downstream => match RpcMetaView::from_frame(&arrived.frame) {
            Ok(meta) => meta.correlation_id.unwrap_or(0),
            Err(e) => panic!("a forwarded response's meta does not read again: {e}"),
        },
    };
    (arrived, arrived_id)
}

/// Arbitrary bytes through a downstream and an upstream codec; every message decoded is
/// re-encoded and answered.
pub fn decode(data: &[u8]) {
    for side in [Side::Downstream, Side::Upstream] {
        for message in crate::decode_stream(&|| Box::new(BrpcCodec::new(side, MAX_FRAME)), data) {
            check(side, &message);
        }
    }
}

fn check(side: Side, message: &Message) {
    // A codec writes what it read, with the id it read, as it came; but a response goes to its
    // client without the `authentication_data` its server sent.
    let written = encode(side, message, message.request_id, &Mutation::new());
    if side == Side::Downstream && message.kind == MessageKind::Response {
        let arrived = decode_again(side, &written);
        assert_eq!(authentication_data(&arrived), None);
        assert_eq!(arrived.metadata, message.metadata);
        assert_eq!(body(&arrived), body(message));
        if authentication_data(message).is_none() {
            assert_eq!(written[..], message.frame[..]);
        }
    } else {
        assert_eq!(written[..], message.frame[..]);
    }
    for id in [1, 300, message.request_id ^ 1, i64::MAX as u64] {
        let rewritten = decode_again(side, &encode(side, message, id, &Mutation::new()));
        assert_eq!(rewritten.request_id, id);
        assert_eq!(rewritten.metadata, message.metadata);
        assert_eq!(rewritten.reject_reason, message.reject_reason);
    }
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-routed-by"),
        ByteStr::from_static("fuzz"),
    );
    mutation.remove(ByteStr::from_static("tenant"));
    let mutated = decode_again(side, &encode(side, message, 5, &mutation));
    assert_eq!(mutated.request_id, 5);
    assert_eq!(mutated.metadata.get("x-routed-by"), Some("fuzz"));
    if message.reject_reason.is_none() {
        for id in [1, 300, max_engine_id()] {
            let (arrived, arrived_id) = forward(message, id, &Mutation::new());
            assert_eq!(arrived_id, id);
            assert_eq!(arrived.metadata, message.metadata);
        }
    }
    if message.kind == MessageKind::Request && message.reject_reason.is_none() {
        credentials(message);
    }
    answer(message);
    if side == Side::Upstream {
        oversized(message);
    }
}

/// The `authentication_data` of a message a codec decoded.
fn authentication_data(message: &Message) -> Option<Bytes> {
    match RpcMetaView::from_frame(&message.frame) {
        Ok(meta) => meta.authentication_data,
        Err(e) => panic!("a forwarded message's meta does not read again: {e}"),
    }
}

/// An upstream codec with credentials of its own puts them, in place of the client's, on the
/// first request it writes (its connection's first), and none on the next.
fn credentials(request: &Message) {
    let token = Bytes::from_static(b"fuzz-token");
    let mut codec = BrpcCodec::new(Side::Upstream, usize::MAX).with_credentials(token.clone());
    let mutation = Mutation::new();
    let params = EncodeParams {
        request_id: 1,
        variant: WireVariant::DEFAULT,
        mutation: &mutation,
    };
    for expected in [Some(token), None] {
        let mut out = BytesMut::new();
        if let Err(e) = codec.encode(request, &params, &mut out) {
            panic!("encode failed: {e}");
        }
        let arrived = decode_again(Side::Downstream, &out);
        assert_eq!(authentication_data(&arrived), expected);
        assert_eq!(arrived.metadata, request.metadata);
    }
}

/// The response an upstream codec decoded, were it over the limit: its head names the call it
/// decoded as and the frame's length, and its prefixes are `Incomplete` until they do.
fn oversized(message: &Message) {
    let codec = BrpcCodec::new(Side::Upstream, HEADER_LEN);
    let head = codec.oversized_response(&message.frame);
    let expected = FrameHead::Response {
        request_id: message.request_id,
        len: message.frame.len() as u64,
    };
    assert_eq!(head, Some(expected), "{:?}", message.kind);
    for n in 0..message.frame.len().min(256) {
        let prefix = codec.oversized_response(&message.frame[..n]);
        assert!(
            prefix == Some(FrameHead::Incomplete) || prefix == head,
            "{n} bytes: {prefix:?}"
        );
    }
}

/// A local reply to a request decodes as a failed response with the request's id.
fn answer(message: &Message) {
    if message.kind != MessageKind::Request {
        return;
    }
    let mut reply = BytesMut::new();
    let reason = message.reject_reason.unwrap_or("fuzz");
    let local = LocalReply::new(LocalReplyKind::BadRequest, reason);
    if let Err(e) =
        BrpcCodec::new(Side::Downstream, MAX_FRAME).encode_local_reply(message, &local, &mut reply)
    {
        panic!("local reply failed: {e}");
    }
    // Read as it is on the wire (an upstream codec reads ids as the engine's).
    let answer = decode_again(Side::Downstream, &reply);
    assert_eq!(answer.kind, MessageKind::Response);
    assert_eq!(answer.status, ResponseStatus::ServerError);
    assert_eq!(answer.request_id, message.request_id);
}

/// Every message of the stream (requests read downstream, responses upstream), forwarded with
/// the edit's correlation id and `user_fields` mutation.
pub fn round_trip(input: &RoundTrip<'_>) {
    let id = input.edit.request_id(max_engine_id());
    let mutation = input.edit.mutation();
    for side in [Side::Downstream, Side::Upstream] {
        for message in
            crate::decode_stream(&|| Box::new(BrpcCodec::new(side, MAX_FRAME)), input.stream)
        {
            if message.reject_reason.is_some() {
                // Never forwarded: the engine answers it.
                answer(&message);
                continue;
            }
            let (again, arrived_id) = forward(&message, id, &mutation);
            assert_eq!(arrived_id, id);
            assert_eq!((again.kind, again.status), (message.kind, message.status));
            assert_eq!(again.reject_reason, None);
            let keys = match message.kind {
                MessageKind::Request => &REQUEST_KEYS,
                _ => &RESPONSE_KEYS,
            };
            assert_mutation_applied(&message.metadata, &again.metadata, &mutation, keys);
            assert_eq!(body(&again), body(&message));
        }
    }
}

/// What follows the meta: the payload and the attachment.
fn body(message: &Message) -> &[u8] {
    let meta_size = slice(&message.frame, 8..HEADER_LEN, "meta_size");
    let meta_size = u32::from_be_bytes([meta_size[0], meta_size[1], meta_size[2], meta_size[3]]);
    slice(
        &message.frame,
        HEADER_LEN + meta_size as usize..message.frame.len(),
        "body",
    )
}
