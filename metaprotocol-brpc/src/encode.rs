//! Writing a decoded message back out: verbatim, with its correlation id patched, or with a
//! rebuilt meta when the id's length changes, `user_fields` are mutated, a response's
//! `authentication_data` goes or, upstream, a request's goes or the cluster's comes, or a
//! request goes with a shorter `timeout_ms` than its caller's.
//!
//! The meta is never re-serialized from a model: fields are copied verbatim (unknown ones too,
//! in their order) and only `correlation_id`, the overridden `user_fields` entries,
//! `authentication_data`, on a request the proxy traces the request meta's trace ids
//! ([`TraceIds`]), and on a request the proxy waits for less than its caller does its
//! `timeout_ms`, are replaced. Payload and attachment are copied as they came, so payload
//! checksums stay valid.

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{CodecError, Message, MessageKind, Mutation, Side, append_frame};

use crate::correlation;
use crate::header::{HEADER_LEN, write_frame};
use crate::layout::BrpcLayout;
use crate::meta::{field, map_entry, request_field};
use crate::wire::{
    Field, FieldReader, MAX_VARINT_BYTES, WireValue, encode_varint, len_prefix_size,
    put_len_prefix, put_varint_field, read_varint, varint_len,
};

/// What an upstream codec writes into the requests it sends in place of their caller's.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HopFields<'a> {
    /// The cluster's credentials, as `authentication_data`, when given.
    pub(crate) credentials: Option<&'a [u8]>,
    /// The request meta's `timeout_ms`, when given: how long the proxy waits for the answer.
    pub(crate) timeout_ms: Option<i32>,
}

/// Appends `message` with request id `id` and `mutation` applied to `dst`, as a codec on `side`
/// writes it: downstream `id` is the `correlation_id`, upstream the engine's id, written as
/// [`correlation::to_wire`] says. Upstream, a request goes without the `authentication_data`
/// its client sent, with `hop`'s credentials as its `authentication_data` and its timeout as
/// its `timeout_ms` when given; downstream, a response goes without any `authentication_data`
/// its server sent. With `share`, a frame passing
/// through is appended up to the end of its correlation id, and the length of the rest, which
/// is to follow unchanged, is returned (see [`metaprotocol_core::Codec::encode_sharing`]);
/// otherwise the result is 0.
pub(crate) fn encode_message(
    message: &Message,
    id: u64,
    side: Side,
    mutation: &Mutation,
    hop: HopFields<'_>,
    share: bool,
    dst: &mut BytesMut,
) -> Result<usize, CodecError> {
    let layout = BrpcLayout::of(message)?;
    let request_upstream = side == Side::Upstream && message.kind == MessageKind::Request;
    // Credentials stand for one hop. A server authenticates a connection by its first
    // request's credentials and runs every later call on it as that identity, so a client's
    // must never reach a connection other clients' calls share (brpc clients send theirs on
    // their own connection's first call only: the other requests take the verbatim path
    // below). Nor may the cluster's reach a client: Jprotobuf-rpc-socket answers a call it
    // fails before a handler runs in the request's own meta, credentials included. brpc
    // servers send none in answers, which stay verbatim.
    let drop_authentication = layout.has_authentication
        && matches!(
            (side, message.kind),
            (Side::Upstream, MessageKind::Request) | (Side::Downstream, MessageKind::Response)
        );
    let frame = &message.frame[..];
    // The id the frame carries now (0 without one, as it decodes).
    let current = match frame.get(layout.id_value_start..layout.id_field.end) {
        Some(value) if layout.has_id() => read_varint(value, &mut 0)?,
        _ => 0,
    };
    let id = match side {
        Side::Downstream => id,
        Side::Upstream => correlation::to_wire(id, varint_len(current)),
    };
    let timeout_ms = hop.timeout_ms.filter(|_| request_upstream);
    if !mutation.is_empty()
        || drop_authentication
        || hop.credentials.is_some()
        || timeout_ms.is_some()
    {
        let edit = MetaEdit {
            id,
            mutation,
            drop_authentication,
            credentials: hop.credentials,
            trace: request_upstream
                .then(|| TraceIds::sampled(mutation))
                .flatten(),
            timeout_ms,
        };
        return rebuild(frame, &layout, &edit, dst).map(|()| 0);
    }
    if id == current {
        return Ok(append_frame(frame, 0, share, dst));
    }
    let old_len = layout.id_field.end - layout.id_value_start;
    if layout.has_id() && varint_len(id) == old_len {
        // The common passthrough: the new id takes as many bytes as the old one.
        let start = dst.len();
        let shared = append_frame(frame, layout.id_field.end, share, dst);
        let mut varint = [0u8; MAX_VARINT_BYTES];
        let n = encode_varint(id, &mut varint);
        let value = start + layout.id_value_start..start + layout.id_field.end;
        if let (Some(slot), Some(new)) = (dst.get_mut(value), varint.get(..n)) {
            slot.copy_from_slice(new);
        }
        return Ok(shared);
    }
    splice_id(frame, &layout, id, dst).map(|()| 0)
}

