//! Walks the values a list, map or object holds with an explicit stack of the levels the walk
//! is in, not by recursion: Hessian2's skipper and fastjson2's (JSONB) reader share it, their
//! containers being alike (lists counted or ended by a tag, maps ended by a tag where a key
//! would be, objects counted by their class).
//!
//! Java's readers take values nested as deeply as their thread's stack allows (a chain of
//! objects each holding the next, a deep tree; fastjson2 writes 2048 levels), so the walk lets a
//! value nest as deeply as that, up to [`MAX_LEVELS`]. Each level opened took a tag byte of the
//! frame and takes four bytes of the stack; a list, map or object leaves the stack as its last
//! value starts (nothing of it is left to read after that value), so a linked list whose link
//! is its objects' last field takes one level, however long.

use metaprotocol_core::CodecError;
use smallvec::SmallVec;

/// Levels of lists, maps and objects a walk keeps without allocating: the values of ordinary
/// calls nest far less (an object holding a list of maps is three), and a value that is the
/// last of what holds it takes no level of its own.
const INLINE_LEVELS: usize = 16;

/// The most levels a walk keeps: 256 KiB of stack at four bytes a level, however large the
/// frame (without a bound, a frame of opening tags made the stack four times its size, 32 MiB
/// for an 8 MiB frame, outside `max_buffered_bytes`). A Java provider reads no value nested
/// this deep: its readers (hessian-lite's, fastjson2's JSONB `readAny`) recurse through two
/// calls a level at least, bounded by the thread's stack alone, and two minimal frames a level
/// reach about 13,000 levels on HotSpot's default 1 MiB thread stack (measured with OpenJDK 17:
/// 12,600 to 13,100 compiled, 4,540 interpreted); it would take a stack five times the default
/// and frames smaller than any reader's. Our stack holds a level only while what opened it has
/// a value left after the current one, so it never refuses what Java's stack holds.
pub(crate) const MAX_LEVELS: usize = 1 << 16;

/// Why a value nested deeper than [`MAX_LEVELS`] is refused.
pub(crate) const TOO_DEEP: CodecError = CodecError::malformed(
    "a value nests more than 65,536 levels deep, deeper than a Java provider reads",
);

/// A reader of one serialization's values, which the walk drives.
pub(crate) trait Values {
    /// The tag that ends a list or map given no count (Hessian2's `Z`, JSONB's object end).
    const END: u8;

    /// The next byte, not consumed; `None` at the end of what may be read.
    fn peek(&self) -> Option<u8>;

    /// Consumes the next byte.
    fn byte(&mut self) -> Result<u8, CodecError>;

    /// Consumes the next value up to what it holds: all of a value that holds no others
    /// (`None`), or the start of a list, map or object, returned as opened.
    fn step(&mut self) -> Result<Option<Open>, CodecError>;
}

/// Consumes what the list, map or object `outer`, just opened, holds.
pub(crate) fn skip_held<V: Values>(values: &mut V, outer: Open) -> Result<(), CodecError> {
    let mut open: SmallVec<[Open; INLINE_LEVELS]> = SmallVec::new();
    open.push(outer);
    while let Some(innermost) = open.last_mut() {
        match innermost.next(values)? {
            Next::Value => {}
            Next::Last => {
                open.pop();
            }
            Next::Ended => {
                open.pop();
                continue;
            }
        }
        if let Some(opened) = values.step()? {
            if open.len() == MAX_LEVELS {
                return Err(TOO_DEEP);
            }
            open.push(opened);
        }
    }
    Ok(())
}

/// A list, map or object a walk is in, and what of it is left to read: so many values, or
/// values up to its end tag (a list's, or a map's, whose end may come only where a key would).
/// Four bytes, so that a value nested a level per byte of its frame takes a stack of four
/// times the frame, no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Open(u32);

/// What comes next in the list, map or object a walk is in.
enum Next {
    /// One of its values, and more after it.
    Value,
    /// Its last value.
    Last,
    /// Nothing: it ended (its end tag consumed).
    Ended,
}

impl Open {
    /// A list ended by its end tag.
    pub(crate) const LIST: Self = Self(u32::MAX);
    /// A map ended by its end tag, at a key or its end.
    pub(crate) const MAP_KEY: Self = Self(u32::MAX - 1);
    /// A map ended by its end tag, at a key's value.
    const MAP_VALUE: Self = Self(u32::MAX - 2);
    /// The most values a list or object may be counted to hold, below the three above.
    const MOST_VALUES: u32 = u32::MAX - 3;

    /// A list or object of `len` values. A length is at most the bytes left in the frame, and
    /// a Dubbo body is shorter than 2 GiB (a Java int), far below [`Open::MOST_VALUES`].
    pub(crate) fn values(len: usize) -> Self {
        Self(u32::try_from(len).map_or(Self::MOST_VALUES, |len| len.min(Self::MOST_VALUES)))
    }

    /// What comes next, consuming an end tag that ends it, and counting the value it announces.
    fn next<V: Values>(&mut self, values: &mut V) -> Result<Next, CodecError> {
        Ok(match *self {
            Self::LIST | Self::MAP_KEY if values.peek() == Some(V::END) => {
                values.byte()?;
                Next::Ended
            }
            Self::LIST => Next::Value,
            Self::MAP_KEY => {
                *self = Self::MAP_VALUE;
                Next::Value
            }
            Self::MAP_VALUE => {
                *self = Self::MAP_KEY;
                Next::Value
            }
            Self(0) => Next::Ended,
            Self(1) => Next::Last,
            Self(left) => {
                *self = Self(left - 1);
                Next::Value
            }
        })
    }
}
