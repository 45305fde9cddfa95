//! Hessian string data: lengths in UTF-16 code units, bytes in UTF-8 or CESU-8.
//!
//! Hessian counts a string's length in UTF-16 code units ("chars"), not bytes, so finding the
//! end of a string means walking its lead bytes. Java writes a character outside the BMP as two
//! 3-byte surrogate sequences (CESU-8, one unit each); other writers use a 4-byte UTF-8
//! sequence (two units). Both are read; CESU-8 is what [`super::writer`] writes, because Java
//! readers reject 4-byte sequences.

use std::fmt;

use bytes::Bytes;
use metaprotocol_core::{Ascii, ByteStr, CodecError};

/// The number of bytes that hold the first `units` UTF-16 code units of `data`, and those
/// bytes as [`Ascii`] if they are all ASCII (then they are also UTF-8, and one byte per unit).
///
/// Otherwise continuation bytes are not validated here (skipping does not need them);
/// [`to_byte_str`] validates the strings that become metadata.
#[inline]
pub(crate) fn byte_len(
    data: &[u8],
    units: usize,
) -> Result<(usize, Option<Ascii<'_>>), CodecError> {
    // Most routing strings are ASCII: one byte per unit, checked in bulk, inlined into the
    // string reader; the walk over wider characters stays out of line.
    match data.get(..units).and_then(Ascii::new) {
        Some(text) => Ok((units, Some(text))),
        None => walk_units(data, units).map(|len| (len, None)),
    }
}

/// The number of bytes that hold the first `units` UTF-16 code units of `data`, by lead bytes.
fn walk_units(data: &[u8], units: usize) -> Result<usize, CodecError> {
    let mut pos = 0;
    let mut left = units;
    while left > 0 {
        let lead = *data.get(pos).ok_or(TRUNCATED)?;
        let (bytes, width) = match lead {
            0x00..=0x7f => (1, 1),
            0xc0..=0xdf => (2, 1),
            0xe0..=0xef => (3, 1),
            0xf0..=0xf7 => (4, 2),
            _ => {
                return Err(CodecError::malformed(
                    "invalid UTF-8 lead byte in Hessian2 string",
                ));
            }
        };
        if width > left {
            return Err(CodecError::malformed(
                "Hessian2 string length splits a surrogate pair",
            ));
        }
        left -= width;
        pos += bytes;
    }
    if pos > data.len() {
        return Err(TRUNCATED);
    }
    Ok(pos)
}

/// String data as metadata: the bytes themselves when they are UTF-8 (no copy), a decoded copy
/// when they hold CESU-8 surrogate pairs, `None` when they are neither (a lone surrogate, say:
/// legal in Java, not representable in UTF-8).
pub(crate) fn to_byte_str(bytes: Bytes) -> Option<ByteStr> {
    match ByteStr::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(bytes) => decode_cesu8(&bytes).map(ByteStr::from),
    }
}

/// The number of UTF-16 code units of `text`, the unit in which Hessian counts lengths.
pub(crate) fn utf16_len(text: &str) -> usize {
    if text.is_ascii() {
        text.len()
    } else {
        text.chars().map(char::len_utf16).sum()
    }
}

/// Appends one UTF-16 code unit as Java writes it: 1 to 3 bytes, surrogates included.
pub(crate) fn push_unit(dst: &mut Vec<u8>, unit: u16) {
    let unit = u32::from(unit);
    match unit {
        0..=0x7f => dst.push(low_byte(unit)),
        0x80..=0x7ff => dst.extend_from_slice(&[0xc0 | low_byte(unit >> 6), continuation(unit)]),
        _ => dst.extend_from_slice(&[
            0xe0 | low_byte(unit >> 12),
            continuation(unit >> 6),
            continuation(unit),
        ]),
    }
}

const TRUNCATED: CodecError = CodecError::malformed("truncated Hessian2 string");

fn low_byte(value: u32) -> u8 {
    value.to_be_bytes()[3]
}

fn continuation(value: u32) -> u8 {
    0x80 | (low_byte(value) & 0x3f)
}

