//! The Dubbo2 checks.

use bytes::BytesMut;
use metaprotocol_core::{
    ByteStr, Codec, CodecFactory, LocalReply, LocalReplyKind, Message, MessageKind, Mutation,
    ResponseStatus, Side, WireVariant,
};
use metaprotocol_dubbo::{DubboCodecFactory, READS_RESPONSE_ATTACHMENTS};

use crate::{HeaderKeys, MAX_FRAME, RoundTrip, assert_mutation_applied, slice};

/// The Dubbo header's length; the body follows.
const HEADER_LEN: usize = 16;

/// A call's interface and method come from its call fields whatever the attachments say; a
/// `version` attachment overrides the call field only when it is not empty.
const CALL_KEYS: HeaderKeys<'static> = HeaderKeys {
    fixed: &["interface", "service", "method"],
    unchecked: &["version"],
};

/// A call renamed by a mutation that sets its `path` attachment: the codec sets the call's path
/// field too, so its interface and service are the new path (checked by [`round_trip`]).
const RENAMED_CALL_KEYS: HeaderKeys<'static> = HeaderKeys {
    fixed: &["method"],
    unchecked: &["version", "interface", "service"],
};

/// A response's metadata is its attachments.
const RESPONSE_KEYS: HeaderKeys<'static> = HeaderKeys {
    fixed: &[],
    unchecked: &[],
};

fn keys(message: &Message) -> &'static HeaderKeys<'static> {
    if message.kind.is_call() {
        &CALL_KEYS
    } else {
        &RESPONSE_KEYS
    }
}

fn codec(side: Side) -> Box<dyn Codec> {
    DubboCodecFactory::new(MAX_FRAME).new_codec(side, WireVariant::DEFAULT)
}

fn decode_again(bytes: &[u8]) -> Message {
    crate::decode_exactly_one(codec(Side::Upstream).as_mut(), bytes)
}

fn encode(
    message: &Message,
    id: u64,
    variant: WireVariant,
    mutation: &Mutation,
) -> Option<BytesMut> {
    crate::encode_or_refuse(
        codec(Side::Downstream).as_mut(),
        message,
        id,
        variant,
        mutation,
    )
}

