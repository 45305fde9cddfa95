//! Writes Hessian2 strings, as Java's `Hessian2Output` does.

use bytes::{BufMut, BytesMut};

use super::text;

/// Java's chunk size: strings longer than this are split into `R` chunks.
const CHUNK_UNITS: usize = 0x8000;

/// Appends the concatenation of `parts` as one Hessian2 string: the compact forms for short
/// strings, `S` up to [`CHUNK_UNITS`] code units, `R` chunks beyond (never splitting a
/// surrogate pair); characters outside the BMP as CESU-8 surrogate pairs (what Java readers
/// accept).
pub(crate) fn write_string(dst: &mut BytesMut, parts: &[&str]) {
    let units: usize = parts.iter().map(|part| text::utf16_len(part)).sum();
    if units <= CHUNK_UNITS && parts.iter().all(|part| part.is_ascii()) {
        // The common case: the UTF-8 bytes are the Hessian bytes.
        put_chunk_header(dst, units, true);
        for part in parts {
            dst.put_slice(part.as_bytes());
        }
        return;
    }
    let code_units: Vec<u16> = parts.iter().flat_map(|part| part.encode_utf16()).collect();
    let mut rest = code_units.as_slice();
    let mut chunk = Vec::new();
    loop {
        let mut len = rest.len().min(CHUNK_UNITS);
        // A chunk never ends between the halves of a surrogate pair, as Java's `Hessian2Output`
        // and hessian.js hold to: a reader that decodes chunk by chunk would find a lone half.
        if len < rest.len()
            && rest
                .get(len - 1)
                .is_some_and(|unit| is_high_surrogate(*unit))
        {
            len -= 1;
        }
        let (taken, after) = rest.split_at(len);
        chunk.clear();
        for unit in taken {
            text::push_unit(&mut chunk, *unit);
        }
        put_chunk_header(dst, len, after.is_empty());
        dst.put_slice(&chunk);
        if after.is_empty() {
            return;
        }
        rest = after;
    }
}

/// True for the first half of a surrogate pair.
fn is_high_surrogate(unit: u16) -> bool {
    (0xd800..=0xdbff).contains(&unit)
}

/// The tag and length of a chunk of `units` code units (at most [`CHUNK_UNITS`]).
fn put_chunk_header(dst: &mut BytesMut, units: usize, last: bool) {
    let [_, _, high, low] = u32::try_from(units).unwrap_or(u32::MAX).to_be_bytes();
    match (last, units) {
        (true, 0..=0x1f) => dst.put_u8(low),
        (true, 0x20..=0x3ff) => dst.put_slice(&[0x30 + high, low]),
        (true, _) => dst.put_slice(&[b'S', high, low]),
        (false, _) => dst.put_slice(&[b'R', high, low]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hessian::reader::Reader;

    fn written(parts: &[&str]) -> BytesMut {
        let mut dst = BytesMut::new();
        write_string(&mut dst, parts);
        dst
    }

    fn read_back(bytes: &BytesMut) -> Option<String> {
        let frame = bytes.clone().freeze();
        let mut reader = Reader::new(&frame, 0);
        let data = reader.string().ok().flatten()?;
        (reader.position() == frame.len()).then_some(())?;
        data.to_byte_str(&frame).map(|s| s.to_string())
    }

    #[test]
    fn picks_the_compact_forms() {
        assert_eq!(&written(&[""])[..], b"\x00");
        assert_eq!(&written(&["boom"])[..], b"\x04boom");
        assert_eq!(&written(&["a", ": ", "b"])[..], b"\x04a: b");
        let medium = "m".repeat(300);
        assert_eq!(&written(&[&medium])[..2], &[0x31, 0x2c]);
        let long = "l".repeat(2000);
        assert_eq!(&written(&[&long])[..3], &[b'S', 0x07, 0xd0]);
    }

    #[test]
    fn round_trips_through_the_reader() {
        let huge = "é".repeat(CHUNK_UNITS + 5);
        for text in ["", "héllo", "emoji 😀 here", huge.as_str()] {
            assert_eq!(read_back(&written(&[text])).as_deref(), Some(text));
        }
        let chunked = written(&[&huge]);
        assert_eq!(chunked.first(), Some(&b'R'));
    }

    /// Java's writer and hessian.js never split a surrogate pair across chunks: a chunk that
    /// would end on a pair's first half ends one unit early.
    #[test]
    fn a_chunk_never_ends_inside_a_surrogate_pair() {
        let text = format!("{}\u{1f600}b", "a".repeat(CHUNK_UNITS - 1));
        let chunked = written(&[&text]);
        assert_eq!(
            &chunked[..3],
            &[b'R', 0x7f, 0xff],
            "the first chunk stops before the pair"
        );
        let second = 3 + CHUNK_UNITS - 1;
        assert_eq!(
            &chunked[second..second + 3],
            &[0x03, 0xed, 0xa0],
            "the pair starts the last"
        );
        assert_eq!(read_back(&chunked).as_deref(), Some(text.as_str()));
        let even = format!("{}\u{1f600}b", "a".repeat(CHUNK_UNITS - 2));
        assert_eq!(
            &written(&[&even])[..3],
            &[b'R', 0x80, 0x00],
            "a whole pair fits"
        );
    }
}
