//! A tiny bRPC (baidu_std) server and client written from the wire format, for end-to-end tests:
//! there is no packaged brpc to test against. Frames are split with the codec itself and read and
//! written by the protobuf definition (`metaprotocol_brpc::{decode_frame, encode_frame}`).
//!
//! The server answers `Echo` with the request's payload and attachment, `Sleep` the same after
//! two seconds, `SleepOnce` as `Sleep` the first time the server gets it and as `Echo` after,
//! and `Fail` with brpc's `EINTERNAL`. It keeps the `timeout_ms` of every request it gets. Every answer carries, in its `user_fields`,
//! `server` = the server's name and `echo-<key>` for each user field it received, so a test sees
//! routing and request mutation from the far end, and, for a request with brpc's rpcz ids,
//! `rpcz-trace_id`, `rpcz-span_id` and `rpcz-parent_span_id` (those it carried, in decimal).
//!
//! A server started with an authenticator checks credentials as a brpc server with an
//! `Authenticator` does: the `authentication_data` of a connection's first request only, which
//! then stands for every call on the connection (its answers carry it as the user field
//! `identity`); credentials it does not accept get `ERPCAUTH` and a closed connection (before
//! brpc 1.11, a closed connection only).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use metaprotocol_brpc::{BrpcCodec, decode_frame, encode_frame, errno, proto};
use metaprotocol_core::{Codec, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::support::TestResult;

/// The brpc 1.17 correlation id of a client's first call (a versioned bthread id): every test
/// client uses it, so ids collide across clients and the proxy must rewrite them.
pub const BRPC_FIRST_ID: i64 = 4_294_967_298;

/// How long a client waits for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `Sleep` sleeps before answering.
pub const SLEEP: Duration = Duration::from_secs(2);

/// A running test server; stops accepting when dropped.
pub struct BrpcServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    credentials_seen: Arc<std::sync::Mutex<Vec<String>>>,
    timeouts_seen: TimeoutsSeen,
    accepted: Accepted,
    accept: JoinHandle<()>,
}

/// The `timeout_ms` of each request a server got, in order.
type TimeoutsSeen = Arc<std::sync::Mutex<Vec<Option<i32>>>>;

/// The credentials a server accepts, if it authenticates; changed by
/// [`BrpcServer::set_accepted`].
type Accepted = Arc<std::sync::Mutex<Option<&'static [&'static str]>>>;

/// What one server connection shares with the server.
#[derive(Clone)]
struct Served {
    name: &'static str,
    /// The credentials accepted, if the server authenticates.
    accepted: Accepted,
    requests: Arc<AtomicUsize>,
    credentials_seen: Arc<std::sync::Mutex<Vec<String>>>,
    timeouts_seen: TimeoutsSeen,
    /// Whether a `SleepOnce` call came (and slept).
    slept_once: Arc<std::sync::atomic::AtomicBool>,
    /// False for a server that closes a refused connection without answering (brpc < 1.11).
    answers_refusals: bool,
}

impl BrpcServer {
    /// Starts a server named `name` on 127.0.0.1 (a free port).
    pub async fn start(name: &'static str) -> TestResult<Self> {
        Self::serve(name, None, true).await
    }