/// Arbitrary bytes, fed in two pieces (the first byte says where to cut), through a downstream
/// and an upstream codec; every message decoded is re-encoded and answered.
pub fn decode(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for side in [Side::Downstream, Side::Upstream] {
        crate::decode_stream(&|| codec(side), data);
        let mut codec = codec(side);
        let mut buf = BytesMut::from(&data[..split]);
        let mut fed_rest = false;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(message)) => check(&message),
                Ok(None) if !fed_rest => {
                    buf.extend_from_slice(&data[split..]);
                    fed_rest = true;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn check(message: &Message) {
    let none = Mutation::new();
    let passthrough = encode(message, message.request_id, WireVariant::DEFAULT, &none);
    assert_eq!(passthrough.as_deref(), Some(&message.frame[..]));

    let moved = encode(message, 7, WireVariant::DEFAULT, &none).map(|out| decode_again(&out));
    let moved = moved.expect("a passthrough never fails");
    assert_eq!(moved.request_id, 7);
    assert_eq!(moved.kind, message.kind);
    assert_eq!(moved.metadata, message.metadata);
    assert_eq!(moved.reject_reason, message.reject_reason);

    let mut edit = Mutation::new();
    edit.set(ByteStr::from_static("x-fuzz"), ByteStr::from_static("1"));
    edit.remove(ByteStr::from_static("tenant"));
    // A refused call is answered, never forwarded: no mutation is written into it (read again,
    // it is refused where it was, before the keys after that point).
    let forwarded = message.reject_reason.is_none();
    if let Some(out) = forwarded
        .then(|| encode(message, 9, READS_RESPONSE_ATTACHMENTS, &edit))
        .flatten()
    {
        let again = decode_again(&out);
        assert_eq!(again.request_id, 9);
        assert_eq!(again.kind, message.kind);
        if out[HEADER_LEN..] != message.frame[HEADER_LEN..] {
            assert_mutation_applied(&message.metadata, &again.metadata, &edit, keys(message));
        }
    }
    answer(message);
}

/// Local replies and heartbeat replies decode as the answers they are.
fn answer(message: &Message) {
    let mut reply = BytesMut::new();
    match message.kind {
        MessageKind::Request | MessageKind::Oneway => {
            let reason = message.reject_reason.unwrap_or("fuzz");
            let local = LocalReply::new(LocalReplyKind::BadRequest, reason);
            let written = codec(Side::Downstream).encode_local_reply(message, &local, &mut reply);
            if written.is_ok() {
                let answer = decode_again(&reply);
                assert_eq!(answer.kind, MessageKind::Response);
                assert_eq!(answer.status, ResponseStatus::ServerError);
                assert_eq!(answer.request_id, message.request_id);
            }
        }
        MessageKind::Heartbeat => {
            let written = codec(Side::Downstream).encode_heartbeat_reply(message, &mut reply);
            if written.is_ok() && !reply.is_empty() {
                let answer = decode_again(&reply);
                assert_eq!(answer.kind, MessageKind::HeartbeatReply);
                assert_eq!(answer.request_id, message.request_id);
            }
        }
        // Answers are not answered.
        _ => {}
    }
}

/// Every call and response of the stream, forwarded with the edit's id and mutation to a
/// client that reads response attachments or not (the edit's variant).
pub fn round_trip(input: &RoundTrip<'_>) {
    let factory = DubboCodecFactory::new(MAX_FRAME);
    let id = input.edit.request_id(factory.max_request_id());
    let mutation = input.edit.mutation();
    let variant = if input.edit.variant.is_multiple_of(2) {
        READS_RESPONSE_ATTACHMENTS
    } else {
        WireVariant::DEFAULT
    };
    for message in crate::decode_stream(&|| codec(Side::Downstream), input.stream) {
        if message.reject_reason.is_some() {
            // Never forwarded: the engine answers it.
            answer(&message);
            continue;
        }
        if !matches!(
            message.kind,
            MessageKind::Request | MessageKind::Oneway | MessageKind::Response
        ) {
            continue;
        }
        // A mutation may be refused (an attachment holding an object graph, a frame grown past
        // the cap, a result that cannot gain attachments); an id rewrite never is.
        let Some(out) = encode(&message, id, variant, &mutation) else {
            assert!(!mutation.is_empty(), "id rewrite of {message:?} failed");
            continue;
        };
        let again = decode_again(&out);
        assert_eq!(again.request_id, id);
        assert_eq!((again.kind, again.status), (message.kind, message.status));
        assert_eq!(again.reject_reason, None);
        // A fastjson2 call (its layout names no Hessian2 body) carries the mutation in its JSONB
        // attachments, its other fields as they came.
        if message.kind.is_call() && message.layout.0[0] == 0 {
            if mutation.is_empty() {
                assert_eq!(out[HEADER_LEN..], message.frame[HEADER_LEN..]);
                assert_eq!(again.metadata, message.metadata);
                continue;
            }
            let renamed = renamed_path(&message, &mutation);
            let keys = if renamed.is_some() {
                &RENAMED_CALL_KEYS
            } else {
                &CALL_KEYS
            };
            assert_mutation_applied(&message.metadata, &again.metadata, &mutation, keys);
            if let Some(path) = renamed {
                for key in ["interface", "service"] {
                    assert_eq!(again.metadata.get(key), Some(path.as_str()), "{key}");
                }
            }
            same_fastjson2_fields(&message.frame, &out, renamed.is_some());
            continue;
        }
        // A fastjson2 response (no Hessian2 layout either) carries it when it can (status 20, a
        // readable flag and attachments, a client that reads response attachments); its bytes
        // are checked by the codec's tests.
        if !message.kind.is_call() && message.layout.0[0] == 0 {
            if out[HEADER_LEN..] == message.frame[HEADER_LEN..] {
                assert_eq!(again.metadata, message.metadata);
            } else {
                assert_mutation_applied(
                    &message.metadata,
                    &again.metadata,
                    &mutation,
                    keys(&message),
                );
            }
            continue;
        }
        // A Hessian2 call always carries the mutation; a response only when it can (status 20,
        // a readable result, a client that reads response attachments).
        if message.kind.is_call() || out[HEADER_LEN..] != message.frame[HEADER_LEN..] {
            let renamed = renamed_path(&message, &mutation);
            let keys = if renamed.is_some() {
                &RENAMED_CALL_KEYS
            } else {
                keys(&message)
            };
            assert_mutation_applied(&message.metadata, &again.metadata, &mutation, keys);
            if let Some(path) = renamed {
                for key in ["interface", "service"] {
                    assert_eq!(again.metadata.get(key), Some(path.as_str()), "{key}");
                }
            }
            same_arguments_or_result(&message, &again, renamed.is_some());
        } else {
            assert_eq!(again.metadata, message.metadata);
        }
    }
}

/// The values (each a 4-byte length and JSONB) of a fastjson2 body, if it is all values.
fn fastjson2_fields(body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let end = usize::try_from(len).ok()?.checked_add(4)?;
        fields.push(rest.get(..end)?);
        rest = rest.get(end..)?;
    }
    Some(fields)
}

/// A mutated fastjson2 call keeps its call fields (but the path of a `renamed` one) and
/// arguments as they came: all the original's values but the last (its attachments, or its
/// last argument when it had none, which the rewritten call then holds before its new map).
fn same_fastjson2_fields(original: &[u8], rewritten: &[u8], renamed: bool) {
    let (Some(before), Some(after)) = (
        fastjson2_fields(slice(original, HEADER_LEN..original.len(), "the body")),
        fastjson2_fields(slice(rewritten, HEADER_LEN..rewritten.len(), "the body")),
    ) else {
        // A body with bytes after its attachments: they are copied, not checked here.
        return;
    };
    let kept = before.len().saturating_sub(1);
    assert!(after.len() == before.len() || after.len() == before.len() + 1);
    for (at, (old, new)) in before.iter().zip(&after).take(kept).enumerate() {
        if !(renamed && at == 1) {
            assert_eq!(old, new, "value {at}");
        }
    }
}

/// The `path` a mutation sets on a call: the new name of its service.
fn renamed_path<'m>(message: &Message, mutation: &'m Mutation) -> Option<&'m ByteStr> {
    let set = mutation
        .sets()
        .iter()
        .find(|(key, _)| key.as_str() == "path");
    set.filter(|_| message.kind.is_call()).map(|(_, path)| path)
}

