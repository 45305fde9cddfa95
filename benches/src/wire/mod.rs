//! The three protocols as the load tools speak them: where a frame ends, how a call is written,
//! how its response is read back, and how the echo server answers.
//!
//! Every call carries an ASCII payload that starts with its own id in hex ([`Payload`]), so an
//! answer that reaches the wrong caller is caught even when the id was restored, and two metadata
//! values that the benchmark routes match on ([`Protocol::route_keys`]). The tools read only what
//! they need and never trust a length from the wire further than the frame it came in: anything
//! unexpected is a [`WireError`], which the tools count, never a panic.

mod brpc;
mod dubbo;
mod thrift;

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The largest frame the tools accept; a length field announcing more is an error.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Calls carry ids below 2^31: Thrift's seqid is an `i32`, and one range keeps the three alike.
const ID_MASK: u64 = 0x7fff_ffff;

/// A protocol the load generator and the echo server speak.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Dubbo2 two-way calls with Hessian2 bodies.
    Dubbo,
    /// Thrift strict binary protocol over the framed transport, with a multiplexed service name.
    Thrift,
    /// bRPC `baidu_std`.
    Brpc,
}

/// A frame the tools cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes are not what the protocol (or the tools' subset of it) allows.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A length field announces more than [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes is over the tools' limit")]
    TooLarge(u64),
    /// The tools' own call could not be written (a payload over the protocol's limit).
    #[error("cannot write the call: {0}")]
    Encode(String),
}

/// What a response says about its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Success, with where the echoed payload sits in the frame.
    Payload(Range<usize>),
    /// The call failed: an error status, an exception, a bRPC error code.
    Refused,
}

/// A response frame, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request id it answers.
    pub id: u64,
    /// Success or failure.
    pub answer: Answer,
}

impl Protocol {
    /// Every protocol, in the order reports list them.
    pub const ALL: [Protocol; 3] = [Protocol::Dubbo, Protocol::Thrift, Protocol::Brpc];

