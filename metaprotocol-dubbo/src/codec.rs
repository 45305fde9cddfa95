//! [`DubboCodec`]: framing, decode dispatch by message kind, and encode.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{
    ByteStr, Codec, CodecError, EncodeParams, FrameHead, LocalReply, Message, MessageKind,
    Metadata, ResponseStatus, WireVariant, decode_new,
};

use crate::attachments::{self, MapBounds, slice};
use crate::header::{HEADER_LEN, Header, patch_body_len, patch_request_id};
use crate::hessian::compact_int;
use crate::hessian::reader::Reader;
use crate::hessian::skip::Skipper;
use crate::layout::{AttachmentsLayout, Body};
use crate::response::ResultFlag;
use crate::serialization::{FASTJSON2, HESSIAN2, unsupported_reason};

/// The variant of requests whose client reads response attachments (Dubbo protocol versions
/// 2.0.2 to 2.0.99). A response encoded for any other variant never gains attachments: the
/// clients that send older or framework version numbers (dubbo-py sends 2.5.3) cannot decode
/// result flags 3 to 5. Upstream connections do not depend on it.
pub const READS_RESPONSE_ATTACHMENTS: WireVariant = WireVariant(1);
use crate::{deadline, fastjson2, reply, request, response, status};

/// The Dubbo2 codec for one connection and direction.
///
/// It decodes whatever arrives (requests, responses, heartbeats in both directions: Dubbo
/// providers send heartbeats to consumers too), so the same type serves both sides.
#[derive(Debug, Clone)]
pub struct DubboCodec {
    max_frame_bytes: usize,
}

impl DubboCodec {
    /// A codec that accepts frames (header and body) of at most `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes }
    }
}

impl Codec for DubboCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        decode_new(self, src)
    }

    fn decode_into(&mut self, src: &mut BytesMut, slot: &mut Message) -> Result<bool, CodecError> {
        loop {
            let Some(header) = Header::peek(src)? else {
                return Ok(false);
            };
            let frame_len = HEADER_LEN as u64 + u64::from(header.body_len);
            let frame_len = usize::try_from(frame_len)
                .ok()
                .filter(|len| *len <= self.max_frame_bytes)
                .ok_or(CodecError::FrameTooLarge {
                    size: frame_len,
                    max: self.max_frame_bytes,
                })?;
            if src.len() < frame_len {
                src.reserve(frame_len - src.len());
                return Ok(false);
            }
            let frame = src.split_to(frame_len).freeze();
            if header.kind() == MessageKind::Heartbeat && reply::is_unanswered_event(&frame) {
                // Nothing acts on it, as in Java Dubbo: it is passed over, counted, and the
                // next frame read.
                reply::count_unanswered_event();
                continue;
            }
            slot.reset(header.kind(), header.request_id, frame);
            read_body(&header, slot);
            return Ok(true);
        }
    }

    fn encode(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        if !passes_through(message, params)? {
            return self.encode_mutated(message, params, dst);
        }
        self.check_call_size(message)?;
        let start = dst.len();
        dst.extend_from_slice(&message.frame);
        patch_request_id(dst, start, params.request_id);
        Ok(())
    }

    /// A frame passing through changes in its header alone (the request id): the body is
    /// left to follow it as it came.
    fn encode_sharing(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        if !passes_through(message, params)? {
            return self.encode_mutated(message, params, dst).map(|()| 0);
        }
        self.check_call_size(message)?;
        let (Some(head), Some(body)) = (
            message.frame.get(..HEADER_LEN),
            message.frame.get(HEADER_LEN..),
        ) else {
            return Err(CodecError::Encode("not a Dubbo frame".into()));
        };
        let start = dst.len();
        dst.extend_from_slice(head);
        patch_request_id(dst, start, params.request_id);
        Ok(body.len())
    }

    /// A call whose consumer sent a `_TO` countdown goes with the time the proxy waits for it
    /// in its place, where that is less, as Dubbo's consumers write what is left of a call into
    /// each call (see the crate's `deadline` module): the provider then drops what it would
    /// answer too late, and passes on no more than that to the calls it makes. The countdown is rewritten as an
    /// attachment a mutation sets (a string, which Java reads as it reads an int), with the
    /// call's own mutation. A call without `_TO` (its deadline its `timeout`, which providers
    /// ignore), or whose wait is not shorter in whole milliseconds, goes as from
    /// [`Codec::encode`].
    fn encode_within(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        wait: Duration,
        share: bool,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        let countdown = message
            .kind
            .is_call()
            .then(|| deadline::told_countdown(wait, &message.metadata))
            .flatten();
        let Some(countdown) = countdown else {
            return self.encode_as_sent(message, params, share, dst);
        };
        let mut mutation = params.mutation.clone();
        mutation.set(
            ByteStr::from(deadline::TIMEOUT_COUNTDOWN),
            ByteStr::from(countdown.to_string()),
        );
        let params = EncodeParams {
            mutation: &mutation,
            ..*params
        };
        self.encode_mutated(message, &params, dst).map(|()| 0)
    }

    fn encode_local_reply(
        &mut self,
        request: &Message,
        reply: &LocalReply,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        reply::write_local_reply(request, reply, self.max_frame_bytes, dst)
    }

    fn encode_heartbeat_reply(
        &mut self,
        heartbeat: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        reply::write_heartbeat_reply(heartbeat, self.max_frame_bytes, dst)
    }

    fn encode_goaway(&mut self, dst: &mut BytesMut) -> Result<(), CodecError> {
        reply::write_readonly_event(self.max_frame_bytes, dst)
    }

    /// The header says it all: a response's request id and its body's length.
    fn oversized_response(&self, src: &[u8]) -> Option<FrameHead> {
        let header = Header::peek(src).ok()??;
        (header.kind() == MessageKind::Response).then_some(FrameHead::Response {
            request_id: header.request_id,
            len: HEADER_LEN as u64 + u64::from(header.body_len),
        })
    }
}

