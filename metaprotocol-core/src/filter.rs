//! Layer-7 filters: request, response and completion hooks, and the chain that runs them.
//!
//! A filter sees one request at a time through a context that carries the request, the
//! [`Mutation`] that will be written when it is forwarded, and its [`RequestRecord`]. A hook
//! continues, answers with a [`LocalReply`], or waits on asynchronous work whose [`Resume`] may
//! still add mutations, routing keys and state. `on_complete` runs exactly once per request on
//! every path, after the answer.
//!
//! The chain is driven by the engine step by step ([`FilterChain::run_request`],
//! [`FilterChain::resume_request`] ...), so a request whose filters never wait is handled without
//! a task, a future or an allocation of its own.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::record::{Extensions, RequestRecord, RoutingKeys};
use crate::{LocalReply, LocalReplyKind, Message, Mutation};

/// Asynchronous work a filter waits on (a global rate limit, an external authorization ...).
/// It resolves to the filter's final word: a decision plus what it adds to the request.
pub type FilterFuture = Pin<Box<dyn Future<Output = Resume> + Send + 'static>>;

/// What a filter hook decided.
pub enum FilterDecision {
    /// Pass the message on to the next filter.
    Continue,
    /// Stop the chain and answer the client with this local reply.
    Reply(LocalReply),
    /// Wait for asynchronous work, then apply its [`Resume`]. Filters that never wait cost no
    /// allocation; only this variant boxes.
    Wait(FilterFuture),
}

impl fmt::Debug for FilterDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Continue => f.write_str("Continue"),
            Self::Reply(reply) => f.debug_tuple("Reply").field(reply).finish(),
            Self::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// The result of a filter's asynchronous work: its decision, and what it adds to the request now
/// that the work is done (the hook's context is gone by then, so the additions travel here).
#[derive(Debug)]
pub struct Resume {
    /// Continue, reply, or wait again.
    pub decision: FilterDecision,
    /// Header edits added to the message's mutation (the upstream request's on the request path,
    /// the client response's on the response path).
    pub mutation: Mutation,
    /// Routing keys for the route match (request path only).
    pub routing_keys: RoutingKeys,
    /// State added to the request's [`Extensions`].
    pub extensions: Extensions,
}

impl Resume {
    /// A resume that only decides.
    pub fn new(decision: FilterDecision) -> Self {
        Self {
            decision,
            mutation: Mutation::new(),
            routing_keys: RoutingKeys::new(),
            extensions: Extensions::new(),
        }
    }
}

impl From<FilterDecision> for Resume {
    fn from(decision: FilterDecision) -> Self {
        Self::new(decision)
    }
}

/// What a request hook sees.
pub struct RequestContext<'a> {
    /// The decoded request (or one-way request).
    pub request: &'a Message,
    /// Header edits for the upstream request; filters add to it.
    pub mutation: &'a mut Mutation,
    /// The request's record: connection, state slot, routing keys.
    pub record: &'a mut RequestRecord,
}

/// What a response hook sees.
pub struct ResponseContext<'a> {
    /// The request being answered.
    pub request: &'a Message,
    /// The decoded upstream response.
    pub response: &'a Message,
    /// Header edits for the client response; filters add to it.
    pub mutation: &'a mut Mutation,
    /// The request's record: route, cluster, endpoint, timings so far, state slot.
    pub record: &'a mut RequestRecord,
}

/// What the completion hook sees: the request, the upstream response if one was forwarded,
/// and the final record.
pub struct CompleteContext<'a> {
    /// The request.
    pub request: &'a Message,
    /// The upstream response forwarded to the client, if any (none for local replies, one-way
    /// calls and clients gone).
    pub response: Option<&'a Message>,
    /// The final record.
    pub record: &'a RequestRecord,
}

/// A layer-7 filter: hooks run on every request (in config order), every response (in reverse
/// order) and every completion.
///
/// Instances are built once per config and shared by all connections, so hooks take `&self`;
/// per-request state lives in [`RequestRecord::extensions`]. Hooks that do not wait must not
/// allocate. A hook that panics is treated as answering with an internal error.
pub trait L7Filter: Send + Sync + 'static {
    /// The filter's name, for logs and metrics.
    fn name(&self) -> &str;

    /// Called for each request and one-way request before routing.
    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision;

    /// Called for each upstream response before it is sent to the client. The default passes
    /// responses through.
    fn on_response(&self, ctx: &mut ResponseContext<'_>) -> FilterDecision {
        let _ = ctx;
        FilterDecision::Continue
    }

    /// Called exactly once for every request this filter's chain saw, on every path (answered,
    /// answered locally, refused by a filter, timed out, reset, one-way, client gone), after the
    /// answer was queued. The home of access logs, spans and accounting; must not block.
    fn on_complete(&self, ctx: &CompleteContext<'_>) {
        let _ = ctx;
    }
}