/// The arguments (or the result) are copied as they came, and so is anything after the
/// attachments map: the body without its map is unchanged, but for the call's path field when
/// the call was `renamed`.
fn same_arguments_or_result(original: &Message, again: &Message, renamed: bool) {
    let body = |message: &Message| {
        let body = without_attachments(message);
        if renamed {
            without_path_field(&body)
        } else {
            body
        }
    };
    assert_eq!(body(again), body(original));
}

/// The body of a frame with the result flag and the attachments map cut out. The frame layout
/// slots are the codec's own (`metaprotocol-dubbo/src/layout.rs`): slot 1 ends a response's
/// result flag, slots 2 and 4 start and end the attachments map.
fn without_attachments(message: &Message) -> Vec<u8> {
    let [_, flag_end, map_start, _, map_end, _] = message.layout.0.map(|slot| slot as usize);
    let frame = &message.frame[..];
    let before = slice(frame, flag_end.max(HEADER_LEN)..map_start, "before the map");
    let after = slice(frame, map_end..frame.len(), "after the map");
    [before, after].concat()
}

/// A call's body with its second field, the service path, cut out (the first is the Dubbo
/// version); both are strings or null, as the decoder accepted them.
fn without_path_field(body: &[u8]) -> Vec<u8> {
    let version = string_len(body);
    let path = string_len(slice(body, version..body.len(), "the path field"));
    let rest = slice(body, version + path..body.len(), "after the path field");
    [slice(body, 0..version, "the version field"), rest].concat()
}

/// The length in bytes of the Hessian2 string (or null) that `bytes` starts with: chunks whose
/// lengths count UTF-16 units, so a character of four UTF-8 bytes counts two.
fn string_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let tag = slice(bytes, at..at + 1, "a string tag")[0];
        let (units, header, last) = match tag {
            b'N' => return 1,
            0x00..=0x1f => (usize::from(tag), 1, true),
            0x30..=0x33 => {
                let low = slice(bytes, at + 1..at + 2, "a string length")[0];
                (usize::from(tag - 0x30) << 8 | usize::from(low), 2, true)
            }
            b'S' | b'R' => {
                let len = slice(bytes, at + 1..at + 3, "a string length");
                (
                    usize::from(len[0]) << 8 | usize::from(len[1]),
                    3,
                    tag == b'S',
                )
            }
            _ => panic!("not a string tag: {tag:#x}"),
        };
        at += header;
        let mut left = units;
        while left > 0 {
            let lead = slice(bytes, at..at + 1, "a character")[0];
            let (width, counts) = match lead {
                0x00..=0x7f => (1, 1),
                0xc0..=0xdf => (2, 1),
                0xe0..=0xef => (3, 1),
                _ => (4, 2),
            };
            at += width;
            left = left.saturating_sub(counts);
        }
        if last {
            return at;
        }
    }
}
