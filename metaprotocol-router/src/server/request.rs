//! The requests in flight on one client connection, and every step of their walk: request
//! filters, the router, attempts and their answers, response filters, the answer written into
//! the connection's buffer, and the completion hooks.
//!
//! Everything here runs on the connection's own task, driven by what arrives: a decoded frame
//! ([`Requests::receive`]), an upstream answer, a timer, a filter's asynchronous work
//! ([`Requests::poll`]). Nothing waits and nothing is spawned per request; a request whose
//! filters never wait costs at most two allocations (its shared `Arc<Message>`, the box of its
//! record and stage), and none on a busy connection, which reuses those of the requests it
//! finished.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use metaprotocol_core::{
    ChainStep, Codec, CompleteContext, ConnectionInfo, EncodeParams, FilterFuture, LocalReply,
    LocalReplyKind, METADATA_OVERFLOW_REASON, Message, MessageKind, Mutation, RequestContext,
    RequestRecord, ResponseContext, ResponseFlags, Resume, Timings,
};
use slab::Slab;
use tokio::time::Instant;

use super::connection::{ConnectionTermination, MAX_IN_FLIGHT};
use super::timers::{TimerId, Timers};
use super::{ListenerContext, complete, load};
use crate::published::Cached;
use crate::route::RouteTable;
use crate::router::{self, Direction, Matched, Next, Routed, Routing, Snapshots, Unrouted};
use crate::stats::Counter;
use crate::trace::RequestSpan;
use crate::transport::outbox::Outbox;
use crate::upstream::{
    self, AttemptResult, Inbox, ReplyTo, RequestKey, UpstreamError, UpstreamEvent,
};
use crate::waiting::{self, Receiver};

/// Upstream answers handled per poll before the connection reads and writes again.
const EVENT_BATCH: usize = 256;

/// Allocations of finished requests' shared `Message` a connection keeps for its next
/// requests: that `Arc` is the one heap allocation of a request's walk, and a busy connection
/// finishes and starts requests by the batch (tens at a time). At most about 30 KB, given back
/// when the connection is trimmed.
const SPARE_MESSAGES: usize = 64;

/// The furthest a timer is armed ahead.
const TIMER_HORIZON: Duration = Duration::from_secs(365 * 24 * 3600);

/// Attempts a connection remembers after their request's deadline, or their own per-try
/// deadline, ended them in flight ([`Abandoned`]), the newest kept: as many as the calls it holds
/// in flight ([`MAX_IN_FLIGHT`]), so that a deadline that ends every call at once forgets none of
/// them.
const ABANDONED_ATTEMPTS: usize = MAX_IN_FLIGHT;

/// How long after it was abandoned an attempt is remembered, at least: until the connection
/// finds its queue of answers empty past this. Only an answer its upstream connection read
/// before the deadline reaches the request after it (one read later is counted there), and it
/// is queued within moments; this is far longer, for a loaded machine. However late the
/// connection takes an answer queued meanwhile (its worker busy, or the connection closing,
/// which takes none until it goes), the attempt is still remembered.
const LATE_ANSWER_WINDOW: Duration = Duration::from_secs(2);

/// An attempt in flight when its request's deadline, or its own per-try deadline, ended it. Its
/// answer, if its connection read it just before the deadline and it reaches the request once
/// the request ended (at that deadline, or after a retry or the failure that followed a per-try
/// deadline), matched nobody, and is counted in `counter` (its cluster's unmatched answers), as
/// one read after the deadline is. While the request goes on, its router counts such an answer.
struct Abandoned {
    key: RequestKey,
    attempt: u32,
    counter: Counter,
    /// When it may be forgotten ([`LATE_ANSWER_WINDOW`] after it was abandoned).
    until: Instant,
}

impl Abandoned {
    /// The attempt in flight of request `key`, `routed`, abandoned at `now`, if there is one.
    fn in_flight(routed: &Routed, key: RequestKey, now: Instant) -> Option<Self> {
        let (attempt, counter) = routed.attempt_in_flight()?;
        Some(Self {
            key,
            attempt,
            counter: counter.clone(),
            until: now + LATE_ANSWER_WINDOW,
        })
    }
}

/// A connection's abandoned attempts whose answers may still be queued for it, oldest first, at
/// most [`ABANDONED_ATTEMPTS`]: those of the last [`LATE_ANSWER_WINDOW`], and older ones until
/// the connection finds its queue empty. Empty, it holds no allocation; requests that end in
/// time never touch it.
#[derive(Default)]
struct AbandonedAttempts(VecDeque<Abandoned>);

impl AbandonedAttempts {
    /// Remembers `abandoned`, forgetting the oldest when full.
    fn remember(&mut self, abandoned: Abandoned) {
        if self.0.len() == ABANDONED_ATTEMPTS {
            self.0.pop_front();
        }
        self.0.push_back(abandoned);
    }

    /// Forgets the attempts whose window has passed by `now`: call it only once every answer
    /// queued before `now` was taken, lest one still queued be forgotten.
    fn forget_before(&mut self, now: Instant) {
        while self.0.front().is_some_and(|oldest| oldest.until <= now) {
            self.0.pop_front();
        }
    }

    /// The answer of attempt `attempt` of the ended request `key` (a `response`, or a failure):
    /// a response counted as unmatched if the attempt was abandoned, which it is no longer.
    fn answered(&mut self, key: RequestKey, attempt: u32, response: bool) {
        // Answers come mostly in the order their attempts were abandoned: near the front.
        let Some(index) = self
            .0
            .iter()
            .position(|a| a.key == key && a.attempt == attempt)
        else {
            return;
        };
        if let Some(abandoned) = self.0.remove(index)
            && response
        {
            abandoned.counter.inc();
        }
    }
}

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    /// The request's deadline (before routing: how long its filters may wait).
    Deadline,
    /// The per-try deadline of attempt `n`.
    Attempt(u32),
    /// The end of the pause before the attempt after attempt `n`.
    Retry(u32),
}

/// Where a request is in its walk.
enum Stage {
    /// Request filters are running or waiting.
    Filtering,
    /// Routed: an attempt is in flight, or a retry is pending.
    Routed(Routed),
    /// The response is back; response filters are waiting.
    Responding {
        routed: Routed,
        response: Box<Message>,
    },
    /// The router answered itself for the route the request matched (a direct response, a
    /// route without a target): the request is being answered.
    Answered(Matched),
}

/// The large parts of a request in flight, its record and its stage (about 430 bytes), in a
/// box the connection reuses from one request to the next ([`Requests::walks`]): the slab moves
/// a request in when it starts and out when it ends, and each move of these is a copy.
struct Walk {
    record: RequestRecord,
    stage: Stage,
}

impl Walk {
    /// Holds nothing of a request ([`Requests::vacate`]): its record is that of none received,
    /// its stage `Filtering`.
    fn vacant(connection: &Arc<ConnectionInfo>, now: Instant) -> Self {
        Self {
            record: RequestRecord::received_at(
                Arc::clone(connection),
                0,
                now.into_std(),
                SystemTime::UNIX_EPOCH,
            ),
            stage: Stage::Filtering,
        }
    }

    /// Takes a request of `bytes` received at `received` (the monotonic and the wall clock)
    /// into a vacant walk: its record is then the one `RequestRecord::received_at` makes, with
    /// the fields it sets from these written in place (the rest, and the connection, are
    /// already so), not a new record moved over it.
    fn take(&mut self, bytes: u64, (received, wall): (Instant, SystemTime)) {
        let record = &mut self.record;
        record.bytes_received = bytes;
        record.timings = Timings::new(received.into_std());
        record.start_time = wall;
    }
}

/// One request in flight.
struct InFlight {
    seq: u32,
    request: Arc<Message>,
    /// Its record and stage, boxed (see [`Walk`]).
    walk: Box<Walk>,
    /// What filters add: to the upstream request while filtering, to the client response after.
    mutation: Mutation,
    deadline_timer: Option<TimerId>,
    step_timer: Option<TimerId>,
    /// Its trace, on listeners that trace; it sees every attempt.
    span: Option<Box<RequestSpan>>,
    /// Ends the filter's wait, if one is under way, when the request ends first (its deadline,
    /// a drain): the wait's future and timers go with it, not when it would have resumed.
    wait: Option<AbortHandle>,
}

