//! `THeaderTransport` framing: the header block after the length prefix.
//!
//! ```text
//! u32 length | u16 0x0FFF | u16 flags | u32 seq | u16 header words | header block | message
//! header block: varint protocol id, varint transform count, transform ids,
//!               info headers (varint info id, varint count, count x (key, value)), zero padding
//! ```
//! Strings in the block are a varint length and bytes. Info id 1 is `KEYVALUE`, the one group
//! Apache Thrift's readers (C++, Python, Go, Ruby, Node.js) read: any other id ends their parse,
//! fbthrift's persistent `PKEYVALUE` (2) included, and none of the headers from there on reaches
//! a handler; a `0` starts the padding. This codec reads a block as they do
//! ([`InfoHeaders`]), so that routes and policies see the headers a server sees, and forwards
//! the rest as it came ([`InfoHeaders::unread`]). A block of [`MAX_BLOCK_WORDS`] words at most is
//! written: Apache Thrift's C++ and Ruby readers refuse a longer one, and close the connection.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{CodecError, Mutation};

use crate::format::Protocol;
use crate::wire::{Cursor, ReadError, patch, put_varint};

/// The two bytes after the length prefix of a THeader frame.
pub(crate) const MAGIC: [u8; 2] = [0x0f, 0xff];
/// The offset of the header block within the frame (length prefix included).
pub(crate) const BLOCK_START: usize = 14;
/// The offset of the `seq` field within the frame.
pub(crate) const SEQ_AT: usize = 8;

const PROTOCOL_BINARY: u32 = 0;
const PROTOCOL_JSON: u32 = 1;
const PROTOCOL_COMPACT: u32 = 2;

/// The THeader transform id of zlib.
const TRANSFORM_ZLIB: u32 = 1;

/// The longest header block, in 4-byte words (65,532 bytes), that Apache Thrift's C++ and Ruby
/// THeader readers take: they refuse a frame with a longer one as corrupt, and close its
/// connection.
pub(crate) const MAX_BLOCK_WORDS: usize = 16383;

/// The longest THeader frame, after its length prefix, that Apache Thrift's readers (C++,
/// Python, Java) take: they refuse a longer one as corrupt (a length that large is more likely
/// the first bytes of another protocol) and close the connection.
pub(crate) const MAX_FRAME_LEN: u32 = 0x3FFF_FFFF;

/// Refuses a THeader frame whose length prefix says `len`, over [`MAX_FRAME_LEN`].
pub(crate) fn check_frame_len(len: u32) -> Result<(), CodecError> {
    if len > MAX_FRAME_LEN {
        return Err(CodecError::Malformed(Cow::Owned(format!(
            "a THeader frame of {len} bytes, over the {MAX_FRAME_LEN} Apache Thrift's readers take"
        ))));
    }
    Ok(())
}

/// The info id of a group of key/value headers, the only one Apache Thrift's readers read.
const INFO_KEYVALUE: u32 = 1;
/// The info id that starts the padding at the end of a header block.
const INFO_PADDING: u32 = 0;

/// What the fixed fields and the header block of one THeader frame say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeaderBlock {
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    pub(crate) protocol: Protocol,
    /// Where the info headers are (offsets in the frame).
    pub(crate) info: Range<usize>,
    /// Where the message starts.
    pub(crate) payload_start: usize,
    /// Whether the message is compressed by the zlib transform (alone), which
    /// [`crate::zlib::inflate`] undoes.
    pub(crate) zlib: bool,
}

impl HeaderBlock {
    /// Whether its header block is longer than Apache Thrift's readers take
    /// ([`MAX_BLOCK_WORDS`]).
    pub(crate) fn longer_than_peers_read(&self) -> bool {
        self.payload_start - BLOCK_START > MAX_BLOCK_WORDS * 4
    }
}

/// Parses the THeader fields of `frame` (a whole frame, length prefix included) and checks its
/// info headers. A frame whose message this codec cannot read is an error, whatever side
/// reads it: a protocol other than binary and compact (JSON, or an id THeader does not
/// define), or a transform it cannot undo (HMAC, snappy, QuickLZ, an unknown id, or zlib
/// stacked with another). Its message type is hidden, so no one can be answered: a call could
/// be one-way, whose client would take an answer for its next call's, and an answer names no
/// call it could fail.
pub(crate) fn parse(frame: &[u8]) -> Result<HeaderBlock, CodecError> {
    parse_block(frame).map_err(in_header_block)
}

/// The error for a read inside a frame's header block: running out of bytes there is a field
/// of the block cut by its end (the block's length is checked against the frame's first), not
/// a message cut by the frame's end.
fn in_header_block(error: ReadError) -> CodecError {
    match error {
        ReadError::Incomplete => {
            CodecError::malformed("a THeader header block ends inside a field")
        }
        ReadError::Codec(error) => error,
    }
}

