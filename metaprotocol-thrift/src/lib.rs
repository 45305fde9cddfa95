//! The Apache Thrift codec for metaprotocol-rs.
//!
//! Speaks every combination of the binary (strict and lax) and compact protocols with the
//! framed, unframed (buffered) and THeader transports, detected per connection unless the
//! options fix them (`codec: { transport: auto|framed|unframed|header, protocol:
//! auto|binary|compact }`).
//!
//! - **Decode** reads only the message header (and the THeader block): metadata `method`,
//!   `service` (from a `TMultiplexedProtocol` name `Service:method`) and every THeader info
//!   header but those spelt `service` or `method` (forwarded in the frame as they came, but
//!   never taken for the call's own: a call that is not multiplexed has no `service`), all
//!   sliced from the frame; the seqid is the request id. The info headers are those Apache
//!   Thrift's readers hand a handler: the `KEYVALUE` groups up to the first group of another
//!   id (a persistent `PKEYVALUE` one, say), where they stop; the rest is forwarded unread. `CALL` is a request,
//!   `ONEWAY` a one-way request (forwarded), `REPLY` a response whose status is
//!   [`ResponseStatus::ApplicationError`](metaprotocol_core::ResponseStatus) when the result
//!   struct's first field is not field 0 (a declared exception; the value is never decoded),
//!   and `EXCEPTION` a response with
//!   [`ResponseStatus::ServerError`](metaprotocol_core::ResponseStatus), marked
//!   [`not_processed`](metaprotocol_core::Message::not_processed) when its type is fbthrift's
//!   [`LOADSHEDDING`] (the server shed the call without running it). A reply whose result
//!   cannot be read is forwarded as a `ServerError`.
//! - **Bodies**: the argument struct of every call is walked (no allocation, no value built,
//!   64 levels of nesting at most). Unframed, the walk is how the end of the message is found:
//!   a malformed struct is a decode error (the stream cannot be followed), and a message that
//!   arrives in pieces is walked once, each read continuing where the last one stopped. Framed
//!   and THeader, a call whose struct is malformed, runs past its frame or leaves bytes after
//!   it is decoded with a [`reject_reason`](metaprotocol_core::Message::reject_reason): the
//!   engine answers it with a [`PROTOCOL_ERROR`] and keeps the connection, and the body never
//!   reaches a server connection that other clients share.
//! - **Encode** without translation or mutation copies the frame and patches the seqid in
//!   place (strict binary always; compact when the new varint has the old length, otherwise
//!   only the message header is rebuilt). A lax binary message (no version word, what a
//!   `TBinaryProtocol` with `strictWrite` off sends) is written strict, its header rebuilt: a
//!   server that reads strictly refuses a lax one by closing the connection other clients'
//!   calls share, and every binary reader takes a strict one. A mutation rewrites the THeader
//!   info headers read (the rest of the block follows them as it came); frames without headers cannot carry one, so they are forwarded unchanged
//!   and counted in [`stats::mutations_not_applied`] (logged once).
//! - **Header blocks** of THeader frames are at most 65,532 bytes (16,383 words), as Apache
//!   Thrift's C++ and Ruby readers take: they refuse a longer one and close the connection. A
//!   call with a longer one is decoded with a `reject_reason` (the engine answers it with a
//!   [`PROTOCOL_ERROR`] and keeps the connection: a server connection other clients share
//!   never carries it); a reply with one is forwarded, its client's to read; a mutation that
//!   would write one fails the encode.
//! - **Translation** to another [`WireVariant`](metaprotocol_core::WireVariant) re-wraps the
//!   same message for a transport change (THeader headers dropped and counted when the target
//!   has none) and transcodes the struct, streaming and depth-limited, for binary <-> compact:
//!   a message that grows past the target's frame limit fails the encode, its writing stopped
//!   once past it (a compact call of `i64` zeros takes eight times its length in binary).
//! - **Local replies** are `TApplicationException`s in the request's transport and protocol:
//!   [`UNKNOWN_METHOD`] for `route_not_found`, [`PROTOCOL_ERROR`] for `bad_request`,
//!   [`LOADSHEDDING`] (fbthrift's) for `over_limit`, [`INTERNAL_ERROR`] otherwise.
//! - **zlib**: a THeader message under the zlib transform (id 1) alone, call, one-way call or
//!   answer, is inflated, the whole frame at most `max_frame_bytes`, and read as any THeader
//!   message from the frame rebuilt without the transform, which is what is forwarded: Apache
//!   Thrift's peers (C++, Python, Go) undo the transforms each frame names and answer with
//!   those they are set to write, so every one reads it, and a client reads its answer
//!   compressed or not. A call that inflates past the cap (a zlib bomb: inflation stops there)
//!   or whose zlib data is corrupt or cut short is decoded with a `reject_reason` (the engine
//!   answers it with a [`PROTOCOL_ERROR`] naming it; a one-way call, with nothing) once its
//!   message header inflated; one cut before that is `Malformed` (the engine closes the
//!   connection, counted), within the cap as over it: its type unknown, it could be a one-way
//!   call, whose client would take an answer for its next call's, and Apache Thrift's C++ and
//!   Python servers close the connection on a frame that does not inflate. Such an answer is
//!   a decode error: `Malformed` when corrupt, and
//!   `FrameTooLarge` when it inflates past the cap, left on the stream for the engine to pass
//!   over by its length, its call failed alone (see below). Uncompressed frames cost nothing
//!   more: the THeader path (header block, transforms, zlib) is outlined from the framed one.
//! - **THeader frames** longer than `0x3FFFFFFF` bytes are refused (`Malformed`, whatever the
//!   cap), as Apache Thrift's C++, Python and Java readers refuse them as corrupt and close
//!   the connection; none is written (a mutation, or a framed call written THeader, that
//!   grows one past it fails the encode, before the message is copied).
//! - A THeader frame whose message another transform hides (HMAC, snappy, QuickLZ, an unknown
//!   id, or zlib stacked with another), or in the JSON protocol, is refused with
//!   [`CodecError::Unsupported`](metaprotocol_core::CodecError) (in another id THeader does not
//!   define, `Malformed`), a call's as an answer's, within the cap as over it: its message type
//!   cannot be read, and a one-way call's client reads no answer (a synchronous one would take
//!   it for its next call's), so the engine closes the connection, as Apache Thrift's servers
//!   close it on a transform or protocol they lack (the C++ one after an exception of no name
//!   to seqid 0, the Python one failing to write its own). The engine writes no answer before
//!   closing, though a synchronous caller would read one as a clearer error than the closed
//!   connection: only the THeader `seq` is in the clear, not the message's type or seqid, so
//!   an answer could as well go to a one-way call, whose client's next call on the connection
//!   (which the proxy never reads) would fail with an application exception it has no reason
//!   to retry, where a closed connection fails it as a transport error, safe to retry on a new
//!   connection. The C++ server's answer is not a choice either: its THeader protocol answers
//!   whatever reading a frame's header throws, to seqid 0. A zlib message over the cap
//!   compressed is read from its first bytes inflated (within the frame's first
//!   [`MAX_FRAME_HEAD`](metaprotocol_core::MAX_FRAME_HEAD) bytes, and no more than that
//!   inflated, each byte once as the reads bring it): a call is passed over by its length and
//!   answered with the `PROTOCOL_ERROR` naming it (a one-way call, with nothing), an answer fails its call
//!   alone; one whose first bytes do not inflate to a message header could be a one-way call,
//!   which must get no answer, and is refused (the connection closes, as Apache Thrift's
//!   servers close it on any frame over their limit). Over-long frames are refused with
//!   `FrameTooLarge` once the message header is in and the length (or, unframed, the scanned
//!   bytes) passes the cap.
//!   Framed or THeader, a `REPLY` or `EXCEPTION` over a cluster's cap names its call by its
//!   seqid once its message header is in, so the engine passes over the frame and fails that
//!   call alone ([`Codec::oversized_response`](metaprotocol_core::Codec::oversized_response)).
//!   An unframed message has no length: one over the cap is walked on as it arrives and its
//!   bytes dropped ([`Codec::pass_over`](metaprotocol_core::Codec::pass_over)), keeping only
//!   the walk, a count of the bytes still to come of a cut string, a few bytes of any other
//!   cut value and the message header; a reply then fails its call alone. A call over the cap,
//!   in any transport, is passed over (framed or THeader, by its length) and answered with a
//!   [`PROTOCOL_ERROR`]; the decoder refuses it once its message header is in.
//!
//! ```
//! use bytes::BytesMut;
//! use metaprotocol_core::{CodecOptions, EncodeParams, MessageKind, Mutation, Side, WireVariant};
//! use metaprotocol_thrift::ThriftCodecFactory;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let factory = ThriftCodecFactory::from_options(&CodecOptions::default())?;
//! let mut codec = factory.new_codec(Side::Downstream, WireVariant::DEFAULT);
//! // A framed strict-binary CALL of `ping` with seqid 7 and an empty argument struct.
//! let mut src = BytesMut::from(
//!     &[0, 0, 0, 17, 0x80, 1, 0, 1, 0, 0, 0, 4, b'p', b'i', b'n', b'g', 0, 0, 0, 7, 0][..],
//! );
//! let message = codec.decode(&mut src)?.ok_or("incomplete")?;
//! assert_eq!(message.kind, MessageKind::Request);
//! assert_eq!(message.request_id, 7);
//! assert_eq!(message.metadata.get("method"), Some("ping"));
//!
//! let mut out = BytesMut::new();
//! let params = EncodeParams { request_id: 9, variant: message.variant, mutation: &Mutation::new() };
//! codec.encode(&message, &params, &mut out)?;
//! assert_eq!(&out[16..20], &[0, 0, 0, 9]);
//! # Ok(())
//! # }
//! ```

mod codec;
mod decode;
mod encode;
mod format;
mod layout;
mod options;
mod pass;
mod probe;
mod protocol;
mod reply;
pub mod stats;
mod theader;
mod wire;
mod zlib;

use metaprotocol_core::CodecRegistry;

pub use codec::{ThriftCodec, ThriftCodecFactory};
pub use format::{FormatChoice, Protocol, ThriftFormat, Transport};
pub use options::{PROTOCOL_OPTION, TRANSPORT, ThriftOptions};
pub use reply::{
    ApplicationException, INTERNAL_ERROR, INVALID_PROTOCOL, INVALID_TRANSFORM, LOADSHEDDING,
    PROTOCOL_ERROR, UNKNOWN_METHOD,
};

/// The name this codec is registered under.
pub const PROTOCOL: &str = "thrift";

/// Registers the thrift codec under [`PROTOCOL`].
pub fn register(registry: &mut CodecRegistry) {
    registry.register(PROTOCOL, ThriftCodecFactory::from_options);
}
