//! The bRPC codec's heap allocations per message decoded, counted by the counting allocator: a
//! call that carries a log id and a timeout, one that also carries brpc's rpcz ids (trace, span
//! and parent span, 19 digits and a sign each), and an answer that carries an error code decode
//! into a reused message without allocating (their numbers are written as text into the
//! metadata's own room, which a reused message keeps). Each test binary counts alone.

use bytes::BytesMut;
use metaprotocol_benches::alloc::{CountingAlloc, Counts, count_this_thread};
use metaprotocol_brpc::{BrpcCodec, encode_frame, proto};
use metaprotocol_core::{Codec, Message, MessageKind, Side};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Messages counted, after as many to warm up.
const MESSAGES: u64 = 200;

/// `2 * MESSAGES` frames of `meta`, one after another, as a connection reads them.
fn frames(meta: &proto::RpcMeta) -> Result<BytesMut, Box<dyn std::error::Error>> {
    let mut wire = BytesMut::new();
    for _ in 0..2 * MESSAGES {
        encode_frame(meta, b"\x0a\x02w1", &mut wire)?;
    }
    Ok(wire)
}

/// What decoding the second half of `wire` into one reused message allocates, after the first.
fn allocations(codec: &mut BrpcCodec, mut wire: BytesMut) -> Result<u64, String> {
    let mut slot = Message::new(MessageKind::Request, 0, bytes::Bytes::new());
    let mut decode = |slot: &mut Message| match codec.decode_into(&mut wire, slot) {
        Ok(true) => Ok(()),
        other => Err(format!("{other:?}")),
    };
    for _ in 0..MESSAGES {
        decode(&mut slot)?;
    }
    let before = Counts::now();
    for _ in 0..MESSAGES {
        decode(&mut slot)?;
    }
    let made = Counts::now().since(before);
    Ok(made.marked + made.marked_reallocs)
}

#[test]
fn numbers_in_the_meta_decode_without_allocating() -> TestResult {
    count_this_thread();
    let call = proto::RpcMeta {
        request: Some(proto::RpcRequestMeta {
            service_name: "example.EchoService".into(),
            method_name: "Echo".into(),
            log_id: Some(4_242_424_242),
            timeout_ms: Some(1_500),
            ..Default::default()
        }),
        correlation_id: Some(7),
        ..Default::default()
    };
    let mut downstream = BrpcCodec::new(Side::Downstream, 1 << 20);
    let made = allocations(&mut downstream, frames(&call)?)?;
    assert_eq!(made, 0, "a call with a log id and a timeout");

    // rpcz ids are random 64-bit numbers: most take 19 digits, half of them a sign too.
    let traced = proto::RpcMeta {
        request: call.request.clone().map(|request| proto::RpcRequestMeta {
            trace_id: Some(-6_917_529_027_641_081_856),
            span_id: Some(4_611_686_018_427_387_904),
            parent_span_id: Some(-1_152_921_504_606_846_976),
            request_id: Some("8c1f2b7e".into()),
            ..request
        }),
        ..call.clone()
    };
    let made = allocations(&mut downstream, frames(&traced)?)?;
    assert_eq!(
        made, 0,
        "a call with rpcz ids, a request id, a log id and a timeout"
    );

    let failed = proto::RpcMeta {
        response: Some(proto::RpcResponseMeta {
            error_code: Some(2_004),
            error_text: Some("overloaded".into()),
        }),
        correlation_id: Some(7),
        ..Default::default()
    };
    let mut upstream = BrpcCodec::new(Side::Upstream, 1 << 20);
    let made = allocations(&mut upstream, frames(&failed)?)?;
    assert_eq!(made, 0, "an answer with an error code");
    Ok(())
}
