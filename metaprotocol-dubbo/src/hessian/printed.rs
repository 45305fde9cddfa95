//! The text of a Hessian2 value that is no string, for the attachments that carry one: what a
//! Java provider prints for it (`String.valueOf` of what Hessian reads it as) where that is the
//! same on every JVM and host, so that a route's `exact` match on it holds wherever the proxy
//! runs.
//!
//! | value | text |
//! |---|---|
//! | boolean | `true`, `false` |
//! | int, long | decimal, as `Integer.toString`/`Long.toString` |
//! | double | as `Double.toString` (Java 19 and later) prints it: `3000.0`, `0.001`, `1.0E7`, `NaN` |
//! | date | in UTC, as `Instant.toString` prints it: `2026-12-07T02:30:15.250Z` (`Date.toString` prints the JVM's time zone) |
//! | list, array | as `List.toString`: `[gray, blue]`, each item by these rules |
//! | map | as `Map.toString`: `{region=eu, weight=3}`, its entries in the frame's order |
//! | object | its fields as a map, `{id=42, name=acme}`: what Hessian reads it as where its class is unknown (a class's own `toString` prints what it likes) |
//! | null | none (Java reads it as no value); `null` in a list, map or object |
//! | binary | its bytes in base64, `AAEC+/8=` (Java prints `[B@` and an identity hash for a `byte[]`) |
//! | a reference to an earlier list, map or object | that value's text, as Java reads the value itself; in the list or map it names, `(this Collection)` or `(this Map)`, as Java prints it; one that names no earlier value, the empty text |
//!
//! A text is cut at [`MAX_PRINTED_BYTES`], ending in `...`, and the walk over the value stops
//! there: a list of a million items is printed as far as its first hundred or so. References
//! read values a second time: a frame's read at most [`REFERENCE_READ_FACTOR`] times its body
//! (see [`References`]). A value's lists, maps and objects are printed [`MAX_PRINTED_DEPTH`]
//! levels deep, past which its text is cut: so is a cycle of references, which Java cannot
//! print at all.

use std::fmt::{self, Write};

use metaprotocol_core::CodecError;

use super::reader::{Reader, is_string_tag};
use super::skip::{self, Skipper};
use super::{CLASS_DEF, END, NULL, TYPED_MAP, UNTYPED_MAP, text};

/// The longest text printed for a value, in bytes: past it, the text is cut. Enough for the
/// lists and maps a route can match on; a longer value is no routing key.
pub(crate) const MAX_PRINTED_BYTES: usize = 256;

/// How deeply the lists, maps and objects of a value are printed: deeper, its text is cut. The
/// printer walks a value by recursion (a level takes up to about 4 KiB of stack unoptimized,
/// and 64 keep the walk well within a worker thread's stack); attachments are flat maps of
/// strings and numbers, far below it.
const MAX_PRINTED_DEPTH: usize = 64;

/// What ends a text that was cut.
const CUT_MARK: &str = "...";

/// What a value reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueText {
    /// None: the value is null.
    Null,
    /// A constant text (a boolean, or the empty text of a value that is not printed).
    Constant(&'static str),
    /// The text printed into the caller's buffer.
    Printed,
}

/// The text of the value at `at` of `frame`, which a skip already found well formed (a value
/// it did not reads as the empty text), its objects' classes in `classes`; printed into `text`
/// (empty) unless it is a constant.
pub(crate) fn text_of(
    frame: &[u8],
    at: usize,
    classes: &Skipper,
    references: &mut References,
    text: &mut Printed,
) -> ValueText {
    let mut reader = Reader::new(frame, at);
    // The classes a value's definitions define are in `classes` already.
    while reader.peek() == Some(CLASS_DEF) {
        if reader
            .byte()
            .and_then(|_| skip::read_class_def(&mut reader))
            .is_err()
        {
            return ValueText::Constant("");
        }
    }
    match reader.peek() {
        Some(NULL) => return ValueText::Null,
        Some(b'T') => return ValueText::Constant("true"),
        Some(b'F') => return ValueText::Constant("false"),
        // A string that UTF-8 cannot hold (a lone surrogate), or nothing.
        Some(tag) if is_string_tag(tag) => return ValueText::Constant(""),
        None => return ValueText::Constant(""),
        Some(_) => {}
    }
    let mut printer = Printer {
        frame,
        reader,
        classes,
        references,
        following: None,
        text,
    };
    match printer.value(Level::TOP) {
        Ok(()) | Err(Stop::Full) => ValueText::Printed,
        Err(Stop::Malformed) => ValueText::Constant(""),
    }
}

