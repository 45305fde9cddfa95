//! Criterion benches for the brpc (baidu_std) codec: decode, passthrough encode (id patched in
//! place, and id spliced when its varint length changes) and encode with a `user_fields`
//! mutation, for 128 B, 1 KiB and 16 KiB payloads.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_brpc::{BrpcCodec, encode_frame, proto};
use metaprotocol_core::{ByteStr, Codec, EncodeParams, Message, Mutation, Side, WireVariant};

const PAYLOAD_SIZES: [(usize, &str); 3] = [(128, "128B"), (1024, "1KiB"), (16 * 1024, "16KiB")];

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
    if encode_frame(&meta, &vec![0x5a; len], &mut out).is_err() {
        out.clear();
    }
    out
}

fn decoded(frame: &BytesMut) -> Option<Message> {
    BrpcCodec::new(Side::Downstream, 1 << 20)
        .decode(&mut frame.clone())
        .ok()
        .flatten()
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("brpc/decode");
    for (len, label) in PAYLOAD_SIZES {
        let frame = request_frame(len);
        group.throughput(Throughput::Elements(1));
        let mut codec = BrpcCodec::new(Side::Downstream, 1 << 20);
        group.bench_function(label, |b| {
            b.iter_batched_ref(
                || frame.clone(),
                |buf| black_box(codec.decode(buf)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion, name: &str, id: u64, mutation: &Mutation) {
    let mut group = c.benchmark_group(name);
    for (len, label) in PAYLOAD_SIZES {
        let Some(message) = decoded(&request_frame(len)) else {
            continue;
        };
        let mut codec = BrpcCodec::new(Side::Upstream, 1 << 20);
        let mut dst = BytesMut::with_capacity(len + 256);
        let params = EncodeParams {
            request_id: id,
            variant: WireVariant::DEFAULT,
            mutation,
        };
        group.throughput(Throughput::Elements(1));
        group.bench_function(label, |b| {
            b.iter(|| {
                dst.clear();
                black_box(codec.encode(black_box(&message), &params, &mut dst))
            })
        });
    }
    group.finish();
}

fn bench_passthrough(c: &mut Criterion) {
    // Same varint length as the client's id: the frame is copied and the id patched in place.
    bench_encode(
        c,
        "brpc/passthrough",
        CLIENT_ID as u64 + 1,
        &Mutation::new(),
    );
    // A small upstream id: the meta is spliced around a shorter correlation_id field.
    bench_encode(c, "brpc/passthrough_id_splice", 7, &Mutation::new());
}

fn bench_mutate(c: &mut Criterion) {
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-routed-by"),
        ByteStr::from_static("canary"),
    );
    mutation.set(ByteStr::from_static("tenant"), ByteStr::from_static("t2"));
    mutation.remove(ByteStr::from_static("x-trace-id"));
    bench_encode(c, "brpc/mutate_encode", 7, &mutation);
}

criterion_group!(benches, bench_decode, bench_passthrough, bench_mutate);
criterion_main!(benches);
