//! Routable key/values extracted from a frame.
//!
//! A [`Message`](crate::Message) is moved several times on its way through the engine, so its
//! metadata is kept small: each key and value is an eight-byte [`Span`] that points into the
//! frame the codec read it from (the metadata's *source*), into a short table of `'static`
//! strings (well-known keys), into a room for text a codec renders (a number the frame holds in
//! binary: a small one inline, then a heap one that a reused metadata keeps), or into a list of
//! shared strings for anything else. A dozen entries take 192 bytes inline, where a dozen pairs
//! of [`ByteStr`] took 768, and reading or dropping them touches no reference count.

use std::ops::Range;

use bytes::Bytes;
use smallvec::SmallVec;
use thin_vec::ThinVec;

use crate::ByteStr;
use crate::bytestr::{self, AsciiRange};

/// Well-known metadata keys. Codecs use these names so that routes, rate limits and RBAC
/// policies read the same way across protocols.
pub mod keys {
    /// The service or interface being called (Dubbo interface, Thrift multiplexed service name,
    /// bRPC `service_name`).
    pub const SERVICE: &str = "service";
    /// Dubbo's name for the service: the Java interface.
    pub const INTERFACE: &str = "interface";
    /// The method being called.
    pub const METHOD: &str = "method";
    /// The service version (Dubbo).
    pub const VERSION: &str = "version";
    /// The service group (Dubbo).
    pub const GROUP: &str = "group";
}

/// Inline capacity: a typical Dubbo request has 4 header fields and up to 8 attachments.
const INLINE_ENTRIES: usize = 12;

/// The most entries a [`Metadata`] holds: past them it refuses new keys
/// ([`Metadata::overflowed`]), and the engine answers a request whose metadata overflowed with
/// a `BadRequest` local reply. Lookups are linear, so without a bound a frame carrying a
/// million small attachments would cost its decoder a million searches of a growing table.
/// Real messages carry a few dozen at most.
pub const MAX_METADATA_ENTRIES: usize = 256;

/// The most inserts a [`Metadata`] takes, replacements and refusals included: past them it
/// refuses everything ([`Metadata::overflowed`]), as past [`MAX_METADATA_ENTRIES`]. A frame
/// that sets the same key a million times holds no more entries than one that sets it once,
/// but each replacement costs a search, and keeps a copy of a string the frame does not hold
/// as it is (a Hessian string in chunks) until the metadata is reset: without this bound an
/// 8 MiB frame of such repeats held a decoder for half a second and 100 MB of copies. Real
/// messages set each key once or twice.
pub const MAX_METADATA_INSERTS: usize = 4 * MAX_METADATA_ENTRIES;

// An entry's place in `Metadata::indexed` is its index plus one, and the count of inserts, each
// in a `u16`.
const _: () = assert!(MAX_METADATA_ENTRIES < u16::MAX as usize);
const _: () = assert!(MAX_METADATA_INSERTS < u16::MAX as usize);

/// The well-known keys whose entries a [`Metadata`] keeps the places of: the keys that routes
/// match on and that per-method statistics read on every call, found without a search.
const INDEXED_KEYS: [&str; 5] = [
    keys::SERVICE,
    keys::INTERFACE,
    keys::METHOD,
    keys::VERSION,
    keys::GROUP,
];

/// The reason of the `BadRequest` local reply to a request whose metadata overflowed.
pub const METADATA_OVERFLOW_REASON: &str = "more than 256 metadata entries or 1024 inserts";
/// Inline capacity of the static strings other than the [`INDEXED_KEYS`]: constant keys and
/// values a codec or filter sets.
const INLINE_STATICS: usize = 4;

/// Bytes of text that a [`Metadata`] holds inline for values a codec renders rather than finds
/// in its frame ([`Metadata::insert_rendered`]), so that even a new metadata takes them without
/// allocating: a Java `int` takes up to 11, a typical timeout four. What fits the room a
/// message-sized metadata has left beside the pointer to its heap room for more (see
/// `a_message_sized_metadata_stays_small`).
pub const RENDERED_INLINE_BYTES: usize = 18;

/// The most bytes of rendered text a [`Metadata`] keeps room for on the heap across
/// [`Metadata::reset_over`], so that a reused metadata renders a message's numbers without
/// allocating: brpc's three rpcz ids (up to 20 bytes each in decimal), a log id and a timeout
/// take under 100. A longer text is kept as a shared string instead, and a room grown past this
/// is given back at the reset.
const KEPT_RENDERED_BYTES: usize = 256;

/// The most constants ([`MetadataStr::Static`] keys and values other than the well-known keys)
/// a [`Metadata`] keeps heap room for across [`Metadata::reset_over`] once they outgrew the
/// inline room: a brpc call with rpcz ids sets up to six constant keys. More is given back at
/// the reset.
const KEPT_STATICS: usize = 16;

/// A key or value handed to [`Metadata::insert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataStr {
    /// A string compiled into the program: a well-known key, a constant value. Kept by
    /// reference, never copied.
    Static(&'static str),
    /// A shared string. One that is a slice of the metadata's source (see
    /// [`Metadata::over`]) is kept as a span of it; any other is kept as it is.
    Shared(ByteStr),
    /// The text at this range of the metadata's source: what a codec that knows where a string
    /// lies in its frame hands over, without taking a reference to the frame for it. Checked
    /// to be UTF-8 when inserted.
    Source(Range<usize>),
    /// Like [`MetadataStr::Source`], for text the codec found ASCII where it lies
    /// ([`Ascii::ascii_range_in`](crate::Ascii::ascii_range_in) the metadata's source): inserted
    /// without checking its bytes again (a range of another buffer is checked).
    Ascii(AsciiRange),
}

impl From<&'static str> for MetadataStr {
    fn from(s: &'static str) -> Self {
        Self::Static(s)
    }
}

impl From<ByteStr> for MetadataStr {
    fn from(s: ByteStr) -> Self {
        Self::Shared(s)
    }
}

impl From<String> for MetadataStr {
    fn from(s: String) -> Self {
        Self::Shared(ByteStr::from(s))
    }
}

