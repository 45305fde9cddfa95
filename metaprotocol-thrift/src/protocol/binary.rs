//! `TBinaryProtocol`: big-endian fixed-width integers, `i32` lengths.
//!
//! Message header, strict: `i32 (0x8001_0000 | type)`, `i32` name length, name, `i32` seqid.
//! Lax (old clients): `i32` name length, name, `i8` type, `i32` seqid. Both are read; strict
//! is written.

use bytes::{BufMut, BytesMut};

use super::{Checkpoint, MessageHeader, MessageType, Scalar, ValueReader, ValueType, ValueWriter};
use crate::wire::{Cursor, ReadError};

/// The high half of a strict message header's first word.
const VERSION_1: u32 = 0x8001_0000;
const VERSION_MASK: u32 = 0xffff_0000;

/// How many bytes longer a lax message header is once written strict: the 4-byte version word
/// (which carries the type) in place of the 1-byte type.
pub(crate) const STRICT_GROWTH: usize = 3;

/// Reads a strict or lax message header.
pub(crate) fn read_message_header(cursor: &mut Cursor<'_>) -> Result<MessageHeader, ReadError> {
    let first = cursor.u32_be()?;
    let lax = first & 0x8000_0000 == 0;
    let (message_type, name) = if !lax {
        if first & VERSION_MASK != VERSION_1 {
            return Err(ReadError::malformed("bad binary protocol version"));
        }
        let message_type = MessageType::from_wire(first as u8)?;
        let len = cursor.length_i32()?;
        (message_type, name(cursor, len)?)
    } else {
        let name = name(cursor, first as usize)?;
        (MessageType::from_wire(cursor.u8()?)?, name)
    };
    let seqid_start = cursor.position();
    let seqid = cursor.i32_be()?;
    Ok(MessageHeader {
        message_type,
        name,
        seqid,
        seqid_at: seqid_start..cursor.position(),
        body_start: cursor.position(),
        lax,
    })
}

fn name(cursor: &mut Cursor<'_>, len: usize) -> Result<std::ops::Range<usize>, ReadError> {
    let start = cursor.position();
    cursor.bytes(len)?;
    Ok(start..cursor.position())
}

/// Appends a strict message header.
pub(crate) fn write_message_header(
    dst: &mut BytesMut,
    name: &[u8],
    message_type: MessageType,
    seqid: i32,
) {
    dst.put_u32(VERSION_1 | message_type as u32);
    put_binary(dst, name);
    dst.put_i32(seqid);
}

fn put_binary(dst: &mut BytesMut, bytes: &[u8]) {
    // Lengths come from frames capped at max_frame_bytes (< 2 GiB), so they fit an i32.
    dst.put_u32(bytes.len() as u32);
    dst.extend_from_slice(bytes);
}

fn type_code(ty: ValueType) -> u8 {
    match ty {
        ValueType::Bool => 2,
        ValueType::Byte => 3,
        ValueType::Double => 4,
        ValueType::I16 => 6,
        ValueType::I32 => 8,
        ValueType::I64 => 10,
        ValueType::Binary => 11,
        ValueType::Struct => 12,
        ValueType::Map => 13,
        ValueType::Set => 14,
        ValueType::List => 15,
        ValueType::Uuid => 16,
    }
}

fn value_type(code: u8) -> Result<ValueType, ReadError> {
    Ok(match code {
        2 => ValueType::Bool,
        3 => ValueType::Byte,
        4 => ValueType::Double,
        6 => ValueType::I16,
        8 => ValueType::I32,
        10 => ValueType::I64,
        11 => ValueType::Binary,
        12 => ValueType::Struct,
        13 => ValueType::Map,
        14 => ValueType::Set,
        15 => ValueType::List,
        16 => ValueType::Uuid,
        _ => return Err(ReadError::malformed("unknown binary field type")),
    })
}

/// The end of the struct at `at` in `buf` when every field of it is a scalar, as nearly every
/// call's arguments are: found in one pass over the field headers, without the walk. `None`
/// for any other struct, and for one that is cut short or malformed: the walk reads those, and
/// says what is wrong. Where this finds an end, the walk finds the same one.
pub(crate) fn flat_struct_end(buf: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let code = *buf.get(at)?;
        if code == 0 {
            return Some(at + 1);
        }
        // The type byte and the field id.
        at += 3;
        let len = match value_type(code).ok()? {
            ValueType::Bool | ValueType::Byte => 1,
            ValueType::I16 => 2,
            ValueType::I32 => 4,
            ValueType::I64 | ValueType::Double => 8,
            ValueType::Uuid => 16,
            ValueType::Binary => {
                let len = buf.get(at..)?.first_chunk::<4>()?;
                at += 4;
                usize::try_from(i32::from_be_bytes(*len)).ok()?
            }
            ValueType::Struct | ValueType::Map | ValueType::Set | ValueType::List => return None,
        };
        at = at.checked_add(len).filter(|end| *end <= buf.len())?;
    }
}