/// True if `message` goes out as it came but for its request id; an error if it is not a
/// Dubbo frame.
fn passes_through(message: &Message, params: &EncodeParams<'_>) -> Result<bool, CodecError> {
    if !matches!(Header::peek(&message.frame), Ok(Some(_))) {
        return Err(CodecError::Encode("not a Dubbo frame".into()));
    }
    let layout = AttachmentsLayout::from(message.layout);
    let client_reads_attachments = params.variant == READS_RESPONSE_ATTACHMENTS;
    // Responses that cannot carry attachments (errors, events, other serializations, or a
    // client too old to read them) travel unchanged: dropping a response mutation beats
    // failing the client's call.
    let rewritable = layout.body != Body::Opaque || is_fastjson2_result(message);
    Ok(params.mutation.is_empty()
        || (!message.kind.is_call() && (!rewritable || !client_reads_attachments)))
}

/// True if `message` is a fastjson2 response with status 20 whose result flag was read (its
/// status not a server error): its attachments can be rewritten, though the codec keeps no
/// layout of its body.
fn is_fastjson2_result(message: &Message) -> bool {
    message.kind == MessageKind::Response
        && Header::serialization_of(&message.frame) == FASTJSON2
        && message.frame.get(3) == Some(&status::OK)
        && message.status != ResponseStatus::ServerError
}

impl DubboCodec {
    /// Refuses a call passing through that is larger than this (upstream) codec's cap: the
    /// listener that read it may take larger frames than the cluster's providers, and a
    /// provider refuses an oversized frame on the connection other clients' calls share.
    /// Responses go to their one client and are not held to it.
    fn check_call_size(&self, message: &Message) -> Result<(), CodecError> {
        if message.kind.is_call() && message.frame.len() > self.max_frame_bytes {
            return Err(CodecError::Encode(Cow::Owned(format!(
                "the call takes {} bytes, over the frame limit of {}",
                message.frame.len(),
                self.max_frame_bytes
            ))));
        }
        Ok(())
    }

