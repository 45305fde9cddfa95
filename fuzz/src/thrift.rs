//! The Thrift checks.

use bytes::BytesMut;
use metaprotocol_core::{
    ByteStr, Codec, CodecFactory, FrameHead, LocalReply, LocalReplyKind, MAX_FRAME_HEAD, Message,
    MessageKind, Mutation, PassedOver, Side, WireVariant,
};
use metaprotocol_thrift::{
    Protocol, ThriftCodec, ThriftCodecFactory, ThriftFormat, ThriftOptions, Transport,
};

use crate::{HeaderKeys, MAX_FRAME, RoundTrip, assert_mutation_applied, slice};

/// The method and service come from the message name whatever the headers say (a name that is
/// not multiplexed has no service, though a header of that name is set).
const KEYS: HeaderKeys<'static> = HeaderKeys {
    fixed: &["service", "method"],
    unchecked: &[],
};

/// Every encoding, in the order an edit's variant picks them.
const FORMATS: [ThriftFormat; 6] = [
    ThriftFormat::new(Transport::Framed, Protocol::Binary),
    ThriftFormat::new(Transport::Framed, Protocol::Compact),
    ThriftFormat::new(Transport::Unframed, Protocol::Binary),
    ThriftFormat::new(Transport::Unframed, Protocol::Compact),
    ThriftFormat::new(Transport::Header, Protocol::Binary),
    ThriftFormat::new(Transport::Header, Protocol::Compact),
];

fn codec() -> Box<dyn Codec> {
    ThriftCodecFactory::default().new_codec(Side::Downstream, WireVariant::DEFAULT)
}

/// An auto-detecting codec with the fuzzing frame cap.
fn detecting_codec() -> Box<dyn Codec> {
    ThriftCodecFactory::new(ThriftOptions {
        max_frame_bytes: MAX_FRAME,
        ..Default::default()
    })
    .new_codec(Side::Downstream, WireVariant::DEFAULT)
}

fn format_of(message: &Message) -> ThriftFormat {
    match ThriftFormat::from_variant(message.variant) {
        Some(format) => format,
        None => panic!("decoded message without a thrift variant"),
    }
}

/// Decodes `bytes` as the peer would: on a connection that speaks `format` (auto-detection on a
/// lone degenerate lax-binary message can take its name for a frame length).
fn decode_again(format: ThriftFormat, bytes: &[u8]) -> Message {
    crate::decode_exactly_one(&mut ThriftCodec::new(format.into(), usize::MAX), bytes)
}

fn encode(
    message: &Message,
    id: u64,
    variant: WireVariant,
    mutation: &Mutation,
) -> Option<BytesMut> {
    crate::encode_or_refuse(codec().as_mut(), message, id, variant, mutation)
}

fn same_call(a: &Message, b: &Message) {
    assert_eq!(a.kind, b.kind);
    assert_eq!(a.status, b.status);
    assert_eq!(a.metadata.get("method"), b.metadata.get("method"));
    assert_eq!(a.metadata.get("service"), b.metadata.get("service"));
}

/// Arbitrary bytes through an auto-detecting codec, whole and in pieces (which must give the
/// same messages: an unframed message's walk continues across reads); every message decoded is
/// re-encoded in each length-delimited encoding and answered.
pub fn decode(data: &[u8]) {
    let whole = crate::decode_stream(&detecting_codec, data);
    let piece = 1 + data.first().map_or(0, |b| usize::from(b % 64));
    let mut codec = detecting_codec();
    let mut buf = BytesMut::new();
    let mut pieces = Vec::new();
    'feed: for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(message)) => pieces.push(message.frame),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    let frames: Vec<_> = whole.iter().map(|m| m.frame.clone()).collect();
    assert_eq!(pieces, frames, "in pieces of {piece}");
    for message in &whole {
        check(message);
    }
}

