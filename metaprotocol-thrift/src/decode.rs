//! Finding frames in the byte stream and describing them as [`Message`]s.
//!
//! Framed and THeader frames are delimited by their length prefix, checked against the frame
//! size cap before any body byte is awaited (once the message header is in, for the engine to
//! pass the frame over). Unframed messages have no prefix: their end is
//! found by walking the argument or result struct (no allocation, depth-limited); a walk that
//! reaches the end of the buffer is kept and continued when more bytes arrive, so finding the
//! end of a message costs time linear in its size however it is split. One that passes the
//! frame size cap is passed over as it arrives ([`crate::pass`]).
//!
//! Only the message header is decoded (and the THeader block). The argument struct of a framed
//! or THeader call is walked to check it, and a malformed one marks the message with a
//! `reject_reason` (unframed, a malformed struct leaves the end of the message unknown: a
//! decode error). The result struct of a reply is read as far as its first field header, to
//! tell a declared exception from a success.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use metaprotocol_core::{
    CodecError, FrameHead, FrameLayout, MAX_FRAME_HEAD, Message, MessageKind, Metadata,
    MetadataStr, PassedOver, ResponseStatus, Side, keys,
};

use crate::format::{Protocol, ThriftFormat, Transport};
use crate::layout::Layout;
use crate::pass::{self, Passing};
use crate::protocol::binary;
use crate::protocol::walk::Walk;
use crate::protocol::{self, Checkpoint, MessageHeader, MessageType, ValueType};
use crate::theader::{self, InfoHeaders};
use crate::wire::{Cursor, ReadError};
use crate::zlib;

/// The transport of a connection whose first bytes are `src`, or `None` until enough bytes
/// have arrived to tell.
///
/// A message starting `0x80` (strict binary) or `0x82` (compact) is unframed. Otherwise the
/// first word is a length and the next bytes say what follows: the THeader magic, a strict
/// binary or compact message, or a lax binary message (whose first word, a name length, must
/// fit in the frame). A lax binary stream without a frame starts with the name length itself.
pub(crate) fn detect_transport(src: &[u8]) -> Option<Transport> {
    match src {
        [] => None,
        [0x80 | protocol::compact::PROTOCOL_ID, ..] => Some(Transport::Unframed),
        [_, _, _, _, 0x0f, 0xff, ..] => Some(Transport::Header),
        [_, _, _, _, 0x80 | protocol::compact::PROTOCOL_ID, _, ..] => Some(Transport::Framed),
        [l0, l1, l2, l3, n0, n1, n2, n3, ..] => {
            let frame_len = u64::from(u32::from_be_bytes([*l0, *l1, *l2, *l3]));
            let name_len = i32::from_be_bytes([*n0, *n1, *n2, *n3]);
            // A lax frame holds the name length word, the name, a type byte and a seqid.
            let fits_a_frame = u64::try_from(name_len).is_ok_and(|n| n + 9 <= frame_len);
            Some(if fits_a_frame {
                Transport::Framed
            } else {
                Transport::Unframed
            })
        }
        _ => None,
    }
}

/// Finds messages in one connection's byte stream and describes them.
///
/// Keeps the walk through an unframed message that has not fully arrived, so that each read
/// continues it instead of walking the message again from its first byte.
#[derive(Clone, Debug)]
pub(crate) struct Decoder {
    max_frame_bytes: usize,
    /// Which messages it reads: calls (downstream) or answers.
    side: Side,
    /// Boxed and kept once used: only connections whose messages span reads need one.
    unfinished: Option<Box<Unfinished>>,
    walked: u64,
    /// Messages too large to decode, passed over: boxed and kept once used, as `unfinished`.
    passing: Option<Box<Passing>>,
    /// The call of one passed over, to answer (its protocol, and its message header).
    passed_call: Option<(ThriftFormat, Bytes)>,
    /// The head of a zlib THeader frame too large to decode, inflated as it arrives.
    zlib_head: ZlibHead,
}

/// The head of the zlib THeader frame too large to decode at the front of the stream, inflated
/// as it arrives ([`zlib::HeadInflation`]), and kept for what reads it next: the reads of
/// `decode` that wait for its message header, then the engine's `oversized_response` (which
/// takes the codec shared, hence the cell) and `pass_over`. Forgotten once the stream has
/// moved past its frame: on the next frame's `decode`, or once it is passed over.
#[derive(Debug, Default)]
pub(crate) struct ZlibHead(RefCell<Option<Box<ZlibHeadState>>>);

/// A head being inflated, and whether its outcome (a message header, or none) has been given.
#[derive(Debug)]
struct ZlibHeadState {
    inflation: zlib::HeadInflation,
    decided: bool,
}

