//! One client connection: a single task that reads and decodes frames, hands them to its
//! [`Requests`], and writes every answer that is ready in one write.
//!
//! Reading stops while the connection has too much in flight or too much unsent (a client that
//! does not read its answers cannot grow memory without bound), and while a large frame it is
//! receiving waits for room under the proxy-wide `max_buffered_bytes`. The connection closes
//! when the client closes and its requests are answered, when it sends a stream that cannot be
//! trusted (after answering what is in flight), when a frame takes too long to arrive, when it
//! sends more of a large frame while the frames being received fill `max_buffered_bytes` (after
//! answering what is in flight too), when its client takes too little of its waiting answers
//! (less than [`MIN_WRITE_RATE`](crate::transport::outbox::MIN_WRITE_RATE) a second over each
//! [`WRITE_STALL_LIMIT`]), when it is idle past the
//! listener's idle timeout, or at the end of a drain. Closing, it ends its stream after
//! the last answers and reads what the client still sends until the client closes too (for two
//! seconds at most): a socket closed with unread bytes is reset, which can destroy those answers.
//! Meanwhile it takes no upstream answers (those of attempts abandoned at their calls'
//! deadlines): its queue of them is closed, and they are counted as matching no request.
//!
//! An idle connection holds no buffers: it waits for readability without one, and a connection
//! quiet for a moment gives back its buffers and per-request machinery, so that ten thousand
//! idle clients cost little more than their sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use metaprotocol_core::{
    Codec, CodecError, ConnectionInfo, FrameHead, LocalReply, LocalReplyKind, PassedOver,
    ResponseFlags, Side, WireVariant,
};
use tokio::io::ReadBuf;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::load::{self, Load, ReadRoom, RoomWait};
use super::request::Requests;
use super::{Admitted, ListenerContext, busy_poll, linger};
use crate::router::deadline_after;
use crate::transport::buffers::{self, FrameSizes};
use crate::transport::outbox::{Outbox, WRITE_STALL_LIMIT, WriteWindow};
use crate::transport::{Accepted, Transport};
use crate::waiting::{Cancellation, Timer};

/// Requests in flight per client connection; past this the proxy stops reading from that client
/// until some complete.
pub(super) const MAX_IN_FLIGHT: usize = 4096;
/// Unsent answers per connection past which the proxy stops reading from that client.
const WRITE_BUDGET: usize = 1024 * 1024;
/// The bytes of the requests in flight per client connection (their frames, held until each
/// ends) past which the proxy decodes no more of that client's calls until some end. A call
/// larger than this still goes alone. Without it, a client's calls to a slow server held up to
/// [`MAX_IN_FLIGHT`] frames of the listener's `max_frame_bytes` each. Across connections, the
/// same bytes count against the proxy-wide `max_buffered_bytes` ([`super::load`]), past which new
/// calls are refused.
const REQUEST_BYTES_BUDGET: usize = 16 * 1024 * 1024;
/// A frame partly received up to this size (the read buffer any connection with bytes to read
/// takes) is read on whatever the proxy-wide load: it is what a read that ends mid-frame leaves
/// of a client's pipelined calls, which are refused whole, with the over-limit reply, if the
/// load is still over `max_buffered_bytes` when they are in. A read that could take more than
/// this (a buffer made room for a client's large frames, or its codec for a frame whose head
/// came) takes no more than the room left under that bound, or, with less left, up to just
/// past this size, or this much more of a larger frame. A frame partly received past this size
/// is a large call arriving (up to `max_frame_bytes`, for up to `frame_timeout`), read on only
/// while the bytes the proxy holds but for the connection's own are under that bound
/// ([`ReadRoom`]): past it, the connection waits while calls end and clients read their answers
/// (asleep until bytes are given back, [`super::load::Load::wait_for_room`]), and is closed if
/// the frames other connections are receiving fill the bound alone (they could hold it until
/// their `frame_timeout`, and the frames waiting on each other would never end).
const PARTIAL_FRAME_GRACE: usize = 16 * 1024;
/// Passes of a connection's loop (answers, reads, writes, deadlines) in one poll of its task,
/// past which it yields to the worker's other tasks. A pass that finds nothing to do ends the
/// poll long before.
const PASSES_PER_POLL: usize = 32;
/// Unsent answers per connection past which the client is deemed gone: answers of requests that
/// were already in flight when reading stopped can still land, but not without bound. Codecs
/// that hold answers to write them at once hold at most half of it.
const WRITE_LIMIT: usize = metaprotocol_core::MAX_UNSENT_ANSWER_BYTES;
/// While draining, a connection with nothing in flight that has been quiet this long closes.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// A connection with nothing in flight gives back its buffers after being quiet this long.
const TRIM_AFTER: Duration = Duration::from_secs(2);
/// After its last answer, a connection the proxy closes reads and drops what the client still
/// sends, until the client closes too, for at most this long: closing a socket with unread bytes
/// resets it, and a reset can destroy the last answers on their way to the client.
const CLOSE_WAIT_LIMIT: Duration = Duration::from_secs(2);
/// ... or until the client has sent nothing for this long.
const CLOSE_QUIET: Duration = Duration::from_millis(250);
/// Reads of a closing connection in one poll of its task, past which it yields.
const CLOSE_READS_PER_POLL: usize = 16;

