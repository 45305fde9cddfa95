#![no_main]
//! Fuzzes the Dubbo2 decoder (downstream and upstream codecs, input fed in two pieces) and
//! re-encodes whatever decodes: the passthrough must be byte-identical, an id rewrite and an
//! attachments mutation must decode again with the id and attachments they were given, a failed
//! encode must append nothing, and local and heartbeat replies must decode as responses.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use metaprotocol_core::{
    ByteStr, Codec, CodecFactory, EncodeParams, LocalReply, LocalReplyKind, Message, MessageKind,
    Mutation, ResponseStatus, Side, WireVariant,
};
use metaprotocol_dubbo::DubboCodecFactory;

const MAX_FRAME: usize = 64 * 1024;

fn codec(side: Side) -> Box<dyn Codec> {
    DubboCodecFactory::new(MAX_FRAME).new_codec(side, WireVariant::DEFAULT)
}

fn decode_again(bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    match codec(Side::Upstream).decode(&mut buf) {
        Ok(Some(message)) if buf.is_empty() => message,
        other => panic!(
            "re-encoded frame does not decode: {other:?} ({} left)",
            buf.len()
        ),
    }
}

fn encode(message: &Message, id: u64, mutation: &Mutation) -> Option<BytesMut> {
    let mut out = BytesMut::new();
    let params = EncodeParams {
        request_id: id,
        variant: WireVariant::DEFAULT,
        mutation,
    };
    match codec(Side::Downstream).encode(message, &params, &mut out) {
        Ok(()) => Some(out),
        Err(_) => {
            assert!(out.is_empty(), "a failed encode appended bytes");
            None
        }
    }
}

fn check(message: &Message) {
    let none = Mutation::new();
    let passthrough = encode(message, message.request_id, &none);
    assert_eq!(passthrough.as_deref(), Some(&message.frame[..]));

    let moved = encode(message, 7, &none).map(|out| decode_again(&out));
    let moved = moved.expect("a passthrough never fails");
    assert_eq!(moved.request_id, 7);
    assert_eq!(moved.kind, message.kind);
    assert_eq!(moved.metadata, message.metadata);

    let mut edit = Mutation::new();
    edit.set(ByteStr::from_static("x-fuzz"), ByteStr::from_static("1"));
    edit.remove(ByteStr::from_static("tenant"));
    if let Some(out) = encode(message, 9, &edit) {
        let again = decode_again(&out);
        assert_eq!(again.request_id, 9);
        assert_eq!(again.kind, message.kind);
        if out[16..] != message.frame[16..] {
            assert_eq!(again.metadata.get("x-fuzz").map(ByteStr::as_str), Some("1"));
            assert!(again.metadata.get("tenant").is_none());
            assert_eq!(again.metadata.get("method"), message.metadata.get("method"));
            assert_eq!(
                again.metadata.get("interface"),
                message.metadata.get("interface")
            );
        }
    }

    let mut reply = BytesMut::new();
    match message.kind {
        MessageKind::Request | MessageKind::Oneway => {
            let local = LocalReply::new(LocalReplyKind::Unauthorized, "fuzz");
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
        MessageKind::Response | MessageKind::HeartbeatReply => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for side in [Side::Downstream, Side::Upstream] {
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
});
