//! The codec contract: how a protocol turns bytes into [`Message`]s and back.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::watched_file::{FileCheck, WatchedFile};
use crate::{CodecError, LocalReply, Message, Mutation, OptionsError};

/// The default cap on one frame: a length field can never make the proxy buffer more.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// The most bytes of answers a client connection may have waiting to be written: past it the
/// engine deems the client gone (it reads none of them) and closes the connection. A codec that
/// holds answers to write them at once (a JSON-RPC batch's) holds no more than half of it, so
/// that what it writes at once leaves the other half to the answers already waiting.
pub const MAX_UNSENT_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Which end of a proxied exchange a codec instance serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Faces clients: decodes requests, encodes responses and local replies.
    Downstream,
    /// Faces servers: encodes requests, decodes responses.
    Upstream,
}

/// One encoding within a protocol, chosen by the codec (for Thrift: transport x protocol).
///
/// The engine treats it as an opaque tag: upstream connections are pooled per
/// `(endpoint, variant)`, so frames are forwarded without translation whenever the codec allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireVariant(pub u16);

impl WireVariant {
    /// The variant of protocols that have only one encoding.
    pub const DEFAULT: Self = Self(0);
}

/// How requests share an upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// Many requests in flight per connection, told apart by request id; the engine rewrites ids
    /// so that clients whose ids collide can share a connection.
    Multiplex,
    /// One request in flight per connection (protocols whose ids are not unique per
    /// connection, or servers that answer out of order without ids).
    Exclusive,
}

/// Where and how [`Codec::encode`] writes a message.
#[derive(Clone, Copy, Debug)]
pub struct EncodeParams<'a> {
    /// The request id to write: a fresh upstream id for requests, the client's own id for
    /// responses. Codecs patch it in place when the frame's encoding allows.
    pub request_id: u64,
    /// The encoding to write in; a codec that cannot translate from the message's own
    /// [`Message::variant`] returns [`CodecError::Unsupported`].
    pub variant: WireVariant,
    /// Header edits; empty for a pure passthrough.
    pub mutation: &'a Mutation,
}

/// A protocol's frame codec for one connection and one direction. Sans-IO: it never touches a
/// socket, never blocks, never spawns.
///
/// Two instances serve each connection, one reading and one writing, created by the protocol's
/// [`CodecFactory`]; codecs may keep per-connection state (a detected encoding, say).
pub trait Codec: Send {
    /// Decodes one frame from the front of `src`.
    ///
    /// Returns `Ok(Some(message))` and removes exactly that frame's bytes from `src` (split off
    /// and frozen, not copied); `Ok(None)` when `src` does not yet hold a whole frame, leaving
    /// `src` unchanged (it may `reserve` what the frame needs, up to the frame size cap).
    /// Any error means the stream cannot be trusted any more; the engine closes the connection.
    /// A length field larger than the configured maximum is [`CodecError::FrameTooLarge`] as soon
    /// as the header is read, before the body arrives.
    ///
    /// A frame that holds many messages (a JSON-RPC batch) is handed over a message a call: the
    /// engine calls `decode` again as long as `src` holds a byte, so such a codec leaves at
    /// least one of the frame's bytes in `src` until its last message is out.
    ///
    /// A [`Message`] is a few hundred bytes: build it where it is returned (better, in the
    /// engine's message: [`Codec::decode_into`]) and fill it through `&mut` (its metadata in
    /// place), rather than in helpers that return it up by value, each of which may copy it
    /// (Thrift's codec did: five copies a message, 7.5% of the instructions of a proxied call).
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError>;

