//! Passing over a message too large to decode, a read at a time, without holding it (see
//! [`metaprotocol_core::Codec::pass_over`]).
//!
//! A framed or THeader message ends where its length says: its bytes are counted. An unframed
//! message has no length: it ends where the walk of its struct ends. A message
//! over the frame size cap is walked on as its bytes arrive, and the engine drops each read
//! once walked. Between reads the codec keeps the walk (its levels are inline), the number
//! of bytes still to come of a string cut by the read's end, and the start of any other value
//! cut by it: a few bytes ([`CARRY`] at most; the longest is a compact field header and a
//! UUID). Downstream, a call's head (up to the end of its message header) is kept too, for its
//! answer: the engine asks for the call once it has passed, and answers it with a
//! `TApplicationException`.

use bytes::{BufMut, Bytes, BytesMut};
use metaprotocol_core::{MAX_FRAME_HEAD, PassedOver, Side};
use smallvec::SmallVec;

use crate::decode::length_prefixed_head;
use crate::format::{Protocol, ThriftFormat, Transport};
use crate::protocol::{self, Checkpoint, MessageHeader, ValueType};
use crate::wire::{Cursor, ReadError};

/// The most bytes of a value cut by the end of a read that are kept for the next: more than
/// any value but a string takes (strings are counted, not kept).
const CARRY: usize = 32;

/// A message being passed over.
#[derive(Clone, Debug)]
pub(crate) struct Passing {
    progress: Progress,
    /// The request a `REPLY` or `EXCEPTION` answers (its seqid).
    answers: Option<u64>,
    /// On the downstream side, a call's format and head, up to the end of its message header,
    /// with an empty argument struct: the call to answer once it has passed.
    call: Option<(ThriftFormat, Bytes)>,
}

/// How far a message being passed over has come.
#[derive(Clone, Debug)]
enum Progress {
    /// A length-prefixed frame: its bytes still to come.
    Counted(u64),
    /// An unframed message: its struct's walk.
    Walked(Box<Walk>),
}

/// Where the walk through an unframed message stands between reads.
#[derive(Clone, Debug)]
struct Walk {
    protocol: Protocol,
    walk: protocol::walk::Walk,
    /// The walk's reader state: its position is set at each read, its `overrun` is the bytes
    /// of a cut string still to pass.
    at: Checkpoint,
    /// The start of a value the last read cut (not a string's).
    carry: SmallVec<[u8; CARRY]>,
}

impl Passing {
    /// The `transport` message at the front of `src`, and where in `src` what is passed over
    /// starts (the frame, or the unframed message's struct): `None` unless its message header
    /// is in `src`, within [`MAX_FRAME_HEAD`] bytes.
    pub(crate) fn start(src: &[u8], transport: Transport, side: Side) -> Option<(Self, usize)> {
        let (protocol, header, progress, from) = match transport {
            Transport::Unframed => {
                let (protocol, header) = head(src).ok()?;
                let walk = Walk {
                    protocol,
                    walk: protocol::walk::Walk::of(ValueType::Struct),
                    at: Checkpoint::at(header.body_start),
                    carry: SmallVec::new(),
                };
                let from = header.body_start;
                (protocol, header, Progress::Walked(Box::new(walk)), from)
            }
            Transport::Framed | Transport::Header => {
                let (protocol, header, len) = length_prefixed_head(src, transport, None).ok()?;
                (protocol, header, Progress::Counted(len), 0)
            }
        };
        let format = ThriftFormat::new(transport, protocol);
        let answers = header
            .message_type
            .answers()
            .then_some(u64::from(header.seqid as u32));
        let call = match src.get(..header.body_start) {
            Some(head) if !header.message_type.answers() && side == Side::Downstream => {
                Some((format, empty_call(head, transport)?))
            }
            _ => None,
        };
        let passing = Self {
            progress,
            answers,
            call,
        };
        Some((passing, from))
    }

    /// The call to answer, once the message has passed (downstream, a call's).
    pub(crate) fn call(&self) -> Option<(ThriftFormat, Bytes)> {
        self.call.clone()
    }

