//! The echo server: answers every call with its payload and id, as a good server does under
//! pipelining: whatever one read brings is answered in one write.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::{Protocol, WireError};

/// Bytes the read buffer keeps free for one read.
const READ_CHUNK: usize = 64 * 1024;
/// How long a failed accept waits before the next.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Accepts connections on `listener` and answers them, one task each, until dropped.
pub async fn serve(listener: TcpListener, protocol: Protocol) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    if let Err(err) = answer(stream, protocol).await {
                        eprintln!("echo: connection closed: {err}");
                    }
                });
            }
            // Out of descriptors, say: the clients see it; pause, then keep serving.
            Err(err) => {
                eprintln!("echo: accept failed: {err}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Why a connection ended before its client closed it.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

async fn answer(mut stream: TcpStream, protocol: Protocol) -> Result<(), Closed> {
    stream.set_nodelay(true)?;
    let mut read_buf = BytesMut::with_capacity(READ_CHUNK);
    let mut write_buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if read_buf.capacity() - read_buf.len() < READ_CHUNK / 4 {
            read_buf.reserve(READ_CHUNK);
        }
        if stream.read_buf(&mut read_buf).await? == 0 {
            return Ok(());
        }
        while let Some(len) = protocol.frame_len(&read_buf)? {
            protocol.answer(&read_buf.split_to(len).freeze(), &mut write_buf)?;
        }
        if !write_buf.is_empty() {
            stream.write_all(&write_buf).await?;
            write_buf.clear();
        }
    }
}
