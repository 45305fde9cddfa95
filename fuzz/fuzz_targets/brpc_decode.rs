#![no_main]
//! Fuzzes the brpc (baidu_std) decoder on both sides, and re-encodes whatever decodes: the
//! passthrough must be byte-identical, and id rewrites, mutations and local replies must decode
//! again with the id they were given.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use metaprotocol_brpc::BrpcCodec;
use metaprotocol_core::{
    ByteStr, Codec, EncodeParams, LocalReply, LocalReplyKind, Message, Mutation, Side, WireVariant,
};

const MAX_FRAME: usize = 64 * 1024;

fn decode_again(side: Side, bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    match BrpcCodec::new(side, usize::MAX).decode(&mut buf) {
        Ok(Some(message)) if buf.is_empty() => message,
        other => panic!("re-encoded frame does not decode: {other:?}"),
    }
}

fn encode(message: &Message, id: u64, mutation: &Mutation) -> BytesMut {
    let mut out = BytesMut::new();
    let params = EncodeParams { request_id: id, variant: WireVariant::DEFAULT, mutation };
    if let Err(e) = BrpcCodec::new(Side::Upstream, MAX_FRAME).encode(message, &params, &mut out) {
        panic!("encode failed: {e}");
    }
    out
}

fn check(side: Side, message: &Message) {
    assert_eq!(encode(message, message.request_id, &Mutation::new())[..], message.frame[..]);
    for id in [1, 300, message.request_id ^ 1, i64::MAX as u64] {
        let rewritten = decode_again(side, &encode(message, id, &Mutation::new()));
        assert_eq!(rewritten.request_id, id);
        assert_eq!(rewritten.metadata, message.metadata);
    }
    let mut mutation = Mutation::new();
    mutation.set(ByteStr::from_static("x-routed-by"), ByteStr::from_static("fuzz"));
    mutation.remove(ByteStr::from_static("tenant"));
    let mutated = decode_again(side, &encode(message, 5, &mutation));
    assert_eq!(mutated.request_id, 5);
    assert_eq!(mutated.metadata.get("x-routed-by").map(ByteStr::as_str), Some("fuzz"));
    if side == Side::Downstream {
        let mut reply = BytesMut::new();
        let local = LocalReply::new(LocalReplyKind::Timeout, "fuzz");
        if let Err(e) = BrpcCodec::new(side, MAX_FRAME).encode_local_reply(message, &local, &mut reply) {
            panic!("local reply failed: {e}");
        }
        assert_eq!(decode_again(Side::Upstream, &reply).request_id, message.request_id);
    }
}

fuzz_target!(|data: &[u8]| {
    for side in [Side::Downstream, Side::Upstream] {
        let mut codec = BrpcCodec::new(side, MAX_FRAME);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(message)) = codec.decode(&mut buf) {
            check(side, &message);
        }
    }
});
