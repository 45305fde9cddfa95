//! One call of a [`RouterClient`](super::RouterClient): the request's walk of a proxy (filters,
//! route, attempts under the deadline with retries, response filters, completion), driven by
//! awaiting rather than by a connection's event loop. The stages are the router's own
//! ([`crate::router`]); only the waiting is here.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use metaprotocol_core::{
    CompleteContext, ConnectionInfo, FilterChain, LocalReply, LocalReplyKind, Message, MessageKind,
    Mutation, RequestContext, RequestRecord, ResponseContext, ResponseFlags,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::CallError;
use crate::route::RouteTable;
use crate::router::{self, Direction, KeptForLog, Next, Routed, Routing};
use crate::stats::ListenerStats;
use crate::upstream::{AttemptResult, ReplyTo, UpstreamError};

/// What every call of one client shares.
#[derive(Debug)]
pub(super) struct CallContext {
    pub connection: Arc<ConnectionInfo>,
    pub table: Arc<RouteTable>,
    pub filters: FilterChain,
    pub stats: ListenerStats,
}

/// A call in progress. Its completion hooks run exactly once: when it ends, or when the
/// caller drops it (then flagged `DC`, as a client that went away).
struct InFlight<'c> {
    ctx: &'c CallContext,
    request: Arc<Message>,
    record: RequestRecord,
    done: bool,
}

impl InFlight<'_> {
    /// Ends the call: counts, records, and runs the completion hooks.
    fn finish(&mut self, response: Option<&Message>) {
        self.done = true;
        self.ctx.stats.rq_active.dec();
        if let Some(kind) = self.record.outcome.local_reply {
            self.ctx.stats.local_reply(kind).inc();
        }
        self.record.timings.answered = Some(std::time::Instant::now());
        self.ctx.filters.complete(&CompleteContext {
            request: &self.request,
            response,
            record: &self.record,
        });
    }

    /// Ends the call with a local reply recorded with `flags`.
    fn fail(&mut self, reply: LocalReply, flags: ResponseFlags) -> CallError {
        self.record.set_local_reply(reply.kind, flags);
        self.finish(None);
        CallError::new(reply)
    }

    /// Ends the call with a local reply the router already recorded.
    fn failed(&mut self, reply: LocalReply) -> CallError {
        self.finish(None);
        CallError::new(reply)
    }

    /// Goes on after the `direction` filters' run `filtered` (`None`: not done by its
    /// deadline), or ends the call with their refusal or their timeout.
    fn filtered(
        &mut self,
        filtered: Option<Result<(), LocalReply>>,
        direction: Direction,
    ) -> Result<(), CallError> {
        match filtered {
            Some(Ok(())) => Ok(()),
            Some(Err(reply)) => {
                let flags = router::refusal_flags(reply.kind);
                Err(self.fail(reply, flags))
            }
            None => {
                let reply = router::filters_timed_out(direction, &mut self.record);
                Err(self.failed(reply))
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record
                .outcome
                .flags
                .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            self.finish(None);
        }
    }
}

/// Calls `request` through `ctx`.
pub(super) async fn call(ctx: &CallContext, request: Message) -> Result<Message, CallError> {
    ctx.stats.rq_total.inc();
    ctx.stats.rq_active.inc();
    let record = RequestRecord::new(ctx.connection.clone(), request.frame.len() as u64);
    let mut call = InFlight {
        ctx,
        request: Arc::new(request),
        record,
        done: false,
    };
    if call.request.kind != MessageKind::Request {
        let reply = LocalReply::new(
            LocalReplyKind::BadRequest,
            "metaprotocol-client: only two-way requests can be called",
        );
        return Err(call.fail(reply, ResponseFlags::BAD_REQUEST));
    }
    if let Some(reason) = call.request.reject_reason {
        let reply = LocalReply::new(LocalReplyKind::BadRequest, reason);
        return Err(call.fail(reply, ResponseFlags::BAD_REQUEST));
    }
    let mut mutation = Mutation::new();
    let request = call.request.clone();
    // A wait of the request filters is bounded as a proxy bounds it: by the call's own
    // timeout, and at most the default route timeout.
    let (timeout, received) = (request.timeout, call.record.timings.received);
    let filtered = within(
        ctx.filters.on_request(&mut RequestContext {
            request: &request,
            mutation: &mut mutation,
            record: &mut call.record,
        }),
        || router::filter_wait_deadline(timeout, received, Instant::now()),
    )
    .await;
    call.filtered(filtered, Direction::Request)?;
    let routing = Routing {
        table: ctx.table.clone(),
        request: &request,
        filter_mutation: &mutation,
        record: &mut call.record,
        observer: &mut (),
        now: Instant::now(),
        kept: KeptForLog::default(),
    };
    let routed = router::route(routing, std::convert::identity);
    let mut routed = match routed {
        Ok(routed) => routed,
        Err(unrouted) => return Err(call.failed(unrouted.reply)),
    };
    let mut response = match attempts(&mut routed, &request, &mut call.record).await {
        Ok(response) => response,
        Err(reply) => return Err(call.failed(reply)),
    };
    let mut filter_mutation = Mutation::new();
    // The response filters' wait is within the route's deadline, as a proxy's is.
    let filtered = within(
        ctx.filters.on_response(&mut ResponseContext {
            request: &request,
            response: &response,
            mutation: &mut filter_mutation,
            record: &mut call.record,
        }),
        || routed.deadline(),
    )
    .await;
    call.filtered(filtered, Direction::Response)?;
    // The caller gets the response as a proxy's client would: with the route's and the
    // filters' response mutation applied (to its metadata; the frame is the upstream's).
    routed
        .response_mutation(&request, &call.record, &filter_mutation)
        .apply_to(&mut response.metadata);
    call.record.outcome.status = Some(response.status);
    call.finish(Some(&response));
    Ok(response)
}