    /// Starts a server named `name` that authenticates each connection by its first request's
    /// `authentication_data`, which must be one of `accepted`.
    pub async fn start_authenticating(
        name: &'static str,
        accepted: &'static [&'static str],
    ) -> TestResult<Self> {
        Self::serve(name, Some(accepted), true).await
    }

    /// [`BrpcServer::start_authenticating`] as brpc before 1.11 did: credentials it does not
    /// accept get no answer, only a closed connection.
    pub async fn start_authenticating_before_1_11(
        name: &'static str,
        accepted: &'static [&'static str],
    ) -> TestResult<Self> {
        Self::serve(name, Some(accepted), false).await
    }

    async fn serve(
        name: &'static str,
        accepted: Option<&'static [&'static str]>,
        answers_refusals: bool,
    ) -> TestResult<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(std::sync::Mutex::new(accepted));
        let served = Served {
            name,
            accepted: accepted.clone(),
            requests: Arc::new(AtomicUsize::new(0)),
            credentials_seen: Arc::default(),
            timeouts_seen: Arc::default(),
            slept_once: Arc::default(),
            answers_refusals,
        };
        let (requests, credentials_seen, timeouts_seen) = (
            served.requests.clone(),
            served.credentials_seen.clone(),
            served.timeouts_seen.clone(),
        );
        let conns = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(served.clone(), stream));
            }
        });
        Ok(Self {
            addr,
            connections,
            requests,
            credentials_seen,
            timeouts_seen,
            accepted,
            accept,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes the server accept `accepted` from now on, on connections yet to authenticate.
    pub fn set_accepted(&self, accepted: &'static [&'static str]) {
        *self.accepted.lock().unwrap_or_else(PoisonError::into_inner) = Some(accepted);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `authentication_data` of every request received so far that carried one, in
    /// order (lossily as UTF-8).
    pub fn credentials_seen(&self) -> Vec<String> {
        self.credentials_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `timeout_ms` of every request received so far, in order.
    pub fn timeouts_seen(&self) -> Vec<Option<i32>> {
        self.timeouts_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for BrpcServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads requests off one connection and answers each in its own task (so answers may overtake
/// each other, as brpc's do).
async fn serve_connection(served: Served, stream: TcpStream) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(Mutex::new(writer));
    let mut codec = BrpcCodec::new(Side::Downstream, 1 << 20);
    let mut buf = BytesMut::with_capacity(4096);
    // The connection's identity, set by its first request when the server authenticates.
    let mut identity: Option<Arc<str>> = None;
    let mut first = true;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(request)) => {
                served.requests.fetch_add(1, Ordering::SeqCst);
                let Ok((meta, _)) = decode_frame(&request.frame) else {
                    // Not by the protobuf definition (a string not UTF-8): left unanswered.
                    continue;
                };
                if let Some(credentials) = &meta.authentication_data {
                    served
                        .credentials_seen
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(String::from_utf8_lossy(credentials).into_owned());
                }
                let request_meta = meta.request.as_ref();
                served
                    .timeouts_seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(request_meta.and_then(|r| r.timeout_ms));
                let sleeps = match request_meta.map(|r| r.method_name.as_str()) {
                    Some("Sleep") => true,
                    Some("SleepOnce") => !served.slept_once.swap(true, Ordering::SeqCst),
                    _ => false,
                };
                let accepted = *served
                    .accepted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let (true, Some(accepted)) = (first, accepted) {
                    let credentials = meta.authentication_data.as_deref().unwrap_or_default();
                    match accepted.iter().find(|a| a.as_bytes() == credentials) {
                        Some(accepted) => identity = Some((*accepted).into()),
                        None if served.answers_refusals => {
                            return refuse(meta.correlation_id, &writer).await;
                        }
                        None => return,
                    }
                }
                first = false;
                let identity = identity.clone();
                tokio::spawn(answer(
                    served.name,
                    request.frame,
                    sleeps,
                    identity,
                    writer.clone(),
                ));
            }
            Ok(None) => match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Err(_) => return,
        }
    }
}

/// Answers a connection's first request, whose credentials were not accepted, with `ERPCAUTH`
/// and closes the connection, as brpc's `VerifyRpcRequest` and input messenger do.
async fn refuse(correlation_id: Option<i64>, writer: &Mutex<OwnedWriteHalf>) {
    let reply = proto::RpcMeta {
        response: Some(proto::RpcResponseMeta {
            error_code: Some(errno::ERPCAUTH),
            error_text: Some("Fail to authenticate".into()),
        }),
        correlation_id,
        ..Default::default()
    };
    let mut out = BytesMut::new();
    if encode_frame(&reply, &[], &mut out).is_ok() {
        let mut writer = writer.lock().await;
        let _ = writer.write_all(&out).await;
        let _ = writer.shutdown().await;
    }
}

/// Answers the request in `frame`, after [`SLEEP`] if it `sleeps`.
async fn answer(
    name: &'static str,
    frame: bytes::Bytes,
    sleeps: bool,
    identity: Option<Arc<str>>,
    writer: Arc<Mutex<OwnedWriteHalf>>,
) {
    let Ok((meta, body)) = decode_frame(&frame) else {
        return;
    };
    let method = meta
        .request
        .as_ref()
        .map(|r| r.method_name.clone())
        .unwrap_or_default();
    let mut user_fields: std::collections::BTreeMap<String, String> = meta
        .user_fields
        .iter()
        .map(|(k, v)| (format!("echo-{k}"), v.clone()))
        .collect();
    user_fields.insert("server".into(), name.into());
    if let Some(identity) = identity {
        user_fields.insert("identity".into(), identity.to_string());
    }
    if let Some(request) = &meta.request {
        let ids = [
            ("rpcz-trace_id", request.trace_id),
            ("rpcz-span_id", request.span_id),
            ("rpcz-parent_span_id", request.parent_span_id),
        ];
        for (key, id) in ids {
            if let Some(id) = id {
                user_fields.insert(key.into(), id.to_string());
            }
        }
    }
    let mut reply = proto::RpcMeta {
        response: Some(proto::RpcResponseMeta {
            error_code: Some(0),
            error_text: None,
        }),
        compress_type: Some(0),
        correlation_id: meta.correlation_id,
        attachment_size: meta.attachment_size,
        user_fields,
        ..Default::default()
    };
    let mut body = body;
    if sleeps {
        tokio::time::sleep(SLEEP).await;
    }
    if method == "Fail" {
        reply.response = Some(proto::RpcResponseMeta {
            error_code: Some(errno::EINTERNAL),
            error_text: Some(format!("[{name}][E2001]bad name")),
        });
        reply.attachment_size = None;
        body = &[];
    }
    let mut out = BytesMut::new();
    if encode_frame(&reply, body, &mut out).is_ok() {
        let _ = writer.lock().await.write_all(&out).await;
    }
}

/// One call to make.
#[derive(Clone, Debug)]
pub struct Call {
    /// `service_name`.
    pub service: String,
    /// `method_name`.
    pub method: String,
    /// `user_fields` to send.
    pub user_fields: Vec<(String, String)>,
    /// The payload (an `EchoRequest { message = 1 }`).
    pub payload: Vec<u8>,
    /// `timeout_ms`, if any.
    pub timeout_ms: Option<i32>,
    /// Sets `stream_settings`, as a call opening a streaming RPC does.
    pub streaming: bool,
    /// `authentication_data`, if any.
    pub credentials: Option<String>,
    /// brpc's rpcz ids: `trace_id`, `span_id`, `parent_span_id`.
    pub rpcz: Option<(i64, i64, i64)>,
}

impl Call {
    /// A call of `service`/`method` whose payload carries `message`.
    pub fn new(service: &str, method: &str, message: &str) -> Self {
        let mut payload = vec![0x0a, message.len() as u8];
        payload.extend_from_slice(message.as_bytes());
        Self {
            service: service.into(),
            method: method.into(),
            user_fields: Vec::new(),
            payload,
            timeout_ms: None,
            streaming: false,
            credentials: None,
            rpcz: None,
        }
    }

    /// Sends `credentials` as the call's `authentication_data`, as a brpc client with an
    /// `Authenticator` does on its connection's first call.
    pub fn authenticated(mut self, credentials: &str) -> Self {
        self.credentials = Some(credentials.into());
        self
    }

    /// Sends brpc's rpcz ids, as a brpc client tracing the call does.
    pub fn traced(mut self, trace_id: i64, span_id: i64, parent_span_id: i64) -> Self {
        self.rpcz = Some((trace_id, span_id, parent_span_id));
        self
    }

    /// Adds user field `key` = `value`.
    pub fn field(mut self, key: &str, value: &str) -> Self {
        self.user_fields.push((key.into(), value.into()));
        self
    }
}

/// An answer, read by the protobuf definition.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The response meta.
    pub meta: proto::RpcMeta,
    /// Payload and attachment.
    pub body: Vec<u8>,
}

