//! The router: the terminal stage of a request, after its filters. It matches the route, picks
//! the target (or answers for a route with a direct response), computes the request's
//! consistent-hashing key, copies the request to the route's mirror ([`mirror`]), and runs
//! attempts ([`attempt`]) under the route's deadline ([`timeout`]) and the cluster's circuit
//! breakers, retrying by the route's policy within the cluster's budget ([`retry`]); every
//! attempt's end is classified once ([`outcome`]) and that classification drives stats,
//! retries, the local reply, the request's record, and what the cluster learns about the
//! endpoint (its latency, its failure streaks).
//!
//! The router never waits: it starts an attempt and says what the connection should wait for
//! (the answer, a per-try deadline, a retry pause). The downstream connection task owns the
//! waiting and calls back in with what happened. An [`AttemptObserver`] the connection passes in
//! sees every attempt start (and may add to the mutation it is sent with) and end: where the
//! tracer's per-attempt spans come from.

mod attempt;
mod mirror;
mod outcome;
mod retry;
mod timeout;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::{
    LocalReply, LocalReplyKind, Message, MessageKind, Mutation, RequestRecord, ResponseFlags,
    RoutingView, keys,
};
use smallvec::SmallVec;
use tokio::time::Instant;

pub(crate) use self::attempt::Snapshots;
use self::attempt::{Attempt, AttemptSpec, Started};
pub(crate) use self::mirror::MirrorPolicy;
pub(crate) use self::outcome::{AttemptOutcome, FAILURES, TransportFailure};
use self::retry::RetryGrant;
pub(crate) use self::retry::RetryPolicy;
use self::timeout::{DeadlineOwner, SendDeadline};
pub(crate) use self::timeout::{after as deadline_after, filter_wait_deadline};
use crate::cluster::{Breaker, ClusterHandle, Host, RetryRefusal};
use crate::route::{Route, RouteAction, RouteTable, Target, TemplateContext};
use crate::upstream::{AttemptResult, LocalAddress, ReplyTo, UpstreamError};

/// How many times a request that never reached a server is sent again without spending its
/// route's `num_retries` (`Routed::may_resend` says when): enough for a few endpoints failing
/// together (a host or a rack that goes down takes several with it, and the first requests meet
/// them before their connections' failure is known), few enough that a request does not go
/// round a cluster whose endpoints all fail.
const RESENDS: u8 = 3;

/// Sees each attempt of a request start and end. The connection passes its request's observer
/// (the tracer's span, when the listener traces) into every call that may start or end one;
/// `None` observes nothing and allocates nothing.
pub(crate) trait AttemptObserver {
    /// Attempt `number` is about to go to `endpoint` with `mutation`; returns the mutation it
    /// goes with (an observer may add to it, as the tracer adds its context).
    fn attempt_started(
        &mut self,
        number: u32,
        endpoint: SocketAddr,
        mutation: &Arc<Mutation>,
        now: Instant,
    ) -> Arc<Mutation>;

    /// Attempt `number` ended: as `outcome`, or (`None`) written, for a one-way request.
    fn attempt_ended(&mut self, number: u32, outcome: Option<&AttemptOutcome>, now: Instant);

    /// A copy of the request is about to go to the route's mirror with `mutation`; returns the
    /// mutation it goes with (the tracer adds its context, naming the request's own span as
    /// the copy's parent).
    fn copy_started(&mut self, mutation: &Arc<Mutation>) -> Arc<Mutation> {
        mutation.clone()
    }
}

impl<T: AttemptObserver> AttemptObserver for Option<T> {
    fn attempt_started(
        &mut self,
        number: u32,
        endpoint: SocketAddr,
        mutation: &Arc<Mutation>,
        now: Instant,
    ) -> Arc<Mutation> {
        match self {
            Some(observer) => observer.attempt_started(number, endpoint, mutation, now),
            None => mutation.clone(),
        }
    }

    fn attempt_ended(&mut self, number: u32, outcome: Option<&AttemptOutcome>, now: Instant) {
        if let Some(observer) = self {
            observer.attempt_ended(number, outcome, now);
        }
    }

    fn copy_started(&mut self, mutation: &Arc<Mutation>) -> Arc<Mutation> {
        match self {
            Some(observer) => observer.copy_started(mutation),
            None => mutation.clone(),
        }
    }
}

/// No observer (the engine as a client): attempts go with the route's mutation as it is.
impl AttemptObserver for () {
    fn attempt_started(
        &mut self,
        _: u32,
        _: SocketAddr,
        mutation: &Arc<Mutation>,
        _: Instant,
    ) -> Arc<Mutation> {
        mutation.clone()
    }

    fn attempt_ended(&mut self, _: u32, _: Option<&AttemptOutcome>, _: Instant) {}
}

/// What the router keeps of a request's attempts for its listener's access log, beyond what
/// every request records: each costs the request path, and is kept only for a log that shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeptForLog {
    /// Why the last attempt's connection could not be made, when that failed the request
    /// ([`TransportFailure`], in its record: two allocations).
    pub transport_failure: bool,
    /// The connection the last attempt went on, for its local address
    /// ([`Routed::upstream_local_address`]: a reference count a request).
    pub upstream_local_address: bool,
}

/// What the connection waits for next.
#[derive(Debug)]
pub(crate) enum Next {
    /// The attempt's answer; `per_try` is its own deadline, when the route sets one.
    Answer { per_try: Option<Instant> },
    /// A pause, then another attempt ([`Routed::attempt`]).
    Retry { at: Instant },
    /// Nothing: forward the response the attempt answered with (said only for one). The
    /// caller keeps the response: a `Message` is large, and each move of it is a copy.
    Respond,
    /// Nothing: answer with this error (already recorded).
    Fail(LocalReply),
}