fn parse_block(frame: &[u8]) -> Result<HeaderBlock, ReadError> {
    let mut cursor = Cursor::in_frame(frame, 4);
    if cursor.array()? != MAGIC {
        return Err(ReadError::malformed("missing THeader magic"));
    }
    let flags = cursor.u16_be()?;
    let seq = cursor.u32_be()?;
    let block_len = usize::from(cursor.u16_be()?) * 4;
    let payload_start = BLOCK_START + block_len;
    let block = frame.get(..payload_start).ok_or(ReadError::malformed(
        "THeader header block longer than the frame",
    ))?;
    let mut cursor = Cursor::in_frame(block, BLOCK_START);
    let protocol = match cursor.varint_u32()? {
        PROTOCOL_BINARY => Protocol::Binary,
        PROTOCOL_COMPACT => Protocol::Compact,
        PROTOCOL_JSON => {
            return Err(CodecError::Unsupported(Cow::Borrowed(
                "THeader protocol json (1) is not supported",
            ))
            .into());
        }
        id => {
            return Err(CodecError::Malformed(Cow::Owned(format!(
                "unknown THeader protocol id {id}"
            )))
            .into());
        }
    };
    // zlib alone is undone ([`crate::zlib`]); the headers after it are in the clear.
    let mut zlib = false;
    match cursor.varint_u32()? {
        0 => {}
        count => match cursor.varint_u32()? {
            TRANSFORM_ZLIB if count == 1 => zlib = true,
            id => return Err(unsupported_transform(id).into()),
        },
    }
    let info = cursor.position()..payload_start;
    for header in InfoHeaders::new(block, info.clone()) {
        header?;
    }
    Ok(HeaderBlock {
        flags,
        seq,
        protocol,
        info,
        payload_start,
        zlib,
    })
}

/// The error for a message hidden by transform `id`.
fn unsupported_transform(id: u32) -> CodecError {
    let name = match id {
        1 => "zlib",
        2 => "hmac",
        3 => "snappy",
        4 => "qlz",
        5 => "zstd",
        _ => "unknown",
    };
    CodecError::Unsupported(Cow::Owned(format!(
        "THeader transform {name} ({id}) is not supported"
    )))
}

/// The THeader protocol id of `protocol`.
pub(crate) fn protocol_id(protocol: Protocol) -> u32 {
    match protocol {
        Protocol::Binary => PROTOCOL_BINARY,
        Protocol::Compact => PROTOCOL_COMPACT,
    }
}

/// One info header: where its key and value are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InfoHeader {
    pub(crate) key: Range<usize>,
    pub(crate) value: Range<usize>,
}

/// The info headers of a header block that Apache Thrift's readers read, in order: those of
/// the `KEYVALUE` groups before the first group of another id. Once it has ended, where the
/// rest is ([`InfoHeaders::unread`]).
pub(crate) struct InfoHeaders<'a> {
    cursor: Cursor<'a>,
    end: usize,
    left_in_group: u32,
    unread: Range<usize>,
    ended: bool,
}

impl<'a> InfoHeaders<'a> {
    /// The headers in `frame[info]` (see [`HeaderBlock::info`]).
    pub(crate) fn new(frame: &'a [u8], info: Range<usize>) -> Self {
        let block = frame.get(..info.end).unwrap_or_default();
        Self {
            cursor: Cursor::in_frame(block, info.start),
            end: info.end,
            left_in_group: 0,
            unread: info.end..info.end,
            ended: false,
        }
    }

    /// Where the part of the block that Apache Thrift's readers skip is, once the headers have
    /// ended: from the id of the group that ended them (a persistent group, say) to the end of
    /// the block; empty when they ended at the padding or at the end of the block, after which
    /// no reader looks.
    pub(crate) fn unread(&self) -> Range<usize> {
        self.unread.clone()
    }

    fn string(&mut self) -> Result<Range<usize>, ReadError> {
        let len = self.cursor.length_varint()?;
        let start = self.cursor.position();
        self.cursor.bytes(len)?;
        Ok(start..self.cursor.position())
    }

    fn next_header(&mut self) -> Result<Option<InfoHeader>, ReadError> {
        while self.left_in_group == 0 {
            let at = self.cursor.position();
            if at >= self.end {
                return Ok(None);
            }
            match self.cursor.varint_u32()? {
                INFO_KEYVALUE => self.left_in_group = self.cursor.varint_u32()?,
                INFO_PADDING => return Ok(None),
                _ => {
                    self.unread = at..self.end;
                    return Ok(None);
                }
            }
        }
        self.left_in_group -= 1;
        // A group saying more headers than its block holds is refused, as Go's reader refuses
        // it: Apache Thrift's readers disagree on it (C++ stops at the block's end, Python
        // reads on into the message, taking its bytes for headers), so no metadata could say
        // what every server reads, and no Apache client writes one.
        let past_block = |error| match error {
            ReadError::Incomplete => {
                ReadError::malformed("a THeader header runs past its header block")
            }
            error => error,
        };
        let key = self.string().map_err(past_block)?;
        let value = self.string().map_err(past_block)?;
        Ok(Some(InfoHeader { key, value }))
    }
}