/// Where a key or value lies, in eight bytes: `source[start..start + len]`, entry `start` of
/// the static or shared strings, `len` bytes long, or the rendered text at `start`. The place
/// is kept in the two high bits of `len` (a span of the source is shorter than 1 GiB; a longer
/// string is kept shared instead): one of them for a static or shared string, both for
/// rendered text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

/// The place bits of [`Span::len`].
const STATIC: u32 = 1 << 31;
const SHARED: u32 = 1 << 30;
const RENDERED: u32 = STATIC | SHARED;
const LEN: u32 = SHARED - 1;

/// Where a [`Span`] points.
enum Place {
    Source(Range<usize>),
    Static(usize),
    Shared(usize),
    Rendered(Range<usize>),
}

impl Span {
    fn source(range: Range<usize>) -> Option<Self> {
        let start = u32::try_from(range.start).ok()?;
        let len = u32::try_from(range.len()).ok().filter(|len| *len <= LEN)?;
        Some(Self { start, len })
    }

    /// Entry `index` of a table (`place`), whose string is `len` bytes long: kept, so that a
    /// lookup passes over keys of another length without fetching them (saturated, for a string
    /// of a gigabyte or more, to mean "look").
    fn indexed(place: u32, index: usize, len: usize) -> Self {
        // The tables hold at most one string per insert; four billion inserts do not fit in
        // memory first.
        let start = u32::try_from(index).unwrap_or(u32::MAX);
        let len = u32::try_from(len).map_or(LEN, |len| len.min(LEN));
        Self {
            start,
            len: place | len,
        }
    }

    /// True if the string here may be `len` bytes long.
    fn may_be_len(self, len: usize) -> bool {
        let known = self.len & LEN;
        known as usize == len || known == LEN
    }

    fn place(self) -> Place {
        let start = self.start as usize;
        if self.len & STATIC != 0 {
            // Told apart from a static string only here, so that spans of the source (most
            // keys and values) take no more tests than before rendered text was.
            if self.len & SHARED != 0 {
                Place::Rendered(start..start + (self.len & LEN) as usize)
            } else {
                Place::Static(start)
            }
        } else if self.len & SHARED != 0 {
            Place::Shared(start)
        } else {
            Place::Source(start..start + (self.len & LEN) as usize)
        }
    }
}

