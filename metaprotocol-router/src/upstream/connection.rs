//! One upstream connection: a single task that owns the socket, the queue of requests to write
//! and the map of requests waiting for their answer, so that nothing on the request path takes
//! a lock.
//!
//! The task connects, then loops: it encodes every queued request into one buffer (one write
//! for many frames), writes, reads, decodes every response in the read and hands each to its
//! waiter. When the connection fails, every request in flight is answered with a reset that says
//! whether any of its bytes were written (what decides if a retry is safe), and every request
//! still queued with a reset that says they were not. It fails so too when its server takes too
//! little of the calls waiting for it (less than [`MIN_WRITE_RATE`] a second over each
//! [`WRITE_STALL_LIMIT`], as a client is judged on its answers), counted in its cluster's
//! `upstream_cx_write_stalled`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use metaprotocol_core::{
    Codec, CodecError, CodecFactory, EncodeParams, FrameHead, MAX_FRAME_HEAD, Message, MessageKind,
    PassedOver, Side, WireVariant,
};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::backoff::ConnectBackoff;
use super::by_id::ById;
use super::outbound::{AnswerBatch, Outbound};
use super::spare;
use super::{PoolSettings, ReplyTo, UpstreamError};
use crate::cluster::{CircuitBreakers, ConnectionPermit};
use crate::stats::{ClusterStats, EndpointStats, UpDownCounter};
use crate::transport::buffers::{self, FrameSizes};
use crate::transport::outbox::{MIN_WRITE_RATE, Outbox, WRITE_STALL_LIMIT, WriteWindow};
use crate::transport::{Connector, Transport};
use crate::waiting::{self, Closer, Receiver, Timer};

/// Requests queued on one connection before new ones are refused (overflow), so that an upstream
/// that stops reading cannot make the proxy hold unbounded memory.
const QUEUE_LIMIT: usize = 16 * 1024;
/// Encoded bytes waiting for the socket before the task stops taking more requests.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// With this many requests awaiting answers on the connection, new requests are written after
/// the worker's next look at its sockets rather than at once: requests that the client
/// connections read meanwhile go out in the same write. A busy connection's answers are a round
/// trip away, so the turn of the event loop adds little to it, while every write saved spares
/// the kernel a loopback delivery and a wake-up of the upstream (measured behind one connection
/// at 8 x 64: about a third fewer writes and 2-7% less proxy CPU per call). A connection with
/// fewer in flight (a lone caller waiting for its answer) writes at once.
const DEFER_WRITE_AT: usize = 8;
/// How often requests whose callers gave up are forgotten, and the upstream is judged on what
/// it takes of the calls written to it.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What a connection needs to know to open and serve.
pub(crate) struct ConnectParams {
    pub address: SocketAddr,
    pub codec: Arc<dyn CodecFactory>,
    pub variant: WireVariant,
    /// Its connect timeout, idle timeout and request limit.
    pub settings: PoolSettings,
    pub connector: Connector,
    pub backoff: Arc<ConnectBackoff>,
    /// The pool's backoff of replacements, failed when the upstream goes away before it
    /// answers anything on the connection.
    pub replacements: Arc<ConnectBackoff>,
    /// The pool's backoff of new connections after refused credentials: failed when the
    /// upstream closes the connection after its first answer refused the proxy's credentials
    /// ([`CodecFactory::credentials_refused`]), or closes it before any answer when its protocol
    /// refuses so ([`CodecFactory::refuses_credentials_by_closing`]); reset by a first answer
    /// that is no refusal.
    pub refusals: Arc<ConnectBackoff>,
    pub stats: ClusterStats,
    pub endpoint: EndpointStats,
    /// Told once the connection is up (a replacement waits for it before taking over).
    pub connected: Option<tokio::sync::oneshot::Sender<()>>,
    /// Its place under the cluster's `max_connections`, held until the task ends.
    pub permit: Option<ConnectionPermit>,
    /// The cluster's breakers, to which a request leaving the queue gives back its place under
    /// `max_pending_requests` ([`Outbound::placed`]).
    pub breakers: Option<Arc<CircuitBreakers>>,
}

/// State the task shares with the handles that feed it.
#[derive(Debug)]
struct Shared {
    /// Set once the connection can take no more requests.
    closed: AtomicBool,
    /// Set once the socket is connected (for counting open connections).
    connected: AtomicBool,
    /// The proxy's own address on the connection, set once it is connected.
    local_address: OnceLock<SocketAddr>,
    /// Set when the upstream said it is going away: new requests should go elsewhere once a
    /// replacement is up.
    going_away: AtomicBool,
    /// Set once a replacement has been asked for.
    replacing: AtomicBool,
    /// The cluster's count of queued requests.
    pending: UpDownCounter,
    /// See [`ConnectParams::breakers`].
    breakers: Option<Arc<CircuitBreakers>>,
}

impl Shared {
    /// `queued` left the queue: it is counted out, then gives back its place under the
    /// cluster's `max_pending_requests`, if it holds one (in this order: see
    /// [`CircuitBreakers::admit`]).
    fn dequeued(&self, queued: &Outbound) {
        self.pending.dec();
        if queued.placed
            && let Some(breakers) = &self.breakers
        {
            breakers.give_back_pending();
        }
    }
}

