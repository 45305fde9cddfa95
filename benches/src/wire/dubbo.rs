//! Dubbo2 as the tools speak it: two-way Hessian2 calls of `echo(String)` built with
//! `metaprotocol_dubbo::build`, answered with the string as the value. Strings are ASCII and
//! fit one Hessian2 chunk ([`MAX_PAYLOAD`] characters), which is all the tools ever send.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use metaprotocol_core::keys;
use metaprotocol_dubbo::build::{self, Call};
use metaprotocol_dubbo::status;

use super::{Answer, Payload, Response, WireError, be_u32, checked_total};

const SERVICE: &str = "org.apache.dubbo.samples.EchoService";
const METHOD: &str = "echo";

/// The interface and the method, as the codec's metadata names them.
pub(super) const ROUTE_KEYS: [(&str, &str); 2] =
    [(keys::INTERFACE, SERVICE), (keys::METHOD, METHOD)];
/// The longest string Java's Hessian2 writer sends in one chunk.
pub(super) const MAX_PAYLOAD: usize = 0x8000;

const HEADER_LEN: usize = 16;
const MAGIC: [u8; 2] = [0xda, 0xbb];
const FLAG_REQUEST: u8 = 0x80;
const FLAG_TWO_WAY: u8 = 0x40;
const FLAG_EVENT: u8 = 0x20;
const SERIALIZATION_MASK: u8 = 0x1f;
const HESSIAN2: u8 = 2;
/// Result flags (Hessian2 compact ints) of a value without and with attachments.
const VALUE_RESULTS: [u8; 2] = [0x91, 0x94];
/// Hessian2 null: the body of a heartbeat answer.
const NULL: u8 = b'N';
/// Call fields before the arguments: dubbo version, service, version, method, descriptor.
const CALL_FIELDS: usize = 5;

/// A connection's call template, whose id and payload are patched per call.
#[derive(Debug)]
pub(super) struct Caller {
    template: Bytes,
    payload_at: Range<usize>,
}

impl Caller {
    pub(super) fn new(payload: &Payload) -> Result<Self, WireError> {
        let text = std::str::from_utf8(&payload.bytes)
            .map_err(|_| WireError::Encode("the payload is not text".to_owned()))?;
        let call = Call {
            service: SERVICE,
            version: "1.0.0",
            method: METHOD,
            string_args: &[text],
            attachments: &[("tenant", "t1")],
        };
        let template = build::request(0, true, &call);
        let payload_at = call_argument(&template)?;
        Ok(Self {
            template,
            payload_at,
        })
    }

    pub(super) fn write(&self, id: u64, payload: &[u8], out: &mut BytesMut) {
        let start = out.len();
        out.extend_from_slice(&self.template);
        let frame = &mut out[start..];
        frame[4..12].copy_from_slice(&id.to_be_bytes());
        frame[self.payload_at.clone()].copy_from_slice(payload);
    }
}

pub(super) fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() >= 2 && buf[..2] != MAGIC {
        return Err(WireError::Malformed("not a Dubbo frame"));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    checked_total(HEADER_LEN, be_u32(buf, 12)?).map(Some)
}

pub(super) fn read_response(frame: &Bytes) -> Result<Response, WireError> {
    let (flag, status, id) = header(frame)?;
    if flag & (FLAG_REQUEST | FLAG_EVENT) != 0 {
        return Err(WireError::Malformed("not a response to a call"));
    }
    let answer = match frame.get(HEADER_LEN) {
        Some(result) if status == status::OK && VALUE_RESULTS.contains(result) => {
            Answer::Payload(string_at(frame, HEADER_LEN + 1)?)
        }
        // An error status, an exception or a null result.
        _ => Answer::Refused,
    };
    Ok(Response { id, answer })
}

