//! [`ThriftCodec`]: one connection's decoder and encoder, and [`ThriftCodecFactory`].

use std::borrow::Cow;
use std::sync::Arc;

use bytes::BytesMut;
use metaprotocol_core::{
    Codec, CodecCounter, CodecError, CodecFactory, CodecOptions, EncodeParams, FrameHead,
    LocalReply, Message, OptionsError, PassedOver, Probe, Side, WireVariant, decode_new,
};

use crate::decode::{self, Decoder};
use crate::encode;
use crate::format::{FormatChoice, ThriftFormat};
use crate::options::ThriftOptions;
use crate::reply;

/// The thrift codec of one connection and direction.
///
/// The first frame fixes the connection's format (the parts the options leave open are
/// detected); a later frame in another format is malformed, since a Thrift peer never switches
/// encodings on a connection.
///
/// An instance decodes one byte stream: after `Ok(None)` the next call must see the same bytes
/// with more appended (an unframed message's walk continues where it stopped).
#[derive(Clone, Debug)]
pub struct ThriftCodec {
    expected: FormatChoice,
    decoder: Decoder,
    max_frame_bytes: usize,
}

impl ThriftCodec {
    /// A codec of the client side of connections (it decodes calls; see
    /// [`ThriftCodec::for_side`]) accepting `expected` (open parts detected), with a frame size
    /// cap (at most `i32::MAX`, the largest length Thrift can express).
    pub fn new(expected: FormatChoice, max_frame_bytes: usize) -> Self {
        Self::for_side(Side::Downstream, expected, max_frame_bytes)
    }

    /// [`ThriftCodec::new`] for `side`: a downstream codec decodes a THeader call whose zlib
    /// data is corrupt or inflates past the cap as one to refuse with a `PROTOCOL_ERROR`
    /// (once its message header inflated); an upstream one cannot forward such an answer,
    /// and refuses it.
    pub fn for_side(side: Side, expected: FormatChoice, max_frame_bytes: usize) -> Self {
        let max_frame_bytes = max_frame_bytes.min(i32::MAX as usize);
        Self {
            expected,
            decoder: Decoder::new(max_frame_bytes, side),
            max_frame_bytes,
        }
    }

    /// How many bytes the walks through unframed messages have read on this codec, a message
    /// that arrives in pieces included: each byte is walked once (plus, per read, the start of
    /// a value cut by the end of the buffer), so this stays close to the bytes received
    /// however they are split. For tests and diagnostics.
    pub fn unframed_bytes_walked(&self) -> u64 {
        self.decoder.walked()
    }
}

impl Codec for ThriftCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        decode_new(self, src)
    }

    fn decode_into(&mut self, src: &mut BytesMut, slot: &mut Message) -> Result<bool, CodecError> {
        let found = match self.decoder.passed_call() {
            Some(call) => call?,
            None => {
                let transport = match self.expected.transport {
                    Some(transport) => transport,
                    None => match decode::detect_transport(src) {
                        Some(transport) => transport,
                        None => return Ok(false),
                    },
                };
                match self.decoder.decode(src, transport)? {
                    Some(found) => found,
                    None => return Ok(false),
                }
            }
        };
        let format = found.format;
        if let Some(expected) = self.expected.protocol
            && expected != format.protocol
        {
            return Err(CodecError::Malformed(Cow::Owned(format!(
                "{} frame on a connection speaking {}",
                format.protocol.name(),
                expected.name()
            ))));
        }
        self.expected = format.into();
        found.fill(slot).map(|()| true)
    }

    fn encode(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        encode::encode(message, params, self.max_frame_bytes, false, dst).map(drop)
    }

    /// A frame passing through changes up to its seqid alone: the rest is left to follow it.
    fn encode_sharing(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        encode::encode(message, params, self.max_frame_bytes, true, dst)
    }

    fn encode_local_reply(
        &mut self,
        request: &Message,
        reply: &LocalReply,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        reply::encode_local_reply(request, reply, dst)
    }

    /// Thrift has no heartbeat: nothing is ever decoded as one, so there is nothing to answer.
    fn encode_heartbeat_reply(
        &mut self,
        _heartbeat: &Message,
        _dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        Ok(())
    }

    /// Framed and THeader frames give their length in their first word, and a `REPLY` or
    /// `EXCEPTION` names its call by the message's seqid, the request id `decode` gives (not
    /// THeader's own `seq`). `Incomplete` until the message header (and a THeader block) is
    /// in; framed calls, one-way calls, THeader transforms and frames in another protocol than
    /// the connection's tell nothing. An unframed message whose header is in is `Unsized`:
    /// [`Codec::pass_over`] walks it as it arrives. So is, downstream, a THeader call whose
    /// message cannot be read (a transform other than zlib, the JSON protocol), passed over by
    /// its length and answered as a smaller one is. A zlib message is read from its first
    /// bytes inflated: one whose first bytes do not inflate to a message header tells nothing.
    fn oversized_response(&self, src: &[u8]) -> Option<FrameHead> {
        let transport = match self.expected.transport {
            Some(transport) => transport,
            None => match decode::detect_transport(src) {
                Some(transport) => transport,
                None => return Some(FrameHead::Incomplete),
            },
        };
        decode::oversized_response(src, transport, self.expected.protocol, &self.decoder)
    }

    /// Walks an unframed message too large to decode on through each read, holding none of
    /// it; a `REPLY` or `EXCEPTION` names its call by its seqid. Downstream, the next `decode`
    /// gives a call that passed as a call of its name and seqid with a `reject_reason`, which
    /// the engine answers with a `PROTOCOL_ERROR`.
    fn pass_over(&mut self, src: &[u8]) -> Option<PassedOver> {
        // Read only at the message's start: later reads are from inside it.
        let transport = self
            .expected
            .transport
            .or_else(|| decode::detect_transport(src));
        self.decoder.pass_over(src, transport)
    }
}

