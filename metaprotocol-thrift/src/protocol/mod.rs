//! The two Thrift serializations, binary and compact, behind one small reader/writer interface.
//!
//! Each protocol module parses and writes the message header (name, type, seqid) and provides a
//! [`ValueReader`] and a [`ValueWriter`]. Everything that walks a struct (finding the end of an
//! unframed message, checking a call's arguments, transcoding binary <-> compact, reading a
//! `TApplicationException`) is written once in [`walk`] over those traits.

pub(crate) mod binary;
pub(crate) mod compact;
pub(crate) mod walk;

use std::ops::Range;

use bytes::BytesMut;

use crate::format::Protocol;
use crate::wire::{Cursor, ReadError};
use walk::{Discard, Walk};

/// Nesting deeper than this is refused: it bounds the levels a struct walk keeps.
pub(crate) const MAX_DEPTH: usize = 64;

/// The value types of the Thrift IDL, whatever number a protocol gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueType {
    Bool,
    Byte,
    I16,
    I32,
    I64,
    Double,
    Binary,
    Struct,
    Map,
    Set,
    List,
    Uuid,
}

/// One non-container value, borrowed from the frame it was read from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scalar<'a> {
    Bool(bool),
    Byte(u8),
    I16(i16),
    I32(i32),
    I64(i64),
    /// The IEEE 754 bits; each protocol has its own byte order.
    Double(u64),
    Binary(&'a [u8]),
    Uuid(&'a [u8]),
}

/// The kind of a message, as numbered on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageType {
    Call = 1,
    Reply = 2,
    Exception = 3,
    Oneway = 4,
}

impl MessageType {
    /// Whether a message of this type answers a call.
    pub(crate) const fn answers(self) -> bool {
        matches!(self, Self::Reply | Self::Exception)
    }

    pub(crate) fn from_wire(value: u8) -> Result<Self, ReadError> {
        match value {
            1 => Ok(Self::Call),
            2 => Ok(Self::Reply),
            3 => Ok(Self::Exception),
            4 => Ok(Self::Oneway),
            _ => Err(ReadError::malformed("unknown message type")),
        }
    }
}

/// A parsed message header; ranges are offsets into the buffer it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MessageHeader {
    pub(crate) message_type: MessageType,
    pub(crate) name: Range<usize>,
    pub(crate) seqid: i32,
    /// Where the seqid is encoded (4 bytes in binary, a varint in compact).
    pub(crate) seqid_at: Range<usize>,
    /// Where the argument or result struct starts.
    pub(crate) body_start: usize,
    /// Whether it is a lax binary header, without the version word (as `TBinaryProtocol`
    /// writes with `strictWrite` off).
    pub(crate) lax: bool,
}

/// Where a reader stands between two values: enough to rebuild it over a longer buffer, or to
/// rewind it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// The offset in the buffer.
    pub(crate) position: usize,
    /// The compact protocol's last field id (its field ids are deltas); 0 for binary.
    last_field_id: i16,
    /// Passing over a message ([`pass`]): the bytes of a string cut by the buffer's end that
    /// are still to come, after `position` (the buffer's end).
    pub(crate) overrun: usize,
}

impl Checkpoint {
    /// The start of a struct at `position`.
    pub(crate) const fn at(position: usize) -> Self {
        Self {
            position,
            last_field_id: 0,
            overrun: 0,
        }
    }
}

/// Reads a struct's fields and values, one protocol's way.
pub(crate) trait ValueReader<'a> {
    /// Where the reader stands; only meaningful between two values.
    fn checkpoint(&self) -> Checkpoint;
    /// Moves the reader back (or on) to `at`.
    fn restore(&mut self, at: Checkpoint);
    /// Enters a struct; returns state to hand back to [`ValueReader::struct_end`].
    fn struct_begin(&mut self) -> i16;
    /// Leaves a struct.
    fn struct_end(&mut self, saved: i16);
    /// The next field's type and id, or `None` at the struct's stop byte.
    fn field_begin(&mut self) -> Result<Option<(ValueType, i16)>, ReadError>;
    /// A list or set header: element type and count.
    fn list_begin(&mut self) -> Result<(ValueType, u32), ReadError>;
    /// A map header: key and value types (absent for an empty compact map) and count.
    fn map_begin(&mut self) -> Result<(Option<(ValueType, ValueType)>, u32), ReadError>;
    /// A non-container value of type `ty`.
    fn scalar(&mut self, ty: ValueType) -> Result<Scalar<'a>, ReadError>;
}