fn count(cursor: &mut Cursor<'_>) -> Result<u32, ReadError> {
    u32::try_from(cursor.i32_be()?).map_err(|_| ReadError::malformed("negative container size"))
}

/// Reads binary-protocol values.
pub(crate) struct BinaryReader<'a> {
    cursor: Cursor<'a>,
}

impl<'a> BinaryReader<'a> {
    pub(crate) fn new(cursor: Cursor<'a>) -> Self {
        Self { cursor }
    }
}

impl<'a> ValueReader<'a> for BinaryReader<'a> {
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            overrun: self.cursor.overrun(),
            ..Checkpoint::at(self.cursor.position())
        }
    }

    fn restore(&mut self, at: Checkpoint) {
        self.cursor.set_position(at.position);
        self.cursor.set_overrun(at.overrun);
    }

    fn struct_begin(&mut self) -> i16 {
        0
    }

    fn struct_end(&mut self, _saved: i16) {}

    fn field_begin(&mut self) -> Result<Option<(ValueType, i16)>, ReadError> {
        match self.cursor.u8()? {
            0 => Ok(None),
            code => {
                let ty = value_type(code)?;
                Ok(Some((ty, self.cursor.i16_be()?)))
            }
        }
    }

    fn list_begin(&mut self) -> Result<(ValueType, u32), ReadError> {
        let element = value_type(self.cursor.u8()?)?;
        Ok((element, count(&mut self.cursor)?))
    }

    fn map_begin(&mut self) -> Result<(Option<(ValueType, ValueType)>, u32), ReadError> {
        let [key, value] = self.cursor.array()?;
        let len = count(&mut self.cursor)?;
        if len == 0 {
            // Writers put anything (Java writes STOP) in an empty map's type bytes.
            return Ok((None, 0));
        }
        Ok((Some((value_type(key)?, value_type(value)?)), len))
    }

    fn scalar(&mut self, ty: ValueType) -> Result<Scalar<'a>, ReadError> {
        let c = &mut self.cursor;
        Ok(match ty {
            ValueType::Bool => Scalar::Bool(c.u8()? != 0),
            ValueType::Byte => Scalar::Byte(c.u8()?),
            ValueType::I16 => Scalar::I16(c.i16_be()?),
            ValueType::I32 => Scalar::I32(c.i32_be()?),
            ValueType::I64 => Scalar::I64(i64::from_be_bytes(c.array()?)),
            ValueType::Double => Scalar::Double(u64::from_be_bytes(c.array()?)),
            ValueType::Binary => {
                let len = c.length_i32()?;
                Scalar::Binary(c.value_bytes(len)?)
            }
            ValueType::Uuid => Scalar::Uuid(c.bytes(16)?),
            ValueType::Struct | ValueType::Map | ValueType::Set | ValueType::List => {
                return Err(ReadError::malformed("container read as a scalar"));
            }
        })
    }
}

/// Writes binary-protocol values.
pub(crate) struct BinaryWriter<'d> {
    dst: &'d mut BytesMut,
    /// The length of `dst` past which it is [`ValueWriter::full`].
    end: usize,
}

impl<'d> BinaryWriter<'d> {
    pub(crate) fn new(dst: &'d mut BytesMut) -> Self {
        Self::within(dst, usize::MAX)
    }

    /// A writer that is full once `dst` is longer than `end` bytes.
    pub(crate) fn within(dst: &'d mut BytesMut, end: usize) -> Self {
        Self { dst, end }
    }
}

impl ValueWriter for BinaryWriter<'_> {
    fn struct_begin(&mut self) -> i16 {
        0
    }

    fn full(&self) -> bool {
        self.dst.len() > self.end
    }

    fn struct_end(&mut self, _saved: i16) {}

    fn field_begin(&mut self, ty: ValueType, id: i16) {
        self.dst.put_u8(type_code(ty));
        self.dst.put_i16(id);
    }

    fn field_stop(&mut self) {
        self.dst.put_u8(0);
    }

    fn list_begin(&mut self, element: ValueType, len: u32) {
        self.dst.put_u8(type_code(element));
        self.dst.put_u32(len);
    }

    fn map_begin(&mut self, types: Option<(ValueType, ValueType)>, len: u32) {
        let (key, value) = types.map_or((0, 0), |(k, v)| (type_code(k), type_code(v)));
        self.dst.put_u8(key);
        self.dst.put_u8(value);
        self.dst.put_u32(len);
    }

    fn scalar(&mut self, value: Scalar<'_>) {
        match value {
            Scalar::Bool(b) => self.dst.put_u8(u8::from(b)),
            Scalar::Byte(b) => self.dst.put_u8(b),
            Scalar::I16(v) => self.dst.put_i16(v),
            Scalar::I32(v) => self.dst.put_i32(v),
            Scalar::I64(v) => self.dst.put_i64(v),
            Scalar::Double(bits) => self.dst.put_u64(bits),
            Scalar::Binary(bytes) => put_binary(self.dst, bytes),
            Scalar::Uuid(bytes) => self.dst.extend_from_slice(bytes),
        }
    }
}
