//! The baidu_std [`Codec`] and its [`CodecFactory`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use metaprotocol_core::{
    Codec, CodecError, CodecFactory, CodecOptions, EncodeParams, FileCheck, FrameHead, LocalReply,
    MAX_FRAME_HEAD, Message, OptionsError, Probe, ResponseStatus, Side, WatchedFile, WireVariant,
    decode_new,
};

use crate::correlation;
use crate::decode::decode_frame;
use crate::encode::{HopFields, encode_message};
use crate::header::{FrameHeader, HEADER_LEN};
use crate::meta::RpcMetaView;
use crate::reply::encode_local_reply;
use crate::reply::errno;
use crate::{PROTOCOL, keys};
use crate::{encode_frame, proto};

/// The largest frame the codec accepts whatever the options say: frame offsets are kept in
/// `u32`, and baidu_std's sizes are `u32` anyway.
const MAX_FRAME_CAP: usize = u32::MAX as usize;

/// A baidu_std codec for one connection and direction.
///
/// A [`Side::Downstream`] codec decodes requests (and a client's stray response as a
/// response, for the engine to ignore), an [`Side::Upstream`] codec decodes responses (every
/// frame, a request meta in it ignored, as brpc clients read them). Downstream, a message's
/// request id is its `correlation_id`; upstream it is the engine's id, which goes out as a
/// `correlation_id` of the length of the one it replaces (so that a forwarded frame is patched
/// in place, not rebuilt) and comes back as the id it was: an upstream codec encodes an id `n`
/// as `n + 2^(7(len-1))`, a varint of `len` bytes, and decodes such a varint back to `n`.
///
/// An upstream codec writes requests without the `authentication_data` their clients sent,
/// and with its own credentials ([`BrpcCodec::with_credentials`]) on the first request it
/// writes: brpc servers authenticate a connection by its first request. See the crate docs for
/// what is supported.
#[derive(Clone, Debug)]
pub struct BrpcCodec {
    side: Side,
    max_frame_bytes: usize,
    /// The `authentication_data` still to go on the connection's first request; taken once
    /// a request carrying it is written.
    credentials: Option<Bytes>,
}

impl BrpcCodec {
    /// A codec for `side` that refuses frames (header included) larger than `max_frame_bytes`,
    /// itself capped at `u32::MAX`.
    pub fn new(side: Side, max_frame_bytes: usize) -> Self {
        Self {
            side,
            max_frame_bytes: max_frame_bytes.min(MAX_FRAME_CAP),
            credentials: None,
        }
    }

    /// This codec, which, upstream, puts `credentials` as the `authentication_data` of the
    /// first request it writes (its connection's first), and of no other. A downstream codec
    /// writes no requests, and ignores them.
    pub fn with_credentials(mut self, credentials: Bytes) -> Self {
        if self.side == Side::Upstream {
            self.credentials = Some(credentials);
        }
        self
    }
}

impl Codec for BrpcCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        decode_new(self, src)
    }

    fn decode_into(&mut self, src: &mut BytesMut, slot: &mut Message) -> Result<bool, CodecError> {
        let Some(header) = FrameHeader::parse(src, self.max_frame_bytes)? else {
            return Ok(false);
        };
        let frame_len = header.frame_len();
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(false);
        }
        let frame = src.split_to(frame_len).freeze();
        decode_frame(slot, frame, header, self.side).map(|()| true)
    }

    fn encode(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        self.encode_sharing_if(message, params, false, None, dst)
            .map(drop)
    }

    /// A frame passing through changes up to its correlation id alone: the rest is left to
    /// follow it.
    fn encode_sharing(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        self.encode_sharing_if(message, params, true, None, dst)
    }

    /// A request whose caller sent a `timeout_ms` goes with the time the proxy waits for it
    /// in its place, where that is less, as brpc's clients write what is left of a call's
    /// deadline into each attempt: a brpc server's handlers, and its `timeout` concurrency
    /// limiter, then give up when the proxy does. Otherwise it goes as from [`Codec::encode`]:
    /// a caller that sent none (a brpc client sends none unless told to) did not ask for its
    /// servers to be told a deadline, and its requests keep the verbatim path.
    fn encode_within(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        wait: Duration,
        share: bool,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        let timeout_ms = told_timeout_ms(wait, message.timeout);
        self.encode_sharing_if(message, params, share, timeout_ms, dst)
    }

    fn encode_local_reply(
        &mut self,
        request: &Message,
        reply: &LocalReply,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        encode_local_reply(request, reply, dst)
    }

    /// baidu_std has no heartbeat frames, so there is never anything to answer.
    fn encode_heartbeat_reply(
        &mut self,
        _heartbeat: &Message,
        _dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        Ok(())
    }

    /// The header gives the frame's length, the meta the call: a response (every frame from a
    /// server, its request meta, if any, ignored, as [`Codec::decode`] reads it) names it by
    /// its `correlation_id`, read back to the engine's id as `decode` does. `Incomplete` until the whole meta is in; a meta that is
    /// not well-formed, or one over [`MAX_FRAME_HEAD`], tells nothing.
    fn oversized_response(&self, src: &[u8]) -> Option<FrameHead> {
        if self.side != Side::Upstream {
            return None;
        }
        let Some(header) = FrameHeader::parse(src, usize::MAX).ok()? else {
            return Some(FrameHead::Incomplete);
        };
        let meta_end = header.meta_end();
        if meta_end > MAX_FRAME_HEAD {
            return None;
        }
        let Some(meta) = src.get(HEADER_LEN..meta_end) else {
            return Some(FrameHead::Incomplete);
        };
        let view = RpcMetaView::parse(&Bytes::copy_from_slice(meta)).ok()?;
        Some(FrameHead::Response {
            request_id: correlation::from_wire(view.correlation_id.unwrap_or(0)),
            len: header.frame_len() as u64,
        })
    }
}

