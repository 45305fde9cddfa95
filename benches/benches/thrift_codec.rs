//! Criterion benches for the thrift codec: header-only decode (framed, unframed with its struct
//! skip, THeader with its info headers), passthrough encode (seqid patched in place) and encode
//! with a THeader header mutation, for `sayHello` calls with 128 B, 1 KiB and 16 KiB string
//! arguments.

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use metaprotocol_benches::codec_bench::{self, bench_encode};
use metaprotocol_core::{ByteStr, Codec, CodecFactory, EncodeParams, Mutation, Side, WireVariant};
use metaprotocol_thrift::{Protocol, ThriftCodecFactory, ThriftFormat, Transport};

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

/// The call in `format`, with THeader info headers `x-trace-id` and `tenant` when THeader.
fn call_in(format: ThriftFormat, len: usize) -> BytesMut {
    let mut headers = Mutation::new();
    headers.set(
        ByteStr::from_static("x-trace-id"),
        ByteStr::from_static("abc123"),
    );
    headers.set(ByteStr::from_static("tenant"), ByteStr::from_static("t1"));
    let mut out = BytesMut::new();
    let message = codec_bench::decoded(&mut *codec(), &framed_call(len));
    let params = EncodeParams {
        request_id: 1,
        variant: format.to_variant(),
        mutation: &headers,
    };
    // A failure leaves `out` empty, and the benches then fail loudly on decode.
    let _ = codec().encode(&message, &params, &mut out);
    out
}

fn bench_decode(c: &mut Criterion) {
    for (name, transport) in [
        ("framed", Transport::Framed),
        ("unframed", Transport::Unframed),
        ("header", Transport::Header),
    ] {
        let format = ThriftFormat::new(transport, Protocol::Binary);
        let group = format!("thrift/decode/{name}");
        codec_bench::bench_decode(c, &group, codec, |len| call_in(format, len));
    }
}

fn bench_passthrough(c: &mut Criterion) {
    let framed = ThriftFormat::new(Transport::Framed, Protocol::Binary);
    let frame = |len| call_in(framed, len);
    bench_encode(
        c,
        "thrift/passthrough_encode/framed",
        codec,
        frame,
        77,
        &Mutation::new(),
    );
}

fn bench_mutate(c: &mut Criterion) {
    let mutation = codec_bench::routing_mutation();
    let header = ThriftFormat::new(Transport::Header, Protocol::Binary);
    let frame = |len| call_in(header, len);
    bench_encode(
        c,
        "thrift/mutate_encode/header",
        codec,
        frame,
        77,
        &mutation,
    );
}

criterion_group!(benches, bench_decode, bench_passthrough, bench_mutate);
criterion_main!(benches);
