//! Frames the codec refuses (the stream cannot be followed) or rejects (the frame is delimited:
//! its sender alone gets an error and the connection stays), and frames that are valid but
//! cannot be proxied.

mod common;

use bytes::BytesMut;
use common::{TestResult, decode_one, echo_request, frame, golden, parse};
use metaprotocol_brpc::{BrpcCodec, BrpcCodecFactory, errno, proto};
use metaprotocol_core::{
    Codec, CodecError, CodecOptions, EncodeParams, FrameHead, LocalReply, LocalReplyKind,
    MessageKind, Mutation, ResponseStatus, Side, WireVariant,
};

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
fn an_oversize_response_names_its_call_and_length_for_the_engine_to_pass_over() -> TestResult {
    let small = BrpcCodec::new(Side::Upstream, 64);
    // The answer to the engine's call 5, sent with a five-byte client id (so written 5 + 2^28),
    // with a 100-byte payload: over the 64-byte limit.
    let response = frame(&common::echo_response((1 << 28) + 5), &[b'p'; 100])?;
    let meta_end = 12 + usize::try_from(u32::from_be_bytes(response[8..12].try_into()?))?;
    let mut buf = BytesMut::from(&response[..meta_end]);
    assert!(matches!(
        small.clone().decode(&mut buf),
        Err(CodecError::FrameTooLarge { .. })
    ));
    let head = FrameHead::Response {
        request_id: 5,
        len: response.len() as u64,
    };
    assert_eq!(small.oversized_response(&response[..meta_end]), Some(head));
    assert_eq!(small.oversized_response(&response), Some(head));
    // The id `decode` gives the same answer within a larger limit.
    assert_eq!(decode_one(Side::Upstream, &response)?.request_id, 5);
    // Until the whole meta is in, the engine reads on.
    for n in 0..meta_end {
        assert_eq!(
            small.oversized_response(&response[..n]),
            Some(FrameHead::Incomplete),
            "{n} bytes"
        );
    }
    // A frame without a response meta is a response to `decode` as well (brpc clients read it
    // as a success); one without a correlation id answers nothing the engine sent (id 0).
    let bare = frame(&proto::RpcMeta::default(), &[b'p'; 100])?;
    assert_eq!(
        small.oversized_response(&bare),
        Some(FrameHead::Response {
            request_id: 0,
            len: bare.len() as u64
        })
    );
    // A downstream codec's frame answers nothing.
    let downstream = BrpcCodec::new(Side::Downstream, 64);
    assert_eq!(downstream.oversized_response(&response), None);
    // A meta that is not protobuf (a field running past it), sizes that do not nest, another
    // magic, and a meta over 64 KiB (not waited for) tell nothing.
    let garbled = [&b"PRPC\0\0\0\x66\0\0\0\x02\x0a\x05"[..], &[0; 100]].concat();
    assert_eq!(small.oversized_response(&garbled), None);
    assert_eq!(small.oversized_response(b"PRPC\0\0\0\x01\0\0\0\x02"), None);
    assert_eq!(small.oversized_response(b"HULU\0\0\x10\0\0\0\0\x02"), None);
    assert_eq!(
        small.oversized_response(b"PRPC\0\x02\0\0\0\x01\0\x01"),
        None
    );
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
    assert_eq!(request.metadata.get("method"), Some("Echo"));

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

/// Decodes `bytes` and then a golden request on one downstream connection: the first must be
/// rejected (its reason returned, the connection kept) and the second must decode as usual.
fn rejected(bytes: &[u8]) -> Result<&'static str, Box<dyn std::error::Error>> {
    let stream = [bytes, &golden("lab-hello.req.hex")?].concat();
    let mut codec = BrpcCodec::new(Side::Downstream, 1 << 20);
    let mut buf = BytesMut::from(&stream[..]);
    let bad = codec.decode(&mut buf)?.ok_or("incomplete")?;
    let good = codec.decode(&mut buf)?.ok_or("incomplete")?;
    assert!(buf.is_empty());
    assert_eq!(good.reject_reason, None);
    assert_eq!(bad.kind, MessageKind::Request);
    assert_eq!(
        bad.metadata.get("method"),
        Some("Echo"),
        "a rejected request keeps its metadata, for logs"
    );
    let reason = bad.reject_reason.ok_or("not rejected")?;
    // The engine's answer: EREQUEST, as brpc servers give, to that request's id.
    let mut out = BytesMut::new();
    let reply = LocalReply::new(LocalReplyKind::BadRequest, reason);
    codec.encode_local_reply(&bad, &reply, &mut out)?;
    let (meta, body) = parse(&out)?;
    assert!(body.is_empty());
    assert_eq!(
        meta.correlation_id.map(|id| id as u64),
        Some(bad.request_id)
    );
    let response = meta.response.ok_or("no response meta")?;
    assert_eq!(response.error_code, Some(errno::EREQUEST));
    Ok(reason)
}