/// A copy starts afresh: a decompressor's state cannot be copied.
impl Clone for ZlibHead {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl ZlibHead {
    /// Forgets a head whose outcome was given: the stream it was read from has moved on.
    fn forget_decided(&mut self) {
        let head = self.0.get_mut();
        if head.as_ref().is_some_and(|head| head.decided) {
            *head = None;
        }
    }
}

/// An unframed message whose struct walk stopped at the end of the buffer.
#[derive(Clone, Debug, Default)]
struct Unfinished {
    /// The message's protocol and header; `None` when no message is in progress.
    message: Option<(Protocol, MessageHeader)>,
    walk: Walk,
    at: Checkpoint,
}

impl Decoder {
    /// A decoder of the messages `side` reads, refusing those larger than `max_frame_bytes`.
    pub(crate) fn new(max_frame_bytes: usize, side: Side) -> Self {
        Self {
            max_frame_bytes,
            side,
            unfinished: None,
            walked: 0,
            passing: None,
            passed_call: None,
            zlib_head: ZlibHead::default(),
        }
    }

    /// Passes over the message (of `transport`, which only the first read needs) too large to
    /// decode at the front of the stream, one read (`src`) at a time (see [`metaprotocol_core::Codec::pass_over`]): the first
    /// read starts with the message. `None` when its header cannot be read, or an unframed
    /// message's struct is malformed. Downstream, the call that passed is then
    /// [`Decoder::passed_call`].
    pub(crate) fn pass_over(
        &mut self,
        src: &[u8],
        transport: Option<Transport>,
    ) -> Option<PassedOver> {
        let passing = self.passing.get_or_insert_with(Box::default);
        let passed = passing.pass(src, transport, self.side, &self.zlib_head);
        self.zlib_head.forget_decided();
        let passed = passed?;
        if let PassedOver::End { .. } = passed {
            self.passed_call = passing.take_call();
        }
        Some(passed)
    }

    /// The call of a message passed over (once, after its end): a call of its name and seqid
    /// (and THeader headers), with no arguments, refused as [`PASSED_OVER`].
    pub(crate) fn passed_call(&mut self) -> Option<Result<Found, CodecError>> {
        let (format, frame) = self.passed_call.take()?;
        let found = match format.transport {
            Transport::Unframed => {
                let mut cursor = Cursor::in_frame(&frame, 0);
                protocol::read_message_header(format.protocol, &mut cursor)
                    .map_err(ReadError::in_complete_frame)
                    .map(|header| Found {
                        frame,
                        format,
                        payload_start: 0,
                        header,
                        info: None,
                        reject_reason: None,
                    })
            }
            Transport::Framed => framed(frame),
            // The head kept of a zlib call is its first bytes inflated, without the transform.
            Transport::Header => {
                theader::parse(&frame).and_then(|block| header_frame(frame, block))
            }
        };
        Some(found.map(|found| Found {
            reject_reason: Some(PASSED_OVER),
            ..found
        }))
    }

    /// How many bytes of unframed messages the struct walks have read so far.
    pub(crate) fn walked(&self) -> u64 {
        self.walked
    }

    /// Finds one message of `transport` at the front of `src` and splits it off: `Ok(None)`
    /// (with `src` unchanged) until it is complete.
    pub(crate) fn decode(
        &mut self,
        src: &mut BytesMut,
        transport: Transport,
    ) -> Result<Option<Found>, CodecError> {
        match transport {
            Transport::Framed => {
                let Some(total) = self.length_prefixed_size(src, transport)? else {
                    return Ok(None);
                };
                framed(src.split_to(total).freeze()).map(Some)
            }
            Transport::Header => self.header(src),
            Transport::Unframed => self.unframed(src),
        }
    }

    /// The size of the whole length-prefixed `transport` frame at the front of `src` once it
    /// is all there; one over the cap is refused once its message header is in (within the
    /// frame's first [`MAX_FRAME_HEAD`] bytes), which the engine needs to pass it over and
    /// answer its call rather than close the connection.
    fn length_prefixed_size(
        &self,
        src: &mut BytesMut,
        transport: Transport,
    ) -> Result<Option<usize>, CodecError> {
        match length_prefixed_size(src, self.max_frame_bytes) {
            Err(CodecError::FrameTooLarge { .. })
                if matches!(
                    length_prefixed_head(src, transport, None, &self.zlib_head),
                    Err(ReadError::Incomplete)
                ) =>
            {
                Ok(None)
            }
            size => size,
        }
    }

