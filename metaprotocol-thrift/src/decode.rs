//! Finding frames in the byte stream and describing them as [`Message`]s.
//!
//! Framed and THeader frames are delimited by their length prefix, checked against the frame
//! size cap before any body byte is awaited. Unframed messages have no prefix: their end is
//! found by skipping the argument or result struct (no allocation, depth-limited), restarting
//! from the first byte on each call until the whole message is there.
//!
//! Only the message header is decoded (and the THeader block); the result struct of a reply is
//! read as far as its first field header, to tell a declared exception from a success.

use bytes::{Bytes, BytesMut};
use metaprotocol_core::{
    ByteStr, CodecError, FrameLayout, Message, MessageKind, Metadata, ResponseStatus, keys,
};

use crate::format::{Protocol, ThriftFormat, Transport};
use crate::layout::Layout;
use crate::protocol::{self, MessageHeader, MessageType};
use crate::theader::{self, InfoHeaders};
use crate::wire::{Cursor, ReadError};

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

/// Decodes one message of `transport` from the front of `src`: `Ok(None)` (with `src`
/// unchanged) until it is complete.
pub(crate) fn decode(
    src: &mut BytesMut,
    transport: Transport,
    max_frame_bytes: usize,
) -> Result<Option<(Message, ThriftFormat)>, CodecError> {
    match transport {
        Transport::Framed | Transport::Header => {
            let Some(total) = length_prefixed_size(src, max_frame_bytes)? else {
                return Ok(None);
            };
            let frame = src.split_to(total).freeze();
            let (protocol, payload_start, block) = if transport == Transport::Header {
                let block = theader::parse(&frame)?;
                (block.protocol, block.payload_start, Some(block))
            } else {
                let first = frame.get(4).ok_or(CodecError::malformed("empty frame"))?;
                (Protocol::of_message_starting_with(*first), 4, None)
            };
            let mut cursor = Cursor::in_frame(&frame, payload_start);
            let header = protocol::read_message_header(protocol, &mut cursor)
                .map_err(ReadError::in_complete_frame)?;
            let format = ThriftFormat::new(transport, protocol);
            let message = describe(frame, format, payload_start, header, block.as_ref())?;
            Ok(Some((message, format)))
        }
        Transport::Unframed => {
            let Some(&first) = src.first() else {
                return Ok(None);
            };
            let protocol = Protocol::of_message_starting_with(first);
            let (header, end) = match scan_unframed(src, protocol, max_frame_bytes) {
                Ok(found) => found,
                Err(ReadError::Incomplete) => return Ok(None),
                Err(ReadError::Codec(error)) => return Err(error),
            };
            let frame = src.split_to(end).freeze();
            let format = ThriftFormat::new(transport, protocol);
            Ok(Some((describe(frame, format, 0, header, None)?, format)))
        }
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

/// Reads the message header and skips the struct of an unframed message: its header and end.
fn scan_unframed(
    src: &[u8],
    protocol: Protocol,
    max_frame_bytes: usize,
) -> Result<(MessageHeader, usize), ReadError> {
    let mut cursor = Cursor::new(src, 0, max_frame_bytes);
    let header = protocol::read_message_header(protocol, &mut cursor)?;
    let end = protocol::skip_struct(protocol, cursor)?;
    if end > max_frame_bytes {
        return Err(CodecError::FrameTooLarge {
            size: end as u64,
            max: max_frame_bytes,
        }
        .into());
    }
    Ok((header, end))
}

/// Builds the [`Message`] for one whole frame.
fn describe(
    frame: Bytes,
    format: ThriftFormat,
    payload_start: usize,
    header: MessageHeader,
    block: Option<&theader::HeaderBlock>,
) -> Result<Message, CodecError> {
    let (kind, status) = match header.message_type {
        MessageType::Call => (MessageKind::Request, ResponseStatus::Ok),
        MessageType::Oneway => (MessageKind::Oneway, ResponseStatus::Ok),
        MessageType::Exception => (MessageKind::Response, ResponseStatus::ServerError),
        MessageType::Reply => {
            let cursor = Cursor::in_frame(&frame, header.body_start);
            // Field 0 is the return value; any other field is a declared exception. A result
            // that cannot be read in a frame whose end is known is the client's to judge: it
            // is forwarded and counted as failed, not a reason to reset a connection that other
            // clients' calls share.
            let status = match protocol::first_field_id(format.protocol, cursor) {
                Ok(Some(id)) if id != 0 => ResponseStatus::ApplicationError,
                Ok(_) => ResponseStatus::Ok,
                Err(_) => ResponseStatus::ServerError,
            };
            (MessageKind::Response, status)
        }
    };
    let mut metadata = Metadata::new();
    if let Some(block) = block {
        for info in InfoHeaders::new(&frame, block.info.clone()) {
            let info = info?;
            // Headers that are not UTF-8 stay in the frame but cannot be routed on.
            if let (Ok(key), Ok(value)) = (
                ByteStr::from_utf8(frame.slice(info.key)),
                ByteStr::from_utf8(frame.slice(info.value)),
            ) {
                metadata.insert(key, value);
            }
        }
    }
    let name = ByteStr::from_utf8(frame.slice(header.name.clone()))
        .map_err(|_| CodecError::malformed("method name is not UTF-8"))?;
    match split_service(&name) {
        Some((service, method)) => {
            metadata.insert(ByteStr::from_static(keys::SERVICE), service);
            metadata.insert(ByteStr::from_static(keys::METHOD), method);
        }
        None => metadata.insert(ByteStr::from_static(keys::METHOD), name),
    }
    let layout = Layout {
        payload_start,
        seqid: header.seqid_at,
    };
    let mut message = Message::new(kind, u64::from(header.seqid as u32), frame);
    message.status = status;
    message.metadata = metadata;
    message.variant = format.to_variant();
    message.layout = FrameLayout::from(layout);
    Ok(message)
}

/// `Service:method` (TMultiplexedProtocol) split at the first colon.
pub(crate) fn split_service(name: &ByteStr) -> Option<(ByteStr, ByteStr)> {
    let colon = name.as_bytes().iter().position(|&b| b == b':')?;
    let bytes = name.clone().into_bytes();
    // Splitting UTF-8 at an ASCII byte leaves two valid UTF-8 strings.
    let service = ByteStr::from_utf8(bytes.slice(..colon)).ok()?;
    let method = ByteStr::from_utf8(bytes.slice(colon + 1..)).ok()?;
    Some((service, method))
}

#[cfg(test)]
mod tests {
    use super::*;

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