/// The sending side of a connection task. Cheap to clone; the task ends when every handle is
/// gone and its requests are answered.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionHandle {
    /// Closes the queue when the last handle goes.
    queue: Arc<Closer<Outbound>>,
    shared: Arc<Shared>,
}

impl ConnectionHandle {
    /// True while the connection takes requests (connecting or connected).
    pub fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
    }

    /// Requests queued and not yet taken by the connection's task.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True once connected and still open.
    pub fn is_connected(&self) -> bool {
        self.is_open() && self.shared.connected.load(Ordering::Acquire)
    }

    /// True if the upstream announced it is going away.
    pub fn is_going_away(&self) -> bool {
        self.shared.going_away.load(Ordering::Acquire)
    }

    /// True for the one caller that gets to start this connection's replacement.
    pub fn claim_replacement(&self) -> bool {
        !self.shared.replacing.swap(true, Ordering::AcqRel)
    }

    /// Gives the claim back: the replacement could not be started.
    pub fn release_replacement(&self) {
        self.shared.replacing.store(false, Ordering::Release);
    }

    /// The proxy's address on this connection, to be read once it is open (for a request
    /// queued on it).
    pub fn local_address(&self) -> LocalAddress {
        LocalAddress(self.shared.clone())
    }

    /// Queues `outbound`; on refusal it comes back with the reason (the request was not sent).
    // The refused request comes back whole, without an allocation: refusals are rare, and
    // boxing would cost every one of them a heap allocation.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, outbound: Outbound) -> Result<(), (Outbound, UpstreamError)> {
        if self.queue.len() >= QUEUE_LIMIT {
            return Err((outbound, UpstreamError::Overflow));
        }
        self.shared.pending.inc();
        self.queue.send(outbound).map_err(|refused| {
            // Never queued: its pool gives back its place.
            self.shared.pending.dec();
            (refused, UpstreamError::Reset { sent: false })
        })
    }
}

/// The proxy's own address on an upstream connection, known once the connection is open: what
/// an access log shows of the connection a request went on (`%UPSTREAM_LOCAL_ADDRESS%`).
#[derive(Clone, Debug)]
pub(crate) struct LocalAddress(Arc<Shared>);

impl LocalAddress {
    /// The address, once the connection is open; `None` while it connects, or if it never
    /// opened.
    pub fn get(&self) -> Option<SocketAddr> {
        self.0.local_address.get().copied()
    }
}