    /// Decodes one frame from the front of `src` into `slot`, as [`Codec::decode`] does: true
    /// when a frame was decoded (`slot` is then its message, whatever it held before), false
    /// when `src` does not yet hold a whole frame. After false or an error, `slot` holds some
    /// message the engine does not look at.
    ///
    /// The engine decodes into allocations it reuses, so a message built in `slot`
    /// ([`Message::reset`], then filled through `&mut`) is never copied whole on its way to
    /// the request's walk: about 300 instructions a proxied call of the engine's 10,000 at 64
    /// in flight. The provided method moves what [`Codec::decode`] returns into `slot`; a codec
    /// that overrides it may implement `decode` with [`decode_new`] (which calls this method:
    /// with this one left to its default, each would call the other).
    fn decode_into(&mut self, src: &mut BytesMut, slot: &mut Message) -> Result<bool, CodecError> {
        match self.decode(src)? {
            Some(message) => {
                *slot = message;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Appends `message` (decoded by a codec of this protocol) to `dst` with the id, encoding and
    /// header edits in `params`.
    ///
    /// With an empty mutation and the message's own variant this writes the original frame,
    /// patching only the request id. With a mutation, only the header section is rebuilt; the
    /// body is copied as it came. On error nothing is appended.
    fn encode(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError>;

    /// [`Codec::encode`], except that the end of `message.frame` that goes out unchanged may be
    /// left out of `dst`: returns how many of the frame's last bytes are to follow what was
    /// appended, for the engine to write from where they were read, without copying them (a
    /// vectored write). 0 means `dst` got the whole encoded message, as from `encode`.
    ///
    /// The engine calls this for large frames only. The default appends everything; a codec
    /// whose passthrough patches only a frame's head (an id in a fixed header) overrides it to
    /// append that head alone. On error nothing is appended.
    fn encode_sharing(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        self.encode(message, params, dst).map(|()| 0)
    }

    /// [`Codec::encode`] (with `share`, [`Codec::encode_sharing`], whose result this returns;
    /// without, 0) of a request that the proxy waits for at most `wait`: less than its caller
    /// gave it ([`Message::timeout`], counted from when it came). A protocol whose requests carry their deadline writes `wait` in place of
    /// the caller's (as the protocol's own clients write what is left of a call's deadline into
    /// each attempt), so that the server does not work on, for a caller that gave up, an
    /// answer no one waits for; the others encode as they do, the default.
    ///
    /// The engine calls it only for a request whose caller sent a deadline, when the attempt's
    /// is not that deadline as sent (a route timeout or a per-try timeout shorter than it, a
    /// retry, part of it used up before the request was routed); a first attempt under the
    /// caller's own deadline, and every request whose caller sent none (it did not ask for its
    /// servers to be told one), go through [`Codec::encode`], verbatim, at no cost. On error
    /// nothing is appended.
    fn encode_within(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        wait: Duration,
        share: bool,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        let _ = wait;
        self.encode_as_sent(message, params, share, dst)
    }

    /// Encodes `message` telling its server no deadline of the proxy's own, as
    /// [`Codec::encode_within`] does by default: through [`Codec::encode_sharing`] when
    /// `share`, else through [`Codec::encode`] (0 bytes shared). For a codec's
    /// `encode_within` whose message carries nothing to tell.
    fn encode_as_sent(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        share: bool,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        if share {
            self.encode_sharing(message, params, dst)
        } else {
            self.encode(message, params, dst).map(|()| 0)
        }
    }

    /// Appends the protocol's error response to `request`, in the request's own encoding and with
    /// its id, describing `reply` in the protocol's terms. Never called for one-way requests.
    fn encode_local_reply(
        &mut self,
        request: &Message,
        reply: &LocalReply,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError>;

    /// The bytes of the client's answer that the last [`Codec::encode`] or
    /// [`Codec::encode_local_reply`] stands for, when they are not what it appended: a codec
    /// that gathers many calls' answers into one frame (a JSON-RPC batch's array) appends
    /// nothing until the last is in, then the whole frame, and says here each answer's share of
    /// it (shares that add up to the frame). The engine reports it as the call's `bytes_sent`,
    /// asking right after it wrote a two-way call's answer. `None`, the default: what was
    /// appended.
    fn answer_len(&self) -> Option<usize> {
        None
    }

    /// The bytes of answers the codec holds, appended nowhere yet, to write later in one frame
    /// (a JSON-RPC batch's answers, until its last is in). The engine counts them as its
    /// client's unsent answers (the proxy-wide `max_buffered_bytes`, and the bytes past which
    /// it stops reading from the client), asking only after an answer for which
    /// [`Codec::answer_len`] said `Some`: only a codec that gathers answers holds any. 0, the
    /// default.
    fn held_answer_bytes(&self) -> usize {
        0
    }

    /// Appends the protocol's "going away" notice, which the engine sends once on each client
    /// connection when it starts draining it, so that well-behaved clients send new calls
    /// elsewhere before the connection closes (Dubbo's READONLY event). Protocols without one
    /// append nothing, the default.
    fn encode_goaway(&mut self, dst: &mut BytesMut) -> Result<(), CodecError> {
        let _ = dst;
        Ok(())
    }

    /// Appends the answer to a [`crate::MessageKind::Heartbeat`]. Heartbeats that expect no
    /// answer (one-way heartbeats) append nothing.
    fn encode_heartbeat_reply(
        &mut self,
        heartbeat: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError>;

    /// On the upstream side, after [`Codec::decode`] refused the frame at the front of `src` as
    /// [`CodecError::FrameTooLarge`]: the frame's whole length and the request it answers, read
    /// from its header, so that the engine can pass over the frame and fail that one request
    /// rather than close a connection other clients' requests share (an answer may be larger
    /// than the call: an echo of a call at the limit). `None`, the default, when the protocol
    /// cannot tell (the frame does not answer a request, or neither its framing nor
    /// [`Codec::pass_over`] can give its length): the connection closes.
    ///
    /// The downstream side asks it too, of a request too large to decode, and looks only for
    /// [`FrameHead::Unsized`] (see [`Codec::pass_over`]); anything else closes the connection.
    fn oversized_response(&self, src: &[u8]) -> Option<FrameHead> {
        let _ = src;
        None
    }

    /// On the upstream side, after [`Codec::oversized_response`] said [`FrameHead::Unsized`]:
    /// takes the bytes of that frame read so far, at the front of `src`, and says whether the
    /// frame ends among them and, once it has, the request it answered. The engine drops what
    /// it passed and calls again with each read until the frame ends, so the codec holds none
    /// of it, only what it needs to tell the request (which may come at the frame's end: a
    /// JSON object's `id`). `None`, the default, when the codec cannot: the connection closes.
    ///
    /// On the downstream side, a codec whose `oversized_response` says [`FrameHead::Unsized`]
    /// has a request too large to decode passed over the same way; once it ended, the engine
    /// calls `decode` again, even with no byte left, and the codec gives the request it makes
    /// of the one passed over (with a `reject_reason`, answered with the protocol's error), so
    /// that its client gets an answer rather than a closed connection.
    fn pass_over(&mut self, src: &[u8]) -> Option<PassedOver> {
        let _ = src;
        None
    }
}

/// What [`Codec::pass_over`] found in the bytes of a frame too large to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassedOver {
    /// They all belong to the frame, which goes on.
    More,
    /// The frame ends after the first `len` of them; it answered `request_id` (the id the
    /// request was sent upstream with), or an unknown request when `None`.
    End {
        /// The bytes of those given that end the frame.
        len: usize,
        /// The id the request was sent upstream with, if the frame said.
        request_id: Option<u64>,
    },
}

/// The head of a response frame too large to decode: see [`Codec::oversized_response`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameHead {
    /// The frame takes `len` bytes in all (its header included) and answers `request_id`.
    Response {
        /// The id the request was sent upstream with.
        request_id: u64,
        /// The whole frame's length.
        len: u64,
    },
    /// The bytes read do not yet reach what tells the request (the engine reads on, up to
    /// [`MAX_FRAME_HEAD`] bytes).
    Incomplete,
    /// The frame's length is not in its head (a line ends at its newline), nor perhaps the
    /// request it answers: the engine hands the frame's bytes to [`Codec::pass_over`] as they
    /// arrive, and drops them.
    Unsized,
}

/// The most bytes of a too-large response the engine holds while its codec looks for the
/// request it answers ([`FrameHead::Incomplete`]); past it, the connection closes.
pub const MAX_FRAME_HEAD: usize = 64 << 10;

/// [`Codec::decode`] for a codec that builds its messages in [`Codec::decode_into`]: decodes into
/// a new message.
pub fn decode_new<C: Codec + ?Sized>(
    codec: &mut C,
    src: &mut BytesMut,
) -> Result<Option<Message>, CodecError> {
    let mut message = Message::empty();
    Ok(codec.decode_into(src, &mut message)?.then_some(message))
}

/// For codecs that implement [`Codec::encode_sharing`] beside [`Codec::encode`] on one path:
/// appends `frame` up to `head` when `share` is true (the rest is to follow unchanged), or all
/// of it when not, and returns the length of what was left out.
pub fn append_frame(frame: &[u8], head: usize, share: bool, dst: &mut BytesMut) -> usize {
    let head = if share {
        head.min(frame.len())
    } else {
        frame.len()
    };
    dst.extend_from_slice(frame.get(..head).unwrap_or_default());
    frame.len() - head
}

/// What [`Codec::encode_sharing`] writes, made whole: the bytes it appends, then the end of
/// the frame it leaves out. For a codec whose `encode_sharing` is right this is exactly what
/// [`Codec::encode`] appends, which is what codec tests compare it with.
pub fn encode_sharing_whole(
    codec: &mut dyn Codec,
    message: &Message,
    params: &EncodeParams<'_>,
) -> Result<Vec<u8>, CodecError> {
    let mut head = BytesMut::new();
    let shared = codec.encode_sharing(message, params, &mut head)?;
    let tail = message
        .frame
        .len()
        .checked_sub(shared)
        .and_then(|at| message.frame.get(at..))
        .ok_or(CodecError::Encode(
            "encode_sharing left out more bytes than the frame holds".into(),
        ))?;
    Ok([&head[..], tail].concat())
}

/// What an active health check asks of an endpoint, beyond opening a connection to it (a
/// cluster's `health_check.probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Probe<'a> {
    /// The protocol's own liveness message (Dubbo's heartbeat event).
    Heartbeat,
    /// A call of this method with no arguments. How the name reads is the protocol's: a Thrift
    /// method name (`Service:method` through a multiplexed server), a bRPC `service.method`.
    Method(&'a str),
}

/// A running count a codec keeps of something worth watching that is not an error (a mutation
/// the frame's encoding could not carry, headers lost in translation ...). The engine exports
/// each as `metaprotocol_codec_<name>_total{protocol="..."}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecCounter {
    /// A `snake_case` metric name, unique within the protocol.
    pub name: &'static str,
    /// What it counts, for the metric's help text.
    pub help: &'static str,
    /// The count so far.
    pub value: u64,
}

/// A configured protocol: creates [`Codec`]s and declares how connections may be shared.
///
/// Built once per listener or cluster by the constructor registered in a [`CodecRegistry`].
pub trait CodecFactory: Send + Sync + 'static {
    /// The protocol's registered name (`dubbo`, `thrift`, `brpc` ...).
    fn protocol(&self) -> &'static str;

    /// A new codec for one connection and direction. `variant` is the encoding an upstream
    /// connection speaks (see [`CodecFactory::upstream_variant`]); downstream codecs receive
    /// [`WireVariant::DEFAULT`] and detect or are configured with their clients' encoding.
    fn new_codec(&self, side: Side, variant: WireVariant) -> Box<dyn Codec>;

    /// The encoding in which `request` should travel upstream. The default forwards each
    /// request in its own encoding.
    fn upstream_variant(&self, request: &Message) -> WireVariant {
        request.variant
    }

    /// How upstream connections are shared.
    fn pool_mode(&self) -> PoolMode {
        PoolMode::Multiplex
    }

    /// The largest request id the protocol can carry; the engine allocates upstream ids in
    /// `1..=max_request_id()`.
    fn max_request_id(&self) -> u64 {
        u64::MAX
    }

    /// The metadata key under which this protocol's downstream decoder puts a call's own id,
    /// for a protocol whose [`Message::request_id`] is no id of the client's (JSON-RPC's ids
    /// are numbers or strings, and a notification has none). Access logs show that key's value
    /// as the call's `%REQUEST_ID%`, and none for a call without it. Route mutation templates do
    /// not: their `%request_id%` stays the request id, since a frame a mutation edits carries
    /// that id, and the call's own is `%metadata(KEY)%` (JSON-RPC applies no mutation at all).
    /// `None`, the default: the
    /// request id is the client's own.
    fn call_id_key(&self) -> Option<&'static str> {
        None
    }

    /// The request an active health check sends for `probe`, or `None` when the protocol has no
    /// such request (the default; the engine then refuses the health check's config).
    ///
    /// The request is a two-way [`crate::MessageKind::Request`] or a
    /// [`crate::MessageKind::Heartbeat`] expecting an answer, shaped as this protocol's codecs
    /// decode it (so that [`Codec::encode`] writes it with a fresh request id, in the encoding
    /// [`CodecFactory::upstream_variant`] picks for it). Built once per configured check and
    /// sent many times. Any answer an upstream codec decodes for it, a response (an error
    /// response included) or a heartbeat reply, means the endpoint is alive, unless it refuses
    /// the proxy's credentials ([`CodecFactory::credentials_refused`]).
    fn probe_request(&self, probe: Probe<'_>) -> Option<Message> {
        let _ = probe;
        None
    }

    /// True when `answer`, decoded by an upstream codec of this protocol, says that the server
    /// refused the credentials the proxy sent for the connection (bRPC's `ERPCAUTH`): the
    /// endpoint serves none of the proxy's calls however alive it is, so a health check's probe
    /// so answered fails. The default: no answer says so.
    fn credentials_refused(&self, answer: &Message) -> bool {
        let _ = answer;
        false
    }

    /// True when this protocol's servers may refuse the credentials of a connection's first
    /// request by closing the connection without a word (bRPC servers before brpc 1.11, which
    /// had no `ERPCAUTH` answer): the engine then takes an upstream connection closed before
    /// it answered anything written to it for such a refusal, as it takes an answer
    /// [`CodecFactory::credentials_refused`] tells, and backs off opening the next. The
    /// default: false.
    fn refuses_credentials_by_closing(&self) -> bool {
        false
    }

    /// The protocol's counters, read at every metrics scrape. The default has none.
    fn counters(&self) -> Vec<CodecCounter> {
        Vec::new()
    }

    /// The files this factory's codecs take contents from ([`CodecOptions::watched_file`]),
    /// which the engine watches while the factory lives, re-reading each when it changes on
    /// disk. The default has none.
    fn watched_files(&self) -> Vec<WatchedFile> {
        Vec::new()
    }
}

impl fmt::Debug for dyn CodecFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodecFactory")
            .field("protocol", &self.protocol())
            .finish()
    }
}

