//! Request bodies in fastjson2 (serialization id 23), what Dubbo 3.2 and later consumers prefer
//! when their provider offers it.
//!
//! Dubbo's fastjson2 output writes every value on its own: a big-endian 4-byte length, then the
//! value in fastjson2's binary JSON (JSONB). A call is the same sequence as in Hessian2:
//!
//! ```text
//! dubbo-version  service-path  service-version  method  parameter-descriptor
//! argument*      attachments?
//! ```
//!
//! The five call fields are JSONB strings (or null), the arguments are skipped by their length
//! (never read), and the attachments are a JSONB object (`0xa6` entries `0xa5`; a `HashMap` is
//! written without its class name, another map after a `0x92` type name), or null, or missing.
//! Its entries become metadata by the rules of a Hessian2 call's (see [`crate::request`]):
//! strings in any of JSONB's encodings (Latin-1, UTF-8, UTF-16, and GB18030 of ASCII bytes,
//! which is that ASCII), numbers and booleans as the text Java prints for them, a null as none.
//! Values whose text is not sure to match what a Java provider prints (floats, big numbers,
//! dates, lists, maps, objects, binaries) are not metadata, and take out an earlier value of
//! their key as they replace it in the provider's map. A call field, key or string value that
//! cannot be decoded (GB18030 past ASCII, UTF-8 or UTF-16 that is not) refuses the call, as a
//! reference value does: the provider reads it, and routes and policies must not miss it.
//!
//! A mutation of a call's attachments is written back into its JSONB map by [`write_mutated`],
//! the untouched entries byte for byte. A response is a result flag (a JSONB int), the result
//! and, for flags 3 to 5, the attachments map, read by [`decode_response`]; a mutation of its
//! attachments is written by [`write_mutated_response`].
//!
//! Everything read from the wire is checked: lengths against the frame, JSONB lengths against
//! their field. Values nest as deeply as their field holds them, walked without recursion (see
//! [`nested`]: four bytes a level past the first 16, each level a byte of the field). Decoding
//! never allocates in proportion to a length read, and copies only the strings that are not
//! UTF-8 in the frame (Latin-1 past ASCII, UTF-16).

use std::borrow::Cow;
use std::fmt::Write;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use metaprotocol_core::{
    Ascii, ByteStr, CodecError, FrameLayout, Metadata, MetadataStr, Mutation, ResponseStatus, keys,
};

use crate::attachments::slice;
use crate::deadline;
use crate::header::HEADER_LEN;
use crate::hessian::printed::{Printed, write_java_double};
use crate::layout::AttachmentsLayout;
use crate::nested::{self, Open, Values};
use crate::request::{self, DecodedRequest};
use crate::serialization::{put_fastjson2_string, put_jsonb_string};

const TRUNCATED: CodecError = CodecError::malformed("truncated fastjson2 value");
const BAD_LENGTH: CodecError = CodecError::malformed("a fastjson2 length is negative or too long");
const NOT_A_STRING: CodecError =
    CodecError::malformed("a fastjson2 call field is not a string or has bytes after it");
const NOT_A_MAP: CodecError =
    CodecError::malformed("the fastjson2 attachments are not a map or have bytes after it");
const UNKNOWN_TAG: CodecError = CodecError::malformed("an unknown fastjson2 JSONB tag");
const UNKNOWN_SYMBOL: CodecError =
    CodecError::malformed("a fastjson2 symbol number names no symbol given before it");
const TOO_MANY_SYMBOLS: CodecError =
    CodecError::malformed("a fastjson2 value gives more symbols than the codec keeps");
const UNDECODABLE_KEY: CodecError = CodecError::malformed(
    "a fastjson2 attachment's key is a string that cannot be decoded (GB18030 past ASCII, or not UTF-8 or UTF-16)",
);
const UNDECODABLE_TEXT: CodecError = CodecError::malformed(
    "a fastjson2 attachment's value is a string that cannot be decoded (GB18030 past ASCII, or not UTF-8 or UTF-16)",
);
const NOT_UNSCALED: CodecError =
    CodecError::malformed("a fastjson2 decimal's unscaled value is no number Java's reader takes");
const REFERENCE_VALUE: CodecError = CodecError::malformed(
    "a fastjson2 attachment's value is a reference, which the codec does not follow",
);

/// The symbols one field's value may give (a name or type name with its number): a Java
/// reader resolves every later use of the number to the name, so the codec keeps them to read
/// such a use as the provider does, and refuses a value that gives more.
const MAX_SYMBOLS: usize = 256;

// JSONB tags (fastjson2's `JSONB.Constants`).
const CHAR: u8 = 0x90;
const BINARY: u8 = 0x91;
const TYPED_ANY: u8 = 0x92;
const REFERENCE: u8 = 0x93;
const ARRAY_FIX_0: u8 = 0x94;
const ARRAY_FIX_15: u8 = 0xa3;
const ARRAY: u8 = 0xa4;
const OBJECT_END: u8 = 0xa5;
const OBJECT: u8 = 0xa6;
const LOCAL_TIME: u8 = 0xa7;
const LOCAL_DATETIME: u8 = 0xa8;
const LOCAL_DATE: u8 = 0xa9;
const TIMESTAMP_WITH_TIMEZONE: u8 = 0xaa;
const TIMESTAMP_MILLIS: u8 = 0xab;
const TIMESTAMP_SECONDS: u8 = 0xac;
const TIMESTAMP_MINUTES: u8 = 0xad;
const TIMESTAMP: u8 = 0xae;
/// The JSONB null.
pub(crate) const NULL: u8 = 0xaf;
const FALSE: u8 = 0xb0;
const TRUE: u8 = 0xb1;
const DOUBLE_0: u8 = 0xb2;
const DOUBLE_1: u8 = 0xb3;
const DOUBLE_LONG: u8 = 0xb4;
const DOUBLE: u8 = 0xb5;
const FLOAT_INT: u8 = 0xb6;
const FLOAT: u8 = 0xb7;
const DECIMAL_LONG: u8 = 0xb8;
const DECIMAL: u8 = 0xb9;
const BIGINT_LONG: u8 = 0xba;
const BIGINT: u8 = 0xbb;
const INT16: u8 = 0xbc;
const INT8: u8 = 0xbd;
const INT64: u8 = 0xbe;
const INT64_INT: u8 = 0xbf;
const INT32: u8 = 0x48;
const ASCII_FIX_0: u8 = 0x49;
const ASCII_FIX_47: u8 = 0x78;
const ASCII: u8 = 0x79;
const UTF8: u8 = 0x7a;
const UTF16: u8 = 0x7b;
const UTF16LE: u8 = 0x7c;
const UTF16BE: u8 = 0x7d;
const GB18030: u8 = 0x7e;
const SYMBOL: u8 = 0x7f;