/// The routable key/values a codec extracted from one frame.
///
/// Strings that are slices of the frame are kept as spans of it: a codec makes the metadata
/// [`Metadata::over`] its frame, then inserts [`ByteStr`] slices of that frame and `'static`
/// keys, and text it renders ([`Metadata::insert_rendered`]) into a room of its own; building
/// the metadata of an ordinary request does not allocate, nor does rebuilding a reused one.
/// Lookups are linear: real messages carry a handful of keys, where a scan beats hashing, and a
/// metadata holds at most [`MAX_METADATA_ENTRIES`]. The well-known keys routes and statistics
/// read (service, interface, method, version, group) are found without a scan: the metadata
/// keeps where each is. For any other key, a 64-bit summary of the keys held answers most
/// lookups of an absent key (a decoder's insert of each new key) without the scan. Inserting a
/// key that is already present replaces its value, so the last writer wins.
#[derive(Clone, Default)]
pub struct Metadata {
    /// The frame that spans point into.
    source: Bytes,
    entries: SmallVec<[(Span, Span); INLINE_ENTRIES]>,
    /// Constants kept by reference: the static table's entries after the [`INDEXED_KEYS`] (see
    /// `Metadata::static_str`). An indexed key inserted as a constant is its entry of the table,
    /// not kept here.
    statics: SmallVec<[&'static str; INLINE_STATICS]>,
    /// Strings that are not slices of the source: rare, so a `ThinVec`, which an empty
    /// metadata (every message the engine recycles) drops with a pointer compare.
    shared: ThinVec<ByteStr>,
    /// Text a codec rendered ([`Metadata::insert_rendered`]), UTF-8: `rendered_len` bytes in
    /// use. Inline, so that a value such as dubbo2.js's int `timeout` costs no allocation.
    rendered: [u8; RENDERED_INLINE_BYTES],
    rendered_len: u8,
    /// Rendered text past the inline room, at places [`RENDERED_INLINE_BYTES`] and on: a
    /// `ThinVec`, one pointer, whose allocation is kept across resets (up to
    /// [`KEPT_RENDERED_BYTES`]), so that a reused metadata renders brpc's rpcz ids without
    /// allocating.
    rendered_heap: ThinVec<u8>,
    /// One bit for each [`key_bit`] of the keys held (and of keys removed since: a stale bit
    /// only costs a search). A key whose bit is clear is absent without a search, which is what
    /// a decoder's every insert of a new key asks. The [`INDEXED_KEYS`] have no bit: they
    /// are found through `indexed`.
    key_bits: u64,
    /// For each of the [`INDEXED_KEYS`], the index of its entry plus one; 0 while absent.
    /// Exact whatever way the key was inserted (a constant, a span of the source, a shared
    /// string): every entry whose key has the bytes of an indexed key is here.
    indexed: [u16; INDEXED_KEYS.len()],
    /// Inserts taken, up to [`MAX_METADATA_INSERTS`], which it is set to when the metadata
    /// overflows for lack of room.
    inserts: u16,
    /// Set once an insert was refused for lack of room or past [`MAX_METADATA_INSERTS`]; from
    /// then on every insert is.
    overflowed: bool,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty metadata whose strings may be slices of `source` (normally the frame they are
    /// decoded from), kept as spans of it.
    pub fn over(source: Bytes) -> Self {
        Self {
            source,
            ..Self::default()
        }
    }

    /// Makes this what [`Metadata::over`] returns for `source`, in place. Entries that had
    /// outgrown the inline room give their allocation back: metadata kept for reuse holds little
    /// more memory than new metadata, the heap room of up to 16 constants and 256 bytes of
    /// rendered text, which a codec that sets many constants or renders long numbers (brpc's
    /// rpcz ids) would otherwise allocate for every message.
    #[inline]
    pub fn reset_over(&mut self, source: Bytes) {
        // Every field named: a field added to `Metadata` is one this must reset.
        let Self {
            source: old_source,
            entries,
            statics,
            shared,
            rendered: _,
            rendered_len,
            rendered_heap,
            key_bits,
            indexed,
            inserts,
            overflowed,
        } = self;
        *old_source = source;
        if entries.spilled() {
            *entries = SmallVec::new();
        } else {
            entries.clear();
        }
        if statics.capacity() > KEPT_STATICS {
            *statics = SmallVec::new();
        } else {
            statics.clear();
        }
        *shared = ThinVec::new();
        // The bytes need no clearing: only spans below the length are read.
        *rendered_len = 0;
        // Most metadata never renders past the inline room: its heap room is the empty
        // singleton, which needs nothing.
        if !rendered_heap.is_empty() {
            if rendered_heap.capacity() > KEPT_RENDERED_BYTES {
                *rendered_heap = ThinVec::new();
            } else {
                rendered_heap.clear();
            }
        }
        *key_bits = 0;
        *indexed = [0; INDEXED_KEYS.len()];
        *inserts = 0;
        *overflowed = false;
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key. False, and nothing
    /// set, when either is a [`MetadataStr::Source`] range (or a [`MetadataStr::Ascii`] one of
    /// another buffer) that is not UTF-8 text of the source, or when the metadata has
    /// [`overflowed`](Metadata::overflowed): `key` is new and it already holds
    /// [`MAX_METADATA_ENTRIES`], it has taken [`MAX_METADATA_INSERTS`], or an earlier insert
    /// was refused for either reason. Refusing every insert after the first refusal keeps a
    /// decoder that meets a flood of entries linear: it costs each of them a check, not a
    /// search.
    #[inline]
    pub fn insert(&mut self, key: impl Into<MetadataStr>, value: impl Into<MetadataStr>) -> bool {
        let key = key.into();
        // What decoders insert most: a well-known key as a constant, which is its own entry of
        // the static table. Told apart here, inlined where the constant is known, the slot is
        // the compiler's work, not the call's.
        let constant_slot = match &key {
            MetadataStr::Static(s) => indexed_slot(s.as_bytes()),
            _ => None,
        };
        match constant_slot {
            Some(slot) => self.insert_at_slot(slot, value.into()),
            None => self.insert_key(key, value.into()),
        }
    }

    /// Sets `key` to `value`, a text the codec rendered rather than found in the source (an
    /// attachment's number in decimal), as [`Metadata::insert`] does. The text is copied into
    /// the metadata's inline room for such text ([`RENDERED_INLINE_BYTES`] in all, until the
    /// metadata is reset), then into its heap room, which a reset keeps (an allocation only
    /// while the room grows: once for a metadata reused message after message); a text longer
    /// than 256 bytes is kept as a shared string. False, and nothing set, as for
    /// [`Metadata::insert`].
    pub fn insert_rendered(&mut self, key: impl Into<MetadataStr>, value: &str) -> bool {
        if !self.admit() {
            return false;
        }
        // The key first: it is the one that may be refused, and a refusal after the value was
        // kept would leave its text in the room for nothing.
        let Some(key) = self.store(key.into()) else {
            return false;
        };
        let value = self.keep_rendered(value);
        let lookup = KeyLookup::of(self.bytes(key));
        self.set(key, lookup, value)
    }

    /// Keeps `text` in the room for rendered text: inline while it fits, then on the heap, or
    /// shared when it is longer than the heap room is kept for.
    fn keep_rendered(&mut self, text: &str) -> Span {
        let start = usize::from(self.rendered_len);
        let end = start + text.len();
        if let Some(room) = self.rendered.get_mut(start..end) {
            room.copy_from_slice(text.as_bytes());
            // `end` is within the room, which is shorter than 256 bytes.
            self.rendered_len = end as u8;
            return Span::indexed(RENDERED, start, text.len());
        }
        if text.len() > KEPT_RENDERED_BYTES {
            return self.share(ByteStr::copy_from_str(text));
        }
        // The heap room holds at most `MAX_METADATA_INSERTS` texts this short: its places fit
        // a span's.
        let start = RENDERED_INLINE_BYTES + self.rendered_heap.len();
        self.rendered_heap.extend_from_slice(text.as_bytes());
        Span::indexed(RENDERED, start, text.len())
    }

    /// The rendered text at `range` of the room: inline, or on the heap past the inline room.
    fn rendered_bytes(&self, range: Range<usize>) -> &[u8] {
        match range.start.checked_sub(RENDERED_INLINE_BYTES) {
            None => self.rendered.get(range),
            Some(start) => self.rendered_heap.get(start..start + range.len()),
        }
        .unwrap_or_default()
    }

    /// [`Metadata::insert`] of the indexed key in `slot` of [`INDEXED_KEYS`], as a constant.
    fn insert_at_slot(&mut self, slot: usize, value: MetadataStr) -> bool {
        if !self.admit() {
            return false;
        }
        let Some(value) = self.store(value) else {
            return false;
        };
        let key = Span::indexed(STATIC, slot, INDEXED_KEYS[slot].len());
        self.set(key, KeyLookup::Indexed(slot), value)
    }

    /// [`Metadata::insert`] of any key but an indexed one as a constant.
    fn insert_key(&mut self, key: MetadataStr, value: MetadataStr) -> bool {
        if !self.admit() {
            return false;
        }
        // The value first: it is the one that may be refused (a range that is not text), and a
        // refusal after the key was kept would leave the key in its table for nothing.
        let Some(value) = self.store(value) else {
            return false;
        };
        let Some(key) = self.store(key) else {
            return false;
        };
        let lookup = KeyLookup::of(self.bytes(key));
        self.set(key, lookup, value)
    }

    /// Counts an insert; false, and the metadata overflowed, once it has taken
    /// [`MAX_METADATA_INSERTS`] or overflowed already (which counts it as having taken them:
    /// one comparison tells both).
    #[inline(always)]
    fn admit(&mut self) -> bool {
        if usize::from(self.inserts) >= MAX_METADATA_INSERTS {
            self.overflowed = true;
            return false;
        }
        self.inserts += 1;
        true
    }

    /// Sets the stored `key`, found as `lookup` says, to the stored `value`.
    #[inline(always)]
    fn set(&mut self, key: Span, lookup: KeyLookup, value: Span) -> bool {
        // As `find_as`, but the key's bytes are fetched only for a search.
        let held = match lookup {
            KeyLookup::Indexed(slot) => self.indexed_entry(slot),
            KeyLookup::Other(bit) if self.key_bits & bit == 0 => None,
            KeyLookup::Other(_) => self.search(self.bytes(key)),
        };
        match held {
            Some(index) => self.entries[index].1 = value,
            None if self.entries.len() >= MAX_METADATA_ENTRIES => {
                self.overflowed = true;
                // Every insert from now on is refused by `admit` alone. The bound fits a `u16`
                // (asserted above).
                self.inserts = MAX_METADATA_INSERTS as u16;
                return false;
            }
            None => {
                match lookup {
                    // Below `MAX_METADATA_ENTRIES`, which fits a `u16` (asserted above).
                    KeyLookup::Indexed(slot) => {
                        self.indexed[slot] = self.entries.len() as u16 + 1;
                    }
                    KeyLookup::Other(bit) => self.key_bits |= bit,
                }
                self.entries.push((key, value));
            }
        }
        true
    }

    /// The entry of the indexed key in `slot` of [`INDEXED_KEYS`], if present.
    #[inline]
    fn indexed_entry(&self, slot: usize) -> Option<usize> {
        self.indexed[slot].checked_sub(1).map(usize::from)
    }

    /// True once an insert was refused because the metadata was full
    /// ([`MAX_METADATA_ENTRIES`]) or had taken [`MAX_METADATA_INSERTS`]: the message carries
    /// entries its metadata does not show.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Keeps `text` where it takes least (as a span of the source when it lies in it) and
    /// returns where it is; `None` for a source range that is not UTF-8 text of the source.
    // Inlined into the inserts, its only callers: the text is matched where it was built
    // rather than passed through memory (with `same_bytes`, Dubbo's request decode went from
    // 5,382 to 5,132 instructions by `decode_cost`).
    #[inline(always)]
    fn store(&mut self, text: MetadataStr) -> Option<Span> {
        match text {
            MetadataStr::Static(s) => {
                // The same constant is the same reference: no bytes compared.
                let index = match self
                    .statics
                    .iter()
                    .position(|known| std::ptr::eq(*known, s))
                {
                    Some(index) => index,
                    None => {
                        self.statics.push(s);
                        self.statics.len() - 1
                    }
                };
                Some(Span::indexed(STATIC, INDEXED_KEYS.len() + index, s.len()))
            }
            MetadataStr::Shared(s) => Some(match self.source_range(&s).and_then(Span::source) {
                Some(span) => span,
                None => self.share(s),
            }),
            MetadataStr::Source(range) => self.source_text(range),
            MetadataStr::Ascii(AsciiRange { range, buf }) => {
                if buf == self.source.as_ptr() as usize && range.end <= self.source.len() {
                    Some(self.source_span(range))
                } else {
                    self.source_text(range)
                }
            }
        }
    }

    /// Where the text at `range` of the source is kept; `None` if it is not UTF-8 text of the
    /// source.
    // Inlined into `store` (as `store` is into `insert`): outlined, these two calls cost Dubbo's
    // request decode more than the check that `MetadataStr::Ascii` saves.
    #[inline(always)]
    fn source_text(&mut self, range: Range<usize>) -> Option<Span> {
        if !self.source.get(range.clone()).is_some_and(bytestr::is_text) {
            return None;
        }
        Some(self.source_span(range))
    }

    /// Where the text at `range` of the source, known to be UTF-8, is kept.
    #[inline(always)]
    fn source_span(&mut self, range: Range<usize>) -> Span {
        match Span::source(range.clone()) {
            Some(span) => span,
            None => self.share_source(range),
        }
    }

    /// Keeps the text at `range` of the source, too long for a span, as a shared slice.
    #[cold]
    fn share_source(&mut self, range: Range<usize>) -> Span {
        let text = ByteStr::from_utf8(self.source.slice(range)).unwrap_or_default();
        self.share(text)
    }

    fn share(&mut self, text: ByteStr) -> Span {
        let len = text.len();
        self.shared.push(text);
        Span::indexed(SHARED, self.shared.len() - 1, len)
    }

    /// Where `s` lies in the source, if it is a slice of it.
    fn source_range(&self, s: &ByteStr) -> Option<Range<usize>> {
        if s.is_empty() {
            return None;
        }
        bytestr::locate(s, &self.source)
    }

    /// Entry `index` of the static strings: the [`INDEXED_KEYS`], then `statics`.
    fn static_str(&self, index: usize) -> &'static str {
        match index.checked_sub(INDEXED_KEYS.len()) {
            None => INDEXED_KEYS[index],
            Some(index) => self.statics.get(index).copied().unwrap_or_default(),
        }
    }

    /// The bytes `span` points at (valid UTF-8: only strings are stored).
    fn bytes(&self, span: Span) -> &[u8] {
        match span.place() {
            Place::Source(range) => self.source.get(range).unwrap_or_default(),
            Place::Static(index) => self.static_str(index).as_bytes(),
            Place::Shared(index) => self.shared.get(index).map_or(&[], ByteStr::as_bytes),
            Place::Rendered(range) => self.rendered_bytes(range),
        }
    }

    /// The string `span` points at.
    fn text(&self, span: Span) -> &str {
        match span.place() {
            Place::Static(index) => self.static_str(index),
            Place::Shared(index) => self.shared.get(index).map_or("", ByteStr::as_str),
            // Only UTF-8 is ever stored, so this never falls back.
            Place::Source(_) | Place::Rendered(_) => {
                std::str::from_utf8(self.bytes(span)).unwrap_or_default()
            }
        }
    }

    /// The string `span` points at, shared without a copy.
    fn shared_text(&self, span: Span) -> ByteStr {
        match span.place() {
            Place::Source(range) if range.end <= self.source.len() => {
                ByteStr::from_utf8(self.source.slice(range)).unwrap_or_default()
            }
            Place::Source(_) => ByteStr::default(),
            Place::Static(index) => ByteStr::from_static(self.static_str(index)),
            Place::Shared(index) => self.shared.get(index).cloned().unwrap_or_default(),
            // Read far less often than inserted (a log line's, a script's value): the copy is
            // made only when asked for.
            Place::Rendered(_) => ByteStr::copy_from_str(self.text(span)),
        }
    }

    /// The entry whose key is `key`.
    #[inline]
    fn find(&self, key: &[u8]) -> Option<usize> {
        self.find_as(KeyLookup::of(key), key)
    }

    /// The entry whose key is `key`, told apart by `lookup`: where the index says for an
    /// indexed key, else none, without a search, when its bit is clear.
    #[inline]
    fn find_as(&self, lookup: KeyLookup, key: &[u8]) -> Option<usize> {
        match lookup {
            KeyLookup::Indexed(slot) => self.indexed_entry(slot),
            KeyLookup::Other(bit) if self.key_bits & bit == 0 => None,
            KeyLookup::Other(_) => self.search(key),
        }
    }

    /// The entry whose key is `key` (not an indexed key), by a scan. Most keys differ in
    /// length, which a span knows without looking at bytes.
    fn search(&self, key: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|(k, _)| k.may_be_len(key.len()) && same_bytes(self.bytes(*k), key))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_bytes(key.as_bytes())
    }

    /// The value of the key whose bytes are `key`, if present.
    pub fn get_bytes(&self, key: &[u8]) -> Option<&str> {
        let index = self.find(key)?;
        Some(self.text(self.entries[index].1))
    }

    /// The bytes of the value of `key` (UTF-8, not checked again), if present: what matching
    /// and hashing read. Inlined, so that a constant key is told apart where it is known.
    #[inline]
    pub fn value_bytes(&self, key: &str) -> Option<&[u8]> {
        let index = self.find(key.as_bytes())?;
        Some(self.bytes(self.entries[index].1))
    }

    /// [`Metadata::value_bytes`] of a key resolved beforehand.
    pub fn value_bytes_of(&self, key: &MetadataKey) -> Option<&[u8]> {
        let index = self.find_as(key.lookup, key.name.as_bytes())?;
        Some(self.bytes(self.entries[index].1))
    }

    /// The value of `key` as a [`ByteStr`] sharing the frame's storage (no copy), if present.
    pub fn get_shared(&self, key: &str) -> Option<ByteStr> {
        let index = self.find(key.as_bytes())?;
        Some(self.shared_text(self.entries[index].1))
    }

    /// True if `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.find(key.as_bytes()).is_some()
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<ByteStr> {
        let index = self.find(key.as_bytes())?;
        let (_, value) = self.entries.remove(index);
        // The entries after it moved down by one; the removed one is gone.
        let removed = index as u16 + 1;
        for place in &mut self.indexed {
            if *place == removed {
                *place = 0;
            } else if *place > removed {
                *place -= 1;
            }
        }
        Some(self.shared_text(value))
    }

    /// Removes `key`, as a decoder does when its frame sets the key again to no value (a Dubbo
    /// attachment sent again as null, which replaces its earlier value). Counted as an insert,
    /// so that a frame repeating it costs its decoder a check past [`MAX_METADATA_INSERTS`],
    /// not a search. False, and nothing removed, once the metadata has
    /// [`overflowed`](Metadata::overflowed).
    pub fn unset(&mut self, key: &str) -> bool {
        if !self.admit() {
            return false;
        }
        self.remove(key);
        true
    }

    /// All entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(k, v)| (self.text(*k), self.text(*v)))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A metadata key resolved once for many lookups (a route's condition, a hash policy's key):
/// which of the well-known keys it is, or else its bit of a metadata's summary of keys, so that
/// a lookup skips telling it apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataKey {
    name: Box<str>,
    lookup: KeyLookup,
}

impl MetadataKey {
    /// The key `name`, resolved.
    pub fn new(name: &str) -> Self {
        Self {
            lookup: KeyLookup::of(name.as_bytes()),
            name: name.into(),
        }
    }