    /// Reads the whole THeader frame at the front of `src`, once it is in: kept out of the
    /// framed path (its header block, transforms and zlib), so that a framed frame pays
    /// nothing for them. A zlib message is inflated, up to `max_frame_bytes` for the whole
    /// frame, and read from the frame rebuilt without the transform ([`crate::zlib`]); an
    /// answer that inflates past the cap is refused as [`CodecError::FrameTooLarge`] and left
    /// on the stream, where its head names its call and its length
    /// ([`oversized_response`]): the engine passes over it and fails that call alone.
    #[inline(never)]
    fn header(&mut self, src: &mut BytesMut) -> Result<Option<Found>, CodecError> {
        self.zlib_head.forget_decided();
        if let Some(&len) = src.first_chunk::<4>() {
            theader::check_frame_len(u32::from_be_bytes(len))?;
        }
        let Some(total) = self.length_prefixed_size(src, Transport::Header)? else {
            return Ok(None);
        };
        let whole = src.get(..total).unwrap_or_default();
        let block = theader::parse(whole)?;
        if !block.zlib {
            return header_frame(src.split_to(total).freeze(), block).map(Some);
        }
        let inflated = zlib::inflate(whole, &block, self.max_frame_bytes);
        // An answer cut short cannot be forwarded; one too large is left for the engine to
        // pass over by its length.
        if let Some(cut) = inflated.cut
            && self.side == Side::Upstream
        {
            return Err(cut.error(self.max_frame_bytes));
        }
        src.advance(total);
        inflated_call_or_answer(inflated).map(Some)
    }