/// The request in flight under `key`, if it is still the one the key was made for.
fn in_flight(slab: &mut Slab<InFlight>, key: RequestKey) -> Option<&mut InFlight> {
    slab.get_mut(key.index as usize)
        .filter(|inflight| inflight.seq == key.seq)
}

/// Hands the answer of attempt `attempt` to the router of a request at `stage`; what comes
/// next, `None` if nothing changes. A request in its response filters has no attempt in flight:
/// the router counts a response there as unmatched (an earlier attempt's, read just before its
/// per-try deadline, that reached the request after the next attempt was answered), as it does
/// while an attempt is in flight or a retry waits.
fn stage_answered(
    stage: &mut Stage,
    attempt: u32,
    result: &AttemptResult,
    record: &mut RequestRecord,
    span: &mut Option<Box<RequestSpan>>,
    now: Instant,
) -> Option<Next> {
    match stage {
        Stage::Routed(routed) | Stage::Responding { routed, .. } => {
            routed.answered(attempt, result, record, span, now)
        }
        // No attempt was made.
        Stage::Filtering | Stage::Answered(_) => None,
    }
}

/// How a request ends.
enum Answer<'a> {
    /// Forward the upstream response, with the route's and filters' mutation. Borrowed: a
    /// `Message` is large, and each move of it is a copy.
    Response(&'a Message),
    /// Answer with a local reply (one-way requests get none).
    Local(LocalReply),
    /// Nothing to send: a one-way request, or a client gone.
    Nothing,
}

/// A filter's asynchronous work, tagged with the request and the chain step it resumes; it
/// ends with `None` when its request ended first.
struct FilterWait {
    key: RequestKey,
    step: usize,
    direction: Direction,
    future: Abortable<GuardedWait>,
}

impl Future for FilterWait {
    type Output = Option<(RequestKey, usize, Direction, Resume)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resumed = ready!(self.future.poll_unpin(cx)).ok();
        Poll::Ready(resumed.map(|resume| (self.key, self.step, self.direction, resume)))
    }
}

/// A filter's future, a panic in it answered as an internal error.
struct GuardedWait(FilterFuture);

impl Future for GuardedWait {
    type Output = Resume;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resume> {
        metaprotocol_core::poll_wait(&mut self.0, cx)
    }
}

/// A connection's copy of its listener's route table, and the snapshots of the clusters its
/// requests went to by that table.
struct RouteCache {
    table: Cached<RouteTable>,
    /// Cleared when another table is read: it keeps only clusters of the table it is for.
    snapshots: Snapshots,
}

impl RouteCache {
    /// The snapshots kept for `table`, if it is the connection's copy (`routes`'); a request
    /// routed by an older one reads its cluster's snapshot without them, so that they keep no
    /// cluster the current table dropped.
    fn snapshots_for<'a>(
        routes: &'a mut Option<RouteCache>,
        table: &Arc<RouteTable>,
    ) -> Option<&'a mut Snapshots> {
        routes
            .as_mut()
            .filter(|cache| Arc::ptr_eq(cache.table.copy(), table))
            .map(|cache| &mut cache.snapshots)
    }
}

/// The requests in flight on one connection.
pub(crate) struct Requests {
    ctx: Arc<ListenerContext>,
    connection: Arc<ConnectionInfo>,
    encoder: Box<dyn Codec>,
    slab: Slab<InFlight>,
    next_seq: u32,
    /// Where upstream answers arrive; made on the first attempt, closed when the connection
    /// ends every request at once (its client gone, or the drain deadline), dropped when
    /// trimmed.
    channel: Option<(Inbox, Receiver<UpstreamEvent>)>,
    /// Made on the first timer, dropped when trimmed; boxed, so that an idle connection holds
    /// a pointer's worth.
    timers: Option<Box<Timers<(RequestKey, TimerKind)>>>,
    /// Made on the first filter that waits, dropped when trimmed.
    waits: Option<FuturesUnordered<FilterWait>>,
    /// Allocations for the next requests' messages, each holding an empty message (see
    /// [`SPARE_MESSAGES`]); dropped when trimmed.
    spare: Vec<Arc<Message>>,
    /// The boxes of finished requests' records and stages, each vacant, for the next requests
    /// (see [`Walk`]): as many as it ever held requests in flight at once; dropped when trimmed.
    /// Boxed in the list too: a request takes the box itself, which its record stays in.
    #[allow(clippy::vec_box)]
    walks: Vec<Box<Walk>>,
    /// Its requests in flight as the proxy-wide load last counted them ([`Requests::move_load`]).
    moved: usize,
    /// The answers its encoder holds to write later ([`Codec::held_answer_bytes`]), as of the
    /// last answer it gathered.
    held: usize,
    /// The listener's route table as of its last request, and the snapshots of the clusters
    /// its requests went to by it; made on the first request, dropped when trimmed (an idle
    /// connection does not keep a replaced table or snapshot alive for long).
    routes: Option<RouteCache>,
    /// Attempts whose requests ended at their deadline, at most [`ABANDONED_ATTEMPTS`]; made on
    /// the first, dropped when trimmed.
    abandoned: AbandonedAttempts,
    /// The bytes of the frames of its requests in flight, which the proxy holds until each
    /// ends (a retry or a mirror sends them again).
    frame_bytes: usize,
    /// Its `frame_bytes` as the proxy-wide load last counted them ([`Requests::move_load`]).
    moved_bytes: usize,
    /// Why the proxy closes the connection, once it decided to: the requests that end from
    /// then on record it, for an access log that shows it.
    closing: Option<ConnectionTermination>,
}

impl Drop for Requests {
    /// Its requests leave the proxy-wide load and the requests in flight with it, however its
    /// connection ended. Each ends with its answer or its abandonment on every path a
    /// connection closes by; a task that panicked, or was dropped with its runtime, leaves
    /// some here. The answers still queued for it are counted (see
    /// [`Requests::close_answers`]): a connection that closes once its requests ended takes no
    /// more, and an attempt its deadline abandoned may be answered meanwhile.
    fn drop(&mut self) {
        self.close_answers();
        self.ctx.load.requests(self.moved, 0);
        self.ctx.load.request_bytes(self.moved_bytes, 0);
        if self.moved_bytes > 0 {
            self.ctx.load.gave_back();
        }
        if !self.slab.is_empty() {
            self.ctx.stats.rq_active.dec_by(self.slab.len() as u64);
        }
    }
}

impl Requests {
    pub fn new(
        ctx: Arc<ListenerContext>,
        connection: Arc<ConnectionInfo>,
        encoder: Box<dyn Codec>,
    ) -> Self {
        Self {
            ctx,
            connection,
            encoder,
            slab: Slab::new(),
            next_seq: 0,
            channel: None,
            timers: None,
            waits: None,
            spare: Vec::new(),
            walks: Vec::new(),
            moved: 0,
            held: 0,
            routes: None,
            abandoned: AbandonedAttempts::default(),
            frame_bytes: 0,
            moved_bytes: 0,
            closing: None,
        }
    }

    /// The proxy decided to close the connection, for `why` (the first reason stands): the
    /// requests that end from now on record it.
    pub fn closing(&mut self, why: ConnectionTermination) {
        self.closing.get_or_insert(why);
    }

    /// The bytes of answers its encoder holds, appended to no write yet (a JSON-RPC batch's
    /// until its last answer): unsent answers of the connection as much as those written.
    pub fn held_answers(&self) -> usize {
        self.held
    }

    /// The bytes of its requests' frames as the proxy-wide load last counted them.
    pub fn moved_bytes(&self) -> usize {
        self.moved_bytes
    }

    /// Moves its requests in flight, and the bytes of their frames, into the proxy-wide load:
    /// once a pass over the connection's work, not once a request (see [`super::load`]).
    pub fn move_load(&mut self) {
        self.ctx.load.requests(self.moved, self.slab.len());
        self.moved = self.slab.len();
        self.ctx
            .load
            .request_bytes(self.moved_bytes, self.frame_bytes);
        self.moved_bytes = self.frame_bytes;
    }

