//! Writing a decoded message back out: verbatim, with its correlation id patched, or with a
//! rebuilt meta when the id's length changes or `user_fields` are mutated.
//!
//! The meta is never re-serialized from a model: fields are copied verbatim (unknown ones too,
//! in their order) and only `correlation_id` and the overridden `user_fields` entries are
//! replaced. Payload and attachment are copied as they came, so payload checksums stay valid.

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{CodecError, Message, Mutation, Side, append_frame};

use crate::correlation;
use crate::header::{HEADER_LEN, write_frame};
use crate::layout::BrpcLayout;
use crate::meta::{field, map_entry};
use crate::wire::{
    FieldReader, MAX_VARINT_BYTES, WireValue, encode_varint, len_prefix_size, put_len_prefix,
    put_varint_field, read_varint, varint_len,
};

/// Appends `message` with request id `id` and `mutation` applied to `dst`, as a codec on `side`
/// writes it: downstream `id` is the `correlation_id`, upstream the engine's id, written as
/// [`correlation::to_wire`] says. With `share`, a frame passing through is appended up to the
/// end of its correlation id, and the length of the rest, which is to follow unchanged, is
/// returned (see [`metaprotocol_core::Codec::encode_sharing`]); otherwise the result is 0.
pub(crate) fn encode_message(
    message: &Message,
    id: u64,
    side: Side,
    mutation: &Mutation,
    share: bool,
    dst: &mut BytesMut,
) -> Result<usize, CodecError> {
    let layout = BrpcLayout::of(message)?;
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
    if !mutation.is_empty() {
        return rebuild(frame, &layout, id, mutation, dst).map(|()| 0);
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

/// Rewrites the meta field by field: the id replaced, overridden `user_fields` entries dropped,
/// the mutation's entries appended; everything else copied verbatim.
fn rebuild(
    frame: &[u8],
    layout: &BrpcLayout,
    id: u64,
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let (Some(meta), Some(body)) = (
        frame.get(HEADER_LEN..layout.meta_end),
        frame.get(layout.meta_end..),
    ) else {
        return Err(CodecError::malformed("frame shorter than its layout"));
    };
    let added: usize = mutation
        .sets()
        .iter()
        .map(|(k, v)| user_field_size(k.len(), v.len()))
        .sum();
    let capacity = frame.len() + added + 1 + MAX_VARINT_BYTES;
    write_frame(dst, capacity, body, |dst| {
        copy_meta_fields(meta, layout, id, mutation, dst)?;
        if !layout.has_id() {
            put_varint_field(dst, field::CORRELATION_ID, id);
        }
        for (key, value) in mutation.sets() {
            put_user_field(dst, key.as_bytes(), value.as_bytes());
        }
        Ok(())
    })
}

fn copy_meta_fields(
    meta: &[u8],
    layout: &BrpcLayout,
    id: u64,
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let id_start_in_meta = layout.id_field.start - HEADER_LEN;
    for f in FieldReader::new(meta) {
        let f = f?;
        if layout.has_id() && f.span.start == id_start_in_meta {
            put_varint_field(dst, field::CORRELATION_ID, id);
            continue;
        }
        if let (field::USER_FIELDS, WireValue::Bytes(range)) = (f.number, &f.value) {
            let entry = meta.get(range.clone()).unwrap_or_default();
            let (key, _) = map_entry(entry)?;
            if mutation.overrides(entry.get(key).unwrap_or_default()) {
                continue;
            }
        }
        dst.put_slice(meta.get(f.span).unwrap_or_default());
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
