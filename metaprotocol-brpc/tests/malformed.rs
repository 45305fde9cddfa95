//! Frames the codec refuses or rejects, and frames that are valid but cannot be proxied.

mod common;

use bytes::BytesMut;
use common::{TestResult, decode_one, echo_request, frame, golden};
use metaprotocol_brpc::{BrpcCodec, BrpcCodecFactory, proto};
use metaprotocol_core::{Codec, CodecError, CodecOptions, Side};

fn decode_err(side: Side, max: usize, bytes: &[u8]) -> Option<CodecError> {
    BrpcCodec::new(side, max)
        .decode(&mut BytesMut::from(bytes))
        .err()
}

fn is_malformed(err: Option<CodecError>) -> bool {
    matches!(err, Some(CodecError::Malformed(_)))
}

#[test]
fn oversize_frames_fail_at_the_header() -> TestResult {
    let bytes = golden("lab-hello.req.hex")?;
    // Only the header has arrived: the size alone is enough to refuse the frame.
    let err = decode_err(Side::Downstream, 60, &bytes[..12]);
    assert_eq!(err, Some(CodecError::FrameTooLarge { size: 61, max: 60 }));
    assert!(decode_err(Side::Downstream, 61, &bytes).is_none());
    Ok(())
}

#[test]
fn incomplete_frames_wait_without_consuming() -> TestResult {
    let bytes = golden("lab-attachment.req.hex")?;
    let mut codec = BrpcCodec::new(Side::Downstream, 1 << 20);
    for n in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..n]);
        assert!(codec.decode(&mut buf)?.is_none(), "{n} bytes");
        assert_eq!(&buf[..], &bytes[..n], "{n} bytes left untouched");
    }
    Ok(())
}

#[test]
fn other_protocols_are_named_by_their_magic() {
    for magic in [&b"HULU"[..], b"SOFA", b"GET ", b"POST", b"\x80\x01\x00\x01"] {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&[0; 8]);
        let err = decode_err(Side::Downstream, 1024, &bytes);
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("not baidu_std: magic"), "{text}");
    }
}

#[test]
fn streaming_frames_are_unsupported() -> TestResult {
    let strm = b"STRM\0\0\0\x04\0\0\0\x04abcd";
    let err = decode_err(Side::Downstream, 1024, strm);
    assert!(
        matches!(&err, Some(CodecError::Unsupported(m)) if m.contains("streaming")),
        "{err:?}"
    );

    let mut meta = echo_request(1);
    meta.stream_settings = Some(proto::StreamSettings {
        stream_id: 5,
        ..Default::default()
    });
    let request = decode_one(Side::Downstream, &frame(&meta, b"")?)?;
    assert_eq!(
        request.reject_reason,
        Some("bRPC streaming RPC is not supported")
    );
    assert_eq!(
        request.metadata.get("method").map(|v| v.as_str()),
        Some("Echo")
    );

    let mut meta = echo_request(1);
    meta.chunk_info = Some(proto::ChunkInfo {
        stream_id: 1,
        chunk_id: 2,
    });
    let request = decode_one(Side::Downstream, &frame(&meta, b"")?)?;
    assert_eq!(
        request.reject_reason,
        Some("bRPC chunk_info is not supported")
    );
    Ok(())
}

#[test]
fn sizes_must_nest() -> TestResult {
    // meta_size > body_size.
    assert!(is_malformed(decode_err(
        Side::Downstream,
        1024,
        b"PRPC\0\0\0\x01\0\0\0\x02"
    )));

    // attachment_size larger than what follows the meta.
    let mut meta = echo_request(1);
    meta.attachment_size = Some(5);
    assert!(is_malformed(decode_err(
        Side::Downstream,
        1024,
        &frame(&meta, b"abcd")?
    )));
    assert!(decode_one(Side::Downstream, &frame(&meta, b"abcde")?).is_ok());
    meta.attachment_size = Some(-1);
    assert!(is_malformed(decode_err(
        Side::Downstream,
        1024,
        &frame(&meta, b"abcde")?
    )));
    Ok(())
}

#[test]
fn truncated_or_garbled_metas_are_malformed() -> TestResult {
    let bytes = golden("lab-hello.req.hex")?;
    // Claim a meta one byte shorter: the request meta's length then runs past the meta.
    let mut short_meta = bytes.clone();
    short_meta[11] = 10;
    assert!(is_malformed(decode_err(
        Side::Downstream,
        1024,
        &short_meta
    )));
    // A deprecated group wire type.
    let mut group = bytes.clone();
    group[12] = 0x0b;
    assert!(is_malformed(decode_err(Side::Downstream, 1024, &group)));
    // An endless varint.
    let garbage = b"PRPC\0\0\0\x0c\0\0\0\x0c\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff";
    assert!(is_malformed(decode_err(Side::Downstream, 1024, garbage)));
    Ok(())
}

#[test]
fn direction_mismatches_are_malformed() -> TestResult {
    let request = golden("lab-hello.req.hex")?;
    let response = golden("lab-hello.resp.hex")?;
    assert!(is_malformed(decode_err(Side::Upstream, 1024, &request)));
    assert!(is_malformed(decode_err(Side::Downstream, 1024, &response)));
    Ok(())
}

#[test]
fn requests_without_names_are_rejected_not_dropped() -> TestResult {
    // A service name that is not UTF-8 cannot be routed on.
    let mut bytes = frame(&echo_request(8), b"")?;
    let service = bytes
        .windows(7)
        .position(|w| w == b"example")
        .ok_or("no service")?;
    bytes[service] = 0xff;
    let request = decode_one(Side::Downstream, &bytes)?;
    assert_eq!(
        request.reject_reason,
        Some("RpcRequestMeta lacks a UTF-8 service_name or method_name")
    );
    assert_eq!(request.request_id, 8);
    Ok(())
}

#[test]
fn options_are_checked() {
    assert!(BrpcCodecFactory::from_options(&CodecOptions::default()).is_ok());
    assert!(BrpcCodecFactory::from_options(&CodecOptions::with_max_frame_bytes(4)).is_err());
    let mut options = CodecOptions::default();
    options.insert("transport", "framed");
    let err = BrpcCodecFactory::from_options(&options)
        .err()
        .map(|e| e.field);
    assert_eq!(err.as_deref(), Some("transport"));
}

#[test]
fn encode_refuses_foreign_messages_and_variants() -> TestResult {
    let request = decode_one(Side::Downstream, &golden("lab-hello.req.hex")?)?;
    let mutation = metaprotocol_core::Mutation::new();
    let mut codec = BrpcCodec::new(Side::Upstream, 1024);
    let mut out = BytesMut::new();
    let params = metaprotocol_core::EncodeParams {
        request_id: 1,
        variant: metaprotocol_core::WireVariant(3),
        mutation: &mutation,
    };
    assert!(matches!(
        codec.encode(&request, &params, &mut out),
        Err(CodecError::Unsupported(_))
    ));
    let mut foreign = request.clone();
    foreign.layout = metaprotocol_core::FrameLayout::default();
    let params = metaprotocol_core::EncodeParams {
        variant: Default::default(),
        ..params
    };
    assert!(matches!(
        codec.encode(&foreign, &params, &mut out),
        Err(CodecError::Encode(_))
    ));
    assert!(out.is_empty(), "nothing appended on error");
    Ok(())
}