    /// Appends `message` with `params.mutation` applied to its attachments.
    fn encode_mutated(
        &self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let layout = AttachmentsLayout::from(message.layout);
        let fastjson2_call = layout.body == Body::Opaque
            && message.kind.is_call()
            && Header::serialization_of(&message.frame) == FASTJSON2;
        let fastjson2_result = layout.body == Body::Opaque && is_fastjson2_result(message);
        if layout.body == Body::Opaque && !fastjson2_call && !fastjson2_result {
            return Err(CodecError::Encode(
                "attachments can only be rewritten in Hessian2 (serialization id 2) and fastjson2 (23) calls and responses".into(),
            ));
        }
        let start = dst.len();
        let result = if fastjson2_call {
            self.write_mutated_fastjson2(&message.frame, params, dst)
        } else if fastjson2_result {
            self.write_mutated_fastjson2_response(&message.frame, params, dst)
        } else {
            self.write_mutated(&message.frame, layout, params, dst)
        };
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    /// Appends fastjson2 call `frame` with its attachments map rewritten (see
    /// [`fastjson2::write_mutated`]) and its header patched.
    fn write_mutated_fastjson2(
        &self,
        frame: &[u8],
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let start = dst.len();
        dst.reserve(frame.len() + mutation_size(params));
        fastjson2::write_mutated(frame, params.mutation, dst)?;
        patch_request_id(dst, start, params.request_id);
        patch_body_len(dst, start, self.max_frame_bytes)
    }

    /// Appends fastjson2 response `frame` with its attachments rewritten (see
    /// [`fastjson2::write_mutated_response`]) and its header patched; one whose attachments
    /// cannot be read goes as it came (but for its request id), as a Hessian2 response that
    /// cannot be read does: its client's fastjson2 may read what this codec does not.
    fn write_mutated_fastjson2_response(
        &self,
        frame: &[u8],
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let start = dst.len();
        dst.reserve(frame.len() + mutation_size(params));
        match fastjson2::write_mutated_response(frame, params.mutation, dst) {
            Ok(()) => {}
            Err(CodecError::Malformed(_)) => {
                dst.truncate(start);
                dst.put_slice(frame);
            }
            Err(error) => return Err(error),
        }
        patch_request_id(dst, start, params.request_id);
        patch_body_len(dst, start, self.max_frame_bytes)
    }

    /// Appends `frame` with its attachments map rebuilt: the bytes before the map (arguments
    /// or result) are copied as they came.
    fn write_mutated(
        &self,
        frame: &[u8],
        layout: AttachmentsLayout,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let flag = match layout.body {
            Body::Response => Some(ResultFlag::read(&mut Reader::new(frame, HEADER_LEN))?),
            _ => None,
        };
        let mut skipper = Skipper::new();
        let (reader, map) = map_cursor(frame, layout, flag, &mut skipper)?;
        let start = dst.len();
        dst.reserve(frame.len() + mutation_size(params));
        if let Some(flag) = flag {
            // The result flag must announce the attachments: value 1 becomes 4, null 2
            // becomes 5, exception 0 becomes 3.
            dst.put_slice(slice(frame, 0..HEADER_LEN)?);
            dst.put_u8(compact_int(flag.with_attachments().value()));
            dst.put_slice(slice(frame, layout.flag_end..map.start)?);
        } else {
            request::put_call_head(frame, map.start, params.mutation, dst)?;
        }
        attachments::write_mutated(frame, map, reader, &mut skipper, params.mutation, dst)?;
        dst.put_slice(slice(frame, map.end..frame.len())?);
        patch_request_id(dst, start, params.request_id);
        patch_body_len(dst, start, self.max_frame_bytes)
    }
}

/// A reader at the attachments map of `frame`, and where the map lies; the class definitions
/// the map's entries may use are learnt into `skipper` (new). `flag` is the result flag of a
/// response.
fn map_cursor<'a>(
    frame: &'a [u8],
    layout: AttachmentsLayout,
    flag: Option<ResultFlag>,
    skipper: &mut Skipper,
) -> Result<(Reader<'a>, MapBounds), CodecError> {
    match (layout.body, flag) {
        // Decode does not walk the result of a response without attachments. Walk it now: the
        // new map goes right after it, and a broken result must not gain a map that a client
        // would then fail to find.
        (Body::Response, Some(flag)) if !flag.has_attachments() => {
            let reader = response::reader_at_attachments(frame, skipper).map_err(|_| {
                CodecError::Encode(
                    "the response result is not valid Hessian2; attachments cannot be added".into(),
                )
            })?;
            let map = MapBounds::absent(reader.position());
            Ok((reader, map))
        }
        // Usually no class definitions come before the map, which can then be walked alone.
        _ if layout.class_defs == 0 => Ok((Reader::new(frame, layout.map.start), layout.map)),
        // Otherwise walk from the start of the body to learn them.
        (Body::Request, _) => {
            request::reader_at_attachments(frame, skipper).map(|reader| (reader, layout.map))
        }
        _ => response::reader_at_attachments(frame, skipper).map(|reader| (reader, layout.map)),
    }
}