impl BrpcCodec {
    /// [`Codec::encode`], or with `share` [`Codec::encode_sharing`], a request upstream with
    /// `timeout_ms` in place of its caller's when given.
    fn encode_sharing_if(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        share: bool,
        timeout_ms: Option<i32>,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        if params.variant != WireVariant::DEFAULT || message.variant != WireVariant::DEFAULT {
            return Err(CodecError::Unsupported(Cow::Borrowed(
                "baidu_std has a single wire variant",
            )));
        }
        let start = dst.len();
        let shared = encode_message(
            message,
            params.request_id,
            self.side,
            params.mutation,
            HopFields {
                credentials: self.credentials.as_deref(),
                timeout_ms,
            },
            share,
            dst,
        )?;
        // A mutation (or a longer id) may take a request over the cluster's limit: refused
        // here rather than sent to a server that closes the connection every client shares on
        // it (brpc's own does, past its `max_body_size`). Responses go to their one client.
        let size = dst.len() - start + shared;
        if self.side == Side::Upstream && size > self.max_frame_bytes {
            dst.truncate(start);
            return Err(CodecError::Encode(Cow::Owned(format!(
                "the frame takes {size} bytes, over the frame limit of {}",
                self.max_frame_bytes
            ))));
        }
        // Written: the server authenticates the connection by them.
        self.credentials = None;
        Ok(shared)
    }
}

/// The `timeout_ms` a request goes with when the proxy waits `wait` for its answer: the wait in
/// whole milliseconds (at least 1; at most `i32::MAX`, brpc's own cap), where that is less than
/// the caller's own `timeout`; `None` leaves the caller's, and leaves a caller without one
/// without one.
fn told_timeout_ms(wait: Duration, caller: Option<Duration>) -> Option<i32> {
    let caller = caller?;
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX).max(1);
    (u128::from(ms.unsigned_abs()) < caller.as_millis()).then_some(ms)
}

/// The `error_text` with which brpc's servers (since 1.11) refuse the credentials of a
/// connection's first request (`VerifyRpcRequest`), alone or followed by `": "` and their
/// `Authenticator`'s own text.
const AUTHENTICATOR_REFUSAL: &str = "Fail to authenticate";

/// The codec option naming the file that holds a cluster's credentials: the
/// `authentication_data` its upstream codecs put on each connection's first request. A file,
/// not the value itself: credentials never go in the config, which `/config_dump` shows.
pub const AUTHENTICATION_DATA_FILE: &str = "authentication_data_file";

/// Creates [`BrpcCodec`]s; the options are `max_frame_bytes` and, on a cluster,
/// [`AUTHENTICATION_DATA_FILE`].
#[derive(Clone, Debug)]
pub struct BrpcCodecFactory {
    max_frame_bytes: usize,
    /// The file of the credentials upstream codecs send ([`BrpcCodec::with_credentials`]),
    /// read as each codec is made.
    credentials: Option<WatchedFile>,
}

impl BrpcCodecFactory {
    /// A factory whose codecs refuse frames larger than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            credentials: None,
        }
    }

    /// This factory, whose upstream codecs authenticate each connection with the credentials
    /// `file` holds as the codec is made ([`BrpcCodec::with_credentials`]): a connection
    /// opened after the file changed sends its new contents, one opened before keeps the
    /// credentials it authenticated with.
    pub fn with_credentials_file(mut self, file: WatchedFile) -> Self {
        self.credentials = Some(file);
        self
    }

    /// Builds a factory from a listener's or cluster's codec options. `max_frame_bytes` must
    /// hold at least a header and fit baidu_std's 32-bit sizes. [`AUTHENTICATION_DATA_FILE`],
    /// a path, is a cluster's option only (a listener's clients are authenticated by the mesh,
    /// not by what they send); the file is read now, its trailing whitespace (a newline)
    /// trimmed, and must hold something, and the engine re-reads it when it changes (contents
    /// that fail these checks, or a file gone, keep the last good ones). Any other option is
    /// an error.
    pub fn from_options(options: &CodecOptions) -> Result<Arc<dyn CodecFactory>, OptionsError> {
        options.allow_only(&[AUTHENTICATION_DATA_FILE])?;
        if !(HEADER_LEN..=MAX_FRAME_CAP).contains(&options.max_frame_bytes) {
            return Err(OptionsError::new(
                "max_frame_bytes",
                format!("must be between {HEADER_LEN} and {MAX_FRAME_CAP} for brpc"),
            ));
        }
        let factory = Self::new(options.max_frame_bytes);
        let Some(path) = options.get_string(AUTHENTICATION_DATA_FILE)? else {
            return Ok(Arc::new(factory));
        };
        if options.side != Some(Side::Upstream) {
            return Err(OptionsError::new(
                AUTHENTICATION_DATA_FILE,
                "a cluster's option only: the credentials the proxy sends its servers (clients \
                 are authenticated by the mesh: mTLS, the rbac filter)",
            ));
        }
        let check = credentials_check(path.to_owned(), options.max_frame_bytes);
        match options.watched_file(AUTHENTICATION_DATA_FILE, check)? {
            Some(file) => Ok(Arc::new(factory.with_credentials_file(file))),
            None => Ok(Arc::new(factory)),
        }
    }
}

