//! Protobuf wire-format primitives: varints and a bounds-checked walker over one message's
//! top-level fields.
//!
//! The codec reads `RpcMeta` with this walker instead of a generated parser so that it can slice
//! strings out of the frame, note where each field sits, and copy fields it does not know
//! verbatim when it rebuilds the meta.

use std::ops::Range;

use bytes::BufMut;
use metaprotocol_core::CodecError;

/// The longest varint protobuf allows (a 64-bit value in 7-bit groups).
pub(crate) const MAX_VARINT_BYTES: usize = 10;

/// Protobuf wire type of varint fields.
const WIRE_VARINT: u8 = 0;
/// Protobuf wire type of 64-bit fixed fields.
const WIRE_FIXED64: u8 = 1;
/// Protobuf wire type of length-delimited fields (strings, bytes, messages, packed repeats).
const WIRE_LEN: u8 = 2;
/// Protobuf wire type of 32-bit fixed fields.
const WIRE_FIXED32: u8 = 5;

/// The largest field number protobuf allows.
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// The value of one field, as the wire type describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WireValue {
    /// A varint (int32, int64, uint, bool, enum).
    Varint(u64),
    /// A length-delimited value: its position within the walked buffer.
    Bytes(Range<usize>),
    /// A fixed 32- or 64-bit value (never used by `RpcMeta`; skipped).
    Fixed,
}

/// One field of a message: its number, value, and where it sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    /// The field number.
    pub(crate) number: u32,
    /// The decoded value.
    pub(crate) value: WireValue,
    /// The whole field (tag to end of value) within the walked buffer.
    pub(crate) span: Range<usize>,
    /// Where the value starts (just after the tag) within the walked buffer.
    pub(crate) value_start: usize,
}

/// Iterates over the top-level fields of one protobuf message.
///
/// Nested messages are not entered; their bytes are reported as [`WireValue::Bytes`] for the
/// caller to walk if it wants to, so the walker needs no recursion. Groups (deprecated wire types
/// 3 and 4) are rejected: `RpcMeta` never uses them. After the first error the iterator ends.
pub(crate) struct FieldReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> FieldReader<'a> {
    /// A walker over `buf`, which must hold exactly one message.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn read_field(&mut self) -> Result<Field, CodecError> {
        let start = self.pos;
        let tag = read_varint(self.buf, &mut self.pos)?;
        let number = tag >> 3;
        if number == 0 || number > MAX_FIELD_NUMBER {
            return Err(CodecError::malformed("protobuf field number out of range"));
        }
        let value_start = self.pos;
        let value = match (tag & 7) as u8 {
            WIRE_VARINT => WireValue::Varint(read_varint(self.buf, &mut self.pos)?),
            WIRE_LEN => {
                let len = read_varint(self.buf, &mut self.pos)?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|len| self.pos.checked_add(len))
                    .filter(|&end| end <= self.buf.len())
                    .ok_or(CodecError::malformed("protobuf length runs past the meta"))?;
                let range = self.pos..end;
                self.pos = end;
                WireValue::Bytes(range)
            }
            WIRE_FIXED64 => {
                self.skip(8)?;
                WireValue::Fixed
            }
            WIRE_FIXED32 => {
                self.skip(4)?;
                WireValue::Fixed
            }
            _ => return Err(CodecError::malformed("unsupported protobuf wire type")),
        };
        Ok(Field {
            // MAX_FIELD_NUMBER fits in u32.
            number: number as u32,
            value,
            span: start..self.pos,
            value_start,
        })
    }

    fn skip(&mut self, n: usize) -> Result<(), CodecError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                Ok(())
            }
            _ => Err(CodecError::malformed(
                "protobuf fixed field runs past the meta",
            )),
        }
    }
}

impl Iterator for FieldReader<'_> {
    type Item = Result<Field, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let field = self.read_field();
        if field.is_err() {
            self.pos = self.buf.len();
        }
        Some(field)
    }
}

