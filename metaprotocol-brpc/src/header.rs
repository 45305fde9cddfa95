//! The 12-byte baidu_std header: `"PRPC"`, body size, meta size (both big-endian u32).

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use metaprotocol_core::CodecError;

/// The header's length; the meta starts right after it.
pub(crate) const HEADER_LEN: usize = 12;
/// The magic of baidu_std frames.
const MAGIC: &[u8; 4] = b"PRPC";
/// The magic of brpc's streaming RPC data frames, which share a connection with baidu_std.
const STREAM_MAGIC: &[u8; 4] = b"STRM";

/// The sizes announced by a frame's header, checked against each other and the frame size cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Meta, payload and attachment.
    body_size: usize,
    /// The serialized `RpcMeta`.
    meta_size: usize,
}

impl FrameHeader {
    /// Reads the header at the front of `src`: `Ok(None)` until 12 bytes are there (but an
    /// impossible magic fails as soon as its first byte arrives).
    pub(crate) fn parse(src: &[u8], max_frame_bytes: usize) -> Result<Option<Self>, CodecError> {
        let seen = src.len().min(MAGIC.len());
        let magic = src.get(..seen).unwrap_or_default();
        if magic != MAGIC.get(..seen).unwrap_or_default() {
            return Err(wrong_magic(magic));
        }
        let Some(header) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let [_, _, _, _, b0, b1, b2, b3, m0, m1, m2, m3] = *header;
        let body_size = u32::from_be_bytes([b0, b1, b2, b3]) as usize;
        let meta_size = u32::from_be_bytes([m0, m1, m2, m3]) as usize;
        let frame_size = HEADER_LEN.saturating_add(body_size);
        if frame_size > max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                size: frame_size as u64,
                max: max_frame_bytes,
            });
        }
        if meta_size > body_size {
            return Err(CodecError::malformed("meta_size is larger than body_size"));
        }
        Ok(Some(Self {
            body_size,
            meta_size,
        }))
    }

    /// Reads the header of `frame`, which must be exactly one whole frame.
    pub(crate) fn of_whole_frame(frame: &[u8]) -> Result<Self, CodecError> {
        let header = Self::parse(frame, usize::MAX)?
            .ok_or(CodecError::malformed("shorter than the baidu_std header"))?;
        if header.frame_len() != frame.len() {
            return Err(CodecError::malformed(
                "body_size does not match the frame's length",
            ));
        }
        Ok(header)
    }

    /// The whole frame's length, header included.
    pub(crate) fn frame_len(self) -> usize {
        HEADER_LEN.saturating_add(self.body_size)
    }

    /// Where the meta ends and the payload starts, from the start of the frame.
    pub(crate) fn meta_end(self) -> usize {
        HEADER_LEN.saturating_add(self.meta_size)
    }
}

/// The error for bytes that do not start with `"PRPC"`: streaming frames are named as such, other
/// protocols by their magic.
fn wrong_magic(magic: &[u8]) -> CodecError {
    if STREAM_MAGIC.starts_with(magic) {
        return CodecError::Unsupported(Cow::Borrowed(
            "bRPC streaming RPC frame (magic \"STRM\"): streaming RPC is not supported",
        ));
    }
    CodecError::Malformed(Cow::Owned(format!(
        "not baidu_std: magic \"{}\" instead of \"PRPC\"",
        magic.escape_ascii()
    )))
}

/// Appends a whole frame: the header, the meta that `write_meta` appends, then `body`. The
/// header's sizes are filled in once both are written; on error nothing is appended.
pub(crate) fn write_frame(
    dst: &mut BytesMut,
    capacity: usize,
    body: &[u8],
    write_meta: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    dst.reserve(capacity);
    let start = dst.len();
    dst.put_slice(MAGIC);
    dst.put_u64(0);
    if let Err(e) = write_meta(dst) {
        dst.truncate(start);
        return Err(e);
    }
    let meta_size = u32::try_from(dst.len() - start - HEADER_LEN);
    dst.put_slice(body);
    let body_size = u32::try_from(dst.len() - start - HEADER_LEN);
    let (Ok(body_size), Ok(meta_size)) = (body_size, meta_size) else {
        dst.truncate(start);
        return Err(CodecError::Encode(Cow::Borrowed(
            "frame larger than the 4 GiB baidu_std allows",
        )));
    };
    let mut sizes = [0u8; 8];
    sizes[..4].copy_from_slice(&body_size.to_be_bytes());
    sizes[4..].copy_from_slice(&meta_size.to_be_bytes());
    if let Some(slot) = dst.get_mut(start + 4..start + HEADER_LEN) {
        slot.copy_from_slice(&sizes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_whole_header_and_checks_sizes() {
        let ok = b"PRPC\0\0\0\x10\0\0\0\x08";
        for n in 0..HEADER_LEN {
            assert_eq!(FrameHeader::parse(&ok[..n], 1024), Ok(None));
        }
        let header = FrameHeader::parse(ok, 1024).ok().flatten();
        assert_eq!(header.map(FrameHeader::frame_len), Some(28));
        assert_eq!(header.map(FrameHeader::meta_end), Some(20));
        assert_eq!(
            FrameHeader::parse(ok, 27),
            Err(CodecError::FrameTooLarge { size: 28, max: 27 })
        );
        assert!(matches!(
            FrameHeader::parse(b"PRPC\0\0\0\x08\0\0\0\x09", 1024),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn names_other_magics() {
        assert!(matches!(
            FrameHeader::parse(b"ST", 64),
            Err(CodecError::Unsupported(_))
        ));
        let err = FrameHeader::parse(b"HULU\0\0\0\0\0\0\0\0", 64);
        assert_eq!(
            err,
            Err(CodecError::Malformed(
                "not baidu_std: magic \"HULU\" instead of \"PRPC\"".into()
            ))
        );
        assert!(matches!(
            FrameHeader::parse(b"G", 64),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn write_frame_patches_sizes_or_appends_nothing() {
        let mut dst = BytesMut::from(&b"xx"[..]);
        let written = write_frame(&mut dst, 32, b"body", |dst| {
            dst.put_slice(b"meta");
            Ok(())
        });
        assert_eq!(written, Ok(()));
        assert_eq!(&dst[..], b"xxPRPC\0\0\0\x08\0\0\0\x04metabody");
        let failed = write_frame(&mut dst, 32, b"body", |_| Err(CodecError::malformed("no")));
        assert!(failed.is_err());
        assert_eq!(dst.len(), 2 + 20);
    }
}
