//! Bounds-checked reading and the integer encodings (varint, zigzag) shared by the formats.
//!
//! Every read goes through [`Cursor`], which never indexes out of bounds: running out of bytes is
//! [`ReadError::Incomplete`] (more may arrive on an unframed stream), or
//! [`CodecError::FrameTooLarge`] once the bytes a read needs pass the frame size cap.

use bytes::BufMut;
use metaprotocol_core::CodecError;

/// Why a read stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The buffer ends before the value does.
    Incomplete,
    /// The bytes are wrong, or too many.
    Codec(CodecError),
}

impl From<CodecError> for ReadError {
    fn from(error: CodecError) -> Self {
        Self::Codec(error)
    }
}

impl ReadError {
    /// A [`CodecError::Malformed`] read error.
    pub(crate) const fn malformed(reason: &'static str) -> Self {
        Self::Codec(CodecError::malformed(reason))
    }

    /// The error for a buffer that holds a whole frame: running out of bytes inside it means the
    /// frame lies about its own contents.
    pub(crate) fn in_complete_frame(self) -> CodecError {
        match self {
            Self::Incomplete => CodecError::malformed("frame ends inside the message"),
            Self::Codec(error) => error,
        }
    }
}

/// A read position over a byte slice that may hold only the start of a message.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The frame size cap: needing bytes past it is an error, not a reason to wait.
    max: usize,
    /// Whether the buffer is one piece of a message being passed over (see
    /// [`Cursor::passing`]).
    passing: bool,
    /// How many bytes of a string or binary value cut by the buffer's end are still to come.
    overrun: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at `pos` in `buf`, with `max` as the largest frame it may read into.
    pub(crate) fn new(buf: &'a [u8], pos: usize, max: usize) -> Self {
        Self {
            buf,
            pos,
            max,
            passing: false,
            overrun: 0,
        }
    }

    /// A cursor at `pos` in one piece of a message too large to hold, which is passed over as
    /// its pieces arrive: a string or binary value that runs past the piece's end is taken as
    /// far as the piece goes, the bytes still to come counted in [`Cursor::overrun`], so that
    /// no piece needs to be kept for the next.
    pub(crate) fn passing(buf: &'a [u8], pos: usize) -> Self {
        Self {
            passing: true,
            ..Self::new(buf, pos, usize::MAX)
        }
    }

    /// A cursor at `pos` in a buffer that holds a whole frame (already checked against the
    /// cap): reading past its end is [`ReadError::Incomplete`], which such callers report as
    /// malformed with [`ReadError::in_complete_frame`].
    pub(crate) fn in_frame(buf: &'a [u8], pos: usize) -> Self {
        Self::new(buf, pos, usize::MAX)
    }

    /// The current offset in the buffer.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Moves to offset `pos` (reads past the buffer's end then wait or fail as usual).
    pub(crate) fn set_position(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// Takes the next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let end = self.pos.saturating_add(n);
        match self.buf.get(self.pos..end) {
            Some(slice) => {
                self.pos = end;
                Ok(slice)
            }
            None if end > self.max => Err(CodecError::FrameTooLarge {
                size: end as u64,
                max: self.max,
            }
            .into()),
            None => Err(ReadError::Incomplete),
        }
    }

    /// How many bytes of the last string or binary value taken are past the buffer's end (in a
    /// [`Cursor::passing`] cursor; 0 in others).
    pub(crate) fn overrun(&self) -> usize {
        self.overrun
    }

    /// Sets what [`Cursor::overrun`] says, with a position restored.
    pub(crate) fn set_overrun(&mut self, overrun: usize) {
        self.overrun = overrun;
    }

    /// Takes the `n` bytes of a string or binary value; in a [`Cursor::passing`] cursor, those
    /// the buffer holds of them.
    pub(crate) fn value_bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let held = self.buf.len().saturating_sub(self.pos);
        if self.passing && n > held {
            let start = self.pos;
            self.pos = self.buf.len();
            self.overrun = n - held;
            return Ok(self.buf.get(start..).unwrap_or_default());
        }
        self.bytes(n)
    }

    /// Takes the next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian `u16`.
    pub(crate) fn u16_be(&mut self) -> Result<u16, ReadError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian `i16`.
    pub(crate) fn i16_be(&mut self) -> Result<i16, ReadError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    pub(crate) fn u32_be(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `i32`.
    pub(crate) fn i32_be(&mut self) -> Result<i32, ReadError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A length that must not be negative (binary protocol strings and containers).
    pub(crate) fn length_i32(&mut self) -> Result<usize, ReadError> {
        usize::try_from(self.i32_be()?).map_err(|_| ReadError::malformed("negative length"))
    }

    /// An unsigned LEB128 varint of at most `bits` bits. Bits beyond are refused rather than
    /// dropped, so that every value has one encoding of a given length and a seqid patched in
    /// place cannot change bytes it did not mean to.
    fn varint(&mut self, bits: u32) -> Result<u64, ReadError> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.u8()?;
            let payload = u64::from(byte & 0x7f);
            if shift >= bits || (bits - shift < 7 && payload >> (bits - shift) != 0) {
                return Err(ReadError::malformed("varint too long"));
            }
            value |= payload << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// A 32-bit varint.
    pub(crate) fn varint_u32(&mut self) -> Result<u32, ReadError> {
        Ok(self.varint(32)? as u32)
    }

    /// A 64-bit varint.
    pub(crate) fn varint_u64(&mut self) -> Result<u64, ReadError> {
        self.varint(64)
    }

    /// A varint length (compact strings, THeader strings and counts).
    pub(crate) fn length_varint(&mut self) -> Result<usize, ReadError> {
        let n = self.varint_u32()?;
        if n > i32::MAX as u32 {
            return Err(ReadError::malformed("negative length"));
        }
        Ok(n as usize)
    }
}