/// Fills in what the body of `message` says, by kind: metadata and layout of Hessian2 calls
/// and responses, the outcome of responses, the reject reason of calls in other
/// serializations or with a malformed body. Heartbeat bodies are not read.
///
/// The frame is delimited, so nothing in its body makes the stream untrustworthy: a bad call
/// is rejected (its sender alone gets status 40, as from a Java provider) and a bad response is
/// forwarded as a failure, rather than closing a connection, or, upstream, sending a body the
/// provider may answer by closing a connection that other clients' calls share.
fn read_body(header: &Header, message: &mut Message) {
    match message.kind {
        MessageKind::Heartbeat if reply::is_readonly_event(&message.frame) => {
            message.kind = MessageKind::GoAway;
        }
        MessageKind::Heartbeat => {}
        // dubbo-py answers heartbeats with status 0; Java and Node with 20.
        MessageKind::HeartbeatReply if matches!(header.status, 0 | status::OK) => {}
        MessageKind::HeartbeatReply => message.status = ResponseStatus::ServerError,
        MessageKind::Request | MessageKind::Oneway if header.serialization() == HESSIAN2 => {
            match request::decode(&message.frame, &mut message.metadata) {
                Ok(request) => {
                    message.layout = request.layout.into();
                    if request.reads_response_attachments {
                        message.variant = READS_RESPONSE_ATTACHMENTS;
                    }
                    message.timeout =
                        deadline::requested(&message.metadata, request.timeout_is_text);
                }
                Err(error) => {
                    message.metadata = Metadata::new();
                    message.reject_reason = Some(malformed_body_reason(&error));
                }
            }
        }
        MessageKind::Request | MessageKind::Oneway if header.serialization() == FASTJSON2 => {
            match fastjson2::decode(&message.frame, &mut message.metadata) {
                Ok(request) => {
                    if request.reads_response_attachments {
                        message.variant = READS_RESPONSE_ATTACHMENTS;
                    }
                    message.timeout =
                        deadline::requested(&message.metadata, request.timeout_is_text);
                }
                Err(error) => {
                    message.metadata = Metadata::new();
                    message.reject_reason = Some(malformed_body_reason(&error));
                }
            }
        }
        MessageKind::Request | MessageKind::Oneway => {
            message.reject_reason = Some(unsupported_reason(header.serialization()));
        }
        MessageKind::Response if header.status != status::OK => {
            message.status = ResponseStatus::ServerError;
            message.not_processed = status::is_not_processed(header.status);
        }
        MessageKind::Response if header.serialization() == HESSIAN2 => {
            match response::decode(&message.frame, &mut message.metadata) {
                Ok((status, layout)) => {
                    message.status = status;
                    message.layout = layout.into();
                }
                // Forwarded as it came (opaque, never mutated; the client's library judges it)
                // and counted as failed.
                Err(_) => {
                    message.metadata = Metadata::new();
                    message.status = ResponseStatus::ServerError;
                }
            }
        }
        // Forwarded as it came, judged by its result flag, its attachments read.
        MessageKind::Response if header.serialization() == FASTJSON2 => {
            message.status = fastjson2::decode_response(&message.frame, &mut message.metadata);
        }
        // Status 20 in another serialization: the result flag is unreadable, the status is
        // what the header says. The header names no other kind.
        _ => {}
    }
}

/// The reject reason of a call whose Hessian2 body cannot be read: the reader's own words.
fn malformed_body_reason(error: &CodecError) -> &'static str {
    match error {
        CodecError::Malformed(Cow::Borrowed(reason)) => reason,
        _ => "the request body is malformed",
    }
}

/// About the bytes a mutation's sets add (string data plus tags), to reserve once.
fn mutation_size(params: &EncodeParams<'_>) -> usize {
    let sets = params.mutation.sets().iter();
    sets.map(|(key, value)| 6 + key.len() + value.len())
        .sum::<usize>()
        + 1
}
