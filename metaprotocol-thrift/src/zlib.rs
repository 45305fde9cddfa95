//! The zlib THeader transform (id 1), undone: a frame whose message is compressed is rebuilt
//! as the same frame with no transform and its message inflated.
//!
//! What the proxy forwards is then read by every THeader server, and what it answers by every
//! THeader client: Apache Thrift's readers (C++, Python, Go) undo the transforms each frame
//! names, and its servers answer with the transforms they are set up to write, not those of
//! the call. The proxy rewrites seqids and may edit headers, so a forwarded frame is rewritten
//! anyway; its message travels uncompressed on the proxy's own connections.
//!
//! Inflation is bounded by the frame size cap: a message that inflates past it (a zlib bomb)
//! stops there, and what came out before tells which call it was. So is the memory it takes:
//! the rebuilt frame's room grows no further than the cap, and is trimmed to little more than
//! its bytes, since the engine counts a message's length alone against `max_buffered_bytes`
//! while its call is in flight.

use bytes::BufMut;
use flate2::{Decompress, FlushDecompress, Status};
use metaprotocol_core::CodecError;

use crate::theader::{BLOCK_START, HeaderBlock, MAGIC};
use crate::wire::{patch, put_varint};

/// The first room given to the inflated message, in multiples of its compressed size (zlib
/// shrinks Thrift messages a few times at most); it doubles from there as needed, never past
/// the cap.
const FIRST_GUESS_RATIO: usize = 4;

/// How much room past its bytes a rebuilt frame may keep, as a share of them (1/4): more is
/// given back, at the cost of a copy.
const SLACK_SHARE: usize = 4;

/// The least room made for inflated bytes at a time.
const MIN_ROOM: usize = 256;

#[cfg(test)]
thread_local! {
    /// How many bytes the inflations run on this thread wrote: what tests count the work by.
    pub(crate) static INFLATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A THeader frame rebuilt without its zlib transform, and whether all of its message is in.
pub(crate) struct Inflated {
    /// The rebuilt frame, length prefix patched to what it holds; its capacity is at most a
    /// quarter more than its length.
    pub(crate) frame: Vec<u8>,
    /// Why only a prefix of the message is in, if it is not whole.
    pub(crate) cut: Option<Cut>,
}

/// Why an inflated message is not whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// It inflates past the frame size cap: the frame holds its first bytes, up to the cap.
    TooLarge,
    /// The zlib data is corrupt: the frame holds what inflated before.
    Corrupt,
    /// The zlib data ends before its stream does (cut short, or only the first bytes of a
    /// frame are in): the frame holds what inflated of it.
    Short,
}

impl Cut {
    /// The `reject_reason` of a call cut so.
    pub(crate) fn reject_reason(self) -> &'static str {
        match self {
            Self::TooLarge => crate::decode::INFLATES_TOO_LARGE,
            Self::Corrupt | Self::Short => crate::decode::ZLIB_CORRUPT,
        }
    }

    /// The error of a stream that cannot go on past an answer cut so.
    pub(crate) fn error(self, max_frame_bytes: usize) -> CodecError {
        match self {
            Self::TooLarge => CodecError::FrameTooLarge {
                size: max_frame_bytes as u64 + 1,
                max: max_frame_bytes,
            },
            Self::Corrupt | Self::Short => {
                CodecError::malformed("a THeader answer's zlib data is corrupt or cut short")
            }
        }
    }
}

/// Rebuilds `frame` (a THeader frame, length prefix included, which `block` describes and
/// whose message is compressed by zlib alone) with no transform and its message inflated, the
/// whole frame at most `max_frame_bytes` after its length prefix. `frame` may be the first
/// bytes of a frame alone (its header block whole): what they inflate to is then cut
/// ([`Cut::Short`]).
///
/// Never inlined: inflating needs tens of KiB of stack (the decompressor's state), and inlined
/// into the decoder it made every frame's decode probe that much stack, compressed or not (56
/// instructions a frame, on the request path of every Thrift call).
#[cold]
#[inline(never)]
pub(crate) fn inflate(frame: &[u8], block: &HeaderBlock, max_frame_bytes: usize) -> Inflated {
    let compressed = frame.get(block.payload_start..).unwrap_or_default();
    // The frame, inflated, may hold at most `max_frame_bytes` after its length prefix, and
    // one byte more tells a message that passes them.
    let mut out = rebuilt_head(
        frame,
        block,
        compressed
            .len()
            .saturating_mul(FIRST_GUESS_RATIO)
            .min(max_frame_bytes.saturating_add(1)),
    );
    let limit = max_frame_bytes.saturating_sub(out.len() - 4);
    let cut = inflate_into(&mut Decompress::new(true), compressed, &mut out, limit);
    if out.capacity() - out.len() > out.len() / SLACK_SHARE {
        out.shrink_to_fit();
    }
    patch_length(&mut out);
    Inflated { frame: out, cut }
}

