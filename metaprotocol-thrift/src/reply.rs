//! `TApplicationException`: the local replies this codec writes, and a reader for the ones
//! servers send.
//!
//! A local reply is an `EXCEPTION` message with the request's method name (without a
//! multiplexing prefix, as Apache Thrift servers answer) and seqid, in the request's own
//! transport and protocol, carrying `TApplicationException { 1: string message, 2: i32 type }`.
//! It reads only the request's message header, so a request rejected for its arguments is
//! answered too.

use bytes::BytesMut;
use metaprotocol_core::{CodecError, LocalReply, LocalReplyKind, Message, MessageKind};

use crate::encode::{format_of, seqid_of, write_frame};
use crate::format::{Protocol, Transport};
use crate::layout::Layout;
use crate::protocol::{self, MessageType, Scalar, ValueType, walk};
use crate::theader::{self, InfoSource, Prelude};
use crate::wire::{Cursor, ReadError};

/// `TApplicationException` type for a method the server does not know; used for
/// [`LocalReplyKind::RouteNotFound`].
pub const UNKNOWN_METHOD: i32 = 1;
/// `TApplicationException` type for a failure inside the server; used for every
/// [`LocalReplyKind`] not named at another type.
pub const INTERNAL_ERROR: i32 = 6;
/// `TApplicationException` type for a message the server cannot read, what Apache Thrift's
/// Java server answers to arguments it fails to parse; used for
/// [`LocalReplyKind::BadRequest`].
pub const PROTOCOL_ERROR: i32 = 7;
/// `TApplicationException` type for a THeader message hidden by a transform the server cannot
/// undo, what Apache Thrift's Python server means to answer to one. The codec answers none:
/// such a call's message type is hidden (it could be one-way), so its connection closes.
pub const INVALID_TRANSFORM: i32 = 8;
/// `TApplicationException` type for a THeader message in a protocol the server does not speak
/// (JSON, or an unknown id). The codec answers none, as for [`INVALID_TRANSFORM`].
pub const INVALID_PROTOCOL: i32 = 9;
/// `TApplicationException` type by which an fbthrift server says it shed the call under load
/// without running it: the codec marks such an answer
/// [`not_processed`](metaprotocol_core::Message::not_processed), so the engine may retry it
/// elsewhere; used for [`LocalReplyKind::OverLimit`] (Apache Thrift names no such type, and
/// its clients carry the number and the message as they do any other).
pub const LOADSHEDDING: i32 = 11;

const FIELD_MESSAGE: i16 = 1;
const FIELD_TYPE: i16 = 2;

/// A `TApplicationException` read from an `EXCEPTION` message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplicationException {
    /// The exception type ([`UNKNOWN_METHOD`], [`INTERNAL_ERROR`] ...); 0 (`UNKNOWN`) if absent.
    pub kind: i32,
    /// The text, if any (lossily decoded as UTF-8).
    pub message: String,
}

impl ApplicationException {
    /// Reads the `TApplicationException` of an `EXCEPTION` message decoded by this codec (a
    /// server's answer, or a local reply). Allocates: for logs and tests, not the hot path.
    pub fn from_message(message: &Message) -> Result<Self, CodecError> {
        let format = format_of(message)?;
        let layout = Layout::of(message)?;
        let frame = &message.frame[..];
        let mut cursor = Cursor::in_frame(frame, layout.payload_start);
        let header = protocol::read_message_header(format.protocol, &mut cursor)
            .map_err(ReadError::in_complete_frame)?;
        if header.message_type != MessageType::Exception {
            return Err(CodecError::malformed("not an EXCEPTION message"));
        }
        let body = Cursor::in_frame(frame, header.body_start);
        let mut text = String::new();
        let kind = read_exception(format.protocol, body, |bytes| {
            text = String::from_utf8_lossy(bytes).into_owned();
        })
        .map_err(ReadError::in_complete_frame)?;
        Ok(Self {
            kind,
            message: text,
        })
    }
}

/// Reads the `TApplicationException` struct at `body`: returns its type (0 if absent) and hands
/// its message text, if any, to `on_message`. Reads in place, without allocating.
pub(crate) fn read_exception(
    protocol: Protocol,
    body: Cursor<'_>,
    mut on_message: impl FnMut(&[u8]),
) -> Result<i32, ReadError> {
    protocol::with_reader(protocol, body, |reader| {
        let mut kind = 0;
        let saved = reader.struct_begin();
        while let Some((ty, id)) = reader.field_begin()? {
            match (id, ty) {
                (FIELD_MESSAGE, ValueType::Binary) | (FIELD_TYPE, ValueType::I32) => {
                    match reader.scalar(ty)? {
                        Scalar::Binary(text) => on_message(text),
                        Scalar::I32(value) => kind = value,
                        _ => {}
                    }
                }
                _ => walk::skip_value(reader, ty)?,
            }
        }
        reader.struct_end(saved);
        Ok(kind)
    })
}

/// Appends the `TApplicationException` answering `request` (nothing for one-way requests).
pub(crate) fn encode_local_reply(
    request: &Message,
    reply: &LocalReply,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    if request.kind == MessageKind::Oneway {
        return Ok(());
    }
    let format = format_of(request)?;
    let seqid = seqid_of(request.request_id)?;
    let frame = &request.frame[..];
    let kind = match reply.kind {
        LocalReplyKind::RouteNotFound => UNKNOWN_METHOD,
        LocalReplyKind::BadRequest => PROTOCOL_ERROR,
        // Refused unrun, as Dubbo's status 100 and bRPC's `ELIMIT` say: a client (or a proxy
        // before this one) may send it elsewhere, where an INTERNAL_ERROR says it failed in
        // the server.
        LocalReplyKind::OverLimit => LOADSHEDDING,
        _ => INTERNAL_ERROR,
    };
    let layout = Layout::of(request)?;
    let mut cursor = Cursor::in_frame(frame, layout.payload_start);
    let header = protocol::read_message_header(format.protocol, &mut cursor)
        .map_err(ReadError::in_complete_frame)?;
    let name = frame.get(header.name).unwrap_or_default();
    let method = match name.iter().position(|&b| b == b':') {
        Some(colon) => name.get(colon + 1..).unwrap_or_default(),
        None => name,
    };
    let text = reply.to_string();
    let theader = match format.transport {
        Transport::Header => {
            let flags = theader::parse(frame).map(|block| block.flags).unwrap_or(0);
            let prelude = Prelude {
                flags,
                seq: seqid as u32,
                protocol: format.protocol,
            };
            Some((prelude, InfoSource::None))
        }
        Transport::Framed | Transport::Unframed => None,
    };
    let start = dst.len();
    let result = write_frame(dst, format.transport, theader, |dst| {
        protocol::write_message_header(format.protocol, dst, method, MessageType::Exception, seqid);
        protocol::with_writer(format.protocol, dst, |writer| {
            let saved = writer.struct_begin();
            writer.field_begin(ValueType::Binary, FIELD_MESSAGE);
            writer.scalar(Scalar::Binary(text.as_bytes()));
            writer.field_begin(ValueType::I32, FIELD_TYPE);
            writer.scalar(Scalar::I32(kind));
            writer.field_stop();
            writer.struct_end(saved);
        });
        Ok(())
    });
    if result.is_err() {
        dst.truncate(start);
    }
    result
}
