//! A Dubbo provider of the demo service, built on the Dubbo codec: it answers every call with
//! `Hello from <name>`, names itself in the response attachment `provider`, echoes request
//! attachments whose key starts with `x-` as `echo-<key>`, and records what it saw. A few
//! methods misbehave on purpose, for tests: [`SLOW_METHOD`], [`EXCEPTION_METHOD`],
//! [`FAILING_METHOD`], [`HANG_UP_METHOD`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use metaprotocol_core::{CodecFactory, Message, MessageKind, Metadata, Side, WireVariant, keys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use metaprotocol_dubbo::build::{error_response, exception_response, value_response};

/// Calls to this method are answered after the provider's slow delay (for timeout tests).
pub const SLOW_METHOD: &str = "sayHelloSlowly";
/// Calls to this method are answered with a declared exception (an application error).
pub const EXCEPTION_METHOD: &str = "sayHelloWithException";
/// Calls to this method are answered with status 70, SERVICE_ERROR (a server error).
pub const FAILING_METHOD: &str = "sayHelloFailing";
/// Calls to this method make the provider close the connection without answering.
pub const HANG_UP_METHOD: &str = "sayHelloAndHangUp";

/// A request as the provider received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Two-way, one-way or heartbeat.
    pub kind: MessageKind,
    /// The request's metadata (interface, method, attachments).
    pub metadata: Metadata,
    /// The connection it came on: 0 for the provider's first connection, 1 for the next ...
    pub connection: usize,
    /// The address that connection came from.
    pub peer: SocketAddr,
}

struct State {
    name: String,
    slow_delay: Duration,
    /// How long every call waits before its answer.
    delay: Duration,
    seen: Mutex<Vec<SeenRequest>>,
    connections: AtomicUsize,
}

/// A running demo provider on 127.0.0.1; stops when dropped.
pub struct DemoProvider {
    address: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl DemoProvider {
    /// Starts a provider named `name` on a free loopback port.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        Self::start_with_delay(name, Duration::from_secs(5)).await
    }

    /// Starts a provider whose `sayHelloSlowly` answers after `slow_delay`.
    pub async fn start_with_delay(name: &str, slow_delay: Duration) -> std::io::Result<Self> {
        Self::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)), slow_delay).await
    }

    /// Starts a provider on `address` (to bring back one that was stopped, say) whose
    /// `sayHelloSlowly` answers after `slow_delay`.
    pub async fn start_at(
        name: &str,
        address: SocketAddr,
        slow_delay: Duration,
    ) -> std::io::Result<Self> {
        Self::start_with(name, address, slow_delay, Duration::ZERO).await
    }

    /// Starts a provider that answers every call after `delay` (a slow service).
    pub async fn start_slow(name: &str, delay: Duration) -> std::io::Result<Self> {
        Self::start_with(name, SocketAddr::from(([127, 0, 0, 1], 0)), delay, delay).await
    }

    async fn start_with(
        name: &str,
        address: SocketAddr,
        slow_delay: Duration,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.to_owned(),
            slow_delay,
            delay,
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let codec = Arc::new(metaprotocol_dubbo::DubboCodecFactory::new(
            metaprotocol_core::DEFAULT_MAX_FRAME_BYTES,
        ));
        let task = tokio::spawn(accept_loop(listener, codec, state.clone()));
        Ok(Self {
            address,
            state,
            task,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Every request it received, in order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Connections it accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for DemoProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, codec: Arc<dyn CodecFactory>, state: Arc<State>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, peer)) = listener.accept().await {
        let connection = state.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        connections.spawn(serve(
            stream,
            (connection, peer),
            codec.clone(),
            state.clone(),
        ));
    }
}

/// Serves `stream`, the provider's connection number `connection` from `peer`.
async fn serve(
    stream: TcpStream,
    (connection, peer): (usize, SocketAddr),
    codec: Arc<dyn CodecFactory>,
    state: Arc<State>,
) {
    let (mut read, write) = stream.into_split();
    let write = Arc::new(tokio::sync::Mutex::new(write));
    let mut decoder = codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let message = match decoder.decode(&mut buf) {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => return,
            };
            if let Ok(mut seen) = state.seen.lock() {
                seen.push(SeenRequest {
                    kind: message.kind,
                    metadata: message.metadata.clone(),
                    connection,
                    peer,
                });
            }
            match message.kind {
                MessageKind::Request => {
                    tokio::spawn(answer(message, state.clone(), write.clone()));
                }
                MessageKind::Heartbeat => {
                    let mut reply = BytesMut::new();
                    let mut encoder = codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
                    if encoder.encode_heartbeat_reply(&message, &mut reply).is_ok() {
                        let _ = write.lock().await.write_all(&reply).await;
                    }
                }
                _ => {}
            }
        }
    }
}

async fn answer(
    request: Message,
    state: Arc<State>,
    write: Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
) {
    let method = request.metadata.get(keys::METHOD).unwrap_or_default();
    match method {
        SLOW_METHOD => tokio::time::sleep(state.slow_delay).await,
        EXCEPTION_METHOD => {
            let frame = exception_response(
                request.request_id,
                "org.apache.dubbo.samples.basic.api.GreetingException",
                "no greeting today",
                &[("provider", state.name.as_str())],
            );
            let _ = write.lock().await.write_all(&frame).await;
            return;
        }
        FAILING_METHOD => {
            let frame = error_response(
                request.request_id,
                metaprotocol_dubbo::status::SERVICE_ERROR,
                "the greeting service failed",
            );
            let _ = write.lock().await.write_all(&frame).await;
            return;
        }
        HANG_UP_METHOD => {
            let _ = write.lock().await.shutdown().await;
            return;
        }
        _ if !state.delay.is_zero() => tokio::time::sleep(state.delay).await,
        _ => {}
    }
    let echoes: Vec<(String, String)> = request
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| (format!("echo-{k}"), v.to_string()))
        .collect();
    let mut attachments = vec![("provider", state.name.as_str())];
    attachments.extend(echoes.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let value = format!("Hello from {}", state.name);
    let frame = value_response(request.request_id, &value, &attachments);
    let _ = write.lock().await.write_all(&frame).await;
}