/// The values of a frame that a `Q` reference names, and what following references may still
/// cost the frame. A reference prints as the value it names (a list, map or object that came
/// before it, counted from the body's first value: a call's first argument, a response's
/// result), as Java reads it as that value; one to the list, map or object it is in as Java
/// prints such a one, `(this Collection)` or `(this Map)`. Each reference is a second read of
/// bytes already read once, so all of a frame's together read at most
/// [`REFERENCE_READ_FACTOR`] times its body (and [`REFERENCE_READ_MIN`] bytes however small it
/// is), past which the text is cut.
#[derive(Debug)]
pub(crate) struct References {
    /// Where the body's values start: shared value 0 is the first list, map or object there.
    values_at: usize,
    /// The bytes following references may still read.
    budget: usize,
    /// The last shared value found, and where: a later one is searched for from there.
    found: Option<(u32, usize)>,
}

/// How many times its body a frame's references may read, all together.
const REFERENCE_READ_FACTOR: usize = 4;

/// What a small frame's references may read, all together: enough for a few cycles, which
/// read their values over and over until the text is cut.
const REFERENCE_READ_MIN: usize = 16 * 1024;

impl References {
    /// The references of a frame whose body's values start at `values_at`.
    pub(crate) fn new(frame: &[u8], values_at: usize) -> Self {
        Self {
            values_at,
            budget: (frame.len().saturating_sub(values_at) * REFERENCE_READ_FACTOR)
                .max(REFERENCE_READ_MIN),
            found: None,
        }
    }

    /// Where the value reference `index` names starts, if it starts before `before` (Java
    /// knows no value that comes later) within what the budget still reads.
    fn find(&mut self, frame: &[u8], index: u32, before: usize) -> Option<usize> {
        let (first, from) = match self.found {
            Some((found, at)) if found <= index => (found, at),
            _ => (0, self.values_at),
        };
        let until = before.min(from.saturating_add(self.budget));
        let at = skip::find_shared(frame, from, first, index, until);
        self.charge(at.unwrap_or(until).saturating_sub(from));
        self.found = at.map(|at| (index, at)).or(self.found);
        at
    }

    /// Takes `bytes` read from the budget.
    fn charge(&mut self, bytes: usize) {
        self.budget = self.budget.saturating_sub(bytes);
    }
}

/// Where a value is printed: how deeply nested, and in which list, map or object.
#[derive(Debug, Clone, Copy)]
struct Level {
    /// How many lists, maps and objects it is in.
    depth: usize,
    /// Where the list, map or object the value is in starts.
    container: Option<usize>,
}

impl Level {
    /// The attachment's value itself.
    const TOP: Self = Self {
        depth: 0,
        container: None,
    };

    /// The level of the values in the list, map or object at `at` printed at this level.
    fn inside(self, at: usize) -> Self {
        Self {
            depth: self.depth + 1,
            container: Some(at),
        }
    }
}

/// Why printing stopped before the value's end.
enum Stop {
    /// The text reached [`MAX_PRINTED_BYTES`].
    Full,
    /// The value is not what a skip found well formed.
    Malformed,
}

impl From<fmt::Error> for Stop {
    fn from(_: fmt::Error) -> Self {
        Self::Full
    }
}

impl From<CodecError> for Stop {
    fn from(_: CodecError) -> Self {
        Self::Malformed
    }
}

/// Prints one value of a frame.
struct Printer<'f, 'c> {
    frame: &'f [u8],
    reader: Reader<'f>,
    classes: &'c Skipper,
    references: &'c mut References,
    /// While a referenced value is printed: where the reader's bytes not yet charged to the
    /// references' budget start.
    following: Option<usize>,
    text: &'c mut Printed,
}