/// The configured thrift protocol: builds [`ThriftCodec`]s and picks upstream encodings.
#[derive(Clone, Debug, Default)]
pub struct ThriftCodecFactory {
    options: ThriftOptions,
}

impl ThriftCodecFactory {
    /// A factory with `options`.
    pub fn new(options: ThriftOptions) -> Self {
        Self { options }
    }

    /// The constructor registered in a [`metaprotocol_core::CodecRegistry`].
    pub fn from_options(options: &CodecOptions) -> Result<Arc<dyn CodecFactory>, OptionsError> {
        Ok(Arc::new(Self::new(ThriftOptions::parse(options)?)))
    }
}

impl CodecFactory for ThriftCodecFactory {
    fn protocol(&self) -> &'static str {
        crate::PROTOCOL
    }

    /// Downstream codecs accept the listener's configured format, detecting open parts.
    /// Upstream codecs expect answers in the format their connection speaks (`variant`).
    fn new_codec(&self, side: Side, variant: WireVariant) -> Box<dyn Codec> {
        let expected = match (side, ThriftFormat::from_variant(variant)) {
            (Side::Upstream, Some(format)) => format.into(),
            _ => self.options.format,
        };
        Box::new(ThriftCodec::for_side(
            side,
            expected,
            self.options.max_frame_bytes,
        ))
    }

    /// The request's own format, with the parts this (cluster's) configuration fixes replaced.
    fn upstream_variant(&self, request: &Message) -> WireVariant {
        match ThriftFormat::from_variant(request.variant) {
            Some(format) => self.options.format.resolve(format).to_variant(),
            None => request.variant,
        }
    }

    /// Seqids are `i32`; upstream ids stay positive.
    fn max_request_id(&self) -> u64 {
        i32::MAX as u64
    }

    /// A call of the method, without arguments, in the encoding the options fix (framed
    /// binary for the parts left `auto`). Thrift has no heartbeat.
    fn probe_request(&self, probe: Probe<'_>) -> Option<Message> {
        match probe {
            Probe::Method(method) => {
                crate::probe::call(self.options.format, method, self.options.max_frame_bytes)
            }
            _ => None,
        }
    }

    /// The process-wide counts of [`crate::stats`].
    fn counters(&self) -> Vec<CodecCounter> {
        vec![
            CodecCounter {
                name: "mutations_not_applied",
                help: "Frames whose header mutation could not be written (no THeader), forwarded unchanged",
                value: crate::stats::mutations_not_applied(),
            },
            CodecCounter {
                name: "headers_dropped",
                help: "THeader frames whose info headers were dropped in translation to a transport without headers",
                value: crate::stats::headers_dropped(),
            },
        ]
    }
}
