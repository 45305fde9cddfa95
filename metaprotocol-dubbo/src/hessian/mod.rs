//! The slice of Hessian 2.0 the Dubbo codec needs, written for a proxy rather than an
//! application: read the few strings and ints that route a call, step over everything else
//! (arguments, return values, exceptions) without building it, and write strings back.
//!
//! - [`reader`]: a bounds-checked cursor that reads ints and strings and knows the chunk
//!   structure of strings and binaries.
//! - [`skip`]: steps over any value of the grammar (class definitions and objects, references,
//!   typed and untyped lists and maps, chunked strings and binaries, dates, longs, doubles)
//!   nested as deeply as the frame holds them (walked with a stack, not by recursion), with a
//!   cap on class definitions.
//! - [`printed`]: the text of a value that is no string (an int, a double, a date, a list, a
//!   map ...), as a Java provider prints it where that is the same on every host, for
//!   attachments that carry one.
//! - [`text`]: Hessian strings are counted in UTF-16 code units and Java writes characters
//!   outside the BMP as two 3-byte surrogates (CESU-8); this module bridges that to Rust's UTF-8.
//! - [`writer`]: writes strings (attachment keys and values, error messages).
//!
//! Every failure is a [`metaprotocol_core::CodecError::Malformed`]; nothing here panics or
//! allocates in proportion to a length read from the wire (only joined string chunks are
//! copied, and they lie inside the frame).

pub(crate) mod printed;
pub(crate) mod reader;
pub(crate) mod skip;
pub(crate) mod text;
pub(crate) mod writer;

/// The tag of the null value.
pub(crate) const NULL: u8 = b'N';
/// The tag that ends a variable-length list or map.
pub(crate) const END: u8 = b'Z';
/// The tag of an untyped map (`H (key value)* Z`).
pub(crate) const UNTYPED_MAP: u8 = b'H';
/// The tag of a typed map (`M type (key value)* Z`).
pub(crate) const TYPED_MAP: u8 = b'M';
/// The tag of a class definition (`C name field-count field-name*`).
pub(crate) const CLASS_DEF: u8 = b'C';

/// The one-byte encoding of the ints -16..=47: `0x90 + value`.
pub(crate) fn compact_int(value: u8) -> u8 {
    0x90_u8.saturating_add(value)
}
