//! [`JsonRpcCodec`]: lines in, [`Message`]s out, and back.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use metaprotocol_core::{
    ByteStr, Codec, CodecError, EncodeParams, FrameHead, FrameLayout, LocalReply, LocalReplyKind,
    Message, MessageKind, MetadataStr, PassedOver, ResponseStatus, Side, keys,
};
use serde_json::value::RawValue;

use crate::batch::{self, Gather, Split};
use crate::line::{self, Invalid, Line, Text};
use crate::skim::Skim;
use crate::{CALL_ID, Counters};

/// The id a reply to a line without a readable id carries.
const NULL_ID: &[u8] = b"null";

/// The answer to a server's call, up to its id: the proxy serves servers no methods.
const SERVER_CALL_REFUSED: &[u8] = br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"method not found: metaprotocol-proxy serves servers no methods"},"id":"#;

/// The request an answer whose id is not the proxy's answers: none, as the engine allocates
/// upstream ids from 1, so that it drops the answer and counts it as unmatched.
const NO_CALL: u64 = 0;

/// The codec of one connection and direction, made by [`crate::JsonRpcCodecFactory`]. Between
/// frames it keeps only how much of a line still arriving it has looked through, and, for a
/// client's batches, the calls of one still to hand over (decoding) and the answers of those
/// still waiting for some (encoding).
///
/// A call travels upstream with an id of the proxy's own that carries the client's: the
/// string `"<n>:<hex>"`, where `n` is the engine's request id and `hex` the client's id as it
/// wrote it (a number, a string, or `null`), hex-encoded. Servers echo ids, so the answer brings
/// the client's id back, and the client gets it exactly as it sent it.
#[derive(Debug)]
pub struct JsonRpcCodec {
    side: Side,
    max_line: usize,
    /// The most calls a client's batch may hold.
    max_batch_calls: usize,
    counters: Arc<Counters>,
    /// The bytes at the front of the read buffer known to hold no newline: a line that arrives
    /// a little at a time is looked through once, not again at every read (a client trickling
    /// a long line would otherwise cost the proxy time growing with the square of its length).
    searched: usize,
    /// A line over the limit being passed over.
    skim: Skim,
    /// A call over the line limit was passed over: the next frame decoded is the request that
    /// answers it with an error (downstream).
    passed_over_call: bool,
    /// The batch whose calls are being decoded, one a frame.
    split: Option<Split>,
    /// The batches decoded on the connection.
    batches: u64,
    /// The answers of the batches written on the connection that still wait for some: at
    /// most `max_held` bytes of the servers' answers (and the proxy's own errors besides).
    gather: Gather,
    /// The line limit, or [`batch::MAX_HELD`] if less.
    max_held: usize,
    /// The bytes of its batch's line the answer last written stands for, if it was a batch's
    /// ([`Codec::answer_len`]).
    share: Option<usize>,
}

