//! Iterative, resumable walks over any [`ValueReader`] and [`ValueWriter`].
//!
//! One walk serves every purpose: with [`Discard`] as the writer it checks and skips a value
//! without allocating (finding the end of an unframed message, checking a call's arguments);
//! with the other protocol's writer it transcodes. The open structs and containers live in an
//! inline array of [`MAX_DEPTH`] levels rather than on the call stack, which bounds nesting and
//! lets a walk that runs out of input keep its place: the reader is rewound to the start of the
//! value that was cut, and [`Walk::run`] continues from there once the buffer holds more bytes,
//! so every byte of a message that arrives in many pieces is walked once.
//!
//! Every element of every container consumes at least one input byte, so a lying element count
//! cannot spin longer than the input.

use std::borrow::Cow;

use metaprotocol_core::CodecError;
use smallvec::SmallVec;

use super::{Checkpoint, MAX_DEPTH, Scalar, ValueReader, ValueType, ValueWriter};
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

/// One open struct or container, and what it still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// Fields until the stop byte; the reader's and writer's state to restore at its end.
    Struct {
        reader_saved: i16,
        writer_saved: i16,
    },
    /// `left` more values of type `element` (a list or set, or the value a walk started with).
    Values { element: ValueType, left: u32 },
    /// `pairs_left` more entries; `value_next` once an entry's key has been read.
    Map {
        key: ValueType,
        value: ValueType,
        pairs_left: u32,
        value_next: bool,
    },
}

/// The opening of one value: a scalar read whole, or the header of a struct or container.
enum Opened<'a> {
    Scalar(Scalar<'a>),
    Struct,
    List(ValueType, u32),
    Map(Option<(ValueType, ValueType)>, u32),
}

/// Where a walk stands: the open structs and containers, innermost last.
///
/// The first level is the value the walk started with; [`MAX_DEPTH`] more may open inside it,
/// all held inline (a walk never allocates).
#[derive(Clone, Debug, Default)]
pub(crate) struct Walk {
    levels: SmallVec<[Level; MAX_DEPTH + 1]>,
}

impl Walk {
    /// A walk over one value of type `ty`, from the reader's position.
    pub(crate) fn of(ty: ValueType) -> Self {
        let mut levels = SmallVec::new();
        levels.push(Level::Values {
            element: ty,
            left: 1,
        });
        Self { levels }
    }