/// A connection not started yet: its handle, and the task to spawn if the handle is kept.
pub(crate) struct Prepared {
    pub handle: ConnectionHandle,
    pub task: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Prepares a connection to `params.address`; nothing happens until the task is spawned.
pub(crate) fn prepare(params: ConnectParams) -> Prepared {
    let (handle, intake) = queue(&params);
    let (panics, address) = (params.stats.cx_panics.clone(), params.address);
    let task = Box::pin(crate::panics::contained(
        run(params, intake),
        move |panic| {
            panics.inc();
            tracing::error!(
                %address,
                panic,
                "an upstream connection's task panicked: the connection is closed and its calls in flight answered with a reset"
            );
        },
    ));
    Prepared { handle, task }
}

/// The queue of a connection to be made with `params`: its handles' end, and its task's.
fn queue(params: &ConnectParams) -> (ConnectionHandle, Intake) {
    let (queue, requests) = waiting::queue();
    let shared = Arc::new(Shared {
        closed: AtomicBool::new(false),
        connected: AtomicBool::new(false),
        local_address: OnceLock::new(),
        going_away: AtomicBool::new(false),
        replacing: AtomicBool::new(false),
        pending: params.stats.rq_pending.clone(),
        breakers: params.breakers.clone(),
    });
    let intake = Intake {
        requests,
        shared: shared.clone(),
        stats: params.stats.clone(),
    };
    let handle = ConnectionHandle {
        queue: Arc::new(Closer::new(queue)),
        shared,
    };
    (handle, intake)
}

async fn run(params: ConnectParams, intake: Intake) {
    match &params.connector {
        Connector::Plain => {
            let connected =
                Connector::connect_plain(params.address, params.settings.connect_timeout)
                    .await
                    .map(|stream| {
                        let local = stream.local_addr().ok();
                        (stream, local)
                    });
            serve(connected, params, intake).await;
        }
        Connector::Tls(tls) => {
            let connected = tls
                .connect(params.address, params.settings.connect_timeout)
                .await
                .map(|stream| {
                    let local = stream.get_ref().0.local_addr().ok();
                    (stream, local)
                });
            serve(connected, params, intake).await;
        }
    }
}

/// Serves the connection `connected` (its stream and the proxy's address on it, or why it could
/// not be opened).
async fn serve<S: Transport>(
    connected: io::Result<(S, Option<SocketAddr>)>,
    mut params: ConnectParams,
    mut intake: Intake,
) {
    let stream = match connected {
        Ok((stream, local)) => {
            if let Some(local) = local {
                let _ = intake.shared.local_address.set(local);
            }
            stream
        }
        Err(err) => {
            tracing::debug!(address = %params.address, error = %err, "upstream connect failed");
            params.stats.cx_connect_fail.inc();
            params.endpoint.cx_connect_fail.inc();
            params.backoff.failed();
            let error = UpstreamError::ConnectFailed {
                address: params.address,
                reason: err.to_string().into(),
            };
            intake.refuse_all(&error);
            return;
        }
    };
    params.backoff.succeeded();
    params.stats.cx_total.inc();
    params.endpoint.cx_total.inc();
    let _open = CountedOpen::new([&params.stats.cx_active, &params.endpoint.cx_active]);
    intake.shared.connected.store(true, Ordering::Release);
    if let Some(connected) = params.connected.take() {
        let _ = connected.send(());
    }
    Multiplexer::new(stream, params, intake).await;
}

/// A connection counted open in its cluster's and its endpoint's gauges until dropped, however
/// its task ends: returned, dropped mid-flight (its runtime shut down) or unwound by a panic (a
/// codec's bug), as its place under the cluster's `max_connections` is given back.
struct CountedOpen([Gauge; 2]);

impl CountedOpen {
    fn new(gauges: [&Gauge; 2]) -> Self {
        Self(gauges.map(|gauge| {
            gauge.inc();
            gauge.clone()
        }))
    }
}

impl Drop for CountedOpen {
    fn drop(&mut self) {
        for gauge in &self.0 {
            gauge.dec();
        }
    }
}

/// The task's end of its queue. However the task ends, dropped mid-flight included (its runtime
/// shut down), the connection is marked closed, so that the pool replaces it, and the requests
/// still queued, which it never took, are answered unsent.
struct Intake {
    requests: Receiver<Outbound>,
    shared: Arc<Shared>,
    stats: ClusterStats,
}

impl Intake {
    /// Closes the queue and answers everything in it with `error`.
    fn refuse_all(&mut self, error: &UpstreamError) {
        self.shared.closed.store(true, Ordering::Release);
        self.requests.close();
        while let Some(outbound) = self.requests.try_recv() {
            self.shared.dequeued(&outbound);
            if !outbound.reply.expects_answer() {
                self.stats.rq_dropped.inc();
            }
            outbound.reply.answer(Err(error.clone()));
        }
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.refuse_all(&UpstreamError::Reset { sent: false });
    }
}

/// A request written (or being written) and waiting for its answer.
struct Waiting {
    reply: ReplyTo,
    deadline: Instant,
    /// Stream offset of the request's first byte: below the bytes written so far, the upstream
    /// may have seen it.
    starts_at: u64,
}

/// An answer over the frame limit `max` being passed over a read at a time by its codec.
#[derive(Clone, Copy)]
struct UnsizedAnswer {
    max: usize,
    /// Its bytes passed so far.
    seen: u64,
}

/// The connected task.
struct Multiplexer<S> {
    io: S,
    encoder: Box<dyn Codec>,
    decoder: Box<dyn Codec>,
    variant: WireVariant,
    exclusive: bool,
    intake: Intake,
    requests_closed: bool,
    /// Answers decoded from the last read, on their way to their client connections.
    answers: AnswerBatch,
    waiting: ById<Waiting>,
    next_id: u64,
    max_id: u64,
    read_buf: BytesMut,
    /// The size of the frames read lately, for which `read_buf` makes room.
    frame_sizes: FrameSizes,
    write_buf: Outbox,
    /// Bytes written to the socket since it opened.
    flushed: u64,
    /// While calls wait unsent, the share of them the upstream must take by when.
    write_window: WriteWindow,
    sweep: Timer,
    /// Close after this long with nothing in flight.
    idle_timeout: Duration,
    /// Close when a frame takes longer than this to arrive once its first bytes did.
    frame_timeout: Duration,
    /// When the frame now arriving started to (since the last whole one), if one is.
    partial_since: Option<Instant>,
    /// Bytes still to pass over of an answer too large to decode (see [`Codec::oversized_response`]).
    skipping: u64,
    /// An answer too large to decode whose length its head does not give, being passed over
    /// by its codec ([`Codec::pass_over`]).
    passing_unsized: Option<UnsizedAnswer>,
    /// Whether a request was taken since the last sweep, and when the connection last carried
    /// anything (as of a sweep).
    busy: bool,
    last_busy: Instant,
    /// See [`ConnectParams::replacements`].
    replacements: Arc<ConnectBackoff>,
    /// See [`ConnectParams::refusals`].
    refusals: Arc<ConnectBackoff>,
    /// Its protocol, which tells a refusal of the proxy's credentials.
    codec: Arc<dyn CodecFactory>,
    /// Set once the connection showed whether its upstream serves: at its first answer that
    /// is no refusal of the proxy's credentials, or when the upstream goes away before one.
    judged: bool,
    /// Set when the first answer refused the proxy's credentials: a server that then closes
    /// the connection will refuse them on every new one.
    refused: bool,
    /// Requests written; at `max_requests` the connection asks to be replaced.
    served: u64,
    max_requests: Option<u64>,
    /// Held while the connection lives.
    _permit: Option<ConnectionPermit>,
    stats: ClusterStats,
    address: SocketAddr,
    /// A write was put off to the worker's next look at its sockets (see [`DEFER_WRITE_AT`]);
    /// the next poll writes whatever is buffered then.
    write_deferred: bool,
}

impl<S: Transport> Multiplexer<S> {
    fn new(io: S, params: ConnectParams, intake: Intake) -> Self {
        Self {
            io,
            encoder: params.codec.new_codec(Side::Upstream, params.variant),
            decoder: params.codec.new_codec(Side::Upstream, params.variant),
            variant: params.variant,
            exclusive: params.codec.pool_mode() == metaprotocol_core::PoolMode::Exclusive,
            intake,
            requests_closed: false,
            answers: AnswerBatch::default(),
            waiting: ById::default(),
            next_id: 0,
            max_id: params.codec.max_request_id().max(1),
            read_buf: buffers::buffer(),
            frame_sizes: FrameSizes::default(),
            write_buf: Outbox::with_buffer(),
            flushed: 0,
            write_window: WriteWindow::default(),
            sweep: Timer::at(Instant::now() + SWEEP_INTERVAL),
            idle_timeout: params.settings.idle_timeout,
            frame_timeout: params.settings.frame_timeout,
            partial_since: None,
            skipping: 0,
            passing_unsized: None,
            busy: false,
            last_busy: Instant::now(),
            replacements: params.replacements,
            refusals: params.refusals,
            codec: params.codec,
            judged: false,
            refused: false,
            served: 0,
            max_requests: params.settings.max_requests_per_connection.map(u64::from),
            _permit: params.permit,
            stats: params.stats,
            address: params.address,
            write_deferred: false,
        }
    }