/// How a JSONB string's bytes encode its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// One byte per character (tags `0x49` to `0x79`): ASCII, or Latin-1 past it.
    Latin1,
    Utf8,
    /// UTF-16 after an optional byte order mark, big-endian without one (Java's `UTF_16`).
    Utf16,
    Utf16Le,
    Utf16Be,
    /// GB18030 text past ASCII, which this codec does not decode (a GB18030 string of ASCII
    /// bytes is read as the ASCII it is, as [`Encoding::Latin1`]).
    Gb18030,
}

/// A JSONB string as it lies in the frame.
#[derive(Debug, Clone)]
pub(crate) struct JsonbStr {
    encoding: Encoding,
    range: Range<usize>,
}

impl JsonbStr {
    /// The string as metadata: where it lies in `frame` when it is ASCII or UTF-8 there, else a
    /// decoded copy; `None` if it cannot be represented in UTF-8 (a lone surrogate, GB18030).
    fn to_metadata(&self, frame: &Bytes) -> Option<MetadataStr> {
        let bytes = frame.get(self.range.clone())?;
        match self.encoding {
            _ if bytes.is_empty() => Some(MetadataStr::Static("")),
            Encoding::Latin1 => match Ascii::new(bytes) {
                Some(ascii) => ascii.ascii_range_in(frame).map(MetadataStr::Ascii),
                None => Some(MetadataStr::Shared(ByteStr::from(
                    bytes.iter().copied().map(char::from).collect::<String>(),
                ))),
            },
            Encoding::Utf8 => ByteStr::from_utf8(frame.slice(self.range.clone()))
                .ok()
                .map(MetadataStr::Shared),
            _ => self
                .decoded(frame)
                .map(|text| MetadataStr::Shared(text.into())),
        }
    }

    /// True if the string's text is one of `texts` (decoded once at most, where it is not
    /// UTF-8 in the frame).
    fn is_any(&self, frame: &[u8], texts: &[&[u8]]) -> bool {
        let Some(bytes) = frame.get(self.range.clone()) else {
            return false;
        };
        match self.encoding {
            Encoding::Utf8 => texts.contains(&bytes),
            Encoding::Latin1 if bytes.is_ascii() => texts.contains(&bytes),
            _ => self
                .decoded(frame)
                .is_some_and(|decoded| texts.contains(&decoded.as_bytes())),
        }
    }

    /// True if `other` has the same text, compared where they lie when both are UTF-8 there or
    /// both in the same encoding (a call's `path` attachment and field, written alike).
    fn same_text(&self, other: &JsonbStr, frame: &[u8]) -> bool {
        let (Some(mine), Some(theirs)) = (
            frame.get(self.range.clone()),
            frame.get(other.range.clone()),
        ) else {
            return false;
        };
        let utf8 = |string: &JsonbStr, bytes: &[u8]| {
            string.encoding == Encoding::Utf8
                || (string.encoding == Encoding::Latin1 && bytes.is_ascii())
        };
        if (utf8(self, mine) && utf8(other, theirs))
            || (self.encoding == other.encoding && self.encoding != Encoding::Utf16)
        {
            return mine == theirs;
        }
        match (self.decoded(frame), other.decoded(frame)) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => false,
        }
    }

    /// The text of a string that is neither ASCII nor UTF-8 in the frame, decoded.
    fn decoded(&self, frame: &[u8]) -> Option<String> {
        let bytes = frame.get(self.range.clone())?;
        let units = |big_endian: bool, bytes: &[u8]| {
            let units = bytes.chunks_exact(2).map(move |pair| match pair {
                [a, b] if big_endian => u16::from_be_bytes([*a, *b]),
                [a, b] => u16::from_le_bytes([*a, *b]),
                _ => 0,
            });
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        };
        match self.encoding {
            Encoding::Latin1 => Some(bytes.iter().copied().map(char::from).collect()),
            Encoding::Utf8 => std::str::from_utf8(bytes).ok().map(str::to_owned),
            _ if bytes.len() % 2 != 0 => None,
            Encoding::Utf16Le => units(false, bytes),
            Encoding::Utf16Be => units(true, bytes),
            Encoding::Utf16 => match bytes {
                [0xff, 0xfe, rest @ ..] => units(false, rest),
                [0xfe, 0xff, rest @ ..] => units(true, rest),
                _ => units(true, bytes),
            },
            Encoding::Gb18030 => None,
        }
    }
}

/// What an attachment's value is, as far as metadata goes.
enum Value {
    Null,
    Text(JsonbStr),
    Constant(&'static str),
    Int(i64),
    Double(f64),
    Char(char),
    /// Another value: skipped, no metadata.
    Other,
}

/// What a walk over JSONB values met that other values of the same field may depend on:
/// symbols (names and type names given a number, then used by it) and references (paths to an
/// earlier value). Removing an entry of the attachments map must not take away what another
/// entry points at.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// A symbol defined with its number.
    defines_symbol: bool,
    /// A symbol used by its number.
    uses_symbol_number: bool,
    /// A reference.
    reference: bool,
    /// A reference repeating the one before (`#-1`).
    repeats_reference: bool,
    /// A reference that may name an entry whose key the walk's mutation overrides.
    names_overridden: bool,
}

