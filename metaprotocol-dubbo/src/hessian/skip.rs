//! Steps over any Hessian2 value without building it.
//!
//! Arguments and return values are opaque to the proxy; it only needs to know where they end.
//! The skipper walks the whole grammar, remembering just what later bytes depend on: the field
//! count of every class definition (objects name their class by index, and their field values
//! are not otherwise delimited) and where its field names are (for printing an attachment that
//! is an object), and how many values entered the reference table (so that rewriting
//! attachments can tell whether removing an entry would renumber references).

use metaprotocol_core::CodecError;
use smallvec::SmallVec;

use crate::nested::{self, Open, Values};

use super::reader::{Reader, is_string_tag};
use super::{CLASS_DEF, END, TYPED_MAP, UNTYPED_MAP};

/// How many class definitions one frame may hold (each costs eight bytes of memory here).
pub(crate) const MAX_CLASS_DEFS: usize = 4096;

/// Class definitions kept without allocating: a call's arguments rarely define more classes.
const INLINE_CLASS_DEFS: usize = 16;

/// The state that skipping one frame's body accumulates.
#[derive(Debug, Default)]
pub(crate) struct Skipper {
    classes: SmallVec<[ClassDef; INLINE_CLASS_DEFS]>,
    shared_values: u32,
}

/// A class definition: what an object of the class consists of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassDef {
    /// The number of fields, each a value of the object.
    pub(crate) fields: u32,
    /// Where the field names start in the frame: `fields` strings.
    pub(crate) names_at: u32,
}

/// What a value added to the frame's shared tables; see [`Skipper::shared_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedState {
    class_defs: usize,
    shared_values: u32,
}

impl Skipper {
    /// A skipper for a new frame body (empty class and reference tables; does not allocate, nor
    /// does skipping a body with up to 16 class definitions).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Consumes one value, with any class definitions that precede it.
    pub(crate) fn skip_value(&mut self, reader: &mut Reader<'_>) -> Result<(), CodecError> {
        // Most values hold no others, and need no stack.
        match self.step(reader)? {
            None => Ok(()),
            Some(opened) => nested::skip_held(
                &mut Walk {
                    skipper: self,
                    reader,
                },
                opened,
            ),
        }
    }

    /// The number of class definitions seen so far.
    pub(crate) fn class_defs(&self) -> usize {
        self.classes.len()
    }

    /// Class definition `index`, if there is one.
    pub(crate) fn class(&self, index: usize) -> Option<ClassDef> {
        self.classes.get(index).copied()
    }

    /// The sizes of the class and reference tables. A value that leaves them unchanged can be
    /// removed without renumbering the references of the values after it.
    pub(crate) fn shared_state(&self) -> SharedState {
        SharedState {
            class_defs: self.classes.len(),
            shared_values: self.shared_values,
        }
    }

    /// Consumes a class definition after its `C` tag: `name field-count field-name*`.
    pub(crate) fn define_class(&mut self, reader: &mut Reader<'_>) -> Result<(), CodecError> {
        if self.classes.len() >= MAX_CLASS_DEFS {
            return Err(CodecError::malformed("too many Hessian2 class definitions"));
        }
        let class = read_class_def(reader)?;
        self.classes.push(class);
        Ok(())
    }

