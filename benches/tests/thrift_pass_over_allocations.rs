//! The Thrift codec's heap allocations per message passed over (a message larger than the frame
//! limit, walked or counted as it arrives and dropped), counted by the counting allocator: once
//! a connection has passed over one, the next cost none, but for the call a passed-over request
//! becomes (its own frame, the message header, which its answer is made of). Apart from
//! `allocations.rs`, whose test counts the engine's threads: each test binary counts alone.

use bytes::BytesMut;
use metaprotocol_benches::alloc::{CountingAlloc, Counts, count_this_thread};
use metaprotocol_core::{Codec, PassedOver, Side};
use metaprotocol_thrift::{FormatChoice, ThriftCodec};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Messages counted, after as many to warm up.
const MESSAGES: u64 = 200;
/// The codecs' frame limit: every message below is larger.
const MAX_FRAME_BYTES: usize = 64;

/// A strict binary message of `message_type` (1 call, 2 reply) named `m`, seqid 7, whose struct
/// holds a string of 200 bytes as field 1 (framed: behind its length).
fn message(message_type: u8, framed: bool) -> Vec<u8> {
    let mut message = vec![0x80, 1, 0, message_type, 0, 0, 0, 1, b'm', 0, 0, 0, 7];
    message.extend_from_slice(&[11, 0, 1, 0, 0, 0, 200]);
    message.extend_from_slice(&[b'x'; 200]);
    message.push(0);
    if framed {
        let mut frame = (message.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&message);
        return frame;
    }
    message
}

/// Passes over `bytes`, one message, given in reads of `read` bytes: its length.
fn pass_over(codec: &mut ThriftCodec, bytes: &[u8], read: usize) -> Result<usize, String> {
    let mut at = 0;
    for chunk in bytes.chunks(read) {
        match codec.pass_over(chunk) {
            Some(PassedOver::More) => at += chunk.len(),
            Some(PassedOver::End { len, .. }) => return Ok(at + len),
            None => return Err("refused".to_owned()),
        }
    }
    Err("no end".to_owned())
}

/// What `pass` allocates over [`MESSAGES`] calls, after as many to warm up.
fn allocations(mut pass: impl FnMut() -> Result<(), String>) -> Result<u64, String> {
    for _ in 0..MESSAGES {
        pass()?;
    }
    let before = Counts::now();
    for _ in 0..MESSAGES {
        pass()?;
    }
    Ok(Counts::now().since(before).marked)
}

#[test]
fn messages_passed_over_allocate_nothing_but_a_calls_own_frame() -> TestResult {
    count_this_thread();
    for framed in [true, false] {
        // Answers, whole or in reads of 24 bytes (the first holds the message header, as the
        // engine sees to; the string is cut).
        let reply = message(2, framed);
        for read in [reply.len(), 24] {
            let mut upstream =
                ThriftCodec::for_side(Side::Upstream, FormatChoice::default(), MAX_FRAME_BYTES);
            let made = allocations(|| {
                let len = pass_over(&mut upstream, &reply, read)?;
                (len == reply.len())
                    .then_some(())
                    .ok_or_else(|| format!("{len}"))
            })?;
            assert_eq!(made, 0, "a reply, framed {framed}, reads of {read}");
        }
        // A call becomes the call its answer is made of, decoded next: its frame, one
        // allocation, is all.
        let call = message(1, framed);
        let mut downstream =
            ThriftCodec::for_side(Side::Downstream, FormatChoice::default(), MAX_FRAME_BYTES);
        let mut empty = BytesMut::new();
        let made = allocations(|| {
            pass_over(&mut downstream, &call, call.len())?;
            let passed = downstream.decode(&mut empty).map_err(|e| e.to_string())?;
            passed
                .filter(|call| call.reject_reason.is_some())
                .map(drop)
                .ok_or_else(|| "no call passed over".to_owned())
        })?;
        assert_eq!(made, MESSAGES, "a call, framed {framed}");
    }
    Ok(())
}