/// True for the first byte of a JSONB int32 (as [`Cursor::int32_after`] reads them).
fn is_int32_tag(tag: u8) -> bool {
    matches!(tag, 0xf0..=0xff | 0x00..=0x47) || tag == INT32
}

/// A bounds-checked cursor over one JSONB value's bytes, positions absolute in the frame.
#[derive(Clone)]
struct Cursor<'a> {
    frame: &'a [u8],
    pos: usize,
    end: usize,
    /// What the values skipped so far define and point at.
    seen: Seen,
    /// The mutation whose overridden keys references are checked against, when rewriting.
    overrides: Option<&'a Mutation>,
    /// The symbols given so far, by number: a name used by its number reads as the name.
    symbols: Vec<(i32, JsonbStr)>,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let byte = *self
            .frame
            .get(self.pos)
            .filter(|_| self.pos < self.end)
            .ok_or(TRUNCATED)?;
        self.pos += 1;
        Ok(byte)
    }

    fn peek(&self) -> Option<u8> {
        self.frame
            .get(self.pos)
            .copied()
            .filter(|_| self.pos < self.end)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(len).filter(|end| *end <= self.end);
        let bytes = end
            .and_then(|end| self.frame.get(self.pos..end))
            .ok_or(TRUNCATED)?;
        self.pos += len;
        Ok(bytes)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A JSONB int32, from its first byte `tag`; `None` if the tag is no int32's.
    fn int32_after(&mut self, tag: u8) -> Result<Option<i32>, CodecError> {
        let value = match tag {
            // -16 to 47: the tag itself, as a signed byte.
            0xf0..=0xff | 0x00..=0x2f => i32::from(tag as i8),
            // 0x38 is 0 << 8.
            0x30..=0x3f => ((i32::from(tag) - 0x38) << 8) | i32::from(self.byte()?),
            // 0x44 is 0 << 16.
            0x40..=0x47 => {
                let [high, low] = self.fixed()?;
                ((i32::from(tag) - 0x44) << 16) | i32::from(u16::from_be_bytes([high, low]))
            }
            INT32 => i32::from_be_bytes(self.fixed()?),
            _ => return Ok(None),
        };
        Ok(Some(value))
    }

    fn int32(&mut self) -> Result<i32, CodecError> {
        let tag = self.byte()?;
        self.int32_after(tag)?.ok_or(UNKNOWN_TAG)
    }

    /// A JSONB int64 from its first byte `tag` (its own forms and the int32 ones).
    fn int64_after(&mut self, tag: u8) -> Result<Option<i64>, CodecError> {
        let value = match tag {
            // -8 to 15; 0xe0 is 0.
            0xd8..=0xef => i64::from(tag) - 0xe0,
            // 0xd0 is 0 << 8.
            0xc8..=0xd7 => ((i64::from(tag) - 0xd0) << 8) | i64::from(self.byte()?),
            // 0xc4 is 0 << 16.
            0xc0..=0xc7 => {
                let [high, low] = self.fixed()?;
                ((i64::from(tag) - 0xc4) << 16) | i64::from(u16::from_be_bytes([high, low]))
            }
            INT64_INT => i64::from(i32::from_be_bytes(self.fixed()?)),
            INT64 => i64::from_be_bytes(self.fixed()?),
            INT8 => i64::from(i8::from_be_bytes(self.fixed()?)),
            INT16 => i64::from(i16::from_be_bytes(self.fixed()?)),
            _ => return self.int32_after(tag).map(|value| value.map(i64::from)),
        };
        Ok(Some(value))
    }

    fn int64(&mut self) -> Result<i64, CodecError> {
        let tag = self.byte()?;
        self.int64_after(tag)?.ok_or(UNKNOWN_TAG)
    }

    /// A length: an int32 that is not negative and fits in what is left.
    fn length(&mut self) -> Result<usize, CodecError> {
        let len = usize::try_from(self.int32()?).map_err(|_| BAD_LENGTH)?;
        if len > self.end.saturating_sub(self.pos) {
            return Err(BAD_LENGTH);
        }
        Ok(len)
    }

    /// The string whose tag is `tag`, or `None` if the tag is no string's.
    fn string_after(&mut self, tag: u8) -> Result<Option<JsonbStr>, CodecError> {
        let (encoding, len) = match tag {
            ASCII_FIX_0..=ASCII_FIX_47 => (Encoding::Latin1, usize::from(tag - ASCII_FIX_0)),
            ASCII => (Encoding::Latin1, self.length()?),
            UTF8 => (Encoding::Utf8, self.length()?),
            UTF16 => (Encoding::Utf16, self.length()?),
            UTF16LE => (Encoding::Utf16Le, self.length()?),
            UTF16BE => (Encoding::Utf16Be, self.length()?),
            GB18030 => (Encoding::Gb18030, self.length()?),
            _ => return Ok(None),
        };
        let start = self.pos;
        let bytes = self.take(len)?;
        // GB18030's bytes 0x00 to 0x7f are ASCII: a Java reader reads such a string as that
        // ASCII, so a key `group` in GB18030 is the provider's `group`.
        let encoding = match encoding {
            Encoding::Gb18030 if bytes.is_ascii() => Encoding::Latin1,
            encoding => encoding,
        };
        Ok(Some(JsonbStr {
            encoding,
            range: start..self.pos,
        }))
    }

    /// A string, null, or an error for any other value.
    fn string_or_null(&mut self) -> Result<Option<JsonbStr>, CodecError> {
        match self.byte()? {
            NULL => Ok(None),
            tag => self.string_after(tag)?.map(Some).ok_or(NOT_A_STRING),
        }
    }

    /// A symbol (`0x7f`): a string and the number it is given, or the number of one given
    /// before, which reads as that string (as a Java reader resolves it: a key or value the
    /// provider reads must not be hidden from routes and policies); an error for a number given
    /// no string before it.
    fn symbol(&mut self) -> Result<JsonbStr, CodecError> {
        self.symbol_or_number()
    }

    /// Reads the start of an attachments map (an object, after its type name if it has one):
    /// false for a null that is the whole field, a map of no entries; an error for any other
    /// value.
    fn open_map(&mut self) -> Result<bool, CodecError> {
        let mut tag = self.byte()?;
        if tag == NULL && self.pos == self.end {
            return Ok(false);
        }
        if tag == TYPED_ANY {
            self.type_name()?;
            tag = self.byte()?;
        }
        if tag != OBJECT {
            return Err(NOT_A_MAP);
        }
        Ok(true)
    }

    /// A type name after `0x92`: a string and its symbol number, or a symbol number alone.
    fn type_name(&mut self) -> Result<(), CodecError> {
        self.symbol_or_number().map(drop)
    }

    /// A string and the number it is given (kept), or the number of one given before.
    fn symbol_or_number(&mut self) -> Result<JsonbStr, CodecError> {
        let tag = self.byte()?;
        if let Some(number) = self.int32_after(tag)? {
            self.seen.uses_symbol_number = true;
            return self
                .symbols
                .iter()
                .rev()
                .find(|(given, _)| *given == number)
                .map(|(_, text)| text.clone())
                .ok_or(UNKNOWN_SYMBOL);
        }
        let text = self.string_after(tag)?.ok_or(UNKNOWN_TAG)?;
        let number = self.int32()?;
        self.seen.defines_symbol = true;
        if self.symbols.len() >= MAX_SYMBOLS {
            return Err(TOO_MANY_SYMBOLS);
        }
        self.symbols.push((number, text.clone()));
        Ok(text)
    }

    /// A reference's path (after `0x93`), noted in [`Seen`].
    fn reference(&mut self) -> Result<(), CodecError> {
        let path = self.string_or_null()?;
        self.seen.reference = true;
        let Some(mutation) = self.overrides else {
            return Ok(());
        };
        let path = path.as_ref().and_then(|path| text_of(path, self.frame));
        match path.as_deref() {
            Some("#-1") => self.seen.repeats_reference = true,
            Some(path) if !may_name_overridden(path, mutation) => {}
            _ => self.seen.names_overridden = true,
        }
        Ok(())
    }

    /// Reads a value as far as metadata goes, skipping what is no metadata.
    fn value(&mut self) -> Result<Value, CodecError> {
        let tag = self.byte()?;
        if let Some(text) = self.string_after(tag)? {
            return Ok(Value::Text(text));
        }
        if let Some(value) = self.int64_after(tag)? {
            return Ok(Value::Int(value));
        }
        let value = match tag {
            NULL => Value::Null,
            TRUE => Value::Constant("true"),
            FALSE => Value::Constant("false"),
            DOUBLE_0 => Value::Constant("0.0"),
            DOUBLE_1 => Value::Constant("1.0"),
            // A double without a fractional part, as a long.
            DOUBLE_LONG => Value::Double(self.int64()? as f64),
            DOUBLE => Value::Double(f64::from_be_bytes(self.fixed()?)),
            CHAR => u32::try_from(self.int32()?)
                .ok()
                .and_then(char::from_u32)
                .map_or(Value::Other, Value::Char),
            // A string given as a symbol is a string to its reader.
            SYMBOL => Value::Text(self.symbol()?),
            // What a reference names reads as that value at the provider; the codec does not
            // follow it, and a value it cannot see could pass a policy that would refuse it.
            REFERENCE => return Err(REFERENCE_VALUE),
            _ => {
                self.skip_after(tag)?;
                Value::Other
            }
        };
        Ok(value)
    }

    /// Skips a value.
    fn skip(&mut self) -> Result<(), CodecError> {
        let tag = self.byte()?;
        self.skip_after(tag)
    }

    /// Skips the value whose tag, `tag`, was read, and what it holds however deep it nests
    /// (see [`nested`]).
    fn skip_after(&mut self, tag: u8) -> Result<(), CodecError> {
        match self.step_after(tag)? {
            None => Ok(()),
            Some(opened) => nested::skip_held(self, opened),
        }
    }

    /// Consumes the value whose tag, `tag`, was read, up to what it holds: all of a value that
    /// holds no others (`None`), the count of an array or the tag of an object, returned as
    /// opened. A typed value and a decimal are a prefix and the value they hold, read here as
    /// the rest of the value: they take no level of the walk's stack, but Java's reader reads
    /// what they hold by recursion, so a chain of more than [`nested::MAX_LEVELS`] is refused
    /// as a value nested deeper.
    fn step_after(&mut self, mut tag: u8) -> Result<Option<Open>, CodecError> {
        let mut prefixes = 0;
        loop {
            if self.string_after(tag)?.is_some() || self.int64_after(tag)?.is_some() {
                return Ok(None);
            }
            match tag {
                NULL | FALSE | TRUE | DOUBLE_0 | DOUBLE_1 => {}
                CHAR | FLOAT_INT => self.int32().map(drop)?,
                DOUBLE_LONG | DECIMAL_LONG | BIGINT_LONG => self.int64().map(drop)?,
                FLOAT | TIMESTAMP_SECONDS | TIMESTAMP_MINUTES | LOCAL_DATE => {
                    self.take(4).map(drop)?
                }
                DOUBLE | TIMESTAMP_MILLIS => self.take(8).map(drop)?,
                BINARY | BIGINT => {
                    let len = self.length()?;
                    self.take(len)?;
                }
                DECIMAL => {
                    self.int32()?;
                    tag = self.byte()?;
                    if !is_unscaled(tag) {
                        return Err(NOT_UNSCALED);
                    }
                    prefixes = one_more_prefix(prefixes)?;
                    continue;
                }
                LOCAL_TIME => {
                    self.take(3)?;
                    self.int32()?;
                }
                LOCAL_DATETIME => {
                    self.take(7)?;
                    self.int32()?;
                }
                TIMESTAMP_WITH_TIMEZONE => {
                    self.take(7)?;
                    self.int32()?;
                    self.string_or_null()?;
                }
                TIMESTAMP => {
                    self.int64()?;
                    self.int32()?;
                }
                SYMBOL => self.symbol().map(drop)?,
                REFERENCE => self.reference()?,
                TYPED_ANY => {
                    self.type_name()?;
                    tag = self.byte()?;
                    prefixes = one_more_prefix(prefixes)?;
                    continue;
                }
                // Each item takes a byte at least: the count cannot outrun the field.
                ARRAY => return Ok(Some(Open::values(self.length()?))),
                ARRAY_FIX_0..=ARRAY_FIX_15 => {
                    return Ok(Some(Open::values(usize::from(tag - ARRAY_FIX_0))));
                }
                OBJECT => return Ok(Some(Open::MAP_KEY)),
                _ => return Err(UNKNOWN_TAG),
            }
            return Ok(None);
        }
    }
}

