//! Criterion benches for the thrift codec: header-only decode (framed, unframed with its struct
//! skip, THeader with its info headers), passthrough encode (seqid patched in place) and encode
//! with a THeader header mutation, for `sayHello` calls with 128 B, 1 KiB and 16 KiB string
//! arguments.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_core::{
    ByteStr, Codec, CodecFactory, EncodeParams, Message, Mutation, Side, WireVariant,
};
use metaprotocol_thrift::{Protocol, ThriftCodecFactory, ThriftFormat, Transport};

const ARG_SIZES: [(usize, &str); 3] = [(128, "128B"), (1024, "1KiB"), (16 * 1024, "16KiB")];

fn codec() -> Box<dyn Codec> {
    ThriftCodecFactory::default().new_codec(Side::Downstream, WireVariant::DEFAULT)
}

/// A framed strict-binary `sayHello(name)` call, seqid 1, with a `len`-byte name.
fn framed_call(len: usize) -> BytesMut {
    let mut payload = BytesMut::new();
    payload.put_u32(0x8001_0001);
    payload.put_u32(8);
    payload.extend_from_slice(b"sayHello");
    payload.put_i32(1);
    payload.put_u8(11);
    payload.put_i16(1);
    payload.put_u32(len as u32);
    payload.put_bytes(b'x', len);
    payload.put_u8(0);
    let mut frame = BytesMut::new();
    frame.put_u32(payload.len() as u32);
    frame.extend_from_slice(&payload);
    frame
}

fn decode(bytes: &BytesMut) -> Option<Message> {
    codec().decode(&mut bytes.clone()).ok().flatten()
}

/// The call in `format`, with THeader info headers `x-trace-id` and `tenant` when THeader.
fn call_in(format: ThriftFormat, len: usize) -> BytesMut {
    let mut headers = Mutation::new();
    headers.set(
        ByteStr::from_static("x-trace-id"),
        ByteStr::from_static("abc123"),
    );
    headers.set(ByteStr::from_static("tenant"), ByteStr::from_static("t1"));
    let mut out = BytesMut::new();
    if let Some(message) = decode(&framed_call(len)) {
        let params = EncodeParams {
            request_id: 1,
            variant: format.to_variant(),
            mutation: &headers,
        };
        // A failure leaves `out` empty, and the benches then fail loudly on decode.
        let _ = codec().encode(&message, &params, &mut out);
    }
    out
}

fn bench_decode(c: &mut Criterion) {
    let formats = [
        (
            "framed",
            ThriftFormat::new(Transport::Framed, Protocol::Binary),
        ),
        (
            "unframed",
            ThriftFormat::new(Transport::Unframed, Protocol::Binary),
        ),
        (
            "header",
            ThriftFormat::new(Transport::Header, Protocol::Binary),
        ),
    ];
    for (name, format) in formats {
        let mut group = c.benchmark_group(format!("thrift/decode/{name}"));
        group.throughput(Throughput::Elements(1));
        for (len, label) in ARG_SIZES {
            let bytes = call_in(format, len);
            assert!(decode(&bytes).is_some(), "bench input does not decode");
            group.bench_function(label, |b| {
                b.iter_batched_ref(
                    || (codec(), bytes.clone()),
                    |(codec, src)| black_box(codec.decode(src)),
                    BatchSize::SmallInput,
                );
            });
        }
        group.finish();
    }
}

fn bench_encode(c: &mut Criterion, group_name: &str, format: ThriftFormat, mutation: &Mutation) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    for (len, label) in ARG_SIZES {
        let Some(message) = decode(&call_in(format, len)) else {
            panic!("bench input does not decode");
        };
        let mut codec = codec();
        let mut dst = BytesMut::with_capacity(2 * len + 256);
        group.bench_function(label, |b| {
            b.iter(|| {
                dst.clear();
                let params = EncodeParams {
                    request_id: 77,
                    variant: message.variant,
                    mutation,
                };
                black_box(codec.encode(&message, &params, &mut dst))
            });
        });
    }
    group.finish();
}

fn bench_passthrough(c: &mut Criterion) {
    let framed = ThriftFormat::new(Transport::Framed, Protocol::Binary);
    bench_encode(
        c,
        "thrift/passthrough_encode/framed",
        framed,
        &Mutation::new(),
    );
}

fn bench_mutate(c: &mut Criterion) {
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-routed-by"),
        ByteStr::from_static("canary"),
    );
    mutation.remove(ByteStr::from_static("tenant"));
    let header = ThriftFormat::new(Transport::Header, Protocol::Binary);
    bench_encode(c, "thrift/mutate_encode/header", header, &mutation);
}

criterion_group!(benches, bench_decode, bench_passthrough, bench_mutate);
criterion_main!(benches);
