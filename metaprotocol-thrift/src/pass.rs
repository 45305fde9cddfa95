//! Passing over an unframed message too large to decode, a read at a time, without holding it
//! (see [`metaprotocol_core::Codec::pass_over`]).
//!
//! An unframed message has no length: it ends where the walk of its struct ends. A message
//! over the frame size cap is walked on as its bytes arrive, and the engine drops each read
//! once walked. Between reads the codec keeps the walk (its levels are inline), the number
//! of bytes still to come of a string cut by the read's end, and the start of any other value
//! cut by it: a few bytes ([`CARRY`] at most; the longest is a compact field header and a
//! UUID). A call's message header is kept too, for its answer: the engine asks for the call
//! once it has passed, and answers it with a `TApplicationException`.

use bytes::{BufMut, Bytes, BytesMut};
use metaprotocol_core::{MAX_FRAME_HEAD, PassedOver, Side};
use smallvec::SmallVec;

use crate::format::Protocol;
use crate::protocol::walk::Walk;
use crate::protocol::{self, Checkpoint, MessageType, ValueType};
use crate::wire::{Cursor, ReadError};

/// The most bytes of a value cut by the end of a read that are kept for the next: more than
/// any value but a string takes (strings are counted, not kept).
const CARRY: usize = 32;

/// An unframed message being passed over.
#[derive(Clone, Debug)]
pub(crate) struct Passing {
    protocol: Protocol,
    walk: Walk,
    /// The walk's reader state between reads: its position is set at each read, its
    /// `overrun` is the bytes of a cut string still to pass.
    at: Checkpoint,
    /// The start of a value the last read cut (not a string's).
    carry: SmallVec<[u8; CARRY]>,
    /// The request a `REPLY` or `EXCEPTION` answers (its seqid).
    answers: Option<u64>,
    /// On the downstream side, a call's message header and an empty argument struct: the
    /// call to answer once it has passed.
    call: Option<Bytes>,
}

impl Passing {
    /// The message at the front of `src`, and where its struct starts: `None` unless its
    /// message header is in `src`, within [`MAX_FRAME_HEAD`] bytes.
    pub(crate) fn start(src: &[u8], side: Side) -> Option<(Self, usize)> {
        let (protocol, header) = head(src).ok()?;
        let answers = matches!(
            header.message_type,
            MessageType::Reply | MessageType::Exception
        )
        .then_some(u64::from(header.seqid as u32));
        let is_call = matches!(header.message_type, MessageType::Call | MessageType::Oneway);
        let call = match src.get(..header.body_start) {
            Some(head) if is_call && side == Side::Downstream => {
                let mut call = BytesMut::with_capacity(head.len() + 1);
                call.extend_from_slice(head);
                // The stop byte of an empty struct, in both protocols.
                call.put_u8(0);
                Some(call.freeze())
            }
            _ => None,
        };
        let passing = Self {
            protocol,
            walk: Walk::of(ValueType::Struct),
            at: Checkpoint::at(header.body_start),
            carry: SmallVec::new(),
            answers,
            call,
        };
        Some((passing, header.body_start))
    }

    /// The call to answer, once the message has passed (downstream, a call's).
    pub(crate) fn call(&self) -> Option<(Protocol, Bytes)> {
        self.call.clone().map(|call| (self.protocol, call))
    }

    /// Walks the message on through `src` (one read, the message's from `from`): what
    /// [`metaprotocol_core::Codec::pass_over`] says of it, or `None` when the message is
    /// malformed (its end cannot be found).
    pub(crate) fn feed(&mut self, src: &[u8], mut from: usize) -> Option<PassedOver> {
        loop {
            let skipped = self.at.overrun.min(src.len().saturating_sub(from));
            self.at.overrun -= skipped;
            from += skipped;
            if self.at.overrun > 0 {
                return Some(PassedOver::More);
            }
            if self.carry.is_empty() {
                self.at.position = from;
                return match protocol::pass(self.protocol, &mut self.walk, src, &mut self.at) {
                    Ok(()) => Some(self.end(self.at.position)),
                    Err(ReadError::Incomplete) if self.at.overrun == 0 => {
                        self.keep(src.get(self.at.position..)?)?;
                        Some(PassedOver::More)
                    }
                    Err(ReadError::Incomplete) => Some(PassedOver::More),
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
                Ok(()) => return Some(self.end((from + self.at.position).checked_sub(kept)?)),
                // Cut again: the read held no more than was joined.
                Err(ReadError::Incomplete) if self.at.position < kept => {
                    if taken < rest.len() {
                        return None;
                    }
                    self.keep(joined.get(self.at.position..)?)?;
                    return Some(PassedOver::More);
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

    fn end(&self, len: usize) -> PassedOver {
        PassedOver::End {
            len,
            request_id: self.answers,
        }
    }
}

/// The protocol and message header of the unframed message at the front of `src`:
/// [`ReadError::Incomplete`] until it is in, an error if it does not lie within
/// [`MAX_FRAME_HEAD`] bytes.
pub(crate) fn head(src: &[u8]) -> Result<(Protocol, protocol::MessageHeader), ReadError> {
    let protocol = Protocol::of_message_starting_with(*src.first().ok_or(ReadError::Incomplete)?);
    let mut cursor = Cursor::new(src, 0, MAX_FRAME_HEAD);
    let header = protocol::read_message_header(protocol, &mut cursor)?;
    Ok((protocol, header))
}