/// `prefixes` typed values and decimals read in a chain, and one more; an error past
/// [`nested::MAX_LEVELS`], deeper than Java's reader recurses (see [`Cursor::step_after`]).
fn one_more_prefix(prefixes: usize) -> Result<usize, CodecError> {
    if prefixes == nested::MAX_LEVELS {
        return Err(nested::TOO_DEEP);
    }
    Ok(prefixes + 1)
}

/// True for the tags of the values Java's reader takes as a decimal's unscaled value
/// (`JSONReaderJSONB.readBigInteger`): an integer of any width or a big integer, a boolean, a
/// double or float (cut to an integer), a binary (two's complement), a string in ASCII, UTF-8
/// or UTF-16LE (parsed), or another decimal. It fails on any other: a null (its
/// `BigDecimal` constructor throws), a long decimal, UTF-16 with a byte order mark or
/// big-endian, GB18030, a symbol, a char, a date, an array, an object, a typed value, a
/// reference.
fn is_unscaled(tag: u8) -> bool {
    // 0x00..=UTF8: small ints and int32s, ASCII (fixed or not), UTF-8; FALSE..=FLOAT: booleans,
    // doubles and floats; DECIMAL..: decimal, big integers, int8 to int64 and small int64s.
    matches!(tag, 0x00..=UTF8 | UTF16LE | BINARY | FALSE..=FLOAT | DECIMAL..=0xff)
}