    /// Takes queued requests into the write buffer while it has room.
    fn take_requests(&mut self, cx: &mut Context<'_>) -> bool {
        let mut took = false;
        // One clock read for the batch, on its first request: requests taken together are
        // written together.
        let mut now = None;
        while !self.requests_closed && self.write_buf.len() < WRITE_HIGH_WATER {
            if self.exclusive && !self.waiting.is_empty() {
                break;
            }
            match self.intake.requests.poll_recv(cx) {
                Poll::Ready(Some(outbound)) => {
                    self.intake.shared.dequeued(&outbound);
                    let now = *now.get_or_insert_with(Instant::now);
                    self.encode(outbound, now);
                    took = true;
                }
                Poll::Ready(None) => self.requests_closed = true,
                Poll::Pending => break,
            }
        }
        took
    }

    fn encode(&mut self, outbound: Outbound, now: Instant) {
        let Outbound {
            message,
            mutation,
            deadline,
            tells_deadline,
            reply,
            placed: _,
        } = outbound;
        let expects_answer = reply.expects_answer();
        if now >= deadline || reply.is_abandoned() {
            self.stats.rq_dropped.inc();
            reply.answer(Err(UpstreamError::Expired));
            return;
        }
        let Some(request_id) = self.allocate_id() else {
            reply.answer(Err(UpstreamError::Overflow));
            return;
        };
        self.busy = true;
        self.served += 1;
        if self.max_requests.is_some_and(|max| self.served >= max) {
            // Its successor opens before new requests move to it (see the pool's `replace`).
            self.intake.shared.going_away.store(true, Ordering::Release);
        }
        let starts_at = self.flushed + self.write_buf.len() as u64;
        let params = EncodeParams {
            request_id,
            variant: self.variant,
            mutation: &mutation,
        };
        // What is left of the deadline as the request is written: what its wait in the
        // queue used is gone too.
        let wait = tells_deadline.then(|| deadline.saturating_duration_since(now));
        match self
            .write_buf
            .encode_waiting(self.encoder.as_mut(), &message, &params, wait)
        {
            Ok(()) if expects_answer => {
                self.waiting.insert(
                    request_id,
                    Waiting {
                        reply,
                        deadline,
                        starts_at,
                    },
                );
            }
            Ok(()) => {}
            Err(err) => reply.answer(Err(UpstreamError::Encode(err))),
        }
    }

    /// An id no request in flight uses, whose slot in the table of those waiting is free;
    /// `None` when the protocol's id space is exhausted.
    fn allocate_id(&mut self) -> Option<u64> {
        let id = self.waiting.free_id(self.next_id, self.max_id)?;
        self.next_id = id;
        Some(id)
    }

    /// Reads and handles every frame that arrived; `Ready(false)` when the connection is done
    /// (closed, failed, or sent a stream that cannot be trusted).
    fn poll_read_frames(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        match ready!(buffers::poll_read(
            &mut self.io,
            cx,
            &mut self.read_buf,
            &self.frame_sizes
        )) {
            Ok(0) | Err(_) => return Poll::Ready(false),
            Ok(_) => {}
        }
        let decoded = self.decode_frames();
        self.answers.flush();
        let undelivered = self.answers.take_undelivered();
        if undelivered > 0 {
            // Their client connections closed while the calls were upstream.
            self.stats.unmatched_responses.inc_by(undelivered);
        }
        Poll::Ready(decoded)
    }