/// Awaits `chain`, a run of a filter chain, until the time `deadline` says; `None` if it did
/// not end by then. The deadline is read, and a timer armed, only when the chain waits: a call
/// whose filters do not wait costs nothing more.
async fn within<F: Future>(chain: F, deadline: impl FnOnce() -> Instant) -> Option<F::Output> {
    let mut chain = std::pin::pin!(chain);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(chain.as_mut().poll(cx))).await
    {
        return Some(done);
    }
    tokio::time::timeout_at(deadline(), chain).await.ok()
}

/// Runs attempts until one answers or the router gives up.
async fn attempts(
    routed: &mut Routed,
    request: &Arc<Message>,
    record: &mut RequestRecord,
) -> Result<Message, LocalReply> {
    let deadline = routed.deadline();
    let (mut answer, mut next) = attempt(routed, request, record);
    loop {
        match next {
            // Responses are taken where they arrive, below; the router says `Respond` only
            // for one.
            Next::Respond => {
                return Err(LocalReply::new(
                    LocalReplyKind::Internal,
                    "metaprotocol-proxy: no response to forward",
                ));
            }
            Next::Fail(reply) => return Err(reply),
            Next::Retry { at } => {
                tokio::time::sleep_until(at.min(deadline)).await;
                if Instant::now() >= deadline {
                    return Err(routed.timed_out(record, &mut (), Instant::now()));
                }
                (answer, next) = attempt(routed, request, record);
            }
            Next::Answer { per_try } => {
                let number = routed.attempts();
                let until = per_try.map_or(deadline, |at| at.min(deadline));
                let answered = tokio::select! {
                    answered = &mut answer => answered.ok(),
                    () = tokio::time::sleep_until(until) => given_up(&mut answer),
                };
                let result = match answered {
                    Some(result) => result,
                    // Closed unanswered before the time was up: the connection was lost.
                    None if Instant::now() < until => Err(UpstreamError::Reset { sent: true }),
                    // The time is up. The connection forgets requests past their deadline, so
                    // their channel may close just before this timer fires: a timeout either way.
                    None if Instant::now() >= deadline => {
                        return Err(routed.timed_out(record, &mut (), Instant::now()));
                    }
                    None => Err(UpstreamError::Expired),
                };
                next = match (
                    routed.answered(number, &result, record, &mut (), Instant::now()),
                    result,
                ) {
                    (Some(Next::Respond), Ok(response)) => return Ok(*response),
                    (Some(next), _) => next,
                    (None, _) => return Err(routed.timed_out(record, &mut (), Instant::now())),
                };
            }
        }
    }
}

type Answer = oneshot::Receiver<AttemptResult>;

/// Closes `answer`, whose time is up: an answer its connection reads from now on finds it
/// closed and is counted with the cluster's unmatched ones. One that reached it as the time
/// ran out, read in time, is taken.
fn given_up(answer: &mut Answer) -> Option<AttemptResult> {
    answer.close();
    answer.try_recv().ok()
}

/// Starts the next attempt; where its answer will arrive and what to wait for.
fn attempt(
    routed: &mut Routed,
    request: &Arc<Message>,
    record: &mut RequestRecord,
) -> (Answer, Next) {
    let (sender, answer) = oneshot::channel();
    let next = routed.attempt(
        request,
        |_| ReplyTo::oneshot(sender),
        record,
        &mut (),
        None,
        Instant::now(),
    );
    (answer, next)
}