    /// Finds the end of the unframed message at the front of `src` by walking its struct,
    /// continuing the walk where the previous call stopped.
    fn unframed(&mut self, src: &mut BytesMut) -> Result<Option<Found>, CodecError> {
        let max = self.max_frame_bytes;
        if let Some(unfinished) = self.unfinished.as_deref_mut()
            && let Some((protocol, header)) = unfinished.message.take()
            // A buffer shorter than the walk's position is not the stream it walked: start over.
            && unfinished.at.position <= src.len()
        {
            let from = unfinished.at.position;
            let walked =
                protocol::skip(protocol, &mut unfinished.walk, src, max, &mut unfinished.at);
            self.walked += unfinished.at.position.saturating_sub(from) as u64;
            return match walked {
                Ok(()) => finish(src, protocol, header, unfinished.at.position, max),
                Err(ReadError::Incomplete) => {
                    unfinished.message = Some((protocol, header));
                    Ok(None)
                }
                Err(ReadError::Codec(error)) => Err(error),
            };
        }
        let Some(&first) = src.first() else {
            return Ok(None);
        };
        let protocol = Protocol::of_message_starting_with(first);
        let mut cursor = Cursor::new(src, 0, max);
        let header = match protocol::read_message_header(protocol, &mut cursor) {
            Ok(header) => header,
            Err(ReadError::Incomplete) => return Ok(None),
            Err(ReadError::Codec(error)) => return Err(error),
        };
        let mut walk = Walk::of(ValueType::Struct);
        let mut at = Checkpoint::at(header.body_start);
        let walked = protocol::skip(protocol, &mut walk, src, max, &mut at);
        self.walked += at.position.saturating_sub(header.body_start) as u64;
        match walked {
            Ok(()) => finish(src, protocol, header, at.position, max),
            Err(ReadError::Incomplete) => {
                let unfinished = self.unfinished.get_or_insert_with(Box::default);
                unfinished.message = Some((protocol, header));
                unfinished.walk = walk;
                unfinished.at = at;
                Ok(None)
            }
            Err(ReadError::Codec(error)) => Err(error),
        }
    }
}

/// Splits the unframed message of `protocol` that ends at `end` off `src`.
fn finish(
    src: &mut BytesMut,
    protocol: Protocol,
    header: MessageHeader,
    end: usize,
    max_frame_bytes: usize,
) -> Result<Option<Found>, CodecError> {
    if end > max_frame_bytes {
        return Err(CodecError::FrameTooLarge {
            size: end as u64,
            max: max_frame_bytes,
        });
    }
    Ok(Some(Found {
        frame: src.split_to(end).freeze(),
        format: ThriftFormat::new(Transport::Unframed, protocol),
        payload_start: 0,
        header,
        info: None,
        reject_reason: None,
    }))
}

/// The `reject_reason` of an unframed call too large to decode, passed over unread.
pub(crate) const PASSED_OVER: &str =
    "the call is larger than the listener's max_frame_bytes: passed over unread";

/// The `reject_reason` of a THeader call whose zlib-compressed message inflates past the
/// listener's `max_frame_bytes` (a zlib bomb): inflation stops there, and its local reply is a
/// `PROTOCOL_ERROR`.
pub(crate) const INFLATES_TOO_LARGE: &str =
    "the THeader call inflates (zlib) past the listener's max_frame_bytes: refused unread";

/// The `reject_reason` of a THeader call whose zlib data is corrupt or cut short; its local
/// reply is a `PROTOCOL_ERROR`.
pub(crate) const ZLIB_CORRUPT: &str = "the THeader call's zlib data is corrupt or cut short";

/// The error of a THeader frame whose zlib data is corrupt, cut short or too long before its
/// message header is whole.
const ZLIB_UNNAMED: &str = "a THeader frame's zlib data is corrupt, cut short or inflates past max_frame_bytes before its message header";

/// The `reject_reason` of a THeader call whose header block is longer than Apache Thrift's
/// readers take ([`theader::MAX_BLOCK_WORDS`]); its local reply is a `PROTOCOL_ERROR`.
pub(crate) const HEADER_BLOCK_TOO_LONG: &str = "the THeader header block is 64 KiB or more, which Apache Thrift's servers refuse: send fewer or shorter headers";

/// Reads one whole framed `frame` (length prefix included), checking a call's arguments.
#[inline(always)]
fn framed(frame: Bytes) -> Result<Found, CodecError> {
    let first = frame.get(4).ok_or(CodecError::malformed("empty frame"))?;
    let protocol = Protocol::of_message_starting_with(*first);
    let mut cursor = Cursor::in_frame(&frame, 4);
    let header = protocol::read_message_header(protocol, &mut cursor)
        .map_err(ReadError::in_complete_frame)?;
    let format = ThriftFormat::new(Transport::Framed, protocol);
    Ok(Found::checked(frame, format, 4, header, None))
}

/// Reads one whole THeader `frame` (length prefix included) that `block` describes, whose
/// message is not compressed, checking a call's arguments and header block.
fn header_frame(frame: Bytes, block: theader::HeaderBlock) -> Result<Found, CodecError> {
    if block.zlib {
        return Err(CodecError::malformed("a zlib frame not inflated"));
    }
    let mut cursor = Cursor::in_frame(&frame, block.payload_start);
    let header = protocol::read_message_header(block.protocol, &mut cursor)
        .map_err(ReadError::in_complete_frame)?;
    let format = ThriftFormat::new(Transport::Header, block.protocol);
    Ok(Found::checked(
        frame,
        format,
        block.payload_start,
        header,
        Some(&block),
    ))
}

/// Reads a THeader frame `inflated` without its zlib transform. Only a call's may be cut (a
/// zlib bomb, or corrupt data): it is refused, named by its message header. One cut before
/// its message header is whole is malformed: its message type is unknown, and a one-way
/// call's client reads no answer (a synchronous one would take it for its next call's), so
/// the connection closes, as Apache Thrift's servers close it on a frame that does not
/// inflate, and as a zlib call over the cap whose first bytes do not name it.
fn inflated_call_or_answer(inflated: zlib::Inflated) -> Result<Found, CodecError> {
    let frame = Bytes::from(inflated.frame);
    let block = theader::parse(&frame)?;
    let mut cursor = Cursor::in_frame(&frame, block.payload_start);
    let header = match (
        protocol::read_message_header(block.protocol, &mut cursor),
        inflated.cut,
    ) {
        (Ok(header), _) => header,
        (Err(_), Some(_)) => return Err(CodecError::malformed(ZLIB_UNNAMED)),
        (Err(error), None) => return Err(error.in_complete_frame()),
    };
    let format = ThriftFormat::new(Transport::Header, block.protocol);
    match inflated.cut {
        Some(cut) => Ok(Found {
            frame,
            format,
            payload_start: block.payload_start,
            header,
            info: Some(block.info),
            reject_reason: Some(cut.reject_reason()),
        }),
        None => Ok(Found::checked(
            frame,
            format,
            block.payload_start,
            header,
            Some(&block),
        )),
    }
}

/// Checks that the argument struct of a call starting at `body_start` is well-formed and ends
/// exactly where its frame does; otherwise, why not.
///
/// The frame is delimited, so a bad struct is this client's problem alone: it gets a
/// `BadRequest` reply rather than a forwarded body that the server may answer by closing a
/// connection that other clients' calls share. Bytes after the struct are refused too, not
/// dropped: no Apache Thrift client writes them, and its servers disagree on them (its framed
/// servers read them as the start of the next message, putting the connection out of step;
/// its C++ and Python THeader servers and its nonblocking ones drop them): no way of passing
/// them on matches every server, and the client that wrote them is told at once.
fn check_arguments(
    protocol: Protocol,
    frame: &[u8],
    body_start: usize,
) -> Result<(), &'static str> {
    // Scalar arguments, those of nearly every call, end where a pass over their field headers
    // says (a third of the instructions of a decode, walked); the walk reads any other struct,
    // and tells what is wrong with a malformed one.
    if protocol == Protocol::Binary
        && binary::flat_struct_end(frame, body_start) == Some(frame.len())
    {
        return Ok(());
    }
    let mut at = Checkpoint::at(body_start);
    let walk = &mut Walk::of(ValueType::Struct);
    match protocol::skip(protocol, walk, frame, usize::MAX, &mut at) {
        Ok(()) if at.position == frame.len() => Ok(()),
        Ok(()) => Err("the frame holds bytes after the argument struct"),
        Err(ReadError::Incomplete) => Err("the argument struct runs past the end of the frame"),
        Err(ReadError::Codec(CodecError::Malformed(Cow::Borrowed(reason)))) => Err(reason),
        Err(ReadError::Codec(_)) => Err("the argument struct is malformed"),
    }
}