/// What a credentials file at `path` must hold: something, once its trailing whitespace (a
/// newline) is trimmed, short enough to leave room for a request within `max_frame_bytes`.
fn credentials_check(path: String, max_frame_bytes: usize) -> FileCheck {
    Box::new(move |file: &[u8]| {
        let credentials = file.trim_ascii_end();
        if credentials.is_empty() {
            return Err(format!("`{path}` holds no credentials"));
        }
        if HEADER_LEN + credentials.len() >= max_frame_bytes {
            return Err(format!(
                "`{path}` holds credentials too long to leave room for a request within max_frame_bytes"
            ));
        }
        Ok(Bytes::copy_from_slice(credentials))
    })
}

impl CodecFactory for BrpcCodecFactory {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn new_codec(&self, side: Side, _variant: WireVariant) -> Box<dyn Codec> {
        let codec = BrpcCodec::new(side, self.max_frame_bytes);
        match &self.credentials {
            // Read as the connection opens: it authenticates once, with what the file held.
            Some(file) if side == Side::Upstream => {
                Box::new(codec.with_credentials(file.current()))
            }
            _ => Box::new(codec),
        }
    }

    /// brpc servers before 1.11 closed a connection whose credentials their `Authenticator`
    /// refused without answering its first request (`ERPCAUTH` came with 1.11). Only a cluster
    /// that sends credentials can be refused so: without them, a connection closed unanswered
    /// (a server restarting, a first request over its size limit) is no refusal to back off
    /// from.
    fn refuses_credentials_by_closing(&self) -> bool {
        self.credentials.is_some()
    }

    fn watched_files(&self) -> Vec<WatchedFile> {
        self.credentials.iter().cloned().collect()
    }

    /// `correlation_id` is an `int64`: ids stay positive so that servers in any language read
    /// them as they were meant, and short enough to take the length of the client's id (see
    /// [`BrpcCodec`]).
    fn max_request_id(&self) -> u64 {
        correlation::MAX_ENGINE_ID
    }

    /// A call of `service.method` (the name split at its last dot) with an empty payload: a
    /// server answers it, with the method's result or an error such as `ENOMETHOD`, either way
    /// alive (but see [`CodecFactory::credentials_refused`]). baidu_std has no heartbeat.
    fn probe_request(&self, probe: Probe<'_>) -> Option<Message> {
        let Probe::Method(name) = probe else {
            return None;
        };
        let (service, method) = name.rsplit_once('.')?;
        if service.is_empty() || method.is_empty() {
            return None;
        }
        let meta = proto::RpcMeta {
            request: Some(proto::RpcRequestMeta {
                service_name: service.to_owned(),
                method_name: method.to_owned(),
                ..Default::default()
            }),
            correlation_id: Some(1),
            ..Default::default()
        };
        let mut frame = BytesMut::new();
        encode_frame(&meta, &[], &mut frame).ok()?;
        BrpcCodec::new(Side::Downstream, self.max_frame_bytes)
            .decode(&mut frame)
            .ok()
            .flatten()
    }

    /// The answer a brpc server with an `Authenticator` sends to a connection whose first
    /// request's credentials it does not accept, before closing it: `ERPCAUTH` with the text
    /// "Fail to authenticate" (and, after a colon, the authenticator's own). An `ERPCAUTH`
    /// with another text is a call refused, not the connection: a method's own check of its
    /// caller (`SetFailed(ERPCAUTH, ...)`, whose text the server prefixes with its address and
    /// `[E1004]`), which a probe without the caller's token meets on a live server, or another
    /// proxy's `rbac` filter. Other error codes say nothing of the credentials: `ENOSERVICE`,
    /// `ENOMETHOD`, `EREQUEST` or `EINTERNAL` come from a running server that lacks the method
    /// or failed it, and `ELIMIT`, `EOVERCROWDED` or `ELOGOFF` from one that refuses a call for
    /// a while (load, or stopping), which retries and outlier detection already handle.
    fn credentials_refused(&self, answer: &Message) -> bool {
        let field = |key| answer.metadata.get(key);
        answer.status == ResponseStatus::ServerError
            && field(keys::ERROR_CODE).and_then(|code| code.parse::<i32>().ok())
                == Some(errno::ERPCAUTH)
            && field(keys::ERROR_TEXT).is_some_and(|text| text.starts_with(AUTHENTICATOR_REFUSAL))
    }
}

#[cfg(test)]
mod tests {
    use metaprotocol_core::{LocalReplyKind, MessageKind, Mutation};

    use super::*;

    /// What a test and its helpers return: an error fails the test.
    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    /// `meta` and `payload` in a frame, as a listener's codec with frames up to `max` decodes
    /// it.
    fn decoded(meta: &proto::RpcMeta, payload: &[u8], max: usize) -> TestResult<Message> {
        let mut frame = BytesMut::new();
        encode_frame(meta, payload, &mut frame)?;
        Ok(BrpcCodec::new(Side::Downstream, max)
            .decode(&mut frame)?
            .ok_or("incomplete")?)
    }