/// Where a chain run stopped.
pub enum ChainStep {
    /// Every filter continued.
    Done,
    /// A filter answered; the chain stops.
    Reply(LocalReply),
    /// The filter at step `step` waits; call the matching `resume_*` with the future's output.
    Wait {
        /// The step to resume at.
        step: usize,
        /// The work to await.
        future: FilterFuture,
    },
}

impl fmt::Debug for ChainStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Done => f.write_str("Done"),
            Self::Reply(reply) => f.debug_tuple("Reply").field(reply).finish(),
            Self::Wait { step, .. } => write!(f, "Wait {{ step: {step} }}"),
        }
    }
}

/// An ordered list of filters, cheap to clone and shared by all connections of a listener.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Arc<[Arc<dyn L7Filter>]>,
}

impl FilterChain {
    /// A chain running `filters` in this order on requests.
    pub fn new(filters: Vec<Arc<dyn L7Filter>>) -> Self {
        Self {
            filters: filters.into(),
        }
    }

    /// The filters, in request order.
    pub fn filters(&self) -> &[Arc<dyn L7Filter>] {
        &self.filters
    }

    /// True if the chain has no filters.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the request hooks from step `from` (0 for a new request) in order.
    pub fn run_request(&self, from: usize, ctx: &mut RequestContext<'_>) -> ChainStep {
        run(self.filters.iter(), from, |filter| filter.on_request(ctx))
    }

    /// Applies the output of the request filter that waited at `step`, then runs the rest.
    pub fn resume_request(
        &self,
        step: usize,
        resume: Resume,
        ctx: &mut RequestContext<'_>,
    ) -> ChainStep {
        ctx.mutation.extend(&resume.mutation);
        ctx.record.extend_routing_keys(resume.routing_keys);
        ctx.record.extensions.extend(resume.extensions);
        match settle(step, resume.decision) {
            Some(stop) => stop,
            None => self.run_request(step + 1, ctx),
        }
    }

    /// Runs the response hooks in reverse order, from step `from` (0 for a new response; step
    /// `k` is the `k`-th filter from the end).
    pub fn run_response(&self, from: usize, ctx: &mut ResponseContext<'_>) -> ChainStep {
        run(self.filters.iter().rev(), from, |filter| {
            filter.on_response(ctx)
        })
    }

    /// Applies the output of the response filter that waited at `step`, then runs the rest.
    pub fn resume_response(
        &self,
        step: usize,
        resume: Resume,
        ctx: &mut ResponseContext<'_>,
    ) -> ChainStep {
        ctx.mutation.extend(&resume.mutation);
        ctx.record.extensions.extend(resume.extensions);
        match settle(step, resume.decision) {
            Some(stop) => stop,
            None => self.run_response(step + 1, ctx),
        }
    }

    /// Runs every completion hook, in request order. A hook that panics is skipped.
    pub fn complete(&self, ctx: &CompleteContext<'_>) {
        for filter in self.filters.iter() {
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| filter.on_complete(ctx)));
        }
    }

    /// Runs every request hook to the end, awaiting waits: a convenience for embedders and tests
    /// that own the request; the engine drives the steps itself.
    pub async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<(), LocalReply> {
        let first = self.run_request(0, ctx);
        drive(first, |at, resume| self.resume_request(at, resume, ctx)).await
    }

    /// [`FilterChain::on_request`] for responses.
    pub async fn on_response(&self, ctx: &mut ResponseContext<'_>) -> Result<(), LocalReply> {
        let first = self.run_response(0, ctx);
        drive(first, |at, resume| self.resume_response(at, resume, ctx)).await
    }
}

impl fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.filters.iter().map(|filter| filter.name()))
            .finish()
    }
}