    /// Decodes and handles every whole frame read; false if the stream cannot be trusted.
    fn decode_frames(&mut self) -> bool {
        let now = Instant::now();
        let held = self.read_buf.capacity();
        let mut decoded = false;
        while !self.read_buf.is_empty() {
            if self.skipping > 0 {
                let passed = self
                    .read_buf
                    .len()
                    .min(usize::try_from(self.skipping).unwrap_or(usize::MAX));
                self.read_buf.advance(passed);
                self.skipping -= passed as u64;
                if self.skipping > 0 {
                    // The rest of the answer is still to come, within the frame timeout.
                    self.partial_since.get_or_insert(now);
                    break;
                }
                self.partial_since = None;
                continue;
            }
            if self.passing_unsized.is_some() {
                match self.pass_unsized(now) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(err) => return self.untrusted(&err),
                }
            }
            // Decoded in a box, in place: from here on the answer moves as a pointer.
            let mut message = spare::slot();
            match self.decoder.decode_into(&mut self.read_buf, &mut message) {
                Ok(true) => {
                    self.frame_sizes.saw(message.frame.len());
                    self.partial_since = None;
                    decoded = true;
                    self.inbound(message, now)
                }
                Ok(false) => {
                    spare::recycle(message);
                    self.partial_since.get_or_insert(now);
                    break;
                }
                Err(err @ CodecError::FrameTooLarge { max, .. }) => {
                    spare::recycle(message);
                    match self.decoder.oversized_response(&self.read_buf) {
                        Some(FrameHead::Response { request_id, len }) => {
                            self.pass_over(request_id, len, max, now);
                        }
                        Some(FrameHead::Unsized) => {
                            self.passing_unsized = Some(UnsizedAnswer { max, seen: 0 });
                        }
                        Some(FrameHead::Incomplete) if self.read_buf.len() < MAX_FRAME_HEAD => {
                            self.partial_since.get_or_insert(now);
                            break;
                        }
                        _ => return self.untrusted(&err),
                    }
                }
                Err(err) => {
                    spare::recycle(message);
                    return self.untrusted(&err);
                }
            }
        }
        if decoded {
            buffers::leave_large_allocation(&mut self.read_buf, held);
        }
        true
    }

    /// Counts a response stream that cannot be trusted any more; false, to close.
    fn untrusted(&self, err: &CodecError) -> bool {
        tracing::warn!(address = %self.address, error = %err, "closing upstream connection: bad response stream");
        self.stats.cx_protocol_errors.inc();
        false
    }

    /// Fails request `request_id`, whose answer of `len` bytes is over the limit `max`, and
    /// passes over the answer as it arrives: the connection goes on for the other requests.
    fn pass_over(&mut self, request_id: u64, len: u64, max: usize, now: Instant) {
        tracing::debug!(address = %self.address, request_id, len, max, "passing over an answer over the frame limit");
        self.skipping = len;
        self.fail_oversized(Some(request_id), len, max, now);
    }

    /// Hands what was read of an answer too large to decode, whose length its head does not
    /// give, to its codec to pass over: true once the answer ended (its request failed), false
    /// while more is to come, an error if the codec cannot.
    fn pass_unsized(&mut self, now: Instant) -> Result<bool, CodecError> {
        let passed = self.decoder.pass_over(&self.read_buf).ok_or_else(|| {
            CodecError::malformed("the codec cannot pass over an answer too large to decode")
        })?;
        let (len, end) = match passed {
            PassedOver::More => (self.read_buf.len(), None),
            PassedOver::End { len, request_id } => (len.min(self.read_buf.len()), Some(request_id)),
        };
        self.read_buf.advance(len);
        let Some(answer) = self.passing_unsized.as_mut() else {
            return Ok(true);
        };
        answer.seen += len as u64;
        let Some(request_id) = end else {
            // The rest of the answer is still to come, within the frame timeout.
            self.partial_since.get_or_insert(now);
            return Ok(false);
        };
        let UnsizedAnswer { max, seen } = *answer;
        self.passing_unsized = None;
        self.partial_since = None;
        tracing::debug!(address = %self.address, ?request_id, len = seen, max, "passed over an answer over the frame limit");
        self.fail_oversized(request_id, seen, max, now);
        Ok(true)
    }

    /// Fails request `request_id` (if the answer said which), whose answer of `len` bytes is
    /// over the limit `max`.
    fn fail_oversized(&mut self, request_id: Option<u64>, len: u64, max: usize, now: Instant) {
        let Some(request_id) = request_id else {
            self.stats.unmatched_responses.inc();
            return;
        };
        match self.waiting.remove(request_id) {
            // Counted with the attempt's failures (`response_too_large`).
            Some(waiting) if waiting.deadline > now => waiting
                .reply
                .answer(Err(UpstreamError::ResponseTooLarge { size: len, max })),
            Some(mut waiting) => {
                waiting.reply.disarm();
                self.stats.unmatched_responses.inc();
            }
            None => self.stats.unmatched_responses.inc(),
        }
    }

    fn inbound(&mut self, message: Box<Message>, now: Instant) {
        match message.kind {
            // A heartbeat reply answers a health check's probe.
            MessageKind::Response | MessageKind::HeartbeatReply => {
                if !self.judged {
                    // Asked of the first answers only: a server authenticates a connection
                    // by its first request.
                    if self.codec.credentials_refused(&message) {
                        self.refused = true;
                    } else {
                        self.judged = true;
                        self.refused = false;
                        self.replacements.succeeded();
                        self.refusals.succeeded();
                    }
                }
                match self.waiting.remove(message.request_id) {
                    Some(waiting) if waiting.deadline > now => {
                        // A client call that gave up just before the deadline (its caller's
                        // own timeout, or it went away) takes no answer.
                        if !waiting.reply.answer_in(&mut self.answers, Ok(message)) {
                            self.stats.unmatched_responses.inc();
                        }
                    }
                    // Too late: its caller has given up.
                    Some(mut waiting) => {
                        waiting.reply.disarm();
                        self.stats.unmatched_responses.inc();
                    }
                    // Late (the caller gave up and it was swept), or a stray id.
                    None => {
                        self.stats.unmatched_responses.inc();
                    }
                }
            }
            // New requests move to a new connection once it is up; those in flight here
            // finish here.
            MessageKind::GoAway => {
                if !self.judged {
                    // Gone before it served anything: replacing it at once would only meet
                    // the same (see the pool's `replacements`).
                    self.judged = true;
                    self.replacements.failed();
                }
                self.intake.shared.going_away.store(true, Ordering::Release);
            }
            // An upstream that sends heartbeats but takes nothing written to it would have
            // their replies pile up unsent, as fast as it sends them, until the write stall
            // closes it: past the high water mark of unsent bytes, they go unanswered.
            MessageKind::Heartbeat if self.write_buf.len() >= WRITE_HIGH_WATER => {
                tracing::debug!(address = %self.address, "not answering an upstream heartbeat: it takes none of what is written to it");
            }
            MessageKind::Heartbeat => {
                if let Err(err) = self
                    .encoder
                    .encode_heartbeat_reply(&message, self.write_buf.buf())
                {
                    tracing::debug!(address = %self.address, error = %err, "cannot answer an upstream heartbeat");
                }
            }
            // Upstreams do not call the proxy.
            _ => {
                self.stats.unmatched_responses.inc();
            }
        }
    }