    /// The name the codec registry and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Dubbo => metaprotocol_dubbo::PROTOCOL,
            Protocol::Thrift => metaprotocol_thrift::PROTOCOL,
            Protocol::Brpc => metaprotocol_brpc::PROTOCOL,
        }
    }

    /// The two metadata keys, with the values every call carries, that a benchmark route
    /// matches on.
    pub fn route_keys(self) -> [(&'static str, &'static str); 2] {
        match self {
            Protocol::Dubbo => dubbo::ROUTE_KEYS,
            Protocol::Thrift => thrift::ROUTE_KEYS,
            Protocol::Brpc => brpc::ROUTE_KEYS,
        }
    }

    /// The largest payload a call can carry (Dubbo strings longer than one Hessian2 chunk are
    /// not in the tools' subset).
    pub fn max_payload(self) -> usize {
        match self {
            Protocol::Dubbo => dubbo::MAX_PAYLOAD,
            Protocol::Thrift | Protocol::Brpc => MAX_FRAME_BYTES / 2,
        }
    }

    /// The length of the frame at the start of `buf`: `None` until it is complete.
    pub fn frame_len(self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        let total = match self {
            Protocol::Dubbo => dubbo::frame_len(buf)?,
            Protocol::Thrift => thrift::frame_len(buf)?,
            Protocol::Brpc => brpc::frame_len(buf)?,
        };
        Ok(total.filter(|&total| buf.len() >= total))
    }

    /// A writer of this protocol's calls with `payload_len`-byte payloads.
    pub fn caller(self, payload_len: usize) -> Result<Caller, WireError> {
        if payload_len > self.max_payload() {
            return Err(WireError::Encode(format!(
                "a {payload_len}-byte payload is over {} bytes",
                self.max_payload()
            )));
        }
        let payload = Payload::new(payload_len);
        let protocol = match self {
            Protocol::Dubbo => CallerKind::Dubbo(dubbo::Caller::new(&payload)?),
            Protocol::Thrift => CallerKind::Thrift,
            Protocol::Brpc => CallerKind::Brpc(brpc::Caller::new()),
        };
        Ok(Caller { payload, protocol })
    }

    /// Reads one whole response frame.
    pub fn read_response(self, frame: &Bytes) -> Result<Response, WireError> {
        match self {
            Protocol::Dubbo => dubbo::read_response(frame),
            Protocol::Thrift => thrift::read_response(frame),
            Protocol::Brpc => brpc::read_response(frame),
        }
    }

    /// Appends the echo server's answer to one whole request frame to `out`: the payload
    /// echoed with the same id (nothing for one-way calls; a heartbeat answered as providers do).
    pub fn answer(self, frame: &Bytes, out: &mut BytesMut) -> Result<(), WireError> {
        match self {
            Protocol::Dubbo => dubbo::answer(frame, out),
            Protocol::Thrift => thrift::answer(frame, out),
            Protocol::Brpc => brpc::answer(frame, out),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes one connection's calls and checks their echoed payloads.
#[derive(Debug)]
pub struct Caller {
    payload: Payload,
    protocol: CallerKind,
}

#[derive(Debug)]
enum CallerKind {
    Dubbo(dubbo::Caller),
    Thrift,
    Brpc(brpc::Caller),
}

impl Caller {
    /// Appends call `id` (below 2^31) to `out`.
    pub fn write(&mut self, id: u64, out: &mut BytesMut) -> Result<(), WireError> {
        let payload = self.payload.stamp(id);
        match &mut self.protocol {
            CallerKind::Dubbo(caller) => {
                caller.write(id, payload, out);
                Ok(())
            }
            CallerKind::Thrift => {
                thrift::write_call(id, payload, out);
                Ok(())
            }
            CallerKind::Brpc(caller) => caller.write(id, payload, out),
        }
    }

    /// True if `echoed` is the payload call `id` carried.
    pub fn echoes(&self, id: u64, echoed: &[u8]) -> bool {
        self.payload.matches(id, echoed)
    }
}

/// The payload of a connection's calls: the call's id in hex (its last digits when the payload
/// is shorter than eight bytes), then a fixed run of letters.
#[derive(Debug, Clone)]
pub struct Payload {
    bytes: Vec<u8>,
}

/// Hex digits of an id below 2^31 (as `u32`).
const TAG_LEN: usize = 8;

impl Payload {
    /// A `len`-byte payload.
    pub fn new(len: usize) -> Self {
        let bytes = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        Self { bytes }
    }

    /// The payload of call `id`.
    pub fn stamp(&mut self, id: u64) -> &[u8] {
        let n = self.tag_len();
        self.bytes[..n].copy_from_slice(&tag(id)[TAG_LEN - n..]);
        &self.bytes
    }

    /// True if `echoed` is the payload of call `id`.
    pub fn matches(&self, id: u64, echoed: &[u8]) -> bool {
        let n = self.tag_len();
        echoed.len() == self.bytes.len()
            && echoed[..n] == tag(id)[TAG_LEN - n..]
            && echoed[n..] == self.bytes[n..]
    }

    fn tag_len(&self) -> usize {
        TAG_LEN.min(self.bytes.len())
    }
}

/// `id` (masked to 31 bits) as eight lowercase hex digits.
fn tag(id: u64) -> [u8; TAG_LEN] {
    let mut tag = [0; TAG_LEN];
    for (i, digit) in tag.iter_mut().enumerate() {
        let nibble = (id & ID_MASK) >> (4 * (TAG_LEN - 1 - i)) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    tag
}

/// `header_len + body_len` when it is within [`MAX_FRAME_BYTES`].
fn checked_total(header_len: usize, body_len: u32) -> Result<usize, WireError> {
    let total = header_len as u64 + u64::from(body_len);
    if total > MAX_FRAME_BYTES as u64 {
        return Err(WireError::TooLarge(total));
    }
    Ok(total as usize)
}

/// The big-endian `u32` at `at`.
fn be_u32(buf: &[u8], at: usize) -> Result<u32, WireError> {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(WireError::Malformed("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole exchange: the caller's frame, the echo server's answer, the caller's check.
    fn round_trip(protocol: Protocol, payload_len: usize) -> Result<(), WireError> {
        let mut caller = protocol.caller(payload_len)?;
        let mut wire = BytesMut::new();
        for id in [1, 0x7fff_fffe, 12345] {
            caller.write(id, &mut wire)?;
        }
        let mut answers = BytesMut::new();
        while let Some(len) = protocol.frame_len(&wire)? {
            protocol.answer(&wire.split_to(len).freeze(), &mut answers)?;
        }
        assert!(wire.is_empty());
        for id in [1, 0x7fff_fffe, 12345] {
            let len = protocol
                .frame_len(&answers)?
                .ok_or(WireError::Malformed("short"))?;
            let frame = answers.split_to(len).freeze();
            let response = protocol.read_response(&frame)?;
            assert_eq!(response.id, id);
            let Answer::Payload(range) = response.answer else {
                panic!("{protocol}: refused");
            };
            assert!(caller.echoes(id, &frame[range.clone()]), "{protocol}");
            // An empty payload has no room for the id.
            assert_eq!(caller.echoes(id + 1, &frame[range]), payload_len == 0);
        }
        assert!(answers.is_empty());
        Ok(())
    }

    #[test]
    fn every_protocol_echoes_its_calls() -> Result<(), WireError> {
        for protocol in Protocol::ALL {
            for len in [0, 5, 32, 1024, 40_000.min(protocol.max_payload())] {
                round_trip(protocol, len)?;
            }
        }
        Ok(())
    }

    #[test]
    fn frames_are_whole_before_they_count() -> Result<(), WireError> {
        for protocol in Protocol::ALL {
            let mut wire = BytesMut::new();
            protocol.caller(32)?.write(7, &mut wire)?;
            for cut in 0..wire.len() {
                assert_eq!(
                    protocol.frame_len(&wire[..cut])?,
                    None,
                    "{protocol} at {cut}"
                );
            }
            assert_eq!(protocol.frame_len(&wire)?, Some(wire.len()));
        }
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for protocol in Protocol::ALL {
            let junk = Bytes::from_static(&[0xff; 64]);
            assert!(protocol.frame_len(&junk).is_err(), "{protocol}");
            assert!(protocol.read_response(&junk).is_err(), "{protocol}");
            assert!(protocol.answer(&junk, &mut BytesMut::new()).is_err());
        }
    }

    #[test]
    fn the_payload_tag_is_the_id_in_hex() {
        let mut payload = Payload::new(12);
        assert_eq!(payload.stamp(0xbeef), b"0000beefijkl");
        assert_eq!(Payload::new(3).stamp(0xbeef), b"eef");
    }
}
