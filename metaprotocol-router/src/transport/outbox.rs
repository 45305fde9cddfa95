//! What a connection task has yet to write: the bytes it built (headers, rebuilt frames, local
//! replies, small frames copied whole) and, between them, the unchanged ends of large frames it
//! forwards, written from the buffer they were read into.
//!
//! Forwarding a frame used to copy it into the write buffer, then the kernel copied it again
//! into the socket. A codec whose passthrough patches only a frame's head (an id in a fixed
//! header) lets the rest go out as a slice of the frame ([`Codec::encode_sharing`]): the kernel
//! reads it where it lies, through a vectored write of every part ready, still one system call
//! for many frames (both transports, TCP and TLS, take vectored writes; a stream that did not
//! would write the parts one at a time, still in order). Smaller frames are copied as before: below [`SHARE_AT`] bytes a copy costs
//! less than keeping a slice apart (its reference counts, its own I/O slice). In the load
//! benchmark (8 x 16 calls in flight, everything on one core, interleaved runs) sharing took the
//! proxy from 22.2 to 19.2 us of CPU per Dubbo call with 16 KiB payloads (Thrift 18.2 to 16.6,
//! bRPC 16.2 to 15.0); with 2 and 4 KiB it came out even within the runs' noise, and with 1 KiB
//! 10% dearer: hence the threshold.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use metaprotocol_core::{Codec, CodecError, EncodeParams, Message};

use tokio::time::Instant;

use super::Transport;
use super::buffers::{BUFFER_KEEP_LIMIT, buffer};
use crate::router::deadline_after;

/// Frames at least this long leave their unchanged end out of the write buffer.
const SHARE_AT: usize = 4096;

/// The longest window over which a peer with bytes waiting for it (a client's answers, a
/// server's requests) must take its share of them, [`MIN_WRITE_RATE`] a second of it or all
/// that waited when the window began ([`WriteWindow`]): one that does not is deemed gone, and
/// its connection closes and gives back what waited. Judged on bytes taken, not on any
/// progress: a peer taking a byte now and then would otherwise hold what waits for it (up to
/// 16 MiB of a client's answers, 256 KiB and 16,384 queued calls of a server's) for ever.
pub(crate) const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// The least a peer with bytes waiting takes of them, in bytes a second on average over each
/// window of [`WriteWindow`] (a slow link reading a large frame takes far more: a 56 kbit/s
/// modem 7 KiB/s); a window's share is never more than what waited when it began, so a few
/// bytes waiting ask no more.
pub(crate) const MIN_WRITE_RATE: u64 = 2 * 1024;

/// Whether a peer takes its share of the bytes waiting for it. A window begins when bytes wait
/// unsent, and again each time the peer took its share, which is [`MIN_WRITE_RATE`] over the
/// window's length, or all that waited when it began if that is less; a peer that has not
/// taken its share by the window's end is stalled. Both sides of the proxy judge their peers so:
/// client connections their answers, upstream connections their requests.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriteWindow(Option<Window>);

/// A window of [`WriteWindow`].
#[derive(Clone, Copy, Debug)]
struct Window {
    /// When it ends.
    until: Instant,
    /// The bytes written to the peer in all that it must reach by then.
    target: u64,
}

impl WriteWindow {
    /// True when the peer took less than its share over a window of `length`: `waiting` bytes
    /// wait for it at `now`, and `written` were written to it so far. Called with nothing
    /// waiting, it ends the window.
    pub fn stalled(
        &mut self,
        now: Instant,
        waiting: usize,
        written: u64,
        length: Duration,
    ) -> bool {
        if waiting == 0 {
            self.0 = None;
            return false;
        }
        match self.0 {
            Some(window) if written < window.target => now >= window.until,
            _ => {
                let share = (MIN_WRITE_RATE as f64 * length.as_secs_f64()) as u64;
                self.0 = Some(Window {
                    until: deadline_after(now, length),
                    target: written.saturating_add(share.min(waiting as u64)),
                });
                false
            }
        }
    }

    /// When the current window ends, if one is open: the next moment the peer may be judged.
    pub fn ends(&self) -> Option<Instant> {
        self.0.map(|window| window.until)
    }
}

/// The most parts handed to one vectored write (the rest go in the next): two a shared frame,
/// so at least 256 KiB.
const MAX_SLICES: usize = 128;

