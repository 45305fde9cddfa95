//! The bRPC codec for metaprotocol-rs: brpc's `baidu_std` protocol.
//!
//! A baidu_std frame is a 12-byte header (`"PRPC"`, body size, meta size, big-endian), a
//! protobuf `RpcMeta`, the payload (a protobuf message, possibly compressed) and an attachment
//! (the last `attachment_size` bytes). The codec reads the meta with a bounds-checked protobuf
//! field walker, slicing strings out of the frame; a request's payload is checked in place,
//! and payload and attachment are never copied apart from the frame.
//!
//! ```
//! use bytes::BytesMut;
//! use metaprotocol_brpc::{encode_frame, proto, BrpcCodec};
//! use metaprotocol_core::{Codec, MessageKind, Side};
//!
//! let meta = proto::RpcMeta {
//!     request: Some(proto::RpcRequestMeta {
//!         service_name: "example.EchoService".into(),
//!         method_name: "Echo".into(),
//!         log_id: Some(42),
//!         ..Default::default()
//!     }),
//!     correlation_id: Some(4_294_967_298),
//!     user_fields: [("tenant".to_owned(), "t1".to_owned())].into(),
//!     ..Default::default()
//! };
//! let mut wire = BytesMut::new();
//! encode_frame(&meta, b"\x0a\x02w1", &mut wire)?;
//!
//! let mut codec = BrpcCodec::new(Side::Downstream, 1 << 20);
//! let request = codec.decode(&mut wire)?.ok_or("incomplete")?;
//! assert_eq!(request.kind, MessageKind::Request);
//! assert_eq!(request.request_id, 4_294_967_298);
//! assert_eq!(request.metadata.get("service"), Some("example.EchoService"));
//! assert_eq!(request.metadata.get("tenant"), Some("t1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is supported
//!
//! - **Frames**: baidu_std (`"PRPC"`) requests and responses over one connection, many in
//!   flight, paired by `correlation_id` (downstream the full 64-bit value is the message's
//!   request id; upstream see **Forwarding**).
//!   Frames larger than `max_frame_bytes` (header included; default 8 MiB, the default of
//!   every protocol, where brpc's own `max_body_size` is 64 MiB: a larger limit is set on the
//!   listener and the cluster alike) are refused as soon as the header arrives, and a
//!   `meta_size` larger than `body_size` or a meta that is not well-formed protobuf is a decode error (the connection closes). An answer over the
//!   cluster's limit is the exception: once its meta is in (at most 64 KiB), its
//!   `correlation_id` names the call, so the engine passes over the frame and fails that call
//!   alone ([`Codec::oversized_response`](metaprotocol_core::Codec::oversized_response)). A
//!   response frame from a client decodes as a response, which the engine ignores. Every frame
//!   from a server is an answer, as brpc clients read it: a request meta in it is ignored
//!   (Jprotobuf-rpc-socket, Baidu's Java server, answers in its request's `RpcMeta`, the
//!   request meta kept beside the response meta), and a missing response meta reads as
//!   success.
//! - **Bodies**: what follows the meta is delimited, so it never closes a connection. A
//!   request whose `attachment_size` is negative or larger than what follows the meta, or
//!   whose uncompressed protobuf payload (`compress_type` 0, `content_type` 0) is not
//!   well-formed at the wire level (tags, wire types, varints, lengths, groups nested at most
//!   64 deep; checked without the schema and without allocating) is decoded with a
//!   [`reject_reason`](metaprotocol_core::Message::reject_reason), which the engine answers
//!   with `EREQUEST`, as brpc servers do: such a body never reaches a server connection that
//!   other clients share. Compressed and JSON payloads are not read. A response whose
//!   `attachment_size` does not fit is forwarded as it came, as a `ServerError`. A response
//!   with `ELIMIT`, `EOVERCROWDED` or `ELOGOFF` is marked
//!   [`not_processed`](metaprotocol_core::Message::not_processed): the server refused the call
//!   without running it, so the engine may retry it elsewhere, as brpc clients do.
//! - **Metadata** ([`keys`]): `service` (`service_name`), `method` (`method_name`), `log_id`,
//!   `request_id` (brpc's `x-request-id` string; the *message's* request id is
//!   `correlation_id`), `timeout_ms`, `trace_id`, `span_id` and `parent_span_id` (brpc's rpcz
//!   ids, in decimal, when set), and every `user_fields` entry under its own key (the meta's
//!   own fields win over a user field of the same name). Responses carry `error_code` (when not
//!   0), `error_text` and their `user_fields`. Every other `RpcMeta` field (`compress_type`,
//!   `content_type`, checksums, `authentication_data`, trace ids ...) is readable through
//!   [`RpcMetaView`].
//! - **Timeouts**: `timeout_ms` is the caller's own deadline for the call; the codec reports it
//!   as [`metaprotocol_core::Message::timeout`] (and as the `timeout_ms` metadata key, for
//!   routing), and the engine caps the route's timeout with it. Upstream, each attempt tells
//!   its server how long the proxy waits for it, as brpc's clients write what is left of a
//!   call's deadline into each try (and as brpc servers read it: their handlers' deadline, and
//!   the `timeout` concurrency limiter's): a request the proxy waits for less than its caller
//!   does (a route `timeout` or `per_try_timeout` shorter than its `timeout_ms`, a retry)
//!   goes with `timeout_ms` that wait in whole milliseconds, at least 1, counted when it is written
//!   ([`Codec::encode_within`](metaprotocol_core::Codec::encode_within)), the request meta
//!   rebuilt (the rest of it as it came). A first attempt under the caller's own deadline goes
//!   verbatim: its server is told the caller's `timeout_ms`. A caller that sent none (brpc's
//!   clients send none unless told to) did not ask for its servers to be told a deadline: its
//!   requests go without one, verbatim.
//! - **Forwarding**: without mutation the frame is written verbatim, the `correlation_id` varint
//!   patched in place when the new id has the same length, else spliced in (the meta's other
//!   bytes, unknown fields included, unchanged). The engine numbers an upstream connection's
//!   calls 1, 2, 3 ..., where clients' ids are long (brpc's bthread ids take five bytes and
//!   more), so an upstream codec writes the engine's id `n` as `n + 2^(7(len-1))`, a varint as
//!   long as the client's id (`len` bytes) whenever `n` fits there, and reads a response's
//!   `len`-byte id back to `n`: both ways the id keeps its length and the frame is patched, not
//!   rebuilt. Compressed payloads and checksums pass through: brpc's checksums cover payload
//!   and attachment, never the meta.
//! - **Mutation**: route `request_mutation`/`response_mutation` entries become `user_fields`
//!   (set replaces an entry of the same key, remove drops it); only the meta is rebuilt, and
//!   body and meta sizes are recomputed. A request whose mutation carries a sampled
//!   `traceparent` (the engine's tracer writes one for each attempt) goes upstream with brpc's
//!   rpcz ids in its `RpcRequestMeta` taken from it, in place of the caller's: `trace_id` the
//!   trace id's low 64 bits, `parent_span_id` the attempt's span, no `span_id` (the server makes
//!   its own). A request that a mutation (or a longer id) takes over
//!   the cluster's `max_frame_bytes` is not sent: its client gets `EREQUEST`, and the server
//!   connection other clients' calls share is spared a frame the server would refuse.
//! - **Local replies**: a response meta with brpc's error code ([`error_code`] lists the
//!   mapping), an `error_text` such as `[metaprotocol-proxy][E1002] route_not_found: no route
//!   for service example.EchoService method Echo`, and the request's `correlation_id`; no
//!   payload.
//! - **Not supported**: streaming RPC. A call carrying `stream_settings` (or `chunk_info`) is
//!   answered with `EREQUEST` "bRPC streaming RPC is not supported" (the connection stays
//!   open); a `"STRM"` stream frame is a [`CodecError::Unsupported`](metaprotocol_core::CodecError)
//!   error, which closes the connection. Other brpc protocols (hulu, sofa, nshead, HTTP ...)
//!   are not baidu_std and are refused by their magic.
//! - **Authentication**: a client's `authentication_data` is never forwarded. A brpc server
//!   with an `Authenticator` checks the credentials of a connection's first request only and
//!   runs every later call on it under them, so on an upstream connection that many clients
//!   share, one client's credentials would authenticate them all (and a client without any,
//!   going first, would leave the rest with none). An upstream codec drops the field from the
//!   requests it writes (rebuilding the meta, which brpc clients send it in only on their own
//!   connection's first call; the other requests keep the verbatim path) and puts the
//!   cluster's own credentials, read from the file the codec option
//!   [`AUTHENTICATION_DATA_FILE`] names (a cluster's only),
//!   on the first request of its connection ([`BrpcCodec::with_credentials`]). The file is
//!   watched ([`CodecFactory::watched_files`](metaprotocol_core::CodecFactory::watched_files)):
//!   a codec takes its current contents when it is made, so a connection opened after the file
//!   was rotated sends the new credentials, and one opened before keeps those it authenticated
//!   with; a file gone or emptied keeps the last good ones. Nor does a server's
//!   `authentication_data` reach a client: Jprotobuf-rpc-socket answers a call it fails before
//!   a handler runs (service not found, an exception) in the request's own meta, credentials
//!   included, so a response is written to its client without the field (brpc servers never
//!   send it; their answers keep the verbatim path). The proxy
//!   speaks to servers as itself; its clients are authenticated by the mesh (mTLS, the `rbac`
//!   filter). A server's `ERPCAUTH` answer with its `Authenticator`'s text ("Fail to
//!   authenticate") refuses those credentials
//!   ([`credentials_refused`](metaprotocol_core::CodecFactory::credentials_refused)): a health
//!   check's probe so answered fails (an `ERPCAUTH` a method answers a call it does not allow
//!   refuses the call alone). A brpc server before 1.11 refuses them by closing the
//!   connection without an answer (taken so only from a cluster that sends credentials)
//!   ([`refuses_credentials_by_closing`](metaprotocol_core::CodecFactory::refuses_credentials_by_closing)):
//!   the engine backs off opening connections after either refusal.
//! - baidu_std has no heartbeat frames and no one-way calls.

