//! Criterion benches for the Dubbo2 codec: decode (header fields, argument skipping, string
//! attachments as metadata), passthrough encode (frame copy, id patched in place) and encode
//! with an attachments mutation, for requests whose String argument is 128 B, 1 KiB and
//! 16 KiB, carrying the attachments the golden clients send.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_core::{
    ByteStr, Codec, DEFAULT_MAX_FRAME_BYTES, EncodeParams, Message, Mutation, WireVariant,
};
use metaprotocol_dubbo::DubboCodec;

const ARGUMENT_SIZES: [(usize, &str); 3] = [(128, "128B"), (1024, "1KiB"), (16 * 1024, "16KiB")];

const SERVICE: &str = "org.apache.dubbo.samples.basic.api.DemoService";

/// The attachments sofa-rpc-node sends in the golden `node__node__hello` request.
const ATTACHMENTS: [(&str, &str); 8] = [
    ("dubbo", "2.0.2"),
    ("group", ""),
    ("interface", SERVICE),
    ("path", SERVICE),
    ("tenant", "t1"),
    ("timeout", "3000"),
    ("version", "1.0.0"),
    ("x-trace-id", "abc123"),
];

/// Appends an ASCII Hessian2 string of at most 0xffff bytes (the only kind these frames use).
fn put_string(out: &mut Vec<u8>, text: &str) {
    let len = text.len();
    match len {
        0..=31 => out.push(len as u8),
        32..=1023 => out.extend_from_slice(&[0x30 + (len >> 8) as u8, len as u8]),
        _ => {
            out.push(b'S');
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(text.as_bytes());
}

/// A two-way `sayHello(String)` request whose argument is `len` bytes.
fn request_frame(len: usize) -> BytesMut {
    let mut body = Vec::new();
    for field in ["2.0.2", SERVICE, "1.0.0", "sayHello", "Ljava/lang/String;"] {
        put_string(&mut body, field);
    }
    put_string(&mut body, &"w".repeat(len));
    body.push(b'H');
    for (key, value) in ATTACHMENTS {
        put_string(&mut body, key);
        put_string(&mut body, value);
    }
    body.push(b'Z');
    let mut frame = BytesMut::from(&[0xda, 0xbb, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 1][..]);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

fn codec() -> DubboCodec {
    DubboCodec::new(DEFAULT_MAX_FRAME_BYTES)
}

/// The decoded request; a bench that cannot decode its own frame has nothing to measure.
fn decoded(frame: &BytesMut) -> Message {
    match codec().decode(&mut frame.clone()) {
        Ok(Some(message)) => message,
        other => panic!("the bench frame does not decode: {other:?}"),
    }
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("dubbo/decode");
    group.throughput(Throughput::Elements(1));
    for (len, label) in ARGUMENT_SIZES {
        let frame = request_frame(len);
        let mut codec = codec();
        group.bench_function(label, |b| {
            b.iter_batched_ref(
                || frame.clone(),
                |src| black_box(codec.decode(src)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion, name: &str, mutation: &Mutation) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for (len, label) in ARGUMENT_SIZES {
        let message = decoded(&request_frame(len));
        let params = EncodeParams {
            request_id: 0x1234_5678,
            variant: WireVariant::DEFAULT,
            mutation,
        };
        let mut codec = codec();
        let mut dst = BytesMut::with_capacity(message.frame.len() * 2);
        group.bench_function(label, |b| {
            b.iter(|| {
                dst.clear();
                black_box(codec.encode(&message, &params, &mut dst))
            });
        });
    }
    group.finish();
}

fn bench_passthrough(c: &mut Criterion) {
    bench_encode(c, "dubbo/encode_passthrough", &Mutation::new());
}

fn bench_mutate(c: &mut Criterion) {
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-routed-by"),
        ByteStr::from_static("canary"),
    );
    mutation.set(ByteStr::from_static("tenant"), ByteStr::from_static("t2"));
    mutation.remove(ByteStr::from_static("x-trace-id"));
    bench_encode(c, "dubbo/encode_mutated", &mutation);
}

criterion_group!(benches, bench_decode, bench_passthrough, bench_mutate);
criterion_main!(benches);
