//! THeader frames under the zlib transform (id 1): inflated within the frame size cap, read as
//! any THeader frame, and forwarded without the transform.

mod common;

use std::io::Write;

use bytes::{BufMut, BytesMut};
use common::{TestResult, decode_all};
use flate2::Compression;
use flate2::write::ZlibEncoder;
use metaprotocol_core::{
    Codec, CodecError, EncodeParams, LocalReply, LocalReplyKind, Message, MessageKind, Mutation,
    Side,
};
use metaprotocol_thrift::{
    ApplicationException, FormatChoice, PROTOCOL_ERROR, Protocol, ThriftCodec,
};

const CALL: u8 = 1;
const REPLY: u8 = 2;
const ONEWAY: u8 = 4;

/// A message `name` of `message_type` and `seqid` whose struct holds field 0 (a reply's
/// success) or 1 (a call's argument), a string `value`.
fn message(protocol: Protocol, message_type: u8, name: &str, seqid: i32, value: &[u8]) -> Vec<u8> {
    let field = u8::from(message_type != REPLY);
    let mut out = Vec::new();
    match protocol {
        Protocol::Binary => {
            out.extend_from_slice(&[0x80, 1, 0, message_type]);
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&seqid.to_be_bytes());
            out.extend_from_slice(&[11, 0, field]);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        }
        Protocol::Compact => {
            out.extend_from_slice(&[0x82, (message_type << 5) | 1]);
            put_varint(&mut out, seqid as u32 as usize);
            put_varint(&mut out, name.len());
            out.extend_from_slice(name.as_bytes());
            // A field header of delta `field` and type binary (8); for field 0, a long one.
            if field == 0 {
                out.extend_from_slice(&[8, 0]);
            } else {
                out.push(0x18);
            }
            put_varint(&mut out, value.len());
        }
    }
    out.extend_from_slice(value);
    out.push(0);
    out
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// `len` pseudo-random lowercase letters, which zlib cannot shrink much.
fn letters(len: u32) -> Vec<u8> {
    (0..len)
        .scan(1u32, |x, _| {
            *x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            Some(b'a' + (*x >> 16) as u8 % 26)
        })
        .collect()
}