/// Appends `value` as an unsigned LEB128 varint.
pub(crate) fn put_varint(dst: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

/// Overwrites the bytes at `at` in `dst` with `bytes` (a length or id written after the fact);
/// a range outside `dst` is left alone, as callers only patch what they wrote.
pub(crate) fn patch(dst: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = dst.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

/// `value` as a varint in a stack buffer, and how many bytes it takes.
pub(crate) fn varint_u32_bytes(mut value: u32) -> ([u8; 5], usize) {
    let mut out = [0u8; 5];
    let mut len = 0;
    for slot in &mut out {
        len += 1;
        if value < 0x80 {
            *slot = value as u8;
            break;
        }
        *slot = (value as u8) | 0x80;
        value >>= 7;
    }
    (out, len)
}

/// Zigzag-encodes a signed 64-bit value (compact protocol integers).
pub(crate) fn zigzag_encode(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Zigzag-decodes a 64-bit value.
pub(crate) fn zigzag_decode(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    #[test]
    fn varints_round_trip() {
        for value in [
            0u32,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            i32::MAX as u32,
            u32::MAX,
        ] {
            let (bytes, len) = varint_u32_bytes(value);
            let mut dst = BytesMut::new();
            put_varint(&mut dst, u64::from(value));
            assert_eq!(&dst[..], &bytes[..len]);
            let mut cursor = Cursor::new(&dst, 0, usize::MAX);
            assert_eq!(cursor.varint_u32(), Ok(value));
        }
        for value in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            assert_eq!(zigzag_decode(zigzag_encode(value)), value);
        }
        assert_eq!(zigzag_encode(-1), 1);
        assert_eq!(zigzag_encode(1), 2);
    }

    #[test]
    fn reads_stop_at_the_end_and_at_the_cap() {
        let buf = [0x80u8, 0x80];
        assert_eq!(
            Cursor::new(&buf, 0, 100).varint_u32(),
            Err(ReadError::Incomplete)
        );
        assert!(matches!(
            Cursor::new(&buf, 0, 1).bytes(4),
            Err(ReadError::Codec(CodecError::FrameTooLarge {
                size: 4,
                max: 1
            }))
        ));
        for bad in [&[0xffu8; 6][..], &[0xff, 0xff, 0xff, 0xff, 0x10]] {
            assert!(matches!(
                Cursor::new(bad, 0, 100).varint_u32(),
                Err(ReadError::Codec(CodecError::Malformed(_)))
            ));
        }
        let max64 = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Cursor::new(&max64, 0, 100).varint_u64(), Ok(u64::MAX));
        let over64 = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Cursor::new(&over64, 0, 100).varint_u64().is_err());
    }
}