/// The codec options of a listener or cluster (`codec: { ... }` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecOptions {
    /// The largest frame a codec accepts; see [`DEFAULT_MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// Whose options these are: a listener's ([`Side::Downstream`]) or a cluster's
    /// ([`Side::Upstream`]); `None` when not said (options built by hand). An option that means
    /// something on one side only is refused on the other, and when the side is not said.
    pub side: Option<Side>,
    params: BTreeMap<String, OptionValue>,
}

/// A protocol-specific option's value, as the config wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OptionValue {
    text: String,
    /// False for a number or a boolean (kept in its spelling): an option that must be a string
    /// refuses it rather than take `0123` as `123`.
    quoted: bool,
}

impl Default for CodecOptions {
    fn default() -> Self {
        Self::with_max_frame_bytes(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl CodecOptions {
    /// Default options with `max_frame_bytes`.
    pub fn with_max_frame_bytes(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            side: None,
            params: BTreeMap::new(),
        }
    }

    /// Sets the protocol-specific option `key` (thrift's `transport`, say) to the string
    /// `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.set(key.into(), value.into(), true);
    }

    /// Sets the protocol-specific option `key` to a number or boolean, written `spelling` (`8`,
    /// `true`): [`Self::get`] reads it as that text, [`Self::get_string`] refuses it.
    pub fn insert_scalar(&mut self, key: impl Into<String>, spelling: impl Into<String>) {
        self.set(key.into(), spelling.into(), false);
    }

    fn set(&mut self, key: String, text: String, quoted: bool) {
        self.params.insert(key, OptionValue { text, quoted });
    }

    /// The protocol-specific option `key`, as text whatever its type.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(|v| v.text.as_str())
    }

