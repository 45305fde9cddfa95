//! Thrift as the tools speak it: the strict binary protocol over the framed transport, calls of
//! `EchoService:echo(1: string payload)` (a `TMultiplexedProtocol` name, so the proxy sees a
//! service and a method), answered as `TMultiplexedProcessor` does: a `REPLY` named after the
//! bare method, whose result struct holds the string as field 0. The thrift crate has no public
//! frame builder, so this is the small one the tools share.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use metaprotocol_core::keys;

use super::{Answer, Response, WireError, be_u32, checked_total};

const SERVICE: &str = "EchoService";
const METHOD: &str = "echo";
/// The multiplexed name a `TMultiplexedProtocol` client writes.
const CALL_NAME: &str = "EchoService:echo";

/// The service and method the codec splits the multiplexed name into.
pub(super) const ROUTE_KEYS: [(&str, &str); 2] = [(keys::SERVICE, SERVICE), (keys::METHOD, METHOD)];

const FRAME_HEADER_LEN: usize = 4;
/// The strict binary protocol's version word, message type in the low byte.
const VERSION_1: u32 = 0x8001_0000;
const VERSION_MASK: u32 = 0xffff_0000;
const CALL: u8 = 1;
const REPLY: u8 = 2;
const EXCEPTION: u8 = 3;
const ONEWAY: u8 = 4;
const T_STOP: u8 = 0;
const T_STRING: u8 = 11;
/// The argument's field id in the call, and the result's in the reply.
const ARGUMENT_FIELD: u16 = 1;
const SUCCESS_FIELD: u16 = 0;

pub(super) fn write_call(id: u64, payload: &[u8], out: &mut BytesMut) {
    put_message(
        out,
        CALL,
        CALL_NAME.as_bytes(),
        id as u32,
        ARGUMENT_FIELD,
        payload,
    );
}

pub(super) fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    checked_total(FRAME_HEADER_LEN, be_u32(buf, 0)?).map(Some)
}

pub(super) fn read_response(frame: &Bytes) -> Result<Response, WireError> {
    let message = Message::read(frame)?;
    let answer = match message.kind {
        REPLY => match string_field(frame, message.body_at, SUCCESS_FIELD)? {
            Some(payload) => Answer::Payload(payload),
            // A declared exception.
            None => Answer::Refused,
        },
        EXCEPTION => Answer::Refused,
        _ => return Err(WireError::Malformed("neither a reply nor an exception")),
    };
    Ok(Response {
        id: u64::from(message.seqid),
        answer,
    })
}

pub(super) fn answer(frame: &Bytes, out: &mut BytesMut) -> Result<(), WireError> {
    let message = Message::read(frame)?;
    match message.kind {
        CALL => {
            let payload = string_field(frame, message.body_at, ARGUMENT_FIELD)?
                .ok_or(WireError::Malformed("a call without a string argument"))?;
            let name = &frame[message.name];
            // The multiplexing prefix (up to ':') is the processor's, not the method's.
            let method = match name.iter().position(|&b| b == b':') {
                Some(colon) => &name[colon + 1..],
                None => name,
            };
            put_message(
                out,
                REPLY,
                method,
                message.seqid,
                SUCCESS_FIELD,
                &frame[payload],
            );
            Ok(())
        }
        ONEWAY => Ok(()),
        _ => Err(WireError::Malformed("neither a call nor a one-way call")),
    }
}

/// Appends a framed message whose struct is one string field.
fn put_message(out: &mut BytesMut, kind: u8, name: &[u8], seqid: u32, field: u16, text: &[u8]) {
    // Version, name length, name, seqid, field header, string length, string, stop.
    let len = 4 + 4 + name.len() + 4 + 3 + 4 + text.len() + 1;
    out.reserve(FRAME_HEADER_LEN + len);
    out.put_u32(len as u32);
    out.put_u32(VERSION_1 | u32::from(kind));
    out.put_u32(name.len() as u32);
    out.put_slice(name);
    out.put_u32(seqid);
    out.put_u8(T_STRING);
    out.put_u16(field);
    out.put_u32(text.len() as u32);
    out.put_slice(text);
    out.put_u8(T_STOP);
}

/// The message header of a whole frame.
struct Message {
    kind: u8,
    name: Range<usize>,
    seqid: u32,
    /// Where the struct starts.
    body_at: usize,
}

impl Message {
    fn read(frame: &[u8]) -> Result<Self, WireError> {
        let version = be_u32(frame, FRAME_HEADER_LEN)?;
        if version & VERSION_MASK != VERSION_1 {
            return Err(WireError::Malformed("not the strict binary protocol"));
        }
        let name_at = FRAME_HEADER_LEN + 8;
        let name = name_at..name_at + be_u32(frame, FRAME_HEADER_LEN + 4)? as usize;
        let seqid = be_u32(frame, name.end)?;
        Ok(Self {
            kind: version as u8,
            body_at: name.end + 4,
            name,
            seqid,
        })
    }
}

/// The string of the struct's first field when it is string field `id`.
fn string_field(frame: &[u8], at: usize, id: u16) -> Result<Option<Range<usize>>, WireError> {
    match frame.get(at..at + 3) {
        Some(&[T_STRING, high, low]) if u16::from_be_bytes([high, low]) == id => {
            let start = at + 3 + 4;
            let range = start..start + be_u32(frame, at + 3)? as usize;
            if range.end > frame.len() {
                return Err(WireError::Malformed("truncated string"));
            }
            Ok(Some(range))
        }
        Some(_) => Ok(None),
        None => Err(WireError::Malformed("truncated struct")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_the_bare_method() -> Result<(), WireError> {
        let mut call = BytesMut::new();
        write_call(5, b"hi", &mut call);
        let mut reply = BytesMut::new();
        answer(&call.freeze(), &mut reply)?;
        let message = Message::read(&reply)?;
        assert_eq!(&reply[message.name], METHOD.as_bytes());
        assert_eq!((message.kind, message.seqid), (REPLY, 5));
        Ok(())
    }

    #[test]
    fn exceptions_and_declared_exceptions_are_refusals() -> Result<(), WireError> {
        for (kind, field) in [(EXCEPTION, 1), (REPLY, 1)] {
            let mut frame = BytesMut::new();
            put_message(&mut frame, kind, b"echo", 8, field, b"boom");
            let response = read_response(&frame.freeze())?;
            assert_eq!((response.id, response.answer), (8, Answer::Refused));
        }
        Ok(())
    }
}
