//! The Dubbo2 codec for metaprotocol-rs: the `dubbo://` wire protocol with Hessian2 or
//! fastjson2 bodies.
//!
//! [`DubboCodec`] implements [`metaprotocol_core::Codec`]; [`register`] adds the protocol to a
//! [`CodecRegistry`] as `dubbo` (its only option is `max_frame_bytes`).
//!
//! # Frames
//!
//! A 16-byte header (magic `0xdabb`, flag, status, 64-bit request id, body length) and a body.
//! The flag says request (`0x80`), two-way (`0x40`), event (`0x20`) and holds the
//! serialization id in its low 5 bits.
//!
//! | flag bits | [`MessageKind`](metaprotocol_core::MessageKind) |
//! |---|---|
//! | request + two-way | `Request` |
//! | request | `Oneway`: forwarded, complete once written |
//! | request + event | `Heartbeat`, two-way or one-way; `GoAway` for Dubbo's read-only event (a provider going away: the string `R`, in Hessian2 or, from a provider whose protocol is set to fastjson2, in fastjson2) |
//! | event | `HeartbeatReply` |
//! | none | `Response`: status 20 with result flag 1, 2, 4, 5 is `Ok`, result flag 0 or 3 (an exception) is `ApplicationError`, any other status is `ServerError` (`not_processed` for 100, `SERVER_THREADPOOL_EXHAUSTED`: the provider refused the call without running it, so the engine may retry it elsewhere) |
//!
//! A length over `max_frame_bytes` fails with `FrameTooLarge` as soon as the header arrives,
//! and a wrong magic number or a negative length with `Malformed`: the stream can no longer be
//! followed, and the engine closes the connection. A response over the limit is the exception:
//! its header gives its request id and length, so the engine passes over it and fails that
//! call alone ([`Codec::oversized_response`](metaprotocol_core::Codec::oversized_response)). A call is written upstream only within the
//! cluster's `max_frame_bytes` (a listener may take larger frames): one over it, as it came or
//! once mutated, is answered with status 40 instead. Whatever the body holds, the frame is
//! delimited, so a body never closes a connection: a call whose Hessian2 body cannot be read
//! (truncated, a wrong type, an unknown tag, a value nested more than 64 deep ...) is decoded
//! with a [`reject_reason`](metaprotocol_core::Message::reject_reason) saying why, which the
//! engine answers with status 40 as a Java provider does, and a response whose result cannot be
//! read is forwarded as a `ServerError`. A malformed body therefore never travels on an
//! upstream connection that other clients share. Decoding never panics and never allocates in
//! proportion to a length read from the wire.
//!
//! # Bodies
//!
//! Requests in Hessian2 (serialization id 2) are read up to the attachments: the call fields
//! (dubbo version, service path, service version, method, parameter descriptor), then the
//! arguments, skipped without being built (the skipper walks the whole Hessian2 grammar), then
//! the attachments map, which some clients omit or send as null. The number of arguments comes
//! from the parameter descriptor: JVM descriptors (`Ljava/lang/String;`, `[I`, `J` ...) count
//! one argument per type, and any other byte (dubbo-py sends `S` for a String) counts as one.
//! Responses with status 20 are read up to their result flag, and when the flag announces
//! attachments (3, 4, 5), past the result to them.
//!
//! Requests in fastjson2 (serialization id 23, which Dubbo 3.2 and later consumers prefer
//! when their provider offers it) are read the same way: each call field, argument and the
//! attachments is a 4-byte length and a value in fastjson2's binary JSON (JSONB); the call
//! fields are JSONB strings, the arguments are skipped by their lengths, and the attachments
//! are a JSONB object (a `HashMap`, or another map after its type name), null or missing. Its
//! entries are metadata by the rules below, with these JSONB values: a string in any of its
//! encodings (Latin-1, UTF-8, UTF-16, and GB18030 of ASCII bytes, which is that ASCII) as its
//! text; an int or long in decimal, a boolean as `true`/`false`, a double as `Double.toString`
//! does, a char as itself; a null as none; any other value (a float, a big integer or decimal,
//! a date, a list, a map, an object, a binary) is not metadata. A key's last value is its
//! metadata, as it is the provider's: a null or a value that is not metadata takes out an
//! earlier one. A key or string given as a JSONB symbol (a string and its
//! number), or by the number of one given before in the map, is that string, as the
//! provider's reader resolves it (at most 256 symbols a map). Values nest at most 64 deep. A
//! fastjson2 call is refused, answered with status 40, where a Hessian2 one is, when its body
//! cannot be read, when a symbol number names no symbol given before it, when an attachment's
//! value is a reference (a path to another value, which the codec does not follow), and when
//! a call field, or an attachment's key or string value, cannot be decoded (GB18030 past ASCII, UTF-8 or UTF-16
//! that is not, which the provider's reader reads with replacement characters): an attachment
//! the provider reads is never hidden from routes and policies.
//!
//! Calls in another serialization (Java, fastjson, protobuf ...) are decoded from the header
//! only: kind and id, no metadata, and a
//! [`reject_reason`](metaprotocol_core::Message::reject_reason) naming the serialization id,
//! so the engine answers them with a `BadRequest` reply (status 40). Their heartbeats and
//! responses pass through, and so do fastjson2 responses: forwarded as they came, a status 20
//! one judged by its result flag (a JSONB int) as a Hessian2 one is (an exception is an
//! `ApplicationError`, a flag that cannot be read a `ServerError`), and its attachments (result
//! flags 3, 4 and 5) read into its metadata as a Hessian2 response's are, for `on_response`
//! scripts and filters (a response mutation is written into them: see Mutations). Attachments
//! that cannot be read leave the metadata empty and the status the flag's, since the client's
//! fastjson2 may read what this codec does not.

