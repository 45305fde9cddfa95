//! Read and write buffers of a connection task over a [`Transport`]: reads that take a buffer
//! only once bytes arrive and reserve room as they do, and buffers that shrink back after a
//! large frame. Writes go through an [`Outbox`](super::outbox::Outbox).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::ReadBuf;

use super::Transport;

/// Buffers start at this size ...
const BUFFER_SIZE: usize = 16 * 1024;
/// ... and go back to it when a large frame made them grow past this.
pub(crate) const BUFFER_KEEP_LIMIT: usize = 1024 * 1024;

/// A new read or write buffer.
pub(crate) fn buffer() -> BytesMut {
    BytesMut::with_capacity(BUFFER_SIZE)
}

/// How much a connection without a buffer reads onto the stack to learn whether bytes came:
/// an idle connection holds no buffer, and readiness alone can be spurious.
const PROBE_SIZE: usize = 512;

/// Reads what `io` has into `buf`, making room first; `Ready(Ok(0))` at end of stream. An empty
/// `buf` without capacity gets one only when bytes arrive.
pub(crate) fn poll_read<S: Transport>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
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
    if buf.capacity() - buf.len() < BUFFER_SIZE / 4 {
        if buf.is_empty() && buf.capacity() > BUFFER_KEEP_LIMIT {
            *buf = buffer();
        } else {
            buf.reserve(BUFFER_SIZE);
        }
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}