impl Printer<'_, '_> {
    /// Prints the value at the reader, with any class definitions before it.
    fn value(&mut self, level: Level) -> Result<(), Stop> {
        // Deeper than a route would match on; or a cycle of references, which Java cannot
        // print at all (its `toString` recurses without end).
        if level.depth > MAX_PRINTED_DEPTH {
            self.text.cut("");
            return Err(Stop::Full);
        }
        let mut at = self.reader.position();
        let mut tag = self.reader.byte()?;
        while tag == CLASS_DEF {
            skip::read_class_def(&mut self.reader)?;
            at = self.reader.position();
            tag = self.reader.byte()?;
        }
        let inner = level.inside(at);
        match tag {
            NULL => self.text.write_str("null")?,
            b'T' => self.text.write_str("true")?,
            b'F' => self.text.write_str("false")?,
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => {
                write_string(self.frame, &mut self.reader, tag, self.text)?;
            }
            0x20..=0x2f | 0x34..=0x37 | b'B' | b'A' => {
                write_binary(self.frame, &mut self.reader, tag, self.text)?;
            }
            0x4a => {
                let millis = i64::from_be_bytes(self.reader.array()?);
                write_instant(self.text, millis)?;
            }
            // Minutes, which Java's Hessian2Input reads as `minutes * 60000L` milliseconds.
            0x4b => {
                let minutes = i32::from_be_bytes(self.reader.array()?);
                write_instant(self.text, i64::from(minutes) * 60_000)?;
            }
            0x51 => {
                let index = u32::try_from(self.reader.int()?).map_err(|_| Stop::Malformed)?;
                self.reference(index, at, level)?;
            }
            0x55 => {
                skip::skip_type(&mut self.reader)?;
                self.list(None, inner)?;
            }
            b'V' => {
                skip::skip_type(&mut self.reader)?;
                let len = self.reader.count()?;
                self.list(Some(len), inner)?;
            }
            0x57 => self.list(None, inner)?,
            0x58 => {
                let len = self.reader.count()?;
                self.list(Some(len), inner)?;
            }
            0x70..=0x77 => {
                skip::skip_type(&mut self.reader)?;
                self.list(Some(usize::from(tag - 0x70)), inner)?;
            }
            0x78..=0x7f => self.list(Some(usize::from(tag - 0x78)), inner)?,
            UNTYPED_MAP => self.map(inner)?,
            TYPED_MAP => {
                skip::skip_type(&mut self.reader)?;
                self.map(inner)?;
            }
            b'O' => {
                let class = usize::try_from(self.reader.int()?).map_err(|_| Stop::Malformed)?;
                self.object(class, inner)?;
            }
            0x60..=0x6f => self.object(usize::from(tag - 0x60), inner)?,
            _ => match number(tag, &mut self.reader)? {
                Number::Integer(value) => write!(self.text, "{value}")?,
                Number::Double(value) => write_java_double(self.text, value)?,
            },
        }
        Ok(())
    }

    /// Prints the value that reference `index`, at `at`, names, at the reference's `level`.
    fn reference(&mut self, index: u32, at: usize, level: Level) -> Result<(), Stop> {
        // What the reader read of a referenced value so far is charged first, so that the
        // budget the value named now may read is what is left.
        if let Some(start) = self.following {
            let position = self.reader.position();
            self.references.charge(position.saturating_sub(start));
            self.following = Some(position);
        }
        let Some(value) = self.references.find(self.frame, index, at) else {
            // Named no value before it, or the budget is spent.
            return self.over_budget(Stop::Malformed);
        };
        if level.container == Some(value) {
            let itself = match self.frame.get(value).copied() {
                Some(0x55..=0x58 | 0x70..=0x7f) => "(this Collection)",
                _ => "(this Map)",
            };
            return self.text.write_str(itself).map_err(Stop::from);
        }
        let within = value.saturating_add(self.references.budget);
        let bounded = self.frame.get(..within).unwrap_or(self.frame);
        let outer = std::mem::replace(&mut self.reader, Reader::new(bounded, value));
        let outer_following = self.following.replace(value);
        let printed = self.value(level);
        // From where the references it holds charged it up to (or its start).
        let uncharged = self.following.unwrap_or(value);
        self.references
            .charge(self.reader.position().saturating_sub(uncharged));
        if matches!(printed, Err(Stop::Malformed)) && self.reader.end() < self.frame.len() {
            // It ran into the end of what the budget reads.
            self.references.budget = 0;
        }
        self.reader = outer;
        self.following = outer_following;
        if self.following.is_some() {
            // The value this reference is in reads on within what is left now.
            let resume = self.reader.position();
            let within = resume.saturating_add(self.references.budget);
            let bounded = self.frame.get(..within).unwrap_or(self.frame);
            self.reader = Reader::new(bounded, resume);
            self.following = Some(resume);
        }
        match printed {
            Err(Stop::Malformed) => self.over_budget(Stop::Malformed),
            other => other,
        }
    }

