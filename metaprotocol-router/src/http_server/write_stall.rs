//! A stream whose writes fail once they have waited too long on a client that takes none of
//! them. hyper times out reading a request's headers, but not writing its answer: a client that
//! sends requests and reads no answers would otherwise hold its connection, one of the
//! server's few, for good.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `S`, whose writes, flushes and shutdown fail with [`io::ErrorKind::TimedOut`] once one has
/// waited `limit` without the client taking a byte.
pub(super) struct WriteStall<S> {
    inner: S,
    limit: Duration,
    /// Since the first write that had to wait; cleared by one that did not.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteStall<S> {
    /// `inner`, whose writes may wait at most `limit`.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            waiting: None,
        }
    }

    /// `result` of a write, flush or shutdown, failed if it has waited past the limit.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.waiting = None;
            return result;
        }
        let limit = self.limit;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of its answer",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_takes_none_of_fails_at_the_limit_and_one_it_takes_does_not()
    -> Result<(), Box<dyn std::error::Error>> {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = WriteStall::new(near, LIMIT);
        // The client reads a little after 9 s: the write goes on, and its wait starts over.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            let mut buf = [0u8; 64];
            far.read_exact(&mut buf).await?;
            io::Result::Ok(far)
        });
        stream.write_all(&[1; 128]).await?;
        let _far = reader.await??;
        // Nothing read from now on: the next write fails at the limit, not before.
        let started = tokio::time::Instant::now();
        let failed = tokio::time::timeout(2 * LIMIT, stream.write_all(&[2; 128])).await?;
        assert_eq!(failed.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        let waited = started.elapsed();
        assert!(
            waited >= LIMIT && waited < LIMIT + Duration::from_secs(1),
            "{waited:?}"
        );
        Ok(())
    }
}