    /// The protocol-specific option `key`, which must be a string: a number or a boolean is an
    /// error naming `key`.
    pub fn get_string(&self, key: &str) -> Result<Option<&str>, OptionsError> {
        match self.params.get(key) {
            None => Ok(None),
            Some(value) if value.quoted => Ok(Some(&value.text)),
            Some(_) => Err(OptionsError::new(
                key,
                "must be a string (quote a value that looks like a number or a boolean)",
            )),
        }
    }

    /// The file named by the protocol-specific option `key` (a string: a path), read now and
    /// checked by `check`, which gives what is kept of its contents; an error naming `key` if
    /// it cannot be read or fails the check. The factory hands it to the engine
    /// ([`CodecFactory::watched_files`]), which re-reads it when it changes on disk, so that
    /// rotating the file in place (rewritten, or replaced by rename) reaches the connections
    /// opened after: its codecs read [`WatchedFile::current`] as they are made. Name the option
    /// `*_file` (`authentication_data_file`): the engine then reads the file ahead of building
    /// the codec, off its async runtime (see [`ReadAhead`](crate::ReadAhead)), so that a file
    /// system that does not answer fails the update instead of stalling the runtime.
    pub fn watched_file(
        &self,
        key: &str,
        check: FileCheck,
    ) -> Result<Option<WatchedFile>, OptionsError> {
        let Some(path) = self.get_string(key)? else {
            return Ok(None);
        };
        WatchedFile::open(key, std::path::Path::new(path), check)
            .map(Some)
            .map_err(|reason| OptionsError::new(key, reason))
    }