    /// Stops printing as `stop` says, or cuts the text if the references' budget is spent.
    fn over_budget(&mut self, stop: Stop) -> Result<(), Stop> {
        if self.references.budget > 0 {
            return Err(stop);
        }
        self.text.cut("");
        Err(Stop::Full)
    }

    /// Prints a list's items, `len` of them or up to its `Z`: `[a, b]`.
    fn list(&mut self, len: Option<usize>, level: Level) -> Result<(), Stop> {
        self.text.write_char('[')?;
        let mut index = 0;
        while len.map_or(self.reader.peek() != Some(END), |len| index < len) {
            if index > 0 {
                self.text.write_str(", ")?;
            }
            self.value(level)?;
            index += 1;
        }
        if len.is_none() {
            self.reader.byte()?;
        }
        self.text.write_char(']').map_err(Stop::from)
    }

    /// Prints a map's entries up to its `Z`: `{k=v, k2=v2}`.
    fn map(&mut self, level: Level) -> Result<(), Stop> {
        self.text.write_char('{')?;
        let mut first = true;
        while self.reader.peek() != Some(END) {
            if !first {
                self.text.write_str(", ")?;
            }
            first = false;
            self.value(level)?;
            self.text.write_char('=')?;
            self.value(level)?;
        }
        self.reader.byte()?;
        self.text.write_char('}').map_err(Stop::from)
    }

    /// Prints an object of class `class` as a map of its fields: `{name=value, ...}`.
    fn object(&mut self, class: usize, level: Level) -> Result<(), Stop> {
        let class = self.classes.class(class).ok_or(Stop::Malformed)?;
        let mut names = Reader::new(self.frame, class.names_at as usize);
        self.text.write_char('{')?;
        for field in 0..class.fields {
            if field > 0 {
                self.text.write_str(", ")?;
            }
            let tag = names.byte()?;
            write_string(self.frame, &mut names, tag, self.text)?;
            self.text.write_char('=')?;
            self.value(level)?;
        }
        self.text.write_char('}').map_err(Stop::from)
    }
}

/// Writes the string whose first tag `tag` the reader took, chunk by chunk.
fn write_string(
    frame: &[u8],
    reader: &mut Reader<'_>,
    mut tag: u8,
    out: &mut Printed,
) -> Result<(), Stop> {
    loop {
        let chunk = reader.string_chunk(tag)?;
        text::write_lossy(frame.get(chunk.range).unwrap_or_default(), out)?;
        if chunk.last {
            return Ok(());
        }
        tag = reader.byte()?;
    }
}

/// Writes the binary whose first tag `tag` the reader took in base64 (RFC 4648: the standard
/// alphabet, padded), its chunks joined. Java prints a `byte[]` as `[B@` and an identity hash,
/// which no route can match; base64 is the same on every host, the text binary values take
/// elsewhere (gRPC's `-bin` metadata, JSON), and the most of them the cut keeps (189 bytes).
fn write_binary(
    frame: &[u8],
    reader: &mut Reader<'_>,
    mut tag: u8,
    out: &mut Printed,
) -> Result<(), Stop> {
    // Up to two bytes left over from a chunk, to be encoded with the next chunk's first.
    let mut pending = [0_u8; 3];
    let mut held = 0;
    loop {
        let (range, last) = reader.binary_chunk(tag)?;
        for &byte in frame.get(range).unwrap_or_default() {
            if let Some(slot) = pending.get_mut(held) {
                *slot = byte;
            }
            held += 1;
            if held == pending.len() {
                write_base64_group(out, pending, 3)?;
                held = 0;
            }
        }
        if last {
            break;
        }
        tag = reader.byte()?;
    }
    if held > 0 {
        pending.get_mut(held..).unwrap_or_default().fill(0);
        write_base64_group(out, pending, held)?;
    }
    Ok(())
}