/// `message` were it over the limit, on a connection speaking its format: a framed or THeader
/// reply's head names the call it decoded as and the frame's length; a reply whose message
/// cannot be read has none (its connection closes); any other message's says it is passed over
/// as it arrives (a call that cannot be read too: it is answered as one too large); a prefix
/// tells the same or `Incomplete`.
fn oversized(message: &Message) {
    if inflated(message) {
        return;
    }
    let format = format_of(message);
    let codec = ThriftCodec::new(format.into(), 1);
    let head = codec.oversized_response(&message.frame);
    let expected = if unreadable(message) && message.kind == MessageKind::Response {
        None
    } else if format.transport != Transport::Unframed && message.kind == MessageKind::Response {
        Some(FrameHead::Response {
            request_id: message.request_id,
            len: message.frame.len() as u64,
        })
    } else {
        Some(FrameHead::Unsized)
    };
    if message.frame.len() <= MAX_FRAME_HEAD {
        assert_eq!(head, expected, "{format} {:?}", message.kind);
    }
    for n in 0..message.frame.len().min(256) {
        let prefix = codec.oversized_response(&message.frame[..n]);
        assert!(
            prefix == head || prefix == Some(FrameHead::Incomplete),
            "{format}, {n} bytes: {prefix:?}"
        );
    }
    if head == Some(FrameHead::Unsized) {
        passed_over(message, format);
    }
}

/// `message` (unframed, or a framed or THeader call) passed over in pieces, as a connection
/// passes one too large to decode (its first read holds its message header, which told
/// `Unsized`), by the codec of the side that reads it: it ends where its decode ended, naming
/// the call a reply answers.
fn passed_over(message: &Message, format: ThriftFormat) {
    let frame = &message.frame[..];
    let Some(head) = (1..=frame.len()).find(|&n| {
        ThriftCodec::new(format.into(), 1).oversized_response(&frame[..n])
            == Some(FrameHead::Unsized)
    }) else {
        panic!("{format}: no prefix is Unsized");
    };
    let answers = (message.kind == MessageKind::Response).then_some(message.request_id);
    // Calls are passed over by a listener's codec, answers by a cluster's.
    let side = match message.kind {
        MessageKind::Response => Side::Upstream,
        _ => Side::Downstream,
    };
    for piece in [1, 2, 5, 64] {
        let mut codec = ThriftCodec::for_side(side, format.into(), 1);
        let mut passed = 0;
        let mut end = None;
        let reads = std::iter::once(&frame[..head]).chain(frame[head..].chunks(piece));
        for read in reads {
            match codec.pass_over(read) {
                Some(PassedOver::More) => passed += read.len(),
                Some(PassedOver::End { len, request_id }) => {
                    end = Some((passed + len, request_id));
                    break;
                }
                None => panic!("{format}: cannot pass over a message it decoded"),
            }
        }
        assert_eq!(
            end,
            Some((frame.len(), answers)),
            "{format} in pieces of {piece}"
        );
    }
}

/// True for a THeader call whose message cannot be read: hidden by a transform, in a
/// protocol the codec does not speak, or under zlib data that is corrupt or inflates past the
/// limit.
fn unreadable(message: &Message) -> bool {
    message.reject_reason.is_some_and(|reason| {
        reason.contains("transform") || reason.contains("protocols other than") || inflated(message)
    })
}

/// True for a THeader call refused for its zlib data: its frame is what inflated of it,
/// rebuilt without the transform, which no peer sent (the frame as it came, compressed, is what
/// the oversized path reads: `tests/pass_over.rs`).
fn inflated(message: &Message) -> bool {
    message
        .reject_reason
        .is_some_and(|reason| reason.contains("zlib data") || reason.contains("inflates (zlib)"))
}

fn check(message: &Message) {
    oversized(message);
    if unreadable(message) {
        // Never forwarded (it cannot be read): the engine answers it.
        answer(message);
        return;
    }
    let none = Mutation::new();
    let passthrough = encode(message, message.request_id, message.variant, &none);
    let source = format_of(message);
    let Some(passthrough) = passthrough else {
        panic!("a decoded message could not be written as it came");
    };
    if passthrough[..] != message.frame[..] {
        // Lax binary (no version word) alone is rewritten, strict: the same call, which then
        // goes as it came.
        assert_eq!(source.protocol, Protocol::Binary, "rewritten: {source}");
        let strict = decode_again(source, &passthrough);
        same_call(message, &strict);
        let again = encode(&strict, strict.request_id, strict.variant, &none);
        assert_eq!(
            again.as_deref(),
            Some(&strict.frame[..]),
            "strict goes as it came"
        );
    }
    for id in [1, 300, i32::MAX as u64] {
        let Some(out) = encode(message, id, message.variant, &none) else {
            panic!("seqid rewrite failed");
        };
        let again = decode_again(source, &out);
        assert_eq!(again.request_id, id);
        assert_eq!(again.metadata, message.metadata);
        same_call(&again, message);
    }
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-routed-by"),
        ByteStr::from_static("fuzz"),
    );
    for transport in [Transport::Framed, Transport::Header] {
        for protocol in [Protocol::Binary, Protocol::Compact] {
            let target = ThriftFormat::new(transport, protocol);
            let out = encode(message, 7, target.to_variant(), &mutation);
            let Some(out) = out else {
                // Changing protocol walks the body, which only a call's decode checked.
                assert!(
                    protocol != source.protocol && !translates(message),
                    "{source} -> {target} failed"
                );
                continue;
            };
            let again = decode_again(target, &out);
            assert_eq!(again.request_id, 7);
            assert_eq!(again.variant, target.to_variant());
            same_call(&again, message);
            if transport == Transport::Header {
                assert_eq!(again.metadata.get("x-routed-by"), Some("fuzz"));
            }
        }
    }
    answer(message);
}