/// A connection past its last answer: its write side shut, reading until the client closes.
struct Closing {
    /// When it closes whatever the client does.
    until: Instant,
    /// When it closes if the client sends nothing more.
    quiet_until: Instant,
    /// True once the write side is shut (the last answers flushed, then end of stream).
    shut: bool,
}

/// Whether the connection still reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    Open,
    /// The client closed its side, or the connection is closing: answer what is in flight.
    Done,
    /// The connection failed (reset by the client, or it takes none of its answers): nothing can
    /// be answered any more.
    Failed,
}

/// Why the proxy closes a client connection, as `%CONNECTION_TERMINATION_DETAILS%` shows it on
/// the lines of the calls that end once the proxy decided to (those answered meanwhile, those
/// it abandons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionTermination {
    /// The client sent a stream that cannot be read on: the kind of the codec's error (its
    /// protocol error series' label), shown `codec_error:<kind>` as Envoy's.
    CodecError(&'static str),
    /// A frame took longer than the listener's `frame_timeout` to arrive.
    FrameTimeout,
    /// A large frame arriving found `max_buffered_bytes` held by the frames other connections
    /// are receiving.
    MaxBufferedBytes,
    /// The client took too little of its answers, and was deemed gone.
    WriteStalled,
    /// The drain ended with calls still in flight (answered by the proxy).
    DrainEnded,
}

impl std::fmt::Display for ConnectionTermination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CodecError(kind) => write!(f, "codec_error:{kind}"),
            Self::FrameTimeout => f.write_str("frame_timeout"),
            Self::MaxBufferedBytes => f.write_str("max_buffered_bytes"),
            Self::WriteStalled => f.write_str("write_stalled"),
            Self::DrainEnded => f.write_str("drain_ended"),
        }
    }
}

/// What the engine knows of an accepted client connection.
pub(crate) fn info(
    accepted: Accepted,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &ListenerContext,
) -> Arc<ConnectionInfo> {
    Arc::new(ConnectionInfo {
        sni: accepted.sni,
        peer_identity: accepted.peer_identity,
        ..ConnectionInfo::new(ctx.name.clone(), peer, local)
    })
}

/// Serves one accepted client connection until the returned future ends. Not an `async fn`:
/// the future is the connection itself, without the arguments an `async fn` would keep beside
/// it for its whole life (an idle client costs its task's size).
pub(crate) fn serve<S: Transport>(
    io: S,
    connection: Arc<ConnectionInfo>,
    ctx: Admitted,
    drain: CancellationToken,
) -> impl Future<Output = ()> + use<S> {
    Connection::new(io, connection, ctx, drain)
}

/// A timer that is only ever moved earlier, and re-armed once it fired: deadlines that keep
/// moving later (the idle deadline moves with every request) cost a comparison, not a timer
/// update.
struct Alarm {
    timer: Timer,
    armed: Option<Instant>,
}

impl Alarm {
    fn new() -> Self {
        Self {
            timer: Timer::at(Instant::now()),
            armed: None,
        }
    }

    /// Makes sure the alarm rings no later than `at`.
    fn arm(&mut self, at: Instant) {
        if self.armed.is_none_or(|armed| at < armed) {
            self.timer.reset(at);
            self.armed = Some(at);
        }
    }

    /// True once the armed time came (and disarms it).
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed.is_some() && self.timer.poll(cx).is_ready() {
            self.armed = None;
            return true;
        }
        false
    }
}

struct Connection<S> {
    io: S,
    /// Counts the connection open while it lives.
    ctx: Admitted,
    decoder: Box<dyn Codec>,
    requests: Requests,
    /// Empty (no allocation) until bytes arrive, and again once trimmed.
    read_buf: BytesMut,
    /// The size of the frames read lately, for which `read_buf` makes room.
    frame_sizes: FrameSizes,
    write_buf: Outbox,
    /// Bytes written to the client so far.
    written: u64,
    /// While answers wait unsent, the share of them the client must take by when.
    write_window: WriteWindow,
    /// The unsent bytes this connection counts in the proxy-wide load.
    buffered: usize,
    /// The bytes of `read_buf` (read, not yet decoded) this connection counts in the
    /// proxy-wide load.
    read_buffered: usize,
    /// The bytes this connection counted in the proxy-wide load in all (its calls' frames, its
    /// bytes read, its unsent answers) at the end of its last pass ([`wake_if_gave_back`]).
    held_moved: usize,
    reading: Reading,
    /// The listener's drain signal; once it came, the order to end the drain at once
    /// ([`super::DrainPolicy::end_now`]).
    drain: Cancellation,
    draining_until: Option<Instant>,
    /// The last complete frame received or answer written.
    last_activity: Instant,
    /// When the frame now arriving started to (since the last complete one), if one is.
    partial_since: Option<Instant>,
    /// True when decoding stopped at [`MAX_IN_FLIGHT`] with bytes left in `read_buf`: they are
    /// decoded before the socket is read again.
    frames_left: bool,
    /// True while a request too large to decode, whose length its head does not give, is
    /// passed over by the codec as it arrives ([`Codec::pass_over`]).
    passing_oversized: bool,
    /// Set while the large frame being received waits for room under `max_buffered_bytes`.
    room_wait: Option<RoomWait>,
    alarm: Alarm,
    /// Its reads and calls in flight, as its worker's lingers count them.
    activity: linger::ConnectionActivity,
    /// Set once the connection is closing (boxed: idle connections are many).
    closing: Option<Box<Closing>>,
}