    /// Passes the message on through `src` (one read, the message's from `from`): what
    /// [`metaprotocol_core::Codec::pass_over`] says of it, or `None` when an unframed message
    /// is malformed (its end cannot be found).
    pub(crate) fn feed(&mut self, src: &[u8], from: usize) -> Option<PassedOver> {
        let end = match &mut self.progress {
            Progress::Counted(left) => {
                let here = src.len().saturating_sub(from) as u64;
                if *left > here {
                    *left -= here;
                    return Some(PassedOver::More);
                }
                from + usize::try_from(*left).ok()?
            }
            Progress::Walked(walk) => match walk.feed(src, from)? {
                Some(end) => end,
                None => return Some(PassedOver::More),
            },
        };
        Some(PassedOver::End {
            len: end,
            request_id: self.answers,
        })
    }
}

impl Walk {
    /// Walks on through `src` from `from`: where the message ends in it, `None` inside when
    /// it goes on past it, `None` when it is malformed.
    fn feed(&mut self, src: &[u8], mut from: usize) -> Option<Option<usize>> {
        loop {
            let skipped = self.at.overrun.min(src.len().saturating_sub(from));
            self.at.overrun -= skipped;
            from += skipped;
            if self.at.overrun > 0 {
                return Some(None);
            }
            if self.carry.is_empty() {
                self.at.position = from;
                return match protocol::pass(self.protocol, &mut self.walk, src, &mut self.at) {
                    Ok(()) => Some(Some(self.at.position)),
                    Err(ReadError::Incomplete) if self.at.overrun == 0 => {
                        self.keep(src.get(self.at.position..)?)?;
                        Some(None)
                    }
                    Err(ReadError::Incomplete) => Some(None),
                    Err(ReadError::Codec(_)) => None,
                };
            }
            // The value cut by the last read, read again from its start with what follows.
            let mut joined = [0u8; 2 * CARRY];
            let kept = self.carry.len();
            let rest = src.get(from..)?;
            let taken = rest.len().min(joined.len() - kept);
            joined.get_mut(..kept)?.copy_from_slice(&self.carry);
            joined
                .get_mut(kept..kept + taken)?
                .copy_from_slice(rest.get(..taken)?);
            let joined = joined.get(..kept + taken)?;
            self.at.position = 0;
            match protocol::pass(self.protocol, &mut self.walk, joined, &mut self.at) {
                Ok(()) => return Some(Some((from + self.at.position).checked_sub(kept)?)),
                // Cut again: the read held no more than was joined.
                Err(ReadError::Incomplete) if self.at.position < kept => {
                    if taken < rest.len() {
                        return None;
                    }
                    self.keep(joined.get(self.at.position..)?)?;
                    return Some(None);
                }
                Err(ReadError::Incomplete) => {
                    from += self.at.position - kept;
                    self.carry.clear();
                }
                Err(ReadError::Codec(_)) => return None,
            }
        }
    }

    /// Keeps `cut`, the start of a value cut by the end of a read; `None` if it is longer
    /// than any such value.
    fn keep(&mut self, cut: &[u8]) -> Option<()> {
        if cut.len() > CARRY {
            return None;
        }
        self.carry.clear();
        self.carry.extend_from_slice(cut);
        Some(())
    }
}

/// `head`, the head of a `transport` call up to the end of its message header, as a call with
/// an empty argument struct (length-prefixed: its length patched to fit).
fn empty_call(head: &[u8], transport: Transport) -> Option<Bytes> {
    let mut call = BytesMut::with_capacity(head.len() + 1);
    call.extend_from_slice(head);
    // The stop byte of an empty struct, in both protocols.
    call.put_u8(0);
    if transport != Transport::Unframed {
        let len = u32::try_from(call.len().checked_sub(4)?).ok()?;
        call.get_mut(..4)?.copy_from_slice(&len.to_be_bytes());
    }
    Some(call.freeze())
}

/// The protocol and message header of the unframed message at the front of `src`:
/// [`ReadError::Incomplete`] until it is in, an error if it does not lie within
/// [`MAX_FRAME_HEAD`] bytes.
pub(crate) fn head(src: &[u8]) -> Result<(Protocol, MessageHeader), ReadError> {
    let protocol = Protocol::of_message_starting_with(*src.first().ok_or(ReadError::Incomplete)?);
    let mut cursor = Cursor::new(src, 0, MAX_FRAME_HEAD);
    let header = protocol::read_message_header(protocol, &mut cursor)?;
    Ok((protocol, header))
}
