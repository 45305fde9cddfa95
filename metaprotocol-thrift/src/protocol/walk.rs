//! Depth-limited struct walks over any [`ValueReader`] and [`ValueWriter`].
//!
//! One walk serves three purposes: with [`Discard`] as the writer it skips a struct without
//! allocating (finding the end of an unframed message); with the other protocol's writer it
//! transcodes; with the same protocol's writer it normalizes. Every element of every container
//! consumes at least one input byte, so a lying element count cannot spin longer than the input.

use super::{Scalar, ValueReader, ValueType, ValueWriter};
use crate::wire::ReadError;

/// A writer that drops everything: the walk then only validates and skips.
pub(crate) struct Discard;

impl ValueWriter for Discard {
    #[inline]
    fn struct_begin(&mut self) -> i16 {
        0
    }
    #[inline]
    fn struct_end(&mut self, _saved: i16) {}
    #[inline]
    fn field_begin(&mut self, _ty: ValueType, _id: i16) {}
    #[inline]
    fn field_stop(&mut self) {}
    #[inline]
    fn list_begin(&mut self, _element: ValueType, _len: u32) {}
    #[inline]
    fn map_begin(&mut self, _types: Option<(ValueType, ValueType)>, _len: u32) {}
    #[inline]
    fn scalar(&mut self, _value: Scalar<'_>) {}
}

/// Copies one struct from `reader` to `writer`, refusing nesting deeper than `depth`.
pub(crate) fn transfer_struct<'a, R, W>(
    reader: &mut R,
    writer: &mut W,
    depth: u32,
) -> Result<(), ReadError>
where
    R: ValueReader<'a> + ?Sized,
    W: ValueWriter + ?Sized,
{
    let depth = depth
        .checked_sub(1)
        .ok_or(ReadError::malformed("structs nested too deeply"))?;
    let read_state = reader.struct_begin();
    let write_state = writer.struct_begin();
    while let Some((ty, id)) = reader.field_begin()? {
        writer.field_begin(ty, id);
        transfer_value(reader, writer, ty, depth)?;
    }
    writer.field_stop();
    reader.struct_end(read_state);
    writer.struct_end(write_state);
    Ok(())
}

/// Copies one value of type `ty`, refusing nesting deeper than `depth`.
pub(crate) fn transfer_value<'a, R, W>(
    reader: &mut R,
    writer: &mut W,
    ty: ValueType,
    depth: u32,
) -> Result<(), ReadError>
where
    R: ValueReader<'a> + ?Sized,
    W: ValueWriter + ?Sized,
{
    match ty {
        ValueType::Struct => transfer_struct(reader, writer, depth),
        ValueType::List | ValueType::Set => {
            let depth = nested(depth)?;
            let (element, len) = reader.list_begin()?;
            writer.list_begin(element, len);
            for _ in 0..len {
                transfer_value(reader, writer, element, depth)?;
            }
            Ok(())
        }
        ValueType::Map => {
            let depth = nested(depth)?;
            let (types, len) = reader.map_begin()?;
            writer.map_begin(types, len);
            if len == 0 {
                return Ok(());
            }
            let (key, value) = types.ok_or(ReadError::malformed("map without element types"))?;
            for _ in 0..len {
                transfer_value(reader, writer, key, depth)?;
                transfer_value(reader, writer, value, depth)?;
            }
            Ok(())
        }
        _ => {
            let value = reader.scalar(ty)?;
            writer.scalar(value);
            Ok(())
        }
    }
}

fn nested(depth: u32) -> Result<u32, ReadError> {
    depth
        .checked_sub(1)
        .ok_or(ReadError::malformed("containers nested too deeply"))
}