/// Writes the base64 of the first `len` (1 to 3) of `group`, whose other bytes are 0: four
/// characters, `=` standing for those of missing bytes.
fn write_base64_group(out: &mut Printed, group: [u8; 3], len: usize) -> fmt::Result {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bits = u32::from_be_bytes([0, group[0], group[1], group[2]]);
    let mut chars = [b'='; 4];
    for (index, char) in chars.iter_mut().enumerate().take(len + 1) {
        let sextet = (bits >> (18 - 6 * index)) & 0x3f;
        *char = ALPHABET.get(sextet as usize).copied().unwrap_or(b'=');
    }
    out.write_str(std::str::from_utf8(&chars).map_err(|_| fmt::Error)?)
}

/// A number read from the frame.
enum Number {
    Integer(i64),
    Double(f64),
}

/// The number whose tag `tag` the reader took.
fn number(tag: u8, reader: &mut Reader<'_>) -> Result<Number, Stop> {
    let number = match tag {
        0x80..=0xbf => Number::Integer(i64::from(tag) - 0x90),
        0xc0..=0xcf => Number::Integer(((i64::from(tag) - 0xc8) << 8) | i64::from(reader.byte()?)),
        0xd0..=0xd7 => {
            let low = u16::from_be_bytes(reader.array()?);
            Number::Integer(((i64::from(tag) - 0xd4) << 16) | i64::from(low))
        }
        b'I' => Number::Integer(i32::from_be_bytes(reader.array()?).into()),
        0xd8..=0xef => Number::Integer(i64::from(tag) - 0xe0),
        0xf0..=0xff => Number::Integer(((i64::from(tag) - 0xf8) << 8) | i64::from(reader.byte()?)),
        0x38..=0x3f => {
            let low = u16::from_be_bytes(reader.array()?);
            Number::Integer(((i64::from(tag) - 0x3c) << 16) | i64::from(low))
        }
        // A long written in four bytes.
        0x59 => Number::Integer(i32::from_be_bytes(reader.array()?).into()),
        b'L' => Number::Integer(i64::from_be_bytes(reader.array()?)),
        0x5b => Number::Double(0.0),
        0x5c => Number::Double(1.0),
        0x5d => Number::Double(i8::from_be_bytes(reader.array()?).into()),
        0x5e => Number::Double(i16::from_be_bytes(reader.array()?).into()),
        // Thousandths in an int, which Java's Hessian2Input reads as `0.001 * mills`.
        0x5f => Number::Double(0.001 * f64::from(i32::from_be_bytes(reader.array()?))),
        b'D' => Number::Double(f64::from_be_bytes(reader.array()?)),
        _ => return Err(Stop::Malformed),
    };
    Ok(number)
}

/// A printed text, on the stack: at most [`MAX_PRINTED_BYTES`].
pub(crate) type Printed = TextBuffer<MAX_PRINTED_BYTES>;

/// Text on the stack, at most `N` bytes: a write past them keeps what fits before a
/// [`CUT_MARK`] (whole characters), ends the text with it and fails, as does every write after.
#[derive(Debug, Clone)]
pub(crate) struct TextBuffer<const N: usize> {
    bytes: [u8; N],
    len: usize,
    cut: bool,
}

impl<const N: usize> Default for TextBuffer<N> {
    fn default() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
            cut: false,
        }
    }
}

impl<const N: usize> TextBuffer<N> {
    /// The text.
    pub(crate) fn as_str(&self) -> &str {
        // Only whole `str`s are written, and cut at a character's start.
        self.bytes
            .get(..self.len)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }

    /// Ends the text with [`CUT_MARK`], keeping what fits before it of the text and then `s`.
    fn cut(&mut self, s: &str) {
        let keep = N.saturating_sub(CUT_MARK.len());
        let mut kept = self.as_str().len().min(keep);
        while !self.as_str().is_char_boundary(kept) {
            kept -= 1;
        }
        let mut more = keep.saturating_sub(kept).min(s.len());
        while !s.is_char_boundary(more) {
            more -= 1;
        }
        self.len = kept;
        for part in [s.get(..more).unwrap_or_default(), CUT_MARK] {
            if let Some(room) = self.bytes.get_mut(self.len..self.len + part.len()) {
                room.copy_from_slice(part.as_bytes());
                self.len += part.len();
            }
        }
        self.cut = true;
    }
}

