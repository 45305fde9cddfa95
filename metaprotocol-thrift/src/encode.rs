//! Writing a decoded message back out: passthrough with a seqid patch, header rebuilds,
//! THeader mutations and translation between formats.
//!
//! The fast path (same format, no header edits) is one copy of the frame plus an in-place
//! patch of the seqid (and of the THeader `seq` when it mirrors the seqid). Everything else
//! goes through [`write_frame`]: a transport wrapper around the message, which is copied with
//! a new seqid when the protocol stays, or transcoded when it changes.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{CodecError, EncodeParams, Message, Mutation, WireVariant, append_frame};

use crate::format::{Protocol, ThriftFormat, Transport};
use crate::layout::Layout;
use crate::protocol::{self, binary};
use crate::stats;
use crate::theader::{self, InfoSource, Prelude};
use crate::wire::{Cursor, ReadError, patch, varint_u32_bytes};

static NO_MUTATION: Mutation = Mutation::new();

/// Appends `message` to `dst` as `params` asks, in at most `max_frame_bytes`; nothing is
/// appended on error. A message may grow on its way to another protocol (a compact `i64` of 0
/// takes one byte, a binary one eight), so a frame within the limit as it came may not be once
/// translated: it is refused rather than sent to an upstream that would refuse it, or close the
/// connection every client shares.
///
/// With `share`, a frame passing through is appended up to the end of what changes in it (its
/// seqid), and the length of the rest, which is to follow unchanged, is returned (see
/// [`metaprotocol_core::Codec::encode_sharing`]); otherwise the result is 0.
pub(crate) fn encode(
    message: &Message,
    params: &EncodeParams<'_>,
    max_frame_bytes: usize,
    share: bool,
    dst: &mut BytesMut,
) -> Result<usize, CodecError> {
    let source = format_of(message)?;
    let target = if params.variant == WireVariant::DEFAULT {
        source
    } else {
        ThriftFormat::from_variant(params.variant).ok_or(CodecError::Encode(Cow::Borrowed(
            "unknown thrift wire variant",
        )))?
    };
    let seqid = seqid_of(params.request_id)?;
    let layout = Layout::of(message)?;
    let mutation = if target.transport == Transport::Header {
        params.mutation
    } else {
        if !params.mutation.is_empty() {
            stats::note_mutation_not_applied();
        }
        &NO_MUTATION
    };
    // A THeader frame no longer than Apache Thrift's readers take: they close the connection
    // (which other clients' calls share) on a longer one.
    let limit = match target.transport {
        Transport::Header => max_frame_bytes.min(theader::MAX_FRAME_LEN as usize),
        Transport::Framed | Transport::Unframed => max_frame_bytes,
    };
    let start = dst.len();
    let passthrough = if source == target && mutation.is_empty() && !layout.lax {
        patch_copy(message, source, &layout, seqid, share, dst)?
    } else {
        None
    };
    let result = match passthrough {
        Some(shared) => Ok(shared),
        None => {
            let target = Target {
                format: target,
                limit,
            };
            translate(message, &layout, source, target, seqid, mutation, dst).map(|()| 0)
        }
    };
    // Measured as the decoder measures: a frame's length field, an unframed message whole.
    let prefix = if target.transport == Transport::Unframed {
        0
    } else {
        4
    };
    let result =
        result.and_then(
            |shared| match (dst.len() - start + shared).saturating_sub(prefix) {
                size if size > limit => Err(too_large(size, limit)),
                _ => Ok(shared),
            },
        );
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// The refusal of a message that takes `size` bytes in its target encoding, over `limit`.
fn too_large(size: usize, limit: usize) -> CodecError {
    CodecError::Encode(Cow::Owned(format!(
        "the message takes {size} bytes in the upstream's encoding, over the frame limit of {limit}"
    )))
}

/// The refusal of a message whose writing stopped once it took more than `limit` bytes.
fn outgrows(limit: usize) -> CodecError {
    CodecError::Encode(Cow::Owned(format!(
        "the message takes more than {limit} bytes in the upstream's encoding, over the frame limit of {limit}"
    )))
}

/// The format a decoded message is in.
pub(crate) fn format_of(message: &Message) -> Result<ThriftFormat, CodecError> {
    ThriftFormat::from_variant(message.variant).ok_or(CodecError::Encode(Cow::Borrowed(
        "message has no thrift wire variant (not decoded by the thrift codec?)",
    )))
}

/// A request id as a Thrift seqid (an `i32`; ids above `i32::MAX` are clients' own negative
/// seqids, as read).
pub(crate) fn seqid_of(request_id: u64) -> Result<i32, CodecError> {
    u32::try_from(request_id)
        .map(|id| id as i32)
        .map_err(|_| CodecError::Encode(Cow::Borrowed("request id does not fit a thrift seqid")))
}

/// The fast path: copies the frame and patches the seqid in place. Returns `None` (having
/// written nothing) when the new seqid does not fit the old one's bytes (compact varints).
/// With `share`, copies only the frame's head up to the last byte patched, and returns the
/// length of the rest (`Some(0)` without).
fn patch_copy(
    message: &Message,
    format: ThriftFormat,
    layout: &Layout,
    seqid: i32,
    share: bool,
    dst: &mut BytesMut,
) -> Result<Option<usize>, CodecError> {
    let (encoded, len) = encode_seqid(format.protocol, seqid);
    if len != layout.seqid.len() {
        // A longer or shorter varint needs a rebuild, unless the id is unchanged (a sender's
        // non-minimal varint is then kept as it came).
        if old_seqid(message, format.protocol, layout)? != seqid {
            return Ok(None);
        }
        return Ok(Some(append_frame(&message.frame, 0, share, dst)));
    }
    let old_seqid = if format.transport == Transport::Header {
        Some(old_seqid(message, format.protocol, layout)?)
    } else {
        None
    };
    let start = dst.len();
    let patched_to = match old_seqid {
        Some(_) => layout.seqid.end.max(theader::SEQ_AT + 4),
        None => layout.seqid.end,
    };
    let shared = append_frame(&message.frame, patched_to, share, dst);
    patch(
        dst,
        start + layout.seqid.start,
        encoded.get(..len).unwrap_or_default(),
    );
    let seq_at = start + theader::SEQ_AT;
    if let (Some(old), Some(seq)) = (old_seqid, dst.get_mut(seq_at..seq_at + 4))
        && *seq == old.to_be_bytes()
    {
        seq.copy_from_slice(&seqid.to_be_bytes());
    }
    Ok(Some(shared))
}

/// `seqid` as `protocol` writes it, in a stack buffer, and its length.
fn encode_seqid(protocol: Protocol, seqid: i32) -> ([u8; 5], usize) {
    match protocol {
        Protocol::Binary => {
            let [a, b, c, d] = seqid.to_be_bytes();
            ([a, b, c, d, 0], 4)
        }
        Protocol::Compact => varint_u32_bytes(seqid as u32),
    }
}

/// The seqid as written in the frame.
fn old_seqid(message: &Message, protocol: Protocol, layout: &Layout) -> Result<i32, CodecError> {
    let mut cursor = Cursor::in_frame(&message.frame, layout.seqid.start);
    match protocol {
        Protocol::Binary => cursor.i32_be(),
        Protocol::Compact => cursor.varint_u32().map(|v| v as i32),
    }
    .map_err(ReadError::in_complete_frame)
}

/// What a message is written as: its format, and the most bytes its frame may take after its
/// length prefix.
#[derive(Clone, Copy)]
struct Target {
    format: ThriftFormat,
    limit: usize,
}

/// The general path: a new transport wrapper, header block and seqid; the message copied or
/// transcoded. A message copied in its protocol that cannot fit `target.limit` is refused
/// before it is copied (a gigabyte, for a THeader frame grown past Apache Thrift's limit); one
/// transcoded, once its writing passes the limit.
fn translate(
    message: &Message,
    layout: &Layout,
    source: ThriftFormat,
    Target {
        format: target,
        limit,
    }: Target,
    seqid: i32,
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let frame = &message.frame[..];
    let start = dst.len();
    let block = match source.transport {
        Transport::Header => Some(theader::parse(frame)?),
        Transport::Framed | Transport::Unframed => None,
    };
    let header = match (&block, target.transport) {
        (_, Transport::Framed | Transport::Unframed) => {
            if block.as_ref().is_some_and(|b| has_info(frame, b)) {
                stats::note_headers_dropped();
            }
            None
        }
        (Some(block), Transport::Header) => {
            let old = old_seqid(message, source.protocol, layout)?;
            let prelude = Prelude {
                flags: block.flags,
                seq: if block.seq == old as u32 {
                    seqid as u32
                } else {
                    block.seq
                },
                protocol: target.protocol,
            };
            let info = if mutation.is_empty() {
                InfoSource::Raw(frame.get(block.info.clone()).unwrap_or_default())
            } else {
                InfoSource::Edited {
                    frame,
                    info: block.info.clone(),
                    mutation,
                }
            };
            Some((prelude, info))
        }
        (None, Transport::Header) => {
            let prelude = Prelude {
                flags: 0,
                seq: seqid as u32,
                protocol: target.protocol,
            };
            let info = if mutation.is_empty() {
                InfoSource::None
            } else {
                InfoSource::Edited {
                    frame,
                    info: 0..0,
                    mutation,
                }
            };
            Some((prelude, info))
        }
    };
    write_frame(dst, target.transport, header, |dst| {
        let prefix = usize::from(target.transport != Transport::Unframed) * 4;
        // Copied in the same protocol, the message is as long as it came but for its seqid
        // and, lax binary, its header written strict: with the wrapper written, whether it
        // fits is known.
        if source.protocol == target.protocol {
            let size = (dst.len() - start - prefix)
                + (frame.len() - layout.payload_start - layout.seqid.len())
                + encode_seqid(target.protocol, seqid).1
                + usize::from(layout.lax) * binary::STRICT_GROWTH;
            if size > limit {
                return Err(too_large(size, limit));
            }
        }
        // Transcoded, its length is known once written: the writing stops past the limit,
        // rather than go on to eight times the frame (a compact `i64` of 0 grows to eight
        // bytes in binary).
        let end = start + prefix + limit;
        write_message(
            dst,
            frame,
            layout,
            source.protocol,
            target.protocol,
            seqid,
            end,
        )
        .map_err(|error| {
            if dst.len() > end {
                outgrows(limit)
            } else {
                error
            }
        })
    })
}

/// True when the header block of `frame` holds anything a translation to a transport without
/// headers drops: a header, read or not.
fn has_info(frame: &[u8], block: &theader::HeaderBlock) -> bool {
    let mut headers = theader::InfoHeaders::new(frame, block.info.clone());
    headers.next().is_some() || !headers.unread().is_empty()
}

/// Appends one message in `transport`: unframed as is, framed behind its length, THeader behind
/// its length and header block (`header`, required for THeader).
pub(crate) fn write_frame(
    dst: &mut BytesMut,
    transport: Transport,
    header: Option<(Prelude, InfoSource<'_>)>,
    message: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    if transport == Transport::Unframed {
        return message(dst);
    }
    let length_at = dst.len();
    dst.put_u32(0);
    if let (Transport::Header, Some((prelude, info))) = (transport, header) {
        theader::write_prelude(dst, prelude, info)?;
    }
    message(dst)?;
    let len = u32::try_from(dst.len() - length_at - 4)
        .map_err(|_| CodecError::Encode(Cow::Borrowed("frame over 4 GiB")))?;
    patch(dst, length_at, &len.to_be_bytes());
    Ok(())
}

/// Appends the message of `frame` with `seqid`, in protocol `to` (strict, if binary); a
/// struct transcoded stops once `dst` is longer than `end` bytes.
fn write_message(
    dst: &mut BytesMut,
    frame: &[u8],
    layout: &Layout,
    from: Protocol,
    to: Protocol,
    seqid: i32,
    end: usize,
) -> Result<(), CodecError> {
    let slice = |range: std::ops::Range<usize>| {
        frame
            .get(range)
            .ok_or(CodecError::malformed("layout outside the frame"))
    };
    if from == to && !layout.lax {
        // Copied around a fresh seqid: a compact varint may change length.
        dst.extend_from_slice(slice(layout.payload_start..layout.seqid.start)?);
        let (encoded, len) = encode_seqid(from, seqid);
        dst.extend_from_slice(encoded.get(..len).unwrap_or_default());
        dst.extend_from_slice(slice(layout.seqid.end..frame.len())?);
        return Ok(());
    }
    let mut cursor = Cursor::in_frame(frame, layout.payload_start);
    let header =
        protocol::read_message_header(from, &mut cursor).map_err(ReadError::in_complete_frame)?;
    let name = slice(header.name.clone())?;
    protocol::write_message_header(to, dst, name, header.message_type, seqid);
    if from == to {
        // A lax binary header, rewritten strict: the struct stays as it came.
        dst.extend_from_slice(slice(header.body_start..frame.len())?);
    } else {
        let body = Cursor::in_frame(frame, header.body_start);
        protocol::transcode_struct(from, to, body, dst, end)
            .map_err(ReadError::in_complete_frame)?;
    }
    Ok(())
}