/// The first bytes of a zlib THeader frame too large to decode, inflated as they arrive: each
/// compressed byte once, however many reads bring them, to no more than
/// [`MAX_FRAME_HEAD`](metaprotocol_core::MAX_FRAME_HEAD) bytes of rebuilt frame.
pub(crate) struct HeadInflation {
    stream: Decompress,
    /// The frame's fixed fields (length prefix to header length), which tell its frame.
    fixed: [u8; BLOCK_START],
    /// The head rebuilt without the transform ([`inflate`]), length prefix patched to what it
    /// holds, and its message's first bytes inflated.
    pub(crate) frame: Vec<u8>,
    pub(crate) payload_start: usize,
    /// Why the message is not whole; [`Cut::Short`] while more of it may come.
    pub(crate) cut: Option<Cut>,
}

impl std::fmt::Debug for HeadInflation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadInflation")
            .field("fed", &self.stream.total_in())
            .field("frame", &self.frame.len())
            .field("cut", &self.cut)
            .finish_non_exhaustive()
    }
}

impl HeadInflation {
    /// Starts inflating the zlib THeader frame whose first bytes are `head` (its header block
    /// whole, which `block` describes).
    #[cold]
    #[inline(never)]
    pub(crate) fn new(head: &[u8], block: &HeaderBlock) -> Self {
        let frame = rebuilt_head(head, block, MIN_ROOM);
        Self {
            stream: Decompress::new(true),
            fixed: head.first_chunk().copied().unwrap_or_default(),
            payload_start: frame.len(),
            frame,
            cut: Some(Cut::Short),
        }
    }

    /// Whether `head` is the first bytes of the frame it inflates, as many as it read or more.
    pub(crate) fn continues(&self, head: &[u8], block: &HeaderBlock) -> bool {
        head.first_chunk() == Some(&self.fixed)
            && usize::try_from(self.stream.total_in())
                .is_ok_and(|fed| block.payload_start + fed <= head.len())
    }

    /// Inflates the bytes of `head` (the frame's first bytes, more of them than last time)
    /// after those already inflated, while more may come.
    #[cold]
    #[inline(never)]
    pub(crate) fn feed(&mut self, head: &[u8], block: &HeaderBlock) {
        if self.cut != Some(Cut::Short) {
            return;
        }
        let compressed = head.get(block.payload_start..).unwrap_or_default();
        let limit = metaprotocol_core::MAX_FRAME_HEAD.saturating_sub(self.payload_start - 4);
        self.cut = inflate_into(&mut self.stream, compressed, &mut self.frame, limit);
        patch_length(&mut self.frame);
    }
}

/// The fixed fields and header block of THeader `frame` (described by `block`), rebuilt
/// without the zlib transform, in room for `message` bytes of message more.
fn rebuilt_head(frame: &[u8], block: &HeaderBlock, message: usize) -> Vec<u8> {
    let headers = frame.get(block.info.clone()).unwrap_or_default();
    let mut out = Vec::with_capacity(block.payload_start + message);
    // The same fixed fields and info headers, the transform list empty.
    out.put_u32(0);
    out.extend_from_slice(&MAGIC);
    out.put_u16(block.flags);
    out.put_u32(block.seq);
    out.put_u16(0);
    put_varint(
        &mut out,
        u64::from(crate::theader::protocol_id(block.protocol)),
    );
    put_varint(&mut out, 0);
    out.extend_from_slice(headers);
    let padding = (4 - (out.len() - BLOCK_START) % 4) % 4;
    out.put_bytes(0, padding);
    // Never longer than the block it comes from, which had a transform more.
    let words = ((out.len() - BLOCK_START) / 4) as u16;
    patch(&mut out, BLOCK_START - 2, &words.to_be_bytes());
    out
}

/// Sets the length prefix of `frame` to what it holds.
fn patch_length(frame: &mut [u8]) {
    let len = u32::try_from(frame.len() - 4).unwrap_or(u32::MAX);
    patch(frame, 0, &len.to_be_bytes());
}

