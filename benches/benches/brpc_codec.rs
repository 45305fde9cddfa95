//! Criterion benches for the brpc (baidu_std) codec: decode, passthrough encode (id patched in
//! place, and id spliced when its varint length changes) and encode with a `user_fields`
//! mutation, for 128 B, 1 KiB and 16 KiB payloads.

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use metaprotocol_benches::codec_bench::{self, bench_encode};
use metaprotocol_brpc::{BrpcCodec, encode_frame, proto};
use metaprotocol_core::{Codec, Mutation, Side};

/// A brpc 1.17-like correlation id (a versioned bthread id: a 5-byte varint).
const CLIENT_ID: i64 = 4_294_967_298;

/// A request like the golden `lab-hello-userfields` one, with a `len`-byte payload.
fn request_frame(len: usize) -> BytesMut {
    let meta = proto::RpcMeta {
        request: Some(proto::RpcRequestMeta {
            service_name: "example.EchoService".into(),
            method_name: "Echo".into(),
            log_id: Some(42),
            request_id: Some("req-7".into()),
            ..Default::default()
        }),
        compress_type: Some(0),
        correlation_id: Some(CLIENT_ID),
        user_fields: [
            ("tenant".to_owned(), "t1".to_owned()),
            ("x-trace-id".to_owned(), "abc123".to_owned()),
        ]
        .into(),
        content_type: Some(0),
        checksum_type: Some(0),
        checksum_value: Some(Vec::new()),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    // A failure here is a bug in the bench itself; an empty frame makes every bench fail loudly.
    if encode_frame(&meta, &echo_request(len), &mut out).is_err() {
        out.clear();
    }
    out
}

/// A protobuf `EchoRequest { message: string = 1 }` of about `len` bytes: the payload a real
/// client sends, which the codec's payload check walks.
fn echo_request(len: usize) -> Vec<u8> {
    let text = len.saturating_sub(4);
    let mut payload = vec![0x0a];
    let mut n = text;
    while n >= 0x80 {
        payload.push((n as u8) | 0x80);
        n >>= 7;
    }
    payload.push(n as u8);
    payload.resize(payload.len() + text, b'x');
    payload
}

fn codec() -> Box<dyn Codec> {
    Box::new(BrpcCodec::new(Side::Downstream, 1 << 20))
}

fn bench_decode(c: &mut Criterion) {
    codec_bench::bench_decode(c, "brpc/decode", codec, request_frame);
}

fn bench_passthrough(c: &mut Criterion) {
    let mutation = Mutation::new();
    // Same varint length as the client's id: the frame is copied and the id patched in place.
    let same_length = CLIENT_ID as u64 + 1;
    bench_encode(
        c,
        "brpc/passthrough",
        codec,
        request_frame,
        same_length,
        &mutation,
    );
    // A small upstream id: the meta is spliced around a shorter correlation_id field.
    bench_encode(
        c,
        "brpc/passthrough_id_splice",
        codec,
        request_frame,
        7,
        &mutation,
    );
}

fn bench_mutate(c: &mut Criterion) {
    let mutation = codec_bench::routing_mutation();
    bench_encode(c, "brpc/mutate_encode", codec, request_frame, 7, &mutation);
}

criterion_group!(benches, bench_decode, bench_passthrough, bench_mutate);
criterion_main!(benches);