impl Values for Cursor<'_> {
    const END: u8 = OBJECT_END;

    fn peek(&self) -> Option<u8> {
        Cursor::peek(self)
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        Cursor::byte(self)
    }

    fn step(&mut self) -> Result<Option<Open>, CodecError> {
        let tag = Cursor::byte(self)?;
        self.step_after(tag)
    }
}

/// The fields of a fastjson2 body, each a length and a JSONB value.
struct Fields<'a> {
    frame: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    /// The next field as a cursor over its value; `None` at the end of the body.
    fn next(&mut self) -> Result<Option<Cursor<'a>>, CodecError> {
        if self.pos >= self.frame.len() {
            return Ok(None);
        }
        let prefix = self.pos.checked_add(4).ok_or(TRUNCATED)?;
        let len: [u8; 4] = self
            .frame
            .get(self.pos..prefix)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(TRUNCATED)?;
        // Java reads the length as an int: one past i32::MAX is negative there.
        let len = usize::try_from(i32::from_be_bytes(len)).map_err(|_| BAD_LENGTH)?;
        let end = prefix
            .checked_add(len)
            .filter(|end| *end <= self.frame.len())
            .ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(Some(Cursor {
            frame: self.frame,
            pos: prefix,
            end,
            seen: Seen::default(),
            overrides: None,
            symbols: Vec::new(),
        }))
    }

    /// The next field, which must be there.
    fn expect(&mut self) -> Result<Cursor<'a>, CodecError> {
        self.next()?.ok_or(TRUNCATED)
    }

    /// The next field as a call field: a string or null filling the field.
    fn string(&mut self) -> Result<Option<JsonbStr>, CodecError> {
        let mut field = self.expect()?;
        let text = field.string_or_null()?;
        if field.pos != field.end {
            return Err(NOT_A_STRING);
        }
        Ok(text)
    }
}

/// Decodes the metadata (into `metadata`, which starts empty) of a fastjson2 request frame,
/// by the rules of [`request::decode`].
pub(crate) fn decode(frame: &Bytes, metadata: &mut Metadata) -> Result<DecodedRequest, CodecError> {
    let mut fields = Fields {
        frame,
        pos: HEADER_LEN,
    };
    let dubbo_version = fields.string()?;
    let path = fields.string()?;
    let version = fields.string()?;
    let method = fields.string()?;
    let descriptor = fields.string()?;
    // A call field the provider reads (its reader replaces what it cannot decode) and this
    // codec cannot would leave the metadata without the service, version or method that runs,
    // or the arguments counted otherwise than by the provider (none, with the first read as
    // the attachments): the call is refused.
    let text = |field: &Option<JsonbStr>| {
        field
            .as_ref()
            .map(|field| field.to_metadata(frame).ok_or(request::UNDECODABLE_FIELD))
            .transpose()
    };
    if let Some(path) = text(&path)? {
        metadata.insert(keys::INTERFACE, path.clone());
        metadata.insert(keys::SERVICE, path);
    }
    if let Some(method) = text(&method)? {
        metadata.insert(keys::METHOD, method);
    }
    let version = match &version {
        Some(version) => version_text(version, frame).ok_or(request::UNDECODABLE_FIELD)?,
        None => request::NO_VERSION,
    };
    metadata.insert(keys::VERSION, version);
    let descriptor = match &descriptor {
        Some(descriptor) => text_of(descriptor, frame).ok_or(request::UNDECODABLE_FIELD)?,
        None => Cow::Borrowed(""),
    };
    for _ in 0..request::argument_count(descriptor.as_bytes()) {
        fields.expect()?;
    }
    let mut timeout_is_text = false;
    if let Some(mut map) = fields.next()? {
        timeout_is_text = read_attachments(&mut map, frame, path.as_ref(), metadata)?;
    }
    let reads_response_attachments = dubbo_version
        .as_ref()
        .and_then(|v| text_of(v, frame))
        .is_some_and(|v| request::reads_response_attachments(v.as_bytes()));
    Ok(DecodedRequest {
        layout: AttachmentsLayout::from(FrameLayout::default()),
        reads_response_attachments,
        timeout_is_text,
    })
}