/// Runs `hook` on `filters` (in the direction's order) from step `from` until one stops.
fn run<'f>(
    filters: impl Iterator<Item = &'f Arc<dyn L7Filter>>,
    from: usize,
    mut hook: impl FnMut(&Arc<dyn L7Filter>) -> FilterDecision,
) -> ChainStep {
    for (step, filter) in filters.enumerate().skip(from) {
        let decision = guarded(filter, || hook(filter));
        if let Some(stop) = settle(step, decision) {
            return stop;
        }
    }
    ChainStep::Done
}

/// Awaits a chain's waits, resuming it with each one's output, until it is done.
async fn drive(
    mut step: ChainStep,
    mut resume: impl FnMut(usize, Resume) -> ChainStep,
) -> Result<(), LocalReply> {
    loop {
        match step {
            ChainStep::Done => return Ok(()),
            ChainStep::Reply(reply) => return Err(reply),
            ChainStep::Wait {
                step: at,
                mut future,
            } => {
                let resumed = std::future::poll_fn(|cx| poll_wait(&mut future, cx)).await;
                step = resume(at, resumed);
            }
        }
    }
}

/// `None` to go on with the next filter, or where the chain stops.
fn settle(step: usize, decision: FilterDecision) -> Option<ChainStep> {
    match decision {
        FilterDecision::Continue => None,
        FilterDecision::Reply(reply) => Some(ChainStep::Reply(reply)),
        FilterDecision::Wait(future) => Some(ChainStep::Wait { step, future }),
    }
}

/// Polls a filter's wait, turning a panic into an internal-error reply as hooks' are: one buggy
/// filter's future costs its request an error answer, not the connection and every call on it.
/// A wait that panicked is done: it must not be polled again.
pub fn poll_wait(future: &mut FilterFuture, cx: &mut Context<'_>) -> Poll<Resume> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
        Ok(polled) => polled,
        Err(_) => Poll::Ready(Resume::new(FilterDecision::Reply(LocalReply::new(
            LocalReplyKind::Internal,
            "metaprotocol-proxy: the request failed inside the proxy (a filter's wait)",
        )))),
    }
}

