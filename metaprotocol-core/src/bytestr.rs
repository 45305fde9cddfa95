//! A UTF-8 string that shares its storage with the frame it was read from.

use std::fmt;
use std::ops::{Deref, Range};

use bytes::Bytes;

/// An immutable UTF-8 string backed by [`Bytes`].
///
/// Metadata keys and values are usually slices of the frame they were decoded from; a `ByteStr`
/// keeps such a slice without copying it, and a `'static` string without allocating.
/// The UTF-8 invariant is checked once, when the value is built.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// A `ByteStr` over a static string; never allocates.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps `bytes` if they are valid UTF-8, returning them unchanged otherwise.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, Bytes> {
        if is_text(&bytes) {
            Ok(Self(bytes))
        } else {
            Err(bytes)
        }
    }

    /// The part of `buf` that `text` is, shared without a copy and without validating it
    /// again (the check that made `text` an [`Ascii`] proved it UTF-8); `None` if `text` does
    /// not lie inside `buf`. An empty `text` is the empty string, wherever it points.
    #[inline]
    pub fn slice_ascii(buf: &Bytes, text: Ascii<'_>) -> Option<Self> {
        if text.0.is_empty() {
            return Some(Self::default());
        }
        text.range_in(buf).map(|range| Self(buf.slice(range)))
    }

    /// Copies `s` into a new `ByteStr`.
    pub fn copy_from_str(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // The constructors only admit valid UTF-8, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The UTF-8 bytes (no validation; the fast path for matching).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Bytes checked once to be ASCII, hence UTF-8: a decoder that checks a string while finding
/// its end keeps the proof, and [`ByteStr::slice_ascii`] then needs no second pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ascii<'a>(&'a [u8]);

impl<'a> Ascii<'a> {
    /// `bytes`, if they are all ASCII.
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        is_ascii(bytes).then_some(Self(bytes))
    }

    /// The bytes.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Where these bytes lie in `buf`, if they are a part of it.
    #[inline]
    pub fn range_in(&self, buf: &[u8]) -> Option<Range<usize>> {
        locate(self.0, buf)
    }

    /// Where these bytes lie in `buf`, if they are a part of it, with the proof that they are
    /// ASCII: a [`MetadataStr::Ascii`](crate::MetadataStr::Ascii) of metadata over `buf` is
    /// inserted without checking them again.
    #[inline]
    pub fn ascii_range_in(&self, buf: &[u8]) -> Option<AsciiRange> {
        Some(AsciiRange {
            range: self.range_in(buf)?,
            buf: buf.as_ptr() as usize,
        })
    }
}

/// A range of a buffer whose bytes an [`Ascii`] proved ASCII ([`Ascii::ascii_range_in`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsciiRange {
    pub(crate) range: Range<usize>,
    /// The address of the buffer the range is of: metadata takes the proof only for its own
    /// source (bytes at the same address), and checks the bytes of any other.
    pub(crate) buf: usize,
}

/// Where `part` lies in `buf`, if it is a part of it.
pub(crate) fn locate(part: &[u8], buf: &[u8]) -> Option<Range<usize>> {
    // Addresses only locate `part` in `buf`; nothing is read through them.
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= buf.len()).then_some(start..end)
}

/// True if `bytes` are UTF-8 text. Metadata is nearly always ASCII, which a word at a time
/// proves far faster than the general check, so that is tried first.
pub fn is_text(bytes: &[u8]) -> bool {
    is_ascii(bytes) || std::str::from_utf8(bytes).is_ok()
}

/// `<[u8]>::is_ascii` for the short strings of metadata: the high bits of whole words, the
/// last (partial) word read overlapping the one before rather than byte by byte.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |chunk: &[u8; 8]| u64::from_ne_bytes(*chunk);
    let half = |chunk: &[u8; 4]| u64::from(u32::from_ne_bytes(*chunk));
    let seen = if let Some(last) = bytes.last_chunk::<8>() {
        let (words, _) = bytes.as_chunks::<8>();
        words
            .iter()
            .fold(word(last), |seen, chunk| seen | word(chunk))
    } else if let (Some(first), Some(last)) = (bytes.first_chunk(), bytes.last_chunk()) {
        half(first) | half(last)
    } else {
        bytes.iter().fold(0, |seen, &byte| seen | u64::from(byte))
    };
    seen & HIGH == 0
}

impl Deref for ByteStr {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&'static str> for ByteStr {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_invalid_utf8() {
        assert!(ByteStr::from_utf8(Bytes::from_static(&[0xff, 0xfe])).is_err());
        let ok = ByteStr::from_utf8(Bytes::from_static("héllo".as_bytes())).ok();
        assert_eq!(ok.as_ref().map(ByteStr::as_str), Some("héllo"));
    }

    #[test]
    fn slices_ascii_only_from_its_own_buffer() {
        let buf = Bytes::from_static(b"key=value");
        let value = Ascii::new(&buf[4..]).map(|text| ByteStr::slice_ascii(&buf, text));
        assert_eq!(value.flatten().as_ref().map(ByteStr::as_str), Some("value"));
        let other = Bytes::copy_from_slice(b"value");
        let elsewhere = Ascii::new(&buf[4..]).map(|text| ByteStr::slice_ascii(&other, text));
        assert_eq!(elsewhere, Some(None));
        assert!(Ascii::new("é".as_bytes()).is_none());
    }

    #[test]
    fn finds_a_non_ascii_byte_anywhere_in_any_length() {
        for len in 0..40 {
            let ascii = vec![b'a'; len];
            assert!(Ascii::new(&ascii).is_some(), "{len}");
            for at in 0..len {
                let mut bytes = ascii.clone();
                bytes[at] = 0x80;
                assert!(Ascii::new(&bytes).is_none(), "{len} {at}");
            }
        }
    }
}