#[test]
fn sizes_must_nest() -> TestResult {
    // meta_size > body_size: the stream cannot be followed.
    assert!(is_malformed(decode_err(
        Side::Downstream,
        1024,
        b"PRPC\0\0\0\x01\0\0\0\x02"
    )));

    // attachment_size larger than what follows the meta, or negative: the frame is delimited,
    // so the request is rejected and the connection kept.
    let mut meta = echo_request(1);
    meta.attachment_size = Some(5);
    let reason = "attachment_size is negative or larger than the body after the meta";
    assert_eq!(rejected(&frame(&meta, b"abcd")?)?, reason);
    meta.attachment_size = Some(-1);
    assert_eq!(rejected(&frame(&meta, b"abcde")?)?, reason);
    meta.attachment_size = Some(5);
    assert_eq!(
        decode_one(Side::Downstream, &frame(&meta, b"abcde")?)?.reject_reason,
        None
    );

    // A response whose sizes do not add up is forwarded as a failure.
    let mut meta = common::echo_response(1);
    meta.attachment_size = Some(5);
    let response = decode_one(Side::Upstream, &frame(&meta, b"abcd")?)?;
    assert_eq!(response.kind, MessageKind::Response);
    assert_eq!(response.status, ResponseStatus::ServerError);
    Ok(())
}

#[test]
fn malformed_payloads_are_rejected_and_the_stream_goes_on() -> TestResult {
    let cases: [(&[u8], &str); 5] = [
        (b"\x0a\x05ab", "protobuf length runs past the message"),
        (b"\x08", "truncated protobuf varint"),
        (b"\x00\x01", "protobuf field number out of range"),
        (b"\x0f", "unsupported protobuf wire type"),
        (b"\x0b\x08\x01", "protobuf group not closed"),
    ];
    for (payload, reason) in cases {
        assert_eq!(rejected(&frame(&echo_request(7), payload)?)?, reason);
        // The attachment is not part of the payload: a well-formed payload before any
        // attachment passes, a malformed one before a well-formed attachment does not.
        let mut meta = echo_request(7);
        meta.attachment_size = Some(i32::try_from(payload.len())?);
        let body = [b"\x0a\x02w1", payload].concat();
        assert_eq!(
            decode_one(Side::Downstream, &frame(&meta, &body)?)?.reject_reason,
            None
        );
        meta.attachment_size = Some(4);
        let body = [payload, b"\x0a\x02w1"].concat();
        assert_eq!(rejected(&frame(&meta, &body)?)?, reason);
    }
    // Groups, fixed values and strings that are not messages are well-formed protobuf.
    let fine = b"\x0b\x08\x01\x0c\x11\x01\x02\x03\x04\x05\x06\x07\x08\x1a\x01\xff";
    let request = decode_one(Side::Downstream, &frame(&echo_request(7), fine)?)?;
    assert_eq!(request.reject_reason, None);
    Ok(())
}

