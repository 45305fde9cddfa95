//! Responses the proxy writes itself: local replies and heartbeat replies.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{CodecError, LocalReply, Message, MessageKind};

use crate::fastjson2;
use crate::header::{FLAG_EVENT, FLAG_REQUEST, HEADER_LEN, Header, patch_body_len};
use crate::hessian::NULL;
use crate::hessian::writer::write_string;
use crate::serialization::{FASTJSON2, HESSIAN2, put_fastjson2_string};
use crate::status;

/// Appends the error response for `reply` to `request`: the status from
/// [`status::for_local_reply`] and, as Java Dubbo does for any status other than 20, a body of
/// one string, `"<kind>: <message>"`.
///
/// The response is in Hessian2 (serialization id 2), even for a request in most other
/// serializations: it is the serialization this codec writes and nearly every Dubbo client
/// reads, so the client gets a readable error rather than a body it cannot decode. A request
/// in fastjson2 is answered in fastjson2, as a Java provider answers in the request's
/// serialization: a Dubbo 3 consumer built with fastjson2 alone fails on a Hessian2 answer
/// ("Unrecognized serialize type"), never reading the reason.
pub(crate) fn write_local_reply(
    request: &Message,
    reply: &LocalReply,
    max_frame_bytes: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = dst.len();
    let status = status::for_local_reply(reply.kind);
    let serialization = match Header::serialization_of(&request.frame) {
        FASTJSON2 => FASTJSON2,
        _ => HESSIAN2,
    };
    Header::put(dst, serialization, status, request.request_id);
    let text: &[&str] = if reply.message.is_empty() {
        &[reply.kind.name()]
    } else {
        &[reply.kind.name(), ": ", &reply.message]
    };
    if serialization == FASTJSON2 {
        put_fastjson2_string(dst, text);
    } else {
        write_string(dst, text);
    }
    finish(dst, start, max_frame_bytes)
}

/// Appends the answer to a heartbeat: an event response with status 20 and a null body, in the
/// heartbeat's own serialization (for serializations other than Hessian2 the heartbeat's body,
/// which is that serialization's null, is echoed). One-way heartbeats (dubbo-py's) are answered
/// too, as every real provider does: dubbo-py waits for that answer. An event whose data is
/// not null is no heartbeat: the codec passes it over as it reads it ([`is_unanswered_event`]),
/// and one built by hand gets nothing here either.
pub(crate) fn write_heartbeat_reply(
    heartbeat: &Message,
    max_frame_bytes: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let frame = &heartbeat.frame[..];
    if heartbeat.kind != MessageKind::Heartbeat || carries_data(frame) {
        return Ok(());
    }
    let start = dst.len();
    let serialization = Header::serialization_of(frame);
    Header::put(
        dst,
        FLAG_EVENT | serialization,
        status::OK,
        heartbeat.request_id,
    );
    if serialization == HESSIAN2 {
        dst.put_u8(NULL);
    } else {
        dst.put_slice(frame.get(HEADER_LEN..).unwrap_or_default());
    }
    finish(dst, start, max_frame_bytes)
}

/// The event data Dubbo servers send when they go away: clients stop sending new calls on a
/// channel that is read-only (Java Dubbo's `Request.READONLY_EVENT`).
const READONLY_EVENT: &str = "R";

/// Appends Dubbo's "read-only" event, what a provider that shuts down tells its clients: a
/// one-way event request whose body is the Hessian2 string `"R"`. Clients move new calls to
/// other providers and let calls in flight finish.
pub(crate) fn write_readonly_event(
    max_frame_bytes: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = dst.len();
    Header::put(dst, FLAG_REQUEST | FLAG_EVENT | HESSIAN2, 0, 0);
    write_string(dst, &[READONLY_EVENT]);
    finish(dst, start, max_frame_bytes)
}

/// The body of a read-only event in Hessian2: the string `"R"`.
const HESSIAN2_READONLY_EVENT: [u8; 2] = [0x01, READONLY_EVENT.as_bytes()[0]];

/// The body of a read-only event in fastjson2, which a provider whose protocol is set to
/// fastjson2 writes its events in: a 4-byte length, then the JSONB Latin-1 string `"R"`
/// (`0x49` plus its length, then its byte).
const FASTJSON2_READONLY_EVENT: [u8; 6] = [0, 0, 0, 2, 0x4a, READONLY_EVENT.as_bytes()[0]];

/// The body of a fastjson2 heartbeat: a 4-byte length, then the JSONB null.
const FASTJSON2_HEARTBEAT: [u8; 5] = [0, 0, 0, 1, fastjson2::NULL];

/// True if `frame` (an event request) carries data other than null, in Hessian2 or fastjson2
/// (the serializations the codec reads; in another, every event counts as a heartbeat): Java
/// Dubbo answers an event only when its data is null (a heartbeat), two-way or not, and acts
/// on none but the read-only event "R", so such an event gets no answer.
fn carries_data(frame: &[u8]) -> bool {
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    match Header::serialization_of(frame) {
        HESSIAN2 => body != [NULL],
        FASTJSON2 => body != FASTJSON2_HEARTBEAT,
        _ => false,
    }
}

/// True if `frame` (an event request) is one that nothing acts on: its data is neither null
/// (a heartbeat) nor `R` (read-only), in Hessian2 or fastjson2. Java Dubbo answers such an
/// event from neither side, two-way or not, and so does the codec: it passes the frame over
/// as it reads it, counting it ([`count_unanswered_event`]), so that it reaches neither the
/// engine's heartbeats (`downstream_heartbeats_total` counts the heartbeats answered) nor an
/// answer to an id the sender may have given a call.
pub(crate) fn is_unanswered_event(frame: &[u8]) -> bool {
    carries_data(frame) && !is_readonly_event(frame)
}

/// Event requests passed over unanswered ([`is_unanswered_event`]) by every Dubbo codec of the
/// process, from clients and providers alike: the factories' `events_unanswered` counter.
static EVENTS_UNANSWERED: AtomicU64 = AtomicU64::new(0);

/// Counts an event request passed over unanswered.
pub(crate) fn count_unanswered_event() {
    EVENTS_UNANSWERED.fetch_add(1, Ordering::Relaxed);
}

/// The event requests passed over unanswered so far.
pub(crate) fn unanswered_events() -> u64 {
    EVENTS_UNANSWERED.load(Ordering::Relaxed)
}

/// True if `frame` (an event request) is a read-only event: its body is the string `"R"` in
/// Hessian2 or fastjson2, the serializations whose calls the codec reads.
pub(crate) fn is_readonly_event(frame: &[u8]) -> bool {
    let body = frame.get(HEADER_LEN..);
    match Header::serialization_of(frame) {
        HESSIAN2 => body == Some(&HESSIAN2_READONLY_EVENT[..]),
        FASTJSON2 => body == Some(&FASTJSON2_READONLY_EVENT[..]),
        _ => false,
    }
}

/// Patches the body length, undoing the write if the frame is too large.
fn finish(dst: &mut BytesMut, start: usize, max_frame_bytes: usize) -> Result<(), CodecError> {
    let result = patch_body_len(dst, start, max_frame_bytes);
    if result.is_err() {
        dst.truncate(start);
    }
    result
}
