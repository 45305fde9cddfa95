//! One request's walk: filters, route, upstream attempts (with timeout and retries), response
//! filters, answer.

use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::{
    ConnectionInfo, LocalReply, LocalReplyKind, Message, MessageKind, Mutation, RequestContext,
    ResponseContext, ResponseStatus, keys,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ListenerContext;
use super::connection::Reply;
use crate::cluster::Endpoint;
use crate::lb::PickContext;
use crate::route::{Route, Target};
use crate::upstream::UpstreamError;

/// The deadline of routes that set no timeout: a client must never wait forever.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Metadata key some codecs set from the request's own deadline (bRPC `timeout_ms`); it caps
/// the route timeout.
pub const TIMEOUT_MS_KEY: &str = "timeout_ms";

/// Makes sure a two-way request is answered even when its handling is abandoned (a panic in a
/// filter, a task cancelled at runtime shutdown): dropped unanswered, it queues an `Internal`
/// local reply. It also keeps the in-flight gauge right on every path.
struct AnswerGuard {
    ctx: Arc<ListenerContext>,
    request: Arc<Message>,
    replies: mpsc::Sender<Reply>,
    answered: bool,
}

impl AnswerGuard {
    fn new(
        ctx: &Arc<ListenerContext>,
        request: &Arc<Message>,
        replies: &mpsc::Sender<Reply>,
    ) -> Self {
        ctx.stats.rq_active.inc();
        Self {
            ctx: ctx.clone(),
            request: request.clone(),
            replies: replies.clone(),
            answered: false,
        }
    }
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        self.ctx.stats.rq_active.dec();
        if self.answered || self.request.kind != MessageKind::Request {
            return;
        }
        self.ctx.stats.local_reply(LocalReplyKind::Internal).inc();
        let reply = LocalReply::new(
            LocalReplyKind::Internal,
            "metaprotocol-proxy: the request failed inside the proxy",
        );
        let _ = self.replies.try_send(Reply::Local {
            request: self.request.clone(),
            reply,
        });
    }
}

pub(crate) async fn handle(
    ctx: Arc<ListenerContext>,
    connection: Arc<ConnectionInfo>,
    request: Message,
    replies: mpsc::Sender<Reply>,
) {
    let request = Arc::new(request);
    let mut guard = AnswerGuard::new(&ctx, &request, &replies);
    let answer = match forward(&ctx, &connection, &request).await {
        Ok(None) => None,
        Ok(Some((response, mutation))) => Some(Reply::Response {
            request,
            response,
            mutation,
        }),
        Err(reply) => {
            ctx.stats.local_reply(reply.kind).inc();
            // One-way callers expect nothing, so they are told nothing.
            (request.kind == MessageKind::Request).then_some(Reply::Local { request, reply })
        }
    };
    if let Some(answer) = answer {
        let _ = replies.send(answer).await;
    }
    guard.answered = true;
}

/// `now + after`, saturating: a route timeout of centuries means "never", not a panic.
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Runs the request through filters, routing and upstream; `Ok(None)` for one-way requests.
async fn forward(
    ctx: &ListenerContext,
    connection: &ConnectionInfo,
    request: &Arc<Message>,
) -> Result<Option<(Message, Arc<Mutation>)>, LocalReply> {
    let mut filter_mutation = Mutation::new();
    ctx.filters
        .on_request(&mut RequestContext {
            request,
            mutation: &mut filter_mutation,
            connection,
        })
        .await?;

    let table = ctx.routes.load_full();
    let route = table
        .route(&request.metadata)
        .ok_or_else(|| no_route(request))?;
    route.requests.inc();
    let target = route.action.pick().ok_or_else(|| {
        LocalReply::new(LocalReplyKind::NoHealthyUpstream, "the route has no target")
    })?;
    let mutation = merged(&route.request_mutation, filter_mutation);

    if request.kind == MessageKind::Oneway {
        send_oneway(target, request, mutation).await?;
        return Ok(None);
    }

    let deadline = deadline_after(timeout_of(route, request));
    let response = call_with_retries(route, target, request, mutation, deadline).await?;

    let mut filter_mutation = Mutation::new();
    ctx.filters
        .on_response(&mut ResponseContext {
            request,
            response: &response,
            mutation: &mut filter_mutation,
            connection,
        })
        .await?;
    Ok(Some((
        response,
        merged(&route.response_mutation, filter_mutation),
    )))
}

/// The route's mutation, plus what filters added (allocating only when they added something).
fn merged(route: &Arc<Mutation>, filters: Mutation) -> Arc<Mutation> {
    if filters.is_empty() {
        return route.clone();
    }
    let mut all = Mutation::clone(route);
    all.extend(&filters);
    Arc::new(all)
}

