//! Line-delimited JSON-RPC 2.0 for metaprotocol-rs: every request and response is one JSON
//! object on one line, as JSON-RPC over TCP is commonly spoken.
//!
//! This crate is the proof that a new protocol is one crate: it is written against the public
//! API of `metaprotocol-core` only ([`Codec`], [`CodecFactory`],
//! [`Message`](metaprotocol_core::Message), [`LocalReply`](metaprotocol_core::LocalReply)), and
//! the engine routes, balances, retries and filters it like any other protocol. [`register`] adds it to a registry as `jsonrpc`.
//!
//! # What is supported
//!
//! | JSON-RPC | the proxy |
//! |---|---|
//! | a request (`method`, `params`, `id`) | a two-way call; `method` is its metadata, for routes to match, and so is `id` ([`CALL_ID`]), which access logs show as its `%REQUEST_ID%` |
//! | a notification (no `id`) | a one-way call |
//! | ids: numbers, strings, `null` | kept as written: the client's answer carries its own id, byte for byte. Upstream, a call's id is the proxy's own string `"<n>:<hex>"`: the engine's request id and the client's id, hex-encoded, which the server echoes back, so the codec keeps no state |
//! | other ids (objects, arrays, booleans) | answered with error -32600 (id `null`), not proxied: JSON-RPC 2.0 allows none |
//! | `params` other than an array or an object (`null` included) | answered with error -32600 (id `null`), not proxied: JSON-RPC 2.0 requires a structured value, and a server answers others with id `null`, which names no call |
//! | a response with `result` | status `Ok` |
//! | a response with `error` | `ServerError` for the codes JSON-RPC reserves (-32768 to -32000), `ApplicationError` for the service's own |
//! | a member named as one of JSON-RPC's in another case (`METHOD`, `Id`, or `paramſ`: Go folds `ſ`, U+017F, to `s` and the Kelvin sign to `k`), or one of JSON-RPC's written twice | answered with error -32600 (id `null`), not proxied: Go's encoding/json, which many servers read with, takes such a name for the member, and of two the last, so the server would run another method than the one routed and authorized, answer with an id of the client's choosing, or take params the proxy did not check |
//! | a response from a client (the proxy sends clients no calls) | answered with error -32600 (id `null`), as a server answers an object without `method`; the connection stays open |
//! | a batch (an array) of calls | each call proxied as a lone call is: routed, filtered and authorized on its own (a batch is no way around a route or an `rbac` rule), and sent upstream as a line of its own. Their answers, the proxy's own errors included, go back as one array once the last is in, in the order they came (JSON-RPC 2.0 allows any); a batch of notifications gets none. An element that is no call gets error -32600 (id `null`) in its place. Access logs show each call with its own id ([`CALL_ID`]), as a lone call's, and a notification with none, and each answer with its own bytes in the array (`bytes_sent`; the last with the brackets, commas and line's end too) |
//! | an empty batch, or one of more calls than the listener's `max_batch_calls` ([`DEFAULT_MAX_BATCH_CALLS`] unless set; 0 takes none) | answered with one error -32600 (id `null`), none of it run: the proxy holds none of its calls, and answering each element would send back as much as the client cares to send (-32700 if it is not JSON) |
//! | the answers a connection's unfinished batches wait with | held to the listener's `max_frame_bytes` in all, and to 8 MiB whatever it is (half the engine's limit on a connection's unsent answers, past which it deems the client gone and disconnects it: a batch's line is written at once): an answer that would take them over is not held, and its call gets error -32603 (`internal`) in its place. The engine counts those held as the connection's unsent answers ([`Codec::held_answer_bytes`]): against the proxy's `max_buffered_bytes`, and the 1 MiB past which it reads no more from the client until they are sent |
//! | a line that is not JSON (UTF-8 text included: a string the codec skips is checked too) | answered with error -32700 (id `null`); the connection stays open |
//! | a line longer than the listener's `max_frame_bytes` | passed over as it arrives, never held, and answered with error -32600 (id `null`: it went by unread); the connection stays open |
//! | a call whose line, with the proxy's id (the client's hex-encoded, twice as long), is longer than the cluster's `max_frame_bytes` | not sent: its client gets error -32600, and the upstream connection is spared an answer too long to read, which would close it under every call in flight there; a notification longer than that limit (a listener may take longer lines) is not sent either |
//! | an answer longer than the cluster's `max_frame_bytes` | passed over as it arrives, never held: its call gets error -32603 (`internal`), and the upstream connection stays open for the calls behind it |
//! | an answer whose id is not the proxy's (`null`: a server's -32600 or -32700 for a call it could not read, as JSON-RPC 2.0 prescribes and jsonrpcserver sends for a call its schema refuses, notifications included) | answers no call: dropped and counted in `upstream_unmatched_responses_total`; the upstream connection stays open for the calls on it (a call it may have answered gets its timeout) |
//! | an answer whose id does not spell, in hex, an id a client could have sent (JSON on one line) | not forwarded: its client gets error -32603 (`internal`) instead, and the upstream connection stays open |
//! | a call or notification a server sends the proxy (JSON-RPC lets either side call the other) | not proxied, as upstream connections are shared by many clients: a call is answered with error -32601 (method not found) on its connection, a notification dropped; both counted in `metaprotocol_codec_server_calls_total{protocol="jsonrpc"}`, and the calls in flight on the connection go on |
//! | header mutations | JSON-RPC has no headers: the frame is forwarded unchanged and counted in `metaprotocol_codec_mutations_not_applied_total{protocol="jsonrpc"}`. A route's templates so reach no frame, and their `%request_id%` is the codec's own request id (0, or a batch's), not the call's id as access logs show it: that is `%metadata(id)%` ([`CALL_ID`]) |
//!
//! Local replies are JSON-RPC errors: `route_not_found` is -32601 (method not found),
//! `bad_request` -32600 (or -32700 for a parse error), `timeout` -32001, `unavailable` and
//! `no_healthy_upstream` -32002, `over_limit` -32003, `unauthorized` -32004, `internal` (an
//! answer over the line limit, say) -32603 (internal error), anything else -32000; the message
//! is `"<kind>: <text>"`.
//!
//! ```
//! use bytes::BytesMut;
//! use metaprotocol_core::{Codec, CodecOptions, CodecRegistry, EncodeParams, MessageKind, Mutation, Side, WireVariant};
//!
//! let mut registry = CodecRegistry::new();
//! metaprotocol_jsonrpc::register(&mut registry);
//! let factory = registry.build("jsonrpc", &CodecOptions::default()).ok_or("not registered")??;
//!
//! // A client's call, as the proxy reads it ...
//! let mut downstream = factory.new_codec(Side::Downstream, WireVariant::DEFAULT);
//! let mut read = BytesMut::from(&b"{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":[1,2],\"id\":\"a-1\"}\n"[..]);
//! let call = downstream.decode(&mut read)?.ok_or("incomplete")?;
//! assert_eq!(call.kind, MessageKind::Request);
//! assert_eq!(call.metadata.get("method"), Some("add"));
//!
//! // ... and as it sends it upstream, with its own id.
//! let mut upstream = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
//! let mut wire = BytesMut::new();
//! let params = EncodeParams { request_id: 7, variant: WireVariant::DEFAULT, mutation: &Mutation::new() };
//! upstream.encode(&call, &params, &mut wire)?;
//! assert_eq!(&wire[..], &b"{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":[1,2],\"id\":\"7:22612d3122\"}\n"[..]);
//!
//! // The server's answer goes back to the client with the client's id.
//! let mut answer = BytesMut::from(&b"{\"jsonrpc\":\"2.0\",\"result\":3,\"id\":\"7:22612d3122\"}\n"[..]);
//! let response = upstream.decode(&mut answer)?.ok_or("incomplete")?;
//! let mut back = BytesMut::new();
//! let params = EncodeParams { request_id: call.request_id, ..params };
//! downstream.encode(&response, &params, &mut back)?;
//! assert_eq!(&back[..], &b"{\"jsonrpc\":\"2.0\",\"result\":3,\"id\":\"a-1\"}\n"[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
mod codec;
mod line;
mod skim;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metaprotocol_core::{
    Codec, CodecCounter, CodecFactory, CodecOptions, CodecRegistry, OptionsError, Side, WireVariant,
};