/// Replaces the `correlation_id` field (or appends one) with three copies around it.
fn splice_id(
    frame: &[u8],
    layout: &BrpcLayout,
    id: u64,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let (Some(before), Some(meta_rest), Some(body)) = (
        frame.get(HEADER_LEN..layout.id_field.start),
        frame.get(layout.id_field.end..layout.meta_end),
        frame.get(layout.meta_end..),
    ) else {
        return Err(CodecError::malformed("frame shorter than its layout"));
    };
    write_frame(dst, frame.len() + 1 + MAX_VARINT_BYTES, body, |dst| {
        dst.put_slice(before);
        put_varint_field(dst, field::CORRELATION_ID, id);
        dst.put_slice(meta_rest);
        Ok(())
    })
}

/// What a rebuilt meta changes.
struct MetaEdit<'a> {
    /// The `correlation_id` written.
    id: u64,
    /// `user_fields` set and removed.
    mutation: &'a Mutation,
    /// Whether `authentication_data` fields are left out.
    drop_authentication: bool,
    /// The `authentication_data` appended, if any.
    credentials: Option<&'a [u8]>,
    /// The request meta's trace ids, when the proxy traces the call.
    trace: Option<TraceIds>,
    /// The request meta's `timeout_ms`, when it replaces the caller's.
    timeout_ms: Option<i32>,
}

impl MetaEdit<'_> {
    /// Whether the request meta is rewritten.
    fn edits_request(&self) -> bool {
        self.trace.is_some() || self.timeout_ms.is_some()
    }

    /// How many bytes the request meta's fields this edit writes take.
    fn request_fields_size(&self) -> usize {
        self.trace.map_or(0, TraceIds::size)
            + self
                .timeout_ms
                .map_or(0, |ms| 1 + varint_len(timeout_varint(ms)))
    }
}

/// `timeout_ms`, an `int32`, as its varint: a negative one sign-extended, as protobuf writes it.
fn timeout_varint(ms: i32) -> u64 {
    i64::from(ms) as u64
}

/// brpc's rpcz ids for a request the proxy traces and samples: the trace, and the proxy's
/// attempt span as the server span's parent. The engine's tracer writes them into the
/// mutation as W3C's `traceparent` (`00-{trace id}-{attempt span}-{flags}`), whence they are
/// read. brpc's trace ids are 64-bit: a 128-bit W3C trace id goes as its low 64 bits (as
/// OpenTelemetry maps a 128-bit id to 64-bit systems, and as a 64-bit brpc id read by the
/// proxy comes back). `span_id` is left out: a brpc server then gives its span an id of its
/// own, as a W3C server does, under `parent_span_id`.
#[derive(Clone, Copy, Debug)]
struct TraceIds {
    trace_id: u64,
    parent_span_id: u64,
}

impl TraceIds {
    /// The ids of the sampled `traceparent` that `mutation` sets; `None` without one, or when
    /// the trace is not sampled (the request's ids then go as the client sent them).
    fn sampled(mutation: &Mutation) -> Option<Self> {
        let (_, traceparent) = mutation
            .sets()
            .iter()
            .find(|(key, _)| key.as_bytes() == b"traceparent")?;
        let mut parts = traceparent.as_str().split('-');
        let (Some("00"), Some(trace), Some(span), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let hex = |text: &str, len: usize| {
            (text.len() == len)
                .then(|| u128::from_str_radix(text, 16).ok())
                .flatten()
        };
        let trace_id = hex(trace, 32)? as u64;
        let parent_span_id = u64::try_from(hex(span, 16)?).ok()?;
        let sampled = hex(flags, 2)? & 1 == 1;
        (sampled && trace_id != 0 && parent_span_id != 0).then_some(Self {
            trace_id,
            parent_span_id,
        })
    }

    /// The bytes the two varint fields take.
    fn size(self) -> usize {
        2 + varint_len(self.trace_id) + varint_len(self.parent_span_id)
    }
}

/// Rewrites the meta field by field: the id replaced, overridden `user_fields` entries (and
/// `authentication_data`, if the edit says so) dropped, the mutation's entries and the edit's
/// credentials appended; everything else copied verbatim.
fn rebuild(
    frame: &[u8],
    layout: &BrpcLayout,
    edit: &MetaEdit<'_>,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let (Some(meta), Some(body)) = (
        frame.get(HEADER_LEN..layout.meta_end),
        frame.get(layout.meta_end..),
    ) else {
        return Err(CodecError::malformed("frame shorter than its layout"));
    };
    let added: usize = edit
        .mutation
        .sets()
        .iter()
        .map(|(k, v)| user_field_size(k.len(), v.len()))
        .sum();
    let credentials = edit.credentials.map_or(0, |c| {
        len_prefix_size(field::AUTHENTICATION_DATA, c.len()) + c.len()
    });
    // The request meta's fields written, and its length prefix, longer by as much.
    let request = if edit.edits_request() {
        edit.request_fields_size() + MAX_VARINT_BYTES
    } else {
        0
    };
    let capacity = frame.len() + added + credentials + request + 1 + MAX_VARINT_BYTES;
    write_frame(dst, capacity, body, |dst| {
        copy_meta_fields(meta, layout, edit, dst)?;
        if !layout.has_id() {
            put_varint_field(dst, field::CORRELATION_ID, edit.id);
        }
        for (key, value) in edit.mutation.sets() {
            put_user_field(dst, key.as_bytes(), value.as_bytes());
        }
        if let Some(credentials) = edit.credentials {
            put_len_prefix(dst, field::AUTHENTICATION_DATA, credentials.len());
            dst.put_slice(credentials);
        }
        Ok(())
    })
}

