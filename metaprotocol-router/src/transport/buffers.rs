//! Read and write buffers of a connection task over a [`Transport`]: reads that take a buffer
//! only once bytes arrive and reserve room as they do, room that grows with the frames the
//! connection reads lately, and read buffers that leave a large frame's allocation to the frame
//! ([`leave_large_allocation`]). Writes go through an [`Outbox`](super::outbox::Outbox).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, BytesMut};
use tokio::io::ReadBuf;

use super::Transport;

/// Buffers start at this size ...
const BUFFER_SIZE: usize = 16 * 1024;
/// ... and go back to it when a large frame made them grow past this.
pub(crate) const BUFFER_KEEP_LIMIT: usize = 1024 * 1024;

/// Moves what is left in read buffer `buf`, once frames were split off it, to a buffer of its
/// own if its allocation was `held` bytes before, past [`BUFFER_KEEP_LIMIT`]: a large frame
/// made it grow, and the frames hold it until each is done with (a call, or an answer on its
/// way to its client, counted as such meanwhile). Left with the connection, the allocation
/// would be read on into, counted as the few bytes left, and taken back whole once the frames
/// are gone, for as long as the connection lives. What moves is at most a read's worth: the
/// start of the next frames.
pub(crate) fn leave_large_allocation(buf: &mut BytesMut, held: usize) {
    if held <= BUFFER_KEEP_LIMIT {
        return;
    }
    *buf = if buf.is_empty() {
        BytesMut::new()
    } else {
        let mut rest = buffer();
        rest.extend_from_slice(buf);
        rest
    };
}

/// A new read or write buffer.
pub(crate) fn buffer() -> BytesMut {
    BytesMut::with_capacity(BUFFER_SIZE)
}

/// How much a connection without a buffer reads onto the stack to learn whether bytes came:
/// an idle connection holds no buffer, and readiness alone can be spurious.
const PROBE_SIZE: usize = 512;

/// Frames past this size make no more room: a read buffer grows by at most four of them.
const MAX_FRAME_HINT: usize = BUFFER_KEEP_LIMIT / 4;

/// The size of the frames a connection read lately, for which its read buffer makes room.
///
/// Decoded frames are split off the read buffer without a copy, so a buffer stays allocated
/// until the last of its frames is done with; the next read goes into a new buffer, and the
/// frame begun at the end of the old one is copied over. A buffer that holds a single large
/// frame has its every frame copied once this way (and a realloc besides as the frame's size
/// becomes known). Reserving room for several of the frames a connection carries keeps that
/// copy to the one frame in several that straddles two buffers.
#[derive(Debug, Default)]
pub(crate) struct FrameSizes {
    /// At most [`MAX_FRAME_HINT`]; four bytes, as an idle connection holds this.
    recent: u32,
}

impl FrameSizes {
    /// Notes a frame of `len` bytes: a larger frame counts at once, and then its weight fades
    /// by an eighth with each frame after it.
    pub fn saw(&mut self, len: usize) {
        let len = u32::try_from(len.min(MAX_FRAME_HINT)).unwrap_or(u32::MAX);
        self.recent = len.max(self.recent - self.recent / 8);
    }

    /// The free room a read buffer keeps before a read.
    fn room(&self) -> usize {
        (self.recent as usize).max(BUFFER_SIZE / 4)
    }

    /// What a read buffer without that room reserves.
    fn growth(&self) -> usize {
        (4 * self.recent as usize).max(BUFFER_SIZE)
    }
}

/// Reads what `io` has into `buf`, making room first for frames of the `sizes` the connection
/// reads; `Ready(Ok(0))` at end of stream. An empty `buf` without capacity gets one only when
/// bytes arrive.
///
/// Room is reclaimed from the buffer itself when the frames split off it are done with. An empty
/// buffer whose frames are still held keeps reading into what is left of it rather than taking
/// a new one: a connection task looks at its socket again right after the frames it read, which
/// are in flight then, and a new buffer taken at that look (before any bytes come) would be one
/// allocation every few calls for a client that waits for each answer; when the next call comes,
/// the last one is done and its buffer is free again.
pub(crate) fn poll_read<S: Transport>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    sizes: &FrameSizes,
) -> Poll<io::Result<usize>> {
    poll_read_within(io, cx, buf, sizes, |room| room)
}