    /// Gives back what an idle connection does not need (its request slots, timers,
    /// answer queue, the answers in it counted); they are made again on demand.
    pub fn trim(&mut self) {
        if self.slab.is_empty() {
            self.slab = Slab::new();
            self.close_answers();
            self.timers = None;
            self.waits = None;
            self.spare = Vec::new();
            self.walks = Vec::new();
            self.routes = None;
            self.abandoned = AbandonedAttempts::default();
        }
    }

    /// A shared message, held by nothing else, for the codec to decode the next request into
    /// ([`Codec::decode_into`]): a finished request's allocation when one is spare. Decoded in
    /// place, a request is not copied on its way from the codec to the request's walk (three
    /// copies of about 440 bytes when the codec returned it and it was moved into the
    /// allocation).
    pub fn slot(&mut self) -> Arc<Message> {
        self.spare
            .pop()
            .unwrap_or_else(|| Arc::new(Message::empty()))
    }

    /// Keeps the allocation of a finished request's message (or of a slot that took no frame)
    /// for a next one, if nothing else holds it (a mirrored copy still in flight may) and the
    /// connection keeps fewer than [`SPARE_MESSAGES`].
    pub fn spare(&mut self, mut message: Arc<Message>) {
        if self.spare.len() < SPARE_MESSAGES
            && let Some(finished) = Arc::get_mut(&mut message)
        {
            // What the finished message holds (its frame) goes now, not on reuse.
            finished.reset(MessageKind::Request, 0, Bytes::new());
            self.spare.push(message);
        }
    }

    /// The listener's route table: the connection's copy, unless an update replaced it (the
    /// snapshots kept for the copy replaced go with it).
    fn route_table(&mut self) -> Arc<RouteTable> {
        let published = &self.ctx.routes.table;
        let cache = self.routes.get_or_insert_with(|| RouteCache {
            table: published.cached(),
            snapshots: Snapshots::default(),
        });
        if cache.table.refresh(published) {
            cache.snapshots.clear();
        }
        Arc::clone(cache.table.copy())
    }

    /// Its queue of upstream answers (made on demand), for an attempt to be answered in.
    pub(in crate::server) fn inbox(&mut self) -> Inbox {
        self.channel.get_or_insert_with(waiting::queue).0.clone()
    }

    /// Waits for `future`, a filter's at chain step `step`, before request `key` goes on.
    fn wait(&mut self, key: RequestKey, step: usize, direction: Direction, future: FilterFuture) {
        let (abort, registration) = AbortHandle::new_pair();
        if let Some(inflight) = self.get(key) {
            inflight.wait = Some(abort);
        }
        let future = Abortable::new(GuardedWait(future), registration);
        self.waits
            .get_or_insert_with(FuturesUnordered::new)
            .push(FilterWait {
                key,
                step,
                direction,
                future,
            });
    }

