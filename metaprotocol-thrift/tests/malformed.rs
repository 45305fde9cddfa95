//! Malformed, oversized, hostile and unsupported input is an error, never a panic or a hang.

mod common;

use bytes::{BufMut, BytesMut};
use common::{TestResult, auto_codec, codec_with, decode_all, goldens};
use metaprotocol_core::{
    Codec, CodecError, CodecOptions, EncodeParams, FrameHead, LocalReply, LocalReplyKind,
    MessageKind, Mutation, ResponseStatus, Side,
};
use metaprotocol_thrift::{
    ApplicationException, FormatChoice, PROTOCOL_ERROR, Protocol, TRANSPORT, ThriftCodec,
    ThriftFormat, Transport,
};
use proptest::prelude::*;

fn decode_err(
    codec_options: &CodecOptions,
    bytes: &[u8],
) -> Result<CodecError, Box<dyn std::error::Error>> {
    let mut codec = codec_with(codec_options)?;
    match decode_all(codec.as_mut(), bytes) {
        Err(error) => Ok(error),
        Ok(messages) => Err(format!("decoded {} messages from bad input", messages.len()).into()),
    }
}

fn small(max: usize) -> CodecOptions {
    CodecOptions::with_max_frame_bytes(max)
}

/// A strict binary CALL `m` with seqid 1 and `body` as its argument struct.
fn binary_call(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80, 1, 0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 1];
    out.extend_from_slice(body);
    out
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn an_oversized_length_fails_before_the_body_arrives() -> TestResult {
    // Once the message header is in: the engine needs it to answer the call.
    let mut codec = codec_with(&small(1024))?;
    let mut src = BytesMut::from(&[0u8, 0, 0x10, 0, 0x80, 1][..]);
    assert!(matches!(codec.decode(&mut src), Ok(None)));
    src.extend_from_slice(&[0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 1]);
    assert!(matches!(
        codec.decode(&mut src),
        Err(CodecError::FrameTooLarge {
            size: 4096,
            max: 1024
        })
    ));
    let mut header = BytesMut::from(&[0u8, 0, 0x10, 0, 0x0f, 0xff][..]);
    assert!(matches!(
        codec_with(&small(1024))?.decode(&mut header),
        Ok(None)
    ));
    header.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    header.extend_from_slice(&binary_call(&[]));
    assert!(matches!(
        codec_with(&small(1024))?.decode(&mut header),
        Err(CodecError::FrameTooLarge { .. })
    ));
    // A header that is not within the frame's first 64 KiB is not waited for.
    let mut long_name = BytesMut::from(&[0u8, 0x10, 0, 0, 0x80, 1, 0, 1, 0, 1, 0, 0][..]);
    assert!(matches!(
        codec.decode(&mut long_name),
        Err(CodecError::FrameTooLarge { .. })
    ));
    Ok(())
}

/// Message types on the wire.
const CALL: u8 = 1;
const REPLY: u8 = 2;
const EXCEPTION: u8 = 3;
const ONEWAY: u8 = 4;

/// A message `m` of `message_type` with `seqid` in `protocol` (`lax`: a binary header without
/// the version word): its header and where the header ends. The body, a struct whose field 0
/// is a 100-byte string, follows.
fn message(protocol: Protocol, lax: bool, message_type: u8, seqid: i32) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    match (protocol, lax) {
        (Protocol::Binary, false) => {
            out.extend_from_slice(&[0x80, 1, 0, message_type, 0, 0, 0, 1, b'm']);
            out.extend_from_slice(&seqid.to_be_bytes());
        }
        (Protocol::Binary, true) => {
            out.extend_from_slice(&[0, 0, 0, 1, b'm', message_type]);
            out.extend_from_slice(&seqid.to_be_bytes());
        }
        (Protocol::Compact, _) => {
            out.extend_from_slice(&[0x82, (message_type << 5) | 1]);
            let mut n = seqid as u32;
            while n >= 0x80 {
                out.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out.extend_from_slice(&[1, b'm']);
        }
    }
    let header_end = out.len();
    match protocol {
        Protocol::Binary => out.extend_from_slice(&[11, 0, 0, 0, 0, 0, 100]),
        Protocol::Compact => out.extend_from_slice(&[0x08, 0, 100]),
    }
    out.extend_from_slice(&[b'r'; 100]);
    out.push(0);
    (out, header_end)
}