/// [`poll_read`] that takes at most `most(room)` bytes (at least one), `room` being what the
/// read could take once the buffer made room: a connection that must not read all the socket
/// holds (its bytes count against a bound) sizes the read to what it may take, and looks only
/// when the read could take more than it always may. The bytes go straight into `buf`.
pub(crate) fn poll_read_within<S: Transport>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    sizes: &FrameSizes,
    most: impl FnOnce(usize) -> usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        let mut probe = [0u8; PROBE_SIZE];
        let mut read = ReadBuf::new(&mut probe);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n > 0 {
            *buf = buffer();
            buf.extend_from_slice(read.filled());
        }
        return Poll::Ready(Ok(n));
    }
    let spare = buf.capacity() - buf.len();
    if spare < sizes.room() && !buf.try_reclaim(sizes.room()) && (spare == 0 || !buf.is_empty()) {
        buf.reserve(sizes.growth());
    }
    let room = buf.capacity() - buf.len();
    let most = most(room).clamp(1, room.max(1));
    if most >= room {
        return tokio_util::io::poll_read_buf(Pin::new(io), cx, buf);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut buf.limit(most))
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn frame_sizes_count_a_large_frame_at_once_and_let_it_fade() {
        let mut sizes = FrameSizes::default();
        assert_eq!(
            (sizes.room(), sizes.growth()),
            (BUFFER_SIZE / 4, BUFFER_SIZE)
        );
        sizes.saw(64 * 1024);
        assert_eq!((sizes.room(), sizes.growth()), (64 * 1024, 256 * 1024));
        for _ in 0..40 {
            sizes.saw(100);
        }
        assert_eq!(
            (sizes.room(), sizes.growth()),
            (BUFFER_SIZE / 4, BUFFER_SIZE)
        );
        sizes.saw(usize::MAX);
        assert_eq!(
            sizes.growth(),
            4 * MAX_FRAME_HINT,
            "a huge frame grows a buffer by at most this"
        );
    }

    /// The capacity of a 16 KiB read buffer holding 15 KiB (the start of a frame) after a read
    /// by a connection whose frames run to `frame` bytes.
    async fn capacity_after_a_read(frame: usize) -> usize {
        let (mut io, mut peer) = tokio::io::duplex(1 << 16);
        peer.write_all(b"the rest of the frame").await.ok();
        let mut sizes = FrameSizes::default();
        sizes.saw(frame);
        let mut buf = buffer();
        buf.extend_from_slice(&[0; 15 * 1024]);
        let read = poll_fn(|cx| poll_read(&mut io, cx, &mut buf, &sizes)).await;
        assert_eq!(read.ok(), Some(21));
        buf.capacity()
    }

    /// Reads into `buf` until `n` bytes came.
    async fn read_at_least(
        io: &mut tokio::io::DuplexStream,
        buf: &mut BytesMut,
        sizes: &FrameSizes,
        n: usize,
    ) {
        let mut read = 0;
        while read < n {
            let more = poll_fn(|cx| poll_read(io, cx, buf, sizes))
                .await
                .unwrap_or_default();
            assert!(more > 0, "the stream ended early");
            read += more;
        }
    }

    #[tokio::test]
    async fn a_buffer_whose_frames_are_in_flight_is_not_replaced_before_bytes_come() {
        let (mut io, mut peer) = tokio::io::duplex(1 << 16);
        let sizes = FrameSizes::default();
        let mut buf = buffer();
        buf.extend_from_slice(&[1; 15 * 1024]);
        let allocation = buf.as_ptr();
        // A frame in flight: the buffer is empty, with less than its room left.
        let frame = buf.split().freeze();
        let nothing = poll_fn(|cx| Poll::Ready(poll_read(&mut io, cx, &mut buf, &sizes))).await;
        assert!(nothing.is_pending());
        assert_eq!(
            buf.capacity(),
            BUFFER_SIZE - 15 * 1024,
            "no buffer taken yet"
        );
        drop(frame);
        peer.write_all(&[2; 3000]).await.ok();
        read_at_least(&mut io, &mut buf, &sizes, 3000).await;
        assert_eq!(&buf[..], &[2; 3000][..]);
        assert_eq!(
            buf.as_ptr(),
            allocation,
            "the buffer was taken back, not replaced"
        );

        // Frames still held when bytes come: a new buffer, and the bytes read whole.
        let held = buf.split().freeze();
        buf.extend_from_slice(&[3; 12 * 1024]);
        let partial = buf.split_to(11 * 1024).freeze();
        peer.write_all(&[4; 8000]).await.ok();
        read_at_least(&mut io, &mut buf, &sizes, 8000).await;
        assert_eq!(buf.len(), 1024 + 8000);
        assert!(buf[..1024].iter().all(|&b| b == 3) && buf[1024..].iter().all(|&b| b == 4));
        assert_ne!(buf.as_ptr(), allocation);
        drop((held, partial));
    }

    #[tokio::test]
    async fn reads_make_room_for_several_of_the_frames_a_connection_carries() {
        let partial = 15 * 1024;
        assert!(capacity_after_a_read(64 * 1024).await >= partial + 4 * 64 * 1024);
        assert!(
            capacity_after_a_read(1024).await < partial + 4 * 64 * 1024,
            "small frames keep standard buffers"
        );
    }
}
