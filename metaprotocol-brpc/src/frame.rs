//! Whole frames built from and read into [`proto::RpcMeta`]: for local replies, tools and tests
//! (the proxy's forwarding path never re-serializes a meta).

use std::borrow::Cow;

use bytes::BytesMut;
use metaprotocol_core::CodecError;
use prost::Message as _;

use crate::header::{FrameHeader, HEADER_LEN, write_frame};
use crate::proto;

/// Appends a baidu_std frame with `meta` followed by `body` (payload, then attachment; set
/// `meta.attachment_size` to the attachment's length).
pub fn encode_frame(
    meta: &proto::RpcMeta,
    body: &[u8],
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let capacity = HEADER_LEN + meta.encoded_len() + body.len();
    write_frame(dst, capacity, body, |dst| {
        meta.encode(dst)
            .map_err(|e| CodecError::Encode(Cow::Owned(format!("RpcMeta: {e}"))))
    })
}

/// Reads the complete frame `frame` (exactly one, nothing after it) by the protobuf definition:
/// its meta and its body (payload, then attachment).
pub fn decode_frame(frame: &[u8]) -> Result<(proto::RpcMeta, &[u8]), CodecError> {
    let header = FrameHeader::parse(frame, frame.len())?
        .ok_or(CodecError::malformed("shorter than the baidu_std header"))?;
    if header.frame_len() != frame.len() {
        return Err(CodecError::malformed(
            "body_size does not match the frame's length",
        ));
    }
    let (Some(meta), Some(body)) = (
        frame.get(HEADER_LEN..header.meta_end()),
        frame.get(header.meta_end()..),
    ) else {
        return Err(CodecError::malformed("meta_size runs past the frame"));
    };
    let meta = proto::RpcMeta::decode(meta)
        .map_err(|e| CodecError::Malformed(Cow::Owned(format!("RpcMeta: {e}"))))?;
    Ok((meta, body))
}