    /// What a codec writes a request with: the engine's id `request_id`, and `mutation`.
    fn params(request_id: u64, mutation: &Mutation) -> EncodeParams<'_> {
        EncodeParams {
            request_id,
            variant: WireVariant::DEFAULT,
            mutation,
        }
    }

    #[test]
    fn the_probe_calls_service_dot_method() -> TestResult {
        let factory = BrpcCodecFactory::new(1 << 20);
        let probe = factory
            .probe_request(Probe::Method("example.EchoService.Echo"))
            .ok_or("no probe")?;
        assert_eq!(probe.kind, MessageKind::Request);
        let get = |k: &str| probe.metadata.get(k).map(|v| v.to_string());
        assert_eq!(get("service").as_deref(), Some("example.EchoService"));
        assert_eq!(get("method").as_deref(), Some("Echo"));
        let mut upstream = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
        let mut wire = BytesMut::new();
        upstream.encode(&probe, &params(1 << 40, &Mutation::new()), &mut wire)?;
        let (meta, body) = crate::decode_frame(&wire)?;
        assert!(body.is_empty());
        // The server sees the engine's id as an upstream codec writes it, and its answer under
        // that id reads as the engine's id again.
        assert_eq!(meta.correlation_id, Some((1 << 40) + (1 << 35)));
        let answer = proto::RpcMeta {
            correlation_id: meta.correlation_id,
            ..Default::default()
        };
        let mut reply = BytesMut::new();
        encode_frame(&answer, &[], &mut reply)?;
        let response = upstream.decode(&mut reply)?.ok_or("no response")?;
        assert_eq!(
            (response.kind, response.request_id),
            (MessageKind::Response, 1 << 40)
        );
        for unusable in ["Echo", ".Echo", "example.", ""] {
            assert!(
                factory.probe_request(Probe::Method(unusable)).is_none(),
                "{unusable}"
            );
        }
        assert!(factory.probe_request(Probe::Heartbeat).is_none());
        Ok(())
    }

    /// An upstream's answer refuses the proxy's credentials when brpc's `Authenticator` gave it
    /// (`ERPCAUTH`, "Fail to authenticate", its own text after a colon); no other answer does:
    /// not other errors, nor an `ERPCAUTH` a method sets for a call it does not allow (a
    /// probe without the caller's token), nor one another proxy's `rbac` answers with.
    #[test]
    fn only_the_authenticators_refusal_refuses_the_credentials() -> TestResult {
        let factory = BrpcCodecFactory::new(1 << 20);
        let answer = |code: Option<i32>, text: Option<&str>| -> TestResult<Message> {
            let meta = proto::RpcMeta {
                response: Some(proto::RpcResponseMeta {
                    error_code: code,
                    error_text: text.map(str::to_owned),
                }),
                correlation_id: Some(1),
                ..Default::default()
            };
            let mut wire = BytesMut::new();
            encode_frame(&meta, &[], &mut wire)?;
            let mut upstream = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
            Ok(upstream.decode(&mut wire)?.ok_or("no answer")?)
        };
        for text in [
            "Fail to authenticate",
            "Fail to authenticate: token expired",
        ] {
            let refusal = answer(Some(errno::ERPCAUTH), Some(text))?;
            assert!(factory.credentials_refused(&refusal), "{text}");
        }
        // The proxy's own answer to a call its rbac filter denies.
        let request = request(None)?;
        let denied = LocalReply::new(LocalReplyKind::Unauthorized, "rbac: denied");
        let mut wire = BytesMut::new();
        encode_local_reply(&request, &denied, &mut wire)?;
        let rbac = crate::decode_frame(&wire)?
            .0
            .response
            .ok_or("no response meta")?;
        let rbac_text = rbac.error_text.ok_or("no error text")?;
        let method_text = "[127.0.0.1:8002][E1004]no token in the call";
        for (code, text) in [
            (None, None),
            (Some(0), None),
            (
                Some(errno::ENOSERVICE),
                Some("[127.0.0.1:8002][E1001]Fail to find service=x"),
            ),
            (Some(errno::ENOMETHOD), None),
            (Some(errno::EREQUEST), None),
            (Some(errno::EINTERNAL), Some("Fail to authenticate")),
            (Some(errno::ELIMIT), None),
            (Some(errno::ELOGOFF), None),
            (Some(errno::ERPCAUTH), Some(method_text)),
            (Some(errno::ERPCAUTH), Some(rbac_text.as_str())),
            (Some(errno::ERPCAUTH), None),
        ] {
            let answer = answer(code, text)?;
            assert!(!factory.credentials_refused(&answer), "{code:?} {text:?}");
        }
        Ok(())
    }

    /// A traced request goes upstream with brpc's rpcz ids taken from the `traceparent` the
    /// engine's tracer writes: the trace's low 64 bits, and the proxy's attempt span as the
    /// server span's parent (the server makes its own span id). Unsampled or untraced, the
    /// client's ids go as they came.
    #[test]
    fn a_traced_request_carries_the_attempt_span_as_its_rpcz_parent() -> TestResult {
        let meta = proto::RpcMeta {
            request: Some(proto::RpcRequestMeta {
                service_name: "example.EchoService".to_owned(),
                method_name: "Echo".to_owned(),
                log_id: Some(7),
                trace_id: Some(111),
                span_id: Some(222),
                parent_span_id: Some(333),
                timeout_ms: Some(500),
                ..Default::default()
            }),
            correlation_id: Some(4_294_967_298),
            ..Default::default()
        };
        let request = decoded(&meta, b"\x0a\x02hi", 1 << 20)?;
        let traced = |flags: &str| {
            let mut mutation = Mutation::new();
            mutation.set(
                "traceparent".into(),
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}").into(),
            );
            mutation
        };
        let ids = |mutation: &Mutation| -> TestResult<_> {
            let mut upstream = BrpcCodec::new(Side::Upstream, 1 << 20);
            let (_, meta) = written(&mut upstream, &request, 1, mutation, false)?;
            let sent = meta.request.ok_or("no request meta")?;
            assert_eq!(
                (sent.method_name.as_str(), sent.log_id, sent.timeout_ms),
                ("Echo", Some(7), Some(500))
            );
            Ok((sent.trace_id, sent.span_id, sent.parent_span_id))
        };
        assert_eq!(
            ids(&traced("01"))?,
            (
                Some(0xa3ce_929d_0e0e_4736_u64 as i64),
                None,
                Some(0x00f0_67aa_0ba9_02b7)
            )
        );
        let as_sent = (Some(111), Some(222), Some(333));
        assert_eq!(ids(&traced("00"))?, as_sent, "not sampled");
        assert_eq!(ids(&Mutation::new())?, as_sent, "not traced");
        let mut other = Mutation::new();
        other.set("x-routed-by".into(), "proxy".into());
        assert_eq!(ids(&other)?, as_sent, "a mutation without a trace");
        Ok(())
    }

    /// A request the proxy waits for less than its caller goes with that wait as its
    /// `timeout_ms` (in whole milliseconds, at least 1; the caller's own replaced, the rest of
    /// the meta, a trace's ids, payload and attachment as they would go); one whose caller's
    /// is no longer goes verbatim, and so does one whose caller sent none (or 0).
    #[test]
    fn a_request_goes_with_the_time_the_proxy_waits_for_it() -> TestResult {
        let meta = |timeout_ms: Option<i32>| proto::RpcMeta {
            request: Some(proto::RpcRequestMeta {
                service_name: "example.EchoService".to_owned(),
                method_name: "Echo".to_owned(),
                log_id: Some(7),
                trace_id: Some(111),
                timeout_ms,
                ..Default::default()
            }),
            correlation_id: Some(4_294_967_298),
            attachment_size: Some(1),
            user_fields: [("tenant".to_owned(), "t1".to_owned())].into(),
            ..Default::default()
        };
        let ms = Duration::from_millis;
        let mut traced = Mutation::new();
        traced.set(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        for share in [false, true] {
            for (sent, wait, mutation, told) in [
                (Some(5000), ms(300), Mutation::new(), Some(300)),
                (
                    Some(5000),
                    ms(300) - Duration::from_micros(1),
                    Mutation::new(),
                    Some(299),
                ),
                (
                    Some(5000),
                    Duration::from_micros(10),
                    Mutation::new(),
                    Some(1),
                ),
                (None, ms(15_000), Mutation::new(), None),
                (Some(0), ms(300), Mutation::new(), Some(0)),
                (Some(5000), ms(300), traced.clone(), Some(300)),
                (Some(200), ms(300), Mutation::new(), Some(200)),
                (Some(300), ms(300), Mutation::new(), Some(300)),
            ] {
                let request = decoded(&meta(sent), b"\x0a\x02hi", 1 << 20)?;
                let mut upstream = BrpcCodec::new(Side::Upstream, 1 << 20);
                let mut wire = BytesMut::new();
                let params = params(1, &mutation);
                let shared = upstream.encode_within(&request, &params, wait, share, &mut wire)?;
                let rest = request.frame.len() - shared;
                wire.extend_from_slice(&request.frame[rest..]);
                let (written, body) = crate::decode_frame(&wire)?;
                assert_eq!(body, b"\x0a\x02hi", "{sent:?} {wait:?}");
                let mut as_encoded = BytesMut::new();
                upstream.encode(&request, &params, &mut as_encoded)?;
                // What `encode` writes, but for `timeout_ms`.
                let (mut expected, _) = crate::decode_frame(&as_encoded)?;
                expected.request = expected.request.map(|r| proto::RpcRequestMeta {
                    timeout_ms: told,
                    ..r
                });
                assert_eq!(written, expected, "{sent:?} {wait:?}");
                if sent == told {
                    assert_eq!(wire, as_encoded, "verbatim: {sent:?} {wait:?}");
                }
            }
        }
        Ok(())
    }

    /// Jprotobuf-rpc-socket's `RpcRequestMeta` numbers its own `extraParam` (bytes) 4, brpc's
    /// `trace_id` (a varint): a traced request goes upstream with brpc's rpcz ids, and with the
    /// Java client's extra parameters as they came.
    #[test]
    fn tracing_keeps_a_field_that_only_shares_an_rpcz_ids_number() -> TestResult {
        // Field 4, length-delimited: a Java client's extraParam.
        let extra_param: &[u8] = b"\x22\x09tenant=t1";
        let request_meta = [
            &b"\x0a\x13example.EchoService\x12\x04Echo\x18\x2a"[..],
            extra_param,
        ]
        .concat();
        // request, compress_type 0, correlation_id 2^32 + 2, attachment_size 0, as Jprotobuf
        // writes them.
        let meta = [
            &[0x0a, u8::try_from(request_meta.len())?][..],
            &request_meta,
            b"\x18\x00\x20\x82\x80\x80\x80\x10\x28\x00",
        ]
        .concat();
        let payload = b"\x0a\x02hi";
        let mut frame = BytesMut::from(&b"PRPC"[..]);
        frame.extend_from_slice(&u32::try_from(meta.len() + payload.len())?.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(meta.len())?.to_be_bytes());
        frame.extend_from_slice(&meta);
        frame.extend_from_slice(payload);
        let request = BrpcCodec::new(Side::Downstream, 1 << 20)
            .decode(&mut frame)?
            .ok_or("incomplete")?;
        assert_eq!(request.metadata.get(keys::TRACE_ID), None);
        let mut traced = Mutation::new();
        traced.set(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let mut wire = BytesMut::new();
        BrpcCodec::new(Side::Upstream, 1 << 20).encode(&request, &params(1, &traced), &mut wire)?;
        assert!(
            wire.windows(extra_param.len()).any(|w| w == extra_param),
            "extraParam dropped: {:02x?}",
            &wire[..]
        );
        let sent = BrpcCodec::new(Side::Downstream, 1 << 20)
            .decode(&mut wire)?
            .ok_or("incomplete")?;
        let get = |key: &str| sent.metadata.get(key);
        assert_eq!(
            (get("service"), get("method"), get(keys::LOG_ID)),
            (Some("example.EchoService"), Some("Echo"), Some("42"))
        );
        let trace_id = (0xa3ce_929d_0e0e_4736_u64 as i64).to_string();
        assert_eq!(get(keys::TRACE_ID), Some(trace_id.as_str()));
        let parent = 0x00f0_67aa_0ba9_02b7_i64.to_string();
        assert_eq!(get(keys::PARENT_SPAN_ID), Some(parent.as_str()));
        Ok(())
    }

    /// A request for `example.EchoService.Echo` with a brpc client's id, a user field, a
    /// payload and the client's `authentication_data`, if any, as a listener decodes it.
    fn request(authentication: Option<&[u8]>) -> TestResult<Message> {
        let meta = proto::RpcMeta {
            request: Some(proto::RpcRequestMeta {
                service_name: "example.EchoService".to_owned(),
                method_name: "Echo".to_owned(),
                ..Default::default()
            }),
            correlation_id: Some(4_294_967_298),
            authentication_data: authentication.map(<[u8]>::to_vec),
            user_fields: [("tenant".to_owned(), "t1".to_owned())].into(),
            ..Default::default()
        };
        decoded(&meta, b"\x0a\x02hi", 1 << 20)
    }

    /// `request` as `codec` writes it with the engine's id `id`, shared or not, read back by
    /// the protobuf definition.
    fn written(
        codec: &mut dyn Codec,
        request: &Message,
        id: u64,
        mutation: &Mutation,
        share: bool,
    ) -> TestResult<(BytesMut, proto::RpcMeta)> {
        let mut wire = BytesMut::new();
        if share {
            let shared = codec.encode_sharing(request, &params(id, mutation), &mut wire)?;
            let rest = request.frame.len() - shared;
            wire.extend_from_slice(&request.frame[rest..]);
        } else {
            codec.encode(request, &params(id, mutation), &mut wire)?;
        }
        let (meta, body) = crate::decode_frame(&wire)?;
        assert_eq!(body, b"\x0a\x02hi");
        Ok((wire, meta))
    }

    /// A server authenticates a connection by its first request's credentials and runs every
    /// call on it under them: a client's must never go out on a connection other clients'
    /// calls share, however the request is written.
    #[test]
    fn a_clients_authentication_data_never_goes_upstream() -> TestResult {
        let with_credentials = request(Some(b"client-secret"))?;
        let mut routed = Mutation::new();
        routed.set("x-routed-by".into(), "proxy".into());
        for mutation in [Mutation::new(), routed] {
            for share in [false, true] {
                let mut upstream = BrpcCodec::new(Side::Upstream, 1 << 20);
                for id in [1, 1 << 30] {
                    let (_, meta) =
                        written(&mut upstream, &with_credentials, id, &mutation, share)?;
                    assert_eq!(meta.authentication_data, None, "{mutation:?} {share}");
                    assert_eq!(
                        meta.user_fields.get("tenant").map(String::as_str),
                        Some("t1")
                    );
                    let request_meta = meta.request.ok_or("no request meta")?;
                    assert_eq!(request_meta.method_name, "Echo");
                }
            }
        }
        // Downstream a codec writes what it read, credentials included (it writes no requests
        // to servers).
        let (wire, _) = written(
            &mut BrpcCodec::new(Side::Downstream, 1 << 20),
            &with_credentials,
            4_294_967_298,
            &Mutation::new(),
            false,
        )?;
        assert_eq!(&wire[..], &with_credentials.frame[..]);
        Ok(())
    }

    /// Jprotobuf-rpc-socket answers in its request's own `RpcMeta`, and where it fails a call
    /// before a handler runs ("service not found", an exception) that meta keeps the request's
    /// `authentication_data`: on a connection's first call, the cluster's credentials. They
    /// must not reach the client that call was for: a response goes to its client without any
    /// `authentication_data`, however it is written, and with all else as the server sent it.
    #[test]
    fn credentials_a_server_echoes_never_reach_a_client() -> TestResult {
        let file = CredentialsFile::new("echoed", b"proxy-token\n")?;
        let mut upstream = file
            .cluster_factory()?
            .new_codec(Side::Upstream, WireVariant::DEFAULT);
        let none = Mutation::new();
        let (_, received) = written(upstream.as_mut(), &request(None)?, 1, &none, false)?;
        assert_eq!(
            received.authentication_data.as_deref(),
            Some(&b"proxy-token"[..])
        );
        let mut echoed = received.clone();
        echoed.response = Some(proto::RpcResponseMeta {
            error_code: Some(errno::ENOSERVICE),
            error_text: Some("service not found".to_owned()),
        });
        let mut wire = BytesMut::new();
        encode_frame(&echoed, &[], &mut wire)?;
        let answer = upstream.decode(&mut wire)?.ok_or("no answer")?;
        assert_eq!((answer.kind, answer.request_id), (MessageKind::Response, 1));
        let mut routed = Mutation::new();
        routed.set("x-routed-by".into(), "proxy".into());
        for mutation in [Mutation::new(), routed] {
            for share in [false, true] {
                let mut downstream = BrpcCodec::new(Side::Downstream, 1 << 20);
                let client_id = 4_294_967_298;
                let mut out = BytesMut::new();
                if share {
                    let params = params(client_id, &mutation);
                    let shared = downstream.encode_sharing(&answer, &params, &mut out)?;
                    out.extend_from_slice(&answer.frame[answer.frame.len() - shared..]);
                } else {
                    downstream.encode(&answer, &params(client_id, &mutation), &mut out)?;
                }
                let (mut to_client, body) = crate::decode_frame(&out)?;
                assert!(body.is_empty());
                assert_eq!(to_client.authentication_data, None, "{mutation:?} {share}");
                // All else as the server sent it, under the client's id.
                to_client.user_fields.remove("x-routed-by");
                let mut expected = echoed.clone();
                expected.authentication_data = None;
                expected.correlation_id = Some(client_id as i64);
                assert_eq!(to_client, expected, "{mutation:?} {share}");
            }
        }
        Ok(())
    }

    /// A cluster's credentials go on its connection's first request only, in place of the
    /// client's; every later request without credentials is written as it came, but for its
    /// correlation id, patched in place.
    #[test]
    fn the_clusters_credentials_go_on_a_connections_first_request_only() -> TestResult {
        let file = CredentialsFile::new("first-only", b"proxy-token\n")?;
        let factory = file.cluster_factory()?;
        let plain = request(None)?;
        let clients = request(Some(b"client-secret"))?;
        let none = Mutation::new();
        for share in [false, true] {
            let mut upstream = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
            // A first request that cannot be written takes nothing from the connection.
            let mut big = Mutation::new();
            big.set("x-big".into(), "v".repeat(4096).into());
            assert!(written(upstream.as_mut(), &plain, 1, &big, share).is_err());
            let (_, first) = written(upstream.as_mut(), &clients, 2, &none, share)?;
            assert_eq!(
                first.authentication_data.as_deref(),
                Some(&b"proxy-token"[..])
            );
            let (_, second) = written(upstream.as_mut(), &clients, 3, &none, share)?;
            assert_eq!(second.authentication_data, None);
            let (wire, third) = written(upstream.as_mut(), &plain, 4, &none, share)?;
            assert_eq!(third.authentication_data, None);
            // Verbatim: the same length, and the same bytes outside the id's varint.
            let layout = crate::layout::BrpcLayout::of(&plain)?;
            let id = layout.id_value_start..layout.id_field.end;
            assert_eq!(wire.len(), plain.frame.len());
            assert_eq!(wire[..id.start], plain.frame[..id.start]);
            assert_eq!(wire[id.end..], plain.frame[id.end..]);
            assert_eq!(third.correlation_id, Some((1 << 28) + 4));
        }
        // Its own connection's first request, a health check's probe goes with them too.
        let probe = factory
            .probe_request(Probe::Method("example.EchoService.Echo"))
            .ok_or("no probe")?;
        let mut upstream = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
        let mut wire = BytesMut::new();
        upstream.encode(&probe, &params(1, &none), &mut wire)?;
        let (meta, _) = crate::decode_frame(&wire)?;
        assert_eq!(
            meta.authentication_data.as_deref(),
            Some(&b"proxy-token"[..])
        );
        // A listener's codecs never write them.
        let mut downstream = factory.new_codec(Side::Downstream, WireVariant::DEFAULT);
        let (wire, _) = written(downstream.as_mut(), &plain, 4_294_967_298, &none, false)?;
        assert_eq!(&wire[..], &plain.frame[..]);
        Ok(())
    }

    /// Rotating the credentials file reaches the codecs made after the engine re-read it (each
    /// a new connection's); a codec made before keeps the credentials its connection
    /// authenticated with, and a file that goes bad keeps the last good ones.
    #[test]
    fn rotated_credentials_go_on_connections_opened_after() -> TestResult {
        let file = CredentialsFile::new("rotated", b"token-1\n")?;
        let factory = file.cluster_factory()?;
        let [watched] = &factory.watched_files()[..] else {
            return Err("the credentials file is not watched".into());
        };
        assert_eq!(watched.option(), AUTHENTICATION_DATA_FILE);
        let plain = request(None)?;
        let none = Mutation::new();
        let first_credentials = |codec: &mut dyn Codec| -> TestResult<_> {
            let (_, meta) = written(codec, &plain, 1, &none, false)?;
            Ok(meta.authentication_data)
        };
        let mut before = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
        std::fs::write(&file.0, b"token-2\n")?;
        assert_eq!(watched.reload(), metaprotocol_core::Reloaded::Applied);
        let mut after = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
        assert_eq!(
            first_credentials(after.as_mut())?,
            Some(b"token-2".to_vec())
        );
        assert_eq!(
            first_credentials(before.as_mut())?,
            Some(b"token-1".to_vec())
        );
        // Emptied: refused, the last good credentials stay.
        std::fs::write(&file.0, b"\n")?;
        let reloaded = watched.reload();
        assert!(
            matches!(&reloaded, metaprotocol_core::Reloaded::Kept(reason) if reason.contains("holds no credentials")),
            "{reloaded:?}"
        );
        let mut emptied = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
        assert_eq!(
            first_credentials(emptied.as_mut())?,
            Some(b"token-2".to_vec())
        );
        Ok(())
    }

    /// A file of credentials in the temp dir, for this process; removed when dropped.
    struct CredentialsFile(std::path::PathBuf);

    impl CredentialsFile {
        /// The file named after `name`, holding `content`.
        fn new(name: &str, content: &[u8]) -> std::io::Result<Self> {
            let path = std::env::temp_dir().join(format!(
                "metaprotocol-brpc-{}-{name}.credentials",
                std::process::id()
            ));
            std::fs::write(&path, content)?;
            Ok(Self(path))
        }

        /// The path, as a codec option's value.
        fn option(&self) -> String {
            self.0.to_string_lossy().into_owned()
        }

        /// The codec factory of a cluster whose `authentication_data_file` is this file.
        fn cluster_factory(&self) -> TestResult<Arc<dyn CodecFactory>> {
            let mut options = CodecOptions::with_max_frame_bytes(4096);
            options.side = Some(Side::Upstream);
            options.insert(AUTHENTICATION_DATA_FILE, self.option());
            Ok(BrpcCodecFactory::from_options(&options)?)
        }
    }

    impl Drop for CredentialsFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Only a cluster that sends credentials takes a connection closed unanswered for a refusal
    /// of them (a brpc server before 1.11's): without any, such a close (a server restarting)
    /// is no reason to back off opening connections.
    #[test]
    fn only_a_cluster_with_credentials_takes_a_close_for_a_refusal() -> TestResult {
        assert!(!BrpcCodecFactory::new(1 << 20).refuses_credentials_by_closing());
        let file = CredentialsFile::new("close", b"proxy-token\n")?;
        assert!(file.cluster_factory()?.refuses_credentials_by_closing());
        Ok(())
    }

    /// `authentication_data_file` is a cluster's option, naming a readable file that holds
    /// something; a listener's, or one whose side is not said, is refused by name.
    #[test]
    fn authentication_data_file_is_a_clusters_readable_file() -> std::io::Result<()> {
        let refused = |side: Option<Side>, set: &dyn Fn(&mut CodecOptions)| {
            let mut options = CodecOptions::default();
            options.side = side;
            set(&mut options);
            BrpcCodecFactory::from_options(&options)
                .err()
                .map(|e| (e.field, e.reason))
        };
        let file = CredentialsFile::new("token", b"proxy-token\n")?;
        let token = |o: &mut CodecOptions| o.insert(AUTHENTICATION_DATA_FILE, file.option());
        assert_eq!(refused(Some(Side::Upstream), &token), None);
        for side in [Some(Side::Downstream), None] {
            let (field, reason) = refused(side, &token).unwrap_or_default();
            assert_eq!(field, AUTHENTICATION_DATA_FILE);
            assert!(reason.contains("a cluster's option only"), "{reason}");
        }
        let number = |o: &mut CodecOptions| o.insert_scalar(AUTHENTICATION_DATA_FILE, "123");
        let (field, reason) = refused(Some(Side::Upstream), &number).unwrap_or_default();
        assert_eq!(field, AUTHENTICATION_DATA_FILE);
        assert!(reason.contains("must be a string"), "{reason}");
        let blank = CredentialsFile::new("blank", b" \n")?;
        let empty = |o: &mut CodecOptions| o.insert(AUTHENTICATION_DATA_FILE, blank.option());
        let (_, reason) = refused(Some(Side::Upstream), &empty).unwrap_or_default();
        assert!(reason.contains("holds no credentials"), "{reason}");
        let missing =
            |o: &mut CodecOptions| o.insert(AUTHENTICATION_DATA_FILE, "/nonexistent/token");
        let (_, reason) = refused(Some(Side::Upstream), &missing).unwrap_or_default();
        assert!(
            reason.contains("`/nonexistent/token` cannot be read"),
            "{reason}"
        );
        let misspelt = |o: &mut CodecOptions| o.insert("authentication_data", "proxy-token");
        let (field, _) = refused(Some(Side::Upstream), &misspelt).unwrap_or_default();
        assert_eq!(
            field, "authentication_data",
            "credentials never go in the config"
        );
        // Without it, a listener's options are as before.
        assert_eq!(refused(Some(Side::Downstream), &|_| {}), None);
        Ok(())
    }

    /// A request within the upstream's frame limit as it came, that a mutation takes over it,
    /// is refused with nothing written: the server would close a connection other clients'
    /// calls share (brpc servers close on a body over `max_body_size`).
    #[test]
    fn a_mutation_cannot_take_a_frame_over_the_limit() -> TestResult {
        let max = 1024;
        let meta = proto::RpcMeta {
            request: Some(proto::RpcRequestMeta {
                service_name: "example.EchoService".to_owned(),
                method_name: "Echo".to_owned(),
                ..Default::default()
            }),
            correlation_id: Some(1 << 40),
            ..Default::default()
        };
        let request = decoded(&meta, &[b'p'; 900], max)?;
        let mut upstream = BrpcCodec::new(Side::Upstream, max);
        let mut mutation = Mutation::new();
        mutation.set("x-big".into(), "v".repeat(200).into());
        let over = params(1, &mutation);
        let mut wire = BytesMut::from(&b"before"[..]);
        assert!(matches!(
            upstream.encode(&request, &over, &mut wire),
            Err(CodecError::Encode(_))
        ));
        assert_eq!(&wire[..], b"before");
        let mut shared = BytesMut::new();
        assert!(
            upstream
                .encode_sharing(&request, &over, &mut shared)
                .is_err()
        );
        assert!(shared.is_empty());
        // Within the limit, the same mutation goes out.
        let mut small = Mutation::new();
        small.set("x-big".into(), "v".into());
        upstream.encode(&request, &params(1, &small), &mut shared)?;
        assert!(shared.len() <= max);
        Ok(())
    }
}