mod codec;
mod correlation;
mod decode;
mod encode;
mod frame;
mod header;
mod layout;
mod meta;
pub mod proto;
mod reply;
mod wire;

use metaprotocol_core::CodecRegistry;

pub use codec::{AUTHENTICATION_DATA_FILE, BrpcCodec, BrpcCodecFactory};
pub use frame::{decode_frame, encode_frame};
pub use meta::{MetaText, RequestMetaView, ResponseMetaView, RpcMetaView};
pub use reply::{errno, error_code};

/// The protocol's registered name.
pub const PROTOCOL: &str = "brpc";

/// Metadata keys of this codec, besides [`metaprotocol_core::keys::SERVICE`] and
/// [`metaprotocol_core::keys::METHOD`]. `user_fields` entries use their own names.
pub mod keys {
    /// `RpcRequestMeta.log_id`, in decimal.
    pub const LOG_ID: &str = "log_id";
    /// `RpcRequestMeta.trace_id` (brpc's rpcz tracing), in decimal: the engine's tracer
    /// continues this trace when the request carries no W3C or B3 context.
    pub const TRACE_ID: &str = "trace_id";
    /// `RpcRequestMeta.span_id`, in decimal: the caller's span.
    pub const SPAN_ID: &str = "span_id";
    /// `RpcRequestMeta.parent_span_id`, in decimal.
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    /// `RpcRequestMeta.request_id`, the caller's `x-request-id`.
    pub const REQUEST_ID: &str = "request_id";
    /// `RpcRequestMeta.timeout_ms`, in decimal: the caller's deadline, which caps the route
    /// timeout.
    pub const TIMEOUT_MS: &str = "timeout_ms";
    /// `RpcResponseMeta.error_code`, in decimal, on failed responses.
    pub const ERROR_CODE: &str = "error_code";
    /// `RpcResponseMeta.error_text`.
    pub const ERROR_TEXT: &str = "error_text";
}

/// Registers the brpc codec under [`PROTOCOL`].
pub fn register(registry: &mut CodecRegistry) {
    registry.register(PROTOCOL, BrpcCodecFactory::from_options);
}
