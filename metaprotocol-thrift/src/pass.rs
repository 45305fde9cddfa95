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
//! `TApplicationException` (a one-way call, with nothing). A zlib THeader call's head is kept
//! rebuilt without the transform, its message's first bytes inflated (no more than a frame's
//! head), so that it is named, and a one-way call told from a call; one whose first bytes do
//! not inflate to a message header is not passed over. A connection keeps what it passes over with for its next message
//! too large to decode: passing over costs no allocation after its first, but a call's frame.

use bytes::Bytes;
use metaprotocol_core::{MAX_FRAME_HEAD, PassedOver, Side};
use smallvec::SmallVec;

use crate::decode::{ZlibHead, length_prefixed_head};
use crate::format::{Protocol, ThriftFormat, Transport};
use crate::protocol::{self, Checkpoint, MessageHeader, ValueType};
use crate::wire::{Cursor, ReadError};

/// The most bytes of a value cut by the end of a read that are kept for the next: more than
/// any value but a string takes (strings are counted, not kept).
const CARRY: usize = 32;

/// The messages of one connection being passed over, one at a time.
///
/// Kept by its connection once used, with the walk of an unframed message: a connection that
/// passes over one message is likely to pass over more, and each would otherwise cost their
/// allocations.
#[derive(Clone, Debug, Default)]
pub(crate) struct Passing {
    progress: Progress,
    /// The walk through an unframed message (boxed: its levels are inline), kept for the next.
    walk: Option<Box<Walk>>,
    /// The request a `REPLY` or `EXCEPTION` answers (its seqid).
    answers: Option<u64>,
    /// On the downstream side, a call's format and head, up to the end of its message header,
    /// with an empty argument struct: the call to answer once it has passed.
    call: Option<(ThriftFormat, Bytes)>,
}

/// How far the message being passed over has come.
#[derive(Clone, Copy, Debug, Default)]
enum Progress {
    /// None is being passed over.
    #[default]
    Idle,
    /// A length-prefixed frame: its bytes still to come.
    Counted(u64),
    /// An unframed message: its struct's walk ([`Passing::walk`]).
    Walked,
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
    /// Passes over the message too large to decode at the front of the stream, one read
    /// (`src`) at a time (see [`metaprotocol_core::Codec::pass_over`]): the first read starts
    /// with the message, whose `transport` only it needs. `None` when its message header is
    /// not in the first read within [`MAX_FRAME_HEAD`] bytes, or an unframed message's struct
    /// is malformed (its end cannot be found); the next read then starts another message.
    pub(crate) fn pass(
        &mut self,
        src: &[u8],
        transport: Option<Transport>,
        side: Side,
        zlib_head: &ZlibHead,
    ) -> Option<PassedOver> {
        let from = match self.progress {
            Progress::Idle => self.start(src, transport?, side, zlib_head)?,
            Progress::Counted(_) | Progress::Walked => 0,
        };
        let passed = self.feed(src, from);
        if !matches!(passed, Some(PassedOver::More)) {
            self.progress = Progress::Idle;
        }
        passed
    }

    /// The call to answer, once the message has passed (downstream, a call's).
    pub(crate) fn take_call(&mut self) -> Option<(ThriftFormat, Bytes)> {
        self.call.take()
    }

    /// Starts passing over the `transport` message at the front of `src`: where in `src` what
    /// is passed over starts (the frame, or the unframed message's struct).
    fn start(
        &mut self,
        src: &[u8],
        transport: Transport,
        side: Side,
        zlib_head: &ZlibHead,
    ) -> Option<usize> {
        let (protocol, header, progress, from, inflated) = match transport {
            Transport::Unframed => {
                let (protocol, header) = head(src).ok()?;
                let walk = Walk::new(protocol, header.body_start);
                match self.walk.as_deref_mut() {
                    Some(kept) => *kept = walk,
                    None => self.walk = Some(Box::new(walk)),
                }
                let from = header.body_start;
                (protocol, header, Progress::Walked, from, None)
            }
            Transport::Framed | Transport::Header => {
                let head = length_prefixed_head(src, transport, None, zlib_head).ok()?;
                let progress = Progress::Counted(head.len);
                (head.protocol, head.header, progress, 0, head.inflated)
            }
        };
        let format = ThriftFormat::new(transport, protocol);
        // A zlib call's head is kept inflated, without the transform: its message header.
        let head = inflated.as_deref().unwrap_or(src);
        self.call = match head.get(..header.body_start) {
            Some(head) if !header.message_type.answers() && side == Side::Downstream => {
                Some((format, empty_call(head, transport)?))
            }
            _ => None,
        };
        self.answers = header
            .message_type
            .answers()
            .then_some(u64::from(header.seqid as u32));
        self.progress = progress;
        Some(from)
    }

    /// Passes the message on through `src` (one read, the message's from `from`): what
    /// [`metaprotocol_core::Codec::pass_over`] says of it, or `None` when an unframed message
    /// is malformed (its end cannot be found).
    fn feed(&mut self, src: &[u8], from: usize) -> Option<PassedOver> {
        let end = match &mut self.progress {
            Progress::Idle => return None,
            Progress::Counted(left) => {
                let here = src.len().saturating_sub(from) as u64;
                if *left > here {
                    *left -= here;
                    return Some(PassedOver::More);
                }
                from + usize::try_from(*left).ok()?
            }
            Progress::Walked => match self.walk.as_deref_mut()?.feed(src, from)? {
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
    /// The walk through an unframed message of `protocol` whose struct starts at `start`.
    fn new(protocol: Protocol, start: usize) -> Self {
        Self {
            protocol,
            walk: protocol::walk::Walk::of(ValueType::Struct),
            at: Checkpoint::at(start),
            carry: SmallVec::new(),
        }
    }

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

/// The most bytes of a call's head kept inline in its frame's allocation; nearly every call's
/// head is shorter (a longer one costs a second allocation).
const HEAD_INLINE: usize = 128;

/// `head`, the head of a `transport` call up to the end of its message header, as a call with
/// an empty argument struct (length-prefixed: its length patched to fit).
///
/// Its bytes are held inline by the frame's owner: the frame is then one allocation. A frame
/// made of a `Vec` is a second once its message shares it (`Bytes` then moves the `Vec` behind a
/// shared header).
fn empty_call(head: &[u8], transport: Transport) -> Option<Bytes> {
    let mut call = SmallVec::<[u8; HEAD_INLINE]>::with_capacity(head.len() + 1);
    call.extend_from_slice(head);
    // The stop byte of an empty struct, in both protocols.
    call.push(0);
    if transport != Transport::Unframed {
        let len = u32::try_from(call.len().checked_sub(4)?).ok()?;
        call.get_mut(..4)?.copy_from_slice(&len.to_be_bytes());
    }
    Some(Bytes::from_owner(call))
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