/// A request that matched a route: its table (kept for the request's life, so that a route
/// update never changes a request in flight), target, deadline and attempts.
#[derive(Debug)]
pub(crate) struct Routed {
    table: Arc<RouteTable>,
    route: usize,
    target: Target,
    mutation: Arc<Mutation>,
    /// The request's consistent-hashing key, by the route's `hash_policy`.
    hash: Option<u64>,
    deadline: Instant,
    /// Whether the deadline is the route's own timeout, not a shorter one the client asked
    /// for: only then does an attempt it ends say something about the endpoint.
    own_deadline: bool,
    /// Whose the deadline is: what its attempts tell their servers.
    owner: DeadlineOwner,
    attempts: u32,
    retries_left: u32,
    /// Transparent resends spent (of a request a failed or unopened connection never wrote);
    /// at most [`RESENDS`].
    resends: u8,
    tried: SmallVec<[SocketAddr; 2]>,
    current: Option<Attempt>,
    /// The endpoint of the last attempt that ended.
    host: Option<Arc<Host>>,
    /// Whether the route's retry policy says the request may run twice.
    idempotent: bool,
    /// The retry in flight, counted against the cluster's retry budget until its attempt ends.
    grant: Option<RetryGrant>,
    /// What its attempts keep for the listener's access log.
    kept: KeptForLog,
    /// The connection the last attempt went on, when [`KeptForLog::upstream_local_address`].
    connection: Option<LocalAddress>,
}

/// Why a request was not routed: the local reply it gets (already recorded), and the route it
/// matched, when one did (a direct response, a route without a target), so that the request is
/// counted as that route's.
#[derive(Debug)]
pub(crate) struct Unrouted {
    pub reply: LocalReply,
    pub matched: Option<Matched>,
}

/// A route a request matched, kept (with its table) while the request is answered.
#[derive(Debug)]
pub(crate) struct Matched {
    table: Arc<RouteTable>,
    route: usize,
}

impl Matched {
    /// The matched route.
    pub fn route(&self) -> Option<&Route> {
        self.table.get(self.route)
    }
}

/// Answers a request no route matched.
fn no_route(request: &Message) -> LocalReply {
    let md = &request.metadata;
    let service = md
        .get(keys::INTERFACE)
        .or_else(|| md.get(keys::SERVICE))
        .unwrap_or("-");
    let method = md.get(keys::METHOD).unwrap_or("-");
    LocalReply::new(
        LocalReplyKind::RouteNotFound,
        format!("metaprotocol-proxy: no route for service {service} method {method}"),
    )
}

fn overflow(target: &Target, breaker: Breaker) -> LocalReply {
    LocalReply::new(
        LocalReplyKind::OverLimit,
        format!(
            "metaprotocol-proxy: cluster {} is at its {} circuit breaker",
            target.cluster.name(),
            breaker.name()
        ),
    )
}

fn no_endpoint(target: &Target) -> LocalReply {
    LocalReply::new(
        LocalReplyKind::NoHealthyUpstream,
        format!(
            "metaprotocol-proxy: cluster {} has no endpoint for this route",
            target.cluster.name()
        ),
    )
}

/// The flags of a request a filter answered itself with a reply of `kind`.
pub(crate) fn refusal_flags(kind: LocalReplyKind) -> ResponseFlags {
    match kind {
        LocalReplyKind::Unauthorized => ResponseFlags::UNAUTHORIZED,
        LocalReplyKind::OverLimit => ResponseFlags::RATE_LIMITED,
        LocalReplyKind::FaultAbort => ResponseFlags::FAULT_INJECTED,
        _ => ResponseFlags::NONE,
    }
}

/// Which of a request's filters: those of the request, before it is routed, or those of the
/// response.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    Request,
    Response,
}

/// Ends a request whose filters of `direction` did not finish their wait by its deadline (the
/// request's: [`filter_wait_deadline`]; the response's: the route's): records the timeout, the
/// filters' and not an upstream's, and returns the reply.
pub(crate) fn filters_timed_out(direction: Direction, record: &mut RequestRecord) -> LocalReply {
    record.set_local_reply(LocalReplyKind::Timeout, ResponseFlags::NONE);
    let message = match direction {
        Direction::Request => "metaprotocol-proxy: the request's filters did not finish in time",
        Direction::Response => "metaprotocol-proxy: the response's filters did not finish in time",
    };
    LocalReply::new(LocalReplyKind::Timeout, message)
}

/// A request to route, and what it is routed with (see [`route`]).
pub(crate) struct Routing<'a, O> {
    /// The table it is routed by, which it keeps for its life.
    pub table: Arc<RouteTable>,
    pub request: &'a Arc<Message>,
    /// What request filters added.
    pub filter_mutation: &'a Mutation,
    /// Its record, where a failure is recorded.
    pub record: &'a mut RequestRecord,
    /// Sees its copy to the route's mirror.
    pub observer: &'a mut O,
    pub now: Instant,
    /// What its attempts keep for the listener's access log.
    pub kept: KeptForLog,
}