    /// Forgets requests whose callers gave up; their answers, if they come, are unmatched. The
    /// table of those left waiting gives back the memory it no longer needs. Requests still
    /// queued whose callers gave up are answered and dropped too: while the upstream reads
    /// nothing, none is taken, and each holds its whole frame.
    fn sweep(&mut self) {
        let now = Instant::now();
        let expired = self
            .intake
            .requests
            .remove_where(|queued| now >= queued.deadline || queued.reply.is_abandoned());
        for outbound in expired {
            self.intake.shared.dequeued(&outbound);
            self.stats.rq_dropped.inc();
            outbound.reply.answer(Err(UpstreamError::Expired));
        }
        self.waiting.retain(|waiting| {
            let keep = waiting.deadline > now && !waiting.reply.is_abandoned();
            if !keep {
                waiting.reply.disarm();
            }
            keep
        });
        self.waiting.release_unused();
    }

    /// True when the connection has carried nothing for its idle timeout (as of this sweep).
    fn idle(&mut self, now: Instant) -> bool {
        let quiet =
            self.waiting.is_empty() && self.write_buf.is_empty() && self.intake.requests.len() == 0;
        if self.busy || !quiet {
            self.busy = false;
            self.last_busy = now;
            return false;
        }
        now.saturating_duration_since(self.last_busy) >= self.idle_timeout
    }

    /// True when a response frame has taken longer than the frame timeout to arrive: every
    /// answer behind it on the connection waits for it.
    fn frame_late(&self) -> bool {
        self.partial_since
            .is_some_and(|since| since.elapsed() >= self.frame_timeout)
    }

    /// True when the upstream took less than its share of the calls waiting for it over a
    /// window ([`WriteWindow`]) of [`WRITE_STALL_LIMIT`], as a client is judged on its answers:
    /// a server that stopped reading, or reads a byte now and then (each of which used to give
    /// it another 30 s), holds up to [`WRITE_HIGH_WATER`] unsent and [`QUEUE_LIMIT`] calls
    /// queued on the connection, each until its deadline, and a retry of them waits as long.
    fn write_stalled(&mut self, now: Instant) -> bool {
        self.write_window
            .stalled(now, self.write_buf.len(), self.flushed, WRITE_STALL_LIMIT)
    }

    /// The upstream closed the connection (or broke it). Closed after refusing the proxy's
    /// credentials, the pool backs off before opening the next one, which a server would only
    /// refuse again (brpc's answers `ERPCAUTH` and closes): the backoff is stepped before the
    /// requests in flight are answered, so that none of them, resent, opens one at once.
    ///
    /// A brpc server before 1.11 refuses them by closing the connection without an answer:
    /// for such a protocol ([`CodecFactory::refuses_credentials_by_closing`]), a connection
    /// closed after its first bytes left and before any answer counts as refused.
    fn closed_by_upstream(&mut self) {
        if self.refused {
            tracing::warn!(address = %self.address, "the upstream refused the proxy's credentials and closed the connection: backing off before the next");
            self.refusals.failed();
        } else if !self.judged && self.flushed > 0 && self.codec.refuses_credentials_by_closing() {
            tracing::warn!(address = %self.address, "the upstream closed the connection before answering its first request, as a server refusing the proxy's credentials does: backing off before the next");
            self.refusals.failed();
        }
        self.fail_all();
    }

    /// Answers everything in flight and queued: the connection is gone.
    fn fail_all(&mut self) {
        let flushed = self.flushed;
        for waiting in self.waiting.drain() {
            let sent = waiting.starts_at < flushed;
            waiting.reply.answer(Err(UpstreamError::Reset { sent }));
        }
        self.intake
            .refuse_all(&UpstreamError::Reset { sent: false });
    }
}