pub use codec::JsonRpcCodec;

/// The protocol's registered name.
pub const PROTOCOL: &str = "jsonrpc";

/// Registers the codec under [`PROTOCOL`]; its options are `max_frame_bytes` (the longest
/// line) and, a listener's only, [`MAX_BATCH_CALLS`].
pub fn register(registry: &mut CodecRegistry) {
    registry.register(PROTOCOL, |options| {
        JsonRpcCodecFactory::from_options(options)
            .map(|factory| Arc::new(factory) as Arc<dyn CodecFactory>)
    });
}

/// The metadata key of a call's id as its client wrote it (a string's without its quotes); a
/// notification has none. Access logs show it as the call's `%REQUEST_ID%`
/// ([`CodecFactory::call_id_key`]): the engine's request id of a client's call is the codec's
/// own (0, or a batch's).
pub const CALL_ID: &str = "id";

/// The listener's option that sets the most calls a client's batch may hold (at most 4096):
/// a batch of more is answered with one error -32600.
pub const MAX_BATCH_CALLS: &str = "max_batch_calls";

/// The most calls a client's batch may hold unless [`MAX_BATCH_CALLS`] says otherwise.
pub const DEFAULT_MAX_BATCH_CALLS: usize = 32;

/// The configured protocol: makes a [`JsonRpcCodec`] per connection and direction.
#[derive(Debug)]
pub struct JsonRpcCodecFactory {
    max_line: usize,
    max_batch_calls: usize,
    counters: Arc<Counters>,
}

