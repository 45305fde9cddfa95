//! The text of a Hessian2 value that is no string: what a Java provider that reads the value
//! as an object prints for it (`String.valueOf`), for the values whose text is cheap and
//! the same on every JVM.
//!
//! | value | text |
//! |---|---|
//! | boolean | `true`, `false` |
//! | int, long | decimal, as `Integer.toString`/`Long.toString` |
//! | double | as `Double.toString` (Java 19 and later) prints it: `3000.0`, `0.001`, `1.0E7`, `NaN` |
//! | null | none: Java reads it as no value |
//! | anything else | the empty text (a date prints in the JVM's time zone, a list or map its elements) |

use std::fmt::{self, Write};

use super::NULL;
use super::reader::Reader;

/// What a value reads as.
#[derive(Debug, Clone)]
pub(crate) enum ScalarText {
    /// None: the value is null.
    Null,
    /// A constant text (a boolean, or the empty text of a value whose text is not rendered).
    Constant(&'static str),
    /// A rendered number.
    Rendered(Rendered),
}

/// The text of a value at `at` of `frame`, which a skip already found well formed (a value cut
/// short reads as the empty text).
pub(crate) fn text_of(frame: &[u8], at: usize) -> ScalarText {
    let mut reader = Reader::new(frame, at);
    let Ok(tag) = reader.byte() else {
        return ScalarText::Constant("");
    };
    let number = match tag {
        NULL => return ScalarText::Null,
        b'T' => return ScalarText::Constant("true"),
        b'F' => return ScalarText::Constant("false"),
        0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => {
            let mut reader = Reader::new(frame, at);
            reader.int().map(i64::from).map(Number::Integer)
        }
        0xd8..=0xef => Ok(Number::Integer(i64::from(tag) - 0xe0)),
        0xf0..=0xff => reader
            .byte()
            .map(|low| Number::Integer(((i64::from(tag) - 0xf8) << 8) | i64::from(low))),
        0x38..=0x3f => reader.array::<2>().map(|low| {
            Number::Integer(((i64::from(tag) - 0x3c) << 16) | i64::from(u16::from_be_bytes(low)))
        }),
        // A long written in four bytes.
        0x59 => reader
            .array()
            .map(|bytes| Number::Integer(i32::from_be_bytes(bytes).into())),
        b'L' => reader
            .array()
            .map(|bytes| Number::Integer(i64::from_be_bytes(bytes))),
        0x5b => Ok(Number::Double(0.0)),
        0x5c => Ok(Number::Double(1.0)),
        0x5d => reader
            .array()
            .map(|bytes| Number::Double(i8::from_be_bytes(bytes).into())),
        0x5e => reader
            .array()
            .map(|bytes| Number::Double(i16::from_be_bytes(bytes).into())),
        // Thousandths in an int, which Java's Hessian2Input reads as `0.001 * mills`.
        0x5f => reader
            .array()
            .map(|bytes| Number::Double(0.001 * f64::from(i32::from_be_bytes(bytes)))),
        b'D' => reader
            .array()
            .map(|bytes| Number::Double(f64::from_be_bytes(bytes))),
        _ => return ScalarText::Constant(""),
    };
    let mut text = Rendered::default();
    let written = match number {
        Ok(Number::Integer(value)) => write!(text, "{value}"),
        Ok(Number::Double(value)) => write_java_double(&mut text, value),
        Err(_) => return ScalarText::Constant(""),
    };
    match written {
        Ok(()) => ScalarText::Rendered(text),
        Err(fmt::Error) => ScalarText::Constant(""),
    }
}

/// A number read from the frame.
enum Number {
    Integer(i64),
    Double(f64),
}

/// The longest text rendered: a double such as `-2.2250738585072014E-308`.
const RENDERED_CAPACITY: usize = 24;

/// A rendered text, on the stack.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rendered {
    bytes: [u8; RENDERED_CAPACITY],
    len: usize,
}

impl Rendered {
    /// The text.
    pub(crate) fn as_str(&self) -> &str {
        // Only whole `str`s are written.
        self.bytes
            .get(..self.len)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }
}

