//! The checks behind the fuzz targets, one module per codec, one for config parsing
//! ([`config`]) and one for the route match ([`route`]), so that the targets
//! (`fuzz_targets/`, run by cargo-fuzz) and the corpus replay (`tests/corpus.rs`, a plain
//! `cargo test`) exercise the same code.
//!
//! Each codec of the three binary protocols has two checks (JSON-RPC, whose ids the proxy
//! rewrites by design, has its own `decode` check: see [`jsonrpc`]):
//!
//! - `decode`: arbitrary bytes through the decoder; whatever decodes is re-encoded (the
//!   passthrough must be byte-identical, id rewrites and mutations must decode again) and
//!   answered with local replies that must decode as responses.
//! - `round_trip`: a [`RoundTrip`] (a stream, usually seeded from a golden capture, and an
//!   arbitrary [`Edit`]): every message decoded from the stream is encoded as the proxy would
//!   forward it (new id, mutation, and for Thrift another encoding) and decoded again, which
//!   must give the new id, the same kind and status, the same body bytes and the metadata the
//!   mutation asked for.
//!
//! A check panics on a broken invariant, which is what the fuzzer reports.

pub mod brpc;
pub mod config;
pub mod dubbo;
mod edit;
pub mod jsonrpc;
pub mod route;
pub mod thrift;

use bytes::BytesMut;
use metaprotocol_core::{
    Codec, EncodeParams, FrameLayout, Message, MessageKind, Metadata, Mutation, ResponseStatus,
    WireVariant,
};

pub use edit::{Edit, RoundTrip};

/// The frame size cap of the codecs under test: large enough for any input the fuzzer makes.
pub const MAX_FRAME: usize = 64 * 1024;

/// Every message a codec made by `new_codec` decodes from the front of `bytes`, until it needs
/// more or fails.
///
/// A second codec decodes the same bytes as the engine does, with `decode_into` into one
/// message reused for every frame (and, before the first, holding something of everything a
/// message can hold): each frame must come out the same as the first codec's `decode` gives
/// it, with nothing left over from what the message held before, and both codecs must take
/// the same bytes and stop at the same place.
pub fn decode_stream(new_codec: &dyn Fn() -> Box<dyn Codec>, bytes: &[u8]) -> Vec<Message> {
    let (mut codec, mut reusing) = (new_codec(), new_codec());
    let (mut buf, mut reused_buf) = (BytesMut::from(bytes), BytesMut::from(bytes));
    let mut slot = used_message();
    let mut messages = Vec::new();
    loop {
        let fresh = codec.decode(&mut buf);
        let reused = reusing.decode_into(&mut reused_buf, &mut slot);
        assert_eq!(buf.len(), reused_buf.len(), "decode_into took other bytes");
        match (fresh, reused) {
            (Ok(Some(message)), Ok(true)) => {
                assert_eq!(
                    format!("{slot:?}"),
                    format!("{message:?}"),
                    "decode_into into a used message gave another message"
                );
                messages.push(message);
            }
            (Ok(None), Ok(false)) | (Err(_), Err(_)) => return messages,
            (fresh, reused) => panic!("decode gave {fresh:?}, decode_into {reused:?}"),
        }
    }
}

/// A message holding something in each field, as one the engine reuses may.
fn used_message() -> Message {
    let mut message = Message::new(
        MessageKind::Response,
        u64::MAX,
        bytes::Bytes::from_static(b"an earlier frame"),
    );
    message.status = ResponseStatus::ServerError;
    message.variant = WireVariant(u16::MAX);
    message.layout = FrameLayout([u32::MAX; 6]);
    message.reject_reason = Some("an earlier reason");
    message.timeout = Some(std::time::Duration::from_secs(1));
    message.not_processed = true;
    message.metadata.insert("service", "earlier");
    message.metadata.insert("earlier", String::from("shared"));
    for key in 0..40 {
        message.metadata.insert(format!("key-{key}"), "value");
    }
    message
}

/// Decodes exactly one whole frame from `bytes` (a frame the codecs wrote), or panics.
pub fn decode_exactly_one(codec: &mut dyn Codec, bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    match codec.decode(&mut buf) {
        Ok(Some(message)) if buf.is_empty() => message,
        other => panic!(
            "a frame the codec wrote does not decode: {other:?} ({} bytes left)",
            buf.len()
        ),
    }
}

/// Encodes `message` with `codec` as the proxy would forward it (id `id`, `variant`,
/// `mutation`); `None` if the codec refuses it, and then it must have written nothing.
pub fn encode_or_refuse(
    codec: &mut dyn Codec,
    message: &Message,
    id: u64,
    variant: WireVariant,
    mutation: &Mutation,
) -> Option<BytesMut> {
    let mut out = BytesMut::new();
    let params = EncodeParams {
        request_id: id,
        variant,
        mutation,
    };
    match codec.encode(message, &params, &mut out) {
        Ok(()) => Some(out),
        Err(_) => {
            assert!(out.is_empty(), "a failed encode appended bytes");
            None
        }
    }
}

/// How a codec's metadata relates to the headers a mutation writes.
pub struct HeaderKeys<'a> {
    /// Keys the codec takes from the frame's own fields, which headers never override: their
    /// values must survive any mutation.
    pub fixed: &'a [&'a str],
    /// Keys that headers may or may not override, depending on the frame: not checked.
    pub unchecked: &'a [&'a str],
}

/// Checks that `again`, decoded from a frame encoded with `mutation`, carries the metadata of
/// `original` with the mutation applied: every header set has its value, every header dropped
/// is gone, every other original key is still there, the fixed keys keep their values, and no
/// key comes from nowhere.
pub fn assert_mutation_applied(
    original: &Metadata,
    again: &Metadata,
    mutation: &Mutation,
    keys: &HeaderKeys<'_>,
) {
    let checked = |key: &[u8]| !keys.unchecked.iter().any(|k| k.as_bytes() == key);
    let fixed = |key: &[u8]| keys.fixed.iter().any(|k| k.as_bytes() == key);
    for (key, value) in mutation.sets() {
        if checked(key) && !fixed(key) {
            assert_eq!(again.get_bytes(key), Some(value.as_str()), "set {key:?}");
        }
    }
    for key in mutation.removals() {
        if mutation.drops(key) && checked(key) && !fixed(key) {
            assert_eq!(again.get_bytes(key), None, "removed {key:?}");
        }
    }
    for key in keys.fixed {
        assert_eq!(again.get(key), original.get(key), "fixed key {key}");
    }
    for (key, _) in original.iter() {
        if checked(key.as_bytes()) && !mutation.drops(key.as_bytes()) {
            assert!(again.get(key).is_some(), "kept {key:?}");
        }
    }
    for (key, _) in again.iter() {
        let known = original.get(key).is_some() || mutation.sets().iter().any(|(k, _)| k == key);
        assert!(
            known || !checked(key.as_bytes()),
            "{key:?} comes from nowhere"
        );
    }
}

/// `bytes[range]`, or a panic naming what was sliced.
pub fn slice<'b>(bytes: &'b [u8], range: std::ops::Range<usize>, what: &str) -> &'b [u8] {
    match bytes.get(range.clone()) {
        Some(slice) => slice,
        None => panic!("{what}: {range:?} outside {} bytes", bytes.len()),
    }
}