/// What the codecs of one factory count, shown as its [`CodecCounter`]s.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Frames forwarded without the header edits asked for.
    pub(crate) mutations_ignored: AtomicU64,
    /// Calls and notifications servers sent the proxy.
    pub(crate) server_calls: AtomicU64,
}

impl JsonRpcCodecFactory {
    /// A factory accepting lines of up to `max_line` bytes, and batches of up to
    /// [`DEFAULT_MAX_BATCH_CALLS`] calls.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            max_batch_calls: DEFAULT_MAX_BATCH_CALLS,
            counters: Arc::default(),
        }
    }

    /// The same, taking batches of up to `max_batch_calls` calls (0: none; at most 4096).
    pub fn with_max_batch_calls(self, max_batch_calls: usize) -> Self {
        Self {
            max_batch_calls: max_batch_calls.min(batch::MAX_CALLS_LIMIT),
            ..self
        }
    }

    /// A factory from a listener's or cluster's codec options: [`MAX_BATCH_CALLS`], an integer
    /// from 0 (no batches) to 4096, is a listener's only (servers are sent no batches).
    pub fn from_options(options: &CodecOptions) -> Result<Self, OptionsError> {
        options.allow_only(&[MAX_BATCH_CALLS])?;
        let factory = Self::new(options.max_frame_bytes);
        let Some(text) = options.get(MAX_BATCH_CALLS) else {
            return Ok(factory);
        };
        if options.side != Some(Side::Downstream) {
            return Err(OptionsError::new(
                MAX_BATCH_CALLS,
                "a listener's option only: the proxy reads batches from clients and sends \
                 servers none",
            ));
        }
        match text.parse::<usize>() {
            Ok(calls) if calls <= batch::MAX_CALLS_LIMIT => Ok(factory.with_max_batch_calls(calls)),
            _ => Err(OptionsError::new(
                MAX_BATCH_CALLS,
                format!(
                    "must be an integer from 0 to {}, not `{text}`",
                    batch::MAX_CALLS_LIMIT
                ),
            )),
        }
    }
}

impl CodecFactory for JsonRpcCodecFactory {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn new_codec(&self, side: Side, _variant: WireVariant) -> Box<dyn Codec> {
        Box::new(JsonRpcCodec::new(
            side,
            self.max_line,
            self.max_batch_calls,
            self.counters.clone(),
        ))
    }

    fn call_id_key(&self) -> Option<&'static str> {
        Some(CALL_ID)
    }

    fn counters(&self) -> Vec<CodecCounter> {
        vec![
            CodecCounter {
                name: "mutations_not_applied",
                help: "Frames forwarded without the header edits asked for (JSON-RPC has no headers)",
                value: self.counters.mutations_ignored.load(Ordering::Relaxed),
            },
            CodecCounter {
                name: "server_calls",
                help: "Calls and notifications servers sent the proxy (calls answered with error -32601, notifications dropped)",
                value: self.counters.server_calls.load(Ordering::Relaxed),
            },
        ]
    }
}
