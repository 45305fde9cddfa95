//! The 16-byte Dubbo2 frame header.
//!
//! ```text
//! 0      2      3        4                    12           16
//! | dabb | flag | status | request id (u64 BE) | body length (i32 BE) |
//! flag: 0x80 request, 0x40 two-way, 0x20 event, low 5 bits serialization id
//! ```

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{CodecError, MessageKind};

/// The header length; the body follows.
pub(crate) const HEADER_LEN: usize = 16;
/// The magic number that opens every frame.
pub(crate) const MAGIC: [u8; 2] = [0xda, 0xbb];
/// Flag bit: the frame is a request (otherwise a response).
pub(crate) const FLAG_REQUEST: u8 = 0x80;
/// Flag bit: the request expects a response.
pub(crate) const FLAG_TWO_WAY: u8 = 0x40;
/// Flag bit: the frame is an event (a heartbeat, or a read-only notice).
pub(crate) const FLAG_EVENT: u8 = 0x20;
/// The flag bits that hold the serialization id.
const SERIALIZATION_MASK: u8 = 0x1f;
/// The bytes of the request id.
pub(crate) const REQUEST_ID: std::ops::Range<usize> = 4..12;
/// The bytes of the body length.
const BODY_LEN: std::ops::Range<usize> = 12..16;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The flag byte.
    pub(crate) flag: u8,
    /// The response status (meaningless in requests).
    pub(crate) status: u8,
    /// The request id.
    pub(crate) request_id: u64,
    /// The body length.
    pub(crate) body_len: u32,
}

impl Header {
    /// Reads the header at the front of `src`: `Ok(None)` until all 16 bytes are there, but a
    /// wrong magic number fails as soon as its bytes arrive.
    pub(crate) fn peek(src: &[u8]) -> Result<Option<Self>, CodecError> {
        if src.iter().zip(MAGIC).any(|(byte, magic)| *byte != magic) {
            return Err(CodecError::malformed(
                "bad Dubbo magic number (expected 0xdabb)",
            ));
        }
        let Some(bytes) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let [_, _, flag, status, id @ .., l0, l1, l2, l3] = *bytes;
        let request_id = u64::from_be_bytes(id);
        let body_len = u32::from_be_bytes([l0, l1, l2, l3]);
        if i32::try_from(body_len).is_err() {
            return Err(CodecError::malformed("negative Dubbo body length"));
        }
        Ok(Some(Self {
            flag,
            status,
            request_id,
            body_len,
        }))
    }

    /// What the frame is.
    pub(crate) fn kind(&self) -> MessageKind {
        let event = self.flag & FLAG_EVENT != 0;
        match (self.flag & FLAG_REQUEST != 0, event) {
            (true, true) => MessageKind::Heartbeat,
            (true, false) if self.flag & FLAG_TWO_WAY != 0 => MessageKind::Request,
            (true, false) => MessageKind::Oneway,
            (false, true) => MessageKind::HeartbeatReply,
            (false, false) => MessageKind::Response,
        }
    }

    /// The serialization id of the body.
    pub(crate) fn serialization(&self) -> u8 {
        self.flag & SERIALIZATION_MASK
    }

    /// The serialization id in the flag byte of `frame` (a frame this codec decoded).
    pub(crate) fn serialization_of(frame: &[u8]) -> u8 {
        frame.get(2).map_or(0, |flag| flag & SERIALIZATION_MASK)
    }

    /// Appends a header; the body length is patched by [`patch_body_len`] once the body is
    /// written.
    pub(crate) fn put(dst: &mut BytesMut, flag: u8, status: u8, request_id: u64) {
        dst.put_slice(&MAGIC);
        dst.put_u8(flag);
        dst.put_u8(status);
        dst.put_u64(request_id);
        dst.put_u32(0);
    }
}

/// Overwrites the request id of the frame that starts at `dst[start]`.
pub(crate) fn patch_request_id(dst: &mut [u8], start: usize, request_id: u64) {
    if let Some(id) = dst.get_mut(start + REQUEST_ID.start..start + REQUEST_ID.end) {
        id.copy_from_slice(&request_id.to_be_bytes());
    }
}

/// Sets the body length of the frame that starts at `dst[start]` and runs to the end of `dst`,
/// checking that the frame fits `max_frame_bytes`.
pub(crate) fn patch_body_len(
    dst: &mut [u8],
    start: usize,
    max_frame_bytes: usize,
) -> Result<(), CodecError> {
    let frame_len = dst.len().saturating_sub(start);
    let body_len = frame_len
        .checked_sub(HEADER_LEN)
        .and_then(|len| i32::try_from(len).ok())
        .filter(|_| frame_len <= max_frame_bytes)
        .ok_or(CodecError::Encode(
            "the rewritten frame exceeds max_frame_bytes".into(),
        ))?;
    if let Some(len) = dst.get_mut(start + BODY_LEN.start..start + BODY_LEN.end) {
        len.copy_from_slice(&body_len.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_flags() {
        let kind = |flag| {
            Header {
                flag,
                status: 0,
                request_id: 0,
                body_len: 0,
            }
            .kind()
        };
        assert_eq!(kind(0xc2), MessageKind::Request);
        assert_eq!(kind(0x82), MessageKind::Oneway);
        assert_eq!(kind(0xe2), MessageKind::Heartbeat);
        assert_eq!(kind(0xa2), MessageKind::Heartbeat);
        assert_eq!(kind(0x22), MessageKind::HeartbeatReply);
        assert_eq!(kind(0x02), MessageKind::Response);
    }

    #[test]
    fn checks_the_magic_early_and_waits_for_the_rest() {
        assert!(Header::peek(&[0xda]).is_ok_and(|h| h.is_none()));
        assert!(Header::peek(&[0xdb]).is_err());
        assert!(Header::peek(&[0xda, 0xbc]).is_err());
        let mut frame = vec![0xda, 0xbb, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 1, 0];
        let header = Header::peek(&frame).ok().flatten();
        assert_eq!(header.map(|h| (h.request_id, h.body_len)), Some((9, 256)));
        frame[12] = 0x80;
        assert!(Header::peek(&frame).is_err());
    }
}