impl Iterator for InfoHeaders<'_> {
    type Item = Result<InfoHeader, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let next = self.next_header().transpose();
        self.ended = !matches!(next, Some(Ok(_)));
        next.map(|header| header.map_err(in_header_block))
    }
}

/// The fixed fields of a THeader frame being written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prelude {
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    pub(crate) protocol: Protocol,
}

/// Where the info headers of a frame being written come from.
pub(crate) enum InfoSource<'a> {
    /// No headers.
    None,
    /// The original header block bytes, copied as they are (no mutation, same protocol).
    Raw(&'a [u8]),
    /// The headers of `frame[info]` edited by `mutation`.
    Edited {
        frame: &'a [u8],
        info: Range<usize>,
        mutation: &'a Mutation,
    },
}

/// Appends the THeader fields after the length prefix: magic, flags, seq, header length, and
/// the header block, padded to whole words; an error if a block it edits is longer than
/// [`MAX_BLOCK_WORDS`] (one copied as it came is as long as its sender made it).
pub(crate) fn write_prelude(
    dst: &mut BytesMut,
    prelude: Prelude,
    info: InfoSource<'_>,
) -> Result<(), CodecError> {
    dst.extend_from_slice(&MAGIC);
    dst.put_u16(prelude.flags);
    dst.put_u32(prelude.seq);
    let words_at = dst.len();
    dst.put_u16(0);
    let block_start = dst.len();
    // A call whose block is too long is refused on decode; a reply's, copied, reads as it did.
    let max_words = match info {
        InfoSource::Edited { .. } => MAX_BLOCK_WORDS,
        InfoSource::None | InfoSource::Raw(_) => usize::from(u16::MAX),
    };
    put_varint(dst, u64::from(protocol_id(prelude.protocol)));
    put_varint(dst, 0);
    match info {
        InfoSource::None => {}
        InfoSource::Raw(bytes) => dst.extend_from_slice(bytes),
        InfoSource::Edited {
            frame,
            info,
            mutation,
        } => write_edited(dst, frame, info, mutation)?,
    }
    let padding = (4 - (dst.len() - block_start) % 4) % 4;
    dst.put_bytes(0, padding);
    let words = (dst.len() - block_start) / 4;
    let words = u16::try_from(words)
        .ok()
        .filter(|_| words <= max_words)
        .ok_or_else(|| {
            CodecError::Encode(Cow::Owned(format!(
                "THeader header block of {} bytes, over the {} Apache Thrift's readers take",
                words * 4,
                max_words * 4
            )))
        })?;
    patch(dst, words_at, &words.to_be_bytes());
    Ok(())
}

/// Writes one `KEYVALUE` group: the headers Apache Thrift's readers read, minus those the
/// mutation overrides, then the mutation's sets; then the rest of the block as it came. The
/// rest is read by no Apache Thrift server, whatever it holds: a header it holds must not
/// join the group a server reads, where no route or policy saw it.
fn write_edited(
    dst: &mut BytesMut,
    frame: &[u8],
    info: Range<usize>,
    mutation: &Mutation,
) -> Result<(), CodecError> {
    let key = |header: &InfoHeader| frame.get(header.key.clone()).unwrap_or_default();
    let mut headers = InfoHeaders::new(frame, info.clone());
    let mut count = mutation.sets().len();
    for header in headers.by_ref() {
        count += usize::from(!mutation.overrides(key(&header?)));
    }
    let unread = frame.get(headers.unread()).unwrap_or_default();
    if count > 0 {
        put_varint(dst, u64::from(INFO_KEYVALUE));
        put_varint(dst, count as u64);
        for header in InfoHeaders::new(frame, info) {
            let header = header?;
            if !mutation.overrides(key(&header)) {
                put_string(dst, key(&header));
                put_string(dst, frame.get(header.value).unwrap_or_default());
            }
        }
        for (key, value) in mutation.sets() {
            put_string(dst, key.as_bytes());
            put_string(dst, value.as_bytes());
        }
    }
    dst.extend_from_slice(unread);
    Ok(())
}

fn put_string(dst: &mut BytesMut, bytes: &[u8]) {
    put_varint(dst, bytes.len() as u64);
    dst.extend_from_slice(bytes);
}
