//! The `RpcMeta` protobuf messages of baidu_std, written by hand for prost (no `protoc`).
//!
//! Field numbers and types follow apache/brpc 1.17: `src/brpc/policy/baidu_rpc_meta.proto`,
//! `src/brpc/options.proto` (`ChunkInfo`) and `src/brpc/streaming_rpc_meta.proto`
//! (`StreamSettings`). The codec itself reads and rewrites metas with a field walker that keeps
//! unknown fields; these types build local replies and let tools and tests decode a meta by its
//! protobuf definition.

use std::collections::BTreeMap;

/// The meta in front of every baidu_std request and response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcMeta {
    /// Set on requests.
    #[prost(message, optional, tag = "1")]
    pub request: Option<RpcRequestMeta>,
    /// Set on responses.
    #[prost(message, optional, tag = "2")]
    pub response: Option<RpcResponseMeta>,
    /// How the payload is compressed (`CompressType`: 0 none, 1 snappy, 2 gzip, 3 zlib, 4 lz4).
    #[prost(int32, optional, tag = "3")]
    pub compress_type: Option<i32>,
    /// Pairs a response with its request on one connection.
    #[prost(int64, optional, tag = "4")]
    pub correlation_id: Option<i64>,
    /// The size of the attachment, the last bytes of the body.
    #[prost(int32, optional, tag = "5")]
    pub attachment_size: Option<i32>,
    /// Chunked transfer (declared by brpc, unsupported by brpc itself).
    #[prost(message, optional, tag = "6")]
    pub chunk_info: Option<ChunkInfo>,
    /// Credentials of the connection's authenticator.
    #[prost(bytes = "vec", optional, tag = "7")]
    pub authentication_data: Option<Vec<u8>>,
    /// Set when a call opens a streaming RPC.
    #[prost(message, optional, tag = "8")]
    pub stream_settings: Option<StreamSettings>,
    /// Free-form key/values (`Controller::request_user_fields`/`response_user_fields`).
    #[prost(btree_map = "string, string", tag = "9")]
    pub user_fields: BTreeMap<String, String>,
    /// How the payload is serialized (`ContentType`: 0 protobuf, 1 JSON, 2 proto-JSON, 3 text).
    #[prost(int32, optional, tag = "10")]
    pub content_type: Option<i32>,
    /// The payload checksum algorithm (`ChecksumType`: 0 none, 1 CRC32C).
    #[prost(int32, optional, tag = "11")]
    pub checksum_type: Option<i32>,
    /// The payload checksum.
    #[prost(bytes = "vec", optional, tag = "12")]
    pub checksum_value: Option<Vec<u8>>,
    /// True if the checksum also covers the attachment.
    #[prost(bool, optional, tag = "13")]
    pub checksum_with_attachment: Option<bool>,
}

/// The request half of [`RpcMeta`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcRequestMeta {
    /// The service's name, usually fully qualified (`example.EchoService`).
    #[prost(string, required, tag = "1")]
    pub service_name: String,
    /// The method's name (`Echo`).
    #[prost(string, required, tag = "2")]
    pub method_name: String,
    /// A caller-chosen id for logs.
    #[prost(int64, optional, tag = "3")]
    pub log_id: Option<i64>,
    /// rpcz trace id.
    #[prost(int64, optional, tag = "4")]
    pub trace_id: Option<i64>,
    /// rpcz span id.
    #[prost(int64, optional, tag = "5")]
    pub span_id: Option<i64>,
    /// rpcz parent span id.
    #[prost(int64, optional, tag = "6")]
    pub parent_span_id: Option<i64>,
    /// The caller's request id (brpc's counterpart of HTTP `x-request-id`).
    #[prost(string, optional, tag = "7")]
    pub request_id: Option<String>,
    /// The caller's timeout for this call, in milliseconds.
    #[prost(int32, optional, tag = "8")]
    pub timeout_ms: Option<i32>,
}

/// The response half of [`RpcMeta`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcResponseMeta {
    /// 0 on success, else an errno or a brpc `Errno` (see [`crate::errno`]).
    #[prost(int32, optional, tag = "1")]
    pub error_code: Option<i32>,
    /// Why the call failed.
    #[prost(string, optional, tag = "2")]
    pub error_text: Option<String>,
}

/// brpc's `ChunkInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkInfo {
    /// The stream the chunk belongs to.
    #[prost(int64, required, tag = "1")]
    pub stream_id: i64,
    /// The chunk's sequence number.
    #[prost(int64, required, tag = "2")]
    pub chunk_id: i64,
}

/// brpc's `StreamSettings`, carried by calls that open a streaming RPC.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamSettings {
    /// The sender's stream id.
    #[prost(int64, required, tag = "1")]
    pub stream_id: i64,
    /// Whether the peer should send flow-control feedback.
    #[prost(bool, optional, tag = "2")]
    pub need_feedback: Option<bool>,
    /// Whether the stream is writable by the peer.
    #[prost(bool, optional, tag = "3")]
    pub writable: Option<bool>,
    /// Further streams opened by the same call.
    #[prost(int64, repeated, packed = "false", tag = "4")]
    pub extra_stream_ids: Vec<i64>,
}
