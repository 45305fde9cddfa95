//! Mirroring: a share of a route's requests copied to another cluster, fire and forget.
//!
//! The copy carries the same header edits as the request, goes through the same pools and load
//! balancing as any attempt, and its answer goes to a discarding waiter
//! ([`crate::upstream::Discard`]) that counts it: the client's request never waits for it and
//! never sees its failure. Copies in flight to a cluster are bounded; over the bound a copy is
//! dropped and counted, and so is a copy the mirror cluster's circuit breakers refuse (its
//! `max_requests` or `max_pending_requests`, which the copies count toward as any attempt). A copy waits for its answer until the request's deadline, and at most
//! the default route timeout when the request has none ([`super::timeout::copy_deadline`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metaprotocol_core::{Message, MessageKind, Mutation};

use super::timeout::SendDeadline;
use super::{AttemptObserver, attempt};
use crate::config::MirrorSpec;
use crate::route::Target;
use crate::stats::RouteStats;
use crate::upstream::{Discard, ReplyTo};

/// Shares are kept in parts per million.
const WHOLE: u128 = 1_000_000;

/// A route's compiled mirror policy.
#[derive(Debug)]
pub(crate) struct MirrorPolicy {
    target: Target,
    /// The share of requests copied, in parts per million.
    share: u128,
    /// Requests seen so far: the share is spread evenly over them, not drawn at random, so that
    /// a mirror receives exactly its share.
    seen: AtomicU64,
    max_in_flight: i64,
}

impl MirrorPolicy {
    pub fn new(spec: &MirrorSpec, target: Target) -> Self {
        Self {
            target,
            share: (spec.percentage.clamp(0.0, 100.0) * 10_000.0).round() as u128,
            seen: AtomicU64::new(0),
            max_in_flight: i64::from(spec.max_in_flight),
        }
    }

    /// True for the requests that fall in the share: request `n` is copied when the running
    /// total `n * share` crosses a whole.
    fn chosen(&self) -> bool {
        let n = u128::from(self.seen.fetch_add(1, Ordering::Relaxed));
        (n + 1) * self.share / WHOLE > n * self.share / WHOLE
    }

    /// Copies `request` to the mirror cluster if it falls in the share and the budget allows,
    /// with `mutation` as `observer` adds to it, to be answered by `deadline`; `hash` is its
    /// consistent-hashing key, for a mirror cluster that balances by one.
    pub fn send(
        &self,
        request: &Arc<Message>,
        mutation: &Arc<Mutation>,
        observer: &mut impl AttemptObserver,
        hash: Option<u64>,
        deadline: SendDeadline,
        stats: &RouteStats,
    ) {
        if !self.chosen() {
            return;
        }
        // Copies load the mirror cluster as any request does: its limits protect it from
        // them too (the breaker counts its overflow).
        let cluster = &self.target.cluster;
        let Ok(admission) = cluster.breakers().admit(cluster.stats()) else {
            stats.mirror_dropped.inc();
            return;
        };
        // The budget before the pick: picking counts an attempt on the endpoint and its cluster
        // (`upstream_rq_total`), which a copy dropped over the budget never makes.
        let slot = if request.kind == MessageKind::Oneway {
            None
        } else {
            let slot = self.target.cluster.stats().rq_mirror_active.clone();
            if slot.inc() >= self.max_in_flight {
                slot.dec();
                stats.mirror_dropped.inc();
                return;
            }
            Some(slot)
        };
        let Some((_, active)) = attempt::pick(&self.target, None, &[], hash, admission.request)
        else {
            if let Some(slot) = slot {
                slot.dec();
            }
            stats.mirror_dropped.inc();
            return;
        };
        let endpoint = active.endpoint().clone();
        let reply = match slot {
            None => ReplyTo::none(),
            Some(slot) => ReplyTo::discard(Discard {
                answered: stats.mirror_answered.clone(),
                failed: stats.mirror_failed.clone(),
                slot,
                _active: active,
            }),
        };
        stats.mirror_sent.inc();
        // A refused copy comes back with its waiter, which counts it as failed when dropped.
        let mutation = observer.copy_started(mutation);
        let _ = attempt::send(
            &endpoint,
            request,
            mutation,
            deadline,
            reply,
            admission.pending,
            |_| {},
        );
    }
}
