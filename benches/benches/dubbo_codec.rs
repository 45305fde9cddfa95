//! Criterion benches for the Dubbo2 codec: decode (header fields, argument skipping, string
//! attachments as metadata), passthrough encode (frame copy, id patched in place) and encode
//! with an attachments mutation, for requests whose String argument is 128 B, 1 KiB and
//! 16 KiB, carrying the attachments the golden clients send.

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use metaprotocol_benches::codec_bench::{self, bench_encode};
use metaprotocol_core::{Codec, DEFAULT_MAX_FRAME_BYTES, Mutation};
use metaprotocol_dubbo::DubboCodec;

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

fn codec() -> Box<dyn Codec> {
    Box::new(DubboCodec::new(DEFAULT_MAX_FRAME_BYTES))
}

fn bench_decode(c: &mut Criterion) {
    codec_bench::bench_decode(c, "dubbo/decode", codec, request_frame);
}

fn bench_passthrough(c: &mut Criterion) {
    let mutation = Mutation::new();
    bench_encode(
        c,
        "dubbo/encode_passthrough",
        codec,
        request_frame,
        0x1234_5678,
        &mutation,
    );
}

fn bench_mutate(c: &mut Criterion) {
    let mutation = codec_bench::routing_mutation();
    bench_encode(
        c,
        "dubbo/encode_mutated",
        codec,
        request_frame,
        0x1234_5678,
        &mutation,
    );
}

criterion_group!(benches, bench_decode, bench_passthrough, bench_mutate);
criterion_main!(benches);