impl Write for Rendered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Writes `value` as Java's `Double.toString` does (Java 19 and later; older JDKs print some
/// values with more digits): the digits of the decimal that rounds back to the value, is
/// shortest (but of two digits when one would do) and, of those, closest to the value; laid
/// out plainly with at least one fractional digit when 10^-3 <= |value| < 10^7, else as
/// `d.dddE<exponent>`.
fn write_java_double(out: &mut Rendered, value: f64) -> fmt::Result {
    if value.is_nan() {
        return out.write_str("NaN");
    }
    if value.is_infinite() {
        return out.write_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    }
    if value == 0.0 {
        return out.write_str(if value.is_sign_negative() {
            "-0.0"
        } else {
            "0.0"
        });
    }
    // Rust's scientific form, `d.ddde-n`: the digits and the exponent to lay out. Rust's are
    // the shortest digits that read back as the value, but not always the closest of those.
    let magnitude = value.abs();
    let mut scientific = Rendered::default();
    write!(scientific, "{magnitude:e}")?;
    // Java chooses among the decimals of as many digits (two when one would do) that read
    // back as the value the closest to it, of two the one whose last digit is even: the value
    // rounded to that many digits, which Rust rounds half to even. It reads back unless the
    // value is a power of two, about which what reads back is not symmetric; then the
    // shortest is the one. `4.9E-324` for `Double.MIN_VALUE`, whose shortest is `5E-324`;
    // `1.0594382859262542E15` for the double halfway between it and `...43E15`.
    // Digits after the point: the mantissa's length less its first digit and point.
    let fraction_digits = scientific.as_str().find('e').unwrap_or(0).saturating_sub(2);
    let mut closest = Rendered::default();
    write!(closest, "{magnitude:.*e}", fraction_digits.max(1))?;
    let (closest_digits, _) = closest.as_str().split_once('e').ok_or(fmt::Error)?;
    // A last zero: the shortest itself, in a longer form.
    if !closest_digits.ends_with('0') && closest.as_str().parse::<f64>() == Ok(magnitude) {
        scientific = closest;
    }
    let (mantissa, exponent) = scientific.as_str().split_once('e').ok_or(fmt::Error)?;
    let exponent: i32 = exponent.parse().map_err(|_| fmt::Error)?;
    let (first, rest) = mantissa.split_at_checked(1).ok_or(fmt::Error)?;
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    if value < 0.0 {
        out.write_char('-')?;
    }
    match usize::try_from(exponent) {
        // 10^-3 <= |value| < 1: `0.00ddd`.
        Err(_) if exponent >= -3 => {
            out.write_str("0.")?;
            for _ in 1..exponent.unsigned_abs() {
                out.write_char('0')?;
            }
            out.write_str(first)?;
            out.write_str(rest)
        }
        // 1 <= |value| < 10^7: the integer digits, zeros up to the point, the fraction.
        Ok(point) if point < 7 => {
            out.write_str(first)?;
            let (integer, fraction) = rest.split_at(point.min(rest.len()));
            out.write_str(integer)?;
            for _ in integer.len()..point {
                out.write_char('0')?;
            }
            out.write_char('.')?;
            out.write_str(if fraction.is_empty() { "0" } else { fraction })
        }
        _ => {
            out.write_str(first)?;
            out.write_char('.')?;
            out.write_str(if rest.is_empty() { "0" } else { rest })?;
            write!(out, "E{exponent}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        match text_of(bytes, 0) {
            ScalarText::Null => "null".into(),
            ScalarText::Constant(text) => text.into(),
            ScalarText::Rendered(text) => text.as_str().into(),
        }
    }

    fn double(value: f64) -> String {
        text(&[&[b'D'][..], &value.to_be_bytes()].concat())
    }

    #[test]
    fn ints_and_longs_in_every_encoding_are_decimal() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x90], "0"),
            (&[0x80], "-16"),
            (&[0xc0, 0x00], "-2048"),
            (&[0xd4, 0x0b, 0xb8], "3000"),
            (b"I\x80\x00\x00\x00", "-2147483648"),
            (&[0xe0], "0"),
            (&[0xd8], "-8"),
            (&[0xef], "15"),
            (&[0xf0, 0x00], "-2048"),
            (&[0xff, 0xff], "2047"),
            (&[0x38, 0x00, 0x00], "-262144"),
            (&[0x3f, 0xff, 0xff], "262143"),
            (&[0x59, 0x80, 0, 0, 0], "-2147483648"),
            (b"L\x80\x00\x00\x00\x00\x00\x00\x00", "-9223372036854775808"),
            (b"L\x00\x00\x00\x00\x00\x00\x0b\xb8", "3000"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(text(bytes), *expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn doubles_read_as_java_prints_them() {
        let compact: &[(&[u8], &str)] = &[
            (&[0x5b], "0.0"),
            (&[0x5c], "1.0"),
            (&[0x5d, 0x80], "-128.0"),
            (&[0x5e, 0x7f, 0xff], "32767.0"),
            (&[0x5f, 0x00, 0x00, 0x05, 0xdc], "1.5"),
            (&[0x5f, 0xff, 0xff, 0xff, 0xff], "-0.001"),
        ];
        for (bytes, expected) in compact {
            assert_eq!(text(bytes), *expected, "{bytes:02x?}");
        }
        // What Java's Double.toString prints for each.
        let cases = [
            (3000.0, "3000.0"),
            (0.5, "0.5"),
            (-1.25, "-1.25"),
            (0.001, "0.001"),
            (0.0001, "1.0E-4"),
            (9_999_999.0, "9999999.0"),
            (10_000_000.0, "1.0E7"),
            (123_456_789.0, "1.23456789E8"),
            (1.0e23, "1.0E23"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0.0"),
            (f64::MAX, "1.7976931348623157E308"),
            (-f64::MIN_POSITIVE, "-2.2250738585072014E-308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (value, expected) in cases {
            assert_eq!(double(value), expected, "{value:?}");
        }
    }

    #[test]
    fn doubles_read_as_java_19_and_later_prints_the_closest_of_the_shortest() {
        // Bits, and what `Double.toString` printed for them on Temurin 25.0.3 (by the spec of
        // Java 19 and later: of the shortest decimals that read back, two digits when one
        // would do, the closest, of two the even).
        let cases: [(u64, &str); 16] = [
            // Double.MIN_VALUE, 4.94...E-324: 5E-324 reads back, 4.9E-324 is closer.
            (0x1, "4.9E-324"),
            // 9.88...E-324: 1E-323 reads back, 9.9E-324 is closer.
            (0x2, "9.9E-324"),
            (0x3, "1.5E-323"),
            (0x7, "3.5E-323"),
            // The largest subnormal and the smallest normal.
            (0x000f_ffff_ffff_ffff, "2.225073858507201E-308"),
            (0x0010_0000_0000_0000, "2.2250738585072014E-308"),
            // 1059438285926254.25 and 26363981746409312.5: halfway between two shortest, the
            // even one.
            (0x430e_1c6d_958d_7b72, "1.0594382859262542E15"),
            (0x42b7_fa57_c450_e950, "2.6363981746409312E13"),
            // Shortest where Java before 19 printed more digits (1.9999999999999998E23 ...).
            (0x44c5_2d02_c7e1_4af6, "2.0E23"),
            (0x447c_7e83_209e_90b2, "8.41E21"),
            (0x44b5_2d02_c7e1_4af6, "1.0E23"),
            (0x7be0_0000_0000_0000, "4.8726570057E288"),
            (0x438f_67ea_69ed_3795, "2.82879384806159E17"),
            (0x3d30_0000_0000_0000, "5.684341886080802E-14"),
            // Each side of 10^-3.
            (0x3f50_624d_d2f1_a9fc, "0.001"),
            (0x3f50_624d_d2f1_a9fb, "9.999999999999998E-4"),
        ];
        for (bits, expected) in cases {
            let value = f64::from_bits(bits);
            assert_eq!(double(value), expected, "{bits:#x}");
            assert_eq!(double(-value), format!("-{expected}"), "{bits:#x}");
        }
    }

    #[test]
    fn other_values_are_null_a_constant_or_empty() {
        assert_eq!(text(b"N"), "null");
        assert_eq!(text(b"T"), "true");
        assert_eq!(text(b"F"), "false");
        for other in [
            &b"H\x01a\x91Z"[..],
            b"\x7a\x91\x92",
            &[0x4a, 0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            assert_eq!(text(other), "", "{other:02x?}");
        }
        // Cut short: nothing to render.
        assert_eq!(text(b"L\x00\x01"), "");
        assert_eq!(text(b"D\x00"), "");
        assert_eq!(text(b""), "");
    }
}
