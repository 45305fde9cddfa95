//! One try of a request on one endpoint: pick, track, queue.

use std::net::SocketAddr;
use std::sync::Arc;

use metaprotocol_core::{Message, Mutation};
use tokio::time::Instant;

use crate::cluster::{ActiveRequest, Endpoint, Host};
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
}

/// Picks a host of `target`, avoiding those `tried`, and counts an attempt in flight on its
/// endpoint (until the returned guard drops); `None` when the target has no endpoint.
pub(crate) fn pick(target: &Target, tried: &[SocketAddr]) -> Option<(Arc<Host>, ActiveRequest)> {
    let snapshot = target.cluster.snapshot();
    let host = snapshot
        .set(target.subset)
        .and_then(|set| set.pick(tried))?;
    let active = host.endpoint.track(target.cluster.stats());
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

/// Picks an endpoint of `target` (avoiding those `tried`) and queues `request` on it, with the
/// mutation `mutation` makes for the endpoint picked.
pub(crate) fn start(
    target: &Target,
    request: &Arc<Message>,
    mutation: impl FnOnce(SocketAddr) -> Arc<Mutation>,
    tried: &[SocketAddr],
    number: u32,
    deadline: Instant,
    reply: ReplyTo,
) -> Started {
    let Some((host, active)) = pick(target, tried) else {
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
            started: Instant::now(),
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
