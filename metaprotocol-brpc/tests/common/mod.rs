//! Shared helpers for the integration tests: golden frames and small builders.
#![allow(dead_code)]

use std::path::PathBuf;

use bytes::BytesMut;
use metaprotocol_brpc::{BrpcCodec, decode_frame, encode_frame, proto};
use metaprotocol_core::{Codec, Message, Side};

/// Test results: any error fails the test with its message.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The golden brpc folder: `testdata/golden/brpc` in the repository.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/golden/brpc"
    ))
}

/// The bytes of golden file `name` (hex on disk).
pub fn golden(name: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(golden_dir().join(name))?;
    Ok(hex::decode(text.trim())?)
}

/// Every golden file name, sorted.
pub fn golden_names() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(golden_dir())? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".hex") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The side whose codec decodes golden file `name` (requests downstream, responses upstream).
pub fn side_of(name: &str) -> Side {
    if name.contains(".req.") {
        Side::Downstream
    } else {
        Side::Upstream
    }
}

/// Decodes exactly one whole frame from `bytes` with a codec on `side`.
pub fn decode_one(side: Side, bytes: &[u8]) -> Result<Message, Box<dyn std::error::Error>> {
    let mut codec = BrpcCodec::new(side, 1 << 20);
    let mut buf = BytesMut::from(bytes);
    let message = codec.decode(&mut buf)?.ok_or("incomplete frame")?;
    if !buf.is_empty() {
        return Err(format!("{} bytes left after the frame", buf.len()).into());
    }
    Ok(message)
}

/// A request frame with `meta`'s request half and `body`.
pub fn frame(meta: &proto::RpcMeta, body: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut out = BytesMut::new();
    encode_frame(meta, body, &mut out)?;
    Ok(out.to_vec())
}

/// Decodes a frame by the protobuf definition.
pub fn parse(bytes: &[u8]) -> Result<(proto::RpcMeta, Vec<u8>), Box<dyn std::error::Error>> {
    let (meta, body) = decode_frame(bytes)?;
    Ok((meta, body.to_vec()))
}

/// An `example.EchoService/Echo` request meta with correlation id `id`.
pub fn echo_request(id: i64) -> proto::RpcMeta {
    proto::RpcMeta {
        request: Some(proto::RpcRequestMeta {
            service_name: "example.EchoService".into(),
            method_name: "Echo".into(),
            log_id: Some(42),
            ..Default::default()
        }),
        compress_type: Some(0),
        correlation_id: Some(id),
        ..Default::default()
    }
}

/// A successful response meta with correlation id `id`.
pub fn echo_response(id: i64) -> proto::RpcMeta {
    proto::RpcMeta {
        response: Some(proto::RpcResponseMeta {
            error_code: Some(0),
            error_text: None,
        }),
        compress_type: Some(0),
        correlation_id: Some(id),
        ..Default::default()
    }
}