    /// Forgets a timer the request has let go of (`None`: it held none): it fires unheeded
    /// (see [`Requests::timer`]) unless a compaction drops it first.
    fn cancel_timer(&mut self, timer: Option<TimerId>) {
        let (Some(_), Some(timers)) = (timer, &mut self.timers) else {
            return;
        };
        if timers.cancel() {
            let slab = &self.slab;
            timers.compact(|id, (key, _)| {
                slab.get(key.index as usize).is_some_and(|inflight| {
                    inflight.seq == key.seq
                        && (inflight.deadline_timer == Some(id) || inflight.step_timer == Some(id))
                })
            });
        }
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// The bytes of the frames of the requests in flight.
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Writes the protocol's "going away" notice: the connection starts draining.
    pub fn goaway(&mut self, out: &mut Outbox) {
        if let Err(err) = self.encoder.encode_goaway(out.buf()) {
            tracing::debug!(listener = %self.ctx.name, error = %err, "cannot encode a going-away notice");
        }
    }

    /// Handles a frame decoded from the client (into a [`Requests::slot`]: moving a `Message`
    /// is a copy of over 400 bytes), received at `received` (the monotonic and the wall clock).
    /// `read_unmoved` is how much the bytes the connection read and has not decoded changed
    /// since it last moved them into the proxy-wide load: the frames decoded since (this one
    /// among them) left them, the bytes read since joined them. A call is admitted on the bytes
    /// held but for its own frame, each counted once: those of the frames decoded before it in
    /// this pass count as in flight, and no longer as read.
    pub fn receive(
        &mut self,
        message: Arc<Message>,
        out: &mut Outbox,
        received: (Instant, SystemTime),
        read_unmoved: i64,
    ) {
        match message.kind {
            MessageKind::Request | MessageKind::Oneway => {
                self.start(message, out, received, read_unmoved);
            }
            MessageKind::Heartbeat => {
                self.ctx.stats.heartbeats.inc();
                if let Err(err) = self.encoder.encode_heartbeat_reply(&message, out.buf()) {
                    tracing::warn!(listener = %self.ctx.name, error = %err, "cannot answer a heartbeat");
                }
                self.spare(message);
            }
            // Clients do not answer the proxy; stray answers are ignored.
            _ => self.spare(message),
        }
    }

    /// Handles whatever is ready: upstream answers, filters' work, timers. True if anything
    /// was.
    pub fn poll(&mut self, cx: &mut Context<'_>, out: &mut Outbox, now: Instant) -> bool {
        let mut progress = false;
        for _ in 0..EVENT_BATCH {
            let Some((_, events)) = &mut self.channel else {
                break;
            };
            match events.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    self.answered(event.key, event.attempt, &event.result, out, now);
                    if let Ok(response) = event.result {
                        upstream::recycle(response);
                    }
                    progress = true;
                }
                _ => {
                    // Every answer queued is taken: that of an attempt abandoned before the
                    // window would be among them.
                    self.abandoned.forget_before(now);
                    break;
                }
            }
        }
        while let Some(waits) = &mut self.waits
            && let Poll::Ready(Some(resumed)) = waits.poll_next_unpin(cx)
        {
            if let Some((key, step, direction, resume)) = resumed {
                self.resumed(key, step, direction, resume, out, now);
            }
            progress = true;
        }
        while let Some(timers) = &mut self.timers
            && let Poll::Ready(expired) = timers.poll_expired(cx)
        {
            let (request, kind) = expired.what;
            self.timer(request, kind, expired.id, out, Instant::now());
            progress = true;
        }
        progress
    }

    /// Answers every two-way request still in flight with `reply` and ends them: the
    /// connection is about to close (the drain deadline passed). The answers of their attempts
    /// in flight, already queued or to come while the connection closes, matched no request
    /// waiting, and are counted so.
    pub fn answer_all(&mut self, reply: &LocalReply, flags: ResponseFlags, out: &mut Outbox) {
        self.close_answers();
        let now = Instant::now();
        let keys: Vec<RequestKey> = self.keys();
        for key in keys {
            if let Some(inflight) = self.slab.get_mut(key.index as usize) {
                inflight.walk.record.set_local_reply(reply.kind, flags);
            }
            self.finish(key, Answer::Local(reply.clone()), out, now);
        }
    }

    /// Ends every request without an answer: the client is gone. The answers already queued
    /// for them, and those that come later (their upstream connections find the queue closed),
    /// matched no request waiting, and are counted so.
    pub fn abandon_all(&mut self) {
        self.close_answers();
        let now = Instant::now();
        let mut sink = Outbox::new();
        for key in self.keys() {
            if let Some(inflight) = self.slab.get_mut(key.index as usize) {
                inflight
                    .walk
                    .record
                    .outcome
                    .flags
                    .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            }
            self.finish(key, Answer::Nothing, &mut sink, now);
        }
    }

    /// Closes the queue of upstream answers, which no request will take any more (the
    /// connection is ending every request, or it is going, or is trimmed with none in flight):
    /// the answers in it are counted as matching no request waiting, and those that come later
    /// are counted so by their upstream connections, which find the queue closed. The abandoned
    /// attempts are forgotten: no answer reaches them any more.
    fn close_answers(&mut self) {
        let Some((_, mut events)) = self.channel.take() else {
            return;
        };
        events.close();
        while let Some(event) = events.try_recv() {
            self.unmatched(event);
        }
        self.abandoned = AbandonedAttempts::default();
    }

    /// Counts `event`, an answer its request will not take (its client is gone, or its
    /// connection is closing), with its cluster's answers that matched no request waiting.
    fn unmatched(&mut self, event: UpstreamEvent) {
        let (key, attempt) = (event.key, event.attempt);
        let Ok(response) = event.result else {
            return;
        };
        match self.get(key).map(|inflight| &inflight.walk.stage) {
            Some(Stage::Routed(routed) | Stage::Responding { routed, .. }) => {
                routed.unmatched_responses().inc();
            }
            Some(Stage::Filtering | Stage::Answered(_)) => {}
            None => self.abandoned.answered(key, attempt, true),
        }
        upstream::recycle(response);
    }

    fn keys(&self) -> Vec<RequestKey> {
        self.slab
            .iter()
            .map(|(index, inflight)| RequestKey {
                index: index as u32,
                seq: inflight.seq,
            })
            .collect()
    }

    /// Arms a timer. Tokio's timers reach about two years; a later deadline ("no timeout")
    /// is armed at the horizon, where it fires early and is checked against the real one.
    fn set_timer(
        &mut self,
        key: RequestKey,
        kind: TimerKind,
        at: Instant,
        now: Instant,
    ) -> TimerId {
        self.timers.get_or_insert_with(Box::default).insert(
            (key, kind),
            at.min(router::deadline_after(now, TIMER_HORIZON)),
        )
    }

    fn get(&mut self, key: RequestKey) -> Option<&mut InFlight> {
        in_flight(&mut self.slab, key)
    }

    fn start(
        &mut self,
        message: Arc<Message>,
        out: &mut Outbox,
        received: (Instant, SystemTime),
        read_unmoved: i64,
    ) {
        // A request whose metadata overflowed would be routed and filtered without some of its
        // entries: it is refused rather than judged on part of what it carries.
        let reject_reason = message.reject_reason.or_else(|| {
            message
                .metadata
                .overflowed()
                .then_some(METADATA_OVERFLOW_REASON)
        });
        let admitted = self.ctx.load.admits(
            load::difference(self.slab.len(), self.moved),
            load::difference(self.frame_bytes, self.moved_bytes).saturating_add(read_unmoved),
        );
        let key = self.admit(message, received);
        let now = received.0;
        if !admitted {
            let reply = LocalReply::new(
                LocalReplyKind::OverLimit,
                "metaprotocol-proxy: the proxy is overloaded",
            );
            self.refuse_at_once(key, reply, ResponseFlags::OVERLOADED, out, now);
        } else if let Some(reason) = reject_reason {
            let reply = LocalReply::new(LocalReplyKind::BadRequest, reason);
            self.refuse_at_once(key, reply, ResponseFlags::BAD_REQUEST, out, now);
        } else {
            self.run_request_filters(key, 0, out, now);
        }
    }

    /// Answers a frame decoded from the client with `reply` at once, neither filtered nor
    /// routed: the connection is closing, and this call was read but never started.
    pub fn turn_away(
        &mut self,
        message: Arc<Message>,
        reply: &LocalReply,
        flags: ResponseFlags,
        out: &mut Outbox,
        received: (Instant, SystemTime),
    ) {
        if !matches!(message.kind, MessageKind::Request | MessageKind::Oneway) {
            return self.receive(message, out, received, 0);
        }
        let key = self.admit(message, received);
        self.refuse_at_once(key, reply.clone(), flags, out, received.0);
    }

    /// Counts and records a request received at `received` and puts it in flight, before its
    /// filters run.
    fn admit(&mut self, message: Arc<Message>, (now, wall): (Instant, SystemTime)) -> RequestKey {
        let stats = &self.ctx.stats;
        stats.rq_total.inc();
        stats.rq_active.inc();
        if message.kind == MessageKind::Oneway {
            stats.rq_oneway.inc();
        }
        // Written into a vacant box, which stays put: the record is not copied.
        let mut walk = self
            .walks
            .pop()
            .unwrap_or_else(|| Box::new(Walk::vacant(&self.connection, now)));
        walk.take(message.frame.len() as u64, (now, wall));
        let span = self
            .ctx
            .tracer
            .as_ref()
            .map(|tracer| tracer.start(&message));
        self.next_seq = self.next_seq.wrapping_add(1);
        let seq = self.next_seq;
        self.frame_bytes += message.frame.len();
        let index = self.slab.insert(InFlight {
            seq,
            request: message,
            walk,
            mutation: Mutation::new(),
            deadline_timer: None,
            step_timer: None,
            span,
            wait: None,
        });
        RequestKey {
            index: index as u32,
            seq,
        }
    }

    /// Ends a request the proxy answers itself before its filters run (overload, a bad
    /// request, a closing connection), its record flagged `flags`.
    fn refuse_at_once(
        &mut self,
        key: RequestKey,
        reply: LocalReply,
        flags: ResponseFlags,
        out: &mut Outbox,
        now: Instant,
    ) {
        if let Some(inflight) = self.get(key) {
            inflight.walk.record.set_local_reply(reply.kind, flags);
        }
        self.finish(key, Answer::Local(reply), out, now);
    }

    fn run_request_filters(
        &mut self,
        key: RequestKey,
        from: usize,
        out: &mut Outbox,
        now: Instant,
    ) {
        // Borrowed beside the request (no clone of the shared chain, whose reference count
        // every worker would write).
        let filters = &self.ctx.filters;
        let Some(inflight) = in_flight(&mut self.slab, key) else {
            return;
        };
        let step = filters.run_request(
            from,
            &mut RequestContext {
                request: &inflight.request,
                mutation: &mut inflight.mutation,
                record: &mut inflight.walk.record,
            },
        );
        self.after_request_filters(key, step, out, now);
    }

    fn after_request_filters(
        &mut self,
        key: RequestKey,
        step: ChainStep,
        out: &mut Outbox,
        now: Instant,
    ) {
        match step {
            ChainStep::Done => self.route(key, out, now),
            ChainStep::Reply(reply) => self.refused(key, reply, out, now),
            ChainStep::Wait { step, future } => {
                self.wait(key, step, Direction::Request, future);
                let wait_deadline = self
                    .get(key)
                    .filter(|inflight| inflight.deadline_timer.is_none())
                    .map(|inflight| {
                        router::filter_wait_deadline(
                            inflight.request.timeout,
                            inflight.walk.record.timings.received,
                            now,
                        )
                    });
                if let Some(at) = wait_deadline {
                    let timer = self.set_timer(key, TimerKind::Deadline, at, now);
                    if let Some(inflight) = self.get(key) {
                        inflight.deadline_timer = Some(timer);
                    }
                }
            }
        }
    }

    /// A filter answered the request itself.
    fn refused(&mut self, key: RequestKey, reply: LocalReply, out: &mut Outbox, now: Instant) {
        let flags = router::refusal_flags(reply.kind);
        self.refuse_at_once(key, reply, flags, out, now);
    }

    fn route(&mut self, key: RequestKey, out: &mut Outbox, now: Instant) {
        let table = self.route_table();
        let kept_for_log = self.ctx.kept_for_log;
        let Some(inflight) = in_flight(&mut self.slab, key) else {
            return;
        };
        // Built in the request's stage, not returned: each move of a `Routed` (over 200 bytes)
        // is a copy.
        let stage = &mut inflight.walk.stage;
        let routing = Routing {
            table,
            request: &inflight.request,
            filter_mutation: &inflight.mutation,
            record: &mut inflight.walk.record,
            observer: &mut inflight.span,
            now,
            kept: kept_for_log,
        };
        let routed = router::route(routing, |routed| *stage = Stage::Routed(routed));
        inflight.mutation = Mutation::new();
        if let Err(Unrouted { reply, matched }) = routed {
            if let Some(matched) = matched {
                inflight.walk.stage = Stage::Answered(matched);
            }
            return self.finish(key, Answer::Local(reply), out, now);
        }
        let Stage::Routed(routed) = &mut inflight.walk.stage else {
            return;
        };
        if inflight.request.kind == MessageKind::Oneway {
            let snapshots = RouteCache::snapshots_for(&mut self.routes, routed.table());
            let sent = routed.send_oneway(
                &inflight.request,
                &mut inflight.walk.record,
                &mut inflight.span,
                snapshots,
                now,
            );
            let answer = match sent {
                Ok(()) => Answer::Nothing,
                Err(reply) => Answer::Local(reply),
            };
            return self.finish(key, answer, out, now);
        }
        let deadline = routed.deadline();
        let previous = inflight.deadline_timer.take();
        self.cancel_timer(previous);
        let timer = self.set_timer(key, TimerKind::Deadline, deadline, now);
        if let Some(inflight) = self.get(key) {
            inflight.deadline_timer = Some(timer);
        }
        self.attempt(key, out, now);
    }

    fn attempt(&mut self, key: RequestKey, out: &mut Outbox, now: Instant) {
        let inbox = self.inbox();
        let Some(inflight) = in_flight(&mut self.slab, key) else {
            return;
        };
        let Stage::Routed(routed) = &mut inflight.walk.stage else {
            return;
        };
        let snapshots = RouteCache::snapshots_for(&mut self.routes, routed.table());
        let next = routed.attempt(
            &inflight.request,
            |number| ReplyTo::inbox(inbox, key, number),
            &mut inflight.walk.record,
            &mut inflight.span,
            snapshots,
            now,
        );
        self.follow(key, next, out, now);
    }

    /// Does what the router says comes next.
    fn follow(&mut self, key: RequestKey, next: Next, out: &mut Outbox, now: Instant) {
        let Some(inflight) = self.get(key) else {
            return;
        };
        let attempts = match &inflight.walk.stage {
            Stage::Routed(routed) => routed.attempts(),
            _ => 0,
        };
        let previous = inflight.step_timer.take();
        self.cancel_timer(previous);
        let timer = match next {
            Next::Answer { per_try: None } => None,
            Next::Answer { per_try: Some(at) } => {
                Some(self.set_timer(key, TimerKind::Attempt(attempts), at, now))
            }
            Next::Retry { at } => Some(self.set_timer(key, TimerKind::Retry(attempts), at, now)),
            // `answered` forwards responses itself; the router says `Respond` only for one.
            Next::Respond => {
                let reply = LocalReply::new(
                    LocalReplyKind::Internal,
                    "metaprotocol-proxy: no response to forward",
                );
                return self.finish(key, Answer::Local(reply), out, now);
            }
            Next::Fail(reply) => return self.finish(key, Answer::Local(reply), out, now),
        };
        if let Some(inflight) = self.get(key) {
            inflight.step_timer = timer;
        }
    }

    fn answered(
        &mut self,
        key: RequestKey,
        attempt: u32,
        result: &AttemptResult,
        out: &mut Outbox,
        now: Instant,
    ) {
        let Some(inflight) = self.get(key) else {
            self.abandoned.answered(key, attempt, result.is_ok());
            return;
        };
        let answered = stage_answered(
            &mut inflight.walk.stage,
            attempt,
            result,
            &mut inflight.walk.record,
            &mut inflight.span,
            now,
        );
        match (answered, result) {
            // An attempt the request no longer waits on, which its router counted if it
            // answered: abandoned at its per-try deadline, it is no longer.
            (None, _) => self.abandoned.answered(key, attempt, false),
            (Some(Next::Respond), Ok(response)) => {
                let step_timer = self
                    .get(key)
                    .and_then(|inflight| inflight.step_timer.take());
                self.cancel_timer(step_timer);
                self.respond(key, response, out, now);
            }
            (Some(next), _) => self.follow(key, next, out, now),
        }
    }

    fn timer(
        &mut self,
        key: RequestKey,
        kind: TimerKind,
        timer: TimerId,
        out: &mut Outbox,
        now: Instant,
    ) {
        let Some(inflight) = self.get(key) else {
            return;
        };
        // A timer the request no longer holds was cancelled: it fires unheeded.
        if inflight.deadline_timer == Some(timer) {
            inflight.deadline_timer = None;
        } else if inflight.step_timer == Some(timer) {
            inflight.step_timer = None;
        } else {
            return;
        }
        match kind {
            TimerKind::Deadline => {
                let mut abandoned = None;
                let reply = match &mut inflight.walk.stage {
                    Stage::Filtering => {
                        router::filters_timed_out(Direction::Request, &mut inflight.walk.record)
                    }
                    Stage::Routed(routed) => {
                        if now < routed.deadline() {
                            return;
                        }
                        abandoned = Abandoned::in_flight(routed, key, now);
                        routed.timed_out(&mut inflight.walk.record, &mut inflight.span, now)
                    }
                    // The upstream answered: the time ran out in the response's filters.
                    Stage::Responding { routed, .. } => {
                        if now < routed.deadline() {
                            return;
                        }
                        router::filters_timed_out(Direction::Response, &mut inflight.walk.record)
                    }
                    Stage::Answered(_) => return,
                };
                if let Some(abandoned) = abandoned {
                    self.abandoned.remember(abandoned);
                }
                self.finish(key, Answer::Local(reply), out, now);
            }
            TimerKind::Attempt(number) => {
                // Its answer, read just before this deadline, may reach the request once a
                // retry (or the failure) ended it; while the request goes on, its router counts
                // it, and forgets it here.
                let abandoned = match &inflight.walk.stage {
                    Stage::Routed(routed) => Abandoned::in_flight(routed, key, now)
                        .filter(|abandoned| abandoned.attempt == number),
                    _ => None,
                };
                if let Some(abandoned) = abandoned {
                    self.abandoned.remember(abandoned);
                }
                self.answered(key, number, &Err(UpstreamError::Expired), out, now);
            }
            TimerKind::Retry(number) => {
                let due =
                    matches!(&inflight.walk.stage, Stage::Routed(r) if r.attempts() == number);
                if due {
                    self.attempt(key, out, now);
                }
            }
        }
    }

    fn respond(&mut self, key: RequestKey, response: &Message, out: &mut Outbox, now: Instant) {
        let filters = &self.ctx.filters;
        let Some(inflight) = in_flight(&mut self.slab, key) else {
            return;
        };
        let step = filters.run_response(
            0,
            &mut ResponseContext {
                request: &inflight.request,
                response,
                mutation: &mut inflight.mutation,
                record: &mut inflight.walk.record,
            },
        );
        self.after_response_filters(key, response, step, out, now);
    }

    fn after_response_filters(
        &mut self,
        key: RequestKey,
        response: &Message,
        step: ChainStep,
        out: &mut Outbox,
        now: Instant,
    ) {
        match step {
            ChainStep::Done => self.forward(key, response, out, now),
            ChainStep::Reply(reply) => self.refused(key, reply, out, now),
            ChainStep::Wait { step, future } => {
                let Some(inflight) = self.get(key) else {
                    return;
                };
                let stage = std::mem::replace(&mut inflight.walk.stage, Stage::Filtering);
                let Stage::Routed(routed) = stage else {
                    inflight.walk.stage = stage;
                    return;
                };
                // Kept until the filter resumes: the one copy of a response, on the rare path
                // of a response filter that waits.
                inflight.walk.stage = Stage::Responding {
                    routed,
                    response: Box::new(response.clone()),
                };
                self.wait(key, step, Direction::Response, future);
            }
        }
    }

    fn resumed(
        &mut self,
        key: RequestKey,
        step: usize,
        direction: Direction,
        resume: Resume,
        out: &mut Outbox,
        now: Instant,
    ) {
        let filters = self.ctx.filters.clone();
        let Some(inflight) = self.get(key) else {
            return;
        };
        inflight.wait = None;
        match (direction, &mut inflight.walk.stage) {
            (Direction::Request, Stage::Filtering) => {
                let next = filters.resume_request(
                    step,
                    resume,
                    &mut RequestContext {
                        request: &inflight.request,
                        mutation: &mut inflight.mutation,
                        record: &mut inflight.walk.record,
                    },
                );
                self.after_request_filters(key, next, out, now);
            }
            (Direction::Response, Stage::Responding { .. }) => {
                let stage = std::mem::replace(&mut inflight.walk.stage, Stage::Filtering);
                let Stage::Responding { routed, response } = stage else {
                    return;
                };
                let next = filters.resume_response(
                    step,
                    resume,
                    &mut ResponseContext {
                        request: &inflight.request,
                        response: &response,
                        mutation: &mut inflight.mutation,
                        record: &mut inflight.walk.record,
                    },
                );
                inflight.walk.stage = Stage::Routed(routed);
                self.after_response_filters(key, &response, next, out, now);
            }
            // The request ended (timed out) while the filter worked.
            _ => {}
        }
    }

    /// Forwards the upstream response with the route's and filters' mutation.
    fn forward(&mut self, key: RequestKey, response: &Message, out: &mut Outbox, now: Instant) {
        let Some(inflight) = self.get(key) else {
            return;
        };
        inflight.walk.record.outcome.status = Some(response.status);
        self.finish(key, Answer::Response(response), out, now);
    }

    /// Ends a request: writes its answer, records, counts, and runs the completion hooks.
    fn finish(&mut self, key: RequestKey, answer: Answer, out: &mut Outbox, now: Instant) {
        if self.get(key).is_none() {
            return;
        }
        let mut inflight = self.slab.remove(key.index as usize);
        self.frame_bytes = self
            .frame_bytes
            .saturating_sub(inflight.request.frame.len());
        if let Some(wait) = inflight.wait.take() {
            wait.abort();
        }
        self.cancel_timer(inflight.deadline_timer.take());
        self.cancel_timer(inflight.step_timer.take());
        let before = out.len();
        let request = &inflight.request;
        // The response, and whether the client was written an answer (it, or the proxy's own).
        let (response, answered) = match answer {
            Answer::Response(response) => {
                let mutation = match &inflight.walk.stage {
                    Stage::Routed(routed) | Stage::Responding { routed, .. } => {
                        routed.response_mutation(request, &inflight.walk.record, &inflight.mutation)
                    }
                    Stage::Filtering | Stage::Answered(_) => Cow::Borrowed(&inflight.mutation),
                };
                let params = EncodeParams {
                    request_id: request.request_id,
                    variant: request.variant,
                    mutation: &mutation,
                };
                let encoded = out.encode(self.encoder.as_mut(), response, &params);
                if let Err(err) = encoded {
                    tracing::warn!(listener = %self.ctx.name, error = %err, "cannot encode a response for the client");
                    let reply = LocalReply::new(
                        LocalReplyKind::Internal,
                        format!(
                            "metaprotocol-proxy: the proxy could not forward the response: {err}"
                        ),
                    );
                    inflight
                        .walk
                        .record
                        .set_local_reply(LocalReplyKind::Internal, ResponseFlags::NONE);
                    self.local_reply(request, &reply, out);
                }
                (Some(response), true)
            }
            Answer::Local(reply) => (None, self.local_reply(request, &reply, out)),
            Answer::Nothing => (None, false),
        };
        let written = out.len() - before;
        // A codec that gathers answers into one frame (a JSON-RPC batch's) appends them all
        // with the last, and says what each one stands for.
        let share = if answered {
            self.encoder.answer_len()
        } else {
            None
        };
        let sent = match share {
            Some(share) => {
                // Only a codec that gathers answers holds any: other answers ask nothing more.
                self.held = self.encoder.held_answer_bytes();
                share
            }
            None => written,
        };
        let record = &mut inflight.walk.record;
        record.bytes_sent = sent as u64;
        record.timings.answered = Some(now.into_std());
        // Kept only for a log that shows it: the record's extensions cost two allocations.
        if let Some(why) = self.closing
            && self.ctx.logs_connection_termination
        {
            record.extensions.insert(why);
        }
        self.ctx.stats.rq_active.dec();
        self.ctx.filters.complete(&CompleteContext {
            request: &inflight.request,
            response,
            record: &inflight.walk.record,
        });
        let (route, routed) = match &inflight.walk.stage {
            Stage::Routed(routed) | Stage::Responding { routed, .. } => {
                (routed.route(), Some(routed))
            }
            Stage::Answered(matched) => (matched.route(), None),
            Stage::Filtering => (None, None),
        };
        complete::complete(
            &self.ctx,
            &inflight.request,
            response,
            &inflight.walk.record,
            route,
            routed,
            inflight.span.take(),
        );
        self.spare(inflight.request);
        self.vacate(inflight.walk, now);
    }

    /// Keeps the box of a finished request's record and stage for a next request, emptied now
    /// as the request was dropped before: its route, attempt and what its filters kept in its
    /// record go at its end, not when the box is reused.
    fn vacate(&mut self, mut walk: Box<Walk>, now: Instant) {
        *walk = Walk::vacant(&self.connection, now);
        self.walks.push(walk);
    }

    /// Counts a local reply and, for a two-way request, writes it: true if it did (tried).
    fn local_reply(&mut self, request: &Message, reply: &LocalReply, out: &mut Outbox) -> bool {
        self.ctx.stats.local_reply(reply.kind).inc();
        if request.kind != MessageKind::Request {
            return false;
        }
        if let Err(err) = self.encoder.encode_local_reply(request, reply, out.buf()) {
            tracing::warn!(listener = %self.ctx.name, error = %err, "cannot encode a local reply");
        }
        true
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::SocketAddr;

    use metaprotocol_core::{CodecFactory, FilterChain};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::cluster::{ClusterHandle, ClusterManager};
    use crate::config::{ConfigError, LimitsSpec, RouteConfigSpec};
    use crate::route::RouteSlot;
    use crate::router::KeptForLog;
    use crate::server::{DrainPolicy, Load};
    use crate::stats::{ListenerStats, Metrics};
    use crate::transport::Acceptor;

    /// Listener `in`, whose clients speak `codec`, and whose routes, `routes` (route entries'
    /// YAML), send to `clusters`.
    pub(in crate::server) fn listener(
        codec: Arc<dyn CodecFactory>,
        routes: &str,
        clusters: &[&Arc<ClusterHandle>],
    ) -> Result<Arc<ListenerContext>, ConfigError> {
        let manager = ClusterManager::default();
        for cluster in clusters {
            manager.insert(Arc::clone(cluster));
        }
        let spec = RouteConfigSpec::from_yaml(&format!("name: r\nroutes: [ {routes} ]"))?;
        let metrics = Metrics::new();
        let table = RouteTable::build(&spec, 1, &manager, &metrics.root())?;
        let scope = metrics.root().detached("listener", "in");
        Ok(Arc::new(ListenerContext {
            name: "in".into(),
            codec,
            routes: Arc::new(RouteSlot {
                table: crate::published::Published::new(Arc::new(table)),
            }),
            filters: FilterChain::new(Vec::new()),
            stats: ListenerStats::new(&scope, &[]),
            load: Arc::new(Load::new(&scope, &LimitsSpec::default())),
            scope,
            access_log: None,
            kept_for_log: KeptForLog::default(),
            logs_connection_termination: false,
            tracer: None,
            istio: None,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(60),
            max_connections: None,
            drain: Arc::new(DrainPolicy::default()),
            acceptor: Acceptor::Plain,
            retired: CancellationToken::new(),
        }))
    }

    /// What the engine knows of a client connection of listener `in`.
    pub(in crate::server) fn client() -> Arc<ConnectionInfo> {
        let peer = SocketAddr::from(([127, 0, 0, 1], 2));
        Arc::new(ConnectionInfo::new("in".into(), peer, peer))
    }

    /// The requests of one client connection of a listener whose one route, `route` (a route
    /// entry's YAML), sends to cluster `c`, `cluster`.
    fn requests(cluster: &Arc<ClusterHandle>, route: &str) -> Result<Requests, ConfigError> {
        let ctx = listener(Arc::new(crate::testing::NullCodec), route, &[cluster])?;
        Ok(Requests::new(
            ctx,
            client(),
            Box::new(crate::testing::SilentCodec),
        ))
    }

    /// Cluster `c`, whose one endpoint, the listener returned, takes calls and never answers.
    fn silent_cluster() -> Result<(std::net::TcpListener, Arc<ClusterHandle>), ConfigError> {
        let (upstream, address) = silent_upstream()?;
        let cluster = crate::cluster::tests::cluster(&format!(
            "name: c\nendpoints: [ {{ address: {address} }} ]"
        ))?;
        Ok((upstream, cluster))
    }

    /// A two-way call (id 1) of method `method`, as its connection decoded it.
    fn call(method: &'static str) -> Arc<Message> {
        let mut message = Message::new(MessageKind::Request, 1, Bytes::new());
        message.metadata.insert("method", method);
        Arc::new(message)
    }

    /// Fires the step timer request `key` holds (a per-try deadline, a retry's pause), of
    /// `kind`, as the connection's timers would.
    fn step(requests: &mut Requests, key: RequestKey, kind: TimerKind, out: &mut Outbox) {
        let timer = requests.get(key).and_then(|inflight| inflight.step_timer);
        let timer = timer.unwrap_or_else(|| panic!("no {kind:?} timer"));
        requests.timer(key, kind, timer, out, Instant::now());
    }

    fn response() -> AttemptResult {
        Ok(Box::new(Message::new(
            MessageKind::Response,
            1,
            Bytes::new(),
        )))
    }

    /// A listener on 127.0.0.1 that takes connections and never answers, and its address.
    fn silent_upstream() -> Result<(std::net::TcpListener, SocketAddr), ConfigError> {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| ConfigError::new("upstream", e.to_string()))?;
        let address = upstream
            .local_addr()
            .map_err(|e| ConfigError::new("upstream", e.to_string()))?;
        Ok((upstream, address))
    }

    /// Gives `cluster` (named `name`) the one endpoint `address`, as a config update does.
    fn move_cluster(
        cluster: &Arc<ClusterHandle>,
        name: &str,
        address: SocketAddr,
    ) -> Result<(), ConfigError> {
        let spec = crate::config::ClusterSpec::from_yaml(&format!(
            "name: {name}\nendpoints: [ {{ address: {address} }} ]"
        ))?;
        cluster.update(
            &Arc::new(spec),
            None,
            None,
            &crate::cluster::Resolved::new(),
        )?;
        Ok(())
    }

    /// Receives a call of `method` on `requests` and returns the endpoint its first attempt
    /// went to (the call stays in flight: the upstream never answers).
    fn endpoint_of_call(requests: &mut Requests, method: &'static str) -> Option<SocketAddr> {
        let before = requests.keys();
        let mut out = Outbox::new();
        requests.receive(
            call(method),
            &mut out,
            (Instant::now(), SystemTime::now()),
            0,
        );
        let key = requests.keys().into_iter().find(|k| !before.contains(k))?;
        requests.get(key)?.walk.record.endpoint
    }

    /// The call a busy connection (calls in flight, never idle) receives right after its
    /// cluster was updated goes by the update: the copy of the cluster's snapshot the
    /// connection keeps is read again as soon as the cluster publishes another, and the
    /// snapshot replaced is let go then.
    #[tokio::test]
    async fn a_busy_connections_next_call_after_its_cluster_changed_goes_by_the_change()
    -> Result<(), ConfigError> {
        let (_old, cluster) = silent_cluster()?;
        let (_new, new) = silent_upstream()?;
        let mut requests = requests(&cluster, "{ route: { cluster: c }, timeout: 60s }")?;
        let old = endpoint_of_call(&mut requests, "get");
        assert!(old.is_some_and(|old| old != new), "{old:?}");
        assert_eq!(endpoint_of_call(&mut requests, "get"), old);
        let replaced = Arc::downgrade(&*cluster.snapshot());
        move_cluster(&cluster, "c", new)?;
        for call in 3..=4 {
            assert_eq!(
                endpoint_of_call(&mut requests, "get"),
                Some(new),
                "call {call}, after the update, with {} in flight",
                call - 1
            );
        }
        assert_eq!(
            replaced.strong_count(),
            0,
            "the connection still holds the snapshot the update replaced"
        );
        Ok(())
    }

    /// The copy of a cluster's snapshot that a busy connection keeps is let go at its next call
    /// once the cluster published another, even when that call goes to another cluster: a
    /// connection whose calls no longer go to a cluster does not keep endpoints its update
    /// removed.
    #[tokio::test]
    async fn a_busy_connection_lets_a_replaced_snapshot_go_at_its_next_call_to_any_cluster()
    -> Result<(), ConfigError> {
        let (_c, c) = silent_cluster()?;
        let (_d, d_address) = silent_upstream()?;
        let d = crate::cluster::tests::cluster(&format!(
            "name: d\nendpoints: [ {{ address: {d_address} }} ]"
        ))?;
        let ctx = listener(
            Arc::new(crate::testing::NullCodec),
            "{ match: { metadata: [ { key: method, exact: toc } ] }, route: { cluster: c } }, \
             { match: { metadata: [ { key: method, exact: tod } ] }, route: { cluster: d } }",
            &[&c, &d],
        )?;
        let mut requests = Requests::new(ctx, client(), Box::new(crate::testing::SilentCodec));
        assert_eq!(endpoint_of_call(&mut requests, "tod"), Some(d_address));
        assert!(endpoint_of_call(&mut requests, "toc").is_some());
        let replaced = Arc::downgrade(&*d.snapshot());
        let (_moved, moved) = silent_upstream()?;
        move_cluster(&d, "d", moved)?;
        assert!(endpoint_of_call(&mut requests, "toc").is_some());
        assert_eq!(
            replaced.strong_count(),
            0,
            "a call to c left the connection holding d's replaced snapshot"
        );
        assert_eq!(endpoint_of_call(&mut requests, "tod"), Some(moved));
        Ok(())
    }

    /// An answer to an attempt whose per-try deadline passed, read by its upstream connection
    /// just before the deadline, that reaches the request after the retry answered it is
    /// counted, as one read after the deadline is.
    #[tokio::test]
    async fn an_earlier_attempts_answer_after_the_retry_finished_the_request_is_counted()
    -> Result<(), ConfigError> {
        // The test plays the upstream's answers.
        let (_upstream, cluster) = silent_cluster()?;
        let mut requests = requests(
            &cluster,
            "{ route: { cluster: c }, timeout: 60s, retry_policy: { num_retries: 1, \
             retry_on: [timeout], per_try_timeout: 10s, idempotent_methods: [get] } }",
        )?;
        let mut out = Outbox::new();
        requests.receive(
            call("get"),
            &mut out,
            (Instant::now(), SystemTime::now()),
            0,
        );
        let key = requests.keys()[0];
        // Attempt 1's per-try deadline passes, the retry's pause ends, and attempt 2 answers.
        step(&mut requests, key, TimerKind::Attempt(1), &mut out);
        step(&mut requests, key, TimerKind::Retry(1), &mut out);
        requests.answered(key, 2, &response(), &mut out, Instant::now());
        assert!(requests.is_empty(), "the retry's answer ended the request");
        let unmatched = || cluster.stats().unmatched_responses.get();
        assert_eq!(unmatched(), 0);
        // Attempt 1's answer reaches the connection now.
        requests.answered(key, 1, &response(), &mut out, Instant::now());
        assert_eq!(unmatched(), 1, "attempt 1's answer matched no request");
        assert!(
            requests.abandoned.0.is_empty(),
            "counted once, and forgotten"
        );
        Ok(())
    }

    /// A connection to a server that never answers, whose one call, received at `received`,
    /// saw its deadline pass (at `received` and 61 s), and whose queue holds that call's answer:
    /// its upstream connection read it just before the deadline, and it came once the deadline
    /// had ended the call. `cluster` counts answers that matched no request waiting.
    fn a_late_answer_queued(
        cluster: &Arc<ClusterHandle>,
        received: Instant,
    ) -> Result<Requests, ConfigError> {
        let mut requests = requests(cluster, "{ route: { cluster: c }, timeout: 60s }")?;
        let mut out = Outbox::new();
        requests.receive(call("get"), &mut out, (received, SystemTime::now()), 0);
        let key = requests.keys()[0];
        let deadline = requests
            .get(key)
            .and_then(|inflight| inflight.deadline_timer);
        let deadline = deadline.unwrap_or_else(|| panic!("no deadline"));
        let past_it = received + Duration::from_secs(61);
        requests.timer(key, TimerKind::Deadline, deadline, &mut out, past_it);
        assert!(requests.is_empty(), "the deadline ended the call");
        let answer = UpstreamEvent {
            key,
            attempt: 1,
            result: response(),
        };
        assert!(requests.inbox().send(answer).is_ok(), "the queue is closed");
        Ok(requests)
    }

    /// An answer still queued when its connection goes (it closed once its calls ended) or is
    /// trimmed idle matched no request waiting, and is counted so, as it is when the connection
    /// takes it.
    #[tokio::test]
    async fn an_answer_queued_when_its_connection_goes_or_is_trimmed_is_counted()
    -> Result<(), ConfigError> {
        let (_upstream, cluster) = silent_cluster()?;
        let unmatched = || cluster.stats().unmatched_responses.get();
        drop(a_late_answer_queued(&cluster, Instant::now())?);
        assert_eq!(unmatched(), 1, "counted when its connection went");
        a_late_answer_queued(&cluster, Instant::now())?.trim();
        assert_eq!(unmatched(), 2, "counted when its connection was trimmed");
        Ok(())
    }

    /// An answer that came in time for an attempt its call's deadline abandoned is counted
    /// however late its connection takes it: a busy worker may leave it queued past
    /// [`LATE_ANSWER_WINDOW`] (a connection closing takes no answers, and closes its queue). Before, the attempt was forgotten by then, and its answer with it.
    #[tokio::test]
    async fn an_answer_queued_in_time_is_counted_however_late_its_connection_takes_it()
    -> Result<(), ConfigError> {
        let (_upstream, cluster) = silent_cluster()?;
        let unmatched = || cluster.stats().unmatched_responses.get();
        // Its deadline passed 9 s ago.
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(70))
            .ok_or_else(|| ConfigError::new("clock", "the monotonic clock is too young"))?;
        drop(a_late_answer_queued(&cluster, long_ago)?);
        assert_eq!(unmatched(), 1, "not counted when its connection went");
        let mut requests = a_late_answer_queued(&cluster, long_ago)?;
        let waker = futures::task::noop_waker();
        let mut out = Outbox::new();
        requests.poll(&mut Context::from_waker(&waker), &mut out, Instant::now());
        assert_eq!(unmatched(), 2, "not counted when its connection took it");
        assert!(
            requests.abandoned.0.is_empty(),
            "counted once, and forgotten"
        );
        Ok(())
    }

    /// A vacant walk that takes a request holds the record `RequestRecord::received_at` makes
    /// of it, field for field: none is left as the vacant one had it.
    #[test]
    fn a_vacant_walk_that_takes_a_request_holds_its_new_record() {
        let connection = client();
        let vacated = Instant::now();
        let received = vacated + Duration::from_secs(3);
        let wall = SystemTime::now();
        let mut walk = Walk::vacant(&connection, vacated);
        walk.take(300, (received, wall));
        let new = RequestRecord::received_at(connection, 300, received.into_std(), wall);
        assert_eq!(format!("{:?}", walk.record), format!("{new:?}"));
        assert!(matches!(walk.stage, Stage::Filtering));
    }

    /// Kept by [`Keeper`] in a request's record; counts itself dropped.
    struct Kept(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Kept {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A filter that keeps a [`Kept`] in every request's record, as a filter keeps its state
    /// (a span, a permit), and lets it through.
    struct Keeper(Arc<std::sync::atomic::AtomicUsize>);

    impl metaprotocol_core::L7Filter for Keeper {
        fn name(&self) -> &str {
            "keeper"
        }

        fn on_request(&self, ctx: &mut RequestContext<'_>) -> metaprotocol_core::FilterDecision {
            ctx.record.extensions.insert(Kept(Arc::clone(&self.0)));
            metaprotocol_core::FilterDecision::Continue
        }
    }

    /// What a filter keeps in a request's record goes when the request ends, answered or
    /// refused, not when the connection reuses its record's place for a next request.
    #[tokio::test]
    async fn what_a_filter_keeps_in_a_record_goes_when_its_request_ends() -> Result<(), ConfigError>
    {
        let (_upstream, cluster) = silent_cluster()?;
        let mut ctx = listener(
            Arc::new(crate::testing::NullCodec),
            "{ route: { cluster: c }, timeout: 60s }",
            &[&cluster],
        )?;
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let keeper: Arc<dyn metaprotocol_core::L7Filter> = Arc::new(Keeper(Arc::clone(&dropped)));
        Arc::get_mut(&mut ctx)
            .ok_or_else(|| ConfigError::new("listener", "shared"))?
            .filters = FilterChain::new(vec![keeper]);
        let mut requests = Requests::new(ctx, client(), Box::new(crate::testing::SilentCodec));
        let dropped = || dropped.load(std::sync::atomic::Ordering::SeqCst);
        let mut out = Outbox::new();
        let received = || (Instant::now(), SystemTime::now());
        requests.receive(call("get"), &mut out, received(), 0);
        let key = requests.keys()[0];
        assert_eq!(dropped(), 0, "kept while the call is in flight");
        requests.answered(key, 1, &response(), &mut out, Instant::now());
        assert!(requests.is_empty(), "the answer ended the call");
        assert_eq!(dropped(), 1, "kept after the answered call ended");
        // A one-way call routed and sent ends at once, in the place the first one left.
        let mut oneway = Message::new(MessageKind::Oneway, 0, Bytes::new());
        oneway.metadata.insert("method", "get");
        requests.receive(Arc::new(oneway), &mut out, received(), 0);
        assert!(requests.is_empty(), "the one-way call ended once sent");
        assert_eq!(dropped(), 2, "kept after the one-way call ended");
        Ok(())
    }

    /// Attempt 2 of request `index`, abandoned at `at`, counted in `counter`.
    fn abandoned(index: u32, counter: &Counter, at: Instant) -> Abandoned {
        Abandoned {
            key: RequestKey { index, seq: 7 },
            attempt: 2,
            counter: counter.clone(),
            until: at + LATE_ANSWER_WINDOW,
        }
    }

    #[test]
    fn an_answer_to_an_attempt_its_requests_deadline_abandoned_is_counted_once() {
        let counter = Counter::default();
        let key = |index| RequestKey { index, seq: 7 };
        let now = Instant::now();
        let mut attempts = AbandonedAttempts::default();
        for index in 0..3 {
            attempts.remember(abandoned(index, &counter, now));
        }
        attempts.answered(key(1), 1, true);
        assert_eq!(counter.get(), 0, "another attempt of the request");
        attempts.answered(key(1), 2, true);
        attempts.answered(key(1), 2, true);
        assert_eq!(counter.get(), 1, "counted once");
        attempts.answered(key(2), 2, false);
        attempts.answered(key(2), 2, true);
        assert_eq!(
            counter.get(),
            1,
            "a failure is no answer, and ends the attempt"
        );
        assert_eq!(attempts.0.len(), 1);
    }

    #[tokio::test]
    async fn a_late_answer_that_reaches_a_request_in_its_response_filters_is_counted()
    -> Result<(), crate::config::ConfigError> {
        let (cluster, routed, mut record) = crate::router::tests::routed()?;
        let mut stage = Stage::Responding {
            routed,
            response: Box::new(Message::empty()),
        };
        let late = Ok(Box::new(Message::new(
            MessageKind::Response,
            1,
            Bytes::new(),
        )));
        let next = stage_answered(&mut stage, 1, &late, &mut record, &mut None, Instant::now());
        assert!(next.is_none(), "the response filters go on");
        assert_eq!(cluster.stats().unmatched_responses.get(), 1);
        Ok(())
    }

    #[test]
    fn every_attempt_a_deadline_abandoned_at_once_is_counted_within_the_window() {
        let counter = Counter::default();
        let key = |index| RequestKey { index, seq: 7 };
        let now = Instant::now();
        let mut attempts = AbandonedAttempts::default();
        // A deadline that ended a connection's whole batch of calls in flight at once.
        let count = 1000;
        for index in 0..count {
            attempts.remember(abandoned(index, &counter, now));
        }
        // Their answers came within the window.
        attempts.forget_before(now + Duration::from_millis(100));
        for index in 0..count {
            attempts.answered(key(index), 2, true);
        }
        assert_eq!(counter.get(), u64::from(count), "none forgotten");
        assert!(attempts.0.is_empty());
        // Past the window, once the connection found its queue empty, an abandoned attempt is
        // forgotten: its answer, if it ever comes, was read after the deadline and counted by
        // its upstream connection.
        attempts.remember(abandoned(0, &counter, now));
        attempts.forget_before(now + LATE_ANSWER_WINDOW);
        attempts.answered(key(0), 2, true);
        assert_eq!(counter.get(), u64::from(count));
        assert!(attempts.0.is_empty(), "forgotten");
        for index in 0..=ABANDONED_ATTEMPTS as u32 {
            attempts.remember(abandoned(index, &counter, now));
        }
        assert_eq!(attempts.0.len(), ABANDONED_ATTEMPTS, "bounded");
    }
}
