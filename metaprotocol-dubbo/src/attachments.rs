//! The attachments map at the end of a request or response body: reading its entries as
//! metadata, and rewriting it for a [`Mutation`].
//!
//! Attachments are a Hessian2 map, normally untyped (`H ... Z`), sometimes typed (`M type ...
//! Z`), `N` when a client has none, or missing altogether. Entries whose key and value are
//! strings are routable; an entry whose key is a string and whose value is another (dubbo2.js
//! sends `timeout` as an int) is there with the text Java prints for it (`3000`, `true`,
//! `{k=v}` for a map ...: see [`printed`](crate::hessian::printed)), one whose value is null is
//! none (and takes out an earlier value of its key, as Java's map does), and on rewrite each
//! is copied as it came.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use metaprotocol_core::{CodecError, Metadata, MetadataStr, Mutation};

use crate::hessian::printed::{self, Printed, References, ValueText};
use crate::hessian::reader::{Reader, StringData, is_string_tag};
use crate::hessian::skip::{Skipper, skip_type};
use crate::hessian::writer::write_string;
use crate::hessian::{CLASS_DEF, END, NULL, TYPED_MAP, UNTYPED_MAP};

/// Where the attachments map lies in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapBounds {
    /// The map's tag, or where a map would go if there is none.
    pub(crate) start: usize,
    /// The first entry; equal to `start` when there is no map to keep entries of.
    pub(crate) entries: usize,
    /// Just after the map (its `Z`, or an `N` standing for no attachments).
    pub(crate) end: usize,
}

impl MapBounds {
    /// No map, at `at`.
    pub(crate) const fn absent(at: usize) -> Self {
        Self {
            start: at,
            entries: at,
            end: at,
        }
    }

    /// True if there is a map whose entries can be kept.
    fn has_entries(&self) -> bool {
        self.entries > self.start
    }
}

/// One entry of the map.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// The entry's bytes (key and value).
    pub(crate) raw: Range<usize>,
    /// The key, if it is a string.
    pub(crate) key: Option<StringData<'a>>,
    /// The value, if it is a string.
    pub(crate) value: Option<StringData<'a>>,
    /// Where the value starts in the frame.
    pub(crate) value_at: usize,
    /// True if the entry added class definitions or referenceable values: removing it would
    /// renumber what later entries refer to.
    pub(crate) shares_state: bool,
}

impl Entry<'_> {
    /// The entry as metadata, if its key and value are strings representable in UTF-8.
    // Inlined into the decoders' visits, its pair of strings is not returned through memory
    // (Dubbo's request decode 3,381 -> 3,335 instructions by `decode_cost`).
    #[inline(always)]
    pub(crate) fn text(&self, frame: &Bytes) -> Option<(MetadataStr, MetadataStr)> {
        let key = self.key.as_ref()?.to_metadata(frame)?;
        let value = self.value.as_ref()?.to_metadata(frame)?;
        Some((key, value))
    }

    /// Sets the entry in `metadata` if its key is a string and its value is there but no text
    /// (an int, a boolean, a map ..., or a string UTF-8 cannot hold): a Java provider sees it
    /// (`getObjectAttachment`), so a route's or policy's `present` must too, and a match on its
    /// value sees what Java prints for it (see [`printed`]), its objects' classes in `classes`
    /// and the values its references name in `references`:
    /// dubbo2.js's int `timeout` reads as its decimal digits, rendered into the metadata's
    /// inline room (no allocation; a list's or map's longer text is shared, an allocation). A
    /// null, which Java reads as no attachment, is none, and takes out an earlier entry of the
    /// key: Java's map keeps a key's last value.
    pub(crate) fn insert_other(
        &self,
        frame: &Bytes,
        classes: &Skipper,
        references: &mut References,
        metadata: &mut Metadata,
    ) {
        let Some(key) = self.key.as_ref() else {
            return;
        };
        let mut text = Printed::default();
        match printed::text_of(frame, self.value_at, classes, references, &mut text) {
            ValueText::Null => {
                if let Some(key) = key.to_byte_str(frame) {
                    metadata.unset(key.as_str());
                }
            }
            ValueText::Constant(text) => {
                if let Some(key) = key.to_metadata(frame) {
                    metadata.insert(key, MetadataStr::Static(text));
                }
            }
            ValueText::Printed => {
                if let Some(key) = key.to_metadata(frame) {
                    metadata.insert_rendered(key, text.as_str());
                }
            }
        }
    }
}