/// Reads one varint at `*pos`, advancing `pos` past it.
pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, CodecError> {
    let mut value = 0u64;
    for i in 0..MAX_VARINT_BYTES {
        let byte = *buf
            .get(*pos + i)
            .ok_or(CodecError::malformed("truncated protobuf varint"))?;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // The tenth byte may only carry the top bit of a 64-bit value.
            if i == MAX_VARINT_BYTES - 1 && byte > 1 {
                return Err(CodecError::malformed("protobuf varint overflows 64 bits"));
            }
            *pos += i + 1;
            return Ok(value);
        }
    }
    Err(CodecError::malformed(
        "protobuf varint longer than 10 bytes",
    ))
}

/// The number of bytes `value` takes as a varint.
pub(crate) fn varint_len(value: u64) -> usize {
    // 1 byte per started group of 7 bits; zero still takes one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Writes `value` as a varint into `out`, returning the number of bytes used.
pub(crate) fn encode_varint(mut value: u64, out: &mut [u8; MAX_VARINT_BYTES]) -> usize {
    let mut n = 0;
    for slot in out.iter_mut() {
        n += 1;
        if value < 0x80 {
            *slot = value as u8;
            break;
        }
        *slot = (value as u8 & 0x7f) | 0x80;
        value >>= 7;
    }
    n
}

/// Appends `value` as a varint.
pub(crate) fn put_varint(dst: &mut impl BufMut, value: u64) {
    let mut scratch = [0u8; MAX_VARINT_BYTES];
    let n = encode_varint(value, &mut scratch);
    dst.put_slice(scratch.get(..n).unwrap_or_default());
}

/// Appends a varint field: its tag and `value`.
pub(crate) fn put_varint_field(dst: &mut impl BufMut, number: u32, value: u64) {
    put_varint(dst, u64::from(number) << 3 | u64::from(WIRE_VARINT));
    put_varint(dst, value);
}

/// Appends the tag and length of a length-delimited field whose value is `len` bytes long.
pub(crate) fn put_len_prefix(dst: &mut impl BufMut, number: u32, len: usize) {
    put_varint(dst, u64::from(number) << 3 | u64::from(WIRE_LEN));
    put_varint(dst, len as u64);
}

/// The encoded size of the tag and length prefix of a `len`-byte field numbered `number`.
pub(crate) fn len_prefix_size(number: u32, len: usize) -> usize {
    varint_len(u64::from(number) << 3) + varint_len(len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        for value in [0, 1, 127, 128, 16_383, 16_384, 4_294_967_298, u64::MAX] {
            let mut out = [0u8; MAX_VARINT_BYTES];
            let n = encode_varint(value, &mut out);
            assert_eq!(n, varint_len(value), "length of {value}");
            let mut pos = 0;
            assert_eq!(read_varint(&out[..n], &mut pos), Ok(value));
            assert_eq!(pos, n);
        }
    }

    #[test]
    fn rejects_overlong_and_truncated_varints() {
        let mut pos = 0;
        assert!(read_varint(&[0x80; 11], &mut pos).is_err());
        let mut pos = 0;
        assert!(
            read_varint(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                &mut pos
            )
            .is_err()
        );
        let mut pos = 0;
        assert!(read_varint(&[0x80, 0x80], &mut pos).is_err());
    }

    #[test]
    fn walks_fields_and_reports_spans() {
        // field 1 varint 150, field 2 string "hi", field 3 fixed32.
        let buf = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d, 1, 2, 3, 4];
        let fields: Vec<Field> = FieldReader::new(&buf)
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0].value, WireValue::Varint(150));
        assert_eq!(fields[0].span, 0..3);
        assert_eq!(fields[1].value, WireValue::Bytes(5..7));
        assert_eq!(fields[1].value_start, 4);
        assert_eq!(fields[2].span, 7..12);
    }

    #[test]
    fn rejects_bad_lengths_groups_and_field_zero() {
        for bad in [
            &[0x12, 0x05, b'a'][..],
            &[0x0b],
            &[0x00, 0x01],
            &[0x1d, 1, 2],
        ] {
            let mut reader = FieldReader::new(bad);
            assert!(matches!(reader.next(), Some(Err(_))), "{bad:?}");
            assert!(reader.next().is_none());
        }
    }
}
