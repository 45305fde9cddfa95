//! Shared test support: the golden frames, frame builders, and a test-only Hessian2 writer.
//!
//! Each test crate uses a subset of these helpers.
#![allow(dead_code)]

pub mod hessian;

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::BytesMut;
use metaprotocol_core::{
    ByteStr, Codec, DEFAULT_MAX_FRAME_BYTES, EncodeParams, Message, Mutation, WireVariant,
};
use metaprotocol_dubbo::DubboCodec;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Per golden file, per frame, the body values as hessian.js decoded them.
type DecodedValues = BTreeMap<String, Vec<Vec<serde_json::Value>>>;

/// The service every golden call targets.
pub const SERVICE: &str = "org.apache.dubbo.samples.basic.api.DemoService";

/// The golden Dubbo folder: `testdata/golden/dubbo` in the repository.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/golden/dubbo"
    ))
}

/// One captured stream.
#[derive(Debug, Clone)]
pub struct GoldenFile {
    /// The file name, e.g. `dubbojs__node__hello.req.hex`.
    pub name: String,
    /// The stream's bytes.
    pub bytes: Vec<u8>,
    /// Every frame's header, per `FRAMES.txt`.
    pub frames: Vec<FrameInfo>,
    /// Every frame's body values, as hessian.js decoded them (`DECODED.hessianjs.txt`).
    pub values: Vec<Vec<serde_json::Value>>,
}

/// A frame header as `FRAMES.txt` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub flag: u8,
    pub status: u8,
    pub id: u64,
    pub body: usize,
}

/// Every golden stream, with the header list and the decoded values of its frames.
pub fn golden_files() -> Result<Vec<GoldenFile>, Box<dyn std::error::Error>> {
    let dir = golden_dir();
    let frames = parse_frames(&std::fs::read_to_string(dir.join("FRAMES.txt"))?)?;
    let values = parse_values(&std::fs::read_to_string(dir.join("DECODED.hessianjs.txt"))?)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.ends_with(".hex") {
            continue;
        }
        let bytes = hex::decode(std::fs::read_to_string(&path)?.trim())?;
        files.push(GoldenFile {
            frames: frames
                .get(&name)
                .cloned()
                .ok_or("file missing from FRAMES.txt")?,
            values: values
                .get(&name)
                .cloned()
                .ok_or("file missing from DECODED")?,
            name,
            bytes,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if files.len() < 28 {
        return Err(format!("expected the 28 golden files, found {}", files.len()).into());
    }
    Ok(files)
}

/// The golden file called `name`.
pub fn golden(name: &str) -> Result<GoldenFile, Box<dyn std::error::Error>> {
    golden_files()?
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("no golden file {name}").into())
}

fn parse_frames(
    text: &str,
) -> Result<BTreeMap<String, Vec<FrameInfo>>, Box<dyn std::error::Error>> {
    let mut frames: BTreeMap<String, Vec<FrameInfo>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let field = |prefix: &str| {
            words
                .iter()
                .find_map(|w| w.strip_prefix(prefix))
                .ok_or(format!("no {prefix} in {line}"))
        };
        let flag = field("flag=0x")?;
        let flag = u8::from_str_radix(flag.split('(').next().unwrap_or_default(), 16)?;
        let info = FrameInfo {
            flag,
            status: field("status=")?.parse()?,
            id: field("id=")?.parse()?,
            body: field("body=")?.parse()?,
        };
        let name = words.first().ok_or("empty line")?.to_string();
        frames.entry(name).or_default().push(info);
    }
    Ok(frames)
}

fn parse_values(text: &str) -> Result<DecodedValues, Box<dyn std::error::Error>> {
    let mut values = DecodedValues::new();
    let mut current: Option<&mut Vec<serde_json::Value>> = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("    ") {
            let frame = current.as_mut().ok_or("value before any frame")?;
            frame.push(serde_json::from_str(value)?);
        } else if !line.trim().is_empty() {
            let name = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let frames = values.entry(name).or_default();
            frames.push(Vec::new());
            current = frames.last_mut();
        }
    }
    Ok(values)
}

/// A codec with the default frame cap.
pub fn codec() -> DubboCodec {
    DubboCodec::new(DEFAULT_MAX_FRAME_BYTES)
}

/// Decodes every frame of `bytes`, which must hold whole frames only.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, Box<dyn std::error::Error>> {
    let mut codec = codec();
    let mut src = BytesMut::from(bytes);
    let mut messages = Vec::new();
    while let Some(message) = codec.decode(&mut src)? {
        messages.push(message);
    }
    if !src.is_empty() {
        return Err(format!("{} bytes left over", src.len()).into());
    }
    Ok(messages)
}

/// Decodes the single frame of `bytes`.
pub fn decode_one(bytes: &[u8]) -> Result<Message, Box<dyn std::error::Error>> {
    let mut messages = decode_all(bytes)?;
    match (messages.pop(), messages.is_empty()) {
        (Some(message), true) => Ok(message),
        _ => Err("expected exactly one frame".into()),
    }
}

/// Encodes `message` with `id` and `mutation`.
pub fn encode(
    message: &Message,
    id: u64,
    mutation: &Mutation,
) -> Result<Vec<u8>, metaprotocol_core::CodecError> {
    encode_for(
        message,
        id,
        mutation,
        metaprotocol_dubbo::READS_RESPONSE_ATTACHMENTS,
    )
}

/// Encodes `message` for a client of `variant` (responses gain attachments only for clients
/// that read them).
pub fn encode_for(
    message: &Message,
    id: u64,
    mutation: &Mutation,
    variant: WireVariant,
) -> Result<Vec<u8>, metaprotocol_core::CodecError> {
    let mut dst = BytesMut::new();
    let params = EncodeParams {
        request_id: id,
        variant,
        mutation,
    };
    codec().encode(message, &params, &mut dst)?;
    // Every encode in the tests checks that the write sharing the frame's end agrees.
    let shared = metaprotocol_core::encode_sharing_whole(&mut codec(), message, &params)?;
    assert_eq!(shared, dst, "encode_sharing disagrees with encode");
    Ok(dst.to_vec())
}

/// A mutation from static sets and removals.
pub fn mutation(sets: &[(&'static str, &'static str)], removals: &[&'static str]) -> Mutation {
    let mut mutation = Mutation::new();
    for key in removals {
        mutation.remove(ByteStr::from_static(key));
    }
    for (key, value) in sets {
        mutation.set(ByteStr::from_static(key), ByteStr::from_static(value));
    }
    mutation
}

/// The metadata value of `key`, as a string.
pub fn meta<'m>(message: &'m Message, key: &str) -> Option<&'m str> {
    message.metadata.get(key)
}

/// A frame: header with `flag`, `status`, `id`, then `body`.
pub fn frame(flag: u8, status: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xda, 0xbb, flag, status];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body length field of `frame`.
pub fn body_len(frame: &[u8]) -> Option<usize> {
    let bytes = frame.get(12..16)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(bytes)).ok()
}

/// Reads the Hessian2 string that makes up a whole error-response body (short, medium and
/// `S` forms, ASCII or BMP text).
pub fn body_string(frame: &[u8]) -> Option<String> {
    let body = frame.get(16..)?;
    let (&tag, rest) = body.split_first()?;
    let data = match tag {
        0x00..=0x1f => rest,
        0x30..=0x33 => rest.get(1..)?,
        b'S' => rest.get(2..)?,
        _ => return None,
    };
    String::from_utf8(data.to_vec()).ok()
}
