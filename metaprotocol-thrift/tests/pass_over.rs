//! Unframed messages over the frame size cap are passed over as they arrive, whatever the
//! reads that bring them: a call is then answered (a `PROTOCOL_ERROR` of its name and seqid)
//! and a reply fails its own call, and the stream goes on with the next message.

mod common;

use bytes::{Buf, BufMut, BytesMut};
use common::TestResult;
use metaprotocol_core::{
    Codec, CodecError, EncodeParams, FrameHead, LocalReply, LocalReplyKind, Message, MessageKind,
    Mutation, PassedOver, Side,
};
use metaprotocol_thrift::{
    ApplicationException, FormatChoice, PROTOCOL_ERROR, Protocol, ThriftCodec, ThriftFormat,
    Transport,
};

/// The cap of the codecs under test: every argument struct below is over it.
const CAP: usize = 64;

/// A strict binary message of `message_type` (1 CALL, 2 REPLY) named `m` with `seqid` and an
/// argument (or result) struct with nested structs, lists, a map, a UUID and strings long and
/// short, some far over [`CAP`].
fn big_binary(message_type: u8, seqid: i32) -> Vec<u8> {
    let mut b = vec![0x80, 1, 0, message_type, 0, 0, 0, 1, b'm'];
    b.put_i32(seqid);
    let string = |b: &mut Vec<u8>, len: usize| {
        b.put_u32(len as u32);
        b.extend(std::iter::repeat_n(b'x', len));
    };
    b.extend_from_slice(&[11, 0, 1]);
    string(&mut b, 300);
    b.extend_from_slice(&[15, 0, 2, 12]);
    b.put_u32(3);
    for n in 0..3 {
        b.extend_from_slice(&[11, 0, 1]);
        string(&mut b, 40 * n);
        b.extend_from_slice(&[16, 0, 2]);
        b.extend_from_slice(&[7; 16]);
        b.extend_from_slice(&[13, 0, 3, 11, 10]);
        b.put_u32(2);
        for k in 0..2 {
            string(&mut b, 5 + 50 * k);
            b.put_i64(-1);
        }
        b.extend_from_slice(&[2, 0, 4, 1, 0]);
    }
    b.extend_from_slice(&[10, 0, 3]);
    b.put_i64(i64::MIN);
    b.put_u8(0);
    b
}

/// A small message of `message_type` named `m` with `seqid` and one `i32` field.
fn small_binary(message_type: u8, seqid: i32) -> Vec<u8> {
    let mut b = vec![0x80, 1, 0, message_type, 0, 0, 0, 1, b'm'];
    b.put_i32(seqid);
    b.extend_from_slice(&[8, 0, 1, 0, 0, 0, 7, 0]);
    b
}

/// `binary` (unframed, strict binary) in `protocol`, as the codec translates it.
fn unframed(binary: &[u8], protocol: Protocol) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    translated(binary, ThriftFormat::new(Transport::Unframed, protocol))
}

/// `binary` (unframed, strict binary) in `format`, as the codec translates it.
fn translated(binary: &[u8], format: ThriftFormat) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let message = ThriftCodec::new(FormatChoice::default(), 1 << 20)
        .decode(&mut BytesMut::from(binary))?
        .ok_or("incomplete")?;
    let mut out = BytesMut::new();
    let params = EncodeParams {
        request_id: message.request_id,
        variant: format.to_variant(),
        mutation: &Mutation::new(),
    };
    ThriftCodec::new(FormatChoice::default(), 1 << 20).encode(&message, &params, &mut out)?;
    Ok(out.to_vec())
}