fn copy_meta_fields(
    meta: &[u8],
    layout: &BrpcLayout,
    edit: &MetaEdit<'_>,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let id_start_in_meta = layout.id_field.start - HEADER_LEN;
    for f in FieldReader::new(meta) {
        let f = f?;
        if layout.has_id() && f.span.start == id_start_in_meta {
            put_varint_field(dst, field::CORRELATION_ID, edit.id);
            continue;
        }
        match (f.number, &f.value) {
            (field::USER_FIELDS, WireValue::Bytes(range)) => {
                let entry = meta.get(range.clone()).unwrap_or_default();
                let (key, _) = map_entry(entry)?;
                if edit.mutation.overrides(entry.get(key).unwrap_or_default()) {
                    continue;
                }
            }
            // As the meta reads it: a field 7 of another wire type is unknown, not credentials.
            (field::AUTHENTICATION_DATA, WireValue::Bytes(_)) if edit.drop_authentication => {
                continue;
            }
            (field::REQUEST, WireValue::Bytes(range)) if edit.edits_request() => {
                put_edited_request(meta.get(range.clone()).unwrap_or_default(), edit, dst)?;
                continue;
            }
            _ => {}
        }
        dst.put_slice(meta.get(f.span).unwrap_or_default());
    }
    Ok(())
}

/// Appends the request meta field of `request` (its content) with `edit`'s trace ids in place
/// of the trace ids it carried, and its `timeout_ms` in place of the caller's, where it has
/// them.
fn put_edited_request(
    request: &[u8],
    edit: &MetaEdit<'_>,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    // As the meta reads them: a field of another wire type under a trace id's number is not
    // one (Jprotobuf-rpc-socket's `extraParam`, bytes, is its field 4), and goes as it came.
    let replaced = |f: &Field| {
        matches!(f.value, WireValue::Varint(_))
            && match f.number {
                request_field::TRACE_ID
                | request_field::SPAN_ID
                | request_field::PARENT_SPAN_ID => edit.trace.is_some(),
                request_field::TIMEOUT_MS => edit.timeout_ms.is_some(),
                _ => false,
            }
    };
    let mut len = edit.request_fields_size();
    for f in FieldReader::new(request) {
        let f = f?;
        if !replaced(&f) {
            len += f.span.len();
        }
    }
    put_len_prefix(dst, field::REQUEST, len);
    for f in FieldReader::new(request) {
        let f = f?;
        if !replaced(&f) {
            dst.put_slice(request.get(f.span).unwrap_or_default());
        }
    }
    if let Some(trace) = edit.trace {
        put_varint_field(dst, request_field::TRACE_ID, trace.trace_id);
        put_varint_field(dst, request_field::PARENT_SPAN_ID, trace.parent_span_id);
    }
    if let Some(ms) = edit.timeout_ms {
        put_varint_field(dst, request_field::TIMEOUT_MS, timeout_varint(ms));
    }
    Ok(())
}

/// The encoded size of the `user_fields` entry `key`, `value`, its own tag and length included.
fn user_field_size(key_len: usize, value_len: usize) -> usize {
    let entry = map_entry_len(key_len, value_len);
    len_prefix_size(field::USER_FIELDS, entry) + entry
}

/// The size of a map entry's content: the key and value fields.
fn map_entry_len(key_len: usize, value_len: usize) -> usize {
    len_prefix_size(field::MAP_KEY, key_len)
        + key_len
        + len_prefix_size(field::MAP_VALUE, value_len)
        + value_len
}

/// Appends one `user_fields` map entry.
fn put_user_field(dst: &mut impl BufMut, key: &[u8], value: &[u8]) {
    put_len_prefix(
        dst,
        field::USER_FIELDS,
        map_entry_len(key.len(), value.len()),
    );
    put_len_prefix(dst, field::MAP_KEY, key.len());
    dst.put_slice(key);
    put_len_prefix(dst, field::MAP_VALUE, value.len());
    dst.put_slice(value);
}