/// The unsent bytes of a connection, in order: `parts`, then `buf`.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Where codecs append; written after `parts`.
    buf: BytesMut,
    /// Allocated at the first shared frame: an idle connection holds an outbox, and ten
    /// thousand of them would hold the room for parts they never use.
    parts: Option<Box<Parts>>,
}

/// What was built before the last shared frame end, and shared frame ends, in order.
#[derive(Debug, Default)]
struct Parts {
    queue: VecDeque<Bytes>,
    /// The bytes in `queue`.
    len: usize,
}

impl Outbox {
    /// An outbox with no buffer yet: one is allocated when bytes are first appended.
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            parts: None,
        }
    }

    /// [`Outbox::new`] with a buffer allocated at once.
    pub fn with_buffer() -> Self {
        Self {
            buf: buffer(),
            parts: None,
        }
    }

    /// The bytes not yet written.
    pub fn len(&self) -> usize {
        self.parts.as_ref().map_or(0, |parts| parts.len) + self.buf.len()
    }

    /// True when everything was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True while the outbox holds memory (a buffer, or room for parts).
    pub fn holds_memory(&self) -> bool {
        self.buf.capacity() > 0 || self.parts.is_some()
    }

    /// Gives back the buffer of an outbox with nothing left to write.
    pub fn trim(&mut self) {
        if self.is_empty() {
            *self = Self::new();
        }
    }

    /// Where codecs append what they build: written after everything already in the outbox.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends `message` encoded by `codec` with `params`: the end of a large frame that goes
    /// out unchanged is kept as a slice of the frame, not copied. Nothing is appended on error.
    pub fn encode(
        &mut self,
        codec: &mut dyn Codec,
        message: &Message,
        params: &EncodeParams<'_>,
    ) -> Result<(), CodecError> {
        self.encode_waiting(codec, message, params, None)
    }

    /// [`Outbox::encode`] of a request that the proxy waits for at most `wait`, when given
    /// ([`Codec::encode_within`]).
    pub fn encode_waiting(
        &mut self,
        codec: &mut dyn Codec,
        message: &Message,
        params: &EncodeParams<'_>,
        wait: Option<Duration>,
    ) -> Result<(), CodecError> {
        let frame = &message.frame;
        self.make_room(frame.len());
        let share = frame.len() >= SHARE_AT;
        let start = self.buf.len();
        let shared = match (wait, share) {
            (None, false) => return codec.encode(message, params, &mut self.buf),
            (None, true) => codec.encode_sharing(message, params, &mut self.buf)?,
            (Some(wait), share) => {
                codec.encode_within(message, params, wait, share, &mut self.buf)?
            }
        };
        if shared == 0 {
            return Ok(());
        }
        let Some(at) = frame.len().checked_sub(shared) else {
            self.buf.truncate(start);
            return Err(CodecError::Encode(
                "the codec shared more bytes than its frame holds".into(),
            ));
        };
        self.share(frame.slice(at..));
        Ok(())
    }

    /// Makes way for a frame of about `len` bytes. A buffer that lacks the room and holds many
    /// unsent bytes hands them to the parts as they are and starts anew: growing it would copy
    /// them all, and again at each doubling while the peer is slow to read (at 64 calls of 1 KiB
    /// in flight per client, those copies were a sixth of the proxy's `memcpy` time).
    fn make_room(&mut self, len: usize) {
        if self.buf.len() >= SHARE_AT && self.buf.capacity() - self.buf.len() < len {
            // A new buffer of the standard size, not what is left of this one: a buffer split
            // from it would allocate each frame's room anew.
            let built = std::mem::replace(&mut self.buf, buffer()).freeze();
            self.push_part(built);
        }
    }

    /// Appends `bytes` without copying them.
    fn share(&mut self, bytes: Bytes) {
        self.move_built_to_parts();
        self.push_part(bytes);
    }

    /// Moves the bytes built so far to the end of the parts, without copying them.
    fn move_built_to_parts(&mut self) {
        if !self.buf.is_empty() {
            let built = self.buf.split().freeze();
            self.push_part(built);
        }
    }

    /// Appends `bytes` to the parts.
    fn push_part(&mut self, bytes: Bytes) {
        let parts = self.parts.get_or_insert_with(Box::default);
        parts.len += bytes.len();
        parts.queue.push_back(bytes);
    }

    /// Writes everything and flushes, adding what was written to `written` (also when the
    /// stream stops taking bytes half-way and this returns `Pending`).
    pub fn poll_write<S: Transport>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        written: &mut u64,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let queued = self.parts.as_ref().filter(|parts| !parts.queue.is_empty());
            let n = if let Some(parts) = queued {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let parts = parts.queue.iter().map(|part| &part[..]);
                let ready = parts.chain(std::iter::once(&self.buf[..]));
                let count = slices
                    .iter_mut()
                    .zip(ready)
                    .map(|(slice, part)| *slice = IoSlice::new(part))
                    .count();
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?
            } else {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.buf))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
            *written += n as u64;
        }
        ready!(Pin::new(&mut *io).poll_flush(cx))?;
        if self.buf.capacity() > BUFFER_KEEP_LIMIT {
            self.buf = buffer();
        }
        Poll::Ready(Ok(()))
    }

    /// Drops the first `n` unsent bytes: they were written.
    fn consume(&mut self, mut n: usize) {
        if let Some(parts) = self.parts.as_deref_mut() {
            while let Some(part) = parts.queue.front_mut() {
                if part.len() > n {
                    part.advance(n);
                    parts.len -= n;
                    return;
                }
                n -= part.len();
                parts.len -= part.len();
                parts.queue.pop_front();
            }
        }
        self.buf.advance(n.min(self.buf.len()));
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use bytes::BufMut;
    use metaprotocol_core::{LocalReply, MessageKind, Mutation, WireVariant};
    use tokio::io::AsyncWrite;

    use super::*;

    /// Frames are an id byte, then a body; encoding patches the id, and sharing leaves the
    /// body out (or, `overshares`, claims more bytes than the frame holds).
    struct IdCodec {
        overshares: bool,
    }

    impl Codec for IdCodec {
        fn decode(&mut self, _: &mut BytesMut) -> Result<Option<Message>, CodecError> {
            Ok(None)
        }

        fn encode(
            &mut self,
            message: &Message,
            params: &EncodeParams<'_>,
            dst: &mut BytesMut,
        ) -> Result<(), CodecError> {
            dst.put_u8(params.request_id as u8);
            dst.extend_from_slice(&message.frame[1..]);
            Ok(())
        }

        fn encode_sharing(
            &mut self,
            message: &Message,
            params: &EncodeParams<'_>,
            dst: &mut BytesMut,
        ) -> Result<usize, CodecError> {
            dst.put_u8(params.request_id as u8);
            let body = message.frame.len() - 1;
            Ok(if self.overshares { body + 2 } else { body })
        }

        fn encode_local_reply(
            &mut self,
            _: &Message,
            _: &LocalReply,
            _: &mut BytesMut,
        ) -> Result<(), CodecError> {
            Ok(())
        }

        fn encode_heartbeat_reply(
            &mut self,
            _: &Message,
            _: &mut BytesMut,
        ) -> Result<(), CodecError> {
            Ok(())
        }
    }

    /// A stream that takes at most `max` bytes a write, vectored or not.
    struct ShortWrites {
        taken: Vec<u8>,
        max: usize,
        writes: usize,
    }

    impl AsyncWrite for ShortWrites {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut room = self.max;
            for slice in slices {
                let n = slice.len().min(room);
                self.taken.extend_from_slice(&slice[..n]);
                room -= n;
            }
            self.writes += 1;
            Poll::Ready(Ok(self.max - room))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncRead for ShortWrites {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A frame of `len` bytes: id 0, then a body of `fill`.
    fn frame(len: usize, fill: u8) -> Message {
        let mut bytes = vec![fill; len];
        bytes[0] = 0;
        Message::new(MessageKind::Request, 0, Bytes::from(bytes))
    }

    /// What `IdCodec` writes for `message` with id `id`.
    fn encoded(message: &Message, id: u8) -> Vec<u8> {
        let mut bytes = message.frame.to_vec();
        bytes[0] = id;
        bytes
    }

    fn encode(outbox: &mut Outbox, codec: &mut IdCodec, message: &Message, id: u64) {
        let mutation = Mutation::new();
        let params = EncodeParams {
            request_id: id,
            variant: WireVariant::DEFAULT,
            mutation: &mutation,
        };
        assert_eq!(outbox.encode(codec, message, &params), Ok(()));
    }

    /// Fills an outbox with a small frame, a large one, bytes built in place and another
    /// large frame; returns what the stream must receive.
    fn fill(outbox: &mut Outbox) -> Vec<u8> {
        let mut codec = IdCodec { overshares: false };
        let (small, large, larger) = (frame(100, 1), frame(SHARE_AT, 2), frame(3 * SHARE_AT, 3));
        encode(outbox, &mut codec, &small, 7);
        encode(outbox, &mut codec, &large, 8);
        outbox.buf().extend_from_slice(b"built in place");
        encode(outbox, &mut codec, &larger, 9);
        [
            encoded(&small, 7),
            encoded(&large, 8),
            b"built in place".to_vec(),
            encoded(&larger, 9),
        ]
        .concat()
    }

    /// Writes all of `outbox` to a stream taking `max` bytes a write.
    fn write_all(outbox: &mut Outbox, max: usize) -> (ShortWrites, u64) {
        let mut stream = ShortWrites {
            taken: Vec::new(),
            max,
            writes: 0,
        };
        let mut written = 0;
        let mut cx = Context::from_waker(Waker::noop());
        let done = outbox.poll_write(&mut stream, &mut cx, &mut written);
        assert!(matches!(done, Poll::Ready(Ok(()))));
        (stream, written)
    }

    #[test]
    fn large_frames_go_out_uncopied_in_order_through_short_writes() {
        let mut outbox = Outbox::new();
        let expected = fill(&mut outbox);
        assert_eq!(outbox.len(), expected.len());
        assert!(
            outbox.buf().len() < SHARE_AT,
            "the large frames' bodies are not in the buffer"
        );
        let (stream, written) = write_all(&mut outbox, 1000);
        assert_eq!(stream.taken, expected);
        assert_eq!(written, expected.len() as u64);
        assert!(outbox.is_empty());
        assert_eq!(stream.writes, expected.len().div_ceil(1000));
    }

    #[test]
    fn a_full_buffer_of_unsent_frames_is_set_aside_not_copied_into_a_larger_one() {
        let capacity = buffer().capacity();
        for mut outbox in [Outbox::new(), Outbox::with_buffer()] {
            let mut codec = IdCodec { overshares: false };
            let mut expected = Vec::new();
            for id in 0..40 {
                let message = frame(1000, id);
                encode(&mut outbox, &mut codec, &message, u64::from(id));
                expected.extend(encoded(&message, id));
                assert!(
                    outbox.buf().capacity() <= capacity,
                    "the buffer grew to {} bytes",
                    outbox.buf().capacity()
                );
            }
            // An outbox without a buffer grows one to fit its first frames (an outbox that only
            // ever holds a few small answers keeps a small buffer); after it is set aside, the
            // next are of the standard size.
            let parts = outbox.parts.as_ref().map(|parts| &parts.queue);
            assert!(
                parts.is_some_and(|parts| parts.len() > 1
                    && parts.iter().all(|part| part.len() >= SHARE_AT)
                    && parts.iter().skip(1).all(|part| part.len() >= capacity / 2)),
                "the frames were set aside many to a part (a buffer split from a full one starts \
                 small and grows by copying)"
            );
            assert_eq!(outbox.len(), expected.len());
            let (stream, _) = write_all(&mut outbox, 3000);
            assert_eq!(stream.taken, expected);
        }
    }

    #[test]
    fn a_written_outbox_gives_its_memory_back_when_trimmed() {
        let mut outbox = Outbox::new();
        assert!(!outbox.holds_memory(), "a new outbox holds nothing");
        fill(&mut outbox);
        outbox.trim();
        assert!(
            outbox.holds_memory(),
            "an outbox with bytes to write keeps them"
        );
        write_all(&mut outbox, 1 << 20);
        outbox.trim();
        assert!(!outbox.holds_memory());
    }

    #[test]
    fn a_codec_that_shares_more_than_its_frame_is_refused() {
        let mut outbox = Outbox::new();
        let mut codec = IdCodec { overshares: true };
        let mutation = Mutation::new();
        let params = EncodeParams {
            request_id: 1,
            variant: WireVariant::DEFAULT,
            mutation: &mutation,
        };
        let result = outbox.encode(&mut codec, &frame(SHARE_AT, 1), &params);
        assert!(matches!(result, Err(CodecError::Encode(_))));
        assert!(outbox.is_empty(), "nothing was appended");
    }
}