/// Routes `routing`'s request with its table: the first matching route, then its target;
/// copies it to the route's mirror (as its observer sees it). On failure (and for a route that
/// answers itself) the error is recorded and returned. The routed request is built where
/// `place` puts it (its stage: a `Routed` is over 200 bytes, and a move of it is a copy), and
/// `place`'s result returned.
pub(crate) fn route<T>(
    routing: Routing<'_, impl AttemptObserver>,
    place: impl FnOnce(Routed) -> T,
) -> Result<T, Unrouted> {
    let Routing {
        table,
        request,
        filter_mutation,
        record,
        observer,
        now,
        kept,
    } = routing;
    let view = RoutingView {
        metadata: &request.metadata,
        keys: record.routing_keys(),
    };
    let Some((index, route)) = table
        .route_index(&view, &record.connection)
        .and_then(|index| Some((index, table.get(index)?)))
    else {
        record.set_local_reply(LocalReplyKind::RouteNotFound, ResponseFlags::NO_ROUTE);
        return Err(Unrouted {
            reply: no_route(request),
            matched: None,
        });
    };
    let target = route.action.pick(&view).cloned();
    let hash = route.hash_policy.hash(&view);
    route.stats().requests.inc();
    record.route = Some(route.name.clone());
    record.timings.routed = Some(now.into_std());
    let target = match (&route.action, target) {
        (RouteAction::Direct(reply), _) => {
            record.set_local_reply(reply.kind, ResponseFlags::NONE);
            let reply = reply.clone();
            return Err(Unrouted {
                reply,
                matched: Some(Matched {
                    table,
                    route: index,
                }),
            });
        }
        (_, Some(target)) => target,
        (_, None) => {
            record.set_local_reply(
                LocalReplyKind::NoHealthyUpstream,
                ResponseFlags::NO_HEALTHY_UPSTREAM,
            );
            return Err(Unrouted {
                reply: LocalReply::new(
                    LocalReplyKind::NoHealthyUpstream,
                    "metaprotocol-proxy: the route has no target",
                ),
                matched: Some(Matched {
                    table,
                    route: index,
                }),
            });
        }
    };
    record.cluster = Some(target.cluster.name().clone());
    let requested = timeout::requested_left(request.timeout, record.timings.received, now);
    let deadline = timeout::request_deadline(now, route.timeout, requested);
    let own_deadline = timeout::route_sets_deadline(route.timeout, requested);
    let owner = DeadlineOwner::of(route.timeout, request.timeout, requested);
    let retries_left = route.retry.as_ref().map_or(0, |r| r.num_retries);
    let view = RoutingView {
        metadata: &request.metadata,
        keys: record.routing_keys(),
    };
    let idempotent = route
        .retry
        .as_ref()
        .is_some_and(|policy| policy.is_idempotent(&view, &record.connection));
    let context = TemplateContext {
        request,
        view,
        record,
    };
    let mutation = route.request_mutation.resolve(&context, filter_mutation);
    if let Some(mirror) = &route.mirror {
        let copy_deadline = timeout::copy_deadline(now, route.timeout, requested);
        mirror.send(
            request,
            &mutation,
            observer,
            hash,
            SendDeadline {
                at: copy_deadline,
                // A copy's deadline is the caller's own only where the request's is.
                told: owner != DeadlineOwner::Caller,
            },
            route.stats(),
        );
    }
    Ok(place(Routed {
        route: index,
        table,
        target,
        mutation,
        hash,
        deadline,
        own_deadline,
        owner,
        attempts: 0,
        retries_left,
        resends: 0,
        tried: SmallVec::new(),
        current: None,
        host: None,
        idempotent,
        grant: None,
        kept,
        connection: None,
    }))
}

impl Routed {
    /// The matched route.
    pub fn route(&self) -> Option<&Route> {
        self.table.get(self.route)
    }

    /// The route table it was routed by.
    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    /// The request's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The attempt in flight, if any: its number, and the counter of its cluster's answers that
    /// matched no request waiting, where its answer belongs if it comes once the request ended.
    pub fn attempt_in_flight(&self) -> Option<(u32, &crate::stats::Counter)> {
        let attempt = self.current.as_ref()?;
        Some((
            attempt.number,
            &self.target.cluster.stats().unmatched_responses,
        ))
    }

    /// The counter of its cluster's answers that matched no request waiting: where an answer
    /// to one of its attempts belongs if the request cannot take it.
    pub fn unmatched_responses(&self) -> &crate::stats::Counter {
        &self.target.cluster.stats().unmatched_responses
    }

    /// The number of the attempt in flight or last made (1 for the first).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The cluster the request was sent to.
    pub fn cluster(&self) -> &ClusterHandle {
        &self.target.cluster
    }

    /// The endpoint of the attempt in flight or, else, of the last one, if one was picked.
    pub fn host(&self) -> Option<&Arc<Host>> {
        match &self.current {
            Some(attempt) => Some(&attempt.host),
            None => self.host.as_ref(),
        }
    }

    /// The proxy's address on the connection the last attempt went on, once that connection is
    /// open; `None` unless [`KeptForLog::upstream_local_address`], or when no connection took
    /// the attempt (it could not be made, the endpoint was backing off).
    pub fn upstream_local_address(&self) -> Option<SocketAddr> {
        self.connection.as_ref()?.get()
    }

    /// Sends a one-way request: done once queued (its cluster's snapshot read through
    /// `snapshots` when given). On failure the error is recorded.
    pub fn send_oneway(
        &mut self,
        request: &Arc<Message>,
        record: &mut RequestRecord,
        observer: &mut impl AttemptObserver,
        snapshots: Option<&mut Snapshots>,
        now: Instant,
    ) -> Result<(), LocalReply> {
        debug_assert_eq!(request.kind, MessageKind::Oneway);
        self.attempts = 1;
        record.attempts = 1;
        if let Some(route) = self.route() {
            route.stats().attempts.inc();
        }
        record.timings.upstream_sent = Some(now.into_std());
        let spec = AttemptSpec {
            number: 1,
            tried: &[],
            hash: self.hash,
            deadline: self.deadline,
            tells_deadline: timeout::tells_deadline(self.owner, 1, self.deadline, self.deadline),
            now,
        };
        let (started, connection) =
            self.start(request, 1, spec, ReplyTo::none(), observer, snapshots);
        self.connection = connection;
        match started {
            Started::Sent(attempt) => {
                record.endpoint = Some(attempt.endpoint());
                observer.attempt_ended(1, None, now);
                self.host = Some(attempt.host);
                Ok(())
            }
            Started::Refused { host, error } => {
                let endpoint = host.endpoint.address();
                record.endpoint = Some(endpoint);
                self.host = Some(host);
                let outcome = AttemptOutcome::of(&Err(error.clone()));
                observer.attempt_ended(1, Some(&outcome), now);
                Err(self.fail(outcome, Some(&error), endpoint, record))
            }
            Started::NoEndpoint => Err(self.no_endpoint(record)),
            Started::Overflow(breaker) => Err(self.overflow(breaker, record)),
        }
    }