/// Writes a struct's fields and values, one protocol's way. Writing cannot fail: it appends to
/// a growable buffer.
pub(crate) trait ValueWriter {
    /// Enters a struct; returns state to hand back to [`ValueWriter::struct_end`].
    fn struct_begin(&mut self) -> i16;
    /// Leaves a struct (after [`ValueWriter::field_stop`]).
    fn struct_end(&mut self, saved: i16);
    /// Starts field `id` of type `ty`; its value follows.
    fn field_begin(&mut self, ty: ValueType, id: i16);
    /// Ends the struct's field list.
    fn field_stop(&mut self);
    /// A list or set header.
    fn list_begin(&mut self, element: ValueType, len: u32);
    /// A map header.
    fn map_begin(&mut self, types: Option<(ValueType, ValueType)>, len: u32);
    /// A non-container value.
    fn scalar(&mut self, value: Scalar<'_>);
    /// Whether it has written past the end it was given: a walk then stops, rather than write
    /// on (a message transcoded grows up to eight times, a compact `i64` of 0 taking one byte
    /// and a binary one eight).
    fn full(&self) -> bool {
        false
    }
}

/// Reads the message header at the cursor.
// Inlined into the decoder, the header is not returned through memory (request decode 733 ->
// 715 instructions, response 606 -> 584, by `decode_cost`).
#[inline(always)]
pub(crate) fn read_message_header(
    protocol: Protocol,
    cursor: &mut Cursor<'_>,
) -> Result<MessageHeader, ReadError> {
    match protocol {
        Protocol::Binary => binary::read_message_header(cursor),
        Protocol::Compact => compact::read_message_header(cursor),
    }
}

/// Appends a message header.
pub(crate) fn write_message_header(
    protocol: Protocol,
    dst: &mut BytesMut,
    name: &[u8],
    message_type: MessageType,
    seqid: i32,
) {
    match protocol {
        Protocol::Binary => binary::write_message_header(dst, name, message_type, seqid),
        Protocol::Compact => compact::write_message_header(dst, name, message_type, seqid),
    }
}

/// Continues `walk` with a `protocol` reader over `buffer` from `at`, discarding what it reads
/// (no allocation); `at` ends where the walk stopped: after its value, or, when the buffer or
/// the frame size cap `max` ends first, at the start of the value that was cut.
pub(crate) fn skip(
    protocol: Protocol,
    walk: &mut Walk,
    buffer: &[u8],
    max: usize,
    at: &mut Checkpoint,
) -> Result<(), ReadError> {
    let cursor = Cursor::new(buffer, at.position, max);
    match protocol {
        Protocol::Binary => resume(&mut binary::BinaryReader::new(cursor), walk, at),
        Protocol::Compact => resume(&mut compact::CompactReader::new(cursor), walk, at),
    }
}

/// [`skip`] over one piece of a message passed over as it arrives, not held whole: a string
/// cut by the piece's end is taken as far as it goes, the rest counted in
/// [`Checkpoint::overrun`] (see [`Cursor::passing`]); any other value cut is, as in `skip`, to
/// be read again from its start.
pub(crate) fn pass(
    protocol: Protocol,
    walk: &mut Walk,
    buffer: &[u8],
    at: &mut Checkpoint,
) -> Result<(), ReadError> {
    let cursor = Cursor::passing(buffer, at.position);
    match protocol {
        Protocol::Binary => resume(&mut binary::BinaryReader::new(cursor), walk, at),
        Protocol::Compact => resume(&mut compact::CompactReader::new(cursor), walk, at),
    }
}

fn resume<'a, R: ValueReader<'a>>(
    reader: &mut R,
    walk: &mut Walk,
    at: &mut Checkpoint,
) -> Result<(), ReadError> {
    reader.restore(*at);
    let result = walk.run(reader, &mut Discard);
    *at = reader.checkpoint();
    result
}

/// The id of the first field of the struct at `cursor`, or `None` if it is empty. Reads only
/// the field header, never the value.
pub(crate) fn first_field_id(
    protocol: Protocol,
    cursor: Cursor<'_>,
) -> Result<Option<i16>, ReadError> {
    let field = match protocol {
        Protocol::Binary => binary::BinaryReader::new(cursor).field_begin()?,
        Protocol::Compact => compact::CompactReader::new(cursor).field_begin()?,
    };
    Ok(field.map(|(_, id)| id))
}

/// Re-serializes the struct at `cursor` from `from` into `to`, appending to `dst`; stops with
/// an encode error once `dst` is longer than `end` bytes. Translation is the
/// uncommon path, so one dynamically dispatched walk serves every pair.
pub(crate) fn transcode_struct(
    from: Protocol,
    to: Protocol,
    cursor: Cursor<'_>,
    dst: &mut BytesMut,
    end: usize,
) -> Result<(), ReadError> {
    with_reader(from, cursor, |reader| {
        let mut walk =
            |writer: &mut dyn ValueWriter| Walk::of(ValueType::Struct).run(reader, writer);
        match to {
            Protocol::Binary => walk(&mut binary::BinaryWriter::within(dst, end)),
            Protocol::Compact => walk(&mut compact::CompactWriter::within(dst, end)),
        }
    })
}

/// Calls `f` with a writer of `protocol` over `dst`.
pub(crate) fn with_writer<T>(
    protocol: Protocol,
    dst: &mut BytesMut,
    f: impl FnOnce(&mut dyn ValueWriter) -> T,
) -> T {
    match protocol {
        Protocol::Binary => f(&mut binary::BinaryWriter::new(dst)),
        Protocol::Compact => f(&mut compact::CompactWriter::new(dst)),
    }
}

/// Calls `f` with a reader of `protocol` at `cursor`.
pub(crate) fn with_reader<'a, T>(
    protocol: Protocol,
    cursor: Cursor<'a>,
    f: impl FnOnce(&mut dyn ValueReader<'a>) -> T,
) -> T {
    match protocol {
        Protocol::Binary => f(&mut binary::BinaryReader::new(cursor)),
        Protocol::Compact => f(&mut compact::CompactReader::new(cursor)),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    /// A binary struct with every type: scalars, negative and far-apart field ids, booleans as
    /// fields and list elements, nested structs, empty and full containers.
    fn every_type_binary() -> BytesMut {
        let mut b = BytesMut::new();
        let field = |b: &mut BytesMut, ty: u8, id: i16| {
            b.put_u8(ty);
            b.put_i16(id);
        };
        field(&mut b, 2, 1);
        b.put_u8(1);
        field(&mut b, 2, 2);
        b.put_u8(0);
        field(&mut b, 3, 3);
        b.put_u8(0xfe);
        field(&mut b, 6, 4);
        b.put_i16(-300);
        field(&mut b, 8, 20);
        b.put_i32(i32::MIN);
        field(&mut b, 10, -5);
        b.put_i64(i64::MAX);
        field(&mut b, 4, 6);
        b.put_f64(-1.5);
        field(&mut b, 11, 7);
        b.put_u32(3);
        b.extend_from_slice(b"abc");
        field(&mut b, 16, 8);
        b.extend_from_slice(&[7; 16]);
        field(&mut b, 15, 9); // list<bool> of 2
        b.put_u8(2);
        b.put_u32(2);
        b.extend_from_slice(&[1, 0]);
        field(&mut b, 14, 10); // set<i32> of 20: the long compact list header
        b.put_u8(8);
        b.put_u32(20);
        for i in 0..20 {
            b.put_i32(i);
        }
        field(&mut b, 13, 11); // map<string, struct>
        b.put_u8(11);
        b.put_u8(12);
        b.put_u32(1);
        b.put_u32(1);
        b.put_u8(b'k');
        field(&mut b, 2, 1); // nested struct { 1: true }
        b.put_u8(1);
        b.put_u8(0);
        field(&mut b, 13, 12); // empty map (Java writes STOP types)
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        field(&mut b, 12, 32767);
        b.put_u8(0); // empty struct
        b.put_u8(0);
        b
    }

    /// [`every_type_binary`] and the same struct transcoded to the compact protocol.
    fn every_type_in_both() -> Result<(BytesMut, BytesMut), ReadError> {
        let binary = every_type_binary();
        let mut compact = BytesMut::new();
        transcode_struct(
            Protocol::Binary,
            Protocol::Compact,
            Cursor::in_frame(&binary, 0),
            &mut compact,
            usize::MAX,
        )?;
        Ok((binary, compact))
    }

    fn end_of_struct(protocol: Protocol, bytes: &[u8]) -> Result<usize, ReadError> {
        let mut at = Checkpoint::at(0);
        skip(
            protocol,
            &mut Walk::of(ValueType::Struct),
            bytes,
            usize::MAX,
            &mut at,
        )?;
        Ok(at.position)
    }

    /// A walk fed one more byte at a time stops at the start of each value it cannot finish,
    /// and ends exactly where a walk over the whole struct does.
    #[test]
    fn walks_resume_anywhere() -> Result<(), ReadError> {
        let (binary, compact) = every_type_in_both()?;
        for (protocol, bytes) in [(Protocol::Binary, binary), (Protocol::Compact, compact)] {
            let mut walk = Walk::of(ValueType::Struct);
            let mut at = Checkpoint::at(0);
            for len in 0..bytes.len() {
                let before = at;
                let result = skip(protocol, &mut walk, &bytes[..len], usize::MAX, &mut at);
                assert_eq!(result, Err(ReadError::Incomplete), "{protocol:?} at {len}");
                assert!(before.position <= at.position && at.position <= len);
            }
            skip(protocol, &mut walk, &bytes, usize::MAX, &mut at)?;
            assert_eq!(at.position, bytes.len(), "{protocol:?}");
        }
        Ok(())
    }

    /// A struct of scalar fields, each a type code and the bytes of its value.
    fn flat_struct(fields: &[(u8, Vec<u8>)]) -> BytesMut {
        let mut b = BytesMut::new();
        for (id, (code, value)) in fields.iter().enumerate() {
            b.put_u8(*code);
            b.put_i16(id as i16);
            b.extend_from_slice(value);
        }
        b.put_u8(0);
        b
    }

    /// A scalar's type code and a value of it (a binary of `len` bytes).
    fn scalar() -> impl proptest::strategy::Strategy<Value = (u8, Vec<u8>)> {
        use proptest::prelude::*;
        (0usize..9, 0usize..40).prop_map(|(kind, len)| match kind {
            0 => (2, vec![1]),
            1 => (3, vec![0xfe]),
            2 => (6, vec![0; 2]),
            3 => (8, vec![0; 4]),
            4 => (10, vec![0; 8]),
            5 => (4, vec![0; 8]),
            6 => (16, vec![7; 16]),
            _ => {
                let mut value = (len as u32).to_be_bytes().to_vec();
                value.extend(std::iter::repeat_n(b'x', len));
                (11, value)
            }
        })
    }

    proptest::proptest! {
        /// The pass over a struct of scalars ends where the walk does, and a struct cut short
        /// or with bytes changed ends nowhere the walk does not.
        #[test]
        fn a_flat_struct_ends_where_the_walk_ends(
            fields in proptest::collection::vec(scalar(), 0..8),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::prelude::any::<(proptest::sample::Index, u8)>(),
        ) {
            let whole = flat_struct(&fields);
            proptest::prop_assert_eq!(binary::flat_struct_end(&whole, 0), Some(whole.len()));
            proptest::prop_assert_eq!(end_of_struct(Protocol::Binary, &whole), Ok(whole.len()));
            let short = &whole[..cut.index(whole.len())];
            proptest::prop_assert_eq!(binary::flat_struct_end(short, 0), None);
            let mut changed = whole.to_vec();
            changed[flip.0.index(whole.len())] ^= flip.1;
            if let Some(end) = binary::flat_struct_end(&changed, 0) {
                proptest::prop_assert_eq!(end_of_struct(Protocol::Binary, &changed), Ok(end));
            }
        }
    }

    /// A struct with a nested struct or a container is the walk's.
    #[test]
    fn a_struct_that_nests_is_not_flat() {
        let binary = every_type_binary();
        assert_eq!(binary::flat_struct_end(&binary, 0), None);
        let mut list = flat_struct(&[(8, vec![0; 4])]);
        list[7] = 15;
        assert_eq!(binary::flat_struct_end(&list, 0), None);
    }

    #[test]
    fn transcoding_every_type_round_trips() -> Result<(), ReadError> {
        let (binary, compact) = every_type_in_both()?;
        assert_eq!(end_of_struct(Protocol::Compact, &compact)?, compact.len());
        assert_eq!(end_of_struct(Protocol::Binary, &binary)?, binary.len());
        let mut back = BytesMut::new();
        transcode_struct(
            Protocol::Compact,
            Protocol::Binary,
            Cursor::in_frame(&compact, 0),
            &mut back,
            usize::MAX,
        )?;
        assert_eq!(back, binary);
        // Compact booleans live in field headers: `1: true` is one byte.
        assert_eq!(compact.first(), Some(&0x11));
        assert!(compact.len() < binary.len());
        Ok(())
    }
}