//! # Metadata
//!
//! | key | value |
//! |---|---|
//! | `interface`, `service` | the service path from the call fields (both keys, so protocol-neutral policies written against `service` work) |
//! | `method` | the method name |
//! | `version` | the service version: the `version` attachment when present (an empty one too: Java providers look the service up by it, and an empty one names the service exported without a version), else the call field; Dubbo's default `0.0.0` reads as the empty version, since Dubbo's service keys treat it as none (a call of it runs the export without a version) |
//! | `group` | the `group` attachment |
//! | any other key | every attachment whose key is a string: its value if that is a string; if it is another Hessian type, the text a Java provider prints for it (dubbo2.js's int `timeout` as `3000`, a long in decimal, a boolean as `true`/`false`, a double as `Double.toString` does), rendered without an allocation, and a date, list, map, object or binary as text that is the same on every host (see `hessian::printed`: `2026-12-07T02:30:15.250Z`, `[a, b]`, `{k=v}`, a binary in base64, cut at 256 bytes), and a reference to an argument or earlier value (a Java client's second attachment of one object) as that value, so that a route's or policy's `present` sees what a Java provider sees (`getObjectAttachment`); none if it is null, which Java reads as none (nor an earlier value of the key: Java's map keeps a key's last value) |
//!
//! `interface`, `service` and `method` attachments never override the call fields. A `path`
//! attachment must repeat the call's path: Java providers find the service by the attachment
//! (`DubboProtocol.getInvoker`), others may go by the field, so a call naming `demo.Public` in
//! its fields and `demo.Admin` in its `path` attachment would be routed and authorized as one
//! and could run the other; it is refused with status 40 (every client sends the same path in
//! both). So is a call whose `version` or `group` attachment (by which Java providers pick the
//! export that runs; the last of each name counts) is not a UTF-8 string (a null, which Java
//! reads as none): its metadata would not say what runs. So is a call passing a callback
//! argument (a `sys_callback_arg-<index>` attachment): the provider would call the client back
//! over the connection the call came on, which through the proxy other clients share and which
//! takes no calls from providers. (The `callback.service.instid` attachment of such a call back
//! picks an export only on the client's side of a connection, never on a provider's.) So is a
//! stub event call (a `dubbo.stub.event` attachment of `true`): a Java provider looks it up
//! under another port than its service's (the connection's remote port, which through the
//! proxy is the proxy's own, in Dubbo 2; 0 in Dubbo 3), finds no service, and fails it. So is
//! a call whose service path, version, method or parameter descriptor field, or an
//! attachment's key or string value, is a string the codec cannot decode (bytes neither UTF-8
//! nor Java's surrogate encoding, which Java's Hessian2 reader decodes as some character all
//! the same, an overlong `e` in `demo.Admin` as `e`; a lone surrogate): the service, method,
//! group or value the provider reads would be absent from the metadata, and a descriptor
//! counted otherwise than by the provider would have other bytes read as the attachments.
//! Values are slices of the frame, not copies, except for strings split into chunks or
//! holding characters outside the BMP in Java's surrogate encoding, and the rendered text of
//! values that are no strings. Responses carry their attachments, read by the same rule as a
//! request's (a number as its text, a null left out).
//!
//! # Mutations
//!
//! A [`Mutation`](metaprotocol_core::Mutation) rewrites the attachments map and, for `path`
//! only, the call's path field:
//! the arguments (or result) are copied as they came, the map is rebuilt (original entries
//! minus the overridden keys, then the sets, as Hessian2 strings) and the body length patched.
//! Setting the `path` attachment renames the call's service: the call's path field is set to
//! the same value, since providers go by one or the other and a proxy in front of the provider
//! refuses a call whose two paths differ.
//! A response without attachments gains them by switching its result flag (value 1 to 4, null
//! 2 to 5, exception 0 to 3). Responses that cannot carry attachments (status other than 20,
//! events, serializations other than Hessian2 and fastjson2, a result the codec cannot read)
//! travel unchanged rather than fail the client's call. An empty mutation writes the original frame with only the
//! request id patched.
//!
//! A fastjson2 call's attachments are rewritten the same way in JSONB: the call fields (the
//! path field renamed by a set `path`) and arguments are copied as they came, then the map's
//! value: its type name if it has one, the entries the mutation does not override byte for
//! byte, the sets as JSONB strings (ASCII in an ASCII form, other text in UTF-8), with its
//! 4-byte length and the body length recomputed; a call without attachments, or with null
//! ones, gains a map. JSONB lets a value point at another of the same map: a reference (a path
//! such as `$.key`) and a symbol (a name or type name given a number, later used by it). A
//! removal or replacement that would take away what another entry points at (an entry a
//! reference may name, a symbol used by number elsewhere in the map, a reference a later
//! `#-1` repeats), or a map whose keys are symbol numbers, is an `Encode` error, which fails
//! the call with status 40; Dubbo's own writer gives string attachments no such links. A
//! fastjson2 response with status 20 is rewritten alike: its result flag switched as a
//! Hessian2 one's (written as Dubbo writes the byte, a JSONB int8), its result copied as it
//! came, and its map (or a new one after the result) rewritten as a call's; one whose flag or
//! attachments cannot be read travels unchanged.
//!
//! # Deadlines
//!
//! A call's [`timeout`](metaprotocol_core::Message::timeout), the consumer's deadline, is its
//! `_TO` attachment (Dubbo's timeout countdown: the milliseconds left of the call), an int or
//! a string, or else its `timeout` attachment when that is a string (the milliseconds Java
//! consumers, dubbo-go and sofa-rpc-node wait; dubbo2.js sends an int of seconds, which is
//! none), when it is a positive decimal number. A call that came with `_TO` goes to each
//! attempt's provider with `_TO` set to the time the proxy waits for it, where that is less
//! ([`Codec::encode_within`](metaprotocol_core::Codec::encode_within)), as a string in the
//! rewritten attachments; `timeout`, which providers ignore, goes as it came.
//!
//! # Local replies and heartbeats
//!
//! A local reply is a Dubbo response with the request's id, a status chosen by kind, and, as
//! Java Dubbo writes for every status other than 20, a body of one string:
//! `"<kind>: <message>"` (e.g. `unauthorized: denied by rbac policy`). It is written in
//! Hessian2, the serialization nearly every Dubbo client reads, so a client of another
//! serialization still reads the message; to a call in fastjson2 it is written in fastjson2 (a
//! 4-byte length and a JSONB string), as a Java provider answers in the call's serialization:
//! a Dubbo 3 consumer built with fastjson2 alone fails on a Hessian2 answer without reading it.
//!
//! | [`LocalReplyKind`](metaprotocol_core::LocalReplyKind) | status | why |
//! |---|---|---|
//! | `RouteNotFound` | 60 `SERVICE_NOT_FOUND` | no provider exports the service |
//! | `OverLimit`, `Unavailable` | 100 `SERVER_THREADPOOL_EXHAUSTED` | Dubbo's "the server takes no more work now": clients fail over |
//! | `Timeout` | 31 `SERVER_TIMEOUT` | clients raise their timeout exception |
//! | `BadRequest` | 40 `BAD_REQUEST` | |
//! | `Unauthorized` | 40 `BAD_REQUEST` | Dubbo has no permission status; the request is refused, and the message says `unauthorized` |
//! | `NoHealthyUpstream`, `UpstreamReset`, `UpstreamConnectFailure`, `FaultAbort`, `Internal` | 80 `SERVER_ERROR` | a failure of the serving side, not of the service's code (70) |
//!
//! Heartbeats are answered with an event response (flag `0x20` | serialization id), status 20
//! and a null body, byte for byte what providers send. One-way heartbeats are answered too:
//! Java providers answer only two-way ones, but dubbo-py sends its heartbeat one-way and waits
//! for the answer that its own and Node providers send, and Java clients drop heartbeat answers
//! whatever they asked. An event request whose data is neither null nor `R` (in Hessian2 or
//! fastjson2) is not answered, two-way or not, as Java Dubbo answers none: its heartbeat
//! handler answers an event only when its data is null, and its exchange handler acts on `R`
//! alone. The codec passes such a frame over as it reads it, from a client or a provider, so
//! that it is no heartbeat the engine answered (`downstream_heartbeats_total`), and counts it
//! in [`DubboCodecFactory`]'s `events_unanswered` counter
//! (`codec_events_unanswered_total{protocol="dubbo"}`, over the whole process). Heartbeat replies with status 0 (dubbo-py's) count as healthy, and so do responses
//! to one-way requests, which some providers send: they are decoded like any response.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use metaprotocol_core::{Codec, MessageKind, DEFAULT_MAX_FRAME_BYTES};
//! use metaprotocol_dubbo::DubboCodec;
//!
//! let body: &[u8] = b"\x052.0.2\x0cdemo.Greeter\x051.0.0\x08sayHello\x12Ljava/lang/String;\
//!                     \x02w1H\x06tenant\x02t1Z";
//! let mut stream = BytesMut::from(&[0xda, 0xbb, 0xc2, 20, 0, 0, 0, 0, 0, 0, 0, 7][..]);
//! stream.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
//! stream.extend_from_slice(body);
//!
//! let mut codec = DubboCodec::new(DEFAULT_MAX_FRAME_BYTES);
//! let message = codec.decode(&mut stream)?.ok_or("incomplete frame")?;
//! assert_eq!(message.kind, MessageKind::Request);
//! assert_eq!(message.request_id, 7);
//! let text = |key| message.metadata.get(key);
//! assert_eq!(text("interface"), Some("demo.Greeter"));
//! assert_eq!(text("method"), Some("sayHello"));
//! assert_eq!(text("tenant"), Some("t1"));
//! assert!(stream.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attachments;
pub mod build;
mod codec;
mod deadline;
mod factory;
mod fastjson2;
mod header;
mod hessian;
mod layout;
mod nested;
mod reply;
mod request;
mod response;
mod serialization;
pub mod status;

use metaprotocol_core::CodecRegistry;

pub use codec::{DubboCodec, READS_RESPONSE_ATTACHMENTS};
pub use factory::DubboCodecFactory;
pub use request::reads_response_attachments;

/// The protocol's registered name.
pub const PROTOCOL: &str = "dubbo";

/// Registers the Dubbo codec under [`PROTOCOL`].
pub fn register(registry: &mut CodecRegistry) {
    registry.register(PROTOCOL, DubboCodecFactory::from_options);
}