impl JsonRpcCodec {
    /// A codec for `side` accepting lines of up to `max_line` bytes and batches of up to
    /// `max_batch_calls` calls, counting in `counters`.
    pub(crate) fn new(
        side: Side,
        max_line: usize,
        max_batch_calls: usize,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            side,
            max_line,
            max_batch_calls,
            counters,
            searched: 0,
            skim: Skim::default(),
            passed_over_call: false,
            split: None,
            batches: 0,
            gather: Gather::default(),
            max_held: max_line.min(batch::MAX_HELD),
            share: None,
        }
    }

    /// Starts handing over the calls of the batch on the line of `src` that ends at
    /// `newline`; a batch the proxy does not take is split off and answered with one error.
    fn split_batch(&mut self, src: &mut BytesMut, newline: usize) -> Option<Message> {
        match line::read_batch(&src[..newline], self.max_batch_calls) {
            Ok(calls) => {
                self.batches += 1;
                // The line's end stays in `src` until the batch's last call is handed over:
                // the engine decodes again while its read buffer holds bytes.
                let line = src.split_to(newline).freeze();
                self.split = Some(Split::new(line, calls, self.batches));
                None
            }
            Err(why) => {
                let frame = src.split_to(newline + 1).freeze();
                Some(client_message(frame, Line::Invalid(why), batch::LONE))
            }
        }
    }

    /// The next call of the batch being handed over, if there is one.
    fn next_batch_call(&mut self, src: &mut BytesMut) -> Option<Message> {
        let split = self.split.as_mut()?;
        let (frame, call, id) = split.next()?;
        if split.is_done() {
            self.split = None;
            if src.first() == Some(&b'\n') {
                src.advance(1);
            }
        }
        Some(client_message(frame, call, id))
    }

    /// The message `frame` (a line of `len` bytes before its newline) makes; `None` for a
    /// line the codec drops.
    fn message(&self, frame: Bytes, len: usize) -> Result<Option<Message>, CodecError> {
        let content = frame.get(..len).unwrap_or_default();
        let line = line::read(content);
        if self.side == Side::Downstream {
            return Ok(Some(client_message(frame, line, batch::LONE)));
        }
        Ok(Some(match line {
            Line::Response { id, error } => {
                // An id the proxy did not write (a server's `null` for a call it could not
                // read, which JSON-RPC 2.0 prescribes) names no call, but the line is whole:
                // read as an answer to no call, the connection goes on for the calls on it.
                let request_id = upstream_id(content, &id).map_or(NO_CALL, |(n, _)| n);
                let mut message = Message::new(MessageKind::Response, request_id, frame);
                message.layout = layout(Some(&id));
                message.status = match error {
                    None => ResponseStatus::Ok,
                    // The codes JSON-RPC reserves for itself and for servers' own failures.
                    Some(-32768..=-32000) => ResponseStatus::ServerError,
                    Some(_) => ResponseStatus::ApplicationError,
                };
                message
            }
            Line::Invalid(why) => return Err(CodecError::malformed(why.reason())),
            // JSON-RPC lets a server call its client too, but an upstream connection carries
            // many clients' calls: none of them is the one called. The connection goes on for
            // the calls in flight on it.
            Line::Request { id, .. } => {
                self.counters.server_calls.fetch_add(1, Ordering::Relaxed);
                // A notification wants no answer.
                let Some(id) = id else { return Ok(None) };
                // A call the codec answers itself on the connection, as a heartbeat is:
                // `encode_heartbeat_reply` writes the error.
                let mut message = Message::new(MessageKind::Heartbeat, NO_CALL, frame);
                message.layout = layout(Some(&id));
                message
            }
        }))
    }
}

/// The message a client's call `line` (in `frame`) makes, with request id `request_id`.
fn client_message(frame: Bytes, line: Line, request_id: u64) -> Message {
    match line {
        Line::Request { id, method } => {
            let kind = if id.is_some() {
                MessageKind::Request
            } else {
                MessageKind::Oneway
            };
            let method = match method {
                Text::At(range) => ByteStr::from_utf8(frame.slice(range)).ok(),
                Text::Owned(text) => Some(ByteStr::from(text)),
            };
            // The engine never reads a client's request id back but to pass it to `encode`;
            // the client's own id stays in the frame.
            let mut message = Message::new(kind, request_id, frame);
            message.layout = layout(id.as_ref());
            if let Some(method) = method {
                message.metadata.insert(keys::METHOD, method);
            }
            if let Some(id) = id {
                // A span of the frame, for access logs: the id names the call to its client,
                // where the request id names a batch to the encoder.
                message
                    .metadata
                    .insert(CALL_ID, MetadataStr::Source(unquoted(&message.frame, id)));
            }
            message
        }
        line => {
            // An answer from a client is, to a server, an object without `method`: the proxy
            // sends clients no calls to answer.
            let why = match line {
                Line::Invalid(why) => why,
                _ => Invalid::NotRpc,
            };
            let mut message = Message::new(MessageKind::Request, request_id, frame);
            message.reject_reason = Some(why.reason());
            message
        }
    }
}

/// Where the text of the id at `range` of `frame` sits: a string's without its quotes (its
/// escapes as written), any other id's as written.
fn unquoted(frame: &[u8], range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    match frame.get(range.clone()) {
        Some([b'"', .., b'"']) => range.start + 1..range.end - 1,
        _ => range,
    }
}