/// The status of a fastjson2 response with status 20, by its result flag (its first value, the
/// JSONB int Dubbo writes for a byte), as a Hessian2 response's: an exception (0, or 3 with
/// attachments) is an application error, a value or null (1, 2, 4, 5) a success, and a flag
/// that cannot be read a server error. The attachments after the result of flags 3, 4 and 5
/// (none after the flag for 5) are read into `metadata` (which starts empty) as a Hessian2
/// response's are; attachments that cannot be read leave it empty and the status the flag's:
/// the response goes to its client as it came, whose fastjson2 may read what this reader
/// does not.
pub(crate) fn decode_response(frame: &Bytes, metadata: &mut Metadata) -> ResponseStatus {
    let mut fields = Fields {
        frame,
        pos: HEADER_LEN,
    };
    let flag = fields
        .next()
        .ok()
        .flatten()
        .and_then(|mut field| field.int64().ok());
    let status = match flag {
        Some(0 | 3) => ResponseStatus::ApplicationError,
        Some(1 | 2 | 4 | 5) => ResponseStatus::Ok,
        _ => return ResponseStatus::ServerError,
    };
    if matches!(flag, Some(3..=5)) {
        let read = response_attachments(&mut fields, flag == Some(5), frame, metadata);
        if read.is_err() {
            *metadata = Metadata::new();
        }
    }
    status
}

/// Reads the attachments of a response whose result flag announces them, after its result
/// (none when `null_result`), into `metadata`.
fn response_attachments(
    fields: &mut Fields<'_>,
    null_result: bool,
    frame: &Bytes,
    metadata: &mut Metadata,
) -> Result<(), CodecError> {
    if !null_result {
        fields.expect()?;
    }
    let mut map = fields.expect()?;
    read_map(&mut map, frame, |key, name, value| {
        insert(&key, name, value, false, frame, metadata)
    })
}

/// Reads the attachments map (`map`, its field) into `metadata`, refusing the call for the
/// entries a Hessian2 call is refused for; true if its (last) `timeout` entry is a string.
fn read_attachments(
    map: &mut Cursor<'_>,
    frame: &Bytes,
    call_path: Option<&JsonbStr>,
    metadata: &mut Metadata,
) -> Result<bool, CodecError> {
    let mut timeout_is_text = false;
    read_map(map, frame, |key, name, value| {
        let text = match &value {
            Value::Text(text) => Some(text),
            _ => None,
        };
        if name == deadline::TIMEOUT {
            timeout_is_text = text.is_some();
        }
        request::check_attachment(
            name.as_bytes(),
            |expected| text.is_some_and(|value| value.is_any(frame, &[expected])),
            || match (text, call_path) {
                (Some(value), Some(path)) => value.same_text(path, frame),
                (value, path) => value.is_none() && path.is_none(),
            },
        )?;
        if request::is_reserved(name.as_bytes()) {
            return Ok(());
        }
        insert(&key, name, value, true, frame, metadata)
    })?;
    Ok(timeout_is_text)
}

/// Reads an attachments map (`map`, its field: an object, a typed one, or null), calling
/// `each` with the key, its text and the value of every entry whose key is a string; an error
/// for a string key whose text cannot be decoded.
fn read_map(
    map: &mut Cursor<'_>,
    frame: &[u8],
    mut each: impl FnMut(JsonbStr, &str, Value) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    if !map.open_map()? {
        return Ok(());
    }
    while map.peek() != Some(OBJECT_END) {
        let key = match map.byte()? {
            SYMBOL => Some(map.symbol()?),
            tag => match map.string_after(tag)? {
                Some(key) => Some(key),
                None => map.skip_after(tag).map(|()| None)?,
            },
        };
        let value = map.value()?;
        // An entry whose key is no string is the peer's alone.
        let Some(key) = key else {
            continue;
        };
        // The provider reads the key (its reader replaces what it cannot decode): leaving it
        // out would hide it from the checks, routes and policies.
        let name = text_of(&key, frame).ok_or(UNDECODABLE_KEY)?;
        each(key, &name, value)?;
    }
    map.byte()?;
    if map.pos != map.end {
        return Err(NOT_A_MAP);
    }
    Ok(())
}

/// The text of a string, borrowed from `frame` when it is ASCII or UTF-8 there.
fn text_of<'f>(string: &JsonbStr, frame: &'f [u8]) -> Option<Cow<'f, str>> {
    let bytes = frame.get(string.range.clone())?;
    let in_place = match string.encoding {
        Encoding::Utf8 => true,
        Encoding::Latin1 => bytes.is_ascii(),
        _ => false,
    };
    if in_place {
        return std::str::from_utf8(bytes).ok().map(Cow::Borrowed);
    }
    string.decoded(frame).map(Cow::Owned)
}

