//! One client connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use metaprotocol_core::{
    Codec, ConnectionInfo, EncodeParams, LocalReply, LocalReplyKind, Message, MessageKind,
    Mutation, Side, WireVariant,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{ListenerContext, request};

/// Answers queued per connection before request tasks wait.
const REPLY_QUEUE: usize = 1024;
/// Requests in flight per client connection; past this the proxy stops reading from that client
/// until some complete, so a client that pipelines without bound cannot grow memory without bound.
const MAX_IN_FLIGHT: usize = 4096;
const WRITE_BATCH: usize = 64;
const BUFFER_SIZE: usize = 16 * 1024;
const BUFFER_KEEP_LIMIT: usize = 1024 * 1024;

/// An answer for the connection's writer to encode.
pub(crate) enum Reply {
    /// An upstream response to `request`, sent with the client's own id and encoding.
    Response {
        request: Arc<Message>,
        response: Message,
        mutation: Arc<Mutation>,
    },
    /// An error answered by the proxy.
    Local {
        request: Arc<Message>,
        reply: LocalReply,
    },
    /// A heartbeat to answer.
    Heartbeat(Message),
}

pub(crate) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
) {
    ctx.stats.cx_total.inc();
    ctx.stats.cx_active.inc();
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let connection = Arc::new(ConnectionInfo {
        listener: ctx.name.clone(),
        peer_addr: peer,
        local_addr: local,
        peer_identity: None,
    });
    let (mut read, write) = stream.into_split();
    let (replies, queue) = mpsc::channel(REPLY_QUEUE);
    let writer = tokio::spawn(write_loop(
        write,
        queue,
        ctx.codec.new_codec(Side::Downstream, WireVariant::DEFAULT),
        ctx.clone(),
    ));
    let mut codec = ctx.codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = BytesMut::with_capacity(BUFFER_SIZE);
    'read: loop {
        if buf.capacity() - buf.len() < BUFFER_SIZE / 4 {
            buf.reserve(BUFFER_SIZE);
        }
        let read_result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = read_with_idle_timeout(&mut read, &mut buf, &ctx, &replies) => r,
        };
        if !read_result {
            break;
        }
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(message)) => {
                    dispatch(message, &ctx, &connection, &replies, &in_flight).await;
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(listener = %ctx.name, %peer, error = %err, "closing client connection: bad frame");
                    ctx.stats.protocol_error(&err).inc();
                    break 'read;
                }
            }
        }
    }
    // Requests in flight hold clones of `replies`; the writer finishes once they have answered.
    drop(replies);
    let _ = writer.await;
    ctx.stats.cx_active.dec();
}

/// Reads more bytes; false on end of stream, error, or an idle timeout with nothing in flight.
async fn read_with_idle_timeout(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    ctx: &ListenerContext,
    replies: &mpsc::Sender<Reply>,
) -> bool {
    loop {
        let outcome = match ctx.idle_timeout {
            None => Some(read.read_buf(buf).await),
            Some(idle) => tokio::time::timeout(idle, read.read_buf(buf)).await.ok(),
        };
        match outcome {
            Some(Ok(n)) => return n > 0,
            Some(Err(_)) => return false,
            // Our own handle is the only sender left: nothing is in flight.
            None if replies.strong_count() <= 1 => return false,
            None => continue,
        }
    }
}

async fn dispatch(
    message: Message,
    ctx: &Arc<ListenerContext>,
    connection: &Arc<ConnectionInfo>,
    replies: &mpsc::Sender<Reply>,
    in_flight: &Arc<Semaphore>,
) {
    match message.kind {
        MessageKind::Heartbeat => {
            ctx.stats.heartbeats.inc();
            let _ = replies.send(Reply::Heartbeat(message)).await;
        }
        MessageKind::Request | MessageKind::Oneway => {
            ctx.stats.rq_total.inc();
            if message.kind == MessageKind::Oneway {
                ctx.stats.rq_oneway.inc();
            }
            if let Some(reason) = message.reject_reason {
                let request = Arc::new(message);
                if request.kind == MessageKind::Request {
                    ctx.stats.local_reply(LocalReplyKind::BadRequest).inc();
                    let reply = LocalReply::new(LocalReplyKind::BadRequest, reason);
                    let _ = replies.send(Reply::Local { request, reply }).await;
                }
                return;
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let handling =
                request::handle(ctx.clone(), connection.clone(), message, replies.clone());
            tokio::spawn(async move {
                handling.await;
                drop(permit);
            });
        }
        // Clients do not answer the proxy; stray answers are ignored.
        MessageKind::Response | MessageKind::HeartbeatReply => {}
    }
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Reply>,
    mut codec: Box<dyn Codec>,
    ctx: Arc<ListenerContext>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buf = BytesMut::with_capacity(BUFFER_SIZE);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        for reply in batch.drain(..) {
            encode_reply(&mut *codec, reply, &mut buf, &ctx);
        }
        if socket.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > BUFFER_KEEP_LIMIT {
            buf = BytesMut::with_capacity(BUFFER_SIZE);
        }
    }
    let _ = socket.shutdown().await;
}

fn encode_reply(codec: &mut dyn Codec, reply: Reply, buf: &mut BytesMut, ctx: &ListenerContext) {
    match reply {
        Reply::Response {
            request,
            response,
            mutation,
        } => {
            let params = EncodeParams {
                request_id: request.request_id,
                variant: request.variant,
                mutation: &mutation,
            };
            if let Err(err) = codec.encode(&response, &params, buf) {
                tracing::warn!(listener = %ctx.name, error = %err, "cannot encode a response for the client");
                let reply = LocalReply::new(
                    LocalReplyKind::Internal,
                    format!("the proxy could not forward the response: {err}"),
                );
                local_reply(codec, &request, &reply, buf, ctx);
            }
        }
        Reply::Local { request, reply } => local_reply(codec, &request, &reply, buf, ctx),
        Reply::Heartbeat(heartbeat) => {
            if let Err(err) = codec.encode_heartbeat_reply(&heartbeat, buf) {
                tracing::warn!(listener = %ctx.name, error = %err, "cannot answer a heartbeat");
            }
        }
    }
}

fn local_reply(
    codec: &mut dyn Codec,
    request: &Message,
    reply: &LocalReply,
    buf: &mut BytesMut,
    ctx: &ListenerContext,
) {
    if let Err(err) = codec.encode_local_reply(request, reply, buf) {
        tracing::warn!(listener = %ctx.name, error = %err, "cannot encode a local reply");
    }
}