fn compress(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// A THeader frame with flags 0 and `seq` in `protocol`, under `transforms`, with a header
/// `k: v`, carrying `payload` as it is.
fn theader(protocol: Protocol, seq: u32, transforms: &[u8], payload: &[u8]) -> BytesMut {
    let mut block = vec![match protocol {
        Protocol::Binary => 0,
        Protocol::Compact => 2,
    }];
    block.push(transforms.len() as u8);
    block.extend_from_slice(transforms);
    block.extend_from_slice(&[1, 1, 1, b'k', 1, b'v']);
    block.resize(block.len().div_ceil(4) * 4, 0);
    let mut frame = BytesMut::new();
    frame.put_u32((10 + block.len() + payload.len()) as u32);
    frame.extend_from_slice(&[0x0f, 0xff, 0, 0]);
    frame.put_u32(seq);
    frame.put_u16((block.len() / 4) as u16);
    frame.extend_from_slice(&block);
    frame.extend_from_slice(payload);
    frame
}

/// The header block of THeader `frame`: its transform count and its message.
fn transforms_and_payload(frame: &[u8]) -> (u8, &[u8]) {
    let words = usize::from(u16::from_be_bytes([frame[12], frame[13]]));
    (frame[15], &frame[14 + words * 4..])
}

fn codec(side: Side, cap: usize) -> ThriftCodec {
    ThriftCodec::for_side(side, FormatChoice::default(), cap)
}

fn decode_single(codec: &mut dyn Codec, frame: &[u8]) -> Result<Message, CodecError> {
    let mut messages = decode_all(codec, frame)?;
    assert_eq!(messages.len(), 1);
    Ok(messages.remove(0))
}

fn forward(message: &Message, request_id: u64) -> Result<BytesMut, CodecError> {
    let params = EncodeParams {
        request_id,
        variant: message.variant,
        mutation: &Mutation::new(),
    };
    let mut out = BytesMut::new();
    codec(Side::Downstream, 1 << 20).encode(message, &params, &mut out)?;
    Ok(out)
}

fn refusal(message: &Message) -> Result<ApplicationException, Box<dyn std::error::Error>> {
    let reason = message.reject_reason.ok_or("not refused")?;
    let mut out = BytesMut::new();
    codec(Side::Downstream, 1 << 20).encode_local_reply(
        message,
        &LocalReply::new(LocalReplyKind::BadRequest, reason),
        &mut out,
    )?;
    let answer = decode_single(&mut codec(Side::Upstream, 1 << 20), &out)?;
    assert_eq!(answer.request_id, message.request_id);
    Ok(ApplicationException::from_message(&answer)?)
}

/// Calls, one-way calls and replies under zlib are read as they would be without it (kind,
/// seqid, method, headers), and forwarded with no transform: the message inflated, its seqid
/// the proxy's, so every THeader peer reads it.
#[test]
fn zlib_messages_are_read_and_forwarded_inflated() -> TestResult {
    for protocol in [Protocol::Binary, Protocol::Compact] {
        for (side, message_type, kind) in [
            (Side::Downstream, CALL, MessageKind::Request),
            (Side::Downstream, ONEWAY, MessageKind::Oneway),
            (Side::Upstream, REPLY, MessageKind::Response),
        ] {
            let what = format!("{protocol:?} type {message_type}");
            let plain = message(protocol, message_type, "sayHello", 7, &[b'z'; 300]);
            let frame = theader(protocol, 7, &[1], &compress(&plain)?);
            assert!(frame.len() < plain.len(), "{what}: compressed");
            let decoded = decode_single(&mut codec(side, 1 << 20), &frame)?;
            assert_eq!((decoded.kind, decoded.request_id), (kind, 7), "{what}");
            assert_eq!(decoded.metadata.get("method"), Some("sayHello"), "{what}");
            assert_eq!(decoded.metadata.get("k"), Some("v"), "{what}");
            assert_eq!(decoded.reject_reason, None, "{what}");

            let out = forward(&decoded, 9)?;
            let expected = message(protocol, message_type, "sayHello", 9, &[b'z'; 300]);
            assert_eq!(transforms_and_payload(&out), (0, &expected[..]), "{what}");
            let again = decode_single(&mut codec(side, 1 << 20), &out)?;
            assert_eq!((again.kind, again.request_id), (kind, 9), "{what}");
            assert_eq!(again.metadata.get("k"), Some("v"), "{what}");
        }
    }
    Ok(())
}

/// A call that inflates past the cap (a zlib bomb) is refused with a `PROTOCOL_ERROR` naming
/// its method and seqid, having inflated no more than the cap; a one-way one is refused too
/// (the engine answers none); one just within the cap is read. A reply that inflates past a
/// cluster's cap is refused as a frame too large.
#[test]
fn zlib_messages_inflate_no_further_than_the_frame_cap() -> TestResult {
    const CAP: usize = 1024;
    for protocol in [Protocol::Binary, Protocol::Compact] {
        let bomb = compress(&message(protocol, CALL, "sayHello", 7, &[0; 1 << 18]))?;
        assert!(bomb.len() < CAP, "{}", bomb.len());
        let refused = decode_single(
            &mut codec(Side::Downstream, CAP),
            &theader(protocol, 7, &[1], &bomb),
        )?;
        assert_eq!(
            (refused.kind, refused.request_id),
            (MessageKind::Request, 7)
        );
        assert_eq!(refused.metadata.get("method"), Some("sayHello"));
        assert!(refused.frame.len() <= 4 + CAP, "{}", refused.frame.len());
        let exception = refusal(&refused)?;
        assert_eq!(exception.kind, PROTOCOL_ERROR);
        assert!(
            exception.message.contains("inflates"),
            "{}",
            exception.message
        );

        let one_way = compress(&message(protocol, ONEWAY, "ping", 0, &[0; 1 << 18]))?;
        let frame = theader(protocol, 0, &[1], &one_way);
        let refused = decode_single(&mut codec(Side::Downstream, CAP), &frame)?;
        assert_eq!(refused.kind, MessageKind::Oneway);
        assert!(refused.reject_reason.is_some());

        // Within the cap, whole: the frame inflated is 4 + CAP bytes long (its header block
        // as long as before, the transform's place taken by padding).
        let head = theader(protocol, 7, &[1], &[]).len() - 4;
        let long = message(protocol, CALL, "m", 7, &[b'v'; CAP]).len();
        let value = vec![b'v'; CAP - (long - CAP) - head];
        let frame = theader(
            protocol,
            7,
            &[1],
            &compress(&message(protocol, CALL, "m", 7, &value))?,
        );
        let read = decode_single(&mut codec(Side::Downstream, CAP), &frame)?;
        assert_eq!((read.reject_reason, read.frame.len()), (None, 4 + CAP));
        let over = [value, vec![b'v']].concat();
        let frame = theader(
            protocol,
            7,
            &[1],
            &compress(&message(protocol, CALL, "m", 7, &over))?,
        );
        let refused = decode_single(&mut codec(Side::Downstream, CAP), &frame)?;
        assert!(refused.reject_reason.is_some());

        let reply = compress(&message(protocol, REPLY, "sayHello", 7, &[0; 1 << 20]))?;
        let error = decode_all(
            &mut codec(Side::Upstream, CAP),
            &theader(protocol, 7, &[1], &reply),
        );
        assert!(
            matches!(error, Err(CodecError::FrameTooLarge { .. })),
            "{error:?}"
        );
    }
    Ok(())
}

/// A call whose zlib data is corrupt or cut short after its message header is refused with a
/// `PROTOCOL_ERROR` naming it, and the connection's next frame is read. Other transforms, and
/// zlib stacked with another, hide the message type: such a frame is refused as unsupported
/// (the engine closes the connection), as it could be a one-way call.
#[test]
fn corrupt_zlib_and_other_transforms_are_refused() -> TestResult {
    for protocol in [Protocol::Binary, Protocol::Compact] {
        // Letters zlib cannot shrink much: half of them carry the message header.
        let compressed = compress(&message(protocol, CALL, "sayHello", 5, &letters(4000)))?;
        let plain = theader(protocol, 6, &[], &message(protocol, CALL, "next", 6, b""));
        let cut = theader(protocol, 3, &[1], &compressed[..compressed.len() / 2]);
        let messages = decode_all(
            &mut codec(Side::Downstream, 1 << 20),
            &[cut, plain.clone()].concat(),
        )?;
        let [refused, next] = &messages[..] else {
            return Err(format!("{protocol:?}: {} messages", messages.len()).into());
        };
        assert_eq!(refused.request_id, 5, "{protocol:?}");
        assert_eq!(refused.metadata.get("method"), Some("sayHello"));
        assert_eq!(refusal(refused)?.kind, PROTOCOL_ERROR, "{protocol:?}");
        assert_eq!((next.request_id, next.reject_reason), (6, None));
        for (transforms, payload) in [
            (&[3][..], compressed.clone()),
            (&[2], compressed.clone()),
            (&[1, 1], compress(&compressed)?),
        ] {
            let stream = [theader(protocol, 3, transforms, &payload), plain.clone()].concat();
            let decoded = decode_all(&mut codec(Side::Downstream, 1 << 20), &stream);
            assert!(
                matches!(decoded, Err(CodecError::Unsupported(_))),
                "{protocol:?} {transforms:?}: {:?}",
                decoded.map(|messages| messages.len())
            );
        }
    }
    Ok(())
}

/// A frame whose zlib data is corrupt, cut short or too long before its message header is
/// whole could be a one-way call, whose client reads no answer (a synchronous one would take
/// an answer for its next call's): it is refused as malformed (the engine closes the
/// connection, counted, as Apache Thrift's C++ and Python servers close it when a frame does
/// not inflate), within the cap as over it. One whose message header is in is answered (a
/// one-way call, with nothing).
#[test]
fn a_zlib_frame_unreadable_before_its_message_header_is_refused() -> TestResult {
    const CAP: usize = 1024;
    for protocol in [Protocol::Binary, Protocol::Compact] {
        let call = compress(&message(protocol, CALL, "sayHello", 5, b"hi"))?;
        // A name the cap cannot hold, whose first bytes inflate within it.
        let long_name = compress(&message(protocol, CALL, &"a".repeat(4 * CAP), 5, b""))?;
        for (what, payload) in [
            ("not zlib", b"not zlib".to_vec()),
            ("its zlib header alone", call[..2].to_vec()),
            ("cut in its message header", call[..6].to_vec()),
            ("a name past the cap", long_name),
        ] {
            let what = format!("{protocol:?}, {what}");
            let frame = theader(protocol, 3, &[1], &payload);
            let decoded = decode_all(&mut codec(Side::Downstream, CAP), &frame);
            assert!(
                matches!(decoded, Err(CodecError::Malformed(_))),
                "{what}: {:?}",
                decoded.map(|messages| messages
                    .iter()
                    .map(|m| (m.kind, m.request_id, m.reject_reason))
                    .collect::<Vec<_>>())
            );
        }
        let one_way = compress(&message(protocol, ONEWAY, "ping", 0, &letters(400)))?;
        let frame = theader(protocol, 0, &[1], &one_way[..one_way.len() / 2]);
        let refused = decode_single(&mut codec(Side::Downstream, CAP), &frame)?;
        assert_eq!(refused.kind, MessageKind::Oneway, "{protocol:?}");
        assert!(refused.reject_reason.is_some(), "{protocol:?}");
    }
    Ok(())
}