    /// Consumes the next value up to what it holds, with any class definitions before it: all
    /// of a value that holds no others (`None`), the tag, type and length of a list or map, the
    /// tag and class of an object, which it returns as opened. A list, map or object enters the
    /// reference table as it opens, before the values it holds.
    // Inlined into both walks: out of line, each value cost a call, and a plain request's
    // decode 26 instructions more (callgrind).
    #[inline(always)]
    fn step(&mut self, reader: &mut Reader<'_>) -> Result<Option<Open>, CodecError> {
        loop {
            let tag = reader.byte()?;
            let opened = match tag {
                // A class definition prefixes the value that uses it.
                CLASS_DEF => {
                    self.define_class(reader)?;
                    continue;
                }
                // null, booleans, one-byte ints and longs, doubles 0.0 and 1.0
                b'N' | b'T' | b'F' | 0x80..=0xbf | 0xd8..=0xef | 0x5b | 0x5c => return Ok(None),
                // two-byte ints and longs, byte double
                0xc0..=0xcf | 0xf0..=0xff | 0x5d => return reader.advance(1).map(|()| None),
                // three-byte ints and longs, short double
                0xd0..=0xd7 | 0x38..=0x3f | 0x5e => return reader.advance(2).map(|()| None),
                // int, long as int, float double, date in minutes
                b'I' | 0x59 | 0x5f | 0x4b => return reader.advance(4).map(|()| None),
                // long, double, date in milliseconds
                b'L' | b'D' | 0x4a => return reader.advance(8).map(|()| None),
                0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => {
                    return reader.skip_string(tag).map(|()| None);
                }
                0x20..=0x2f | 0x34..=0x37 | b'B' | b'A' => {
                    return reader.skip_binary(tag).map(|()| None);
                }
                // reference to an earlier list, map or object
                0x51 => return reader.int().map(|_| None),
                // variable-length typed list
                0x55 => {
                    skip_type(reader)?;
                    Open::LIST
                }
                // fixed-length typed list
                b'V' => {
                    skip_type(reader)?;
                    Open::values(reader.count()?)
                }
                // variable-length untyped list
                0x57 => Open::LIST,
                // fixed-length untyped list
                0x58 => Open::values(reader.count()?),
                // typed list of length 0..=7
                0x70..=0x77 => {
                    skip_type(reader)?;
                    Open::values(usize::from(tag - 0x70))
                }
                // untyped list of length 0..=7
                0x78..=0x7f => Open::values(usize::from(tag - 0x78)),
                UNTYPED_MAP => Open::MAP_KEY,
                TYPED_MAP => {
                    skip_type(reader)?;
                    Open::MAP_KEY
                }
                b'O' => {
                    // An index into the class definitions, not a count of what follows: it is
                    // checked against the definitions, not against the bytes left.
                    let class = usize::try_from(reader.int()?)
                        .map_err(|_| CodecError::malformed("negative Hessian2 class index"))?;
                    self.object(class)?
                }
                0x60..=0x6f => self.object(usize::from(tag - 0x60))?,
                _ => return Err(CodecError::malformed("unexpected Hessian2 tag")),
            };
            self.shared_values = self.shared_values.saturating_add(1);
            return Ok(Some(opened));
        }
    }

    /// An object of class `class`, opened: its fields are its values.
    fn object(&self, class: usize) -> Result<Open, CodecError> {
        let class = self.class(class).ok_or(CodecError::malformed(
            "Hessian2 object of an undefined class",
        ))?;
        Ok(Open::values(class.fields as usize))
    }
}

/// A skipper and the frame it reads, as the walk of nested values drives them.
struct Walk<'s, 'r, 'a> {
    skipper: &'s mut Skipper,
    reader: &'r mut Reader<'a>,
}

impl Values for Walk<'_, '_, '_> {
    const END: u8 = END;

    fn peek(&self) -> Option<u8> {
        self.reader.peek()
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        self.reader.byte()
    }

    fn step(&mut self) -> Result<Option<Open>, CodecError> {
        self.skipper.step(self.reader)
    }
}

/// Consumes a class definition after its `C` tag, `name field-count field-name*`, without
/// defining it (a printer reading a second time what the skipper defined).
pub(crate) fn read_class_def(reader: &mut Reader<'_>) -> Result<ClassDef, CodecError> {
    let name = reader.byte()?;
    reader.skip_string(name)?;
    let fields = reader.count()?;
    let names_at = reader.position();
    for _ in 0..fields {
        let field = reader.byte()?;
        reader.skip_string(field)?;
    }
    // `count` bounds `fields` by the frame's length, and a frame is far shorter than 4 GiB.
    Ok(ClassDef {
        fields: u32::try_from(fields).unwrap_or(u32::MAX),
        names_at: u32::try_from(names_at).unwrap_or(u32::MAX),
    })
}

/// True for the tags that start a value Hessian2 enters in its reference table, which a `Q`
/// reference names by the order in which they start: a list, a map, an object.
fn is_shared(tag: u8) -> bool {
    matches!(tag, 0x55..=0x58 | 0x70..=0x7f | UNTYPED_MAP | TYPED_MAP | b'O' | 0x60..=0x6f)
}

