//! `TCompactProtocol`: varints, zigzag integers, field-id deltas, booleans folded into field
//! headers, little-endian doubles.
//!
//! Message header: `0x82`, `type << 5 | 1`, seqid as an unsigned varint, name length as a
//! varint, name.

use bytes::{BufMut, BytesMut};

use super::{Checkpoint, MessageHeader, MessageType, Scalar, ValueReader, ValueType, ValueWriter};
use crate::wire::{Cursor, ReadError, put_varint, zigzag_decode, zigzag_encode};

/// The first byte of every compact message.
pub(crate) const PROTOCOL_ID: u8 = 0x82;
const VERSION: u8 = 1;
const VERSION_MASK: u8 = 0x1f;
const TYPE_SHIFT: u8 = 5;

/// Field type codes for the two booleans, which carry their value in the field header.
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;

/// Reads a message header.
pub(crate) fn read_message_header(cursor: &mut Cursor<'_>) -> Result<MessageHeader, ReadError> {
    let [id, version_and_type] = cursor.array()?;
    if id != PROTOCOL_ID || version_and_type & VERSION_MASK != VERSION {
        return Err(ReadError::malformed("bad compact protocol id or version"));
    }
    let message_type = MessageType::from_wire(version_and_type >> TYPE_SHIFT)?;
    let seqid_start = cursor.position();
    let seqid = cursor.varint_u32()? as i32;
    let seqid_end = cursor.position();
    let len = cursor.length_varint()?;
    let name_start = cursor.position();
    cursor.bytes(len)?;
    Ok(MessageHeader {
        message_type,
        name: name_start..cursor.position(),
        seqid,
        seqid_at: seqid_start..seqid_end,
        body_start: cursor.position(),
        lax: false,
    })
}

/// Appends a message header.
pub(crate) fn write_message_header(
    dst: &mut BytesMut,
    name: &[u8],
    message_type: MessageType,
    seqid: i32,
) {
    dst.put_u8(PROTOCOL_ID);
    dst.put_u8(((message_type as u8) << TYPE_SHIFT) | VERSION);
    put_varint(dst, u64::from(seqid as u32));
    put_varint(dst, name.len() as u64);
    dst.extend_from_slice(name);
}

fn type_code(ty: ValueType) -> u8 {
    match ty {
        ValueType::Bool => BOOL_TRUE,
        ValueType::Byte => 3,
        ValueType::I16 => 4,
        ValueType::I32 => 5,
        ValueType::I64 => 6,
        ValueType::Double => 7,
        ValueType::Binary => 8,
        ValueType::List => 9,
        ValueType::Set => 10,
        ValueType::Map => 11,
        ValueType::Struct => 12,
        ValueType::Uuid => 13,
    }
}

fn value_type(code: u8) -> Result<ValueType, ReadError> {
    Ok(match code {
        BOOL_TRUE | BOOL_FALSE => ValueType::Bool,
        3 => ValueType::Byte,
        4 => ValueType::I16,
        5 => ValueType::I32,
        6 => ValueType::I64,
        7 => ValueType::Double,
        8 => ValueType::Binary,
        9 => ValueType::List,
        10 => ValueType::Set,
        11 => ValueType::Map,
        12 => ValueType::Struct,
        13 => ValueType::Uuid,
        _ => return Err(ReadError::malformed("unknown compact field type")),
    })
}

/// Reads compact-protocol values.
pub(crate) struct CompactReader<'a> {
    cursor: Cursor<'a>,
    last_field_id: i16,
    /// The value of a boolean field, read with its header.
    pending_bool: Option<bool>,
}

impl<'a> CompactReader<'a> {
    pub(crate) fn new(cursor: Cursor<'a>) -> Self {
        Self {
            cursor,
            last_field_id: 0,
            pending_bool: None,
        }
    }

    fn varint_i32(&mut self) -> Result<i32, ReadError> {
        Ok(zigzag_decode(u64::from(self.cursor.varint_u32()?)) as i32)
    }
}