impl Reply {
    /// `error_code`, 0 on success.
    pub fn error_code(&self) -> i32 {
        self.meta
            .response
            .as_ref()
            .and_then(|r| r.error_code)
            .unwrap_or(0)
    }

    /// `error_text`, empty when absent.
    pub fn error_text(&self) -> &str {
        self.meta
            .response
            .as_ref()
            .and_then(|r| r.error_text.as_deref())
            .unwrap_or("")
    }

    /// The user field `key`.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.meta.user_fields.get(key).map(String::as_str)
    }
}

/// A client on one connection, making one call at a time as a synchronous brpc channel does.
pub struct BrpcClient {
    stream: TcpStream,
    codec: BrpcCodec,
    buf: BytesMut,
    next_id: i64,
}

impl BrpcClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> TestResult<Self> {
        Ok(Self {
            stream: TcpStream::connect(addr).await?,
            codec: BrpcCodec::new(Side::Upstream, 1 << 20),
            buf: BytesMut::new(),
            next_id: BRPC_FIRST_ID,
        })
    }

    /// Makes `call` and waits for its answer, checking that it carries the call's id.
    pub async fn call(&mut self, call: &Call) -> TestResult<Reply> {
        let id = self.next_id;
        // bthread ids keep their slot in the low 32 bits and bump the version above them.
        self.next_id += 1 << 32;
        let meta = proto::RpcMeta {
            request: Some(proto::RpcRequestMeta {
                service_name: call.service.clone(),
                method_name: call.method.clone(),
                log_id: Some(42),
                timeout_ms: call.timeout_ms,
                trace_id: call.rpcz.map(|ids| ids.0),
                span_id: call.rpcz.map(|ids| ids.1),
                parent_span_id: call.rpcz.map(|ids| ids.2),
                ..Default::default()
            }),
            compress_type: Some(0),
            correlation_id: Some(id),
            authentication_data: call.credentials.as_ref().map(|c| c.clone().into_bytes()),
            user_fields: call.user_fields.iter().cloned().collect(),
            stream_settings: call.streaming.then(|| proto::StreamSettings {
                stream_id: 1,
                ..Default::default()
            }),
            content_type: Some(0),
            checksum_type: Some(0),
            checksum_value: Some(Vec::new()),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        encode_frame(&meta, &call.payload, &mut out)?;
        self.stream.write_all(&out).await?;
        let reply = tokio::time::timeout(CALL_TIMEOUT, self.read_reply()).await??;
        if reply.meta.correlation_id != Some(id) {
            return Err(format!(
                "answer for id {:?}, expected {id}",
                reply.meta.correlation_id
            )
            .into());
        }
        Ok(reply)
    }

    async fn read_reply(&mut self) -> TestResult<Reply> {
        loop {
            if let Some(message) = self.codec.decode(&mut self.buf)? {
                let (meta, body) = decode_frame(&message.frame)?;
                return Ok(Reply {
                    meta,
                    body: body.to_vec(),
                });
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err("the proxy closed the connection".into());
            }
        }
    }
}