impl<S: Transport> Connection<S> {
    fn new(
        io: S,
        connection: Arc<ConnectionInfo>,
        ctx: Admitted,
        drain: CancellationToken,
    ) -> Self {
        let decoder = ctx.codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
        let encoder = ctx.codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
        Self {
            io,
            requests: Requests::new(ctx.context().clone(), connection, encoder),
            ctx,
            decoder,
            read_buf: BytesMut::new(),
            frame_sizes: FrameSizes::default(),
            write_buf: Outbox::new(),
            written: 0,
            write_window: WriteWindow::default(),
            buffered: 0,
            read_buffered: 0,
            held_moved: 0,
            reading: Reading::Open,
            drain: Cancellation::new(drain),
            draining_until: None,
            last_activity: Instant::now(),
            partial_since: None,
            frames_left: false,
            passing_oversized: false,
            room_wait: None,
            alarm: Alarm::new(),
            activity: linger::ConnectionActivity::default(),
            closing: None,
        }
    }

    /// Closes the connection once everything is answered: shuts its write side after the last
    /// answers, then reads and drops what the client still sends until it closes too, goes
    /// quiet, or [`CLOSE_WAIT_LIMIT`] passes.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        let closing = self.closing.get_or_insert_with(|| {
            Box::new(Closing {
                until: now + CLOSE_WAIT_LIMIT,
                quiet_until: now + CLOSE_QUIET,
                shut: false,
            })
        });
        if !closing.shut {
            self.room_wait = None;
            self.read_buf = BytesMut::new();
            self.ctx
                .load
                .read_buffered(std::mem::take(&mut self.read_buffered), 0);
            let held = self.requests.moved_bytes() + self.buffered;
            wake_if_gave_back(&self.ctx.load, &mut self.held_moved, held);
            self.write_buf.trim();
            // Its calls are over: the answers of attempts their deadlines abandoned, which it
            // would take no more, are counted as matching no request, those queued now and, by
            // their upstream connections, those to come, rather than held until it goes.
            self.requests.trim();
            match Pin::new(&mut self.io).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => closing.shut = true,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
        }
        if closing.shut {
            let mut scratch = [0u8; 4096];
            for read in 0.. {
                if read == CLOSE_READS_PER_POLL {
                    cx.waker().wake_by_ref();
                    break;
                }
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                        closing.quiet_until = now + CLOSE_QUIET;
                    }
                    // The client closed too, or its connection failed.
                    Poll::Ready(_) => return Poll::Ready(()),
                }
            }
        }
        let at = closing.until.min(closing.quiet_until);
        loop {
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            self.alarm.arm(at);
            if !self.alarm.poll(cx) {
                return Poll::Pending;
            }
        }
    }

    /// Reads and dispatches every frame that arrived. True if anything happened.
    fn poll_read_frames(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        if self.reading != Reading::Open {
            self.room_wait = None;
            return false;
        }
        if self.decoding_paused() {
            return false;
        }
        if self.reading_paused() && !self.frames_left {
            // Only the answers the encoder holds (a JSON-RPC batch's, until its last is in)
            // keep the socket waiting; the calls already read go on, among them the rest of a
            // batch whose own answers may be those held, which would otherwise never end.
            if self.read_buf.is_empty() {
                return false;
            }
            let frames = self.decode_frames(now, None);
            self.activity.read(frames, self.requests.len());
            return frames > 0;
        }
        if !std::mem::take(&mut self.frames_left) {
            // A frame partly received past the grace is read on only while there is room.
            let len = self.read_buf.len();
            if len > PARTIAL_FRAME_GRACE {
                match self.room_to_read(cx) {
                    ReadRoom::Free => {}
                    ReadRoom::Wait => return false,
                    ReadRoom::Full => {
                        tracing::debug!(listener = %self.ctx.name, "closing client connection: the frames being received hold max_buffered_bytes");
                        self.ctx.stats.cx_overflow.inc();
                        self.requests
                            .closing(ConnectionTermination::MaxBufferedBytes);
                        self.reading = Reading::Done;
                        self.read_buf = BytesMut::new();
                        return true;
                    }
                }
            }
            // What a read may take however little room is left: up to just past the grace
            // (where a large frame waits for room as above), or as much again of a large frame
            // the bound leaves room for but for the frame itself (one frame may pass the bound).
            let always = match len.checked_sub(PARTIAL_FRAME_GRACE) {
                Some(0) | None => PARTIAL_FRAME_GRACE + 1 - len,
                Some(_) => PARTIAL_FRAME_GRACE,
            };
            let (load, unmoved) = (&self.ctx.load, self.unmoved_bytes());
            // A read that could take more than the grace (all the socket holds: up to 1 MiB of
            // a client of large frames, the rest of a frame its codec made room for) takes no
            // more than the room left under `max_buffered_bytes`: many connections reading at
            // once near the bound would otherwise each pass it by as much. One into a buffer
            // of the usual size, as for small frames, does not look.
            let read = buffers::poll_read_within(
                &mut self.io,
                cx,
                &mut self.read_buf,
                &self.frame_sizes,
                |room| {
                    if room <= always.max(PARTIAL_FRAME_GRACE) {
                        return room;
                    }
                    load.room_left(unmoved).max(always)
                },
            );
            match read {
                Poll::Pending => return false,
                Poll::Ready(Ok(0)) => {
                    self.reading = Reading::Done;
                    return true;
                }
                Poll::Ready(Err(_)) => {
                    self.reading = Reading::Failed;
                    return true;
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
        let frames = self.decode_frames(now, None);
        self.activity.read(frames, self.requests.len());
        true
    }

    /// The bytes this connection holds that it has not moved into the proxy-wide load yet
    /// (negative: it gave back that many since): its bytes read, its calls' frames, its unsent
    /// answers.
    fn unmoved_bytes(&self) -> i64 {
        load::difference(self.read_buf.len(), self.read_buffered)
            + load::difference(self.requests.frame_bytes(), self.requests.moved_bytes())
            + load::difference(self.unsent(), self.buffered)
    }

    /// Whether the large frame being received may be read on ([`ReadRoom`]). While it waits,
    /// the task is woken when bytes are given back (or the bound raised), and looks again.
    fn room_to_read(&mut self, cx: &mut Context<'_>) -> ReadRoom {
        let load = &self.ctx.load;
        let room = load.room_to_read(self.read_buffered);
        if room != ReadRoom::Wait {
            self.room_wait = None;
            return room;
        }
        if self.room_wait.is_none() {
            self.room_wait = Some(load.wait_for_room());
        }
        // Registered before looking again: bytes given back from here on wake the task.
        let room = load.room_to_read(self.read_buffered);
        if room != ReadRoom::Wait {
            self.room_wait = None;
            return room;
        }
        let given_back = self
            .room_wait
            .as_mut()
            .is_some_and(|wait| wait.poll(cx).is_ready());
        if given_back {
            // Bytes were given back since the wait began, too few: look again at the next
            // poll, with a new wait.
            self.room_wait = None;
            cx.waker().wake_by_ref();
        }
        ReadRoom::Wait
    }

    /// Moves the bytes of `read_buf` into the proxy-wide load: once a pass, as the others.
    fn move_read_load(&mut self) {
        self.ctx
            .load
            .read_buffered(self.read_buffered, self.read_buf.len());
        self.read_buffered = self.read_buf.len();
    }

    /// Decodes the whole frames in `read_buf` and hands them to the requests, up to
    /// [`MAX_IN_FLIGHT`]; with `turn_away`, answers each with it instead (the connection is
    /// closing). Returns the frames decoded.
    fn decode_frames(&mut self, now: Instant, turn_away: Option<&LocalReply>) -> u64 {
        let held = self.read_buf.capacity();
        // The wall clock, read for the first frame: the frames of one read share it.
        let mut wall = None;
        let mut frames = 0;
        // Where the next frame is decoded: a finished request's allocation, kept for the next
        // read when no whole frame is left in this one.
        let mut slot = None;
        while !self.read_buf.is_empty() {
            if self.requests_full() {
                // One read may bring thousands of small calls (reads grow with the frames a
                // connection carries, to 1 MiB): the calls past the bound wait here, not in
                // flight, until calls end.
                self.frames_left = true;
                break;
            }
            if self.passing_oversized {
                match self.decoder.pass_over(&self.read_buf) {
                    Some(PassedOver::More) => {
                        self.read_buf.clear();
                        self.partial_since.get_or_insert(now);
                        break;
                    }
                    // The codec's next frame is the request it makes of the one passed over
                    // (one it answers with an error), even when no byte follows.
                    Some(PassedOver::End { len, .. }) => {
                        self.read_buf.advance(len.min(self.read_buf.len()));
                        self.passing_oversized = false;
                    }
                    None => {
                        self.bad_frame(&CodecError::malformed(
                            "the codec cannot pass over a request too large to decode",
                        ));
                        break;
                    }
                }
            }
            let message = slot.get_or_insert_with(|| self.requests.slot());
            match self
                .decoder
                .decode_into(&mut self.read_buf, Arc::make_mut(message))
            {
                Ok(true) => {
                    self.frame_sizes.saw(message.frame.len());
                    self.last_activity = now;
                    self.partial_since = None;
                    frames += 1;
                    let received = (now, *wall.get_or_insert_with(SystemTime::now));
                    if let Some(message) = slot.take() {
                        // The frame just left the bytes read, as those decoded before it did.
                        let read_unmoved =
                            load::difference(self.read_buf.len(), self.read_buffered);
                        let out = &mut self.write_buf;
                        match turn_away {
                            Some(reply) => self.requests.turn_away(
                                message,
                                reply,
                                ResponseFlags::DRAINING,
                                out,
                                received,
                            ),
                            None => {
                                self.requests.receive(message, out, received, read_unmoved);
                            }
                        }
                    }
                }
                Ok(false) => {
                    self.partial_since.get_or_insert(now);
                    break;
                }
                Err(CodecError::FrameTooLarge { .. })
                    if self.decoder.oversized_response(&self.read_buf)
                        == Some(FrameHead::Unsized) =>
                {
                    self.passing_oversized = true;
                }
                Err(err) => {
                    self.bad_frame(&err);
                    break;
                }
            }
        }
        if let Some(unused) = slot {
            self.requests.spare(unused);
        }
        if frames > 0 {
            // The frames split off count in flight until each call ends, and the allocation
            // with them; the connection, only the few bytes left.
            buffers::leave_large_allocation(&mut self.read_buf, held);
        }
        frames
    }

    /// Counts a stream that cannot be trusted any more, and stops reading it.
    fn bad_frame(&mut self, err: &CodecError) {
        tracing::debug!(listener = %self.ctx.name, error = %err, "closing client connection: bad frame");
        self.ctx.stats.protocol_error(err.counter_name()).inc();
        self.requests
            .closing(ConnectionTermination::CodecError(err.counter_name()));
        self.reading = Reading::Done;
    }

    /// True while the proxy decodes nothing more of what the client sent: too much in flight
    /// or written unsent.
    fn decoding_paused(&self) -> bool {
        self.requests_full() || self.write_buf.len() >= WRITE_BUDGET
    }

    /// True while the requests in flight are as many, or hold as many bytes, as a client may
    /// have in flight.
    fn requests_full(&self) -> bool {
        self.requests.len() >= MAX_IN_FLIGHT || self.requests.frame_bytes() >= REQUEST_BYTES_BUDGET
    }

    /// True while the proxy does not read from the client: decoding paused, or too much
    /// unsent counting the answers the encoder holds.
    fn reading_paused(&self) -> bool {
        self.decoding_paused() || self.unsent() >= WRITE_BUDGET
    }

    /// The bytes of answers not yet sent to the client: written, and held by the encoder to
    /// write later ([`Requests::held_answers`]).
    fn unsent(&self) -> usize {
        self.write_buf.len() + self.requests.held_answers()
    }

    /// Applies the drain signal and the connection's deadlines. True if anything changed.
    fn poll_lifecycle(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut changed = false;
        if self.draining_until.is_none() && self.drain.poll(cx).is_ready() {
            self.draining_until = Some(deadline_after(now, self.ctx.drain.time()));
            self.requests.goaway(&mut self.write_buf);
            // The drain signal is spent: a draining connection waits instead for the order to
            // end its drain now, polled only while it drains.
            self.drain = Cancellation::new(self.ctx.drain.ending());
            changed = true;
        }
        if self
            .draining_until
            .is_some_and(|until| now < until && self.drain.poll(cx).is_ready())
        {
            self.draining_until = Some(now);
            changed = true;
        }
        if let Some(until) = self.draining_until
            && now >= until
            && !self.requests.is_empty()
        {
            let reply = LocalReply::new(
                LocalReplyKind::Unavailable,
                "metaprotocol-proxy: the proxy is shutting down",
            );
            self.requests.closing(ConnectionTermination::DrainEnded);
            self.requests
                .answer_all(&reply, ResponseFlags::DRAINING, &mut self.write_buf);
            // Calls past the in-flight bound wait whole in the read buffer: the proxy read
            // them, so they get the same answer rather than a closed connection.
            if std::mem::take(&mut self.frames_left) {
                self.decode_frames(now, Some(&reply));
            }
            self.reading = Reading::Done;
            changed = true;
        }
        if self.reading_paused()
            && let Some(since) = self.partial_since.as_mut()
        {
            // The rest of the frame may be waiting in the socket: the proxy is the one not
            // reading, and the client's time starts again when it reads.
            *since = now;
        }
        if let Some(since) = self.partial_since
            && self.reading == Reading::Open
            && now >= deadline_after(since, self.ctx.frame_timeout)
        {
            tracing::debug!(listener = %self.ctx.name, "closing client connection: a frame took too long to arrive");
            self.ctx.stats.protocol_error("frame_timeout").inc();
            self.requests.closing(ConnectionTermination::FrameTimeout);
            self.reading = Reading::Done;
            changed = true;
        }
        if self.write_stalled(now) {
            tracing::debug!(listener = %self.ctx.name, "closing client connection: it takes too little of its answers");
            self.ctx.stats.cx_overflow.inc();
            self.requests.closing(ConnectionTermination::WriteStalled);
            self.reading = Reading::Failed;
            changed = true;
        }
        if self.reading == Reading::Open && self.requests.is_empty() && now >= self.idle_close_at()
        {
            self.reading = Reading::Done;
            changed = true;
        }
        if self.requests.is_empty()
            && self.read_buf.is_empty()
            && self.write_buf.is_empty()
            && now >= self.last_activity + TRIM_AFTER
        {
            self.read_buf = BytesMut::new();
            self.write_buf.trim();
            self.requests.trim();
        }
        if let Some(at) = self.next_deadline() {
            self.alarm.arm(at);
        }
        changed | self.alarm.poll(cx)
    }

    /// When an idle connection (nothing in flight) closes: after the listener's idle timeout,
    /// or, while draining, after a short quiet spell or at the drain deadline.
    fn idle_close_at(&self) -> Instant {
        let idle = deadline_after(self.last_activity, self.ctx.idle_timeout);
        match self.draining_until {
            Some(until) => {
                let quiet = DRAIN_QUIET.min(self.ctx.drain.time());
                idle.min(until).min(self.last_activity + quiet)
            }
            None => idle,
        }
    }

    /// True when the client took less than its share of its waiting answers over a window
    /// ([`WriteWindow`]) of [`WRITE_STALL_LIMIT`], or of the listener's idle timeout if
    /// shorter: a client deemed gone gives back its unsent answers, which count against the
    /// proxy-wide `max_buffered_bytes`, and sixteen of them holding [`WRITE_LIMIT`] each would
    /// hold the default bound whole.
    fn write_stalled(&mut self, now: Instant) -> bool {
        let length = WRITE_STALL_LIMIT.min(self.ctx.idle_timeout);
        self.write_window
            .stalled(now, self.write_buf.len(), self.written, length)
    }

    /// The next moment [`Connection::poll_lifecycle`] may have something to do.
    fn next_deadline(&self) -> Option<Instant> {
        let idle = self.requests.is_empty() && self.reading == Reading::Open;
        let holds_buffers = self.read_buf.capacity() > 0 || self.write_buf.holds_memory();
        [
            self.draining_until.filter(|_| !self.requests.is_empty()),
            // As `poll_lifecycle` acts on it: only while reading. A frame cut short when reading
            // stopped (frame timeout, end of stream, bad frame) keeps its start, and its past
            // deadline would ring at every pass while requests are still in flight.
            self.partial_since
                .filter(|_| self.reading == Reading::Open)
                .map(|since| deadline_after(since, self.ctx.frame_timeout)),
            idle.then(|| self.idle_close_at()),
            self.write_window.ends(),
            // The same condition as the trim's in `poll_lifecycle`: a deadline the trim would
            // not act on would ring again at once, and keep the task spinning.
            (self.requests.is_empty()
                && self.read_buf.is_empty()
                && self.write_buf.is_empty()
                && holds_buffers)
                .then(|| self.last_activity + TRIM_AFTER),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Wakes the connections waiting for room under `max_buffered_bytes` if the bytes a connection
/// counts in the proxy-wide load, `held` now, went down in all since it last looked
/// (`held_moved`): judged on its pass as a whole, since its moves shift bytes from one share to
/// another (a frame decoded, from those read to those in flight) without giving any back.
fn wake_if_gave_back(load: &Load, held_moved: &mut usize, held: usize) {
    if held < *held_moved {
        load.gave_back();
    }
    *held_moved = held;
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        self.ctx.load.buffered(self.buffered, 0);
        self.ctx.load.read_buffered(self.read_buffered, 0);
        if self.buffered + self.read_buffered > 0 {
            self.ctx.load.gave_back();
        }
    }
}

impl<S: Transport> Future for Connection<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.closing.is_some() {
            return this.poll_close(cx);
        }
        busy_poll::served();
        for _ in 0..PASSES_PER_POLL {
            let now = Instant::now();
            let mut progress = this.requests.poll(cx, &mut this.write_buf, now);
            progress |= this.poll_read_frames(cx, now);
            let before = this.written;
            let wrote = this
                .write_buf
                .poll_write(&mut this.io, cx, &mut this.written);
            let overflowing = this.write_buf.len() > WRITE_LIMIT;
            if overflowing {
                this.ctx.stats.cx_overflow.inc();
                this.requests.closing(ConnectionTermination::WriteStalled);
            }
            let unsent = this.unsent();
            this.ctx.load.buffered(this.buffered, unsent);
            this.buffered = unsent;
            if overflowing
                || this.reading == Reading::Failed
                || matches!(wrote, Poll::Ready(Err(_)))
            {
                // The client is gone: its requests end unanswered.
                this.requests.abandon_all();
                return Poll::Ready(());
            }
            if this.written != before {
                this.last_activity = now;
                // The buffer may now be under the budget past which reading stopped, and no read
                // waker is registered meanwhile: read again before waiting.
                progress = true;
            }
            progress |= this.poll_lifecycle(cx, now);
            this.requests.move_load();
            this.move_read_load();
            let held = this.requests.moved_bytes() + this.read_buffered + this.buffered;
            wake_if_gave_back(&this.ctx.load, &mut this.held_moved, held);
            if this.reading != Reading::Open
                && this.requests.is_empty()
                && this.write_buf.is_empty()
            {
                return this.poll_close(cx);
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: answers kept arriving from upstream connections on other threads. Their
        // queue does not spend tokio's budget of work per poll, but the socket's writes do, and
        // once it is spent they wait: without a yield, the answers would pile up unsent.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::task::ready;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::server::request::tests::{client, listener};
    use crate::testing::{ECHO, Sized, read_slowly, run_until, sized_frame};
    use crate::transport::buffers::BUFFER_KEEP_LIMIT;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A read that could take a large frame past its first 16 KiB, while the proxy holds
    /// `max_buffered_bytes`, takes it no further: the frame then waits for room, and is read
    /// whole once bytes are given back. Before, the read after the frame's head took all the
    /// socket had, whatever the load (here all of a frame of 4 MiB, the bound held by others):
    /// each client could pass the bound by as much at once.
    #[tokio::test]
    async fn a_large_frame_is_read_no_further_than_16_kib_while_the_bound_is_held() -> TestResult {
        let ctx = listener(Arc::new(Sized), "", &[])?;
        let bound = 1 << 20;
        ctx.load.set_limits(&crate::config::LimitsSpec {
            max_requests: 100,
            max_buffered_bytes: bound,
        });
        // The calls of other clients hold the bound.
        ctx.load.request_bytes(0, 1 << 20);
        let (io, mut peer) = tokio::io::duplex(8 << 20);
        peer.write_all(&sized_frame(4 << 20)).await?;
        let admitted = Admitted::new(Arc::clone(&ctx));
        let mut connection = Connection::new(io, client(), admitted, CancellationToken::new());
        run_until(&mut connection, |c| {
            c.room_wait.is_some() || c.ctx.stats.heartbeats.get() > 0
        })
        .await?;
        assert_eq!(
            connection.ctx.stats.heartbeats.get(),
            0,
            "the whole frame of 4 MiB read, the bound held by others"
        );
        assert!(
            connection.read_buf.len() <= 2 * PARTIAL_FRAME_GRACE,
            "{} bytes of the frame read, the bound held by others",
            connection.read_buf.len()
        );
        // The other calls end.
        ctx.load.request_bytes(1 << 20, 0);
        run_until(&mut connection, |c| c.ctx.stats.heartbeats.get() == 1).await?;
        drop(peer);
        Ok(())
    }

    /// A client's stream that notes the most bytes one read took.
    struct LargestRead {
        io: tokio::io::DuplexStream,
        largest: usize,
    }

    impl tokio::io::AsyncRead for LargestRead {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
            self.largest = self.largest.max(buf.filled().len() - before);
            Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncWrite for LargestRead {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// While the proxy holds all but 64 KiB of `max_buffered_bytes`, a client sending frames
    /// of 256 KiB has each read take no more than the room left (or the 16 KiB a read always
    /// may): before, a read the room was not looked at for took all the socket had, up to the
    /// 1 MiB a buffer makes room for with frames that large, and the rest of a frame its
    /// codec made room for, each client passing the bound by as much at once.
    #[tokio::test]
    async fn a_read_takes_no_more_than_the_room_left_under_the_bound() -> TestResult {
        let ctx = listener(Arc::new(Sized), "", &[])?;
        let bound = 4 << 20;
        ctx.load.set_limits(&crate::config::LimitsSpec {
            max_requests: 100,
            max_buffered_bytes: bound,
        });
        // The calls of other clients hold all but 64 KiB of the bound.
        let room = 64 << 10;
        ctx.load.request_bytes(0, bound as usize - room);
        let (io, mut peer) = tokio::io::duplex(8 << 20);
        let frames = 16;
        for _ in 0..frames {
            peer.write_all(&sized_frame(256 << 10)).await?;
        }
        let admitted = Admitted::new(Arc::clone(&ctx));
        let io = LargestRead { io, largest: 0 };
        let mut connection = Connection::new(io, client(), admitted, CancellationToken::new());
        run_until(&mut connection, |c| c.ctx.stats.heartbeats.get() == frames).await?;
        assert!(
            connection.io.largest <= room + PARTIAL_FRAME_GRACE,
            "a read took {} bytes with {room} left under the bound",
            connection.io.largest
        );
        drop(peer);
        Ok(())
    }

    /// Once a large frame is decoded, the connection's read buffer no longer holds the
    /// allocation the frame made grow: the frame holds it (counted in flight while its call
    /// lasts) and it goes with the frame. Before, the read buffer went on with the rest of the
    /// allocation (8 MiB left of 16 MiB, for a frame of 8 MiB), counted as the bytes it held
    /// (here 10), and took it back whole once the frame was gone, for as long as the
    /// connection was busy.
    #[tokio::test]
    async fn a_read_buffer_does_not_keep_the_allocation_a_large_frame_made_grow() -> TestResult {
        let ctx = listener(Arc::new(Sized), "", &[])?;
        let (io, mut peer) = tokio::io::duplex(1 << 20);
        let admitted = Admitted::new(Arc::clone(&ctx));
        let mut connection = Connection::new(io, client(), admitted, CancellationToken::new());
        // A frame of 8 MiB, and the first 10 bytes of one of 100.
        let mut sent = sized_frame(8 << 20);
        let next = sized_frame(100);
        sent.extend_from_slice(&next[..10]);
        let writer = tokio::spawn(async move {
            let written = peer.write_all(&sent).await;
            written.map(|()| peer)
        });
        run_until(&mut connection, |c| {
            c.ctx.stats.heartbeats.get() == 1 && c.read_buf.len() == 10
        })
        .await?;
        let mut peer = writer.await??;
        // What a connection reading large frames keeps: room for the next reads.
        let kept = BUFFER_KEEP_LIMIT + 10;
        assert!(
            connection.read_buf.capacity() <= kept,
            "a read buffer of {} bytes kept for 10",
            connection.read_buf.capacity()
        );
        assert_eq!(connection.read_buffered, 10, "counted");
        // The rest of it, and a frame of 8 MiB that ends where the write does: the bytes that
        // follow come once it is decoded and gone.
        let mut sent = next[10..].to_vec();
        sent.extend_from_slice(&sized_frame(8 << 20));
        let writer = tokio::spawn(async move {
            let written = peer.write_all(&sent).await;
            written.map(|()| peer)
        });
        run_until(&mut connection, |c| {
            c.ctx.stats.heartbeats.get() == 3 && c.read_buf.is_empty()
        })
        .await?;
        let mut peer = writer.await??;
        peer.write_all(&next[..10]).await?;
        run_until(&mut connection, |c| c.read_buf.len() == 10).await?;
        assert!(
            connection.read_buf.capacity() <= kept,
            "a read buffer of {} bytes taken back for 10",
            connection.read_buf.capacity()
        );
        Ok(())
    }

    /// How a connection served a client that asked for a frame of `len` bytes back and read
    /// `step` bytes of it a second.
    #[derive(Debug)]
    struct SlowRead {
        /// Whether the connection ended within five minutes (of the test's paused clock).
        ended: bool,
        /// The bytes the client read.
        read: usize,
        /// Whether the client was counted as one that does not read its answers.
        overflow: bool,
    }

    /// Serves a client that sends a frame of `len` bytes asking for itself back, then reads
    /// `step` bytes a second of what it is sent, until its connection ends or five minutes (of
    /// the test's paused clock) pass.
    async fn serve_a_slow_reader(
        len: u32,
        step: usize,
    ) -> Result<SlowRead, Box<dyn std::error::Error>> {
        let ctx = listener(Arc::new(Sized), "", &[])?;
        // Room for 1 KiB between the two ends: the rest of the answer waits in the proxy.
        let (io, mut peer) = tokio::io::duplex(1024);
        let admitted = Admitted::new(Arc::clone(&ctx));
        let mut connection = Connection::new(io, client(), admitted, CancellationToken::new());
        let mut sent = sized_frame(len);
        sent[4] = ECHO;
        let client = tokio::spawn(async move {
            peer.write_all(&sent).await?;
            read_slowly(&mut peer, step).await
        });
        let ended = tokio::time::timeout(Duration::from_secs(300), &mut connection)
            .await
            .is_ok();
        // The client sees the end once the connection is gone, after what it still reads of
        // what was sent.
        drop(connection);
        let read = tokio::time::timeout(Duration::from_secs(600), client).await???;
        assert_eq!(ctx.stats.heartbeats.get(), 1, "the frame was decoded");
        Ok(SlowRead {
            ended,
            read,
            overflow: ctx.stats.cx_overflow.get() == 1,
        })
    }

    /// A client that takes its answers a few bytes at a time, far slower than the least a
    /// client must take of them, is disconnected, and counted: before, every byte it took
    /// gave it another 30 s, so that it held up to 16 MiB of unsent answers (counted in the
    /// proxy-wide `max_buffered_bytes`) for as long as it liked.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_trickles_its_answers_is_disconnected() -> TestResult {
        let served = serve_a_slow_reader(64 * 1024, 16).await?;
        assert!(
            served.ended && served.overflow,
            "a client reading 16 bytes a second of an answer of 64 KiB still held it after 5 minutes: {served:?}"
        );
        Ok(())
    }

    /// A client slow to read a large answer, but faster than the least a client must take of
    /// its answers, gets it whole.
    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_gets_its_large_answer() -> TestResult {
        let served = serve_a_slow_reader(256 * 1024, 4096).await?;
        assert_eq!(served.read, 256 * 1024, "{served:?}");
        assert!(!served.overflow, "{served:?}");
        Ok(())
    }

    /// A connection closing, which reads what its client still sends for up to 2 s and takes
    /// no answers meanwhile, no longer takes any into its queue: before, the answers of
    /// attempts its calls' deadlines abandoned waited there until it went, each up to a
    /// cluster's `max_frame_bytes` and counted in no bound; now its upstream connections find
    /// the queue closed, and count each answer as matching no request, as they do once it went.
    #[tokio::test]
    async fn a_closing_connection_takes_no_answers_to_hold() -> TestResult {
        let ctx = listener(Arc::new(Sized), "", &[])?;
        let (io, mut peer) = tokio::io::duplex(1024);
        let admitted = Admitted::new(Arc::clone(&ctx));
        let mut connection = Connection::new(io, client(), admitted, CancellationToken::new());
        let inbox = connection.requests.inbox();
        // The client ends its calls (it made none) and keeps its side open: the connection
        // closes, and reads what the client may still send.
        peer.shutdown().await?;
        run_until(&mut connection, |c| c.closing.is_some()).await?;
        let late = crate::upstream::UpstreamEvent {
            key: crate::upstream::RequestKey { index: 0, seq: 0 },
            attempt: 1,
            result: Ok(Box::new(metaprotocol_core::Message::empty())),
        };
        assert!(
            inbox.send(late).is_err(),
            "a closing connection's queue took an answer, to hold uncounted until it goes"
        );
        Ok(())
    }
}
