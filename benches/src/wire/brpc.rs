//! bRPC `baidu_std` as the tools speak it: calls of `example.EchoService.Echo` written with
//! `metaprotocol_brpc::encode_frame`, metas read zero-copy with `RpcMetaView`, answered with the
//! payload echoed under the call's `correlation_id` and `error_code` 0. The payload is a
//! protobuf `EchoRequest { string message = 1; }` carrying the call's bytes, as a real client
//! sends (the proxy checks that payloads are well-formed protobuf).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use metaprotocol_brpc::{RpcMetaView, encode_frame, proto};
use metaprotocol_core::keys;

use super::{Answer, Response, WireError, be_u32, checked_total};

const SERVICE: &str = "example.EchoService";
const METHOD: &str = "Echo";

/// The service and method from the request meta.
pub(super) const ROUTE_KEYS: [(&str, &str); 2] = [(keys::SERVICE, SERVICE), (keys::METHOD, METHOD)];

const HEADER_LEN: usize = 12;
/// Field 1, length-delimited: `EchoRequest.message`.
const MESSAGE_TAG: u8 = 0x0a;
const MAGIC: &[u8; 4] = b"PRPC";

/// A connection's request meta; only the correlation id changes from call to call.
#[derive(Debug)]
pub(super) struct Caller {
    /// Boxed: a meta is large, and a caller of another protocol does not pay for it.
    meta: Box<proto::RpcMeta>,
    /// The protobuf message being written, kept to reuse its allocation.
    message: Vec<u8>,
}

impl Caller {
    pub(super) fn new() -> Self {
        let meta = Box::new(proto::RpcMeta {
            request: Some(proto::RpcRequestMeta {
                service_name: SERVICE.to_owned(),
                method_name: METHOD.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        });
        Self {
            meta,
            message: Vec::new(),
        }
    }

    pub(super) fn write(
        &mut self,
        id: u64,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        self.meta.correlation_id = Some(id as i64);
        self.message.clear();
        self.message.push(MESSAGE_TAG);
        let mut len = payload.len();
        while len >= 0x80 {
            self.message.push((len as u8) | 0x80);
            len >>= 7;
        }
        self.message.push(len as u8);
        self.message.extend_from_slice(payload);
        encode_frame(&self.meta, &self.message, out)
            .map_err(|err| WireError::Encode(err.to_string()))
    }
}

pub(super) fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let seen = buf.len().min(MAGIC.len());
    if buf[..seen] != MAGIC[..seen] {
        return Err(WireError::Malformed("not a baidu_std frame"));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    checked_total(HEADER_LEN, be_u32(buf, 4)?).map(Some)
}

pub(super) fn read_response(frame: &Bytes) -> Result<Response, WireError> {
    let (meta, id) = read_meta(frame)?;
    let Some(response) = &meta.response else {
        return Err(WireError::Malformed("not a response"));
    };
    let answer = if response.error_code == 0 {
        Answer::Payload(message(frame, payload(frame, &meta)?)?)
    } else {
        Answer::Refused
    };
    Ok(Response { id, answer })
}

pub(super) fn answer(frame: &Bytes, out: &mut BytesMut) -> Result<(), WireError> {
    let (meta, id) = read_meta(frame)?;
    if meta.request.is_none() {
        return Err(WireError::Malformed("not a request"));
    }
    let payload = payload(frame, &meta)?;
    let reply = proto::RpcMeta {
        response: Some(proto::RpcResponseMeta {
            error_code: Some(0),
            error_text: None,
        }),
        correlation_id: Some(id as i64),
        ..Default::default()
    };
    encode_frame(&reply, &frame[payload], out).map_err(|err| WireError::Encode(err.to_string()))
}

/// The meta of a whole frame and its correlation id.
fn read_meta(frame: &Bytes) -> Result<(RpcMetaView, u64), WireError> {
    let meta =
        RpcMetaView::from_frame(frame).map_err(|_| WireError::Malformed("unreadable RpcMeta"))?;
    let id = meta
        .correlation_id
        .ok_or(WireError::Malformed("no correlation_id"))?;
    Ok((meta, id))
}

/// Where the `message` string sits inside the protobuf payload at `payload`.
fn message(frame: &[u8], payload: Range<usize>) -> Result<Range<usize>, WireError> {
    let bytes = &frame[payload.clone()];
    if bytes.first() != Some(&MESSAGE_TAG) {
        return Err(WireError::Malformed("the payload is not an EchoRequest"));
    }
    let (mut len, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let byte = *bytes
            .get(at)
            .ok_or(WireError::Malformed("truncated EchoRequest"))?;
        len |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err(WireError::Malformed("EchoRequest length overflows"));
        }
    }
    let start = payload.start + at;
    (start + len == payload.end)
        .then_some(start..payload.end)
        .ok_or(WireError::Malformed(
            "EchoRequest length disagrees with the payload",
        ))
}

/// Where the payload sits: after the meta, before the attachment.
fn payload(frame: &[u8], meta: &RpcMetaView) -> Result<Range<usize>, WireError> {
    let start = HEADER_LEN + be_u32(frame, 8)? as usize;
    frame
        .len()
        .checked_sub(meta.attachment_size as usize)
        .filter(|&end| end >= start)
        .map(|end| start..end)
        .ok_or(WireError::Malformed("attachment_size runs into the meta"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_refusals() -> Result<(), WireError> {
        let meta = proto::RpcMeta {
            response: Some(proto::RpcResponseMeta {
                error_code: Some(1002),
                error_text: Some("no route".to_owned()),
            }),
            correlation_id: Some(6),
            ..Default::default()
        };
        let mut frame = BytesMut::new();
        encode_frame(&meta, b"", &mut frame).map_err(|e| WireError::Encode(e.to_string()))?;
        let response = read_response(&frame.freeze())?;
        assert_eq!((response.id, response.answer), (6, Answer::Refused));
        Ok(())
    }
}
