//! One multiplexed upstream connection: a writer task that encodes and batches requests, a reader
//! task that decodes responses and hands each to the caller waiting on its id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use metaprotocol_core::{
    Codec, CodecFactory, EncodeParams, Message, MessageKind, Mutation, Side, WireVariant,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::UpstreamError;
use crate::stats::ClusterStats;

/// Requests queued per connection before callers wait: backpressure, not unbounded memory.
const OUTBOUND_QUEUE: usize = 1024;
/// Frames encoded into one write.
const WRITE_BATCH: usize = 64;
/// Read and write buffers start at this size and are reset to it after a large frame.
const BUFFER_SIZE: usize = 16 * 1024;
const BUFFER_KEEP_LIMIT: usize = 1024 * 1024;

type Waiter = oneshot::Sender<Result<Message, UpstreamError>>;

/// A frame for the writer task.
enum Outbound {
    /// A request to encode with this upstream id.
    Request {
        message: Arc<Message>,
        request_id: u64,
        mutation: Arc<Mutation>,
    },
    /// Bytes already encoded (a heartbeat answer).
    Raw(bytes::Bytes),
}

/// The state the caller, reader and writer share: who waits for which id.
struct Shared {
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    max_id: u64,
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

impl Shared {
    /// Allocates an id no request in flight uses and, for two-way requests, registers `waiter`.
    fn register(&self, waiter: Option<Waiter>) -> Result<u64, UpstreamError> {
        let mut pending = self.pending.lock().map_err(|_| UpstreamError::Reset)?;
        if pending.closed {
            return Err(UpstreamError::Reset);
        }
        // Every id in use (only possible with a tiny id space): refuse rather than spin.
        if u64::try_from(pending.waiters.len()).unwrap_or(u64::MAX) >= self.max_id {
            return Err(UpstreamError::Reset);
        }
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) % self.max_id + 1;
            if pending.waiters.contains_key(&id) {
                continue;
            }
            if let Some(waiter) = waiter {
                pending.waiters.insert(id, waiter);
            }
            return Ok(id);
        }
    }

    /// Removes the waiter of `id`, if still there.
    fn take(&self, id: u64) -> Option<Waiter> {
        self.pending.lock().ok()?.waiters.remove(&id)
    }

    /// Marks the connection closed and fails every request in flight.
    fn close(&self) {
        let waiters = match self.pending.lock() {
            Ok(mut pending) => {
                pending.closed = true;
                std::mem::take(&mut pending.waiters)
            }
            Err(_) => return,
        };
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(UpstreamError::Reset));
        }
    }

    fn is_closed(&self) -> bool {
        self.pending.lock().map(|p| p.closed).unwrap_or(true)
    }
}

/// Removes a waiter whose caller gave up (timeout, cancellation).
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.take(self.id);
    }
}

/// A live upstream connection. Dropping the last handle closes it once its requests are written.
pub(crate) struct Connection {
    outbound: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
}

