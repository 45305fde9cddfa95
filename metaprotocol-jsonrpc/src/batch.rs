//! JSON-RPC 2.0 batches: a client's array of calls, handed to the engine a call at a time
//! ([`Split`]), each routed, filtered and authorized as a lone call is, and their answers
//! gathered into one array ([`Gather`]).
//!
//! The two codecs of a connection share nothing, so what the encoder needs travels in each
//! call's request id, which the engine hands back to the encoder with the call's answer (a lone
//! call's is 0): the batch's number times 2^16, plus how many answers the batch wants (its
//! calls with an id, and its elements that are no call, which JSON-RPC answers with an error
//! each). The encoder gathers a batch's answers in the order they come (JSON-RPC 2.0 allows
//! any) and writes the array once the last is in.

use std::collections::HashMap;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use metaprotocol_core::{CodecError, MAX_UNSENT_ANSWER_BYTES};

use crate::line::{Calls, Line};

/// The request id of a call that is no batch's.
pub(crate) const LONE: u64 = 0;

/// The most calls a listener may take in one batch (`max_batch_calls`): as many as a client
/// connection has in flight, past which the engine reads no more calls until some end.
pub(crate) const MAX_CALLS_LIMIT: usize = 4096;

/// The most bytes of answers a connection's unfinished batches hold, whatever the listener's
/// `max_frame_bytes`: half the engine's limit on a connection's unsent answers, past which it
/// deems the client gone and closes the connection. A batch's line, written at once, leaves
/// the other half to the answers already waiting.
pub(crate) const MAX_HELD: usize = MAX_UNSENT_ANSWER_BYTES / 2;

/// The bits of a batch call's request id that count the answers its batch wants.
const ANSWERS_BITS: u32 = 16;

/// A batch whose calls are being handed to the engine.
#[derive(Debug)]
pub(crate) struct Split {
    /// The batch's line, without its newline; each call's frame is a slice of it.
    line: Bytes,
    calls: std::vec::IntoIter<(Range<usize>, Line)>,
    /// The request id of each of its calls.
    id: u64,
}

impl Split {
    /// The batch numbered `number` on its connection, whose `calls` sit in `line`.
    pub(crate) fn new(line: Bytes, calls: Calls, number: u64) -> Self {
        let answers = calls.iter().filter(|(_, call)| wants_answer(call)).count() as u64;
        Self {
            line,
            calls: calls.into_iter(),
            id: number << ANSWERS_BITS | answers,
        }
    }

    /// The next call: its frame, what it is, and its request id.
    pub(crate) fn next(&mut self) -> Option<(Bytes, Line, u64)> {
        let (range, call) = self.calls.next()?;
        Some((self.line.slice(range), call, self.id))
    }

    /// True once every call was handed over.
    pub(crate) fn is_done(&self) -> bool {
        self.calls.len() == 0
    }
}

/// True if JSON-RPC answers `call`: a call with an id, or an element that is no call.
fn wants_answer(call: &Line) -> bool {
    !matches!(call, Line::Request { id: None, .. })
}

/// The answers of a connection's batches still waiting for some.
#[derive(Debug, Default)]
pub(crate) struct Gather {
    batches: HashMap<u64, Answers>,
    /// The bytes held for all of them.
    held: usize,
}

/// One batch's answers so far.
#[derive(Debug)]
struct Answers {
    /// `[` and the answers so far, separated by commas.
    array: BytesMut,
    /// The answers still to come.
    left: u64,
    /// The bytes of the array the answers so far stand for: their own.
    shares: usize,
}

impl Gather {
    /// The bytes held for the batches still waiting.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Adds the answer `write` appends (one JSON value, a line's end after it left off) to the
    /// array of the batch whose calls have request id `id`; once it is the batch's last,
    /// appends the array to `dst`, as one line. An answer `write` fails to write is not one.
    ///
    /// Returns the bytes of the array the answer stands for: its own, and for the last the
    /// rest too (the brackets, the commas and the line's end), so that a batch's answers add
    /// up to the line its client gets.
    pub(crate) fn add(
        &mut self,
        id: u64,
        dst: &mut BytesMut,
        write: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
    ) -> Result<usize, CodecError> {
        let answers = self.batches.entry(id).or_insert_with(|| Answers {
            array: BytesMut::from(&b"["[..]),
            left: id & ((1 << ANSWERS_BITS) - 1),
            shares: 0,
        });
        let start = answers.array.len();
        if start > 1 {
            answers.array.put_u8(b',');
        }
        if let Err(err) = write(&mut answers.array) {
            answers.array.truncate(start);
            return Err(err);
        }
        let end = answers.array.len()
            - answers
                .array
                .iter()
                .rev()
                .take_while(|b| matches!(b, b'\n' | b'\r'))
                .count();
        answers.array.truncate(end);
        self.held += end - start;
        let own = end - start - usize::from(start > 1);
        answers.shares += own;
        answers.left = answers.left.saturating_sub(1);
        if answers.left == 0
            && let Some(mut answers) = self.batches.remove(&id)
        {
            // All but the `[`, which `held` does not count.
            self.held -= answers.array.len() - 1;
            answers.array.put_slice(b"]\n");
            dst.put_slice(&answers.array);
            return Ok(own + answers.array.len() - answers.shares);
        }
        Ok(own)
    }
}