/// Sets the attachment `key` (whose text is `name`) to `value` in `metadata`, as a Hessian2
/// call's (when `call`) or response's: a number as its text, a null or another value that is
/// no metadata taking out the key (its last value is the provider's), a string that cannot be
/// decoded refused; in a call, a `version` as [`version_text`] reads it, and a `version` or
/// `group` that is no text refused.
fn insert(
    key: &JsonbStr,
    name: &str,
    value: Value,
    call: bool,
    frame: &Bytes,
    metadata: &mut Metadata,
) -> Result<(), CodecError> {
    let text = match &value {
        Value::Text(text) if call && name.as_bytes() == request::VERSION_ATTACHMENT => {
            version_text(text, frame)
        }
        Value::Text(text) => text.to_metadata(frame),
        _ => None,
    };
    if let Some(text) = text {
        if let Some(key) = key.to_metadata(frame) {
            metadata.insert(key, text);
        }
        return Ok(());
    }
    // A null version is the empty one, a null group none (taken out below), as in Hessian2.
    let null = matches!(value, Value::Null);
    if call && null && request::insert_null_version(name.as_bytes(), metadata) {
        return Ok(());
    }
    // The version or group Java providers run would not be the metadata's.
    if let Some(refused) =
        request::selector_without_text(Some(name.as_bytes())).filter(|_| call && !null)
    {
        return Err(refused);
    }
    let mut printed = Printed::default();
    let rendered = match value {
        // Java reads a null, and any value that is no string, as no attachment, and its map
        // keeps a key's last value: an earlier one must not stay.
        Value::Null | Value::Other => {
            metadata.unset(name);
            return Ok(());
        }
        Value::Constant(text) => {
            if let Some(key) = key.to_metadata(frame) {
                metadata.insert(key, MetadataStr::Static(text));
            }
            return Ok(());
        }
        Value::Int(value) => write!(printed, "{value}"),
        Value::Double(value) => write_java_double(&mut printed, value),
        Value::Char(value) => printed.write_char(value),
        // The provider reads it (its reader replaces what it cannot decode), as the key's last
        // value: left out, the key's earlier value would stay in the metadata.
        Value::Text(_) => return Err(UNDECODABLE_TEXT),
    };
    match (rendered, key.to_metadata(frame)) {
        (Ok(()), Some(key)) => metadata.insert_rendered(key, printed.as_str()),
        _ => metadata.unset(name),
    };
    Ok(())
}

/// A service version as metadata: Dubbo's default `0.0.0` and `*` as the empty version (see
/// [`request::VERSIONS_READ_AS_NONE`]); `None` if it cannot be represented in UTF-8.
fn version_text(version: &JsonbStr, frame: &Bytes) -> Option<MetadataStr> {
    if version.is_any(frame, &request::VERSIONS_READ_AS_NONE) {
        return Some(request::NO_VERSION);
    }
    version.to_metadata(frame)
}

/// True if a reference `path` may name an entry of the attachments map (the root of its
/// field's value) whose key `mutation` overrides: `$.key`, `$.key.field`, `$.key[0]` name the
/// entry `key`; `$` is the map itself, `..` and `@` are relative to where the reference is;
/// any other form (`$[...]`, an escaped name) may name any entry.
fn may_name_overridden(path: &str, mutation: &Mutation) -> bool {
    let Some(rest) = path.strip_prefix('$') else {
        return false;
    };
    let Some(named) = rest.strip_prefix('.') else {
        return !rest.is_empty();
    };
    let key = named.split(['.', '[']).next().unwrap_or(named);
    key.contains('\\') || mutation.overrides(key.as_bytes())
}

/// Why an entry of a fastjson2 call's attachments is not removed or replaced.
const SHARED_ENTRY: &str = "a fastjson2 attachment that other attachments point at (by a JSONB reference or symbol number) cannot be removed or replaced";

/// Why a mutation of a map with a key whose text cannot be decoded is refused.
const UNDECODABLE_KEY_MAP: &str =
    "a fastjson2 attachments map with a key that cannot be decoded cannot be rewritten";

/// Why a mutation of a map whose keys are symbol numbers is refused.
const NUMBERED_KEY: &str =
    "a fastjson2 attachments map naming a key by a symbol number cannot be rewritten";

/// Appends fastjson2 call `frame` with `mutation` applied to its attachments map, as
/// [`crate::attachments::write_mutated`] does to a Hessian2 one: the call fields (the path
/// field set to a `path` the mutation sets) and arguments as they came, then the map: its type
/// name if it has one, the entries whose keys the mutation does not override byte for byte, the
/// mutation's sets as JSONB strings, with its length recomputed. A call without attachments or
/// with null ones gains a map. An overridden entry that another entry may point at (a symbol
/// it defines, used by number elsewhere in the map; a path a reference names; a reference
/// another repeats) is refused with an encode error, and so is a map with a string key that
/// cannot be decoded (which a call the codec decoded never has: kept unread, an entry the
/// mutation removes would go out). The caller patches the header.
pub(crate) fn write_mutated(
    frame: &[u8],
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    write_call(frame, mutation, dst).map_err(|error| match error {
        CodecError::Malformed(reason) => CodecError::Encode(reason),
        other => other,
    })
}

fn write_call(frame: &[u8], mutation: &Mutation, dst: &mut BytesMut) -> Result<(), CodecError> {
    let mut fields = Fields {
        frame,
        pos: HEADER_LEN,
    };
    fields.string()?;
    let path_at = fields.pos;
    fields.string()?;
    let path_end = fields.pos;
    fields.string()?;
    fields.string()?;
    let descriptor = fields.string()?;
    let descriptor = descriptor
        .as_ref()
        .and_then(|d| text_of(d, frame))
        .unwrap_or_default();
    for _ in 0..request::argument_count(descriptor.as_bytes()) {
        fields.expect()?;
    }
    let map_at = fields.pos;
    let map = fields.next()?;
    let after_map = fields.pos;
    dst.put_slice(slice(frame, 0..path_at)?);
    match request::renamed_path(mutation) {
        Some(path) => put_fastjson2_string(dst, &[path.as_str()]),
        None => dst.put_slice(slice(frame, path_at..path_end)?),
    }
    dst.put_slice(slice(frame, path_end..map_at)?);
    put_map_field(map, mutation, dst)?;
    dst.put_slice(slice(frame, after_map..frame.len())?);
    Ok(())
}