/// Runs a hook, turning a panic into an internal-error reply so that one buggy filter costs
/// its request an error answer, not the connection.
fn guarded(filter: &Arc<dyn L7Filter>, hook: impl FnOnce() -> FilterDecision) -> FilterDecision {
    match std::panic::catch_unwind(AssertUnwindSafe(hook)) {
        Ok(decision) => decision,
        Err(_) => FilterDecision::Reply(LocalReply::new(
            LocalReplyKind::Internal,
            format!(
                "metaprotocol-proxy: the request failed inside the proxy (filter `{}`)",
                filter.name()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::{ByteStr, ConnectionInfo, MessageKind};

    /// Records its name in a shared log; optionally waits, or replies.
    struct Probe {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        reply: bool,
        wait: bool,
    }

    impl Probe {
        fn log(&self, what: &str) {
            if let Ok(mut log) = self.log.lock() {
                log.push(format!("{what}:{}", self.name));
            }
        }
    }

    impl L7Filter for Probe {
        fn name(&self) -> &str {
            self.name
        }

        fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
            self.log("req");
            ctx.mutation.set(
                ByteStr::from_static("seen"),
                ByteStr::from_static(self.name),
            );
            if self.reply {
                return FilterDecision::Reply(LocalReply::new(LocalReplyKind::Unauthorized, "no"));
            }
            if self.wait {
                let name = self.name;
                return FilterDecision::Wait(Box::pin(async move {
                    tokio::task::yield_now().await;
                    let mut resume = Resume::new(FilterDecision::Continue);
                    resume
                        .mutation
                        .set(ByteStr::from_static("waited"), ByteStr::from_static(name));
                    resume.extensions.insert(name);
                    resume
                }));
            }
            FilterDecision::Continue
        }

        fn on_response(&self, _ctx: &mut ResponseContext<'_>) -> FilterDecision {
            self.log("resp");
            FilterDecision::Continue
        }

        fn on_complete(&self, _ctx: &CompleteContext<'_>) {
            self.log("done");
        }
    }

    struct Panics;

    impl L7Filter for Panics {
        fn name(&self) -> &str {
            "panics"
        }

        fn on_request(&self, _: &mut RequestContext<'_>) -> FilterDecision {
            panic!("a buggy filter")
        }

        fn on_complete(&self, _: &CompleteContext<'_>) {
            panic!("a buggy completion")
        }
    }

    fn record() -> RequestRecord {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        RequestRecord::new(Arc::new(ConnectionInfo::new("test".into(), addr, addr)), 0)
    }

    fn chain(log: &Arc<Mutex<Vec<String>>>, specs: &[(&'static str, bool, bool)]) -> FilterChain {
        FilterChain::new(
            specs
                .iter()
                .map(|&(name, reply, wait)| {
                    Arc::new(Probe {
                        name,
                        log: log.clone(),
                        reply,
                        wait,
                    }) as Arc<dyn L7Filter>
                })
                .collect(),
        )
    }

    /// Runs `chain`'s request hooks on a fresh request.
    fn run_on_request(chain: &FilterChain) -> (ChainStep, RequestRecord, Message) {
        let request = Message::new(MessageKind::Request, 1, Bytes::new());
        let mut record = record();
        let step = chain.run_request(
            0,
            &mut RequestContext {
                request: &request,
                mutation: &mut Mutation::new(),
                record: &mut record,
            },
        );
        (step, record, request)
    }

    fn logged(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    #[tokio::test]
    async fn requests_in_order_responses_in_reverse_waits_add_mutations_and_state() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = chain(&log, &[("a", false, true), ("b", false, false)]);
        let request = Message::new(MessageKind::Request, 1, Bytes::new());
        let mut record = record();
        let mut mutation = Mutation::new();
        let mut ctx = RequestContext {
            request: &request,
            mutation: &mut mutation,
            record: &mut record,
        };
        assert_eq!(chain.on_request(&mut ctx).await, Ok(()));
        assert_eq!(mutation.sets()[0].1, "b");
        assert!(
            mutation
                .sets()
                .iter()
                .any(|(k, v)| *k == "waited" && *v == "a")
        );
        assert_eq!(record.extensions.get::<&str>(), Some(&"a"));
        let mut ctx = ResponseContext {
            request: &request,
            response: &request,
            mutation: &mut mutation,
            record: &mut record,
        };
        assert_eq!(chain.on_response(&mut ctx).await, Ok(()));
        chain.complete(&CompleteContext {
            request: &request,
            response: None,
            record: &record,
        });
        assert_eq!(
            logged(&log),
            ["req:a", "req:b", "resp:b", "resp:a", "done:a", "done:b"]
        );
    }

    #[test]
    fn a_reply_stops_the_chain() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = chain(&log, &[("deny", true, false), ("never", false, false)]);
        let (step, _, _) = run_on_request(&chain);
        assert!(matches!(step, ChainStep::Reply(r) if r.kind == LocalReplyKind::Unauthorized));
        assert_eq!(logged(&log), ["req:deny"]);
    }

    #[test]
    fn a_panicking_filter_answers_internal_and_completion_panics_are_contained() {
        let chain = FilterChain::new(vec![Arc::new(Panics)]);
        let (step, record, request) = run_on_request(&chain);
        assert!(
            matches!(step, ChainStep::Reply(r) if r.kind == LocalReplyKind::Internal && r.message.contains("panics"))
        );
        chain.complete(&CompleteContext {
            request: &request,
            response: None,
            record: &record,
        });
    }

    /// Waits, then panics while it is polled.
    struct PanicsWhileWaiting;

    impl L7Filter for PanicsWhileWaiting {
        fn name(&self) -> &str {
            "panics-while-waiting"
        }

        fn on_request(&self, _: &mut RequestContext<'_>) -> FilterDecision {
            FilterDecision::Wait(Box::pin(async {
                tokio::task::yield_now().await;
                panic!("a buggy wait")
            }))
        }
    }

    #[tokio::test]
    async fn a_wait_that_panics_answers_internal() {
        let chain = FilterChain::new(vec![Arc::new(PanicsWhileWaiting)]);
        let request = Message::new(MessageKind::Request, 1, Bytes::new());
        let mut record = record();
        let answered = chain
            .on_request(&mut RequestContext {
                request: &request,
                mutation: &mut Mutation::new(),
                record: &mut record,
            })
            .await;
        assert!(
            matches!(&answered, Err(r) if r.kind == LocalReplyKind::Internal && r.message.contains("a filter's wait")),
            "{answered:?}"
        );
    }
}
