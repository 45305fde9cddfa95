//! One try of a request on one endpoint: pick, track, queue.

use std::net::SocketAddr;
use std::sync::Arc;

use metaprotocol_core::{Message, Mutation};
use tokio::time::Instant;

use crate::cluster::{ActiveRequest, Host};
use crate::route::Target;
use crate::upstream::{Outbound, ReplyTo, UpstreamError};

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
    let snapshot = target.cluster.snapshot();
    let Some(host) = snapshot.set(target.subset).and_then(|set| set.pick(tried)) else {
        return Started::NoEndpoint;
    };
    let endpoint = &host.endpoint;
    let active = endpoint.track(target.cluster.stats(), number > 1);
    let variant = snapshot.codec.upstream_variant(request);
    let outbound = Outbound {
        message: request.clone(),
        mutation: mutation(endpoint.address()),
        deadline,
        reply,
    };
    match endpoint.pool().send(variant, outbound) {
        Ok(()) => Started::Sent(Attempt {
            number,
            started: Instant::now(),
            host: host.clone(),
            active,
        }),
        Err(mut rejected) => {
            rejected.outbound.reply.disarm();
            Started::Refused {
                host: host.clone(),
                error: rejected.error,
            }
        }
    }
}