/// Where shared value `index` starts, counting from shared value `first`, which starts at
/// `from` or after it, up to `until`. The values are numbered in the order their tags come, so
/// the bytes are read as a flat run of tags, each with its own payload: a list's length, a
/// type, an object's class index and a class definition's parts are values of their own, and
/// what a value holds follows it. Reads no further than `until`.
pub(crate) fn find_shared(
    frame: &[u8],
    from: usize,
    first: u32,
    index: u32,
    until: usize,
) -> Option<usize> {
    let mut reader = Reader::new(frame.get(..until)?, from);
    let mut next = first;
    loop {
        let at = reader.position();
        let tag = reader.byte().ok()?;
        if is_shared(tag) {
            if next == index {
                return Some(at);
            }
            next = next.checked_add(1)?;
            continue;
        }
        let payload = match tag {
            // Their parts are values of their own; a reference's index is an int.
            CLASS_DEF | END | 0x51 => Ok(()),
            b'N' | b'T' | b'F' | 0x80..=0xbf | 0xd8..=0xef | 0x5b | 0x5c => Ok(()),
            0xc0..=0xcf | 0xf0..=0xff | 0x5d => reader.advance(1),
            0xd0..=0xd7 | 0x38..=0x3f | 0x5e => reader.advance(2),
            b'I' | 0x59 | 0x5f | 0x4b => reader.advance(4),
            b'L' | b'D' | 0x4a => reader.advance(8),
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => reader.string_chunk(tag).map(drop),
            0x20..=0x2f | 0x34..=0x37 | b'B' | b'A' => reader.binary_chunk(tag).map(drop),
            _ => Err(CodecError::malformed("unexpected Hessian2 tag")),
        };
        payload.ok()?;
    }
}

