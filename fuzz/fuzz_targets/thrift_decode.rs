#![no_main]
//! Fuzzes the thrift decoder with transport and protocol auto-detection, and re-encodes whatever
//! decodes: the passthrough must be byte-identical; seqid rewrites, translations to the other
//! length-delimited formats, THeader mutations and local replies must decode again with the id,
//! method and headers they were given.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use metaprotocol_core::{
    ByteStr, Codec, CodecFactory, EncodeParams, LocalReply, LocalReplyKind, Message, MessageKind,
    Mutation, Side, WireVariant,
};
use metaprotocol_thrift::{Protocol, ThriftCodec, ThriftCodecFactory, ThriftFormat, Transport};

const MAX_FRAME: usize = 64 * 1024;

fn codec() -> Box<dyn Codec> {
    ThriftCodecFactory::default().new_codec(Side::Downstream, WireVariant::DEFAULT)
}

/// Decodes `bytes` as the peer would: on a connection that speaks `format` (auto-detection
/// on a lone degenerate lax-binary message can take its name for a frame length).
fn decode_again(format: WireVariant, bytes: &[u8]) -> Message {
    let Some(format) = ThriftFormat::from_variant(format) else {
        panic!("no thrift format");
    };
    let mut buf = BytesMut::from(bytes);
    match ThriftCodec::new(format.into(), usize::MAX).decode(&mut buf) {
        Ok(Some(message)) if buf.is_empty() => message,
        other => panic!(
            "re-encoded frame does not decode: {other:?} ({} left)",
            buf.len()
        ),
    }
}

fn encode(
    message: &Message,
    id: u64,
    variant: WireVariant,
    mutation: &Mutation,
) -> Option<BytesMut> {
    let mut out = BytesMut::new();
    let params = EncodeParams {
        request_id: id,
        variant,
        mutation,
    };
    match codec().encode(message, &params, &mut out) {
        Ok(()) => Some(out),
        Err(_) => {
            assert!(out.is_empty(), "a failed encode appended bytes");
            None
        }
    }
}

fn same_call(a: &Message, b: &Message) {
    assert_eq!(a.kind, b.kind);
    assert_eq!(a.status, b.status);
    assert_eq!(a.metadata.get("method"), b.metadata.get("method"));
    assert_eq!(a.metadata.get("service"), b.metadata.get("service"));
}

fn check(message: &Message) {
    let none = Mutation::new();
    let passthrough = encode(message, message.request_id, message.variant, &none);
    assert_eq!(passthrough.as_deref(), Some(&message.frame[..]));
    let Some(source) = ThriftFormat::from_variant(message.variant) else {
        panic!("decoded message without a thrift variant");
    };
    for id in [1, 300, i32::MAX as u64] {
        if let Some(out) = encode(message, id, message.variant, &none) {
            let again = decode_again(message.variant, &out);
            assert_eq!(again.request_id, id);
            assert_eq!(again.metadata, message.metadata);
            same_call(&again, message);
        } else {
            panic!("seqid rewrite failed");
        }
    }
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-routed-by"),
        ByteStr::from_static("fuzz"),
    );
    for transport in [Transport::Framed, Transport::Header] {
        for protocol in [Protocol::Binary, Protocol::Compact] {
            let target = ThriftFormat::new(transport, protocol);
            // Changing protocol walks the body, which a framed decode never checked.
            let out = encode(message, 7, target.to_variant(), &mutation);
            let Some(out) = out else {
                assert!(protocol != source.protocol, "{source} -> {target} failed");
                continue;
            };
            let again = decode_again(target.to_variant(), &out);
            assert_eq!(again.request_id, 7);
            assert_eq!(again.variant, target.to_variant());
            same_call(&again, message);
            if transport == Transport::Header {
                assert_eq!(
                    again.metadata.get("x-routed-by").map(ByteStr::as_str),
                    Some("fuzz")
                );
            }
        }
    }
    if message.kind == MessageKind::Request {
        let mut reply = BytesMut::new();
        let local = LocalReply::new(LocalReplyKind::RouteNotFound, "fuzz");
        if let Err(e) = codec().encode_local_reply(message, &local, &mut reply) {
            panic!("local reply failed: {e}");
        }
        let answer = decode_again(message.variant, &reply);
        assert_eq!(answer.request_id, message.request_id);
        assert_eq!(answer.variant, message.variant);
    }
}

fuzz_target!(|data: &[u8]| {
    let factory = ThriftCodecFactory::new(metaprotocol_thrift::ThriftOptions {
        max_frame_bytes: MAX_FRAME,
        ..Default::default()
    });
    let mut codec = factory.new_codec(Side::Downstream, WireVariant::DEFAULT);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(message)) = codec.decode(&mut buf) {
        check(&message);
    }
});
