//! One try of a request on one endpoint: check the cluster's circuit breakers, pick, track,
//! queue.

use std::net::SocketAddr;
use std::sync::Arc;

use metaprotocol_core::{Message, Mutation};
use tokio::time::Instant;

use crate::cluster::{ActiveRequest, Breaker, ClusterHandle, Endpoint, Host};
use crate::route::Target;
use crate::upstream::{Outbound, Rejected, ReplyTo, UpstreamError};

/// An attempt in flight.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    pub started: Instant,
    /// Where it went.
    pub host: Arc<Host>,
    /// Keeps the endpoint's and cluster's in-flight counts until the attempt ends.
    active: ActiveRequest,
}

impl Attempt {
    pub fn endpoint(&self) -> SocketAddr {
        self.active.endpoint().address()
    }

    /// The endpoint it went to.
    pub fn target(&self) -> &Endpoint {
        self.active.endpoint()
    }
}

/// How starting an attempt went.
pub(crate) enum Started {
    /// Queued on an endpoint; the answer comes through the reply.
    Sent(Attempt),
    /// The endpoint refused it at once (backing off, overloaded); it was not sent.
    Refused {
        host: Arc<Host>,
        error: UpstreamError,
    },
    /// The target has no endpoint.
    NoEndpoint,
    /// A circuit breaker of the cluster refused it; it was not sent.
    Overflow(Breaker),
}

/// What an attempt is: its number (1 for the first), what to avoid, how to pick.
pub(crate) struct AttemptSpec<'a> {
    pub number: u32,
    /// Endpoints this request already failed on.
    pub tried: &'a [SocketAddr],
    /// The request's consistent-hashing key.
    pub hash: Option<u64>,
    pub deadline: Instant,
    /// When the attempt starts: the clock its caller read for the whole batch of work.
    pub now: Instant,
}

/// Picks a host of `target`, avoiding those `tried`, by the request's consistent-hashing key
/// `hash` when its balancer hashes, and counts an attempt in flight on its endpoint (until the
/// returned guard drops); `None` when the target has no endpoint.
pub(crate) fn pick(
    target: &Target,
    tried: &[SocketAddr],
    hash: Option<u64>,
) -> Option<(Arc<Host>, ActiveRequest)> {
    let snapshot = target.cluster.snapshot();
    let host = snapshot
        .set(target.subset)
        .and_then(|set| set.pick(tried, hash))?;
    let active = host.endpoint.track();
    Some((host.clone(), active))
}

/// Queues `request` on `endpoint` with `mutation`, to be answered through `reply`; a refusal
/// hands the request back (it was not sent).
// The refused request comes back whole, without an allocation (see `UpstreamPool::send`).
#[allow(clippy::result_large_err)]
pub(crate) fn send(
    endpoint: &Endpoint,
    request: &Arc<Message>,
    mutation: Arc<Mutation>,
    deadline: Instant,
    reply: ReplyTo,
) -> Result<(), Rejected> {
    let pool = endpoint.pool();
    let variant = pool.codec().upstream_variant(request);
    pool.send(
        variant,
        Outbound {
            message: request.clone(),
            mutation,
            deadline,
            reply,
        },
    )
}

/// The breaker of `cluster` that refuses one more attempt (counting its overflow), if one
/// does.
pub(crate) fn over_limit(cluster: &ClusterHandle) -> Option<Breaker> {
    [Breaker::Requests, Breaker::PendingRequests]
        .into_iter()
        .find(|&breaker| !cluster.breakers().admits(breaker, cluster.stats()))
}

/// Checks the cluster's breakers, picks an endpoint of `target` and queues `request` on it,
/// with the mutation `mutation` makes for the endpoint picked.
pub(crate) fn start(
    target: &Target,
    request: &Arc<Message>,
    mutation: impl FnOnce(SocketAddr) -> Arc<Mutation>,
    spec: AttemptSpec<'_>,
    reply: ReplyTo,
) -> Started {
    if let Some(breaker) = over_limit(&target.cluster) {
        return Started::Overflow(breaker);
    }
    let AttemptSpec {
        number,
        tried,
        hash,
        deadline,
        now,
    } = spec;
    let Some((host, active)) = pick(target, tried, hash) else {
        return Started::NoEndpoint;
    };
    let endpoint = active.endpoint();
    match send(
        endpoint,
        request,
        mutation(endpoint.address()),
        deadline,
        reply,
    ) {
        Ok(()) => Started::Sent(Attempt {
            number,
            started: now,
            host,
            active,
        }),
        Err(mut rejected) => {
            rejected.outbound.reply.disarm();
            Started::Refused {
                host,
                error: rejected.error,
            }
        }
    }
}