/// Consumes a list or map type: a type name string or an int reference to an earlier one.
pub(crate) fn skip_type(reader: &mut Reader<'_>) -> Result<(), CodecError> {
    match reader.peek() {
        Some(tag) if is_string_tag(tag) => {
            reader.byte()?;
            reader.skip_string(tag)
        }
        _ => reader.int().map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skips one value of `bytes` and returns where it ended.
    fn end_of(bytes: &[u8]) -> Result<usize, CodecError> {
        let mut reader = Reader::new(bytes, 0);
        Skipper::new().skip_value(&mut reader)?;
        Ok(reader.position())
    }

    #[test]
    fn skips_scalars_to_their_end() {
        let cases: &[&[u8]] = &[
            b"N",
            b"T",
            &[0x90],
            &[0xc8, 0x01],
            &[0xd4, 0x00, 0x01],
            b"I\x00\x00\x00\x01",
            &[0xe0],
            &[0xf8, 0x01],
            &[0x3c, 0x00, 0x01],
            &[0x59, 0, 0, 0, 1],
            b"L\x00\x00\x00\x00\x00\x00\x00\x01",
            &[0x5b],
            &[0x5d, 0x01],
            &[0x5e, 0x00, 0x01],
            &[0x5f, 0, 0, 0, 1],
            b"D\x00\x00\x00\x00\x00\x00\x00\x01",
            &[0x4a, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0x4b, 0, 0, 0, 1],
            &[0x23, 1, 2, 3],
            &[0x34, 0x02, 1, 2],
            b"A\x00\x01xB\x00\x01y",
            b"\x03abc",
            b"R\x00\x01aS\x00\x01b",
            b"R\x00\x01a\x01b",
        ];
        for case in cases {
            assert_eq!(end_of(case), Ok(case.len()), "{case:02x?}");
        }
    }

    #[test]
    fn skips_containers_objects_and_references() {
        let cases: &[&[u8]] = &[
            // [int 1, int 2] in each list form
            b"\x55\x04[int\x91\x92Z",
            b"V\x04[int\x92\x91\x92",
            b"\x57\x91\x92Z",
            b"\x58\x92\x91\x92",
            b"\x72\x04[int\x91\x92",
            b"\x7a\x91\x92",
            // type by reference
            b"\x72\x90\x91\x92",
            b"H\x01a\x91Z",
            b"M\x08java.Map\x01a\x91Z",
            // class with two fields, two instances, a back reference
            b"\x57C\x05Point\x92\x01x\x01y\x60\x91\x92O\x90\x93\x94\x51\x91Z",
        ];
        for case in cases {
            assert_eq!(end_of(case), Ok(case.len()), "{case:02x?}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(end_of(b"").is_err());
        assert!(end_of(b"Z").is_err());
        assert!(end_of(&[0x40]).is_err());
        assert!(end_of(b"\x57\x91").is_err());
        assert!(end_of(&[0x60]).is_err());
        assert!(end_of(b"C\x01P\x94\x01x").is_err());
        assert!(end_of(b"\x58\xbf\x91").is_err());
        // A map's `Z` where a value is due.
        assert_eq!(
            end_of(b"H\x91Z"),
            Err(CodecError::malformed("unexpected Hessian2 tag"))
        );
        // Lists opened to the end of the bytes, never ended.
        assert_eq!(
            end_of(&[0x57; crate::nested::MAX_LEVELS]),
            Err(CodecError::malformed("truncated Hessian2 value"))
        );
    }

    /// Values nest as deeply as the walk keeps levels, a level a byte: lists in lists, lists
    /// and maps in turn (a map's value in a list, a list as a map's value), and fixed-length
    /// lists whose nested list comes first, each with a value left to read after it.
    #[test]
    fn values_nest_as_deeply_as_the_walk_keeps_levels() {
        let levels = crate::nested::MAX_LEVELS;
        let lists = [vec![0x57; levels], vec![b'Z'; levels]].concat();
        assert_eq!(end_of(&lists), Ok(lists.len()));

        let mut in_turn = Vec::new();
        for level in 0..levels {
            // A list's first item, or a map's first key; the next level is the second.
            in_turn.extend_from_slice(if level % 2 == 0 {
                b"\x57\x91"
            } else {
                b"H\x91"
            });
        }
        in_turn.push(b'N');
        in_turn.extend(std::iter::repeat_n(b'Z', levels));
        assert_eq!(end_of(&in_turn), Ok(in_turn.len()));

        // Lists of two, each holding the next as its first item and 1 as its second.
        let first = [vec![0x7a; levels], vec![b'N'], vec![0x91; levels]].concat();
        assert_eq!(end_of(&first), Ok(first.len()));
        assert!(end_of(&first[..first.len() - 1]).is_err());
    }

    #[test]
    fn an_object_near_the_end_may_name_any_defined_class() {
        // Twenty classes without fields, then an object of the last one: its index is larger
        // than the bytes left, which is fine for an index.
        let mut bytes = b"\x57".to_vec();
        for _ in 0..20 {
            bytes.extend_from_slice(b"C\x01P\x90");
        }
        bytes.extend_from_slice(b"O\xa3Z");
        assert_eq!(end_of(&bytes), Ok(bytes.len()));
        let undefined = [&bytes[..bytes.len() - 3], b"O\xb4Z"].concat();
        assert!(end_of(&undefined).is_err(), "class 36 was never defined");
        let negative = [&bytes[..bytes.len() - 3], b"O\x8fZ"].concat();
        assert_eq!(
            end_of(&negative),
            Err(CodecError::malformed("negative Hessian2 class index"))
        );
    }

    #[test]
    fn caps_class_definitions() {
        let mut bytes = Vec::new();
        for _ in 0..=MAX_CLASS_DEFS {
            bytes.extend_from_slice(b"C\x01P\x90");
        }
        bytes.push(0x60);
        assert_eq!(
            end_of(&bytes),
            Err(CodecError::malformed("too many Hessian2 class definitions"))
        );
    }

    #[test]
    fn tracks_shared_values() {
        let mut skipper = Skipper::new();
        let before = skipper.shared_state();
        let mut reader = Reader::new(b"\x05hello\x7a\x91\x92", 0);
        assert!(skipper.skip_value(&mut reader).is_ok());
        assert_eq!(skipper.shared_state(), before);
        assert!(skipper.skip_value(&mut reader).is_ok());
        assert_ne!(skipper.shared_state(), before);
    }
}