pub(super) fn answer(frame: &Bytes, out: &mut BytesMut) -> Result<(), WireError> {
    let (flag, _, id) = header(frame)?;
    if flag & FLAG_REQUEST == 0 {
        return Err(WireError::Malformed(
            "a response where a request was expected",
        ));
    }
    if flag & SERIALIZATION_MASK != HESSIAN2 {
        return Err(WireError::Malformed("not a Hessian2 body"));
    }
    if flag & FLAG_TWO_WAY == 0 {
        return Ok(());
    }
    if flag & FLAG_EVENT != 0 {
        // A heartbeat, answered as providers do: an event response with a null body.
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[FLAG_EVENT | HESSIAN2, status::OK]);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&[NULL]);
        return Ok(());
    }
    let argument = call_argument(frame)?;
    let text = std::str::from_utf8(&frame[argument])
        .map_err(|_| WireError::Malformed("a non-ASCII string"))?;
    out.extend_from_slice(&build::value_response(id, text, &[]));
    Ok(())
}

/// The flag, status and id of a whole frame.
fn header(frame: &[u8]) -> Result<(u8, u8, u64), WireError> {
    if frame.len() < HEADER_LEN || frame[..2] != MAGIC {
        return Err(WireError::Malformed("not a Dubbo frame"));
    }
    let id = u64::from(be_u32(frame, 4)?) << 32 | u64::from(be_u32(frame, 8)?);
    Ok((frame[2], frame[3], id))
}

/// Where the first argument of a call sits: the string after the call fields.
fn call_argument(frame: &[u8]) -> Result<Range<usize>, WireError> {
    let mut at = HEADER_LEN;
    for _ in 0..CALL_FIELDS {
        at = string_at(frame, at)?.end;
    }
    string_at(frame, at)
}

/// The characters of the one-chunk ASCII Hessian2 string at `at`.
fn string_at(frame: &[u8], at: usize) -> Result<Range<usize>, WireError> {
    let byte = |i: usize| {
        frame
            .get(i)
            .map(|&b| usize::from(b))
            .ok_or(WireError::Malformed("truncated string"))
    };
    let (len, start) = match byte(at)? {
        short @ 0x00..=0x1f => (short, at + 1),
        medium @ 0x30..=0x33 => ((medium - 0x30) << 8 | byte(at + 1)?, at + 2),
        0x53 => (byte(at + 1)? << 8 | byte(at + 2)?, at + 3),
        _ => return Err(WireError::Malformed("not a one-chunk Hessian2 string")),
    };
    let range = start..start + len;
    match frame.get(range.clone()) {
        Some(text) if text.is_ascii() => Ok(range),
        Some(_) => Err(WireError::Malformed("a non-ASCII string")),
        None => Err(WireError::Malformed("truncated string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_answered_and_one_way_calls_are_not() -> Result<(), WireError> {
        let mut heartbeat = BytesMut::from(&MAGIC[..]);
        heartbeat.extend_from_slice(&[FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | HESSIAN2, 0]);
        heartbeat.extend_from_slice(&9u64.to_be_bytes());
        heartbeat.extend_from_slice(&1u32.to_be_bytes());
        heartbeat.extend_from_slice(&[NULL]);
        let mut out = BytesMut::new();
        answer(&heartbeat.freeze(), &mut out)?;
        assert_eq!(header(&out)?, (FLAG_EVENT | HESSIAN2, status::OK, 9));

        let call = Call {
            service: SERVICE,
            version: "1.0.0",
            method: METHOD,
            string_args: &["x"],
            attachments: &[],
        };
        let mut out = BytesMut::new();
        answer(&build::request(3, false, &call), &mut out)?;
        assert!(out.is_empty());
        Ok(())
    }

    #[test]
    fn error_statuses_are_refusals() -> Result<(), WireError> {
        let mut frame = BytesMut::from(&build::value_response(4, "x", &[])[..]);
        frame[3] = status::SERVICE_NOT_FOUND;
        let response = read_response(&frame.freeze())?;
        assert_eq!((response.id, response.answer), (4, Answer::Refused));
        Ok(())
    }
}