/// Reads the attachments map at the reader's position, calling `each` for every entry with
/// the classes defined up to its end.
pub(crate) fn visit<'a>(
    reader: &mut Reader<'a>,
    skipper: &mut Skipper,
    mut each: impl FnMut(Entry<'a>, &Skipper) -> Result<(), CodecError>,
) -> Result<MapBounds, CodecError> {
    // Hessian lets a class definition precede any value, this map included.
    while reader.peek() == Some(CLASS_DEF) {
        reader.byte()?;
        skipper.define_class(reader)?;
    }
    let start = reader.position();
    match reader.peek() {
        None => return Ok(MapBounds::absent(start)),
        Some(NULL) => {
            reader.byte()?;
            return Ok(MapBounds {
                start,
                entries: start,
                end: reader.position(),
            });
        }
        Some(UNTYPED_MAP) => reader.byte().map(drop)?,
        Some(TYPED_MAP) => {
            reader.byte()?;
            skip_type(reader)?;
        }
        Some(_) => return Err(CodecError::malformed("expected the Dubbo attachments map")),
    }
    let entries = reader.position();
    while reader.peek() != Some(END) {
        let before = skipper.shared_state();
        let entry_start = reader.position();
        let key = string_or_skip(reader, skipper)?;
        let value_at = reader.position();
        let value = string_or_skip(reader, skipper)?;
        each(
            Entry {
                raw: entry_start..reader.position(),
                key,
                value,
                value_at,
                shares_state: skipper.shared_state() != before,
            },
            skipper,
        )?;
    }
    reader.byte()?;
    Ok(MapBounds {
        start,
        entries,
        end: reader.position(),
    })
}

/// Appends the attachments map of `frame` with `mutation` applied: the original entries whose
/// keys the mutation does not override, then the mutation's sets. `reader` and `skipper` stand
/// at `map.start` with the class definitions of the body before it.
pub(crate) fn write_mutated(
    frame: &[u8],
    map: MapBounds,
    mut reader: Reader<'_>,
    skipper: &mut Skipper,
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    if map.has_entries() {
        dst.put_slice(slice(frame, map.start..map.entries)?);
        visit(&mut reader, skipper, |entry, _| {
            let overridden = entry
                .key
                .as_ref()
                .is_some_and(|key| mutation.overrides(key.raw(frame)));
            if !overridden {
                dst.put_slice(slice(frame, entry.raw)?);
            } else if entry.shares_state {
                return Err(CodecError::Encode(
                    "an attachment that holds an object graph cannot be removed or replaced".into(),
                ));
            }
            Ok(())
        })?;
    } else {
        dst.put_u8(UNTYPED_MAP);
    }
    for (key, value) in mutation.sets() {
        write_string(dst, &[key.as_str()]);
        write_string(dst, &[value.as_str()]);
    }
    dst.put_u8(END);
    Ok(())
}

/// `frame[range]`, or an encode error if a layout does not fit its frame.
pub(crate) fn slice(frame: &[u8], range: Range<usize>) -> Result<&[u8], CodecError> {
    frame.get(range).ok_or(CodecError::Encode(
        "frame layout does not match the frame".into(),
    ))
}

/// Reads a string, or skips any other value.
fn string_or_skip<'a>(
    reader: &mut Reader<'a>,
    skipper: &mut Skipper,
) -> Result<Option<StringData<'a>>, CodecError> {
    match reader.peek() {
        Some(tag) if is_string_tag(tag) => reader.string(),
        _ => skipper.skip_value(reader).map(|()| None),
    }
}
