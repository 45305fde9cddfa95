//! Read and write buffers of a connection task over a [`Transport`]: reads that reserve room
//! as bytes arrive, writes that send everything buffered (many frames, one write), and buffers
//! that shrink back after a large frame.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};

use super::Transport;

/// Buffers start at this size ...
const BUFFER_SIZE: usize = 16 * 1024;
/// ... and go back to it when a large frame made them grow past this.
const BUFFER_KEEP_LIMIT: usize = 1024 * 1024;

/// A new read or write buffer.
pub(crate) fn buffer() -> BytesMut {
    BytesMut::with_capacity(BUFFER_SIZE)
}

/// Reads what `io` has into `buf`, making room first; `Ready(Ok(0))` at end of stream.
pub(crate) fn poll_read<S: Transport>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < BUFFER_SIZE / 4 {
        if buf.is_empty() && buf.capacity() > BUFFER_KEEP_LIMIT {
            *buf = buffer();
        } else {
            buf.reserve(BUFFER_SIZE);
        }
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes everything in `buf` and flushes, adding what was written to `written` (also when
/// the stream stops taking bytes half-way and this returns `Pending`).
pub(crate) fn poll_write<S: Transport>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    written: &mut u64,
) -> Poll<io::Result<()>> {
    while !buf.is_empty() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, buf))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        buf.advance(n);
        *written += n as u64;
    }
    ready!(Pin::new(&mut *io).poll_flush(cx))?;
    if buf.capacity() > BUFFER_KEEP_LIMIT {
        *buf = buffer();
    }
    Poll::Ready(Ok(()))
}