    /// The key's name.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

/// How a key is found: through the index of the well-known keys, or by its bit and a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyLookup {
    /// The [`INDEXED_KEYS`] entry in this slot.
    Indexed(usize),
    /// Any other key, with this [`key_bit`].
    Other(u64),
}

impl KeyLookup {
    #[inline]
    fn of(key: &[u8]) -> Self {
        match indexed_slot(key) {
            Some(slot) => Self::Indexed(slot),
            None => Self::Other(key_bit(key)),
        }
    }
}

/// The bit of [`Metadata::key_bits`] that stands for `key`: of its length and last byte, which
/// tell the well-known keys and common attachments apart (`service`, `version` and `timeout` are
/// all seven bytes long).
#[inline]
fn key_bit(key: &[u8]) -> u64 {
    let last = key.last().map_or(0, |&byte| usize::from(byte));
    1 << ((key.len().wrapping_mul(7) ^ last) & 63)
}

/// Which of the [`INDEXED_KEYS`] `key` is, if any: told apart by length (and the first byte
/// of the two seven bytes long), then compared once.
#[inline]
fn indexed_slot(key: &[u8]) -> Option<usize> {
    let slot = match (key.len(), key.first()) {
        (7, Some(b's')) => 0,
        (9, _) => 1,
        (6, _) => 2,
        (7, _) => 3,
        (5, _) => 4,
        _ => return None,
    };
    same_bytes(key, INDEXED_KEYS[slot].as_bytes()).then_some(slot)
}

/// `a == b`, for keys: metadata keys are short, where comparing two overlapping words each
/// beats calling `memcmp`.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn ends<const N: usize>(s: &[u8]) -> Option<(&[u8; N], &[u8; N])> {
        s.first_chunk().zip(s.last_chunk())
    }
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        4..8 => ends::<4>(a) == ends::<4>(b),
        8..=16 => ends::<8>(a) == ends::<8>(b),
        _ => a == b,
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Metadata {}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<MetadataStr>, V: Into<MetadataStr>> FromIterator<(K, V)> for Metadata {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut metadata = Self::new();
        for (k, v) in iter {
            metadata.insert(k, v);
        }
        metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_sees_every_differing_byte_in_any_length() {
        for len in 0..40usize {
            let key: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_bytes(&key, &key.clone()), "{len}");
            if let Some(shorter) = len.checked_sub(1) {
                assert!(!same_bytes(&key, &key[..shorter]), "{len}");
            }
            for at in 0..len {
                let mut other = key.clone();
                other[at] ^= 0x20;
                assert!(!same_bytes(&key, &other), "{len} {at}");
            }
        }
    }

    /// More constants than a reset keeps room for: each its own `'static` string.
    const MANY_CONSTANTS: [&str; KEPT_STATICS + 1] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q",
    ];

    #[test]
    fn reset_metadata_is_new_metadata_and_gives_back_what_outgrew_the_inline_room() {
        let earlier = Bytes::from_static(b"an earlier frame");
        let mut m = Metadata::over(earlier);
        for value in MANY_CONSTANTS {
            m.insert(value, value);
        }
        for n in 0..=KEPT_RENDERED_BYTES / 20 {
            m.insert_rendered(format!("n{n}"), "-1152921504606846976");
        }
        for key in 0..=MAX_METADATA_ENTRIES {
            m.insert(format!("key-{key}"), "value");
        }
        assert!(m.overflowed() && m.entries.spilled() && m.statics.spilled());
        assert!(!m.shared.is_empty() && m.key_bits != 0);
        assert!(m.rendered_heap.capacity() > KEPT_RENDERED_BYTES);

        let frame = Bytes::from_static(b"a new frame");
        m.reset_over(frame.clone());
        assert!(!m.entries.spilled() && !m.statics.spilled() && m.shared.capacity() == 0);
        assert_eq!(m.rendered_heap.capacity(), 0);
        assert_eq!(
            format!("{m:?}"),
            format!("{:?}", Metadata::over(frame.clone()))
        );
        assert!(!m.overflowed() && m.key_bits == 0 && m.is_empty());
        assert!(m.insert(MetadataStr::Source(0..1), "new"));
        assert_eq!(m.get("a"), Some("new"), "spans point into the new source");
        assert!(!m.contains("key-0"));
    }

    /// A metadata reused for message after message keeps the heap room its constants and
    /// rendered text took (brpc's six constant keys and rpcz ids): rebuilding the same
    /// metadata does not allocate again.
    #[test]
    fn reset_keeps_a_small_heap_room_for_constants_and_rendered_text() {
        let mut m = Metadata::new();
        let build = |m: &mut Metadata| {
            for key in &MANY_CONSTANTS[..6] {
                assert!(m.insert_rendered(*key, "-6917529027641081856"));
            }
        };
        build(&mut m);
        assert!(m.statics.spilled() && !m.rendered_heap.is_empty());
        let rooms = (m.statics.as_ptr(), m.rendered_heap.as_ptr());
        m.reset_over(Bytes::new());
        assert!(m.is_empty() && m.rendered_heap.is_empty());
        build(&mut m);
        assert_eq!((m.statics.as_ptr(), m.rendered_heap.as_ptr()), rooms);
        assert_eq!(m.get("f"), Some("-6917529027641081856"));
    }

    #[test]
    fn unset_removes_and_counts_as_an_insert() {
        let mut m = Metadata::new();
        assert!(m.insert("a", "1") && m.insert("b", "2"));
        assert!(m.unset("a") && m.unset("never-set"));
        assert_eq!(m.iter().collect::<Vec<_>>(), [("b", "2")]);
        for _ in 4..MAX_METADATA_INSERTS {
            assert!(m.unset("a"));
        }
        assert!(
            !m.unset("b") && m.overflowed(),
            "past the inserts it may take"
        );
        assert_eq!(m.get("b"), Some("2"));
    }

    #[test]
    fn insert_replaces_and_remove_removes() {
        let mut m = Metadata::new();
        m.insert("a", "1");
        m.insert("b", ByteStr::from("2".to_owned()));
        m.insert(ByteStr::from("a".to_owned()), "3");
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a"), Some("3"));
        assert_eq!(m.remove("a").map(|v| v.to_string()), Some("3".to_owned()));
        assert!(!m.contains("a"));
        assert_eq!(m.get_shared("b").as_ref().map(ByteStr::as_str), Some("2"));
        assert_eq!(m.iter().collect::<Vec<_>>(), [("b", "2")]);
    }

    #[test]
    fn a_resolved_key_finds_what_its_name_finds() {
        let frame = Bytes::from_static(b"xtenant:t1");
        let mut m = Metadata::over(frame.clone());
        m.insert(keys::METHOD, "echo");
        m.insert(ByteStr::from("service".to_owned()), "svc");
        m.insert(MetadataStr::Source(1..7), MetadataStr::Source(8..10));
        m.insert("timeout", "3000");
        for name in [
            "method", "service", "version", "tenant", "timeout", "path", "", "tenanT",
        ] {
            let key = MetadataKey::new(name);
            assert_eq!(key.as_str(), name);
            assert_eq!(m.value_bytes_of(&key), m.value_bytes(name), "{name}");
        }
        assert_eq!(
            m.value_bytes_of(&MetadataKey::new("tenant")),
            Some(&b"t1"[..])
        );
        m.remove("tenant");
        assert_eq!(m.value_bytes_of(&MetadataKey::new("tenant")), None);
        assert_eq!(
            m.value_bytes_of(&MetadataKey::new("timeout")),
            Some(&b"3000"[..])
        );
    }

    #[test]
    fn each_indexed_key_has_its_own_slot_and_no_other_key_has_one() {
        for (slot, key) in INDEXED_KEYS.iter().enumerate() {
            assert_eq!(indexed_slot(key.as_bytes()), Some(slot), "{key}");
            for at in 0..key.len() {
                let mut other = key.as_bytes().to_vec();
                other[at] ^= 0x20;
                assert_eq!(indexed_slot(&other), None, "{key} {at}");
            }
        }
        for other in [
            "",
            "path",
            "methods",
            "servic",
            "versions",
            "xersion",
            "interfacE",
        ] {
            assert_eq!(indexed_slot(other.as_bytes()), None, "{other}");
        }
    }

    /// An indexed key is found where it is however it was inserted, and stays found as the
    /// entries before it are removed.
    #[test]
    fn indexed_keys_are_found_after_inserts_of_any_kind_and_removals() {
        let frame = Bytes::from_static(b"method=echo;tenant=t1;version=2");
        let mut m = Metadata::over(frame);
        assert!(m.insert("tenant", "t1"));
        assert!(m.insert(MetadataStr::Source(0..6), MetadataStr::Source(7..11)));
        assert!(m.insert(MetadataStr::Source(22..29), MetadataStr::Source(30..31)));
        assert!(
            m.insert(keys::METHOD, "ping"),
            "the same key, as a constant"
        );
        assert!(m.insert(ByteStr::from("version".to_owned()), "3"));
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m.get(keys::METHOD), m.get(keys::VERSION)),
            (Some("ping"), Some("3"))
        );
        assert_eq!(
            m.remove("tenant").map(|v| v.to_string()),
            Some("t1".to_owned())
        );
        assert_eq!(
            (m.get(keys::METHOD), m.get(keys::VERSION)),
            (Some("ping"), Some("3"))
        );
        assert_eq!(
            m.remove(keys::METHOD).map(|v| v.to_string()),
            Some("ping".to_owned())
        );
        assert_eq!(
            (m.get(keys::METHOD), m.get(keys::VERSION)),
            (None, Some("3"))
        );
        assert!(m.insert(keys::METHOD, "pong"));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("version", "3"), ("method", "pong")]
        );
        assert!(m.remove(keys::SERVICE).is_none() && m.get(keys::GROUP).is_none());
    }

    #[test]
    fn keys_of_one_bit_are_told_apart_by_their_bytes() {
        assert_eq!(key_bit(b"service"), key_bit(b"xervice"));
        let mut m = Metadata::new();
        m.insert("service", "a");
        assert_eq!(m.get("xervice"), None);
        m.insert("xervice", "b");
        m.remove("service");
        assert_eq!((m.get("service"), m.get("xervice")), (None, Some("b")));
        m.insert("service", "c");
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("xervice", "b"), ("service", "c")]
        );
    }

    /// Lookups checked against a plain list of pairs.
    mod against_a_list {
        use proptest::prelude::*;

        use super::super::{INDEXED_KEYS, Metadata};

        /// What a metadata is asked.
        #[derive(Clone, Debug)]
        enum Op {
            Insert(usize, u8),
            /// An indexed key inserted as a constant, as decoders do.
            InsertConstant(usize, u8),
            Remove(usize),
        }

        /// Keys that share bits (`service`, `xervice`), keys that do not, the indexed keys and
        /// keys of their lengths, more of them than the inline room holds.
        fn test_key(n: usize) -> String {
            match n % 6 {
                0 => format!("service{}", n / 6),
                1 => format!("xervice{}", n / 6),
                2 => "service".to_owned() + &"e".repeat(n / 6),
                3 => INDEXED_KEYS[n / 6 % INDEXED_KEYS.len()].to_owned(),
                4 => INDEXED_KEYS[n / 6 % INDEXED_KEYS.len()].replace('e', "a"),
                _ => format!("k{n}"),
            }
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..48usize, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
                1 => (0..INDEXED_KEYS.len(), any::<u8>())
                    .prop_map(|(k, v)| Op::InsertConstant(k, v)),
                1 => (0..48usize).prop_map(Op::Remove),
            ]
        }

        /// Sets `key` in the list of pairs: a new value in place, or a new pair last.
        fn set(list: &mut Vec<(String, String)>, key: String, value: String) {
            match list.iter_mut().find(|(held, _)| *held == key) {
                Some(entry) => entry.1 = value,
                None => list.push((key, value)),
            }
        }

        proptest! {
            /// Whatever was inserted and removed, in any order, every lookup agrees with a
            /// list of pairs (the last value of each key, in first-insert order): keys of one
            /// bit, bits that a removal left stale and entries past the inline room included.
            #[test]
            fn lookups_agree_with_a_list_of_pairs(ops in prop::collection::vec(op(), 0..120)) {
                let mut m = Metadata::new();
                let mut list: Vec<(String, String)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Insert(k, v) => {
                            let (key, value) = (test_key(k), v.to_string());
                            prop_assert!(m.insert(key.clone(), value.clone()));
                            set(&mut list, key, value);
                        }
                        Op::InsertConstant(k, v) => {
                            let (key, value) = (INDEXED_KEYS[k], v.to_string());
                            prop_assert!(m.insert(key, value.clone()));
                            set(&mut list, key.to_owned(), value);
                        }
                        Op::Remove(k) => {
                            let key = test_key(k);
                            let at = list.iter().position(|(held, _)| *held == key);
                            let removed = at.map(|at| list.remove(at).1);
                            prop_assert_eq!(m.remove(&key).map(|v| v.to_string()), removed);
                        }
                    }
                    for k in 0..48 {
                        let key = test_key(k);
                        let held = list.iter().find(|(held, _)| *held == key);
                        prop_assert_eq!(m.get(&key), held.map(|(_, v)| v.as_str()), "{}", key);
                    }
                    let pairs: Vec<(&str, &str)> =
                        list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    prop_assert_eq!(m.iter().collect::<Vec<_>>(), pairs);
                }
            }
        }
    }

    #[test]
    fn a_full_metadata_refuses_new_keys_and_then_everything() {
        let mut m = Metadata::new();
        for n in 0..MAX_METADATA_ENTRIES {
            assert!(m.insert(format!("k{n}"), "v"), "entry {n}");
        }
        // Full, but not overflowed: an existing key still takes a new value.
        assert!(!m.overflowed());
        assert!(m.insert("k0", "w"));
        assert!(!m.insert("one-more", "v"));
        assert!(m.overflowed());
        assert!(
            !m.insert("k1", "w"),
            "after a refusal, replacements are refused too"
        );
        assert_eq!(m.len(), MAX_METADATA_ENTRIES);
        assert_eq!((m.get("k0"), m.get("k1")), (Some("w"), Some("v")));
        assert!(!m.contains("one-more"));
        assert!(METADATA_OVERFLOW_REASON.contains(&MAX_METADATA_ENTRIES.to_string()));
    }

    #[test]
    fn a_key_set_over_and_over_overflows_and_keeps_a_bounded_number_of_copies() {
        let mut m = Metadata::over(Bytes::from_static(b"frame"));
        // Strings that are not slices of the source, as a Hessian string in chunks is: each
        // replacement keeps its key's and value's copies until the metadata is reset.
        let copy = |s: &str| MetadataStr::Shared(ByteStr::from(s.to_owned()));
        for n in 0..MAX_METADATA_INSERTS {
            assert!(
                m.insert(copy("repeated"), copy(&format!("v{n}"))),
                "insert {n}"
            );
        }
        assert!(!m.overflowed() && m.len() == 1);
        assert!(!m.insert(copy("repeated"), copy("one more")));
        assert!(m.overflowed());
        assert!(!m.insert(keys::METHOD, "refused"), "a constant key too");
        assert_eq!(
            m.get("repeated"),
            Some(format!("v{}", MAX_METADATA_INSERTS - 1).as_str())
        );
        assert!(m.shared.len() <= 2 * MAX_METADATA_INSERTS);
        assert!(METADATA_OVERFLOW_REASON.contains(&MAX_METADATA_INSERTS.to_string()));

        m.reset_over(Bytes::from_static(b"next frame"));
        assert!(!m.overflowed() && m.insert(copy("repeated"), "again"));
    }

    #[test]
    fn slices_of_the_source_are_spans_and_others_are_kept() {
        let frame = Bytes::from_static(b"\xff\xfetenant=t1;method=echo");
        let slice =
            |range: Range<usize>| ByteStr::from_utf8(frame.slice(range)).unwrap_or_default();
        let mut m = Metadata::over(frame.clone());
        assert!(m.insert(MetadataStr::Source(2..8), slice(9..11)));
        assert!(!m.insert("bad", MetadataStr::Source(0..8)), "not UTF-8");
        assert!(
            !m.insert("far", MetadataStr::Source(20..40)),
            "beyond the source"
        );
        m.insert(keys::METHOD, slice(19..23));
        m.insert("lane", ByteStr::from("blue".to_owned()));
        // `lane` is kept as a constant; `method`, an indexed key, is in the table already.
        assert!(m.shared.len() == 1 && m.statics.len() == 1);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("tenant", "t1"), ("method", "echo"), ("lane", "blue")]
        );
        // A shared value is the frame's own storage, not a copy.
        let shared = m.get_shared("tenant").unwrap_or_default();
        assert_eq!(shared.as_ptr(), frame[9..].as_ptr());
        // The same strings inserted into metadata over nothing compare equal.
        let plain: Metadata = [("tenant", "t1"), ("method", "echo"), ("lane", "blue")]
            .into_iter()
            .collect();
        assert_eq!(m, plain);
    }

    #[test]
    fn rendered_text_reads_as_any_value_and_outgrows_its_inline_room_onto_the_heap() {
        let frame = Bytes::from_static(b"timeout;retries");
        let mut m = Metadata::over(frame.clone());
        assert!(m.insert_rendered(MetadataStr::Source(0..7), "3000"));
        assert!(m.insert_rendered("flag", "true"));
        assert!(m.shared.is_empty(), "kept inline");
        assert_eq!(m.get("timeout"), Some("3000"));
        assert_eq!(m.value_bytes("flag"), Some(&b"true"[..]));
        let resolved = MetadataKey::new("timeout");
        assert_eq!(m.value_bytes_of(&resolved), Some(&b"3000"[..]));
        assert_eq!(
            m.get_shared("timeout").as_ref().map(ByteStr::as_str),
            Some("3000")
        );
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("timeout", "3000"), ("flag", "true")]
        );
        // A key that is not text of the source is refused, and keeps nothing.
        assert!(!m.insert_rendered(MetadataStr::Source(100..101), "1"));
        assert_eq!(m.rendered_len, 8);

        // Past the inline room, text is on the heap; what was inline reads the same.
        let long = "-2.2250738585072014E-308";
        assert!(m.insert_rendered(MetadataStr::Source(8..15), long));
        assert!(m.shared.is_empty() && m.rendered_heap.len() == long.len());
        assert_eq!(m.get("retries"), Some(long));
        assert_eq!(
            m.get_shared("retries").as_ref().map(ByteStr::as_str),
            Some(long)
        );
        assert_eq!(m.get("timeout"), Some("3000"));
        assert!(m.insert_rendered("timeout", "5"), "a replacement");
        assert_eq!(m.get("timeout"), Some("5"));
        assert_eq!(m.remove("flag").map(|v| v.to_string()), Some("true".into()));
        let plain: Metadata = [("timeout", "5"), ("retries", long)].into_iter().collect();
        assert_eq!(m, plain);

        // Longer than the heap room is kept for: shared.
        let huge = "9".repeat(KEPT_RENDERED_BYTES + 1);
        assert!(m.insert_rendered("huge", &huge));
        assert!(m.shared.len() == 1 && m.get("huge") == Some(huge.as_str()));

        m.reset_over(frame);
        assert!(m.rendered_len == 0 && m.rendered_heap.is_empty());
        assert!(m.insert_rendered("n", "7") && m.get("n") == Some("7"));
    }

    #[test]
    fn ascii_proven_in_the_source_is_kept_and_a_proof_from_elsewhere_is_checked() {
        let frame = Bytes::from_static(b"\xff\xfetenant=t1");
        let proven = |buf: &[u8], range: Range<usize>| {
            crate::Ascii::new(&buf[range]).and_then(|text| text.ascii_range_in(buf))
        };
        let mut m = Metadata::over(frame.clone());
        let (Some(key), Some(value)) = (proven(&frame, 2..8), proven(&frame, 9..11)) else {
            panic!("the bytes are ASCII");
        };
        assert!(m.insert(MetadataStr::Ascii(key), MetadataStr::Ascii(value)));
        assert_eq!(m.get("tenant"), Some("t1"));

        // The same range of another buffer proves nothing about the source's bytes there.
        let other = b"ascii_only";
        let Some(elsewhere) = proven(other, 0..8) else {
            panic!("the bytes are ASCII");
        };
        assert!(!m.insert("bad", MetadataStr::Ascii(elsewhere)), "not UTF-8");
        let Some(beyond) = proven(b"0123456789abcdefghijkl", 14..20) else {
            panic!("the bytes are ASCII");
        };
        assert!(
            !m.insert("far", MetadataStr::Ascii(beyond)),
            "beyond the source"
        );
        assert_eq!(m.len(), 1);

        // A proof from a longer buffer at the source's address holds within the source only.
        let mut head = Metadata::over(frame.slice(..8));
        let Some(past_the_head) = proven(&frame, 9..11) else {
            panic!("the bytes are ASCII");
        };
        assert!(!head.insert("t", MetadataStr::Ascii(past_the_head)));
    }

    #[test]
    fn a_message_sized_metadata_stays_small() {
        assert!(std::mem::size_of::<Metadata>() <= 360);
    }
}