/// True for messages whose body was walked on decode, so that any translation must succeed:
/// calls that were not rejected.
fn translates(message: &Message) -> bool {
    message.kind.is_call() && message.reject_reason.is_none()
}

/// A local reply to a two-way call decodes as a response with its id, in its encoding.
fn answer(message: &Message) {
    if message.kind != MessageKind::Request {
        return;
    }
    let mut reply = BytesMut::new();
    let reason = message.reject_reason.unwrap_or("fuzz");
    let local = LocalReply::new(LocalReplyKind::BadRequest, reason);
    if let Err(e) = codec().encode_local_reply(message, &local, &mut reply) {
        panic!("local reply failed: {e}");
    }
    let answer = decode_again(format_of(message), &reply);
    assert_eq!(answer.kind, MessageKind::Response);
    assert_eq!(answer.request_id, message.request_id);
    assert_eq!(answer.variant, message.variant);
}

/// Every message of the stream, forwarded with the edit's seqid and mutation in the encoding
/// the edit picks.
pub fn round_trip(input: &RoundTrip<'_>) {
    let factory = ThriftCodecFactory::default();
    let id = input.edit.request_id(factory.max_request_id());
    let mutation = input.edit.mutation();
    let target = FORMATS
        .get(usize::from(input.edit.variant) % FORMATS.len())
        .copied()
        .unwrap_or(FORMATS[0]);
    for message in crate::decode_stream(&detecting_codec, input.stream) {
        if message.reject_reason.is_some() {
            // Never forwarded: the engine answers it.
            answer(&message);
            continue;
        }
        forward(&message, id, target, &mutation);
    }
}

fn forward(message: &Message, id: u64, target: ThriftFormat, mutation: &Mutation) {
    let source = format_of(message);
    let Some(out) = encode(message, id, target.to_variant(), mutation) else {
        assert!(
            source.protocol != target.protocol && !translates(message),
            "{source} -> {target} of {message:?} failed"
        );
        return;
    };
    // Unframed, the end of a message is found by walking its body, which only a call's decode
    // checked.
    if target.transport == Transport::Unframed && !translates(message) {
        return;
    }
    let again = decode_again(target, &out);
    assert_eq!(again.request_id, id);
    assert_eq!(again.variant, target.to_variant());
    assert_eq!((again.kind, again.status), (message.kind, message.status));
    assert_eq!(again.reject_reason, None);
    if target.transport == Transport::Header {
        assert_mutation_applied(&message.metadata, &again.metadata, mutation, &KEYS);
    } else {
        // No headers to carry a mutation, nor the source's own headers.
        for (key, value) in again.metadata.iter() {
            assert!(key == "method" || key == "service", "header {key:?} kept");
            assert_eq!(message.metadata.get(key), Some(value));
        }
    }
    if source.protocol == target.protocol {
        assert_eq!(after_seqid(&again), after_seqid(message));
    }
}

/// The message after its seqid: a compact message's name and every message's body. The frame
/// layout slot is the codec's own (`metaprotocol-thrift/src/layout.rs`): slot 2 ends the
/// seqid.
fn after_seqid(message: &Message) -> &[u8] {
    let seqid_end = message.layout.0[2] as usize;
    slice(
        &message.frame,
        seqid_end..message.frame.len(),
        "after the seqid",
    )
}