/// Appends the answer `frame` (a server's line, its id at `range`) with the client's id,
/// which `hex` spells, in place of the proxy's; nothing if that is not an id a client could
/// have sent.
fn put_answer(
    frame: &[u8],
    range: std::ops::Range<usize>,
    hex: &[u8],
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = dst.len();
    let mut client_id = 0..0;
    write_with_id(frame, range, dst, |dst| {
        let id_start = dst.len();
        for pair in hex.chunks_exact(2) {
            dst.put_u8(unhex(pair[0]) << 4 | unhex(pair[1]));
        }
        client_id = id_start..dst.len();
    })?;
    // The proxy hex-encoded an id a client wrote on one line, but a server may send back any
    // hex: what it spells must be such an id again, or the client would be sent a line that is
    // not JSON, or two lines (an answer it never asked for).
    if !is_client_id(&dst[client_id]) {
        dst.truncate(start);
        return Err(CodecError::Encode(
            "the answer's id is not one a client could have sent".into(),
        ));
    }
    Ok(())
}

/// The id's place in the frame: `[start, end, 1]`, or all zeros for no id.
fn layout(id: Option<&std::ops::Range<usize>>) -> FrameLayout {
    let mut slots = [0u32; 6];
    if let Some(range) = id
        && let (Ok(start), Ok(end)) = (u32::try_from(range.start), u32::try_from(range.end))
    {
        slots = [start, end, 1, 0, 0, 0];
    }
    FrameLayout(slots)
}

/// Where `message`'s id sits, if it has one.
fn id_range(message: &Message) -> Option<std::ops::Range<usize>> {
    let [start, end, has, ..] = message.layout.0;
    (has == 1).then_some(start as usize..end as usize)
}

/// Appends `frame` with its id (at `range`) replaced by what `write_id` writes.
fn write_with_id(
    frame: &[u8],
    range: std::ops::Range<usize>,
    dst: &mut BytesMut,
    write_id: impl FnOnce(&mut BytesMut),
) -> Result<(), CodecError> {
    let (Some(before), Some(after)) = (frame.get(..range.start), frame.get(range.end..)) else {
        return Err(CodecError::Encode("the frame's id is out of place".into()));
    };
    dst.reserve(frame.len() + 2 * range.len() + 24);
    dst.put_slice(before);
    write_id(dst);
    dst.put_slice(after);
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the upstream id of call `n` whose client id is `client_id`: `"<n>:<hex>"`.
fn put_upstream_id(dst: &mut BytesMut, n: u64, client_id: &[u8]) {
    let mut digits = [0u8; 20];
    dst.put_u8(b'"');
    dst.put_slice(format_id(&mut digits, n));
    dst.put_u8(b':');
    for byte in client_id {
        dst.put_u8(HEX[usize::from(byte >> 4)]);
        dst.put_u8(HEX[usize::from(byte & 0xf)]);
    }
    dst.put_u8(b'"');
}

/// The engine's request id and the client's id (still hex-encoded) in the upstream id at
/// `range` of `line`.
fn upstream_id<'l>(line: &'l [u8], range: &std::ops::Range<usize>) -> Option<(u64, &'l [u8])> {
    let token = line
        .get(range.clone())?
        .strip_prefix(b"\"")?
        .strip_suffix(b"\"")?;
    let colon = token.iter().position(|b| *b == b':')?;
    let digits = &token[..colon];
    // The proxy writes digits alone; `parse` would take a sign too.
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let hex = &token[colon + 1..];
    (hex.len() % 2 == 0 && hex.iter().all(u8::is_ascii_hexdigit)).then_some((n, hex))
}

/// True if `id` is a JSON value on one line, as the ids `line::read` takes from a client are.
fn is_client_id(id: &[u8]) -> bool {
    !id.contains(&b'\n') && serde_json::from_slice::<&RawValue>(id).is_ok()
}

