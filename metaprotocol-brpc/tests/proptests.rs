//! Property tests: random metas decode to their metadata, survive any split of the stream, and
//! re-encode (with any id and mutation) to what the protobuf definition predicts.

mod common;

use std::collections::BTreeMap;

use bytes::BytesMut;
use common::frame;
use metaprotocol_brpc::{BrpcCodec, decode_frame, proto};
use metaprotocol_core::{
    ByteStr, Codec, EncodeParams, Message, Mutation, Side, WireVariant, encode_sharing_whole,
};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-zA-Z0-9_.-]{0,12}"
}

fn request_meta() -> impl Strategy<Value = (proto::RpcMeta, Vec<u8>)> {
    (
        (
            name(),
            name(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(name()),
        ),
        proptest::option::of(any::<i32>()),
        any::<i64>(),
        proptest::collection::btree_map(name(), "[ -~]{0,10}", 0..5),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |((service, method, log_id, request_id), timeout_ms, id, fields, body, split)| {
                let attachment = split.index(body.len() + 1);
                let meta = proto::RpcMeta {
                    request: Some(proto::RpcRequestMeta {
                        service_name: service,
                        method_name: method,
                        log_id,
                        request_id,
                        timeout_ms,
                        ..Default::default()
                    }),
                    correlation_id: Some(id),
                    attachment_size: Some(attachment as i32),
                    user_fields: fields,
                    checksum_value: Some(vec![1, 2, 3]),
                    ..Default::default()
                };
                (meta, body)
            },
        )
}

/// The bytes of `value` as a varint.
fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// True if engine id `id` fits a varint of `len` bytes as an upstream codec writes it
/// (`id + 2^(7(len-1))`, one-byte ids as they are).
fn fits(id: u64, len: usize) -> bool {
    match len {
        1 => id < 128,
        10 => id < 1 << 63,
        _ => id < 127 << (7 * (len - 1)),
    }
}

fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Message>, TestCaseError> {
    let mut codec = BrpcCodec::new(Side::Downstream, 1 << 16);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(m) = codec
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
        {
            out.push(m);
        }
    }
    prop_assert!(buf.is_empty());
    Ok(out)
}

proptest! {
    #[test]
    fn random_requests_decode_to_their_fields((meta, body) in request_meta()) {
        let bytes = frame(&meta, &body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let messages = decode_all(&[&bytes])?;
        prop_assert_eq!(messages.len(), 1);
        let m = &messages[0];
        let request = meta.request.clone().unwrap_or_default();
        prop_assert_eq!(m.request_id, meta.correlation_id.unwrap_or(0) as u64);
        let get = |k: &str| m.metadata.get(k).map(|v| v.to_string());
        prop_assert_eq!(get("service"), Some(request.service_name.clone()));
        prop_assert_eq!(get("method"), Some(request.method_name.clone()));
        prop_assert_eq!(get("log_id"), request.log_id.map(|v| v.to_string()));
        prop_assert_eq!(get("timeout_ms"), request.timeout_ms.map(|v| v.to_string()));
        if let Some(request_id) = &request.request_id {
            prop_assert_eq!(get("request_id"), Some(request_id.clone()));
        }
        for (k, v) in &meta.user_fields {
            if !["service", "method", "log_id", "timeout_ms", "request_id"].contains(&k.as_str()) {
                prop_assert_eq!(get(k), Some(v.clone()));
            }
        }
    }

    #[test]
    fn any_split_gives_the_same_frames(
        frames in proptest::collection::vec(request_meta(), 1..4),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut stream = Vec::new();
        for (meta, body) in &frames {
            stream.extend(frame(meta, body).map_err(|e| TestCaseError::fail(e.to_string()))?);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
        let whole = decode_all(&[&stream])?;
        let split = decode_all(&chunks)?;
        prop_assert_eq!(whole.len(), frames.len());
        prop_assert_eq!(split.len(), frames.len());
        for (a, b) in whole.iter().zip(&split) {
            prop_assert_eq!(&a.frame, &b.frame);
            prop_assert_eq!(&a.metadata, &b.metadata);
            prop_assert_eq!(a.request_id, b.request_id);
        }
    }

    #[test]
    fn reencode_matches_the_protobuf_model(
        (meta, body) in request_meta(),
        new_id in 0..=i64::MAX as u64,
        sets in proptest::collection::btree_map(name(), "[ -~]{0,10}", 0..3),
        removals in proptest::collection::vec(name(), 0..3),
    ) {
        let bytes = frame(&meta, &body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let message = decode_all(&[&bytes])?.remove(0);
        let mut mutation = Mutation::new();
        for key in &removals {
            mutation.remove(ByteStr::copy_from_str(key));
        }
        for (k, v) in &sets {
            mutation.set(ByteStr::copy_from_str(k), ByteStr::copy_from_str(v));
        }
        let mut out = BytesMut::new();
        let params = EncodeParams { request_id: new_id, variant: WireVariant::DEFAULT, mutation: &mutation };
        let mut codec = BrpcCodec::new(Side::Upstream, 1 << 16);
        codec.encode(&message, &params, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let shared = encode_sharing_whole(&mut codec, &message, &params).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&shared[..], &out[..], "encode_sharing disagrees with encode");

        let (decoded, new_body) = decode_frame(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(new_body, &body[..]);
        // An upstream codec writes the engine's id as long as the client's when it fits there.
        let wire_id = decoded.correlation_id.unwrap_or(0) as u64;
        let client_len = varint_len(meta.correlation_id.unwrap_or(0) as u64);
        prop_assert_eq!(varint_len(wire_id) == client_len, fits(new_id, client_len));
        let mut expected = meta.clone();
        expected.correlation_id = Some(wire_id as i64);
        let mut fields: BTreeMap<String, String> = expected.user_fields;
        for key in &removals {
            fields.remove(key);
        }
        fields.extend(sets);
        expected.user_fields = fields;
        prop_assert_eq!(decoded, expected);
        // The server answers under that id, which the upstream codec reads as the engine's.
        let answer = proto::RpcMeta { correlation_id: Some(wire_id as i64), ..Default::default() };
        let reply = frame(&answer, b"").map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut upstream = BrpcCodec::new(Side::Upstream, 1 << 16);
        let response = upstream
            .decode(&mut BytesMut::from(&reply[..]))
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .ok_or_else(|| TestCaseError::fail("no response"))?;
        prop_assert_eq!(response.request_id, new_id);
    }
}