    /// Every protocol-specific option, as text.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.text.as_str()))
    }

    /// Rejects any option not in `allowed`, so that a misspelt option is an error rather than
    /// silently ignored.
    pub fn allow_only(&self, allowed: &[&str]) -> Result<(), OptionsError> {
        match self.params.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(key) => Err(OptionsError::new(
                key.clone(),
                format!("unknown option; this codec takes max_frame_bytes and {allowed:?}"),
            )),
        }
    }
}

/// Builds a configured [`CodecFactory`] from options; registered under a protocol name.
pub type CodecConstructor =
    Arc<dyn Fn(&CodecOptions) -> Result<Arc<dyn CodecFactory>, OptionsError> + Send + Sync>;

/// The protocols an engine knows, by name.
#[derive(Clone, Default)]
pub struct CodecRegistry {
    constructors: BTreeMap<String, CodecConstructor>,
}

impl CodecRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `constructor` under `name`, replacing an earlier registration.
    pub fn register<F>(&mut self, name: impl Into<String>, constructor: F) -> &mut Self
    where
        F: Fn(&CodecOptions) -> Result<Arc<dyn CodecFactory>, OptionsError> + Send + Sync + 'static,
    {
        self.constructors.insert(name.into(), Arc::new(constructor));
        self
    }

    /// Builds the codec factory registered as `name` with `options`; `None` if no protocol of
    /// that name is registered.
    pub fn build(
        &self,
        name: &str,
        options: &CodecOptions,
    ) -> Option<Result<Arc<dyn CodecFactory>, OptionsError>> {
        self.constructors.get(name).map(|c| c(options))
    }

    /// The registered protocol names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.constructors.keys().map(String::as_str)
    }
}

impl fmt::Debug for CodecRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