    /// Starts the next attempt (its cluster's snapshot read through `snapshots` when given);
    /// its answer is delivered with `reply`, made for its number.
    pub fn attempt(
        &mut self,
        request: &Arc<Message>,
        reply: impl FnOnce(u32) -> ReplyTo,
        record: &mut RequestRecord,
        observer: &mut impl AttemptObserver,
        snapshots: Option<&mut Snapshots>,
        now: Instant,
    ) -> Next {
        // A retry's pause ends at the deadline at the latest, but a late turn of the loop finds
        // both due: the caller has given up, and an attempt started now would be dropped unsent
        // and counted as its endpoint's timeout.
        if now >= self.deadline {
            return Next::Fail(self.timed_out(record, observer, now));
        }
        self.attempts += 1;
        let number = self.attempts;
        record.attempts = number;
        record.timings.upstream_sent = Some(now.into_std());
        let route = self.route();
        if let Some(route) = route {
            route.stats().attempts.inc();
        }
        let per_try = route
            .and_then(|r| r.retry.as_ref())
            .and_then(|r| r.per_try_timeout);
        let deadline = timeout::attempt_deadline(now, per_try, self.deadline);
        let spec = AttemptSpec {
            number,
            tried: &self.tried,
            hash: self.hash,
            deadline,
            tells_deadline: timeout::tells_deadline(self.owner, number, deadline, self.deadline),
            now,
        };
        let (started, connection) =
            self.start(request, number, spec, reply(number), observer, snapshots);
        self.connection = connection;
        match started {
            Started::Sent(attempt) => {
                record.endpoint = Some(attempt.endpoint());
                self.current = Some(attempt);
                Next::Answer {
                    per_try: per_try.map(|_| deadline),
                }
            }
            Started::Refused { host, error } => {
                let endpoint = host.endpoint.address();
                record.endpoint = Some(endpoint);
                self.host = Some(host);
                self.conclude(endpoint, None, &Err(error), record, observer, now)
            }
            Started::NoEndpoint => Next::Fail(self.no_endpoint(record)),
            Started::Overflow(breaker) => Next::Fail(self.overflow(breaker, record)),
        }
    }

    /// Starts attempt `number` of `request` by `spec`, as `observer` sees it, to be answered
    /// through `reply` (its cluster's snapshot read through `snapshots` when given); with it,
    /// the connection that took it, when the listener's log shows its address (the last
    /// attempt's, whatever becomes of it: none when no connection took it).
    fn start(
        &self,
        request: &Arc<Message>,
        number: u32,
        spec: AttemptSpec<'_>,
        reply: ReplyTo,
        observer: &mut impl AttemptObserver,
        snapshots: Option<&mut Snapshots>,
    ) -> (Started, Option<LocalAddress>) {
        let now = spec.now;
        let mut connection = None;
        let started = attempt::start(
            &self.target,
            snapshots,
            request,
            |endpoint| observer.attempt_started(number, endpoint, &self.mutation, now),
            spec,
            reply,
            |queued_on| {
                if self.kept.upstream_local_address {
                    connection = Some(queued_on.local_address());
                }
            },
        );
        (started, connection)
    }

    /// The answer of attempt `number` arrived (an error when it failed or its per-try deadline
    /// passed). Answers of attempts already concluded are ignored (`None`); a response among
    /// them is counted with the cluster's unmatched ones.
    pub fn answered(
        &mut self,
        number: u32,
        result: &AttemptResult,
        record: &mut RequestRecord,
        observer: &mut impl AttemptObserver,
        now: Instant,
    ) -> Option<Next> {
        let Some(attempt) = self.current.take_if(|a| a.number == number) else {
            // Late: its connection read it just before the attempt's per-try deadline, and the
            // deadline ended the attempt before the answer reached it. Counted as a response
            // the connection reads past the deadline is.
            if result.is_ok() {
                self.target.cluster.stats().unmatched_responses.inc();
            }
            return None;
        };
        let endpoint = attempt.endpoint();
        Some(self.conclude(endpoint, Some(attempt), result, record, observer, now))
    }

    /// The whole request's deadline passed: ends the attempt in flight and records the timeout.
    pub fn timed_out(
        &mut self,
        record: &mut RequestRecord,
        observer: &mut impl AttemptObserver,
        now: Instant,
    ) -> LocalReply {
        let endpoint = match self.current.take() {
            Some(attempt) => {
                // The attempt in flight ends as a timeout, counted as `conclude` counts one
                // that its per-try deadline ended: a failed attempt and, when the route's own
                // timeout ended it, what the cluster learns of its endpoint (outlier
                // detection's streak, peak EWMA's latency). Without it an endpoint that never
                // answers, on a route without `per_try_timeout`, is never ejected and looks
                // idle to `peak_ewma`. A shorter deadline the client asked for says nothing
                // about the endpoint: counted, a client could have healthy endpoints ejected.
                let elapsed = self.timed(&attempt, now);
                let outcome = AttemptOutcome::Timeout;
                let stats = self.target.cluster.stats();
                stats.rq_timeout.inc();
                if let Some(failure) = outcome.failure() {
                    stats.failure(failure).inc();
                }
                if self.own_deadline {
                    self.target
                        .cluster
                        .attempt_ended(attempt.target(), &outcome, elapsed, now);
                }
                observer.attempt_ended(attempt.number, Some(&outcome), now);
                let endpoint = attempt.endpoint();
                self.host = Some(attempt.host);
                Some(endpoint)
            }
            // No attempt in flight (in a retry's pause, or while response filters wait): none
            // timed out now, and one that timed out before was counted when it did.
            None => None,
        };
        record.set_local_reply(LocalReplyKind::Timeout, ResponseFlags::UPSTREAM_TIMEOUT);
        let route = self.route().map_or("-", |r| &r.name);
        let message = match endpoint.or_else(|| self.tried.last().copied()) {
            Some(endpoint) => format!(
                "metaprotocol-proxy: upstream {endpoint} did not answer in time (route {route})"
            ),
            None => format!("metaprotocol-proxy: no upstream answered in time (route {route})"),
        };
        LocalReply::new(LocalReplyKind::Timeout, message)
    }

    /// Records how long a sent attempt took (until its answer, failure or timeout), for its
    /// cluster and its endpoint, and returns it.
    fn timed(&self, attempt: &Attempt, now: Instant) -> Duration {
        let took = now.saturating_duration_since(attempt.started);
        self.target.cluster.stats().rq_time.observe(took);
        attempt.host.endpoint.stats().rq_time.observe(took);
        took
    }