    /// Reads from `reader` and writes to `writer` until the walk's value ends.
    ///
    /// On any error the reader is rewound to the start of the value it was reading and the
    /// walk keeps its place: after [`ReadError::Incomplete`], the same walk over a reader at
    /// that position in a longer buffer carries on where this one stopped. Nothing is written
    /// for a value that could not be read whole.
    pub(crate) fn run<'a, R, W>(&mut self, reader: &mut R, writer: &mut W) -> Result<(), ReadError>
    where
        R: ValueReader<'a> + ?Sized,
        W: ValueWriter + ?Sized,
    {
        while let Some(&level) = self.levels.last() {
            // Checked once a value is written: a level opened or closed, each scalar in a row.
            if writer.full() {
                return Err(written_past_end());
            }
            let mut mark = reader.checkpoint();
            if let Err(error) = self.step(level, reader, writer, &mut mark) {
                reader.restore(mark);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Reads on in the innermost `level`: the scalars that follow in a row (in a loop, the
    /// common case), up to the end of the level or the opening of a nested one. A value's reads
    /// all come before any change to the walk, and `mark` follows the start of the next value,
    /// so that after a failure the caller rewinds the reader there and the walk is where it
    /// was.
    #[inline]
    fn step<'a, R, W>(
        &mut self,
        level: Level,
        reader: &mut R,
        writer: &mut W,
        mark: &mut Checkpoint,
    ) -> Result<(), ReadError>
    where
        R: ValueReader<'a> + ?Sized,
        W: ValueWriter + ?Sized,
    {
        match level {
            Level::Struct {
                reader_saved,
                writer_saved,
            } => loop {
                let Some((ty, id)) = reader.field_begin()? else {
                    reader.struct_end(reader_saved);
                    writer.field_stop();
                    writer.struct_end(writer_saved);
                    self.levels.pop();
                    return Ok(());
                };
                let opened = open(reader, ty)?;
                writer.field_begin(ty, id);
                let Opened::Scalar(value) = opened else {
                    return self.enter(opened, reader, writer);
                };
                writer.scalar(value);
                *mark = reader.checkpoint();
                if writer.full() {
                    return Err(written_past_end());
                }
            },
            Level::Values { element, left } => {
                for left in (0..left).rev() {
                    let opened = open(reader, element)?;
                    self.replace_innermost(Level::Values { element, left });
                    let Opened::Scalar(value) = opened else {
                        return self.enter(opened, reader, writer);
                    };
                    writer.scalar(value);
                    *mark = reader.checkpoint();
                    if writer.full() {
                        return Err(written_past_end());
                    }
                }
                self.levels.pop();
                Ok(())
            }
            Level::Map { pairs_left: 0, .. } => {
                self.levels.pop();
                Ok(())
            }
            Level::Map {
                key,
                value,
                pairs_left,
                value_next,
            } => {
                let opened = open(reader, if value_next { value } else { key })?;
                self.replace_innermost(Level::Map {
                    key,
                    value,
                    pairs_left: if value_next {
                        pairs_left - 1
                    } else {
                        pairs_left
                    },
                    value_next: !value_next,
                });
                self.enter(opened, reader, writer)
            }
        }
    }

    /// Writes a value that was opened, and opens a level for a struct or container.
    #[inline]
    fn enter<'a, R, W>(
        &mut self,
        opened: Opened<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Result<(), ReadError>
    where
        R: ValueReader<'a> + ?Sized,
        W: ValueWriter + ?Sized,
    {
        let level = match opened {
            Opened::Scalar(value) => {
                writer.scalar(value);
                return Ok(());
            }
            Opened::Struct => {
                self.check_room()?;
                Level::Struct {
                    reader_saved: reader.struct_begin(),
                    writer_saved: writer.struct_begin(),
                }
            }
            Opened::List(element, len) => {
                self.check_room()?;
                writer.list_begin(element, len);
                Level::Values { element, left: len }
            }
            Opened::Map(types, len) => {
                self.check_room()?;
                writer.map_begin(types, len);
                if len == 0 {
                    return Ok(());
                }
                let (key, value) =
                    types.ok_or(ReadError::malformed("map without element types"))?;
                Level::Map {
                    key,
                    value,
                    pairs_left: len,
                    value_next: false,
                }
            }
        };
        self.levels.push(level);
        Ok(())
    }

    /// Refuses a level beyond the inline capacity: the nesting limit.
    fn check_room(&self) -> Result<(), ReadError> {
        if self.levels.len() >= self.levels.inline_size() {
            return Err(ReadError::malformed(
                "structs or containers nested too deeply",
            ));
        }
        Ok(())
    }

    fn replace_innermost(&mut self, level: Level) {
        if let Some(innermost) = self.levels.last_mut() {
            *innermost = level;
        }
    }
}

/// The error of a walk stopped because its writer is [`ValueWriter::full`].
fn written_past_end() -> ReadError {
    CodecError::Encode(Cow::Borrowed(
        "the value written grew past the end it was given",
    ))
    .into()
}

/// Reads the start of a value of type `ty`: a whole scalar, or a container's header.
#[inline]
fn open<'a, R>(reader: &mut R, ty: ValueType) -> Result<Opened<'a>, ReadError>
where
    R: ValueReader<'a> + ?Sized,
{
    Ok(match ty {
        ValueType::Struct => Opened::Struct,
        ValueType::List | ValueType::Set => {
            let (element, len) = reader.list_begin()?;
            Opened::List(element, len)
        }
        ValueType::Map => {
            let (types, len) = reader.map_begin()?;
            Opened::Map(types, len)
        }
        _ => Opened::Scalar(reader.scalar(ty)?),
    })
}

/// Skips one value of type `ty` at the reader's position.
pub(crate) fn skip_value<'a, R>(reader: &mut R, ty: ValueType) -> Result<(), ReadError>
where
    R: ValueReader<'a> + ?Sized,
{
    Walk::of(ty).run(reader, &mut Discard)
}