impl<'a> ValueReader<'a> for CompactReader<'a> {
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            position: self.cursor.position(),
            last_field_id: self.last_field_id,
            overrun: self.cursor.overrun(),
        }
    }

    fn restore(&mut self, at: Checkpoint) {
        self.cursor.set_position(at.position);
        self.cursor.set_overrun(at.overrun);
        self.last_field_id = at.last_field_id;
        self.pending_bool = None;
    }

    fn struct_begin(&mut self) -> i16 {
        std::mem::replace(&mut self.last_field_id, 0)
    }

    fn struct_end(&mut self, saved: i16) {
        self.last_field_id = saved;
    }

    fn field_begin(&mut self) -> Result<Option<(ValueType, i16)>, ReadError> {
        let header = self.cursor.u8()?;
        if header == 0 {
            return Ok(None);
        }
        let code = header & 0x0f;
        let ty = value_type(code)?;
        let delta = header >> 4;
        let id = if delta == 0 {
            self.varint_i32()? as i16
        } else {
            self.last_field_id.wrapping_add(i16::from(delta))
        };
        self.last_field_id = id;
        if ty == ValueType::Bool {
            self.pending_bool = Some(code == BOOL_TRUE);
        }
        Ok(Some((ty, id)))
    }

    fn list_begin(&mut self) -> Result<(ValueType, u32), ReadError> {
        let header = self.cursor.u8()?;
        let element = value_type(header & 0x0f)?;
        let len = match header >> 4 {
            15 => self.cursor.varint_u32()?,
            short => u32::from(short),
        };
        Ok((element, len))
    }

    fn map_begin(&mut self) -> Result<(Option<(ValueType, ValueType)>, u32), ReadError> {
        let len = self.cursor.varint_u32()?;
        if len == 0 {
            return Ok((None, 0));
        }
        let types = self.cursor.u8()?;
        Ok((
            Some((value_type(types >> 4)?, value_type(types & 0x0f)?)),
            len,
        ))
    }

    fn scalar(&mut self, ty: ValueType) -> Result<Scalar<'a>, ReadError> {
        Ok(match ty {
            ValueType::Bool => match self.pending_bool.take() {
                Some(value) => Scalar::Bool(value),
                None => Scalar::Bool(self.cursor.u8()? == BOOL_TRUE),
            },
            ValueType::Byte => Scalar::Byte(self.cursor.u8()?),
            ValueType::I16 => Scalar::I16(self.varint_i32()? as i16),
            ValueType::I32 => Scalar::I32(self.varint_i32()?),
            ValueType::I64 => Scalar::I64(zigzag_decode(self.cursor.varint_u64()?)),
            ValueType::Double => Scalar::Double(u64::from_le_bytes(self.cursor.array()?)),
            ValueType::Binary => {
                let len = self.cursor.length_varint()?;
                Scalar::Binary(self.cursor.value_bytes(len)?)
            }
            ValueType::Uuid => Scalar::Uuid(self.cursor.bytes(16)?),
            ValueType::Struct | ValueType::Map | ValueType::Set | ValueType::List => {
                return Err(ReadError::malformed("container read as a scalar"));
            }
        })
    }
}

/// Writes compact-protocol values.
pub(crate) struct CompactWriter<'d> {
    dst: &'d mut BytesMut,
    /// The length of `dst` past which it is [`ValueWriter::full`].
    end: usize,
    last_field_id: i16,
    /// A boolean field whose header waits for its value.
    pending_bool_field: Option<i16>,
}

impl<'d> CompactWriter<'d> {
    pub(crate) fn new(dst: &'d mut BytesMut) -> Self {
        Self::within(dst, usize::MAX)
    }

    /// A writer that is full once `dst` is longer than `end` bytes.
    pub(crate) fn within(dst: &'d mut BytesMut, end: usize) -> Self {
        Self {
            dst,
            end,
            last_field_id: 0,
            pending_bool_field: None,
        }
    }

    fn field_header(&mut self, code: u8, id: i16) {
        let delta = i32::from(id) - i32::from(self.last_field_id);
        if (1..=15).contains(&delta) {
            self.dst.put_u8(((delta as u8) << 4) | code);
        } else {
            self.dst.put_u8(code);
            put_varint(self.dst, zigzag_encode(i64::from(id)));
        }
        self.last_field_id = id;
    }
}

impl ValueWriter for CompactWriter<'_> {
    fn struct_begin(&mut self) -> i16 {
        std::mem::replace(&mut self.last_field_id, 0)
    }

    fn full(&self) -> bool {
        self.dst.len() > self.end
    }

    fn struct_end(&mut self, saved: i16) {
        self.last_field_id = saved;
    }

    fn field_begin(&mut self, ty: ValueType, id: i16) {
        if ty == ValueType::Bool {
            self.pending_bool_field = Some(id);
        } else {
            self.field_header(type_code(ty), id);
        }
    }

    fn field_stop(&mut self) {
        self.dst.put_u8(0);
    }

    fn list_begin(&mut self, element: ValueType, len: u32) {
        let code = type_code(element);
        if len < 15 {
            self.dst.put_u8(((len as u8) << 4) | code);
        } else {
            self.dst.put_u8(0xf0 | code);
            put_varint(self.dst, u64::from(len));
        }
    }

    fn map_begin(&mut self, types: Option<(ValueType, ValueType)>, len: u32) {
        put_varint(self.dst, u64::from(len));
        if let (Some((key, value)), true) = (types, len > 0) {
            self.dst.put_u8((type_code(key) << 4) | type_code(value));
        }
    }

    fn scalar(&mut self, value: Scalar<'_>) {
        match value {
            Scalar::Bool(b) => {
                let code = if b { BOOL_TRUE } else { BOOL_FALSE };
                match self.pending_bool_field.take() {
                    Some(id) => self.field_header(code, id),
                    None => self.dst.put_u8(code),
                }
            }
            Scalar::Byte(b) => self.dst.put_u8(b),
            Scalar::I16(v) => put_varint(self.dst, zigzag_encode(i64::from(v)) as u32 as u64),
            Scalar::I32(v) => put_varint(self.dst, zigzag_encode(i64::from(v)) as u32 as u64),
            Scalar::I64(v) => put_varint(self.dst, zigzag_encode(v)),
            Scalar::Double(bits) => self.dst.put_u64_le(bits),
            Scalar::Binary(bytes) => {
                put_varint(self.dst, bytes.len() as u64);
                self.dst.extend_from_slice(bytes);
            }
            Scalar::Uuid(bytes) => self.dst.extend_from_slice(bytes),
        }
    }
}