impl<const N: usize> Write for TextBuffer<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cut {
            return Err(fmt::Error);
        }
        let end = self.len + s.len();
        match self.bytes.get_mut(self.len..end) {
            Some(room) => {
                room.copy_from_slice(s.as_bytes());
                self.len = end;
                Ok(())
            }
            None => {
                self.cut(s);
                Err(fmt::Error)
            }
        }
    }
}

/// Room for a double's text: `-2.2250738585072014E-308` is the longest.
type DoubleText = TextBuffer<32>;

/// Writes the instant `millis` after 1970 in UTC as Java's `Instant.toString` does:
/// `2026-12-07T02:30:15.250Z`, the milliseconds left out when they are 0, a year past 9999
/// with a `+` and one before 0 with a `-`, each with four digits at least.
fn write_instant(out: &mut impl Write, millis: i64) -> fmt::Result {
    let seconds = millis.div_euclid(1000);
    let millis = millis.rem_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_date(days);
    match year {
        ..0 => write!(out, "-{:04}", year.unsigned_abs())?,
        10_000.. => write!(out, "+{year}")?,
        _ => write!(out, "{year:04}")?,
    }
    write!(
        out,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )?;
    if millis != 0 {
        write!(out, ".{millis:03}")?;
    }
    out.write_char('Z')
}