/// The route timeout, capped by the request's own deadline when the codec reports one.
fn timeout_of(route: &Route, request: &Message) -> Duration {
    let route_timeout = route.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    let requested = request
        .metadata
        .get(TIMEOUT_MS_KEY)
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    match requested {
        Some(requested) => route_timeout.min(requested),
        None => route_timeout,
    }
}

fn no_route(request: &Message) -> LocalReply {
    let md = &request.metadata;
    let service = md
        .get(keys::INTERFACE)
        .or_else(|| md.get(keys::SERVICE))
        .map(|s| s.as_str())
        .unwrap_or("-");
    let method = md.get(keys::METHOD).map(|s| s.as_str()).unwrap_or("-");
    LocalReply::new(
        LocalReplyKind::RouteNotFound,
        format!("metaprotocol-proxy: no route for service {service} method {method}"),
    )
}

fn pick<'a>(target: &'a Target, avoid: Option<&Endpoint>) -> Result<&'a Arc<Endpoint>, LocalReply> {
    target
        .endpoints
        .pick(&PickContext { avoid })
        .ok_or_else(|| {
            LocalReply::new(
                LocalReplyKind::NoHealthyUpstream,
                format!(
                    "metaprotocol-proxy: cluster {} has no endpoint for this route",
                    target.cluster.name()
                ),
            )
        })
}

async fn send_oneway(
    target: &Target,
    request: &Arc<Message>,
    mutation: Arc<Mutation>,
) -> Result<(), LocalReply> {
    let endpoint = pick(target, None)?;
    let cluster = &target.cluster;
    cluster.stats().rq_total.inc();
    let variant = cluster.codec().upstream_variant(request);
    endpoint
        .pool()
        .send_oneway(request.clone(), mutation, variant)
        .await
        .map_err(|err| upstream_failure(endpoint, &err))
}

/// How one attempt ended. Short-lived on one stack, so the large variant is not boxed.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Answered(Message),
    Failed(UpstreamError),
    TimedOut,
}

async fn call_with_retries(
    route: &Route,
    target: &Target,
    request: &Arc<Message>,
    mutation: Arc<Mutation>,
    deadline: Instant,
) -> Result<Message, LocalReply> {
    let cluster = &target.cluster;
    let stats = cluster.stats();
    let variant = cluster.codec().upstream_variant(request);
    let mut retries_left = route.retry.as_ref().map_or(0, |r| r.num_retries);
    let mut previous: Option<Arc<Endpoint>> = None;
    loop {
        let endpoint = pick(target, previous.as_deref())?.clone();
        let attempt_deadline = match route.retry.as_ref().and_then(|r| r.per_try_timeout) {
            Some(per_try) => deadline.min(deadline_after(per_try)),
            None => deadline,
        };
        let _active = endpoint.track();
        stats.rq_total.inc();
        let started = Instant::now();
        let call = endpoint
            .pool()
            .call(request.clone(), mutation.clone(), variant);
        let attempt = match tokio::time::timeout_at(attempt_deadline, call).await {
            Ok(Ok(response)) => Attempt::Answered(response),
            Ok(Err(err)) => Attempt::Failed(err),
            Err(_) => {
                stats.rq_timeout.inc();
                Attempt::TimedOut
            }
        };
        if let Attempt::Answered(response) = &attempt {
            stats.rq_time.observe(started.elapsed().as_secs_f64());
            match response.status {
                ResponseStatus::Ok => stats.rq_ok.inc(),
                ResponseStatus::ApplicationError => stats.rq_application_error.inc(),
                ResponseStatus::ServerError => stats.rq_server_error.inc(),
            };
        }
        let retry = route.retry.as_ref().is_some_and(|policy| {
            retries_left > 0
                && Instant::now() < deadline
                && match &attempt {
                    Attempt::Answered(r) => {
                        policy.on_unavailable && r.status == ResponseStatus::ServerError
                    }
                    Attempt::Failed(e) if e.is_connect_failure() => policy.on_connect_failure,
                    Attempt::Failed(UpstreamError::Reset) => policy.on_reset,
                    Attempt::Failed(_) => false,
                    Attempt::TimedOut => policy.on_timeout,
                }
        });
        if retry {
            retries_left -= 1;
            stats.rq_retry.inc();
            previous = Some(endpoint);
            continue;
        }
        return match attempt {
            Attempt::Answered(response) => Ok(response),
            Attempt::Failed(err) => Err(upstream_failure(&endpoint, &err)),
            Attempt::TimedOut => Err(LocalReply::new(
                LocalReplyKind::Timeout,
                format!(
                    "metaprotocol-proxy: upstream {} did not answer in time (route {})",
                    endpoint.address(),
                    route.name
                ),
            )),
        };
    }
}

fn upstream_failure(endpoint: &Endpoint, err: &UpstreamError) -> LocalReply {
    LocalReply::new(
        err.reply_kind(),
        format!("metaprotocol-proxy: upstream {}: {err}", endpoint.address()),
    )
}