fn unhex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.wrapping_sub(b'A').wrapping_add(10) & 0xf,
    }
}

/// JSON-RPC's error code for a local reply.
fn error_code(request: &Message, kind: LocalReplyKind) -> i64 {
    match kind {
        LocalReplyKind::RouteNotFound => -32601,
        LocalReplyKind::BadRequest if request.reject_reason == Some(Invalid::Parse.reason()) => {
            -32700
        }
        LocalReplyKind::BadRequest => -32600,
        LocalReplyKind::Timeout => -32001,
        LocalReplyKind::Unavailable | LocalReplyKind::NoHealthyUpstream => -32002,
        LocalReplyKind::OverLimit => -32003,
        LocalReplyKind::Unauthorized => -32004,
        LocalReplyKind::Internal => -32603,
        _ => -32000,
    }
}

impl Codec for JsonRpcCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        if std::mem::take(&mut self.passed_over_call) {
            // Its id went by unread: the error goes back with id `null`, as for a parse error.
            let mut message = Message::new(MessageKind::Request, 0, Bytes::new());
            message.reject_reason = Some(Invalid::TooLong.reason());
            return Ok(Some(message));
        }
        if let Some(call) = self.next_batch_call(src) {
            return Ok(Some(call));
        }
        loop {
            let from = self.searched.min(src.len());
            let found = src[from..].iter().position(|b| *b == b'\n');
            let Some(newline) = found.map(|at| from + at) else {
                if src.len() > self.max_line {
                    self.searched = 0;
                    return Err(CodecError::FrameTooLarge {
                        size: src.len() as u64,
                        max: self.max_line,
                    });
                }
                self.searched = src.len();
                return Ok(None);
            };
            self.searched = 0;
            if newline > self.max_line {
                return Err(CodecError::FrameTooLarge {
                    size: newline as u64,
                    max: self.max_line,
                });
            }
            if self.side == Side::Downstream && line::is_batch(&src[..newline]) {
                if let Some(refused) = self.split_batch(src, newline) {
                    return Ok(Some(refused));
                }
                if let Some(call) = self.next_batch_call(src) {
                    return Ok(Some(call));
                }
                continue;
            }
            let frame = src.split_to(newline + 1).freeze();
            if frame.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Some(message) = self.message(frame, newline)? {
                return Ok(Some(message));
            }
        }
    }

    fn encode(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        if !params.mutation.is_empty() {
            // JSON-RPC has no headers to edit: the frame goes as it came, and that is counted.
            self.counters
                .mutations_ignored
                .fetch_add(1, Ordering::Relaxed);
        }
        self.share = None;
        let frame = &message.frame;
        match (self.side, message.kind, id_range(message)) {
            (Side::Upstream, MessageKind::Request, Some(range)) => {
                let client_id = frame.get(range.clone()).unwrap_or_default();
                let start = dst.len();
                write_with_id(frame, range.clone(), dst, |dst| {
                    put_upstream_id(dst, params.request_id, client_id);
                })?;
                // A batch's call is no line of its own.
                if !frame.ends_with(b"\n") {
                    dst.put_u8(b'\n');
                }
                // The upstream id spells the client's in hex, twice its length: a line within
                // the limit may not be once sent. Over it, the server's answer, which echoes
                // the id, would be a line no upstream codec reads, and closing that connection
                // would fail the calls other clients have in flight on it. Measured as the
                // decoder measures, without the newline.
                let line = (dst.len() - start).saturating_sub(1);
                if line > self.max_line {
                    dst.truncate(start);
                    return Err(CodecError::Encode(
                        format!(
                            "the call takes {line} bytes with the proxy's id, over the line limit of {}",
                            self.max_line
                        )
                        .into(),
                    ));
                }
                Ok(())
            }
            (Side::Downstream, MessageKind::Response, Some(range)) => {
                let (_, hex) = upstream_id(frame, &range).ok_or(CodecError::Encode(
                    "the answer's id is not the proxy's".into(),
                ))?;
                if params.request_id == batch::LONE {
                    return put_answer(frame, range, hex, dst);
                }
                // At most what the batch's array grows by: the answer with the client's id in
                // place of the proxy's (its quotes and `<n>:` left out too).
                let grows = frame.len() - range.len() + hex.len() / 2;
                if self.gather.held() + grows > self.max_held {
                    // The engine answers the call with -32603 instead, which is small.
                    return Err(CodecError::Encode(
                        format!(
                            "the answers of the connection's unfinished batches would take more \
                             than {} bytes (the listener's max_frame_bytes, or half the \
                             connection's limit on unsent answers)",
                            self.max_held
                        )
                        .into(),
                    ));
                }
                let share = self.gather.add(params.request_id, dst, |array| {
                    put_answer(frame, range, hex, array)
                })?;
                self.share = Some(share);
                Ok(())
            }
            (_, MessageKind::Oneway, None) => {
                // A listener may take longer lines than the cluster's servers.
                let line = frame.len() - usize::from(frame.ends_with(b"\n"));
                if self.side == Side::Upstream && line > self.max_line {
                    return Err(CodecError::Encode(
                        format!(
                            "the notification takes {line} bytes, over the line limit of {}",
                            self.max_line
                        )
                        .into(),
                    ));
                }
                dst.put_slice(frame);
                // A batch's notification is no line of its own.
                if !frame.ends_with(b"\n") {
                    dst.put_u8(b'\n');
                }
                Ok(())
            }
            _ => Err(CodecError::Encode(
                "this JSON-RPC message cannot be written on this side".into(),
            )),
        }
    }

    fn encode_local_reply(
        &mut self,
        request: &Message,
        reply: &LocalReply,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let id = id_range(request)
            .and_then(|range| request.frame.get(range))
            .unwrap_or(NULL_ID);
        let text = serde_json::to_string(&format!("{}: {}", reply.kind, reply.message))
            .map_err(|e| CodecError::Encode(e.to_string().into()))?;
        let code = error_code(request, reply.kind);
        let head = format!(r#"{{"jsonrpc":"2.0","error":{{"code":{code},"message":{text}}},"id":"#);
        let write = |dst: &mut BytesMut| {
            dst.put_slice(head.as_bytes());
            dst.put_slice(id);
            dst.put_slice(b"}\n");
            Ok(())
        };
        self.share = None;
        if request.request_id == batch::LONE {
            return write(dst);
        }
        self.share = Some(self.gather.add(request.request_id, dst, write)?);
        Ok(())
    }

    /// A batch's answers go out as one line once the last is in: each answer stands for its
    /// own bytes in it, and the last for the brackets, commas and line's end too.
    fn answer_len(&self) -> Option<usize> {
        self.share
    }

    /// The answers the connection's unfinished batches wait with (at most `max_held`, and the
    /// proxy's own errors besides).
    fn held_answer_bytes(&self) -> usize {
        self.gather.held()
    }

    /// A line has no length in its head, and its id may come last: the engine hands the line
    /// to [`Codec::pass_over`] as it arrives, on either side.
    fn oversized_response(&self, _src: &[u8]) -> Option<FrameHead> {
        Some(FrameHead::Unsized)
    }

    fn pass_over(&mut self, src: &[u8]) -> Option<PassedOver> {
        Some(match self.skim.feed(src) {
            None => PassedOver::More,
            Some(len) => {
                let request_id = std::mem::take(&mut self.skim).request_id();
                self.passed_over_call = self.side == Side::Downstream;
                PassedOver::End { len, request_id }
            }
        })
    }

    /// JSON-RPC has no heartbeats: the "heartbeat" an upstream codec decodes is a server's
    /// call, answered with error -32601 (method not found) and the server's id, as a client
    /// that serves no methods answers.
    fn encode_heartbeat_reply(
        &mut self,
        call: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let id = id_range(call)
            .and_then(|range| call.frame.get(range))
            .unwrap_or(NULL_ID);
        dst.put_slice(SERVER_CALL_REFUSED);
        dst.put_slice(id);
        dst.put_slice(b"}\n");
        Ok(())
    }
}

/// `n` in decimal, in `buf`.
fn format_id(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}
