//! What every codec bench shares: the body sizes, and the decode and encode measurements. The
//! benches themselves (`benches/*_codec.rs`) only say how to build a frame of their protocol and
//! which codec to use.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput};
use metaprotocol_core::{ByteStr, Codec, EncodeParams, Message, Mutation};

/// The body sizes every codec is measured at, with their labels.
pub const BODY_SIZES: [(usize, &str); 3] = [(128, "128B"), (1024, "1KiB"), (16 * 1024, "16KiB")];

/// The mutation every mutate-and-encode bench applies, a typical route's: two headers set
/// (one new, one replacing the frame's `tenant`) and one removed (`x-trace-id`).
pub fn routing_mutation() -> Mutation {
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-routed-by"),
        ByteStr::from_static("canary"),
    );
    mutation.set(ByteStr::from_static("tenant"), ByteStr::from_static("t2"));
    mutation.remove(ByteStr::from_static("x-trace-id"));
    mutation
}

/// The message `codec` decodes from `frame`; a bench that cannot decode its own input has nothing
/// to measure, so this panics.
pub fn decoded(codec: &mut dyn Codec, frame: &BytesMut) -> Message {
    match codec.decode(&mut frame.clone()) {
        Ok(Some(message)) => message,
        other => panic!("the bench frame does not decode: {other:?}"),
    }
}

/// Measures decoding one `frame(size)` for every body size into a message, as the engine does
/// (`decode_into`), each with a fresh codec from `codec` (codecs may remember a connection's
/// detected encoding) and an empty message, made outside the timing.
pub fn bench_decode(
    c: &mut Criterion,
    group: &str,
    codec: impl Fn() -> Box<dyn Codec>,
    frame: impl Fn(usize) -> BytesMut,
) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    for (len, label) in BODY_SIZES {
        let bytes = frame(len);
        decoded(&mut *codec(), &bytes);
        group.bench_function(label, |b| {
            b.iter_batched_ref(
                || (codec(), bytes.clone(), Message::empty()),
                |(codec, src, message)| black_box(codec.decode_into(src, message)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// Measures encoding the message decoded from `frame(size)` for every body size, in its own
/// encoding, with upstream id `request_id` and `mutation`.
pub fn bench_encode(
    c: &mut Criterion,
    group: &str,
    codec: impl Fn() -> Box<dyn Codec>,
    frame: impl Fn(usize) -> BytesMut,
    request_id: u64,
    mutation: &Mutation,
) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    for (len, label) in BODY_SIZES {
        let mut codec = codec();
        let message = decoded(&mut *codec, &frame(len));
        let params = EncodeParams {
            request_id,
            variant: message.variant,
            mutation,
        };
        let mut dst = BytesMut::with_capacity(2 * message.frame.len() + 256);
        group.bench_function(label, |b| {
            b.iter(|| {
                dst.clear();
                black_box(codec.encode(black_box(&message), &params, &mut dst))
            });
        });
    }
    group.finish();
}
