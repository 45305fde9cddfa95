//! One try of a request on one endpoint: pick, track, queue.

use std::net::SocketAddr;
use std::sync::Arc;

use metaprotocol_core::{Message, Mutation};
use tokio::time::Instant;

use crate::cluster::{ActiveRequest, Endpoint};
use crate::route::Target;
use crate::upstream::{Outbound, Rejected, ReplyTo, UpstreamError};

/// An attempt in flight.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    pub started: Instant,
    /// Keeps the endpoint's and cluster's in-flight counts until the attempt ends.
    active: ActiveRequest,
}

impl Attempt {
    pub fn endpoint(&self) -> SocketAddr {
        self.active.endpoint().address()
    }
}

/// How starting an attempt went.
pub(crate) enum Started {
    /// Queued on an endpoint; the answer comes through the reply.
    Sent(Attempt),
    /// The endpoint refused it at once (backing off, overloaded); it was not sent.
    Refused {
        endpoint: SocketAddr,
        error: UpstreamError,
    },
    /// The target has no endpoint.
    NoEndpoint,
}

/// Picks an endpoint of `target`, avoiding those `tried`, and counts an attempt in flight on it
/// (until the returned guard drops); `None` when the target has no endpoint.
pub(crate) fn pick(target: &Target, tried: &[SocketAddr]) -> Option<ActiveRequest> {
    let snapshot = target.cluster.snapshot();
    let host = snapshot
        .set(target.subset)
        .and_then(|set| set.pick(tried))?;
    Some(host.endpoint.track(target.cluster.stats()))
}

/// Queues `request` on `endpoint`, to be answered through `reply`; a refusal hands the request
/// back (it was not sent).
// The refused request comes back whole, without an allocation (see `UpstreamPool::send`).
#[allow(clippy::result_large_err)]
pub(crate) fn send(
    endpoint: &Endpoint,
    request: &Arc<Message>,
    mutation: &Arc<Mutation>,
    deadline: Instant,
    reply: ReplyTo,
) -> Result<(), Rejected> {
    let pool = endpoint.pool();
    let variant = pool.codec().upstream_variant(request);
    pool.send(
        variant,
        Outbound {
            message: request.clone(),
            mutation: mutation.clone(),
            deadline,
            reply,
        },
    )
}

/// Picks an endpoint of `target` (avoiding those `tried`) and queues `request` on it.
pub(crate) fn start(
    target: &Target,
    request: &Arc<Message>,
    mutation: &Arc<Mutation>,
    tried: &[SocketAddr],
    number: u32,
    deadline: Instant,
    reply: ReplyTo,
) -> Started {
    let Some(active) = pick(target, tried) else {
        return Started::NoEndpoint;
    };
    match send(active.endpoint(), request, mutation, deadline, reply) {
        Ok(()) => Started::Sent(Attempt {
            number,
            started: Instant::now(),
            active,
        }),
        Err(mut rejected) => {
            rejected.outbound.reply.disarm();
            Started::Refused {
                endpoint: active.endpoint().address(),
                error: rejected.error,
            }
        }
    }
}