/// `payload` in a THeader frame of `seq` whose header block is `block` (whole words).
fn theader(seq: u32, block: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = ((10 + block.len() + payload.len()) as u32)
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&[0x0f, 0xff, 0, 0]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&((block.len() / 4) as u16).to_be_bytes());
    out.extend_from_slice(block);
    out.extend_from_slice(payload);
    out
}

/// A reply of `message_type` with `seqid` framed by `transport`: the frame and where its
/// message header ends.
fn reply_in(
    transport: Transport,
    protocol: Protocol,
    lax: bool,
    message_type: u8,
    seqid: i32,
) -> (Vec<u8>, usize) {
    let (payload, header_end) = message(protocol, lax, message_type, seqid);
    match transport {
        Transport::Unframed => (payload, header_end),
        Transport::Framed => (framed(&payload), 4 + header_end),
        Transport::Header => {
            let id = if protocol == Protocol::Binary { 0 } else { 2 };
            // THeader's own seq differs from the seqid: the seqid names the call.
            (theader(99, &[id, 0, 0, 0], &payload), 18 + header_end)
        }
    }
}

#[test]
fn an_oversize_response_names_its_call_and_length_for_the_engine_to_pass_over() -> TestResult {
    let cases = [
        (Transport::Framed, Protocol::Binary, false, REPLY, 7),
        (Transport::Framed, Protocol::Binary, false, EXCEPTION, -2),
        (Transport::Framed, Protocol::Binary, true, REPLY, 7),
        (Transport::Framed, Protocol::Compact, false, REPLY, 300),
        (Transport::Framed, Protocol::Compact, false, EXCEPTION, -2),
        (Transport::Header, Protocol::Binary, false, REPLY, 7),
        (Transport::Header, Protocol::Compact, false, EXCEPTION, 300),
    ];
    for (transport, protocol, lax, message_type, seqid) in cases {
        let (frame, header_end) = reply_in(transport, protocol, lax, message_type, seqid);
        let what = format!("{transport:?} {protocol:?} lax {lax} type {message_type} {seqid}");
        // The id `decode` gives the same answer within a larger limit.
        let request_id = ThriftCodec::new(FormatChoice::default(), 1 << 20)
            .decode(&mut BytesMut::from(&frame[..]))?
            .ok_or("incomplete")?
            .request_id;
        assert_eq!(request_id, u64::from(seqid as u32), "{what}");
        let head = Some(FrameHead::Response {
            request_id,
            len: frame.len() as u64,
        });
        for choice in [
            FormatChoice::default(),
            ThriftFormat::new(transport, protocol).into(),
        ] {
            let mut small = ThriftCodec::new(choice, 64);
            assert!(
                matches!(
                    small.decode(&mut BytesMut::from(&frame[..header_end])),
                    Err(CodecError::FrameTooLarge { .. })
                ),
                "{what}"
            );
            assert_eq!(
                small.oversized_response(&frame[..header_end]),
                head,
                "{what}"
            );
            assert_eq!(small.oversized_response(&frame), head, "{what}");
            // Until the message header is in, the engine reads on.
            for n in 0..header_end {
                assert_eq!(
                    small.oversized_response(&frame[..n]),
                    Some(FrameHead::Incomplete),
                    "{what}: {n} bytes"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn an_oversize_call_or_unframed_message_is_unsized_and_a_reply_names_its_call() -> TestResult {
    let binary = || {
        ThriftCodec::new(
            ThriftFormat::new(Transport::Framed, Protocol::Binary).into(),
            64,
        )
    };
    let auto = || ThriftCodec::new(FormatChoice::default(), 64);
    // Each refusal is checked against a twin that counts, so that it is refused for its reason.
    let counts = |codec: ThriftCodec, frame: &[u8]| {
        matches!(
            codec.oversized_response(frame),
            Some(FrameHead::Response { .. })
        )
    };
    // Calls and one-way calls answer nothing: the codec passes them over by their length
    // (tests/pass_over.rs).
    for transport in [Transport::Framed, Transport::Header] {
        for message_type in [CALL, ONEWAY] {
            let (frame, _) = reply_in(transport, Protocol::Binary, false, message_type, 7);
            assert_eq!(auto().oversized_response(&frame), Some(FrameHead::Unsized));
        }
        let (reply, _) = reply_in(transport, Protocol::Binary, false, REPLY, 7);
        assert!(counts(auto(), &reply));
    }
    // Unframed, nothing gives the length: the codec passes the message over as it arrives
    // (tests/pass_over.rs), once its header is in, and in the connection's protocol.
    let (unframed, _) = reply_in(Transport::Unframed, Protocol::Binary, false, REPLY, 7);
    assert_eq!(
        auto().oversized_response(&unframed),
        Some(FrameHead::Unsized)
    );
    let unframed_codec =
        |protocol| ThriftCodec::new(ThriftFormat::new(Transport::Unframed, protocol).into(), 64);
    assert_eq!(
        unframed_codec(Protocol::Binary).oversized_response(&unframed),
        Some(FrameHead::Unsized)
    );
    assert_eq!(
        unframed_codec(Protocol::Compact).oversized_response(&unframed),
        None
    );
    assert_eq!(
        auto().oversized_response(&unframed[..10]),
        Some(FrameHead::Incomplete)
    );
    // A compact reply on a binary connection, as `decode` would refuse it.
    let (compact, _) = reply_in(Transport::Framed, Protocol::Compact, false, REPLY, 7);
    assert_eq!(binary().oversized_response(&compact), None);
    assert!(counts(auto(), &compact));
    // Under zlib, the message's head is read inflated: from a server, it names its call; from
    // a client, it is a call to answer once passed over (tests/pass_over.rs). Data that does
    // not inflate names nothing, not even whether it is a one-way call. An unknown message
    // type.
    let (payload, _) = message(Protocol::Binary, false, REPLY, 7);
    let (call, _) = message(Protocol::Binary, false, CALL, 7);
    let compress = |message: &[u8]| -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(message)?;
        encoder.finish()
    };
    let zlib = |message: &[u8]| theader(7, &[0, 1, 1, 0], message);
    let upstream = || ThriftCodec::for_side(Side::Upstream, FormatChoice::default(), 64);
    assert_eq!(
        upstream().oversized_response(&zlib(&compress(&payload)?)),
        Some(FrameHead::Response {
            request_id: 7,
            len: zlib(&compress(&payload)?).len() as u64
        })
    );
    assert_eq!(upstream().oversized_response(&zlib(&payload)), None);
    assert_eq!(
        auto().oversized_response(&zlib(&compress(&call)?)),
        Some(FrameHead::Unsized)
    );
    assert_eq!(auto().oversized_response(&zlib(&call)), None);
    assert!(counts(auto(), &theader(7, &[0, 0, 0, 0], &payload)));
    let (mut unknown, _) = reply_in(Transport::Framed, Protocol::Binary, false, REPLY, 7);
    assert!(counts(binary(), &unknown));
    unknown[7] = 9;
    assert_eq!(binary().oversized_response(&unknown), None);
    // A name running past its frame, or past 64 KiB (not waited for); a header block longer
    // than its frame.
    let mut past_frame = framed(&[0x80, 1, 0, REPLY, 0, 0, 0, 20, b'm']);
    past_frame.extend_from_slice(&[0; 100]);
    assert_eq!(binary().oversized_response(&past_frame), None);
    let long_name = [&[0, 0x10, 0, 0][..], &[0x80, 1, 0, REPLY, 0, 1, 0, 0, b'm']].concat();
    assert_eq!(binary().oversized_response(&long_name), None);
    assert_eq!(auto().oversized_response(&long_name), None);
    let block_past_frame = [0, 0, 0, 20, 0x0f, 0xff, 0, 0, 0, 0, 0, 7, 0, 8, 0, 0];
    assert_eq!(auto().oversized_response(&block_past_frame), None);
    // A frame without the THeader magic on a THeader connection.
    let header = || {
        ThriftCodec::new(
            ThriftFormat::new(Transport::Header, Protocol::Binary).into(),
            64,
        )
    };
    // (A framed binary reply whose bytes 12 and 13 would read as a one-word block.)
    let no_magic = [0, 0, 0, 100, 0x80, 1, 0, REPLY, 0, 0, 0, 1, 0, 1];
    assert_eq!(header().oversized_response(&no_magic), None);
    let (header_reply, _) = reply_in(Transport::Header, Protocol::Binary, false, REPLY, 7);
    assert!(counts(header(), &header_reply));
    Ok(())
}

#[test]
fn an_unframed_message_past_the_cap_fails_while_scanning() -> TestResult {
    // A string field announcing 1 MiB, with only its start present.
    let mut body = vec![11, 0, 1];
    body.put_u32(1 << 20);
    body.extend_from_slice(&[b'x'; 100]);
    let error = decode_err(&small(4096), &binary_call(&body))?;
    assert!(matches!(error, CodecError::FrameTooLarge { .. }), "{error}");
    // Many small fields, more bytes than the cap in total.
    let mut body = Vec::new();
    for _ in 0..2000 {
        body.extend_from_slice(&[3, 0, 1, 7]);
    }
    let error = decode_err(&small(4096), &binary_call(&body))?;
    assert!(matches!(error, CodecError::FrameTooLarge { .. }), "{error}");
    Ok(())
}

#[test]
fn deep_nesting_is_refused() -> TestResult {
    // 200 nested structs (field 1 of type struct), binary and compact, framed and unframed.
    let mut binary = [12u8, 0, 1].repeat(200);
    let mut compact = vec![0x1cu8; 200];
    binary.extend(std::iter::repeat_n(0, 201));
    compact.extend(std::iter::repeat_n(0, 201));
    let compact_call = [&[0x82, 0x21, 1, 1, b'm'][..], &compact].concat();
    for bytes in [binary_call(&binary), compact_call.clone()] {
        let error = decode_err(&CodecOptions::default(), &bytes)?;
        assert!(matches!(error, CodecError::Malformed(_)), "{error}");
    }
    // Framed, the call is rejected (see below) and translating it is refused too.
    let message = common::decode_one(&framed(&binary_call(&binary)))?;
    assert!(message.reject_reason.is_some());
    let mut out = BytesMut::new();
    let compact_format = metaprotocol_thrift::ThriftFormat::new(
        Transport::Framed,
        metaprotocol_thrift::Protocol::Compact,
    );
    let params = metaprotocol_core::EncodeParams {
        request_id: 1,
        variant: compact_format.to_variant(),
        mutation: &metaprotocol_core::Mutation::new(),
    };
    assert!(auto_codec().encode(&message, &params, &mut out).is_err());
    assert!(out.is_empty(), "nothing appended on error");
    Ok(())
}

#[test]
fn a_call_that_outgrows_the_frame_limit_in_translation_is_refused() -> TestResult {
    // A compact call whose argument is a list of 1,000 i64 zeros: a byte each in compact,
    // eight in binary. Within a 4 KiB limit as it came, 8 KiB once translated.
    let mut body = vec![0x19, 0xf6, 0xe8, 0x07];
    body.extend(std::iter::repeat_n(0, 1000));
    body.push(0);
    let call = framed(&[&[0x82, 0x21, 1, 1, b'm'][..], &body].concat());
    let mut codec = codec_with(&small(4096))?;
    let message = decode_all(codec.as_mut(), &call)?
        .pop()
        .ok_or("no message")?;
    let mut encode_as = |protocol| {
        let mut out = BytesMut::from(&b"before"[..]);
        let params = EncodeParams {
            request_id: 1,
            variant: ThriftFormat::new(Transport::Framed, protocol).to_variant(),
            mutation: &Mutation::new(),
        };
        let result = codec.encode(&message, &params, &mut out);
        (result, out)
    };
    let (result, out) = encode_as(Protocol::Binary);
    assert!(
        matches!(&result, Err(CodecError::Encode(why)) if why.contains("over the frame limit of 4096")),
        "{result:?}"
    );
    assert_eq!(&out[..], b"before", "nothing appended on error");
    let (result, out) = encode_as(Protocol::Compact);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(&out[6..], &call[..]);
    Ok(())
}

/// A call that grows past the frame limit as it is transcoded stops being written once past
/// it: a compact call of 64 KiB of `i64` zeros would take 512 KiB in binary, which the codec
/// wrote whole (holding eight times the listener's limit) before refusing it.
#[test]
fn a_call_transcoded_past_the_frame_limit_stops_being_written_there() -> TestResult {
    const CAP: usize = 64 * 1024;
    // A list of i64 zeros filling the frame: a byte each in compact, eight in binary.
    let header = [0x82, 0x21, 1, 1, b'm', 0x19, 0xf6];
    let zeros = CAP - 4 - header.len() - 3 - 1;
    let mut payload = header.to_vec();
    payload.extend_from_slice(&[
        0x80 | (zeros & 0x7f) as u8,
        0x80 | (zeros >> 7 & 0x7f) as u8,
        (zeros >> 14) as u8,
    ]);
    payload.extend(std::iter::repeat_n(0, zeros));
    payload.push(0);
    let call = framed(&payload);
    assert_eq!(call.len(), CAP);
    let mut codec = codec_with(&small(CAP))?;
    let message = decode_all(codec.as_mut(), &call)?
        .pop()
        .ok_or("no message")?;
    assert_eq!(message.reject_reason, None);
    let params = EncodeParams {
        request_id: 1,
        variant: ThriftFormat::new(Transport::Framed, Protocol::Binary).to_variant(),
        mutation: &Mutation::new(),
    };
    let mut out = BytesMut::new();
    let result = codec.encode(&message, &params, &mut out);
    assert!(
        matches!(&result, Err(CodecError::Encode(why)) if why.contains(&format!("over the frame limit of {CAP}"))),
        "{result:?}"
    );
    assert!(out.is_empty(), "nothing appended on error");
    assert!(
        out.capacity() <= 2 * CAP,
        "{} bytes made room for, for a limit of {CAP}",
        out.capacity()
    );
    Ok(())
}

#[test]
fn truncated_frames_are_malformed_and_truncated_streams_wait() -> TestResult {
    for golden in goldens()? {
        let bytes = &golden.bytes;
        for cut in 1..bytes.len() {
            let mut src = BytesMut::from(&bytes[..cut]);
            let result = auto_codec().decode(&mut src);
            assert!(
                matches!(result, Ok(None)),
                "{} cut at {cut}: {result:?}",
                golden.name
            );
            assert_eq!(
                src.len(),
                cut,
                "{}: Ok(None) leaves src unchanged",
                golden.name
            );
        }
        // A frame too short for its message header.
        if golden.format.transport == Transport::Framed {
            let payload = &bytes[4..9];
            let error = decode_err(&CodecOptions::default(), &framed(payload))?;
            assert!(
                matches!(error, CodecError::Malformed(_)),
                "{}: {error}",
                golden.name
            );
        }
    }
    Ok(())
}

/// A compact CALL `m` with seqid 1 and `body` as its argument struct.
fn compact_call(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82, 0x21, 1, 1, b'm'];
    out.extend_from_slice(body);
    out
}

/// Argument structs that cannot be read, in each protocol, with the reason they are refused.
fn bad_arguments(protocol: Protocol) -> Vec<(Vec<u8>, &'static str)> {
    let deep = |open: &[u8], stop: u8| {
        let mut body = open.repeat(100);
        body.extend(std::iter::repeat_n(stop, 101));
        body
    };
    match protocol {
        Protocol::Binary => vec![
            (vec![99, 0, 1, 0], "unknown binary field type"),
            // A string field announcing 100 bytes, with 2.
            (
                vec![11, 0, 1, 0, 0, 0, 100, b'h', b'i'],
                "the argument struct runs past the end of the frame",
            ),
            (
                vec![0, 0xff],
                "the frame holds bytes after the argument struct",
            ),
            (
                vec![15, 0, 1, 8, 0xff, 0xff, 0xff, 0xff, 0],
                "negative container size",
            ),
            (
                deep(&[12, 0, 1], 0),
                "structs or containers nested too deeply",
            ),
        ],
        Protocol::Compact => vec![
            (vec![0x1e, 0], "unknown compact field type"),
            (
                vec![0x18, 100, b'h', b'i'],
                "the argument struct runs past the end of the frame",
            ),
            (
                vec![0, 0],
                "the frame holds bytes after the argument struct",
            ),
            (
                vec![0x15, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0],
                "varint too long",
            ),
            (deep(&[0x1c], 0), "structs or containers nested too deeply"),
        ],
    }
}

/// A call with `body` in `format`: a framed message wrapped in THeader by the codec.
fn call_in(format: ThriftFormat, body: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let message = match format.protocol {
        Protocol::Binary => binary_call(body),
        Protocol::Compact => compact_call(body),
    };
    let message = common::decode_one(&framed(&message))?;
    let mut out = BytesMut::new();
    let params = EncodeParams {
        request_id: 1,
        variant: format.to_variant(),
        mutation: &Mutation::new(),
    };
    // Same protocol: the body is copied as it came, broken or not.
    auto_codec().encode(&message, &params, &mut out)?;
    Ok(out.to_vec())
}

#[test]
fn a_malformed_argument_struct_in_a_frame_is_rejected_and_the_stream_goes_on() -> TestResult {
    let goldens = goldens()?;
    for transport in [Transport::Framed, Transport::Header] {
        for protocol in [Protocol::Binary, Protocol::Compact] {
            let format = ThriftFormat::new(transport, protocol);
            let next = goldens
                .iter()
                .find(|g| g.format == format && g.is_request && g.scenario == "hello")
                .ok_or("no golden")?;
            for (body, reason) in bad_arguments(protocol) {
                let what = format!("{format} {body:02x?}");
                let stream = [call_in(format, &body)?, next.bytes.clone()].concat();
                let mut codec = auto_codec();
                let messages = decode_all(codec.as_mut(), &stream)?;
                assert_eq!(messages.len(), 2, "{what}");
                let rejected = &messages[0];
                assert_eq!(rejected.kind, MessageKind::Request, "{what}");
                assert_eq!(rejected.reject_reason, Some(reason), "{what}");
                assert_eq!(rejected.metadata.get("method"), Some("m"));
                assert_eq!(messages[1].reject_reason, None, "{what}");
                assert_eq!(
                    messages[1].metadata.get("method"),
                    Some("sayHello"),
                    "{what}"
                );

                // The engine's answer: a PROTOCOL_ERROR in the call's own format.
                let mut out = BytesMut::new();
                let reply = LocalReply::new(LocalReplyKind::BadRequest, reason);
                codec.encode_local_reply(rejected, &reply, &mut out)?;
                let answer = common::decode_one(&out)?;
                assert_eq!(answer.variant, format.to_variant(), "{what}");
                assert_eq!(answer.request_id, 1, "{what}");
                assert_eq!(answer.status, ResponseStatus::ServerError, "{what}");
                let exception = ApplicationException::from_message(&answer)?;
                assert_eq!(exception.kind, PROTOCOL_ERROR, "{what}");
                assert_eq!(exception.message, format!("bad_request: {reason}"));
            }
        }
    }
    Ok(())
}

#[test]
fn malformed_one_way_calls_are_rejected_and_unframed_ones_still_fail() -> TestResult {
    let mut oneway = binary_call(&[99, 0, 1, 0]);
    oneway[3] = 4;
    let message = common::decode_one(&framed(&oneway))?;
    assert_eq!(message.kind, MessageKind::Oneway);
    assert_eq!(message.reject_reason, Some("unknown binary field type"));
    // Unframed, the end of a malformed struct is unknown: the stream cannot go on.
    let error = decode_err(&CodecOptions::default(), &oneway)?;
    assert!(matches!(error, CodecError::Malformed(_)), "{error}");
    Ok(())
}

#[test]
fn replies_are_not_walked_but_marked_failed_when_unreadable() -> TestResult {
    // A REPLY whose result struct cannot be read is forwarded as a server error.
    let mut reply = binary_call(&[99, 0, 1, 0]);
    reply[3] = 2;
    let message = common::decode_one(&framed(&reply))?;
    assert_eq!(message.kind, MessageKind::Response);
    assert_eq!(message.status, ResponseStatus::ServerError);
    assert_eq!(message.reject_reason, None);
    Ok(())
}

/// The error each side's codec gives `frame`, a THeader frame whose message it cannot read,
/// as the first of a stream: the frame after it is never read.
fn unreadable_frame_errors(frame: &[u8]) -> Result<[CodecError; 2], Box<dyn std::error::Error>> {
    let mut errors = Vec::new();
    for side in [Side::Downstream, Side::Upstream] {
        let mut codec = ThriftCodec::for_side(side, FormatChoice::default(), 1 << 20);
        let decoded = codec.decode(&mut BytesMut::from(frame));
        errors.push(decoded.err().ok_or(format!("{side:?} decoded it"))?);
    }
    let [downstream, upstream] =
        <[CodecError; 2]>::try_from(errors).map_err(|errors| format!("{} errors", errors.len()))?;
    Ok([downstream, upstream])
}

/// A THeader frame under a transform this codec cannot undo (snappy, HMAC) is refused as
/// unsupported, a call's as an answer's: its message type is hidden, so a call could be a
/// one-way call, whose client reads no answer (a synchronous one takes an answer for its next
/// call's), and an answer names no call it could fail. The engine closes the connection, as
/// Apache Thrift's servers close it on a transform they lack (the C++ one after an exception
/// of no name to seqid 0, the Python one failing to write its own). Before, a call was
/// answered with an `INVALID_TRANSFORM` to its THeader `seq`, and the connection went on.
#[test]
fn theader_transforms_are_refused() -> TestResult {
    for id in [0u8, 2] {
        for (transform, name) in [(3u8, "snappy"), (2, "hmac")] {
            // THeader flags 5, seq 9, one transform; the message is what it made.
            let block = [0x0f, 0xff, 0, 5, 0, 0, 0, 9, 0, 1, id, 1, transform, 0];
            let transformed = framed(&[&block[..], &[0x78, 0x9c, 1, 2, 3]].concat());
            let expected = CodecError::Unsupported(
                format!("THeader transform {name} ({transform}) is not supported").into(),
            );
            assert_eq!(
                unreadable_frame_errors(&transformed)?,
                [expected.clone(), expected],
                "protocol {id}"
            );
        }
    }
    // A header block longer than the frame.
    let frame = [0x0f, 0xff, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0];
    let error = decode_err(&CodecOptions::default(), &framed(&frame))?;
    assert!(matches!(error, CodecError::Malformed(_)), "{error}");
    Ok(())
}

/// A THeader frame in the JSON protocol (id 1), or an id THeader does not define, is refused,
/// a call's as an answer's (unsupported, or malformed for an id THeader does not define): its
/// message type cannot be read, as under a transform not undone. Before, a call was answered
/// with an `INVALID_PROTOCOL` to its THeader `seq`, and the connection went on.
#[test]
fn a_theader_frame_in_json_or_an_unknown_protocol_is_refused() -> TestResult {
    // A JSON call `[1,"m",1,3,{}]` is what a JSON THeader client sends; its bytes are not read.
    let json = br#"[1,"m",1,3,{}]"#;
    for (id, error) in [(1u8, "Unsupported"), (3, "Malformed"), (0x7f, "Malformed")] {
        // THeader flags 5, seq 3, one word of header block: protocol `id`, no transforms.
        let block = [0x0f, 0xff, 0, 5, 0, 0, 0, 3, 0, 1, id, 0, 0, 0];
        let call = framed(&[&block[..], json].concat());
        for refused in unreadable_frame_errors(&call)? {
            assert!(
                format!("{refused:?}").starts_with(error),
                "{id}: {refused:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn bad_headers_are_malformed() -> TestResult {
    let cases: [&[u8]; 4] = [
        &[0x80, 2, 0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 1, 0], // binary version 2
        &[0x80, 1, 0, 9, 0, 0, 0, 1, b'm', 0, 0, 0, 1, 0], // message type 9
        &[0x80, 1, 0, 1, 0, 0, 0, 1, 0xff, 0, 0, 0, 1, 0], // name not UTF-8
        &[0x82, 0x22, 1, 1, b'm', 0],                      // compact version 2
    ];
    for case in cases {
        for bytes in [case.to_vec(), framed(case)] {
            let error = decode_err(&CodecOptions::default(), &bytes)?;
            assert!(
                matches!(error, CodecError::Malformed(_)),
                "{case:?}: {error}"
            );
        }
    }
    // A bad field type: an unframed message whose end cannot be found.
    let error = decode_err(&CodecOptions::default(), &binary_call(&[99, 0, 1]))?;
    assert!(matches!(error, CodecError::Malformed(_)), "{error}");
    Ok(())
}

#[test]
fn a_forced_transport_refuses_other_framings() -> TestResult {
    let mut options = CodecOptions::default();
    options.insert(TRANSPORT, "header");
    let framed_golden = goldens()?
        .into_iter()
        .find(|g| g.format.transport == Transport::Framed)
        .ok_or("no framed golden")?;
    let error = decode_err(&options, &framed_golden.bytes)?;
    assert!(matches!(error, CodecError::Malformed(_)), "{error}");
    Ok(())
}

#[test]
fn a_connection_keeps_its_first_format() -> TestResult {
    let goldens = goldens()?;
    let binary = goldens
        .iter()
        .find(|g| g.name == "binary-framed-hello.req.hex")
        .ok_or("missing")?;
    let compact = goldens
        .iter()
        .find(|g| g.name == "compact-framed-hello.req.hex")
        .ok_or("missing")?;
    let stream = [binary.bytes.clone(), compact.bytes.clone()].concat();
    let error = decode_err(&CodecOptions::default(), &stream)?;
    assert!(matches!(error, CodecError::Malformed(_)), "{error}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut codec = codec_with(&small(512)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let _ = decode_all(codec.as_mut(), &bytes);
        let _ = ThriftCodec::new(FormatChoice::default(), 16).oversized_response(&bytes);
    }

    #[test]
    fn mutated_goldens_never_panic(index in 0usize..64, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let goldens = goldens().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let golden = &goldens[index % goldens.len()];
        let mut bytes = golden.bytes.clone();
        for (at, value) in flips {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        let mut codec = auto_codec();
        if let Ok(messages) = decode_all(codec.as_mut(), &bytes) {
            for message in messages {
                for target in common::all_formats() {
                    let mut out = BytesMut::new();
                    let params = metaprotocol_core::EncodeParams {
                        request_id: 1,
                        variant: target.to_variant(),
                        mutation: &metaprotocol_core::Mutation::new(),
                    };
                    let _ = codec.encode(&message, &params, &mut out);
                }
            }
        }
    }
}
