//! Serialization ids: the codec reads Hessian2 and fastjson2 calls and routes others on their
//! header only. It writes its answers in Hessian2, or, to a call in fastjson2, in fastjson2.

use bytes::BufMut;

/// The Hessian2 serialization id, Dubbo's default.
pub(crate) const HESSIAN2: u8 = 2;

/// The fastjson2 serialization id (Dubbo 3.2 and later): every value is a big-endian 4-byte
/// length and the value in fastjson2's binary JSON (JSONB), its call fields strings. A Dubbo
/// 3.2 consumer may prefer it, and one built without Hessian2 reads no Hessian2 answer.
pub(crate) const FASTJSON2: u8 = 23;

/// Why a call in serialization `id` cannot be proxied: the reason of its `BadRequest` reply.
pub(crate) fn unsupported_reason(id: u8) -> &'static str {
    UNSUPPORTED
        .get(usize::from(id))
        .copied()
        .unwrap_or(UNSUPPORTED_OTHER)
}

/// Appends `parts`, joined, as one fastjson2 value, what Dubbo's `FastJson2ObjectOutput`
/// writes for a string: its length in four bytes, then the string in JSONB (see
/// [`put_jsonb_string`]).
pub(crate) fn put_fastjson2_string(dst: &mut impl BufMut, parts: &[&str]) {
    let (head, head_len, len) = jsonb_string_head(parts);
    dst.put_u32(u32::try_from(head_len + len).unwrap_or(u32::MAX));
    put_string_parts(dst, head.get(..head_len).unwrap_or_default(), parts);
}

/// Appends `parts`, joined, as a JSONB string as fastjson2 writes a Java string: ASCII in one
/// of its ASCII forms, other text as UTF-8, each with its byte length.
pub(crate) fn put_jsonb_string(dst: &mut impl BufMut, parts: &[&str]) {
    let (head, head_len, _) = jsonb_string_head(parts);
    put_string_parts(dst, head.get(..head_len).unwrap_or_default(), parts);
}

fn put_string_parts(dst: &mut impl BufMut, head: &[u8], parts: &[&str]) {
    dst.put_slice(head);
    for part in parts {
        dst.put_slice(part.as_bytes());
    }
}

/// The tag and length of the JSONB string of `parts` joined (in the first bytes of the array,
/// as many as the second value says), and the string's byte length.
fn jsonb_string_head(parts: &[&str]) -> ([u8; 6], usize, usize) {
    // JSONB's string tags: ASCII of 0 to 47 bytes (the length in the tag), then ASCII and
    // UTF-8 with their lengths after the tag.
    const ASCII_FIX_0: u8 = 0x49;
    const ASCII_FIX_MAX: usize = 47;
    const ASCII: u8 = 0x79;
    const UTF8: u8 = 0x7a;
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let ascii = parts.iter().all(|part| part.is_ascii());
    let mut head = [0_u8; 6];
    let head_len = match (ascii, u8::try_from(len)) {
        (true, Ok(short)) if len <= ASCII_FIX_MAX => {
            head[0] = ASCII_FIX_0 + short;
            1
        }
        (true, _) => {
            head[0] = ASCII;
            1 + put_jsonb_length(&mut head[1..], len)
        }
        (false, _) => {
            head[0] = UTF8;
            1 + put_jsonb_length(&mut head[1..], len)
        }
    };
    (head, head_len, len)
}

/// Writes `len` as a JSONB int into `out` (five bytes at least), returning how many it took:
/// one byte up to 47, two up to 2,047, three up to 262,143, else a tag and four.
fn put_jsonb_length(out: &mut [u8], len: usize) -> usize {
    let bytes = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    let (encoded, taken): ([u8; 5], usize) = match len {
        0..=47 => ([bytes[3], 0, 0, 0, 0], 1),
        // 0x38 is the tag of 0 << 8, up to 0x3f of 7 << 8.
        48..=0x7ff => ([0x38 + bytes[2], bytes[3], 0, 0, 0], 2),
        // 0x44 is the tag of 0 << 16, up to 0x47 of 3 << 16.
        0x800..=0x3_ffff => ([0x44 + bytes[1], bytes[2], bytes[3], 0, 0], 3),
        _ => ([0x48, bytes[0], bytes[1], bytes[2], bytes[3]], 5),
    };
    if let Some(room) = out.get_mut(..taken) {
        room.copy_from_slice(encoded.get(..taken).unwrap_or_default());
    }
    taken
}

const UNSUPPORTED_OTHER: &str =
    "this serialization is not supported; only Hessian2 (2) and fastjson2 (23) are";

/// One static reason per 5-bit serialization id, so that the reply names the id without
/// allocating.
macro_rules! reasons {
    ($($id:literal)*) => {
        [$(concat!(
            "serialization id ", $id, " is not supported; only Hessian2 (2) and fastjson2 (23) are"
        )),*]
    };
}

const UNSUPPORTED: [&str; 32] = reasons!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
);

#[cfg(test)]
mod tests {
    use super::*;

    /// What a fastjson2 reader finds: the length in four bytes, the JSONB tag, the JSONB
    /// length where the tag does not hold it, the bytes.
    #[test]
    fn fastjson2_strings_are_length_and_jsonb() {
        let written = |parts: &[&str]| {
            let mut out = Vec::new();
            put_fastjson2_string(&mut out, parts);
            out
        };
        assert_eq!(written(&["ab", "c"]), b"\x00\x00\x00\x04\x4cabc");
        assert_eq!(written(&[""]), b"\x00\x00\x00\x01\x49");
        let long = "x".repeat(300);
        let out = written(&[&long]);
        assert_eq!(out.get(..7), Some(&b"\x00\x00\x01\x2f\x79\x39\x2c"[..]));
        assert_eq!(out.len(), 4 + 3 + 300);
        assert_eq!(written(&["é"]), b"\x00\x00\x00\x04\x7a\x02\xc3\xa9");
        let huge = "x".repeat(300_000);
        let out = written(&[&huge]);
        assert_eq!(out.get(4..10), Some(&b"\x79\x48\x00\x04\x93\xe0"[..]));
        let mid = "x".repeat(5_000);
        assert_eq!(written(&[&mid]).get(4..8), Some(&b"\x79\x44\x13\x88"[..]));
    }

    #[test]
    fn names_the_id() {
        assert_eq!(
            unsupported_reason(6),
            "serialization id 6 is not supported; only Hessian2 (2) and fastjson2 (23) are"
        );
        assert_eq!(unsupported_reason(31).split(' ').nth(2), Some("31"));
        assert_eq!(unsupported_reason(200), UNSUPPORTED_OTHER);
    }
}