impl Connection {
    /// Connects to `address` and starts the reader and writer tasks.
    pub(crate) async fn open(
        address: SocketAddr,
        codec: &Arc<dyn CodecFactory>,
        variant: WireVariant,
        connect_timeout: std::time::Duration,
        stats: &ClusterStats,
    ) -> Result<Arc<Self>, UpstreamError> {
        let failed = |reason: String| {
            stats.cx_connect_fail.inc();
            UpstreamError::ConnectFailed { address, reason }
        };
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(failed(err.to_string())),
            Err(_) => return Err(failed(format!("timed out after {connect_timeout:?}"))),
        };
        // Small RPC frames: latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        stats.cx_total.inc();
        let (read, write) = stream.into_split();
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(0),
            max_id: codec.max_request_id().max(1),
        });
        tokio::spawn(write_loop(
            write,
            queue,
            codec.new_codec(Side::Upstream, variant),
            variant,
            shared.clone(),
        ));
        tokio::spawn(read_loop(
            read,
            codec.new_codec(Side::Upstream, variant),
            shared.clone(),
            outbound.downgrade(),
            stats.clone(),
        ));
        Ok(Arc::new(Self { outbound, shared }))
    }

    /// True once the connection can take no more requests.
    pub(crate) fn is_closed(&self) -> bool {
        self.outbound.is_closed() || self.shared.is_closed()
    }

    /// Sends a two-way request and waits for its response. Cancel-safe: dropping the future
    /// forgets the request, and a late response is counted as unmatched.
    pub(crate) async fn call(
        &self,
        message: Arc<Message>,
        mutation: Arc<Mutation>,
    ) -> Result<Message, UpstreamError> {
        let (waiter, response) = oneshot::channel();
        let request_id = self.shared.register(Some(waiter))?;
        let _guard = WaiterGuard {
            shared: &self.shared,
            id: request_id,
        };
        self.enqueue(message, request_id, mutation).await?;
        response.await.map_err(|_| UpstreamError::Reset)?
    }

    /// Queues a one-way request. It still gets a fresh id: some servers answer one-way calls,
    /// and such an answer must not be mistaken for another request's.
    pub(crate) async fn send_oneway(
        &self,
        message: Arc<Message>,
        mutation: Arc<Mutation>,
    ) -> Result<(), UpstreamError> {
        let request_id = self.shared.register(None)?;
        self.enqueue(message, request_id, mutation).await
    }

    /// Hands a request to the writer task, waiting while its queue is full.
    async fn enqueue(
        &self,
        message: Arc<Message>,
        request_id: u64,
        mutation: Arc<Mutation>,
    ) -> Result<(), UpstreamError> {
        self.outbound
            .send(Outbound::Request {
                message,
                request_id,
                mutation,
            })
            .await
            .map_err(|_| UpstreamError::Reset)
    }
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outbound>,
    mut codec: Box<dyn Codec>,
    variant: WireVariant,
    shared: Arc<Shared>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buf = BytesMut::with_capacity(BUFFER_SIZE);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        for item in batch.drain(..) {
            match item {
                Outbound::Request {
                    message,
                    request_id,
                    mutation,
                } => {
                    let params = EncodeParams {
                        request_id,
                        variant,
                        mutation: &mutation,
                    };
                    if let Err(err) = codec.encode(&message, &params, &mut buf)
                        && let Some(waiter) = shared.take(request_id)
                    {
                        let _ = waiter.send(Err(UpstreamError::Encode(err)));
                    }
                }
                Outbound::Raw(bytes) => buf.extend_from_slice(&bytes),
            }
        }
        if socket.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
        if buf.capacity() > BUFFER_KEEP_LIMIT {
            buf = BytesMut::with_capacity(BUFFER_SIZE);
        }
    }
    shared.close();
    let _ = socket.shutdown().await;
}

async fn read_loop(
    mut socket: OwnedReadHalf,
    mut codec: Box<dyn Codec>,
    shared: Arc<Shared>,
    outbound: mpsc::WeakSender<Outbound>,
    stats: ClusterStats,
) {
    stats.cx_active.inc();
    let mut buf = BytesMut::with_capacity(BUFFER_SIZE);
    'read: loop {
        if buf.capacity() - buf.len() < BUFFER_SIZE / 4 {
            buf.reserve(BUFFER_SIZE);
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(message)) => {
                    handle_inbound(message, &mut *codec, &shared, &outbound, &stats);
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "closing upstream connection: bad response stream");
                    stats.cx_protocol_errors.inc();
                    break 'read;
                }
            }
        }
    }
    shared.close();
    stats.cx_active.dec();
}

fn handle_inbound(
    message: Message,
    codec: &mut dyn Codec,
    shared: &Shared,
    outbound: &mpsc::WeakSender<Outbound>,
    stats: &ClusterStats,
) {
    match message.kind {
        MessageKind::Response => match shared.take(message.request_id) {
            Some(waiter) => {
                let _ = waiter.send(Ok(message));
            }
            // Late (the caller timed out), an answer to a one-way call, or a stray id.
            None => {
                stats.unmatched_responses.inc();
            }
        },
        MessageKind::Heartbeat => {
            let mut reply = BytesMut::new();
            // try_send: a reader that waited on a full writer queue would stop reading
            // responses, and an upstream waiting for us to read would never drain that queue.
            // A heartbeat answer dropped under such pressure costs nothing.
            if codec.encode_heartbeat_reply(&message, &mut reply).is_ok()
                && !reply.is_empty()
                && let Some(sender) = outbound.upgrade()
            {
                let _ = sender.try_send(Outbound::Raw(reply.freeze()));
            }
        }
        // Upstreams do not call the proxy; answers to heartbeats we never sent are dropped.
        MessageKind::HeartbeatReply | MessageKind::Request | MessageKind::Oneway => {
            stats.unmatched_responses.inc();
        }
    }
}