/// The size of the length-prefixed frame at the front of `src` once it is all there.
fn length_prefixed_size(
    src: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<Option<usize>, CodecError> {
    let Some(&[b0, b1, b2, b3]) = src.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([b0, b1, b2, b3]);
    if len as usize > max_frame_bytes {
        return Err(CodecError::FrameTooLarge {
            size: u64::from(len),
            max: max_frame_bytes,
        });
    }
    let total = 4 + len as usize;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    Ok(Some(total))
}

/// What the head of the `transport` frame at the front of `src`, a message too large to
/// decode, says (see [`metaprotocol_core::Codec::oversized_response`]): a length-prefixed
/// `REPLY` or `EXCEPTION` names its call and length, and a call is passed over by its length;
/// an unframed message is passed over as its struct's walk finds its end. `Incomplete` until
/// the header is in; `None` for a message of another `protocol` than the connection's, or
/// whose header does not lie within its frame and [`MAX_FRAME_HEAD`] (or, THeader, cannot be
/// read).
pub(crate) fn oversized_response(
    src: &[u8],
    transport: Transport,
    protocol: Option<Protocol>,
    decoder: &Decoder,
) -> Option<FrameHead> {
    let head = match transport {
        Transport::Unframed => pass::head(src).and_then(|(found, header)| {
            if protocol.is_some_and(|protocol| protocol != found) {
                return Err(ReadError::malformed("a message in another protocol"));
            }
            Ok((header, None))
        }),
        Transport::Framed | Transport::Header => {
            length_prefixed_head(src, transport, protocol, &decoder.zlib_head)
                .map(|head| (head.header, Some(head.len)))
        }
    };
    match head {
        Ok((header, Some(len))) if header.message_type.answers() => Some(FrameHead::Response {
            request_id: u64::from(header.seqid as u32),
            len,
        }),
        Ok(_) => Some(FrameHead::Unsized),
        Err(ReadError::Incomplete) => Some(FrameHead::Incomplete),
        Err(ReadError::Codec(_)) => None,
    }
}

/// What the head of a length-prefixed frame too large to decode says: see
/// [`length_prefixed_head`].
pub(crate) struct LengthPrefixedHead {
    pub(crate) protocol: Protocol,
    /// The message header, over the frame's bytes as they came, or over [`Self::inflated`].
    pub(crate) header: MessageHeader,
    /// The whole frame's length, its length prefix included.
    pub(crate) len: u64,
    /// A zlib THeader frame's head rebuilt without the transform, its message's first bytes
    /// inflated (its message header whole): what `header` describes.
    pub(crate) inflated: Option<Vec<u8>>,
}

/// The protocol, message header and whole length of the `transport` frame (framed or
/// THeader) at the front of `src`: [`ReadError::Incomplete`] until the header is in, an error
/// for one of another `protocol` than the connection's, or whose header does not lie within
/// the frame and [`MAX_FRAME_HEAD`]. A THeader frame whose message cannot be read (a
/// transform, or a protocol not spoken here) is an error, as a whole one is. A zlib message's
/// header is read from its first bytes inflated ([`read_zlib_head`]). A THeader frame longer
/// than Apache Thrift's readers take is an error.
pub(crate) fn length_prefixed_head(
    src: &[u8],
    transport: Transport,
    protocol: Option<Protocol>,
    zlib_head: &ZlibHead,
) -> Result<LengthPrefixedHead, ReadError> {
    let Some(&[l0, l1, l2, l3]) = src.first_chunk::<4>() else {
        return Err(ReadError::Incomplete);
    };
    let prefix = u32::from_be_bytes([l0, l1, l2, l3]);
    let len = 4 + u64::from(prefix);
    // What has arrived of the frame, and how far its header may reach.
    let end = usize::try_from(len).unwrap_or(usize::MAX);
    let frame = src.get(..end.min(src.len())).unwrap_or_default();
    let within = end.min(MAX_FRAME_HEAD);
    let beyond = ReadError::malformed("the message header is not within the frame's head");
    let (found, payload_start) = if transport == Transport::Header {
        theader::check_frame_len(prefix)?;
        let Some(&[_, _, _, _, m0, m1, .., w0, w1]) =
            frame.first_chunk::<{ theader::BLOCK_START }>()
        else {
            return Err(if within >= theader::BLOCK_START {
                ReadError::Incomplete
            } else {
                beyond
            });
        };
        if [m0, m1] != theader::MAGIC {
            return Err(ReadError::malformed("missing THeader magic"));
        }
        let payload_start = theader::BLOCK_START + usize::from(u16::from_be_bytes([w0, w1])) * 4;
        if payload_start > within {
            return Err(beyond);
        }
        if payload_start > frame.len() {
            return Err(ReadError::Incomplete);
        }
        let block = theader::parse(frame)?;
        if block.zlib {
            if protocol.is_some_and(|protocol| protocol != block.protocol) {
                return Err(ReadError::malformed("a frame in another protocol"));
            }
            let head = frame.get(..within).unwrap_or(frame);
            let (header, inflated) = read_zlib_head(head, within, &block, zlib_head)?;
            return Ok(LengthPrefixedHead {
                protocol: block.protocol,
                header,
                len,
                inflated: Some(inflated),
            });
        }
        (block.protocol, block.payload_start)
    } else {
        let Some(&first) = frame.get(4) else {
            return Err(if within > 4 {
                ReadError::Incomplete
            } else {
                beyond
            });
        };
        (Protocol::of_message_starting_with(first), 4)
    };
    if protocol.is_some_and(|protocol| protocol != found) {
        return Err(ReadError::malformed("a frame in another protocol"));
    }
    let header =
        protocol::read_message_header(found, &mut Cursor::new(frame, payload_start, within))?;
    Ok(LengthPrefixedHead {
        protocol: found,
        header,
        len,
        inflated: None,
    })
}

/// The message header of the zlib THeader frame that `block` describes, from `head`, its bytes
/// arrived (at most `within`, the frame's head): read from its first bytes inflated (at most
/// [`MAX_FRAME_HEAD`] of them), and the frame's head rebuilt without the transform, which the
/// header describes. [`ReadError::Incomplete`] while more of the head is to come; an error
/// when its head does not inflate to a message header: the frame's message type is then
/// unknown, and a one-way call must get no answer. The inflation goes on in `cached`, where
/// the last read of the same frame left it, so that each byte of the head is inflated once.
#[cold]
fn read_zlib_head(
    head: &[u8],
    within: usize,
    block: &theader::HeaderBlock,
    cached: &ZlibHead,
) -> Result<(MessageHeader, Vec<u8>), ReadError> {
    // Only a read made while another holds it (none does) inflates afresh.
    let mut fresh = None;
    let mut borrowed = cached.0.try_borrow_mut();
    let slot = match borrowed.as_deref_mut() {
        Ok(slot) => slot,
        Err(_) => &mut fresh,
    };
    let state = match slot {
        Some(state) if state.inflation.continues(head, block) => state,
        _ => slot.insert(Box::new(ZlibHeadState {
            inflation: zlib::HeadInflation::new(head, block),
            decided: false,
        })),
    };
    let inflation = &mut state.inflation;
    inflation.feed(head, block);
    let mut cursor = Cursor::in_frame(&inflation.frame, inflation.payload_start);
    let read = match protocol::read_message_header(block.protocol, &mut cursor) {
        Ok(header) => Ok((header, inflation.frame.clone())),
        Err(ReadError::Incomplete)
            if inflation.cut == Some(zlib::Cut::Short) && head.len() < within =>
        {
            return Err(ReadError::Incomplete);
        }
        Err(_) => Err(ReadError::malformed(
            "the first bytes of a zlib THeader message over the cap do not inflate to its message header",
        )),
    };
    state.decided = true;
    read
}

/// A whole message split off the stream, read as far as its [`Message`] needs.
pub(crate) struct Found {
    frame: Bytes,
    pub(crate) format: ThriftFormat,
    /// Where the message starts in the frame (after a length prefix and a THeader block).
    payload_start: usize,
    header: MessageHeader,
    /// Where a THeader frame's info headers are.
    info: Option<Range<usize>>,
    reject_reason: Option<&'static str>,
}

impl Found {
    /// The message of `header` in `frame`, in `format`, starting at `payload_start` (after the
    /// THeader `block`, if any): a call is refused when its arguments are malformed or its
    /// header block is longer than Apache Thrift's servers read (they close the connection
    /// other clients' calls share); an answer's block is its client's to read.
    #[inline(always)]
    fn checked(
        frame: Bytes,
        format: ThriftFormat,
        payload_start: usize,
        header: MessageHeader,
        block: Option<&theader::HeaderBlock>,
    ) -> Self {
        let reject_reason = match header.message_type {
            MessageType::Call | MessageType::Oneway
                if block.is_some_and(theader::HeaderBlock::longer_than_peers_read) =>
            {
                Some(HEADER_BLOCK_TOO_LONG)
            }
            MessageType::Call | MessageType::Oneway => {
                check_arguments(format.protocol, &frame, header.body_start).err()
            }
            MessageType::Reply | MessageType::Exception => None,
        };
        Self {
            frame,
            format,
            payload_start,
            header,
            info: block.map(|block| block.info.clone()),
            reject_reason,
        }
    }

    /// Makes `message` the found one, in place: a `Message` is a few hundred bytes, and each
    /// function it passes through by value may copy it (five copies a message when the decoder
    /// built it and returned it up through its callers).
    #[inline(always)]
    pub(crate) fn fill(self, message: &mut Message) -> Result<(), CodecError> {
        let header = &self.header;
        let (kind, status) = match header.message_type {
            MessageType::Call => (MessageKind::Request, ResponseStatus::Ok),
            MessageType::Oneway => (MessageKind::Oneway, ResponseStatus::Ok),
            MessageType::Exception => (MessageKind::Response, ResponseStatus::ServerError),
            MessageType::Reply => (MessageKind::Response, reply_status(&self)),
        };
        // An exception that cannot be read is forwarded as it came; only a readable shed call
        // is marked as safe to retry.
        let not_processed = header.message_type == MessageType::Exception
            && crate::reply::read_exception(
                self.format.protocol,
                Cursor::in_frame(&self.frame, header.body_start),
                |_| {},
            )
            .is_ok_and(|kind| kind == crate::reply::LOADSHEDDING);
        let layout = Layout {
            payload_start: self.payload_start,
            seqid: header.seqid_at.clone(),
            lax: header.lax,
        };
        message.reset(kind, u64::from(header.seqid as u32), self.frame);
        message.status = status;
        message.not_processed = not_processed;
        message.variant = self.format.to_variant();
        message.layout = FrameLayout::from(layout);
        message.reject_reason = self.reject_reason;
        // The metadata is filled in place, its strings sliced from the message's own frame:
        // the headers Apache Thrift's servers hand their handlers, not those they skip.
        let (frame, metadata) = (&message.frame, &mut message.metadata);
        if let Some(info) = self.info {
            for info in InfoHeaders::new(frame, info) {
                let info = info?;
                if frame.get(info.key.clone()).is_some_and(is_codecs_own) {
                    continue;
                }
                // Headers that are not UTF-8 stay in the frame but cannot be routed on: the
                // metadata refuses them. Apache Thrift's readers keep a key's last value, so a
                // refused value takes out an earlier one of its key, which no server reads.
                let key = info.key.clone();
                let inserted = metadata.insert(
                    MetadataStr::Source(info.key),
                    MetadataStr::Source(info.value),
                );
                if !inserted
                    && let Some(key) = frame.get(key).and_then(|key| std::str::from_utf8(key).ok())
                {
                    metadata.unset(key);
                }
            }
        }
        add_name(metadata, frame, self.header.name)
    }
}

/// True for an info header spelt as a key this codec sets from the message name, `service`
/// or `method`. Such a header is kept out of the metadata: a call that is not multiplexed has
/// no `service` of its own, and a client's header would stand in for it, to routes, rbac and
/// access logs alike. It stays in the frame, forwarded as it came: Apache Thrift's servers hand
/// every info header to the handler whatever its name, so it is no reason to refuse the call.
#[inline]
fn is_codecs_own(key: &[u8]) -> bool {
    const SERVICE: &[u8] = keys::SERVICE.as_bytes();
    const METHOD: &[u8] = keys::METHOD.as_bytes();
    matches!(key, SERVICE | METHOD)
}

/// The status of a reply: field 0 is the return value, any other field a declared exception.
/// A result that cannot be read in a frame whose end is known is the client's to judge: it is
/// forwarded and counted as failed, not a reason to reset a connection that other clients'
/// calls share.
fn reply_status(found: &Found) -> ResponseStatus {
    let cursor = Cursor::in_frame(&found.frame, found.header.body_start);
    match protocol::first_field_id(found.format.protocol, cursor) {
        Ok(Some(id)) if id != 0 => ResponseStatus::ApplicationError,
        Ok(_) => ResponseStatus::Ok,
        Err(_) => ResponseStatus::ServerError,
    }
}

/// Adds the method name at `name` in `frame` as `method`, and a `Service:method` name
/// (TMultiplexedProtocol), split at the first colon, as `service` and `method`. `metadata` lies
/// over `frame` (see `Metadata::over`).
///
/// Each byte is validated as UTF-8 once: a string split at an ASCII byte is UTF-8 exactly when
/// both sides are, so checking the sides checks the whole name.
fn add_name(metadata: &mut Metadata, frame: &Bytes, name: Range<usize>) -> Result<(), CodecError> {
    let colon = frame
        .get(name.clone())
        .and_then(|bytes| bytes.iter().position(|&b| b == b':'));
    let (service, method) = match colon {
        Some(colon) => (
            Some(name.start..name.start + colon),
            name.start + colon + 1..name.end,
        ),
        None => (None, name),
    };
    // A refusal of metadata that overflowed (a THeader block of too many headers) is not the
    // name's fault: the message stays whole, and the engine answers such a request itself.
    let mut add = |key: &'static str, range: Range<usize>| {
        if metadata.insert(key, MetadataStr::Source(range)) || metadata.overflowed() {
            Ok(())
        } else {
            Err(CodecError::malformed("method name is not UTF-8"))
        }
    };
    if let Some(service) = service {
        add(keys::SERVICE, service)?;
    }
    add(keys::METHOD, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multiplexed name is split at its first colon, and a name with bytes that are not
    /// UTF-8 on either side of it is refused, as a whole name that is not UTF-8 is.
    #[test]
    fn names_split_at_the_first_colon_and_must_be_utf8() {
        // A name, and the service and method it reads as (`None`: refused).
        type Case = (&'static [u8], Option<(Option<&'static str>, &'static str)>);
        let cases: [Case; 6] = [
            (b"echo", Some((None, "echo"))),
            (b"Svc:echo", Some((Some("Svc"), "echo"))),
            (b"Svc:a:b", Some((Some("Svc"), "a:b"))),
            (b"\xffSvc:echo", None),
            (b"Svc:\xff", None),
            (b"\xc3\xa9", Some((None, "\u{e9}"))),
        ];
        for (name, expected) in cases {
            let frame = Bytes::copy_from_slice(name);
            let mut metadata = Metadata::over(frame.clone());
            let added = add_name(&mut metadata, &frame, 0..name.len());
            let got = added.ok().map(|()| {
                let get = |key: &str| metadata.get(key).map(str::to_owned);
                (get(keys::SERVICE), get(keys::METHOD).unwrap_or_default())
            });
            let expected = expected.map(|(s, m)| (s.map(str::to_owned), m.to_owned()));
            assert_eq!(got, expected, "{name:?}");
        }
    }

    /// The head of a zlib call over the cap is inflated as its bytes arrive, each byte once,
    /// however many reads bring it (each read inflated it all again, up to 64 KiB a read), and
    /// not again when the engine reads its head and passes it over.
    #[test]
    fn an_oversized_zlib_head_is_inflated_once_as_it_arrives()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::io::Write;
        // Letters zlib cannot shrink much, each `seed` its own.
        let letters = |seed: u32, len: usize| -> Vec<u8> {
            (0..len)
                .scan(seed, |x, _| {
                    *x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    Some(b'a' + (*x >> 16) as u8 % 26)
                })
                .collect()
        };
        // A call whose name ends 20 KiB into its message.
        let name = letters(1, 20_000);
        let value = letters(2, 200_000);
        let mut message = vec![0x80, 1, 0, 1];
        message.extend_from_slice(&(name.len() as u32).to_be_bytes());
        message.extend_from_slice(&name);
        message.extend_from_slice(&[0, 0, 0, 5, 11, 0, 1]);
        message.extend_from_slice(&(value.len() as u32).to_be_bytes());
        message.extend_from_slice(&value);
        message.push(0);
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&message)?;
        let compressed = encoder.finish()?;
        let mut frame = ((14 + compressed.len()) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0x0f, 0xff, 0, 0, 0, 0, 0, 5, 0, 1, 0, 1, 1, 0]);
        frame.extend_from_slice(&compressed);

        let mut decoder = Decoder::new(1024, Side::Downstream);
        let mut src = BytesMut::new();
        crate::zlib::INFLATED.set(0);
        let mut reads = 0;
        for piece in frame.chunks(512) {
            src.extend_from_slice(piece);
            reads += 1;
            match decoder.decode(&mut src, Transport::Header) {
                Ok(None) => {}
                Err(CodecError::FrameTooLarge { .. }) => break,
                other => {
                    return Err(format!("read {reads}: {:?}", other.map(|f| f.is_some())).into());
                }
            }
        }
        // As the engine goes on: it reads the head, and passes the call over.
        let head = oversized_response(&src, Transport::Header, None, &decoder);
        assert_eq!(head, Some(FrameHead::Unsized));
        assert!(decoder.pass_over(&src, Some(Transport::Header)).is_some());
        let inflated = crate::zlib::INFLATED.get();
        assert!(
            reads > 20 && inflated <= name.len() as u64 + 2048,
            "{inflated} bytes inflated in {reads} reads, for a message header of {} bytes",
            name.len() + 12
        );
        Ok(())
    }

    #[test]
    fn detects_each_transport_from_the_first_bytes() {
        assert_eq!(detect_transport(&[]), None);
        assert_eq!(detect_transport(&[0x80, 0x01]), Some(Transport::Unframed));
        assert_eq!(detect_transport(&[0x82, 0x21]), Some(Transport::Unframed));
        assert_eq!(detect_transport(&[0, 0, 0, 9, 0x0f]), None);
        assert_eq!(
            detect_transport(&[0, 0, 0, 9, 0x0f, 0xff]),
            Some(Transport::Header)
        );
        assert_eq!(
            detect_transport(&[0, 0, 0, 9, 0x80, 0x01]),
            Some(Transport::Framed)
        );
        assert_eq!(
            detect_transport(&[0, 0, 0, 9, 0x82, 0x21]),
            Some(Transport::Framed)
        );
        // Lax binary: framed when the name length fits the frame, unframed otherwise.
        assert_eq!(
            detect_transport(&[0, 0, 0, 20, 0, 0, 0, 2, b'h', b'i']),
            Some(Transport::Framed)
        );
        assert_eq!(
            detect_transport(&[0, 0, 0, 2, b'h', b'i', 1, 0, 0]),
            Some(Transport::Unframed)
        );
    }
}