    /// Ends an attempt: counts it, then retries, forwards or fails.
    fn conclude(
        &mut self,
        endpoint: SocketAddr,
        attempt: Option<Attempt>,
        result: &AttemptResult,
        record: &mut RequestRecord,
        observer: &mut impl AttemptObserver,
        now: Instant,
    ) -> Next {
        let outcome = AttemptOutcome::of(result);
        // The retry that made this attempt, if one did, is over.
        self.grant = None;
        let stats = self.target.cluster.stats();
        match outcome.answered() {
            Some(status) => {
                stats.response(status).inc();
            }
            None if outcome == AttemptOutcome::Timeout => {
                stats.rq_timeout.inc();
            }
            None => {}
        }
        if let Some(failure) = outcome.failure() {
            stats.failure(failure).inc();
        }
        if let Some(attempt) = &attempt {
            let elapsed = self.timed(attempt, now);
            self.target
                .cluster
                .attempt_ended(attempt.target(), &outcome, elapsed, now);
        }
        let number = attempt.as_ref().map_or(self.attempts, |a| a.number);
        observer.attempt_ended(number, Some(&outcome), now);
        if let Some(attempt) = attempt {
            // The attempt ends here (its in-flight counts drop); its endpoint is remembered.
            self.host = Some(attempt.host);
        }
        // Borrowed from `self.table` (a clone of the `Arc` would cost two atomic operations a
        // call): `count_retry` finds the route again rather than taking it.
        let route = self.table.get(self.route);
        let policy = route.and_then(|r| r.retry.as_ref());
        let retryable = policy.is_some_and(|policy| policy.retries(&outcome, self.idempotent));
        // A request that never left lost nothing but time: it is resent at once without
        // spending the route's `num_retries` and outside the retry budget, so that dead
        // endpoints cost their callers no failure (`may_resend` says where to). The requests
        // queued on a connection that broke before writing them, or that could not be opened,
        // are a bounded batch (not so those refused for overload, which the retry policy and
        // budget govern), and resending them adds no connect attempts (an endpoint backing off
        // after failed connects refuses requests without connecting). The route's retry policy
        // (its `num_retries`, backoff and budget) applies once these are spent, and alone to
        // connect failures it retries itself: no attempt beyond its `num_retries` then.
        let unsent = outcome == (AttemptOutcome::Reset { sent: false })
            || (outcome == AttemptOutcome::ConnectFailure && !retryable);
        if unsent && now < self.deadline && self.may_resend(&outcome, endpoint) {
            self.resends += 1;
            self.count_retry(endpoint);
            return Next::Retry { at: now };
        }
        // Why a retry the policy asks for is not made, flagged as Envoy flags it: the request
        // has no retry (or no time) left (`URX`), or the cluster refused it (`max_retries`, the
        // retry budget: `UO`, its `num_retries` unspent).
        let mut not_retried = ResponseFlags::RETRY_LIMIT_EXCEEDED;
        if retryable && self.retries_left == 0 {
            // Envoy's `upstream_rq_retry_limit_exceeded`: counted when the policy would retry
            // and the request has spent its `num_retries` (not when it ran out of time).
            self.target.cluster.stats().rq_retry_limit_exceeded.inc();
        }
        if let Some(policy) = policy.filter(|_| retryable && self.retries_left > 0)
            && now < self.deadline
        {
            match self.grant_retry(route) {
                Some(grant) => {
                    self.grant = Some(grant);
                    let pause = policy.backoff(self.attempts);
                    self.count_retry(endpoint);
                    self.retries_left -= 1;
                    return Next::Retry {
                        at: timeout::after(now, pause).min(self.deadline),
                    };
                }
                None => not_retried = ResponseFlags::UPSTREAM_OVERFLOW,
            }
        }
        match result {
            // The answer goes to the client, flagged as a failure would be.
            Ok(_) => {
                if retryable {
                    record.outcome.flags.insert(not_retried);
                }
                Next::Respond
            }
            Err(error) => {
                let mut reply = self.fail(outcome, Some(error), endpoint, record);
                if retryable {
                    record.outcome.flags.insert(not_retried);
                    reply.message =
                        format!("{} (after {} attempts)", reply.message, self.attempts).into();
                }
                Next::Fail(reply)
            }
        }
    }

    /// Whether a request that reached no server, last on `failed` with `outcome`, is resent
    /// (see [`RESENDS`]): the first time its connection broke before writing it, whatever
    /// endpoint is left (a lone endpoint's connection is opened again); otherwise while an
    /// endpoint it has not tried is in use.
    fn may_resend(&self, outcome: &AttemptOutcome, failed: SocketAddr) -> bool {
        if self.resends >= RESENDS {
            return false;
        }
        if self.resends == 0 && *outcome == (AttemptOutcome::Reset { sent: false }) {
            return true;
        }
        let snapshot = self.target.cluster.snapshot();
        snapshot.set(self.target.subset).is_some_and(|set| {
            set.offers_untried(|address| address == failed || self.tried.contains(&address))
        })
    }

    /// Counts a retry of the attempt that failed on `endpoint`, which the next one avoids.
    fn count_retry(&mut self, endpoint: SocketAddr) {
        self.tried.push(endpoint);
        self.target.cluster.stats().rq_retry.inc();
        if let Some(route) = self.table.get(self.route) {
            route.stats().retries.inc();
        }
    }

    /// Room for one more retry in the cluster: under its `max_retries` breaker and within its
    /// retry budget; a refusal is counted as the cluster's retry overflow, and by the breaker
    /// or as the budget exhausted (the cluster's and the route's).
    fn grant_retry(&self, route: Option<&Route>) -> Option<RetryGrant> {
        let cluster = &self.target.cluster;
        let stats = cluster.stats();
        let asked = RetryGrant::ask(&cluster.snapshot().retry_budget, cluster.breakers(), stats);
        match asked {
            Ok(grant) => return Some(grant),
            Err(RetryRefusal::MaxRetries) => {}
            Err(RetryRefusal::Budget) => {
                stats.rq_retry_budget_exhausted.inc();
                if let Some(route) = route {
                    route.stats().retry_budget_exhausted.inc();
                }
            }
        }
        stats.rq_retry_overflow.inc();
        None
    }