impl<S: Transport> Future for Multiplexer<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        crate::server::busy_poll::served();
        // At most one write in a row is put off: the poll after a deferral writes.
        let mut may_defer = !std::mem::take(&mut this.write_deferred);
        loop {
            let mut progressed = this.take_requests(cx);
            if may_defer && !this.write_buf.is_empty() && this.waiting.len() >= DEFER_WRITE_AT {
                may_defer = false;
                this.write_deferred = true;
                // Wakes this task again once the worker has looked at its sockets (and run the
                // client connections that became readable), not at once.
                let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
            }
            let flushed = this.flushed;
            let written = if this.write_deferred {
                Poll::Pending
            } else {
                this.write_buf
                    .poll_write(&mut this.io, cx, &mut this.flushed)
            };
            if let Poll::Ready(Err(_)) = written {
                this.closed_by_upstream();
                return Poll::Ready(());
            }
            // Bytes that left may have taken the buffer under the high-water mark, below which
            // queued requests are taken again; the queue holds no waker meanwhile.
            progressed |= this.flushed != flushed;
            match this.poll_read_frames(cx) {
                Poll::Ready(true) => progressed = true,
                Poll::Ready(false) => {
                    this.closed_by_upstream();
                    return Poll::Ready(());
                }
                Poll::Pending => {}
            }
            if this.sweep.poll(cx).is_ready() {
                if this.write_stalled(Instant::now()) {
                    tracing::warn!(address = %this.address, "closing upstream connection: the server took less than {MIN_WRITE_RATE} bytes a second of the calls written to it over {WRITE_STALL_LIMIT:?}");
                    this.stats.cx_write_stalled.inc();
                    this.fail_all();
                    return Poll::Ready(());
                }
                if this.frame_late() {
                    tracing::warn!(address = %this.address, "closing upstream connection: a response frame took longer than {:?} to arrive", this.frame_timeout);
                    this.stats.cx_protocol_errors.inc();
                    this.fail_all();
                    return Poll::Ready(());
                }
                if this.idle(Instant::now()) {
                    tracing::debug!(address = %this.address, "closing an idle upstream connection");
                    // A request that raced the close is refused unsent, and resent elsewhere.
                    this.fail_all();
                    return Poll::Ready(());
                }
                this.sweep();
                let next = Instant::now() + SWEEP_INTERVAL;
                this.sweep.reset(next);
                progressed = true;
            }
            if this.requests_closed && this.waiting.is_empty() && this.write_buf.is_empty() {
                this.intake.shared.closed.store(true, Ordering::Release);
                return Poll::Ready(());
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::stats::Metrics;
    use crate::testing::{Sized, read_slowly, run_until, sized_frame};
    use crate::transport::buffers::BUFFER_KEEP_LIMIT;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// What a connection to `address` speaking `codec` is made with, counted in `stats` and
    /// `endpoint`.
    fn params(
        address: SocketAddr,
        codec: Arc<dyn CodecFactory>,
        stats: &ClusterStats,
        endpoint: &EndpointStats,
    ) -> ConnectParams {
        ConnectParams {
            address,
            codec,
            variant: WireVariant::DEFAULT,
            settings: PoolSettings {
                connect_timeout: Duration::from_secs(5),
                connections: 1,
                idle_timeout: Duration::MAX,
                frame_timeout: Duration::from_secs(5),
                max_requests_per_connection: None,
            },
            connector: Connector::Plain,
            backoff: Arc::new(ConnectBackoff::new()),
            replacements: Arc::new(ConnectBackoff::new()),
            refusals: Arc::new(ConnectBackoff::new()),
            stats: stats.clone(),
            endpoint: endpoint.clone(),
            connected: None,
            permit: None,
            breakers: None,
        }
    }

    /// How an upstream connection served a server that read `step` bytes a second of the
    /// 256 KiB of calls written to it.
    #[derive(Debug)]
    struct SlowServer {
        /// Whether the connection ended within five minutes (of the test's paused clock).
        ended: bool,
        /// The bytes the server read.
        read: usize,
        /// The calls answered (each with an error), by call; the rest were not answered.
        answers: Vec<usize>,
        /// Whether the connection was counted as one whose server takes too little.
        counted: bool,
    }

    /// Serves a server that reads `step` bytes a second of the 64 calls of 4 KiB written to
    /// it, until its connection ends or five minutes (of the test's paused clock) pass.
    async fn serve_a_slow_server(step: usize) -> Result<SlowServer, Box<dyn std::error::Error>> {
        const CALLS: u32 = 64;
        let metrics = Metrics::new();
        let stats = ClusterStats::new(&metrics.root().detached("cluster", "c"));
        let endpoint = EndpointStats::new(&metrics.root().detached("endpoint", "e"));
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let params = params(address, Arc::new(Sized), &stats, &endpoint);
        let (handle, intake) = queue(&params);
        // Room for 1 KiB between the two ends: the rest of the calls wait in the proxy.
        let (io, mut peer) = tokio::io::duplex(1024);
        let mut connection = Multiplexer::new(io, params, intake);
        let (inbox, mut answers) = waiting::queue();
        for index in 0..CALLS {
            let mut message = Message::empty();
            message.frame = sized_frame(4096).into();
            let outbound = Outbound {
                message: Arc::new(message),
                mutation: Arc::new(metaprotocol_core::Mutation::new()),
                deadline: Instant::now() + Duration::from_secs(3600),
                tells_deadline: false,
                reply: ReplyTo::inbox(
                    inbox.clone(),
                    crate::upstream::RequestKey { index, seq: 0 },
                    0,
                ),
                placed: false,
            };
            if handle.send(outbound).is_err() {
                return Err("a call was refused".into());
            }
        }
        let server = tokio::spawn(async move { read_slowly(&mut peer, step).await });
        let ended = tokio::time::timeout(Duration::from_secs(300), &mut connection)
            .await
            .is_ok();
        drop(connection);
        let read = tokio::time::timeout(Duration::from_secs(600), server).await???;
        let mut answered = vec![0; CALLS as usize];
        while let Some(event) = answers.try_recv() {
            if event.result.is_ok() {
                return Err("a call was answered by a server that sent nothing".into());
            }
            answered[event.key.index as usize] += 1;
        }
        Ok(SlowServer {
            ended,
            read,
            answers: answered,
            counted: stats.cx_write_stalled.get() == 1,
        })
    }

    /// A server that takes the calls written to it a few bytes at a time, far slower than the
    /// least a peer must take of what waits for it, has its connection closed, counted, and
    /// every call on it answered with an error, once: before, every byte it took gave it
    /// another 30 s, so that it held up to 256 KiB of unsent calls and 16,384 queued ones on
    /// each connection for as long as it liked.
    #[tokio::test(start_paused = true)]
    async fn a_server_that_trickles_its_calls_in_is_disconnected() -> TestResult {
        let served = serve_a_slow_server(16).await?;
        assert!(
            served.ended,
            "a server reading 16 bytes a second of 256 KiB of calls still held them after 5 minutes: {served:?}"
        );
        assert!(
            served.answers.iter().all(|&answers| answers == 1),
            "each call answered once: {served:?}"
        );
        assert!(served.counted, "{served:?}");
        Ok(())
    }

    /// A server slow to read, but faster than the least a peer must take of what waits for
    /// it, gets every call.
    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_server_gets_its_calls() -> TestResult {
        let served = serve_a_slow_server(4096).await?;
        assert_eq!(served.read, 64 * 4096, "{served:?}");
        assert!(!served.ended && !served.counted, "{served:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_whose_task_panics_is_counted_closed() -> TestResult {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let metrics = Metrics::new();
        let stats = ClusterStats::new(&metrics.root().detached("cluster", "c"));
        let endpoint = EndpointStats::new(&metrics.root().detached("endpoint", "e"));
        // A codec that panics when the connection is up and makes its codec: a bug in a
        // protocol crate ends the task at once.
        let codec = Arc::new(crate::testing::NullCodec);
        let prepared = prepare(params(upstream.local_addr()?, codec, &stats, &endpoint));
        // The panic is caught in the task, and counted.
        tokio::time::timeout(Duration::from_secs(10), tokio::spawn(prepared.task)).await??;
        assert_eq!(stats.cx_panics.get(), 1);
        assert_eq!(stats.cx_total.get(), 1, "it was up");
        assert_eq!(stats.cx_active.get(), 0);
        assert_eq!(endpoint.cx_active.get(), 0);
        Ok(())
    }

    /// Once a large answer is decoded, the connection's read buffer no longer holds the
    /// allocation the answer made grow: the answer holds it on its way to its client, and it
    /// goes with the answer. Before, the read buffer read on into the rest of it, and took it
    /// back whole once the answer was gone (8 MiB kept for the 10 bytes of the next answer,
    /// after an answer of 8 MiB), for as long as the connection lived.
    #[tokio::test]
    async fn an_upstream_connection_does_not_keep_the_allocation_a_large_answer_made_grow()
    -> TestResult {
        let metrics = Metrics::new();
        let stats = ClusterStats::new(&metrics.root().detached("cluster", "c"));
        let endpoint = EndpointStats::new(&metrics.root().detached("endpoint", "e"));
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let params = params(address, Arc::new(Sized), &stats, &endpoint);
        // Kept: a connection whose queue closed would end once it has nothing in flight.
        let (_handle, intake) = queue(&params);
        let (io, mut peer) = tokio::io::duplex(1 << 20);
        let mut connection = Multiplexer::new(io, params, intake);
        // An answer of 8 MiB, and the first 10 bytes of one of 100 (both to call 0, which
        // waits on nothing: counted as unmatched once decoded).
        let mut sent = sized_frame(8 << 20);
        let next = sized_frame(100);
        sent.extend_from_slice(&next[..10]);
        let writer = tokio::spawn(async move {
            let written = peer.write_all(&sent).await;
            written.map(|()| peer)
        });
        run_until(&mut connection, |c| {
            c.stats.unmatched_responses.get() == 1 && c.read_buf.len() == 10
        })
        .await?;
        let mut peer = writer.await??;
        // The rest of it, and an answer of 8 MiB that ends where the write does: the bytes
        // that follow come once it is decoded and gone.
        let mut sent = next[10..].to_vec();
        sent.extend_from_slice(&sized_frame(8 << 20));
        let writer = tokio::spawn(async move {
            let written = peer.write_all(&sent).await;
            written.map(|()| peer)
        });
        run_until(&mut connection, |c| {
            c.stats.unmatched_responses.get() == 3 && c.read_buf.is_empty()
        })
        .await?;
        let mut peer = writer.await??;
        peer.write_all(&next[..10]).await?;
        run_until(&mut connection, |c| c.read_buf.len() == 10).await?;
        // What a connection reading large answers keeps: room for the next reads.
        assert!(
            connection.read_buf.capacity() <= BUFFER_KEEP_LIMIT + 10,
            "an upstream read buffer of {} bytes taken back for 10",
            connection.read_buf.capacity()
        );
        Ok(())
    }
}