/// The proleptic Gregorian year, month and day `days` after 1970-01-01 (the days-to-civil
/// computation of Howard Hinnant's `chrono`-compatible date algorithms: eras of 400 years
/// counted from a year starting in March, so that a leap day ends the year).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes `value` as Java's `Double.toString` does (Java 19 and later; older JDKs print some
/// values with more digits): the digits of the decimal that rounds back to the value, is
/// shortest (but of two digits when one would do) and, of those, closest to the value; laid
/// out plainly with at least one fractional digit when 10^-3 <= |value| < 10^7, else as
/// `d.dddE<exponent>`.
pub(crate) fn write_java_double(out: &mut impl Write, value: f64) -> fmt::Result {
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
    let mut scientific = DoubleText::default();
    write!(scientific, "{magnitude:e}")?;
    // Java chooses among the decimals of as many digits (two when one would do) that read
    // back as the value the closest to it, of two the one whose last digit is even: the value
    // rounded to that many digits, which Rust rounds half to even. It reads back unless the
    // value is a power of two, about which what reads back is not symmetric; then the
    // shortest is the one. `4.9E-324` for `Double.MIN_VALUE`, whose shortest is `5E-324`;
    // `1.0594382859262542E15` for the double halfway between it and `...43E15`.
    // Digits after the point: the mantissa's length less its first digit and point.
    let fraction_digits = scientific.as_str().find('e').unwrap_or(0).saturating_sub(2);
    let mut closest = DoubleText::default();
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

    /// The text of the value `bytes` hold, whose classes a skip defined first, as a decoder's.
    fn text(bytes: &[u8]) -> String {
        let mut classes = Skipper::new();
        // A value cut short is printed all the same, from what a skip defined of it.
        let _ = classes.skip_value(&mut Reader::new(bytes, 0));
        let mut printed = Printed::default();
        let mut references = References::new(bytes, 0);
        match text_of(bytes, 0, &classes, &mut references, &mut printed) {
            ValueText::Null => "null".into(),
            ValueText::Constant(text) => text.into(),
            ValueText::Printed => printed.as_str().into(),
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap_or_default())
            .collect()
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

    /// A value skipped to its end however deep it nests is printed to the printer's depth, its
    /// text cut there.
    #[test]
    fn a_value_nested_deeper_than_the_printer_goes_is_cut_there() {
        // Lists of one item, a hundred deep, the innermost holding 0.
        let deep = [vec![0x79; 100], vec![0x90]].concat();
        let levels = "[".repeat(MAX_PRINTED_DEPTH + 1);
        assert_eq!(text(&deep), format!("{levels}..."));
        let shallow = [vec![0x79; 3], vec![0x90]].concat();
        assert_eq!(text(&shallow), "[[[0]]]");
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
        // A reference, a string UTF-8 cannot hold (a lone surrogate).
        for other in [&b"\x51\x90"[..], b"\x03\xed\xa0\x80"] {
            assert_eq!(text(other), "", "{other:02x?}");
        }
        // Cut short: nothing to render.
        assert_eq!(text(b"L\x00\x01"), "");
        assert_eq!(text(b"D\x00"), "");
        assert_eq!(text(b"\x7a\x91"), "");
        assert_eq!(text(b""), "");
    }

    /// Values as dubbo2.js's Hessian writer (hessian.js 2.5.0, `EncoderV2`) wrote them, and
    /// what a route sees: what Java prints for what Hessian reads them as, where that does not
    /// depend on the JVM's host (a date in UTC; a map in the frame's order; an object as a map
    /// of its fields).
    #[test]
    fn dates_lists_maps_and_objects_read_as_java_prints_them_on_any_host() {
        let cases = [
            // new Date(Date.UTC(2026, 11, 7, 2, 30, 15, 250)), in milliseconds
            ("4a000001a24e5667d2", "2026-12-07T02:30:15.250Z"),
            // a whole minute, in minutes
            ("4b01c8e6d6", "2026-12-07T02:30:00Z"),
            // ['gray', 'blue'], [1, 2, 3], []
            ("7a046772617904626c7565", "[gray, blue]"),
            ("7b919293", "[1, 2, 3]"),
            ("78", "[]"),
            // {$class: '[int', $: [1, 2]}: an int[], which Java prints as `[I@` and a hash
            ("72045b696e749192", "[1, 2]"),
            // new Map([['region', 'eu'], ['weight', 3]]), {}
            (
                "4806726567696f6e02657506776569676874935a",
                "{region=eu, weight=3}",
            ),
            ("485a", "{}"),
            // {tags: ['a', 'b'], on: true, none: null}
            (
                "48046e6f6e654e026f6e5404746167737a016101625a",
                "{none=null, on=true, tags=[a, b]}",
            ),
            // {$class: 'demo.Tenant', $: {id: {$class: 'long', $: 42}, name: 'acme'}}
            (
                "430b64656d6f2e54656e616e7492026964046e616d6560f82a0461636d65",
                "{id=42, name=acme}",
            ),
            // two of them in a list: the class defined in the list, used twice
            (
                "7a430b64656d6f2e54656e616e7492026964046e616d656091016160920162",
                "[{id=1, name=a}, {id=2, name=b}]",
            ),
        ];
        // As dubbo-py's (`dubbo.codec.hessian2.encode_object`) wrote them: nine strings in a
        // list of a length, a dict, a namedtuple Point(1, 'y').
        let dubbo_py = [
            (
                "5899016101620163016401650166016701680169",
                "[a, b, c, d, e, f, g, h, i]",
            ),
            (
                "48047a6f6e657a02657502757305726174696f5f000009c40362696749000493e05a",
                "{zone=[eu, us], ratio=2.5, big=300000}",
            ),
            ("4305506f696e74920178017960910179", "{x=1, y=y}"),
        ];
        for (bytes, expected) in cases.into_iter().chain(dubbo_py) {
            assert_eq!(text(&hex(bytes)), expected, "{bytes}");
        }
        // A map's keys and values, a string in chunks, a CESU-8 pair, a typed map by reference.
        let mut chunked = b"M\x90H".to_vec();
        chunked.extend_from_slice(b"R\x00\x02abS\x00\x01c");
        chunked.extend_from_slice(&[0x02, 0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80, b'Z']);
        chunked.extend_from_slice(b"\x5f\x00\x00\x05\xdcZ");
        assert_eq!(text(&chunked), "{{abc=\u{1f600}}=1.5}");
    }

    /// A binary reads as its bytes in base64, as dubbo2.js's Hessian writer (hessian.js 2.5.0)
    /// wrote them: in each of its forms, in a list, and in chunks that end within a group of
    /// three bytes (hessian.js writes chunks of 4,093).
    #[test]
    fn a_binary_reads_as_base64() {
        let cases = [
            // Buffer.from([0, 1, 2, 0xfb, 0xff]), Buffer.alloc(0)
            ("25000102fbff", "AAEC+/8="),
            ("20", ""),
            // Buffer.from('metaprotocol-token-1'), of the medium form
            (
                "34146d65746170726f746f636f6c2d746f6b656e2d31",
                "bWV0YXByb3RvY29sLXRva2VuLTE=",
            ),
            // ['x', Buffer.from([0xff, 0xfe])]
            ("7a017822fffe", "[x, //4=]"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(text(&hex(bytes)), expected, "{bytes}");
        }
        // Two chunks, the first of four bytes: 1 to 6.
        assert_eq!(text(b"A\x00\x04\x01\x02\x03\x04\x22\x05\x06"), "AQIDBAUG");
        // 4,100 bytes i % 251, as hessian.js wrote them: a chunk of 4,093, then one of 7. Cut.
        let mut big = vec![0x41, 0x0f, 0xfd];
        big.extend((0..4093_u32).map(|i| (i % 251) as u8));
        big.push(0x27);
        big.extend((4093..4100_u32).map(|i| (i % 251) as u8));
        let printed = text(&big);
        assert_eq!(printed.len(), MAX_PRINTED_BYTES);
        assert!(printed.starts_with("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUm"));
        assert!(printed.ends_with("t7i5uru8v..."), "{printed}");
    }

    /// A value that comes again in the same map is a reference to it, as hessian.js 2.5.0 wrote
    /// {a: tenant, b: tenant, c: map, d: map, e: list, f: list}: the map is value 0, and each
    /// reference reads as the value it names.
    #[test]
    fn a_reference_reads_as_the_value_it_names() {
        let bytes = concat!(
            "480161430b64656d6f2e54656e616e7492026964046e616d65609101610162519101634806726567",
            "696f6e0265755a0164519201657a9192016651935a",
        );
        assert_eq!(
            text(&hex(bytes)),
            "{a={id=1, name=a}, b={id=1, name=a}, c={region=eu}, d={region=eu}, e=[1, 2], \
             f=[1, 2]}"
        );
    }

    /// A date is printed as Java's `Instant.toString` prints it (Temurin 25.0.3 printed these
    /// for `new Date(millis).toInstant()`), at the ends of the range and of its eras too.
    #[test]
    fn dates_read_as_instants_in_utc() {
        let cases: [(i64, &str); 12] = [
            (0, "1970-01-01T00:00:00Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-999, "1969-12-31T23:59:59.001Z"),
            (951_782_400_000, "2000-02-29T00:00:00Z"),
            (i64::MIN, "-292275055-05-16T16:47:04.192Z"),
            (i64::MAX, "+292278994-08-17T07:12:55.807Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
            (253_402_300_800_000, "+10000-01-01T00:00:00Z"),
            (-62_167_219_200_000, "0000-01-01T00:00:00Z"),
            (-62_167_219_200_001, "-0001-12-31T23:59:59.999Z"),
            (-377_705_116_800_001, "-10000-12-31T23:59:59.999Z"),
            (-2_208_988_800_000, "1900-01-01T00:00:00Z"),
        ];
        for (millis, expected) in cases {
            let bytes = [&[0x4a][..], &millis.to_be_bytes()].concat();
            assert_eq!(text(&bytes), expected, "{millis}");
        }
        // In minutes: the earliest.
        assert_eq!(text(&[0x4b, 0x80, 0, 0, 0]), "-2114-12-08T21:52:00Z");
    }

    /// A text is cut at MAX_PRINTED_BYTES, ending in `...`, at a character's start: a list of a
    /// million items prints its first items, not a million.
    #[test]
    fn a_long_value_is_cut_with_a_mark() {
        let mut million = b"\x58".to_vec();
        million.extend_from_slice(b"I\x00\x0f\x42\x40");
        million.extend(std::iter::repeat_n(0x91, 1_000_000));
        let printed = text(&million);
        assert_eq!(printed.len(), MAX_PRINTED_BYTES);
        assert_eq!(printed, format!("[{}...", "1, ".repeat(84)));
        // A string of two-byte characters, cut within one: the character is left out whole.
        let mut wide = b"\x57\x30\xc8".to_vec();
        wide.extend("é".repeat(200).as_bytes());
        wide.push(b'Z');
        let printed = text(&wide);
        assert_eq!(printed, format!("[{}...", "é".repeat(126)));
        // What fits exactly is not cut.
        let mut exact = b"\x79\x30\xfe".to_vec();
        exact.extend(std::iter::repeat_n(b'x', MAX_PRINTED_BYTES - 2));
        assert_eq!(
            text(&exact),
            format!("[{}]", "x".repeat(MAX_PRINTED_BYTES - 2))
        );
    }
}