/// Appends the inflation of the zlib stream `compressed` to `out`, from where `stream` stopped
/// (its bytes read, and written to `out` from `out.len() - stream.total_out()`), at most
/// `limit` bytes of it in all, making room for no more than one byte past them.
fn inflate_into(
    stream: &mut Decompress,
    compressed: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Option<Cut> {
    let start = out
        .len()
        .saturating_sub(usize::try_from(stream.total_out()).unwrap_or(usize::MAX));
    loop {
        let produced = out.len() - start;
        // One byte past the limit tells a message that fills it from one that passes it.
        let room = (out.capacity() - out.len())
            .max(produced.max(compressed.len()).max(MIN_ROOM))
            .min(limit + 1 - produced);
        let at = out.len();
        // Exact: a doubling growth could make room for twice the limit.
        out.reserve_exact(room);
        out.resize(at + room, 0);
        let (read, before) = (stream.total_in(), stream.total_out());
        let unread = usize::try_from(read)
            .ok()
            .and_then(|read| compressed.get(read..))
            .unwrap_or_default();
        let status = stream.decompress(unread, &mut out[at..], FlushDecompress::None);
        let written = usize::try_from(stream.total_out() - before).unwrap_or(usize::MAX);
        #[cfg(test)]
        INFLATED.with(|inflated| inflated.set(inflated.get() + written as u64));
        out.truncate(at + written);
        if out.len() - start > limit {
            out.truncate(start + limit);
            return Some(Cut::TooLarge);
        }
        match status {
            Ok(Status::StreamEnd) => return None,
            // Room filled or input read: the next turn goes on.
            Ok(_) if written > 0 || stream.total_in() > read => {}
            // Stuck short of the end of the stream, all its input read: it is cut.
            Ok(_) => return Some(Cut::Short),
            Err(_) => return Some(Cut::Corrupt),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::ZlibEncoder;

    use super::*;

    fn compress(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes)?;
        encoder.finish()
    }

    /// Inflates `compressed` with `limit`, returning what came out and the cut.
    fn run(compressed: &[u8], limit: usize) -> (Vec<u8>, Option<Cut>) {
        let mut out = b"head".to_vec();
        let cut = inflate_into(&mut Decompress::new(true), compressed, &mut out, limit);
        assert_eq!(&out[..4], b"head");
        (out[4..].to_vec(), cut)
    }

    #[test]
    fn inflates_whole_messages_of_any_ratio_up_to_the_limit() -> std::io::Result<()> {
        let random: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for message in [vec![], b"hi".to_vec(), vec![0; 100_000], random] {
            let compressed = compress(&message)?;
            assert_eq!(run(&compressed, message.len()), (message.clone(), None));
            assert_eq!(run(&compressed, 1 << 20), (message.clone(), None));
        }
        Ok(())
    }

    #[test]
    fn stops_at_the_limit_keeping_the_first_bytes() -> std::io::Result<()> {
        let message: Vec<u8> = (0..1_000_000u32).map(|i| (i % 3) as u8).collect();
        let compressed = compress(&message)?;
        assert!(compressed.len() < 10_000, "{}", compressed.len());
        let (out, cut) = run(&compressed, 1000);
        assert_eq!(cut, Some(Cut::TooLarge));
        assert_eq!(out, &message[..1000]);
        let (out, cut) = run(&compressed, message.len() - 1);
        assert_eq!(cut, Some(Cut::TooLarge));
        assert_eq!(out.len(), message.len() - 1);
        Ok(())
    }

    /// A THeader frame (binary, seq 3) whose message, `compressed`, is under zlib alone.
    fn zlib_frame(compressed: &[u8]) -> Vec<u8> {
        let mut frame = u32::try_from(14 + compressed.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
        frame.extend_from_slice(&[0x0f, 0xff, 0, 0, 0, 0, 0, 3, 0, 1, 0, 1, 1, 0]);
        frame.extend_from_slice(compressed);
        frame
    }

    /// What a frame inflates to is kept (frozen) while its call is in flight, and the engine
    /// counts its length alone against `max_buffered_bytes`: its allocation must be little
    /// more, whatever the ratio, whether the message is whole or cut at the cap.
    #[test]
    fn the_rebuilt_frame_holds_little_more_than_its_bytes() -> Result<(), Box<dyn std::error::Error>>
    {
        let size = 200_000u32;
        // Incompressible (zlib makes it longer), a few times compressible, and a bomb.
        let random: Vec<u8> = (0..size)
            .scan(7u32, |x, _| {
                *x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                Some((*x >> 16) as u8)
            })
            .collect();
        let letters: Vec<u8> = random.iter().map(|b| b'a' + b % 4).collect();
        let zeros = vec![0; size as usize];
        for message in [random, letters, zeros] {
            let frame = zlib_frame(&compress(&message)?);
            let block = crate::theader::parse(&frame)?;
            // Room for all of it (with the 14 bytes of fixed fields and header block after the
            // length prefix), to the byte, and half of it.
            for (cap, cut) in [
                (message.len() + 1000, None),
                (message.len() + 14, None),
                (message.len() / 2, Some(Cut::TooLarge)),
            ] {
                let inflated = inflate(&frame, &block, cap);
                assert_eq!(inflated.cut, cut, "cap {cap}");
                let (len, capacity) = (inflated.frame.len(), inflated.frame.capacity());
                assert!(len <= cap + 4, "{len} bytes, cap {cap}");
                assert!(
                    capacity <= len + len / 4,
                    "{capacity} bytes of room for {len} (compressed {}), cap {cap}",
                    frame.len()
                );
            }
        }
        Ok(())
    }

    #[test]
    fn corrupt_or_cut_streams_keep_what_inflated_before() -> std::io::Result<()> {
        let message: Vec<u8> = (0..4000u32)
            .scan(1u32, |x, _| {
                *x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                Some(b'a' + (*x >> 16) as u8 % 26)
            })
            .collect();
        let compressed = compress(&message)?;
        let (out, cut) = run(&compressed[..compressed.len() / 2], 1 << 20);
        assert_eq!(cut, Some(Cut::Short));
        assert!(out.len() > 100 && message.starts_with(&out), "{out:?}");
        assert_eq!(run(b"not zlib at all", 1 << 20).1, Some(Cut::Corrupt));
        assert_eq!(run(b"", 1 << 20), (vec![], Some(Cut::Short)));
        Ok(())
    }
}
