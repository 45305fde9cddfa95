//! Helpers shared by the integration tests: golden files and decode loops.
#![allow(dead_code)]

use std::path::PathBuf;

use bytes::BytesMut;
use metaprotocol_core::{
    Codec, CodecError, CodecFactory, CodecOptions, EncodeParams, Message, Side, WireVariant,
};
use metaprotocol_thrift::{Protocol, ThriftCodecFactory, ThriftFormat, Transport};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The golden thrift folder: `testdata/golden/thrift` in the repository.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/golden/thrift"
    ))
}

/// One captured stream and what its name says about it.
#[derive(Debug, Clone)]
pub struct Golden {
    pub name: String,
    pub bytes: Vec<u8>,
    pub format: ThriftFormat,
    /// `hello`, `error`, `crash` or `ping`.
    pub scenario: String,
    pub is_request: bool,
    pub multiplexed: bool,
    /// Python client to Node server: the Node server echoes no headers, the client sends one.
    pub node_server: bool,
}

/// Every golden stream, sorted by name; fails if the folder is missing or empty.
pub fn goldens() -> Result<Vec<Golden>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(golden_dir())? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".hex").map(str::to_owned) else {
            continue;
        };
        let bytes = hex::decode(std::fs::read_to_string(&path)?.trim())?;
        let (stem, is_request) = match stem.as_str().strip_suffix(".req") {
            Some(s) => (s, true),
            None => (
                stem.strip_suffix(".resp").ok_or("neither .req nor .resp")?,
                false,
            ),
        };
        let mut parts: Vec<&str> = stem.split('-').collect();
        let multiplexed = parts.first() == Some(&"mux");
        let node_server = parts.first() == Some(&"py2node");
        if multiplexed || node_server {
            parts.remove(0);
        }
        let [protocol, transport, scenario] = parts[..] else {
            return Err(format!("unexpected golden name {name}").into());
        };
        let protocol = match protocol {
            "binary" => Protocol::Binary,
            "compact" => Protocol::Compact,
            other => return Err(format!("protocol {other}").into()),
        };
        let transport = match transport {
            "framed" => Transport::Framed,
            "buffered" => Transport::Unframed,
            "header" => Transport::Header,
            other => return Err(format!("transport {other}").into()),
        };
        out.push(Golden {
            name,
            bytes,
            format: ThriftFormat::new(transport, protocol),
            scenario: scenario.to_owned(),
            is_request,
            multiplexed,
            node_server,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if out.len() < 50 {
        return Err(format!("only {} golden files in {:?}", out.len(), golden_dir()).into());
    }
    Ok(out)
}

/// A downstream codec with default (auto-detecting) options.
pub fn auto_codec() -> Box<dyn Codec> {
    ThriftCodecFactory::default().new_codec(Side::Downstream, WireVariant::DEFAULT)
}

/// What [`auto_codec`] appends for `message` with `params`, checked to be what the write that
/// shares the frame's end sends too.
pub fn encode_checked(
    message: &Message,
    params: &EncodeParams<'_>,
) -> Result<BytesMut, CodecError> {
    let mut out = BytesMut::new();
    auto_codec().encode(message, params, &mut out)?;
    let shared = metaprotocol_core::encode_sharing_whole(auto_codec().as_mut(), message, params)?;
    assert_eq!(shared, out, "encode_sharing disagrees with encode");
    Ok(out)
}

/// A downstream codec with the given options.
pub fn codec_with(options: &CodecOptions) -> Result<Box<dyn Codec>, Box<dyn std::error::Error>> {
    Ok(
        ThriftCodecFactory::from_options(options)?
            .new_codec(Side::Downstream, WireVariant::DEFAULT),
    )
}

/// Decodes every message in `bytes`; errors if bytes are left over.
pub fn decode_all(codec: &mut dyn Codec, bytes: &[u8]) -> Result<Vec<Message>, CodecError> {
    let mut src = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(message) = codec.decode(&mut src)? {
        out.push(message);
    }
    if src.is_empty() {
        Ok(out)
    } else {
        Err(CodecError::malformed(
            "bytes left over after the last message",
        ))
    }
}

/// The single message of `bytes`, decoded by a fresh auto-detecting codec.
pub fn decode_one(bytes: &[u8]) -> Result<Message, Box<dyn std::error::Error>> {
    let mut messages = decode_all(auto_codec().as_mut(), bytes)?;
    if messages.len() != 1 {
        return Err(format!("expected 1 message, got {}", messages.len()).into());
    }
    Ok(messages.remove(0))
}

/// Every format.
pub fn all_formats() -> Vec<ThriftFormat> {
    let mut out = Vec::new();
    for transport in [Transport::Framed, Transport::Unframed, Transport::Header] {
        for protocol in [Protocol::Binary, Protocol::Compact] {
            out.push(ThriftFormat::new(transport, protocol));
        }
    }
    out
}