#[test]
fn compressed_and_non_protobuf_payloads_are_not_read() -> TestResult {
    let mut compressed = echo_request(7);
    compressed.compress_type = Some(1);
    let mut json = echo_request(7);
    json.content_type = Some(1);
    for meta in [compressed, json] {
        let request = decode_one(Side::Downstream, &frame(&meta, b"{\"m\": 1}")?)?;
        assert_eq!(request.reject_reason, None);
    }
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

/// Jprotobuf-rpc-socket, Baidu's Java baidu_std server, answers in its request's own
/// `RpcMeta`: the request meta (service, method, log id) stays beside the response meta it
/// sets, and an answer it fails before a handler runs ("service not found") keeps it too. brpc
/// clients read every frame on their connection as an answer, and never look at a request meta
/// there (a missing response meta reads as success), so each is the answer to its call, passed
/// to its client as it came: the upstream connection, which other clients' calls share, stays.
#[test]
fn an_answer_keeping_its_request_meta_is_an_answer() -> TestResult {
    // The engine's call 5, written with a brpc client's five-byte id (5 + 2^28).
    let wire_id = (1 << 28) + 5;
    let mut answered = echo_request(wire_id);
    answered.response = Some(proto::RpcResponseMeta {
        error_code: Some(0),
        error_text: None,
    });
    answered.attachment_size = Some(0);
    let mut not_found = answered.clone();
    not_found.response = Some(proto::RpcResponseMeta {
        error_code: Some(1001),
        error_text: Some("service not found".into()),
    });
    let request_meta_only = echo_request(wire_id);
    let cases = [
        (
            answered,
            &b"\x0a\x09Hello, w1"[..],
            ResponseStatus::Ok,
            None,
        ),
        (
            not_found,
            &b""[..],
            ResponseStatus::ServerError,
            Some("1001"),
        ),
        (
            request_meta_only,
            &b"\x0a\x02w1"[..],
            ResponseStatus::Ok,
            None,
        ),
    ];
    for (meta, payload, status, error_code) in cases {
        let bytes = frame(&meta, payload)?;
        // Followed by a brpc server's answer on the same connection, which decodes as usual.
        let stream = [&bytes[..], &golden("lab-hello.resp.hex")?].concat();
        let mut upstream = BrpcCodec::new(Side::Upstream, 1 << 20);
        let mut buf = BytesMut::from(&stream[..]);
        let answer = upstream.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!(answer.kind, MessageKind::Response, "{meta:?}");
        assert_eq!((answer.status, answer.request_id), (status, 5), "{meta:?}");
        assert_eq!(answer.metadata.get("error_code"), error_code, "{meta:?}");
        assert_eq!(
            answer.metadata.get("service"),
            None,
            "an answer's metadata is its own"
        );
        let next = upstream.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!(next.kind, MessageKind::Response);
        // Over a cluster's limit, it names its call all the same.
        let head = FrameHead::Response {
            request_id: 5,
            len: bytes.len() as u64,
        };
        let small = BrpcCodec::new(Side::Upstream, 16);
        assert_eq!(small.oversized_response(&bytes), Some(head), "{meta:?}");
        // To its client under the client's id, which the server echoed: byte for byte.
        let mut out = BytesMut::new();
        let none = Mutation::new();
        let params = EncodeParams {
            request_id: wire_id as u64,
            variant: WireVariant::DEFAULT,
            mutation: &none,
        };
        BrpcCodec::new(Side::Downstream, 1 << 20).encode(&answer, &params, &mut out)?;
        assert_eq!(&out[..], &bytes[..], "{meta:?}");
    }
    Ok(())
}

/// As with Dubbo and Thrift, a response frame from a client decodes as a response, which the
/// engine drops; the connection and the client's next request are unharmed.
#[test]
fn a_stray_response_from_a_client_is_a_response() -> TestResult {
    for (file, status) in [
        ("lab-hello.resp.hex", ResponseStatus::Ok),
        ("lab-error.resp.hex", ResponseStatus::ServerError),
    ] {
        let stream = [golden(file)?, golden("lab-hello.req.hex")?].concat();
        let mut codec = BrpcCodec::new(Side::Downstream, 1 << 20);
        let mut buf = BytesMut::from(&stream[..]);
        let stray = codec.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!(stray.kind, MessageKind::Response, "{file}");
        assert_eq!(stray.status, status, "{file}");
        assert_eq!(stray.reject_reason, None, "{file}");
        let request = codec.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!(request.kind, MessageKind::Request, "{file}");
        assert!(buf.is_empty());
    }
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

/// brpc takes bodies up to 64 MiB by default (`max_body_size`), the proxy frames up to its
/// 8 MiB default: a 10 MiB call brpc alone would carry is refused at its header by default, and
/// taken whole, and written upstream, once `max_frame_bytes` is brpc's 64 MiB.
#[test]
fn a_call_brpc_takes_by_default_needs_max_frame_bytes_raised_to_brpcs() -> TestResult {
    let len = 10 * 1024 * 1024;
    // A well-formed protobuf payload: field 1, bytes, its length as a varint, the bytes.
    let mut payload = vec![0x0a];
    let mut rest = len;
    while rest >= 0x80 {
        payload.push((rest as u8) | 0x80);
        rest >>= 7;
    }
    payload.push(rest as u8);
    payload.resize(payload.len() + len, b'x');
    let call = frame(&echo_request(3), &payload)?;
    let codec =
        |options: &CodecOptions, side| -> Result<Box<dyn Codec>, Box<dyn std::error::Error>> {
            let factory = BrpcCodecFactory::from_options(options).map_err(|e| e.to_string())?;
            Ok(factory.new_codec(side, WireVariant::DEFAULT))
        };

    let refused = codec(&CodecOptions::default(), Side::Downstream)?
        .decode(&mut BytesMut::from(&call[..12]))
        .err();
    assert!(
        matches!(
            refused,
            Some(CodecError::FrameTooLarge { max: 8_388_608, .. })
        ),
        "{refused:?}"
    );

    let brpcs = CodecOptions::with_max_frame_bytes(64 * 1024 * 1024);
    let message = codec(&brpcs, Side::Downstream)?
        .decode(&mut BytesMut::from(&call[..]))?
        .ok_or("a whole call")?;
    assert_eq!(message.reject_reason, None);
    let mut upstream = BytesMut::new();
    let params = EncodeParams {
        request_id: 1,
        variant: WireVariant::DEFAULT,
        mutation: &Mutation::new(),
    };
    codec(&brpcs, Side::Upstream)?.encode(&message, &params, &mut upstream)?;
    assert!(upstream.len() > len);
    Ok(())
}
