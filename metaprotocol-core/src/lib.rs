//! The protocol-neutral vocabulary of metaprotocol-rs.
//!
//! A request/response RPC protocol joins the engine by implementing [`Codec`] (sans-IO: bytes in,
//! [`Message`]s out, and back) and registering a [`CodecFactory`] constructor under a name in a
//! [`CodecRegistry`]. Everything else, routing, load balancing, resilience, policy, is shared and
//! lives in `metaprotocol-router`, which sees a protocol only through these types:
//!
//! - [`Message`]: one decoded frame: its [`MessageKind`], request id, routable [`Metadata`], and
//!   the original bytes, so that forwarding is a copy of the frame, not a re-serialization.
//! - [`Metadata`]: the key/values a codec extracted (interface, method, attachments, headers ...),
//!   sliced from the frame without copying where the encoding allows.
//! - [`Mutation`]: header set/remove operations that a codec applies when it encodes a frame.
//! - [`LocalReply`]: an error the proxy answers itself; the codec turns it into the protocol's own
//!   error response (Dubbo status, Thrift `TApplicationException`, bRPC `error_code`).
//! - [`L7Filter`] and [`FilterChain`]: request, response and completion hooks that continue,
//!   answer locally, or wait on asynchronous work.
//! - [`RequestRecord`]: what happened to one request (route, cluster, endpoint, attempts,
//!   timings, outcome with [`ResponseFlags`], bytes, the peer's identity), seen by every hook,
//!   with a typed per-request state slot ([`Extensions`]).
//!
//! This crate opens no sockets and spawns no tasks.
//!
//! ```
//! use bytes::BytesMut;
//! use metaprotocol_core::{ByteStr, Metadata, Mutation};
//!
//! let mut metadata = Metadata::new();
//! metadata.insert(ByteStr::from_static("method"), ByteStr::from_static("sayHello"));
//! assert_eq!(metadata.get("method").map(|v| v.as_bytes()), Some(&b"sayHello"[..]));
//!
//! let mut mutation = Mutation::new();
//! mutation.set(ByteStr::from_static("x-routed-by"), ByteStr::from_static("canary"));
//! assert!(!mutation.is_empty());
//! # let _ = BytesMut::new();
//! ```

mod bytestr;
mod codec;
mod error;
mod filter;
mod message;
mod metadata;
mod mutation;
mod read_ahead;
mod record;
mod reply;
mod watched_file;

pub use bytestr::{Ascii, AsciiRange, ByteStr, is_text};
pub use codec::{
    Codec, CodecConstructor, CodecCounter, CodecFactory, CodecOptions, CodecRegistry,
    DEFAULT_MAX_FRAME_BYTES, EncodeParams, FrameHead, MAX_FRAME_HEAD, MAX_UNSENT_ANSWER_BYTES,
    PassedOver, PoolMode, Probe, Side, WireVariant, append_frame, decode_new, encode_sharing_whole,
};
pub use error::{CodecError, OptionsError};
pub use filter::{
    ChainStep, CompleteContext, FilterChain, FilterDecision, FilterFuture, L7Filter,
    RequestContext, ResponseContext, Resume, poll_wait,
};
pub use message::{FrameLayout, Message, MessageKind, ResponseStatus};
pub use metadata::{
    MAX_METADATA_ENTRIES, MAX_METADATA_INSERTS, METADATA_OVERFLOW_REASON, Metadata, MetadataKey,
    MetadataStr, RENDERED_INLINE_BYTES, keys,
};
pub use mutation::Mutation;
pub use read_ahead::{ReadAhead, ReadKind, metadata, read_whole};
pub use record::{
    Authorization, AuthorizationDecision, ConnectionInfo, Extensions, Outcome, PeerIdentity,
    RequestRecord, ResponseFlags, RoutingKeys, RoutingView, Timings,
};
pub use reply::{LocalReply, LocalReplyKind, UnknownReplyKind};
pub use watched_file::{
    FileCheck, MAX_WATCHED_FILE_BYTES, Reloaded, WatchedFile, WeakWatchedFile, read_regular_file,
};