/// Decodes UTF-8 in which characters outside the BMP may appear as CESU-8 surrogate pairs.
fn decode_cesu8(mut rest: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(rest.len());
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                out.push_str(text);
                return Some(out);
            }
            Err(error) => {
                let (valid, tail) = rest.split_at(error.valid_up_to());
                out.push_str(std::str::from_utf8(valid).ok()?);
                let (character, after) = cesu8_pair(tail)?;
                out.push(character);
                rest = after;
            }
        }
    }
}

/// Writes string data as [`decode_cesu8`] reads it, but each byte that is neither UTF-8 nor
/// part of a surrogate pair (a lone surrogate, which Java strings may hold) as U+FFFD: for
/// text printed for a person or a route, not handed on.
pub(crate) fn write_lossy(mut rest: &[u8], out: &mut impl fmt::Write) -> fmt::Result {
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => return out.write_str(text),
            Err(error) => {
                let (valid, tail) = rest.split_at(error.valid_up_to());
                out.write_str(std::str::from_utf8(valid).unwrap_or_default())?;
                rest = match cesu8_pair(tail) {
                    Some((character, after)) => {
                        out.write_char(character)?;
                        after
                    }
                    None => {
                        out.write_char(char::REPLACEMENT_CHARACTER)?;
                        tail.get(error.error_len().unwrap_or(tail.len())..)
                            .unwrap_or_default()
                    }
                };
            }
        }
    }
}

/// The character of the CESU-8 surrogate pair that `bytes` starts with, and the bytes after it.
fn cesu8_pair(bytes: &[u8]) -> Option<(char, &[u8])> {
    let (pair, after) = bytes.split_first_chunk::<6>()?;
    let (high, low) = pair.split_at(3);
    let high = surrogate(high, 0xd800..=0xdbff)?;
    let low = surrogate(low, 0xdc00..=0xdfff)?;
    let character = char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))?;
    Some((character, after))
}

/// The surrogate code unit encoded by the 3-byte sequence `bytes`, if it lies in `range`.
fn surrogate(bytes: &[u8], range: std::ops::RangeInclusive<u32>) -> Option<u32> {
    let &[0xed, b1, b2] = bytes else {
        return None;
    };
    if b1 & 0xc0 != 0x80 || b2 & 0xc0 != 0x80 {
        return None;
    }
    let unit = 0xd000 | (u32::from(b1 & 0x3f) << 6) | u32::from(b2 & 0x3f);
    range.contains(&unit).then_some(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cesu8(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for unit in text.encode_utf16() {
            push_unit(&mut out, unit);
        }
        out
    }

    #[test]
    fn counts_units_across_widths() {
        let text = "aé€😀b";
        assert_eq!(utf16_len(text), 6);
        assert_eq!(byte_len(text.as_bytes(), 6), Ok((text.len(), None)));
        let java = cesu8(text);
        assert_eq!(java.len(), 1 + 2 + 3 + 6 + 1);
        assert_eq!(byte_len(&java, 6), Ok((java.len(), None)));
        assert_eq!(byte_len(&java, 3), Ok((6, None)));
        assert_eq!(byte_len(b"abc", 2), Ok((2, Ascii::new(b"ab"))));
    }

    #[test]
    fn rejects_truncation_and_bad_lead_bytes() {
        assert!(byte_len(b"ab", 3).is_err());
        assert!(byte_len(&[0xe2, 0x82], 1).is_err());
        assert!(byte_len(&[0x80], 1).is_err());
        assert!(byte_len("😀".as_bytes(), 1).is_err());
    }

    #[test]
    fn decodes_cesu8_pairs_and_refuses_lone_surrogates() {
        let java = cesu8("x😀y");
        let decoded = to_byte_str(Bytes::from(java));
        assert_eq!(decoded.as_ref().map(ByteStr::as_str), Some("x😀y"));
        assert!(to_byte_str(Bytes::from_static(&[0xed, 0xa0, 0x80])).is_none());
        assert!(to_byte_str(Bytes::from_static(&[0xff])).is_none());
    }

    #[test]
    fn writes_cesu8_pairs_and_replaces_what_utf8_cannot_hold() {
        let mut out = String::new();
        let lone = [0xed, 0xa0, 0x80];
        let java = [&cesu8("x😀")[..], &lone, b"y"].concat();
        assert_eq!(write_lossy(&java, &mut out), Ok(()));
        assert_eq!(out, "x😀\u{fffd}\u{fffd}\u{fffd}y");
    }
}