    fn fail(
        &self,
        outcome: AttemptOutcome,
        error: Option<&UpstreamError>,
        endpoint: SocketAddr,
        record: &mut RequestRecord,
    ) -> LocalReply {
        let route = self.route().map_or("-", |r| &r.name);
        let reply = outcome
            .local_reply(error, endpoint, route)
            .unwrap_or_else(|| {
                LocalReply::new(LocalReplyKind::Internal, "metaprotocol-proxy: no answer")
            });
        record.set_local_reply(reply.kind, outcome.flags());
        // Kept only for a log that shows it: the record's extensions cost two allocations.
        if let Some(UpstreamError::ConnectFailed { reason, .. }) = error
            && self.kept.transport_failure
        {
            record
                .extensions
                .insert(TransportFailure(Arc::clone(reason)));
        }
        reply
    }

    fn overflow(&self, breaker: Breaker, record: &mut RequestRecord) -> LocalReply {
        record.set_local_reply(LocalReplyKind::OverLimit, ResponseFlags::UPSTREAM_OVERFLOW);
        overflow(&self.target, breaker)
    }

    fn no_endpoint(&self, record: &mut RequestRecord) -> LocalReply {
        record.set_local_reply(
            LocalReplyKind::NoHealthyUpstream,
            ResponseFlags::NO_HEALTHY_UPSTREAM,
        );
        no_endpoint(&self.target)
    }