/// Appends fastjson2 response `frame` (status 20) with `mutation` applied to its attachments,
/// as [`write_mutated`] does to a call's: the result flag announcing attachments (one without
/// them, 0 to 2, gains 3: an exception 3, a value 4, a null 5, written as Dubbo writes the
/// byte, a JSONB int8), the result as it came, then the map (its entries the mutation leaves
/// byte for byte, then the sets; a new map after the result when there was none). A response
/// whose flag or attachments cannot be read fails with a `Malformed` error, for the caller to
/// forward it as it came; a removal or replacement of an entry another points at with an
/// `Encode` one. The caller patches the header.
pub(crate) fn write_mutated_response(
    frame: &[u8],
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    const EXCEPTION_WITH_ATTACHMENTS: i64 = 3;
    let mut fields = Fields {
        frame,
        pos: HEADER_LEN,
    };
    let flag = fields.expect()?.int64()?;
    let flag_end = fields.pos;
    if !(0..=5).contains(&flag) {
        return Err(CodecError::malformed("unknown Dubbo result flag"));
    }
    // Flags 2 and 5 have no result (a null).
    if !matches!(flag, 2 | 5) {
        fields.expect()?;
    }
    let result_end = fields.pos;
    let map = if flag >= EXCEPTION_WITH_ATTACHMENTS {
        Some(fields.expect()?)
    } else {
        None
    };
    let after_map = fields.pos;
    // Attachments the codec cannot read as metadata (`decode_response` left none) are not
    // rewritten either: the mutation would not be what a second reading saw.
    if let Some(map) = &map {
        read_map(&mut map.clone(), frame, |_, _, value| match value {
            Value::Text(text) if text_of(&text, frame).is_none() => Err(UNDECODABLE_TEXT),
            _ => Ok(()),
        })?;
    }
    if flag >= EXCEPTION_WITH_ATTACHMENTS {
        dst.put_slice(slice(frame, 0..flag_end)?);
    } else {
        dst.put_slice(slice(frame, 0..HEADER_LEN)?);
        let with_attachments = u8::try_from(flag + EXCEPTION_WITH_ATTACHMENTS)
            .map_err(|_| CodecError::malformed("unknown Dubbo result flag"))?;
        dst.put_u32(2);
        dst.put_slice(&[INT8, with_attachments]);
    }
    dst.put_slice(slice(frame, flag_end..result_end)?);
    put_map_field(map, mutation, dst)?;
    dst.put_slice(slice(frame, after_map..frame.len())?);
    Ok(())
}

/// Appends the attachments field, its 4-byte length and the map `map` (its field's value, if
/// there is one) with `mutation` applied (see [`write_map`]).
fn put_map_field(
    map: Option<Cursor<'_>>,
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let len_at = dst.len();
    dst.put_u32(0);
    write_map(map, mutation, dst)?;
    let len = dst.len().saturating_sub(len_at + 4);
    let len = i32::try_from(len).map_err(|_| {
        CodecError::Encode("the rewritten fastjson2 attachments are too long".into())
    })?;
    if let Some(prefix) = dst.get_mut(len_at..len_at + 4) {
        prefix.copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Appends the attachments map `map` (its field's value, if the call has one) with
/// `mutation` applied; see [`write_mutated`].
fn write_map(
    map: Option<Cursor<'_>>,
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let put_sets = |dst: &mut BytesMut| {
        for (key, value) in mutation.sets() {
            put_jsonb_string(dst, &[key.as_str()]);
            put_jsonb_string(dst, &[value.as_str()]);
        }
        dst.put_u8(OBJECT_END);
    };
    let Some(mut map) = map else {
        dst.put_u8(OBJECT);
        put_sets(dst);
        return Ok(());
    };
    let value_at = map.pos;
    if !map.open_map()? {
        dst.put_u8(OBJECT);
        put_sets(dst);
        return Ok(());
    }
    dst.put_slice(slice(map.frame, value_at..map.pos)?);
    // What the entries define and point at, all of them: a later entry may use an earlier
    // one's symbol, an earlier one's reference may name a later one.
    let mut scan = map.clone();
    scan.overrides = Some(mutation);
    while scan.peek() != Some(OBJECT_END) {
        scan.skip()?;
        scan.skip()?;
    }
    let shared = scan.seen;
    while map.peek() != Some(OBJECT_END) {
        let entry_at = map.pos;
        map.seen = Seen::default();
        let key = match map.byte()? {
            SYMBOL => {
                let numbered = map.peek().is_some_and(is_int32_tag);
                let key = map.symbol()?;
                if numbered {
                    return Err(CodecError::Encode(NUMBERED_KEY.into()));
                }
                Some(key)
            }
            tag => match map.string_after(tag)? {
                Some(key) => Some(key),
                None => map.skip_after(tag).map(|()| None)?,
            },
        };
        map.skip()?;
        let overridden = match key {
            Some(key) => {
                // Kept unread, an entry the mutation removes or replaces would go out with it.
                let name = text_of(&key, map.frame)
                    .ok_or_else(|| CodecError::Encode(UNDECODABLE_KEY_MAP.into()))?;
                mutation.overrides(name.as_bytes())
            }
            None => false,
        };
        if !overridden {
            dst.put_slice(slice(map.frame, entry_at..map.pos)?);
            continue;
        }
        let entry = map.seen;
        if (entry.defines_symbol && shared.uses_symbol_number)
            || (entry.reference && shared.repeats_reference)
            || shared.names_overridden
        {
            return Err(CodecError::Encode(SHARED_ENTRY.into()));
        }
    }
    map.byte()?;
    if map.pos != map.end {
        return Err(NOT_A_MAP);
    }
    put_sets(dst);
    Ok(())
}