/// What a connection of the engine decodes from `stream` arriving `piece` bytes a read: a
/// message over the cap is passed over (its read dropped once the codec walked it, or by the
/// length its head gives), as `server/connection.rs` and `upstream/connection.rs` do. The ends
/// the codec gave (and the calls of the answers passed over by their length), and the
/// messages.
fn read_as_the_engine(
    codec: &mut dyn Codec,
    stream: &[u8],
    piece: usize,
) -> Result<(Vec<Option<u64>>, Vec<Message>), CodecError> {
    let (mut ends, mut messages) = (Vec::new(), Vec::new());
    let mut buf = BytesMut::new();
    let mut passing = false;
    // The bytes still to drop of an answer whose head gave its length and call.
    let mut skipping = 0u64;
    for read in stream.chunks(piece) {
        buf.extend_from_slice(read);
        loop {
            if skipping > 0 {
                let dropped = skipping.min(buf.len() as u64);
                buf.advance(dropped as usize);
                skipping -= dropped;
                if skipping > 0 {
                    break;
                }
            }
            if passing {
                match codec.pass_over(&buf) {
                    Some(PassedOver::More) => {
                        buf.clear();
                        break;
                    }
                    Some(PassedOver::End { len, request_id }) => {
                        buf.advance(len);
                        ends.push(request_id);
                        passing = false;
                    }
                    None => return Err(CodecError::malformed("cannot pass over")),
                }
            }
            match codec.decode(&mut buf) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(CodecError::FrameTooLarge { .. })
                    if codec.oversized_response(&buf) == Some(FrameHead::Unsized) =>
                {
                    passing = true;
                }
                Err(error @ CodecError::FrameTooLarge { .. }) => {
                    match codec.oversized_response(&buf) {
                        Some(FrameHead::Response { request_id, len }) => {
                            ends.push(Some(request_id));
                            skipping = len;
                        }
                        _ => return Err(error),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok((ends, messages))
}

/// An oversize call, in any pieces, is answered with a `PROTOCOL_ERROR` of its own name and
/// seqid in its own protocol, and the call after it is decoded whole; none of its bytes are
/// held past the read that brought them.
#[test]
fn an_oversize_unframed_call_is_passed_over_and_answered() -> TestResult {
    for protocol in [Protocol::Binary, Protocol::Compact] {
        let big = unframed(&big_binary(1, 5), protocol)?;
        let stream = [big.clone(), unframed(&small_binary(1, 6), protocol)?].concat();
        for piece in (1..=80).chain([big.len() - 1, big.len(), stream.len()]) {
            let mut codec = ThriftCodec::new(FormatChoice::default(), CAP);
            let (ends, messages) = read_as_the_engine(&mut codec, &stream, piece)?;
            assert_eq!(ends, [None], "{protocol:?} in pieces of {piece}");
            let [refused, next] = &messages[..] else {
                return Err(format!("{} messages", messages.len()).into());
            };
            assert_eq!(
                (refused.kind, refused.request_id),
                (MessageKind::Request, 5)
            );
            assert_eq!(refused.metadata.get("method"), Some("m"));
            assert!(refused.reject_reason.is_some());
            assert_eq!((next.kind, next.request_id), (MessageKind::Request, 6));
            assert_eq!(next.reject_reason, None);
            let reason = refused.reject_reason.ok_or("no reason")?;
            let reply = LocalReply::new(LocalReplyKind::BadRequest, reason);
            let mut answer = BytesMut::new();
            codec.encode_local_reply(refused, &reply, &mut answer)?;
            let answer = common::decode_one(&answer)?;
            assert_eq!(
                ThriftFormat::from_variant(answer.variant),
                Some(ThriftFormat::new(Transport::Unframed, protocol))
            );
            assert_eq!(answer.request_id, 5);
            let exception = ApplicationException::from_message(&answer)?;
            assert_eq!(exception.kind, PROTOCOL_ERROR, "{}", exception.message);
            assert!(exception.message.contains("max_frame_bytes"));
        }
    }
    Ok(())
}

/// A framed or THeader call over the cap is passed over by its length, in any pieces, and
/// answered as an unframed one is, in its own transport and protocol.
#[test]
fn an_oversize_length_prefixed_call_is_passed_over_and_answered() -> TestResult {
    for transport in [Transport::Framed, Transport::Header] {
        for protocol in [Protocol::Binary, Protocol::Compact] {
            let format = ThriftFormat::new(transport, protocol);
            let big = translated(&big_binary(1, 5), format)?;
            let stream = [big.clone(), translated(&small_binary(1, 6), format)?].concat();
            for piece in [1, 2, 3, 7, 64, big.len() - 1, big.len(), stream.len()] {
                let mut codec = ThriftCodec::new(FormatChoice::default(), 2 * CAP);
                let (ends, messages) = read_as_the_engine(&mut codec, &stream, piece)?;
                assert_eq!(ends, [None], "{format} in pieces of {piece}");
                let ids: Vec<_> = messages
                    .iter()
                    .map(|m| (m.request_id, m.reject_reason.is_some()))
                    .collect();
                assert_eq!(
                    ids,
                    [(5, true), (6, false)],
                    "{format} in pieces of {piece}"
                );
                let refused = &messages[0];
                assert_eq!(refused.metadata.get("method"), Some("m"));
                let reason = refused.reject_reason.ok_or("no reason")?;
                let reply = LocalReply::new(LocalReplyKind::BadRequest, reason);
                let mut answer = BytesMut::new();
                codec.encode_local_reply(refused, &reply, &mut answer)?;
                let answer = common::decode_one(&answer)?;
                assert_eq!(ThriftFormat::from_variant(answer.variant), Some(format));
                assert_eq!(answer.request_id, 5);
                let exception = ApplicationException::from_message(&answer)?;
                assert_eq!(exception.kind, PROTOCOL_ERROR, "{}", exception.message);
            }
        }
    }
    Ok(())
}

/// A THeader frame over the cap whose message cannot be read, in the JSON protocol or under a
/// transform (snappy), is refused, in any pieces, on either side, as a smaller one is: its
/// message type cannot be read, so a call could be a one-way call, whose client reads no
/// answer, and an answer names no call. Before, a call was passed over by its length and
/// answered with an `INVALID_PROTOCOL` or `INVALID_TRANSFORM` to its THeader `seq`.
#[test]
fn an_oversize_theader_frame_that_cannot_be_read_is_refused() -> TestResult {
    let plain = translated(
        &small_binary(1, 6),
        ThriftFormat::new(Transport::Header, Protocol::Binary),
    )?;
    // THeader flags 5, seq 3, one word of header block: protocol 1 (JSON), or binary under
    // snappy (3). The message's bytes are never read.
    for (block, what) in [
        ([0x0f, 0xff, 0, 5, 0, 0, 0, 3, 0, 1, 1, 0, 0, 0], "json"),
        ([0x0f, 0xff, 0, 5, 0, 0, 0, 3, 0, 1, 0, 1, 3, 0], "snappy"),
    ] {
        let mut big = ((block.len() + 4 * CAP) as u32).to_be_bytes().to_vec();
        big.extend_from_slice(&block);
        big.extend(std::iter::repeat_n(b'[', 4 * CAP));
        let stream = [big.clone(), plain.clone()].concat();
        for piece in [1, 2, 7, 20, 64, big.len(), stream.len()] {
            for side in [Side::Downstream, Side::Upstream] {
                let mut codec = ThriftCodec::for_side(side, FormatChoice::default(), CAP);
                let read = read_as_the_engine(&mut codec, &stream, piece);
                assert!(
                    read.is_err(),
                    "{what}, {side:?}, in pieces of {piece}: {:?}",
                    read.map(|(ends, messages)| (ends, messages.len()))
                );
            }
        }
    }
    Ok(())
}

/// A THeader frame of binary `message` under zlib (1) alone, with flags 5 and `seq`, the message
/// compressed.
fn zlib_theader(seq: u32, message: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(message)?;
    let compressed = encoder.finish()?;
    // One word of header block: binary under zlib (1).
    let mut block = vec![0x0f, 0xff, 0, 5];
    block.put_u32(seq);
    block.extend_from_slice(&[0, 1, 0, 1, 1, 0]);
    let mut frame = ((block.len() + compressed.len()) as u32)
        .to_be_bytes()
        .to_vec();
    frame.extend_from_slice(&block);
    frame.extend_from_slice(&compressed);
    Ok(frame)
}

/// A strict binary message of `message_type` named `sayHello` with `seqid`, whose struct holds
/// a string of `len` bytes zlib cannot shrink (field 1, or field 0 for a reply).
fn incompressible(message_type: u8, seqid: i32, len: usize) -> Vec<u8> {
    let mut message = vec![0x80, 1, 0, message_type, 0, 0, 0, 8];
    message.extend_from_slice(b"sayHello");
    message.put_i32(seqid);
    message.extend_from_slice(&[11, 0, u8::from(message_type != 2)]);
    message.put_u32(len as u32);
    message.extend((0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    message.push(0);
    message
}

/// A zlib call or one-way call over the cap compressed is passed over by its length, in any
/// pieces, and read from the first bytes of its message, inflated (never more than the frame's
/// head): a call of its name and seqid, answered with its `PROTOCOL_ERROR`, and a one-way call
/// the engine does not answer, so a client that reads answers in order reads its next call's
/// own. Before, each was a call of no name to the frame's `seq`, the one-way one answered; and
/// the connection's next call is read whole. What is held of the call is its head alone.
#[test]
fn an_oversize_zlib_call_is_named_from_its_first_bytes_inflated() -> TestResult {
    let next = translated(
        &small_binary(1, 6),
        ThriftFormat::new(Transport::Header, Protocol::Binary),
    )?;
    for (message_type, kind) in [(1, MessageKind::Request), (4, MessageKind::Oneway)] {
        let big = zlib_theader(3, &incompressible(message_type, 9, 4 * CAP))?;
        assert!(big.len() > 4 + 4 * CAP, "{}", big.len());
        let stream = [big.clone(), next.clone()].concat();
        for piece in [1, 20, 64, big.len(), stream.len()] {
            let what = format!("type {message_type} in pieces of {piece}");
            let mut codec = ThriftCodec::new(FormatChoice::default(), CAP);
            let (ends, messages) = read_as_the_engine(&mut codec, &stream, piece)?;
            assert_eq!(ends, [None], "{what}");
            let [refused, next] = &messages[..] else {
                return Err(format!("{what}: {} messages", messages.len()).into());
            };
            assert_eq!((refused.kind, refused.request_id), (kind, 9), "{what}");
            assert_eq!(refused.metadata.get("method"), Some("sayHello"), "{what}");
            assert!(
                refused.frame.len() <= 64,
                "{what}: {} bytes held",
                refused.frame.len()
            );
            assert_eq!((next.request_id, next.reject_reason), (6, None), "{what}");
            let reason = refused.reject_reason.ok_or("no reason")?;
            if kind == MessageKind::Oneway {
                continue;
            }
            let reply = LocalReply::new(LocalReplyKind::BadRequest, reason);
            let mut answer = BytesMut::new();
            codec.encode_local_reply(refused, &reply, &mut answer)?;
            let answer = common::decode_one(&answer)?;
            assert_eq!(
                (answer.request_id, answer.metadata.get("method")),
                (9, Some("sayHello")),
                "{what}"
            );
            let exception = ApplicationException::from_message(&answer)?;
            assert_eq!(exception.kind, PROTOCOL_ERROR, "{}", exception.message);
        }
    }
    Ok(())
}

/// A zlib call over the cap whose first bytes do not inflate to a message header (corrupt, or
/// not zlib) cannot be told from a one-way call, which must get no answer, and is refused as
/// Apache Thrift's servers refuse any frame over their limit: the stream closes.
#[test]
fn an_oversize_zlib_call_whose_head_does_not_inflate_is_refused() -> TestResult {
    let mut big = zlib_theader(3, &incompressible(1, 9, 4 * CAP))?;
    // The zlib stream's first byte, its compression method, made one zlib does not define.
    big[18] = 0x5b;
    for piece in [1, 20, big.len()] {
        let mut codec = ThriftCodec::new(FormatChoice::default(), CAP);
        let result = read_as_the_engine(&mut codec, &big, piece);
        assert!(result.is_err(), "pieces of {piece}: {result:?}");
    }
    Ok(())
}

/// A zlib answer over the cluster's cap, compressed or only once inflated, names its call by
/// the seqid of its first bytes inflated, with its length: the engine passes over the frame and
/// fails that call alone, and the answer after it is read. Before, the first closed the
/// connection (failing every call on it), and the second was taken off the stream before it
/// was refused, so that the engine read the next answer's head as its own.
#[test]
fn an_oversize_zlib_answer_fails_its_call_alone() -> TestResult {
    // Room for the zlib stream's own head and the message header, compressed.
    const CAP: usize = 256;
    let compressed_over = zlib_theader(7, &incompressible(2, 7, 4 * CAP))?;
    let inflated_over = zlib_theader(8, &[&incompressible(2, 8, 0)[..], &[0; 1 << 12]].concat())?;
    assert!(compressed_over.len() > 4 + CAP && inflated_over.len() < CAP);
    let next = translated(
        &small_binary(2, 10),
        ThriftFormat::new(Transport::Header, Protocol::Binary),
    )?;
    let stream = [compressed_over, inflated_over, next].concat();
    for piece in [1, 20, 64, stream.len()] {
        let mut codec = ThriftCodec::for_side(Side::Upstream, FormatChoice::default(), CAP);
        let (ends, messages) = read_as_the_engine(&mut codec, &stream, piece)?;
        assert_eq!(ends, [Some(7), Some(8)], "pieces of {piece}");
        let ids: Vec<_> = messages.iter().map(|m| (m.kind, m.request_id)).collect();
        assert_eq!(ids, [(MessageKind::Response, 10)], "pieces of {piece}");
    }
    Ok(())
}

/// An oversize reply names the call it answers by its seqid once it has passed, and the
/// reply after it is decoded whole; an oversize call decoded upstream names none.
#[test]
fn an_oversize_unframed_reply_names_its_call() -> TestResult {
    for protocol in [Protocol::Binary, Protocol::Compact] {
        let stream = [
            unframed(&big_binary(2, -9), protocol)?,
            unframed(&small_binary(2, 10), protocol)?,
            unframed(&big_binary(1, 11), protocol)?,
        ]
        .concat();
        for piece in [1, 2, 3, 5, 16, 33, 64, 1000] {
            let mut codec = ThriftCodec::for_side(Side::Upstream, FormatChoice::default(), CAP);
            let (ends, messages) = read_as_the_engine(&mut codec, &stream, piece)?;
            assert_eq!(ends, [Some(u64::from(-9i32 as u32)), None], "{piece}");
            let ids: Vec<_> = messages.iter().map(|m| (m.kind, m.request_id)).collect();
            assert_eq!(ids, [(MessageKind::Response, 10)], "{piece}");
        }
    }
    Ok(())
}

/// A message whose struct turns out malformed while it is passed over cannot be followed: the
/// stream is refused, as when it is decoded.
#[test]
fn a_malformed_message_cannot_be_passed_over() -> TestResult {
    let mut big = big_binary(1, 5);
    let last_field = big.len() - 12;
    assert_eq!(big[last_field], 10);
    big[last_field] = 99;
    for piece in [1, 7, big.len()] {
        let mut codec = ThriftCodec::new(FormatChoice::default(), CAP);
        let result = read_as_the_engine(&mut codec, &big, piece);
        assert!(result.is_err(), "{piece}");
    }
    Ok(())
}