    /// The response mutation: the route's (its templates rendered for `request`), plus what
    /// response filters added; borrowed when it is one of them alone.
    pub fn response_mutation<'a>(
        &'a self,
        request: &Message,
        record: &RequestRecord,
        filters: &'a Mutation,
    ) -> Cow<'a, Mutation> {
        match self.route() {
            Some(route) => {
                let context = TemplateContext {
                    request,
                    view: RoutingView {
                        metadata: &request.metadata,
                        keys: record.routing_keys(),
                    },
                    record,
                };
                route.response_mutation.resolve_borrowed(&context, filters)
            }
            None => Cow::Borrowed(filters),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use metaprotocol_core::{ConnectionInfo, MessageKind};

    use super::*;
    use crate::cluster::{ClusterHandle, ClusterManager};
    use crate::config::{ConfigError, RouteConfigSpec};
    use crate::stats::Metrics;

    /// A request (id 1) routed to cluster `c` (one endpoint, never reached), no attempt made
    /// yet: the cluster, the routed request and its record.
    pub(crate) fn routed() -> Result<(Arc<ClusterHandle>, Routed, RequestRecord), ConfigError> {
        routed_with(
            "name: c\nendpoints: [ { address: 127.0.0.1:1 } ]",
            "name: r\nroutes: [ { route: { cluster: c } } ]",
        )
    }

    /// [`routed`] with cluster `c` and the route config built from `cluster` and `routes`.
    fn routed_with(
        cluster: &str,
        routes: &str,
    ) -> Result<(Arc<ClusterHandle>, Routed, RequestRecord), ConfigError> {
        routed_keeping(cluster, routes, KeptForLog::default())
    }

    /// [`routed_with`], its attempts keeping what `kept` says for the access log.
    fn routed_keeping(
        cluster: &str,
        routes: &str,
        kept: KeptForLog,
    ) -> Result<(Arc<ClusterHandle>, Routed, RequestRecord), ConfigError> {
        let cluster = crate::cluster::tests::cluster(cluster)?;
        let clusters = ClusterManager::default();
        clusters.insert(cluster.clone());
        let spec = RouteConfigSpec::from_yaml(routes)?;
        let table = RouteTable::build(&spec, 1, &clusters, &Metrics::new().root())?;
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let peer = SocketAddr::from(([127, 0, 0, 1], 2));
        let mut record =
            RequestRecord::new(Arc::new(ConnectionInfo::new("in".into(), peer, peer)), 0);
        let routing = Routing {
            table: Arc::new(table),
            request: &request,
            filter_mutation: &Mutation::default(),
            record: &mut record,
            observer: &mut (),
            now: Instant::now(),
            kept,
        };
        let Ok(routed) = route(routing, std::convert::identity) else {
            return Err(ConfigError::new("routes", "the request was not routed"));
        };
        Ok((cluster, routed, record))
    }

    /// A request whose connection could not be made keeps why in its record only when its
    /// listener's access log shows it (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`): keeping it costs
    /// the record's extensions two allocations, on every request that fails so.
    #[tokio::test]
    async fn why_a_connection_failed_is_kept_only_for_a_log_that_shows_it()
    -> Result<(), ConfigError> {
        for keeps in [false, true] {
            let kept = KeptForLog {
                transport_failure: keeps,
                ..KeptForLog::default()
            };
            let (_cluster, mut routed, mut record) = routed_keeping(
                "name: c\nendpoints: [ { address: 127.0.0.1:1 } ]",
                "name: r\nroutes: [ { route: { cluster: c } } ]",
                kept,
            )?;
            let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
            let now = Instant::now();
            let next = routed.attempt(
                &request,
                |_| ReplyTo::none(),
                &mut record,
                &mut (),
                None,
                now,
            );
            assert!(matches!(next, Next::Answer { .. }));
            let next = routed.answered(1, &connect_failed(), &mut record, &mut (), now);
            assert!(matches!(next, Some(Next::Fail(_))), "{next:?}");
            let kept = record.extensions.get::<TransportFailure>();
            assert_eq!(kept.map(|failure| &*failure.0), keeps.then_some("refused"));
            assert_eq!(record.extensions.is_empty(), !keeps, "keeps: {keeps}");
        }
        Ok(())
    }

    /// A request keeps the connection its attempt went on (for the access log's
    /// `%UPSTREAM_LOCAL_ADDRESS%`) only when its listener's access log shows it: keeping it
    /// costs a reference count a request.
    #[tokio::test]
    async fn the_connection_of_an_attempt_is_kept_only_for_a_log_that_shows_its_address()
    -> Result<(), ConfigError> {
        for keeps in [false, true] {
            let kept = KeptForLog {
                upstream_local_address: keeps,
                ..KeptForLog::default()
            };
            let (_cluster, mut routed, mut record) = routed_keeping(
                "name: c\nendpoints: [ { address: 127.0.0.1:1 } ]",
                "name: r\nroutes: [ { route: { cluster: c } } ]",
                kept,
            )?;
            let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
            let next = routed.attempt(
                &request,
                |_| ReplyTo::none(),
                &mut record,
                &mut (),
                None,
                Instant::now(),
            );
            assert!(matches!(next, Next::Answer { .. }));
            assert_eq!(routed.connection.is_some(), keeps, "keeps: {keeps}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_answer_that_reaches_an_attempt_its_deadline_ended_is_counted()
    -> Result<(), ConfigError> {
        let (cluster, mut routed, mut record) = routed()?;
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let now = Instant::now();
        let (sender, _answer) = tokio::sync::oneshot::channel();
        let next = routed.attempt(
            &request,
            |_| ReplyTo::oneshot(sender),
            &mut record,
            &mut (),
            None,
            now,
        );
        assert!(matches!(next, Next::Answer { .. }));
        let expired = Err(UpstreamError::Expired);
        assert!(
            routed
                .answered(1, &expired, &mut record, &mut (), now)
                .is_some(),
            "the per-try deadline ends the attempt"
        );
        let unmatched = || cluster.stats().unmatched_responses.get();
        assert_eq!(unmatched(), 0, "a timeout is not an answer");
        let late = Ok(Box::new(Message::new(
            MessageKind::Response,
            1,
            Bytes::new(),
        )));
        assert!(
            routed
                .answered(1, &late, &mut record, &mut (), now)
                .is_none()
        );
        assert_eq!(unmatched(), 1, "the late answer");
        Ok(())
    }

    /// A retry that `max_requests` refuses is answered as Envoy answers one its connection
    /// pool refuses (an overflow reset, never retried): with the over-limit error, flagged
    /// `UO`, counted as the breaker's overflow; not with the failure the attempt before it had.
    #[tokio::test]
    async fn a_retry_max_requests_refuses_is_answered_with_the_over_limit_error()
    -> Result<(), ConfigError> {
        let (cluster, mut routed, mut record) = routed_with(
            "name: c
endpoints: [ { address: 127.0.0.1:1 } ]
circuit_breakers: { max_requests: 1 }",
            "name: r
routes: [ { route: { cluster: c }, retry_policy: { num_retries: 1, retry_on: [connect_failure] } } ]",
        )?;
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let now = Instant::now();
        let next = routed.attempt(
            &request,
            |_| ReplyTo::none(),
            &mut record,
            &mut (),
            None,
            now,
        );
        assert!(matches!(next, Next::Answer { .. }));
        let failed = Err(UpstreamError::ConnectFailed {
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            reason: "refused".into(),
        });
        let next = routed.answered(1, &failed, &mut record, &mut (), now);
        assert!(matches!(next, Some(Next::Retry { .. })), "{next:?}");
        // Another request's attempt takes the cluster's one place before the retry starts.
        let target = Target {
            cluster: cluster.clone(),
            subset: crate::cluster::SubsetId::ALL,
        };
        let other = attempt::tests::start_one(&target, &request);
        assert!(matches!(other, Started::Sent(_)));
        let Next::Fail(reply) = routed.attempt(
            &request,
            |_| ReplyTo::none(),
            &mut record,
            &mut (),
            None,
            now,
        ) else {
            return Err(ConfigError::new("retry", "the retry was not refused"));
        };
        assert_eq!(reply.kind, LocalReplyKind::OverLimit, "{}", reply.message);
        assert!(
            record
                .outcome
                .flags
                .contains(ResponseFlags::UPSTREAM_OVERFLOW)
        );
        let overflows = cluster
            .breakers()
            .status(cluster.stats())
            .into_iter()
            .find(|s| s.breaker == "max_requests")
            .map(|s| s.overflows);
        assert_eq!(overflows, Some(1));
        Ok(())
    }

    /// A route that retries a connect failure, or an answer that refuses the call, once.
    const RETRY_ONCE: &str = "name: r
routes: [ { route: { cluster: c }, retry_policy: { num_retries: 1, retry_on: [connect_failure, retryable_status] } } ]";

    /// Cluster limits that refuse every retry: by `max_retries`, or by the retry budget.
    const NO_RETRY_ROOM: [&str; 2] = [
        "circuit_breakers: { max_retries: 0 }",
        "retry_budget: { budget_percent: 0, min_retry_concurrency: 0 }",
    ];

    /// The result of an attempt whose connection could not be made.
    fn connect_failed() -> AttemptResult {
        Err(UpstreamError::ConnectFailed {
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            reason: "refused".into(),
        })
    }

    /// The result of an attempt the upstream answered refusing the call, not run (retryable).
    fn refused_call() -> AttemptResult {
        let mut refused = Message::new(MessageKind::Response, 1, Bytes::new());
        refused.status = metaprotocol_core::ResponseStatus::ServerError;
        refused.not_processed = true;
        Ok(Box::new(refused))
    }

    /// A request routed by [`RETRY_ONCE`] to cluster `c` (one endpoint, never reached) with
    /// `limits`, its first attempt ended with `result`: the cluster, the routed request, its
    /// record and what the router said next.
    fn first_attempt_ends(
        limits: &str,
        result: &AttemptResult,
    ) -> Result<(Arc<ClusterHandle>, Routed, RequestRecord, Option<Next>), ConfigError> {
        let (cluster, mut routed, mut record) = routed_with(
            &format!("name: c\nendpoints: [ {{ address: 127.0.0.1:1 }} ]\n{limits}"),
            RETRY_ONCE,
        )?;
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let now = Instant::now();
        let next = routed.attempt(
            &request,
            |_| ReplyTo::none(),
            &mut record,
            &mut (),
            None,
            now,
        );
        assert!(matches!(next, Next::Answer { .. }));
        let next = routed.answered(1, result, &mut record, &mut (), now);
        Ok((cluster, routed, record, next))
    }

    /// A retry `max_retries` or the retry budget refuses is not made, as Envoy's (its retry
    /// state's overflow): the request keeps the failure (or the answer) it had, flagged `UO`,
    /// not `URX` (a request that spent its `num_retries`), and the cluster counts the refusal
    /// in `upstream_rq_retry_overflow_total`.
    #[tokio::test]
    async fn a_retry_max_retries_or_the_budget_refuses_is_flagged_as_an_overflow()
    -> Result<(), ConfigError> {
        let failures: [AttemptResult; 2] = [connect_failed(), refused_call()];
        for limits in NO_RETRY_ROOM {
            for failed in &failures {
                let (cluster, _, record, next) = first_attempt_ends(limits, failed)?;
                let case = format!(
                    "{limits}, {}",
                    if failed.is_ok() { "answered" } else { "failed" }
                );
                match (next, failed) {
                    (Some(Next::Fail(reply)), Err(_)) => assert_eq!(
                        reply.kind,
                        LocalReplyKind::UpstreamConnectFailure,
                        "{case}: the failure it had"
                    ),
                    (Some(Next::Respond), Ok(_)) => {}
                    (next, _) => return Err(ConfigError::new(case, format!("{next:?}"))),
                }
                let flags = record.outcome.flags;
                assert!(
                    flags.contains(ResponseFlags::UPSTREAM_OVERFLOW),
                    "{case}: {flags}"
                );
                assert!(
                    !flags.contains(ResponseFlags::RETRY_LIMIT_EXCEEDED),
                    "{case}: {flags}"
                );
                assert_eq!(cluster.stats().rq_retry_overflow.get(), 1, "{case}");
                assert_eq!(cluster.stats().rq_retry.get(), 0, "{case}: not retried");
                assert_eq!(
                    cluster.stats().rq_retry_limit_exceeded.get(),
                    0,
                    "{case}: its num_retries unspent"
                );
            }
        }
        Ok(())
    }

    /// A retry the budget refuses is counted on its cluster, where an operator watching the
    /// cluster looks, as well as on its route; one `max_retries` refuses is the breaker's
    /// overflow, not the budget's.
    #[tokio::test]
    async fn a_retry_the_budget_refuses_is_counted_on_its_cluster() -> Result<(), ConfigError> {
        let [max_retries, budget] = NO_RETRY_ROOM;
        let (cluster, routed, ..) = first_attempt_ends(budget, &connect_failed())?;
        assert_eq!(cluster.stats().rq_retry_budget_exhausted.get(), 1);
        let by_route = routed
            .route()
            .map(|r| r.stats().retry_budget_exhausted.get());
        assert_eq!(by_route, Some(1));
        let (cluster, ..) = first_attempt_ends(max_retries, &connect_failed())?;
        assert_eq!(cluster.stats().rq_retry_budget_exhausted.get(), 0);
        Ok(())
    }

    /// An answer the route's policy would retry, forwarded because the request spent its
    /// `num_retries`, is flagged `URX`, as Envoy flags it (and as a failure is), so that the
    /// access log tells it from an answer the policy does not retry.
    #[tokio::test]
    async fn an_answer_forwarded_once_the_retries_are_spent_is_flagged() -> Result<(), ConfigError>
    {
        let (_, mut routed, mut record, next) = first_attempt_ends("", &refused_call())?;
        assert!(matches!(next, Some(Next::Retry { .. })), "{next:?}");
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let now = Instant::now();
        let next = routed.attempt(
            &request,
            |_| ReplyTo::none(),
            &mut record,
            &mut (),
            None,
            now,
        );
        assert!(matches!(next, Next::Answer { .. }));
        let next = routed.answered(2, &refused_call(), &mut record, &mut (), now);
        assert!(matches!(next, Some(Next::Respond)), "{next:?}");
        let flags = record.outcome.flags;
        assert!(
            flags.contains(ResponseFlags::RETRY_LIMIT_EXCEEDED),
            "{flags}"
        );
        assert!(!flags.contains(ResponseFlags::UPSTREAM_OVERFLOW), "{flags}");
        Ok(())
    }

    /// A request whose retries are spent, its last attempt failed (or answered) as the policy
    /// retries, is counted on its cluster in `upstream_rq_retry_limit_exceeded_total`, as
    /// Envoy counts it; an attempt that is retried, or whose outcome the policy does not
    /// retry, is not.
    #[tokio::test]
    async fn a_request_that_spent_its_retries_is_counted_on_its_cluster() -> Result<(), ConfigError>
    {
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let answered = || {
            Ok(Box::new(Message::new(
                MessageKind::Response,
                1,
                Bytes::new(),
            )))
        };
        let failures: [fn() -> AttemptResult; 2] = [connect_failed, refused_call];
        for (case, failed) in failures.into_iter().enumerate() {
            let (cluster, mut routed, mut record, next) = first_attempt_ends("", &failed())?;
            assert!(matches!(next, Some(Next::Retry { .. })), "{case}: {next:?}");
            let exceeded = || cluster.stats().rq_retry_limit_exceeded.get();
            assert_eq!(exceeded(), 0, "{case}: retried");
            let now = Instant::now();
            let next = routed.attempt(
                &request,
                |_| ReplyTo::none(),
                &mut record,
                &mut (),
                None,
                now,
            );
            assert!(matches!(next, Next::Answer { .. }));
            routed.answered(2, &failed(), &mut record, &mut (), now);
            assert_eq!(exceeded(), 1, "{case}: its one retry spent");
            assert!(
                record
                    .outcome
                    .flags
                    .contains(ResponseFlags::RETRY_LIMIT_EXCEEDED)
            );
            // An answer the policy does not retry.
            let (cluster, ..) = first_attempt_ends("", &answered())?;
            assert_eq!(cluster.stats().rq_retry_limit_exceeded.get(), 0, "{case}");
        }
        Ok(())
    }
}
